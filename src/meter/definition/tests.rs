use super::plan::{encode, group, raw};
use super::*;
use crate::meter::{pzem, rx380};
use crate::modbus::{Exception, Pdu};
use crate::reading::Sample;
use proptest::prelude::*;

fn def(name: &str) -> Definition {
    built_in().into_iter().find(|d| d.name == name).unwrap_or_else(|| panic!("no built-in {name}"))
}

fn close(a: &[Sample], b: &[Sample]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.phase == y.phase
                && x.quantity == y.quantity
                && (x.value - y.value).abs() <= 1e-9 * (1.0 + y.value.abs())
        })
}

#[test]
fn every_built_in_definition_loads() {
    for (file, text) in BUILT_IN {
        let d = parse(text, file).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(format!("{}.toml", d.name), *file);
        assert!(!d.source.title.is_empty(), "{file} names its document");
        assert!(!d.registers.is_empty());
    }
    let names: Vec<String> = built_in().into_iter().map(|d| d.name).collect();
    for n in [
        "sdm120",
        "sdm230",
        "sdm630",
        "sdm72d",
        "ddsu666",
        "dtsu666",
        "dds238",
        "orno-we514",
        "orno-we516",
        "abb-b23",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} is built in");
    }
}

/// The PZEM as a definition sends today's request and decodes today's samples.
#[test]
fn the_pzem_definition_equals_the_hand_written_driver() {
    let d = def("pzem-016");
    let layout = d.layout(d.first_plan(), 0);
    assert_eq!(layout.requests(7), vec![pzem::read_request(7)]);
    for regs in [
        pzem::encode(232.0, 70.0, 14616.0, 123.456, 50.0, 0.9, true),
        pzem::encode(225.7, 0.108, 24.4, 0.038, 49.9, 1.0, false),
        [0; 10],
    ] {
        let want = pzem::decode(&regs, Phase::L2).unwrap();
        let got = layout.decode(&d, &[regs.to_vec()], Phase::L2).unwrap();
        assert!(close(&got, &want), "{got:?}\n{want:?}");
    }
}

/// The RX380 as a definition: its first plan is the hand-written driver's block of 40, decoded
/// as the hand-written decoder did; its fallback is data (`fallback = [12]`): blocks of at most
/// 12 registers, then nothing smaller.
#[test]
fn the_rx380_definition_equals_the_hand_written_driver() {
    let d = def("rx380");
    let layout = d.layout(d.first_plan(), 0);
    assert_eq!(layout.requests(3), vec![crate::modbus::Request::read_input(3, 4000, 40)]);
    let regs = rx380::encode(&rx380::test_snapshot()).to_vec();
    let want = hand_rx380(&regs);
    let got = layout.decode(&d, std::slice::from_ref(&regs), Phase::L1).unwrap();
    assert!(close(&got, &want), "{got:?}\n{want:?}");
    assert_eq!(
        d.plans(),
        [Plan::Blocks { max_block: 40, max_gap: 0 }, Plan::Blocks { max_block: 12, max_gap: 0 }]
    );
    let smaller = d.layout(d.plans()[1], 0);
    let starts: Vec<(u16, u16)> = smaller.blocks.iter().map(|b| (b.start, b.count)).collect();
    assert_eq!(starts, [(4000, 12), (4012, 12), (4024, 12), (4036, 4)]);
    let replies: Vec<Vec<u16>> = smaller
        .blocks
        .iter()
        .map(|b| regs[usize::from(b.start - 4000)..][..usize::from(b.count)].to_vec())
        .collect();
    assert!(close(&smaller.decode(&d, &replies, Phase::L1).unwrap(), &want));
}

/// The hand-written RX380 decoder on the block 4000..4039.
fn hand_rx380(regs: &[u16]) -> Vec<Sample> {
    let req = crate::modbus::Request::read_input(1, 4000, 40);
    rx380::decode(&crate::meter::RegisterImage::from_replies(&[req], &[regs.to_vec()])).unwrap()
}

#[test]
fn the_fallback_is_one_rule() {
    let d = def("sdm630");
    let plans = d.plans();
    assert_eq!(plans[0], Plan::Blocks { max_block: 80, max_gap: 20 });
    assert_eq!(*plans.last().unwrap(), Plan::Values);
    for (k, &p) in plans.iter().enumerate() {
        for code in 0..=255u8 {
            let e = Exception::from_code(code);
            let want = if matches!(code, 2 | 3) { plans.get(k + 1).copied() } else { None };
            assert_eq!(d.fallback(p, e), want);
        }
        if let Plan::Blocks { max_block, .. } = p {
            assert_eq!(max_block % 2, 0, "an even meter's blocks stay even");
        }
    }
}

