//! Whatever arrives on a wire, the frame scanner and the decoders never panic, and never call a
//! frame good unless its CRC is.

use pmtr::meter::Model;
use pmtr::modbus::crc::check_crc;
use pmtr::modbus::frame::{classify_timeout, scan_reply, Scan};
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
            let n = model.poll_requests(1, plan).len();
            let replies = vec![regs.clone(); n];
            let _ = model.decode(1, plan, &replies, Phase::L2);
        }
    }
}
