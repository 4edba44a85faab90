//! Whatever arrives on a wire, the frame scanner and the decoders never panic, and never call a
//! frame good unless its CRC is.

use pmtr::meter::driver::Reader;
use pmtr::meter::Model;
use pmtr::modbus::crc::check_crc;
use pmtr::modbus::frame::{classify_timeout, scan_reply, ReplyScanner, Scan, MAX_REPLY};
use pmtr::modbus::{Pdu, Reply, Request};
use pmtr::reading::Phase;
use proptest::prelude::*;

fn request() -> impl Strategy<Value = Request> {
    (any::<u8>(), 0u8..5, any::<u16>(), 1u16..126, any::<u16>()).prop_map(|(address, kind, a, n, v)| {
        Request {
            address,
            pdu: match kind {
                0 => Pdu::ReadInput { start: a, count: n },
                1 => Pdu::ReadHolding { start: a, count: n },
                2 => Pdu::WriteSingle { register: a, value: v },
                _ => Pdu::EchoCommand { function: 0x42 },
            },
        }
    })
}

/// Bytes from a small alphabet of the request's own address and function codes and the byte
/// counts that make candidates claim long or short frames: the adversarial case for a scanner.
fn hostile_bytes(req: &Request) -> impl Strategy<Value = Vec<u8>> {
    let f = req.pdu.function();
    let alphabet = vec![req.address, f, f | 0x80, 0xFF, 0x02, 0x00];
    proptest::collection::vec(
        prop_oneof![4 => proptest::sample::select(alphabet), 1 => any::<u8>()],
        0..=4096,
    )
}

/// The scan's work for `bytes` fed in pieces of the given sizes, and how many feeds it took.
fn work_in_pieces(req: &Request, bytes: &[u8], pieces: &[usize]) -> (u64, u64) {
    let mut scanner = ReplyScanner::new(req);
    let (mut end, mut feeds) = (0, 0u64);
    for p in pieces.iter().cycle() {
        if end == bytes.len() {
            break;
        }
        end = (end + p).min(bytes.len());
        feeds += 1;
        if scanner.feed(&bytes[..end]) != Scan::NeedMore {
            break;
        }
    }
    let _ = scanner.at_timeout(&bytes[..end]);
    (scanner.work(), feeds)
}

/// What the scan may cost: a look and a queue push and pop per byte, one CRC of at most a whole
/// frame per byte, and a look again at the position where each feed stopped.
fn bound(len: usize, feeds: u64) -> u64 {
    (len * (MAX_REPLY + 3)) as u64 + feeds
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn the_reply_scan_is_linear_in_any_bytes(req in request(), bytes in proptest::collection::vec(any::<u8>(), 0..=4096), piece in 1usize..300) {
        let (work, feeds) = work_in_pieces(&req, &bytes, &[piece]);
        prop_assert!(work <= bound(bytes.len(), feeds), "{} bytes, {} units", bytes.len(), work);
    }

    #[test]
    fn the_reply_scan_is_linear_in_hostile_bytes(
        (req, bytes) in request().prop_flat_map(|r| { let b = hostile_bytes(&r); (Just(r), b) }),
        pieces in proptest::collection::vec(1usize..64, 1..8),
    ) {
        let (work, feeds) = work_in_pieces(&req, &bytes, &pieces);
        prop_assert!(work <= bound(bytes.len(), feeds), "{} bytes, {} units", bytes.len(), work);
        // Fed in one piece, the same bytes cost no more than the bound for one feed.
        let (once, _) = work_in_pieces(&req, &bytes, &[bytes.len().max(1)]);
        prop_assert!(once <= bound(bytes.len(), 1));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn scanning_any_bytes_never_panics(req in request(), bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = classify_timeout(&req, &bytes);
        if let Scan::Done { result: Ok(reply), skipped } = scan_reply(&req, &bytes) {
            prop_assert!(skipped < bytes.len());
            prop_assert_eq!(bytes[skipped], req.address);
            // A good reply is always a CRC-checked frame.
            let len = match (&req.pdu, &reply) {
                (Pdu::ReadInput { count, .. } | Pdu::ReadHolding { count, .. }, Reply::Registers(r)) => {
                    prop_assert_eq!(r.len(), *count as usize);
                    5 + 2 * *count as usize
                }
                (pdu, Reply::Echo) => pdu.reply_len(),
                _ => return Err(TestCaseError::fail("reply kind does not fit the request")),
            };
            prop_assert!(check_crc(&bytes[skipped..skipped + len]));
        }
    }

    #[test]
    fn a_good_reply_is_found_behind_any_noise(noise in proptest::collection::vec(any::<u8>(), 0..40), regs in proptest::collection::vec(any::<u16>(), 10)) {
        let req = Request::read_input(4, 0, 10);
        let mut reply = vec![4u8, 4, 20];
        for r in &regs {
            reply.extend_from_slice(&r.to_be_bytes());
        }
        pmtr::modbus::crc::append_crc(&mut reply);
        let mut bytes = noise.clone();
        bytes.extend_from_slice(&reply);
        match scan_reply(&req, &bytes) {
            Scan::Done { result: Ok(Reply::Registers(r)), .. } => prop_assert_eq!(r, regs),
            // Noise can itself hold a CRC-valid frame from our address, or a bad-CRC candidate
            // long enough to swallow the reply; either way it is never a wrong good reading.
            Scan::Done { result: Ok(_), .. } => return Err(TestCaseError::fail("echo for a read")),
            Scan::Done { result: Err(_), .. } | Scan::NeedMore => {}
        }
    }

    #[test]
    fn decoders_take_any_registers(regs in proptest::collection::vec(any::<u16>(), 0..60), plan in 0usize..3) {
        for model in Model::ALL {
            let reader = Reader { phase: Phase::L2, ..Reader::new(model, 1) };
            let plans = reader.plans();
            let plan = plans[plan.min(plans.len() - 1)];
            let n = reader.requests(plan).len();
            let replies = vec![regs.clone(); n];
            let _ = reader.decode(plan, &replies);
        }
    }
}