/// A full SDM630 poll is three requests, as the physical limit in the README assumes.
#[test]
fn a_full_sdm630_poll_is_three_requests() {
    let d = def("sdm630");
    let blocks = d.layout(d.first_plan(), 0).blocks;
    let spans: Vec<(u16, u16)> = blocks.iter().map(|b| (b.start, b.count)).collect();
    assert_eq!(spans, [(0x0000, 80), (0x00C8, 52), (0x0156, 22)]);
}

#[test]
fn values_decode_by_type_word_and_byte_order() {
    use ByteOrder::*;
    use RegType::*;
    use WordOrder::*;
    // The float 230.2f32 (0x43663333) is 230.1999969482422; it reads as the decimal it is.
    assert_eq!(raw(&[0x4366, 0x3333], F32, HighFirst, Big), 230.2);
    assert_eq!(raw(&[0x3333, 0x4366], F32, LowFirst, Big), 230.2);
    assert_eq!(raw(&[0x6643, 0x3333], F32, HighFirst, Little), 230.2);
    assert_eq!(raw(&[0xFFFF, 0xFA24], I32, HighFirst, Big), -1500.0);
    assert_eq!(raw(&[0xFFFF, 0xFA24], U32, HighFirst, Big), 4_294_965_796.0);
    assert_eq!(raw(&[0xFF38], I16, HighFirst, Big), -200.0);
    assert_eq!(raw(&[0, 0, 1, 0], U64, HighFirst, Big), 65536.0);
    assert_eq!(raw(&[0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE], I64, HighFirst, Big), -2.0);
    assert_eq!(raw(&[0x8000], Bool, HighFirst, Big), 1.0);
    for ty in [U16, I16, U32, I32, U64, I64, F32, F64] {
        for wo in [HighFirst, LowFirst] {
            for bo in [Big, Little] {
                let x = if matches!(ty, U16 | U32 | U64) { 1234.0 } else { -1234.0 };
                assert_eq!(raw(&encode(x, ty, wo, bo), ty, wo, bo), x, "{ty:?} {wo:?} {bo:?}");
            }
        }
    }
}

#[test]
fn an_implausible_value_refuses_the_reading() {
    let d = def("sdm120");
    let layout = d.layout(d.first_plan(), 0);
    let replies: Vec<Vec<u16>> = layout.blocks.iter().map(|b| vec![0x7F80; usize::from(b.count)]).collect();
    let e = layout.decode(&d, &replies, Phase::L1).unwrap_err();
    assert!(matches!(e, crate::meter::DecodeError::Implausible { .. }), "{e}");
    let short: Vec<Vec<u16>> = layout.blocks.iter().map(|_| vec![0; 1]).collect();
    assert!(layout.decode(&d, &short, Phase::L1).is_err());
}

#[test]
fn registers_read_every_nth_poll_are_left_out_between() {
    let src = r#"
name = "t"
maker = "m"
model = "m"
source = { title = "t" }
phases = 1
[[register]]
address = 0
type = "u16"
quantity = "voltage"
[[register]]
address = 100
type = "u32"
quantity = "energy"
every = 3
"#;
    let d = parse(src, "t.toml").unwrap();
    let reqs = |poll| d.layout(d.first_plan(), poll).requests(1);
    assert_eq!(reqs(0).len(), 2);
    assert_eq!(reqs(1), vec![crate::modbus::Request::read_input(1, 0, 1)]);
    assert_eq!(reqs(2).len(), 1);
    assert_eq!(reqs(3).len(), 2);
}

#[test]
fn a_bad_file_gives_every_error_with_its_place() {
    let src = r#"name = "bad"
maker = "m"
model = "m"
source = { title = "t" }
phases = 1
[read]
max_blok = 10
[[register]]
address = 0
type = "f23"
quantity = "voltage"
[[register]]
address = 0
type = "u16"
quantity = "votage"
[[register]]
address = 10
type = "u16"
quantity = "current"
phase = "L2"
scale = nan
"#;
    let e = parse(src, "bad.toml").unwrap_err().to_string();
    let want = [
        "bad.toml:7:1: read.max_blok: unknown key (did you mean `max_block`?)",
        "bad.toml:10:8: register[0].type: unknown type `f23` (did you mean `f32`?)",
        "bad.toml:15:12: register[1].quantity: unknown quantity `votage` (did you mean `voltage`?)",
        "bad.toml:20:9: register[2].phase: `L2` on a single-phase meter",
        "bad.toml:21:9: register[2].scale: must be a finite number",
    ];
    for w in want {
        assert!(e.contains(w), "missing {w:?} in:\n{e}");
    }
}

#[test]
fn every_syntax_error_is_reported() {
    let src = "name = \"x\"\nmaker = \nmodel = \"m\"\nphases = 1 2\n";
    let e = parse(src, "s.toml").unwrap_err();
    assert!(e.0.len() >= 2, "{e}");
    assert_eq!((e.0[0].line, e.0[1].line), (2, 4), "{e}");
    // No input panics the loader.
    for cut in 0..src.len() {
        let _ = parse(&src[..cut], "s.toml");
    }
}

#[test]
fn overlaps_duplicates_and_blocks_are_checked() {
    let src = r#"name = "bad"
maker = "m"
model = "m"
source = { title = "t" }
phases = 3
[read]
max_block = 2
[[register]]
address = 0
type = "u32"
quantity = "voltage"
phase = "L1"
[[register]]
address = 1
type = "u16"
quantity = "current"
phase = "L1"
[[register]]
address = 10
type = "u16"
quantity = "voltage"
phase = "L1"
[[register]]
address = 20
type = "u64"
quantity = "energy"
[[register]]
address = 65535
type = "u32"
quantity = "power"
"#;
    let e = parse(src, "bad.toml").unwrap_err().to_string();
    for w in [
        "register[1]: input registers 1..1 overlap register[0] (0..1)",
        "register[2]: voltage on L1 is already filled by register[0]",
        "register[3]: a u64 at 20 needs a request of 4 registers, over `read.max_block` = 2",
        "register[4].address: a u32 at 65535 runs past register 65535",
    ] {
        assert!(e.contains(w), "missing {w:?} in:\n{e}");
    }
}

/// A file's `fallback` list: every error at once, and the plans it gives.
#[test]
fn a_fallback_list_is_checked_and_read_in_turn() {
    let head = "name = \"f\"\nmaker = \"m\"\nmodel = \"m\"\nsource = { title = \"t\" }\nphases = 1\n";
    let reg = "[[register]]\naddress = 0\ntype = \"u32\"\nquantity = \"energy\"\n";
    let errors =
        |read: &str| parse(&format!("{head}[read]\n{read}\n{reg}"), "f.toml").unwrap_err().to_string();
    for (read, want) in [
        ("fallback = 12", "f.toml:7:12: read.fallback: expected a list of block limits"),
        ("fallback = [4, 3, 2, 1, 1]", "read.fallback: 5 limits: at most 4 can be listed"),
        ("max_block = 20\nfallback = [20]", "read.fallback[0]: 20 is not smaller than `read.max_block` (20)"),
        ("fallback = [12, 12]", "read.fallback[1]: 12 is not smaller than the limit before it (12)"),
        (
            "even = true\nfallback = [8, 3]",
            "read.fallback[1]: 3 is odd: an `even` meter is read in even blocks",
        ),
        ("fallback = [0]", "read.fallback[0]"),
        (
            "fallback = [8, 1]",
            "register[0]: a u32 at 0 needs a request of 2 registers, over the last `read.fallback` limit, 1",
        ),
    ] {
        let e = errors(read);
        assert!(e.contains(want), "{read}: missing {want:?} in:\n{e}");
    }

    let d = parse(&format!("{head}[read]\nmax_block = 30\nmax_gap = 3\nfallback = [16, 2]\n{reg}"), "f.toml")
        .unwrap();
    let want = [
        Plan::Blocks { max_block: 30, max_gap: 3 },
        Plan::Blocks { max_block: 16, max_gap: 3 },
        Plan::Blocks { max_block: 2, max_gap: 3 },
    ];
    assert_eq!(d.plans(), want);
    assert_eq!(d.fallback(want[0], Exception::IllegalDataAddress), Some(want[1]));
    assert_eq!(d.fallback(want[2], Exception::IllegalDataValue), None, "nothing after the last");
    assert_eq!(d.fallback(want[0], Exception::SlaveDeviceFailure), None, "only 02 and 03 refuse a block");
    let none = parse(&format!("{head}[read]\nfallback = []\n{reg}"), "f.toml").unwrap();
    assert_eq!(none.plans(), [none.first_plan()]);
}

/// `no_value`: ABB's "no value here" (an integer type's largest value) read from `[read]` or
/// per register, checked; a register holding its marker gives no sample, the others do.
#[test]
fn a_no_value_marker_leaves_the_sample_out() {
    let head = "name = \"n\"\nmaker = \"m\"\nmodel = \"m\"\nsource = { title = \"t\" }\nphases = 3\n";
    let regs = r#"
[[register]]
address = 0
type = "u16"
quantity = "voltage"
phase = "L1"
[[register]]
address = 1
type = "i16"
scale = 0.001
quantity = "power_factor"
phase = "L1"
[[register]]
address = 2
type = "u32"
word_order = "low-first"
scale = 0.01
quantity = "current"
phase = "L1"
[[register]]
address = 4
type = "i64"
quantity = "power"
phase = "total"
[[register]]
address = 8
type = "f32"
quantity = "frequency"
phase = "total"
[[register]]
address = 10
type = "u16"
quantity = "voltage"
phase = "L2"
no_value = "none"
[[register]]
address = 11
type = "u16"
quantity = "voltage"
phase = "L3"
no_value = 0
"#;
    let d = parse(&format!("{head}[read]\nfunction = \"holding\"\nno_value = \"max\"\n{regs}"), "n.toml")
        .unwrap();
    let markers: Vec<Option<u64>> = d.registers.iter().map(|r| r.no_value).collect();
    assert_eq!(
        markers,
        [Some(0xFFFF), Some(0x7FFF), Some(0xFFFF_FFFF), Some(0x7FFF_FFFF_FFFF_FFFF), None, None, Some(0)]
    );
    let plain = parse(&format!("{head}[read]\nfunction = \"holding\"\n{regs}"), "n.toml").unwrap();
    assert_eq!(plain.registers.iter().filter(|r| r.no_value.is_some()).count(), 1, "only the register's own");

    let layout = d.layout(d.first_plan(), 0);
    let decode = |words: [u16; 12]| -> Vec<(Phase, Quantity)> {
        let s = layout.decode(&d, &[words.to_vec()], Phase::L1).unwrap();
        s.iter().map(|s| (s.phase, s.quantity)).collect()
    };
    let f = 50.0f32.to_bits();
    let (fh, fl) = ((f >> 16) as u16, f as u16);
    let good = [230, 950, 150, 0, 0, 0, 0, 1200, fh, fl, 231, 232];
    assert_eq!(decode(good).len(), 7);
    // Markers everywhere they are set: those samples are left out, the reading kept.
    let absent = [0xFFFF, 0x7FFF, 0xFFFF, 0xFFFF, 0x7FFF, 0xFFFF, 0xFFFF, 0xFFFF, fh, fl, 0xFFFF, 0];
    assert_eq!(
        decode(absent),
        [(Phase::Total, Quantity::Frequency), (Phase::L2, Quantity::Voltage)],
        "the f32 and the register whose marker is none stay"
    );
    // Without markers the same words are values: 0x7FFF is a power factor of 32.767, refused.
    let l = plain.layout(plain.first_plan(), 0);
    assert!(l.decode(&plain, &[absent.to_vec()], Phase::L1).is_err());

    let errors = |read: &str, reg: &str| {
        parse(&format!("{head}[read]\n{read}\n[[register]]\naddress = 0\nquantity = \"voltage\"\nphase = \"L1\"\n{reg}\n"), "n.toml")
            .unwrap_err()
            .to_string()
    };
    for (read, reg, want) in [
        ("no_value = \"mx\"", "type = \"u16\"", "read.no_value: unknown marker `mx` (did you mean `max`?)"),
        ("", "type = \"f32\"\nno_value = \"max\"", "register[0].no_value: a f32 has no no-value marker"),
        ("", "type = \"u16\"\nno_value = 65536", "register[0].no_value: 65536 is out of range"),
        ("", "type = \"u16\"\nno_value = -1", "register[0].no_value: -1 is out of range"),
        (
            "",
            "type = \"u16\"\nno_value = 1.5",
            "register[0].no_value: expected \"max\", \"none\" or the raw value",
        ),
    ] {
        let e = errors(read, reg);
        assert!(e.contains(want), "{read} {reg}: missing {want:?} in:\n{e}");
    }
}

/// A random table of non-overlapping registers.
fn table() -> impl Strategy<Value = Vec<(Function, u16, u16)>> {
    prop::collection::vec((any::<bool>(), 0u16..400, prop::sample::select(vec![1u16, 2, 4])), 1..40).prop_map(
        |raw| {
            let mut out: Vec<(Function, u16, u16)> = Vec::new();
            for (holding, addr, width) in raw {
                let f = if holding { Function::Holding } else { Function::Input };
                let clash = out.iter().any(|&(g, a, w)| g == f && a < addr + width && addr < a + w);
                if !clash {
                    out.push((f, addr, width));
                }
            }
            out
        },
    )
}

/// Whether every register alone fits a block of `max_block` (the loader refuses other tables).
fn fits(regs: &[(Function, u16, u16)], max_block: u16, even: bool) -> bool {
    regs.iter().all(|&r| group(&[r], Plan::Values, even)[0].0.count <= max_block)
}

fn check_grouping(regs: &[(Function, u16, u16)], plan: Plan, even: bool) -> Result<(), TestCaseError> {
    let groups = group(regs, plan, even);
    let mut seen = vec![0usize; regs.len()];
    for (block, members) in &groups {
        if let Plan::Blocks { max_block, max_gap } = plan {
            prop_assert!(block.count <= max_block, "{block:?} over {max_block}");
            let mut spans: Vec<(u16, u16)> = members.iter().map(|&m| (regs[m].1, regs[m].2)).collect();
            spans.sort();
            for w in spans.windows(2) {
                prop_assert!(w[1].0 - (w[0].0 + w[0].1) <= max_gap, "gap over {max_gap} in {block:?}");
            }
        } else {
            prop_assert_eq!(members.len(), 1, "one value per request");
        }
        if even {
            prop_assert!(block.start % 2 == 0 && block.count % 2 == 0, "{:?} not even", block);
        }
        for &m in members {
            let (f, a, w) = regs[m];
            prop_assert_eq!(f, block.function);
            prop_assert!(
                a >= block.start
                    && u32::from(a) + u32::from(w) <= u32::from(block.start) + u32::from(block.count)
            );
            seen[m] += 1;
        }
    }
    prop_assert!(seen.iter().all(|&n| n == 1), "every register read exactly once: {seen:?}");
    Ok(())
}

proptest! {
    /// No text panics the loader: random text, and a built-in file with bytes replaced.
    #[test]
    fn no_text_panics_the_loader(text in "\\PC{0,200}", at in 0usize..4000, with in "[ -~\n]{1,8}") {
        let _ = parse(&text, "p.toml");
        let base = BUILT_IN[at % BUILT_IN.len()].1;
        let mut cut = at.min(base.len());
        while !base.is_char_boundary(cut) {
            cut -= 1;
        }
        let mutated = format!("{}{with}{}", &base[..cut], &base[(cut + with.len()).min(base.len())..]);
        let _ = parse(&mutated, "p.toml");
    }

    #[test]
    fn grouping_reads_every_register_once_within_the_limits(
        regs in table(), max_block in 4u16..126, max_gap in 0u16..20, even in any::<bool>(),
    ) {
        let max_block = if even { max_block & !1 } else { max_block };
        prop_assume!(fits(&regs, max_block, even));
        check_grouping(&regs, Plan::Blocks { max_block, max_gap }, even)?;
        check_grouping(&regs, Plan::Values, even)?;
    }

    /// Every plan of a definition, fallbacks included, reads every due register exactly once
    /// and decodes back the values put in.
    #[test]
    fn every_plan_of_a_definition_covers_its_table(
        regs in table(), max_block in 4u16..126, max_gap in 0u16..20, even in any::<bool>(), poll in 0u64..6,
        listed in proptest::option::of(prop::collection::vec(1u16..126, 0..=4)),
    ) {
        let max_block = if even { max_block & !1 } else { max_block };
        prop_assume!(fits(&regs, max_block, even));
        // Halving, or a list as the checker lets through: each limit smaller than the one
        // before, even for an even meter, wide enough for every register.
        let fallback = match listed {
            None => Fallback::Halve,
            Some(mut ls) => {
                if even {
                    ls.iter_mut().for_each(|l| *l &= !1);
                }
                ls.sort_unstable_by(|a, b| b.cmp(a));
                ls.dedup();
                ls.retain(|&l| l < max_block && fits(&regs, l, even));
                let mut limits = [0; Fallback::MAX_LISTED];
                limits[..ls.len()].copy_from_slice(&ls);
                Fallback::Listed { limits, len: ls.len() as u8 }
            }
        };
        let mut phases = Phase::ALL.iter().cycle();
        let quantities = Quantity::ALL;
        let registers: Vec<Register> = regs.iter().enumerate().map(|(i, &(function, address, width))| Register {
            function,
            address,
            ty: match width { 1 => RegType::U16, 2 => RegType::U32, _ => RegType::U64 },
            word_order: WordOrder::HighFirst,
            byte_order: ByteOrder::Big,
            scale: 1.0,
            offset: 0.0,
            divisor: None,
            quantity: quantities[i % 9],
            phase: phases.next().copied(),
            every: 1 + (i as u32 % 3),
            no_value: None,
        }).collect();
        let d = Definition {
            name: "p".into(), maker: String::new(), model: String::new(), description: String::new(),
            source: Source::default(), phases: 3,
            line: LineDefaults { baud: 9600, parity: 'N', stop_bits: 1, address: 1 },
            read: ReadSettings { function: Function::Input, word_order: WordOrder::HighFirst, byte_order: ByteOrder::Big, max_block, max_gap, even, fallback, no_value_max: false },
            probe: Vec::new(), registers,
        };
        if let Some(l) = fallback.listed() {
            prop_assert_eq!(d.plans().len(), 1 + l.len());
        }
        for plan in d.plans() {
            let layout = d.layout(plan, poll);
            let due: Vec<usize> = (0..d.registers.len()).filter(|&i| d.registers[i].due(poll)).collect();
            prop_assert_eq!(layout.values(), due.len());
            // Each register holds its own index (fits every type).
            let replies: Vec<Vec<u16>> = layout.requests(1).iter().map(|r| {
                let (function, start, count) = match r.pdu {
                    Pdu::ReadInput { start, count } => (Function::Input, start, count),
                    Pdu::ReadHolding { start, count } => (Function::Holding, start, count),
                    _ => unreachable!(),
                };
                let mut words = vec![0u16; usize::from(count)];
                for (i, reg) in d.registers.iter().enumerate() {
                    if reg.function == function && reg.address >= start && reg.address + reg.width() <= start + count {
                        words[usize::from(reg.address - start + reg.width() - 1)] = i as u16;
                    }
                }
                if let Plan::Blocks { max_block, .. } = plan {
                    assert!(count <= max_block);
                }
                words
            }).collect();
            let samples = layout.decode(&d, &replies, Phase::L1).unwrap();
            let got: Vec<f64> = samples.iter().map(|s| s.value).collect();
            let want: Vec<f64> = due.iter().map(|&i| i as f64).collect();
            prop_assert_eq!(got, want);
        }
    }
}

/// A register word: mostly small, so that most images are plausible readings; sometimes any.
fn word() -> impl Strategy<Value = u16> {
    prop_oneof![3 => 0u16..=120, 1 => any::<u16>()]
}

/// Equal samples, values compared bit for bit (0.0 and -0.0 differ).
fn same_bits(a: &[Sample], b: &[Sample]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.phase == y.phase && x.quantity == y.quantity && x.value.to_bits() == y.value.to_bits()
        })
}

/// `got` is `want`, or the next double either side. The hand-written decoders multiply by a
/// decimal scale (× 0.1), the definitions divide (÷ 10: 2301 reads 230.1, not
/// 230.10000000000002): the one deliberate difference, at most one unit in the last place.
fn within_one_ulp(got: f64, want: f64) -> bool {
    got == want || (got.signum() == want.signum() && got.to_bits().abs_diff(want.to_bits()) == 1)
}

/// The definition's samples against the hand-written decoder's: the same phases and quantities
/// in the same order, each value `exact` (computed here from the words, not by the engine) bit
/// for bit, and the hand-written one's bit for bit where `bitwise`, else within one unit in the
/// last place. A refused reading is refused with the error its exact values give.
fn check_against_hand(
    got: Result<Vec<Sample>, crate::meter::DecodeError>,
    hand: &[Sample],
    exact: &[f64],
    bitwise: &[bool],
) -> Result<(), TestCaseError> {
    let want: Vec<Sample> =
        hand.iter().zip(exact).map(|(h, &v)| Sample::new(h.phase, h.quantity, v)).collect();
    match crate::meter::DecodeError::first_implausible(&want) {
        Some(e) => prop_assert_eq!(got, Err(e)),
        None => {
            let got = got.map_err(|e| TestCaseError::fail(format!("refused: {e}")))?;
            prop_assert!(same_bits(&got, &want), "{:?}\n{:?}", got, want);
            for ((g, h), &b) in got.iter().zip(hand).zip(bitwise) {
                if b {
                    prop_assert_eq!(g.value.to_bits(), h.value.to_bits(), "{:?} {:?}", g, h);
                } else {
                    prop_assert!(within_one_ulp(g.value, h.value), "{:?} {:?}", g, h);
                }
            }
        }
    }
    Ok(())
}

/// The old engine, value by value, for the layout of `plan` at `poll` (where each register is
/// read found again by [`group`]): what the decoding must keep giving, bit for bit.
fn reference(
    d: &Definition,
    plan: Plan,
    poll: u64,
    replies: &[Vec<u16>],
    meter_phase: Phase,
) -> Result<Vec<Sample>, crate::meter::DecodeError> {
    use crate::meter::DecodeError;
    let due: Vec<usize> = (0..d.registers.len()).filter(|&i| d.registers[i].due(poll)).collect();
    let spans: Vec<(Function, u16, u16)> = due
        .iter()
        .map(|&i| (d.registers[i].function, d.registers[i].address, d.registers[i].width()))
        .collect();
    let groups = group(&spans, plan, d.read.even);
    if replies.len() != groups.len() {
        return Err(DecodeError::Missing("a reply"));
    }
    let mut at: Vec<(usize, usize, usize)> = Vec::new();
    for (b, (block, members)) in groups.iter().enumerate() {
        for &m in members {
            at.push((due[m], b, usize::from(d.registers[due[m]].address - block.start)));
        }
    }
    at.sort();
    let mut out = Vec::new();
    for (i, b, offset) in at {
        let r = &d.registers[i];
        let words = replies[b]
            .get(offset..offset + usize::from(r.width()))
            .ok_or(DecodeError::Missing("a register of the definition's table"))?;
        let s = Sample::new(r.phase_on(meter_phase), r.quantity, super::plan::value(r, words));
        if let Some(e) = DecodeError::first_implausible(&[s]) {
            return Err(e);
        }
        out.push(s);
    }
    Ok(out)
}

/// What the loader sets `Register::divisor` to: `1 / scale` when it is a whole number above 1.
fn divisor_of(scale: f64) -> Option<f64> {
    let d = 1.0 / scale;
    (scale > 0.0 && scale < 1.0 && (d - d.round()).abs() < 1e-9 * d).then(|| d.round())
}

/// A register image: the word at (function, address) for `seed`, mostly small.
fn image_word(seed: u64, function: Function, address: u16) -> u16 {
    let mut x = seed
        ^ (u64::from(address) << 1 | u64::from(function == Function::Holding))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    if x & 3 == 0 {
        (x >> 16) as u16
    } else {
        ((x >> 16) % 121) as u16
    }
}

/// The replies of `layout` from the image of `seed`, reply `cut.0` cut to `cut.1` registers.
fn replies_of(layout: &Layout, seed: u64, cut: Option<(usize, usize)>) -> Vec<Vec<u16>> {
    let mut replies: Vec<Vec<u16>> = layout
        .blocks
        .iter()
        .map(|b| (0..b.count).map(|k| image_word(seed, b.function, b.start + k)).collect())
        .collect();
    if let Some((k, len)) = cut {
        let n = replies.len();
        replies[k % n].truncate(len);
    }
    replies
}

fn check_against_reference(
    d: &Definition,
    seed: u64,
    cut: Option<(usize, usize)>,
    poll: u64,
    meter_phase: Phase,
) -> Result<(), TestCaseError> {
    for plan in d.plans() {
        let layout = d.layout(plan, poll);
        let replies = replies_of(&layout, seed, cut);
        let want = reference(d, plan, poll, &replies, meter_phase);
        let got = layout.decode(d, &replies, meter_phase);
        match (&got, &want) {
            (Ok(g), Ok(w)) => prop_assert!(same_bits(g, w), "{}: {:?}\n{:?}", d.name, g, w),
            _ => prop_assert_eq!(&got, &want, "{}", d.name),
        }
        // Into a used buffer: the same.
        let mut out = vec![Sample::new(Phase::N, Quantity::Alarm, 7.0); 3];
        let r = layout.decode_into(d, &replies, meter_phase, &mut out);
        prop_assert_eq!(r.is_ok(), want.is_ok());
        if let Ok(w) = &want {
            prop_assert!(same_bits(&out, w));
        }
    }
    Ok(())
}

proptest! {
    /// The PZEM by `pzem-016` is `pzem::decode` sample for sample on every phase setting:
    /// phases and quantities equal, energy and alarm bit for bit, the values the hand-written
    /// decoder multiplies by 0.1, 0.01 or 0.001 within one unit in the last place (see
    /// [`within_one_ulp`]); a reading is refused exactly when its values are implausible.
    #[test]
    fn the_pzem_definition_decodes_as_pzem_decode(regs in prop::collection::vec(word(), 10)) {
        let d = def("pzem-016");
        let layout = d.layout(d.first_plan(), 0);
        let u32lw = |lo: u16, hi: u16| f64::from(u32::from(lo) | u32::from(hi) << 16);
        let exact = [
            f64::from(regs[0]) / 10.0,
            u32lw(regs[1], regs[2]) / 1000.0,
            u32lw(regs[3], regs[4]) / 10.0,
            u32lw(regs[5], regs[6]) / 1000.0,
            f64::from(regs[7]) / 10.0,
            f64::from(regs[8]) / 100.0,
            f64::from(u8::from(regs[9] != 0)),
        ];
        let bitwise = [false, false, false, true, false, false, true];
        for phase in Phase::ALL {
            let hand = pzem::decode(&regs, phase).unwrap();
            check_against_hand(layout.decode(&d, std::slice::from_ref(&regs), phase), &hand, &exact, &bitwise)?;
        }
    }

    /// The RX380 by `rx380` is the hand-written RX380 decoder sample for sample (all 18 of its
    /// quantities overlap): the same phases and quantities, energies and powers bit for bit,
    /// the rest within one unit in the last place, as for the PZEM.
    #[test]
    fn the_rx380_definition_decodes_as_the_hand_written_driver(
        mut regs in prop::collection::vec(word(), 40), small_counters in any::<bool>(),
    ) {
        if small_counters {
            for k in [0, 1, 4, 5, 8, 9] {
                regs[k] = 0;
            }
        }
        let d = def("rx380");
        let layout = d.layout(d.first_plan(), 0);
        let w32 = |k: usize| u32::from(regs[k]) << 16 | u32::from(regs[k + 1]);
        let w64 = |k: usize| (u64::from(w32(k)) << 32 | u64::from(w32(k + 2))) as i64 as f64;
        let mut exact = vec![
            w64(0) / 1000.0,
            w64(4) / 1000.0,
            w64(8) / 1000.0,
            f64::from(w32(12) as i32),
            f64::from(w32(14)),
            f64::from(w32(16) as i32),
            f64::from(regs[18] as i16) / 1000.0,
            f64::from(regs[19]) / 100.0,
        ];
        exact.extend((20..28).step_by(2).map(|k| f64::from(w32(k)) / 1000.0));
        exact.extend((28..40).step_by(2).map(|k| f64::from(w32(k)) / 10.0));
        let mut bitwise = vec![true; 6];
        bitwise.resize(18, false);
        let hand = hand_rx380(&regs);
        check_against_hand(layout.decode(&d, &[regs], Phase::L1), &hand, &exact, &bitwise)?;
    }

    /// Every built-in definition, every plan, random register images (short replies too):
    /// the decoding gives the old engine's samples bit for bit, or its error.
    #[test]
    fn decoding_is_the_old_engine_bit_for_bit(
        seed in any::<u64>(),
        which in 0usize..64,
        cut in prop::option::weighted(0.2, (0usize..8, 0usize..80)),
        poll in 0u64..4,
        phase in prop::sample::select(Phase::ALL.to_vec()),
    ) {
        let defs = built_in();
        check_against_reference(&defs[which % defs.len()], seed, cut, poll, phase)?;
    }

    /// The same for random tables of every type, word and byte order, scale and offset.
    #[test]
    fn decoding_random_tables_is_the_old_engine_bit_for_bit(
        regs in table(),
        kinds in prop::collection::vec((0usize..3, any::<bool>(), any::<bool>(), 0usize..5, -2i8..3), 40),
        seed in any::<u64>(),
        cut in prop::option::weighted(0.2, (0usize..8, 0usize..80)),
        phase in prop::sample::select(Phase::ALL.to_vec()),
    ) {
        let registers: Vec<Register> = regs.iter().zip(&kinds).enumerate().map(|(i, (&(function, address, width), &(t, low, swap, sc, off)))| {
            let ty = match width {
                1 => [RegType::U16, RegType::I16, RegType::Bool][t],
                2 => [RegType::U32, RegType::I32, RegType::F32][t],
                _ => [RegType::U64, RegType::I64, RegType::F64][t],
            };
            let scale = [1.0, 0.1, 0.001, 2.5, 1e-9][sc];
            Register {
                function,
                address,
                ty,
                word_order: if low { WordOrder::LowFirst } else { WordOrder::HighFirst },
                byte_order: if swap { ByteOrder::Little } else { ByteOrder::Big },
                scale,
                offset: f64::from(off) * 0.5,
                divisor: divisor_of(scale),
                quantity: Quantity::ALL[i % Quantity::ALL.len()],
                phase: if i % 2 == 0 { None } else { Some(Phase::ALL[i % 8]) },
                every: 1 + (i as u32 % 2),
                no_value: None,
            }
        }).collect();
        let d = Definition {
            name: "p".into(), maker: String::new(), model: String::new(), description: String::new(),
            source: Source::default(), phases: 3,
            line: LineDefaults { baud: 9600, parity: 'N', stop_bits: 1, address: 1 },
            read: ReadSettings { max_block: 125, max_gap: 4, ..ReadSettings::DEFAULT },
            probe: Vec::new(), registers,
        };
        for poll in 0..2 {
            check_against_reference(&d, seed, cut, poll, phase)?;
        }
    }
}

/// Each built-in is in a file of its name: a user file overrides one by that name, known
/// without parsing the built-ins.
#[test]
fn every_built_in_is_in_a_file_of_its_name() {
    for (file, text) in BUILT_IN {
        let d = parse(text, file).unwrap();
        assert_eq!(Some(d.name.as_str()), file.strip_suffix(".toml"));
        assert!(is_built_in_name(&d.name));
    }
    assert!(!is_built_in_name("my-meter"));
}
