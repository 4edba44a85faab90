//! Modbus RTU requests and replies as plain bytes: encoding, and finding a reply in what came
//! back from the line. No I/O here; the bus engine feeds bytes in and acts on the verdict.

use super::crc::{append_crc, check_crc};
use std::fmt;

/// Function codes the gateway speaks.
pub mod fc {
    pub const READ_COILS: u8 = 0x01;
    pub const READ_HOLDING: u8 = 0x03;
    pub const READ_INPUT: u8 = 0x04;
    pub const WRITE_COIL: u8 = 0x05;
    pub const WRITE_SINGLE: u8 = 0x06;
    pub const WRITE_COILS: u8 = 0x0F;
    pub const WRITE_MULTIPLE: u8 = 0x10;
    /// Report slave id.
    pub const REPORT_ID: u8 = 0x11;
    /// PZEM "reset energy" (user-defined range).
    pub const PZEM_RESET_ENERGY: u8 = 0x42;
}

/// The protocol data unit of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pdu {
    ReadHolding {
        start: u16,
        count: u16,
    },
    ReadInput {
        start: u16,
        count: u16,
    },
    WriteSingle {
        register: u16,
        value: u16,
    },
    /// A function with no payload whose good reply is the 4-byte echo (PZEM reset energy).
    EchoCommand {
        function: u8,
    },
    /// FC 01: coils as bits.
    ReadCoils {
        start: u16,
        count: u16,
    },
    /// FC 05: one coil on or off; the reply echoes the request.
    WriteCoil {
        coil: u16,
        on: bool,
    },
    /// FC 0F: consecutive coils; the reply repeats start and quantity.
    WriteCoils {
        start: u16,
        values: Vec<bool>,
    },
    /// FC 10: consecutive holding registers; the reply repeats start and quantity.
    WriteRegisters {
        start: u16,
        values: Vec<u16>,
    },
}

impl Pdu {
    pub fn function(&self) -> u8 {
        match self {
            Pdu::ReadHolding { .. } => fc::READ_HOLDING,
            Pdu::ReadInput { .. } => fc::READ_INPUT,
            Pdu::WriteSingle { .. } => fc::WRITE_SINGLE,
            Pdu::EchoCommand { function } => *function,
            Pdu::ReadCoils { .. } => fc::READ_COILS,
            Pdu::WriteCoil { .. } => fc::WRITE_COIL,
            Pdu::WriteCoils { .. } => fc::WRITE_COILS,
            Pdu::WriteRegisters { .. } => fc::WRITE_MULTIPLE,
        }
    }

    /// Length in bytes of a good reply (address and CRC included).
    pub fn reply_len(&self) -> usize {
        match self {
            Pdu::ReadHolding { count, .. } | Pdu::ReadInput { count, .. } => 5 + 2 * *count as usize,
            Pdu::ReadCoils { count, .. } => 5 + (*count as usize).div_ceil(8),
            Pdu::WriteSingle { .. } | Pdu::WriteCoil { .. } | Pdu::WriteCoils { .. } => 8,
            Pdu::WriteRegisters { .. } => 8,
            Pdu::EchoCommand { .. } => 4,
        }
    }

    /// Whether the reply carries a byte count (reads).
    fn counted_reply(&self) -> bool {
        matches!(self, Pdu::ReadHolding { .. } | Pdu::ReadInput { .. } | Pdu::ReadCoils { .. })
    }
}

/// A request to one slave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub address: u8,
    pub pdu: Pdu,
}

impl Request {
    pub fn read_input(address: u8, start: u16, count: u16) -> Self {
        Request { address, pdu: Pdu::ReadInput { start, count } }
    }
    pub fn read_holding(address: u8, start: u16, count: u16) -> Self {
        Request { address, pdu: Pdu::ReadHolding { start, count } }
    }
    pub fn write_single(address: u8, register: u16, value: u16) -> Self {
        Request { address, pdu: Pdu::WriteSingle { register, value } }
    }
    pub fn read_coils(address: u8, start: u16, count: u16) -> Self {
        Request { address, pdu: Pdu::ReadCoils { start, count } }
    }
    pub fn write_coil(address: u8, coil: u16, on: bool) -> Self {
        Request { address, pdu: Pdu::WriteCoil { coil, on } }
    }
    pub fn write_coils(address: u8, start: u16, values: Vec<bool>) -> Self {
        Request { address, pdu: Pdu::WriteCoils { start, values } }
    }
    pub fn write_registers(address: u8, start: u16, values: Vec<u16>) -> Self {
        Request { address, pdu: Pdu::WriteRegisters { start, values } }
    }

    /// The request as it goes on the wire, CRC included.
    pub fn encode(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(8);
        f.push(self.address);
        f.push(self.pdu.function());
        match &self.pdu {
            Pdu::ReadHolding { start, count }
            | Pdu::ReadInput { start, count }
            | Pdu::ReadCoils { start, count } => {
                f.extend_from_slice(&start.to_be_bytes());
                f.extend_from_slice(&count.to_be_bytes());
            }
            Pdu::WriteSingle { register, value } => {
                f.extend_from_slice(&register.to_be_bytes());
                f.extend_from_slice(&value.to_be_bytes());
            }
            Pdu::WriteCoil { coil, on } => {
                f.extend_from_slice(&coil.to_be_bytes());
                f.extend_from_slice(&(if *on { 0xFF00u16 } else { 0 }).to_be_bytes());
            }
            Pdu::WriteCoils { start, values } => {
                f.extend_from_slice(&start.to_be_bytes());
                f.extend_from_slice(&(values.len() as u16).to_be_bytes());
                let bytes = pack_bits(values);
                f.push(bytes.len() as u8);
                f.extend_from_slice(&bytes);
            }
            Pdu::WriteRegisters { start, values } => {
                f.extend_from_slice(&start.to_be_bytes());
                f.extend_from_slice(&(values.len() as u16).to_be_bytes());
                f.push((2 * values.len()) as u8);
                for v in values {
                    f.extend_from_slice(&v.to_be_bytes());
                }
            }
            Pdu::EchoCommand { .. } => {}
        }
        append_crc(&mut f);
        f
    }

    /// True for broadcast (address 0): slaves act but never answer.
    pub fn is_broadcast(&self) -> bool {
        self.address == 0
    }
}

/// Coils packed eight to a byte, the first in the lowest bit.
pub fn pack_bits(values: &[bool]) -> Vec<u8> {
    let mut bytes = vec![0u8; values.len().div_ceil(8)];
    for (i, &v) in values.iter().enumerate() {
        if v {
            bytes[i / 8] |= 1 << (i % 8);
        }
    }
    bytes
}

/// A good reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Registers(Vec<u16>),
    /// Coils read, in order.
    Bits(Vec<bool>),
    /// The slave echoed a write or a command.
    Echo,
}

/// Why a transaction did not produce a good reply. Every variant is counted by the bus engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Nothing at all came back in time.
    Timeout,
    /// A frame from our slave whose CRC does not match.
    Crc,
    /// The slave answered with a Modbus exception.
    Exception(Exception),
    /// A well-formed frame from another slave address, and nothing from ours.
    ForeignAddress(u8),
    /// Bytes from our slave, but fewer than a full reply before the timeout.
    Short { got: usize, want: usize },
    /// Bytes that make no frame at all.
    Garbled { bytes: usize },
    /// A CRC-valid reply whose content does not fit the request (byte count, echo mismatch).
    Malformed(&'static str),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Timeout => write!(f, "no reply (timeout)"),
            FrameError::Crc => write!(f, "reply with a bad CRC"),
            FrameError::Exception(e) => write!(f, "exception reply {:#04x} ({e})", e.code()),
            FrameError::ForeignAddress(a) => write!(f, "a frame from slave {a} instead of ours"),
            FrameError::Short { got, want } => write!(f, "short reply: {got} of {want} bytes"),
            FrameError::Garbled { bytes } => write!(f, "{bytes} garbled bytes, no frame"),
            FrameError::Malformed(why) => write!(f, "malformed reply: {why}"),
        }
    }
}

/// A Modbus exception, by name. The wire byte is [`Exception::code`]; a code this list does not
/// name is kept as [`Exception::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Exception {
    /// 0x01.
    IllegalFunction,
    /// 0x02: the meter has no such register (or not in one read).
    IllegalDataAddress,
    /// 0x03: a count or value it refuses (some meters say this of a long block).
    IllegalDataValue,
    /// 0x04.
    SlaveDeviceFailure,
    /// 0x05.
    Acknowledge,
    /// 0x06.
    SlaveDeviceBusy,
    /// 0x0A: a gateway has no path to the unit.
    GatewayPathUnavailable,
    /// 0x0B: a gateway's target did not answer.
    GatewayTargetFailed,
    /// Any other code.
    Other(u8),
}

impl Exception {
    /// The exception of wire byte `code`.
    pub fn from_code(code: u8) -> Exception {
        match code {
            0x01 => Exception::IllegalFunction,
            0x02 => Exception::IllegalDataAddress,
            0x03 => Exception::IllegalDataValue,
            0x04 => Exception::SlaveDeviceFailure,
            0x05 => Exception::Acknowledge,
            0x06 => Exception::SlaveDeviceBusy,
            0x0A => Exception::GatewayPathUnavailable,
            0x0B => Exception::GatewayTargetFailed,
            c => Exception::Other(c),
        }
    }

    /// The wire byte.
    pub fn code(self) -> u8 {
        match self {
            Exception::IllegalFunction => 0x01,
            Exception::IllegalDataAddress => 0x02,
            Exception::IllegalDataValue => 0x03,
            Exception::SlaveDeviceFailure => 0x04,
            Exception::Acknowledge => 0x05,
            Exception::SlaveDeviceBusy => 0x06,
            Exception::GatewayPathUnavailable => 0x0A,
            Exception::GatewayTargetFailed => 0x0B,
            Exception::Other(c) => c,
        }
    }

    /// Whether the meter refuses the registers asked for (illegal address or value): a meter
    /// read in smaller blocks may answer then.
    pub fn refuses_the_block(self) -> bool {
        matches!(self, Exception::IllegalDataAddress | Exception::IllegalDataValue)
    }

    /// Its name, as the Modbus specification gives it.
    pub fn name(self) -> &'static str {
        match self {
            Exception::IllegalFunction => "illegal function",
            Exception::IllegalDataAddress => "illegal data address",
            Exception::IllegalDataValue => "illegal data value",
            Exception::SlaveDeviceFailure => "slave device failure",
            Exception::Acknowledge => "acknowledge",
            Exception::SlaveDeviceBusy => "slave device busy",
            Exception::GatewayPathUnavailable => "gateway path unavailable",
            Exception::GatewayTargetFailed => "gateway target device failed to respond",
            Exception::Other(_) => "unknown code",
        }
    }
}

impl fmt::Display for Exception {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the bytes received so far amount to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// Keep reading: a reply may still be on its way.
    NeedMore,
    /// A verdict. `skipped` bytes before the frame were noise (or another slave's frame).
    Done { result: Result<Reply, FrameError>, skipped: usize },
}

/// Looks for the reply to `req` in `buf` in one go (see [`ReplyScanner`] for the rules).
pub fn scan_reply(req: &Request, buf: &[u8]) -> Scan {
    ReplyScanner::new(req).feed(buf)
}

/// The longest frame any reply can be: address, function, byte count, 255 data bytes, CRC.
pub const MAX_REPLY: usize = 5 + 255;

/// Finds the reply to one request in a buffer that grows as bytes arrive, doing work linear in
/// the bytes received however they come (one at a time or all at once) and whatever they are.
///
/// Every position of the buffer is looked at once. A position holding our address followed by
/// our function code (or its exception form) is a *candidate*: its header gives the frame's
/// length, and its CRC is checked once, when the last byte of that length is in. A candidate
/// still incomplete waits in a queue ordered by where it ends, so noise such as `01 04 FF` in
/// front of the real reply does not hide it. The verdicts:
/// - a complete candidate with a good CRC whose content fits the request (or is a Modbus
///   exception): that reply, at once; `skipped` is where it starts;
/// - otherwise, once no candidate is left waiting: the first candidate that failed its CRC
///   (`Crc`), or the first CRC-valid one whose content did not fit (`Malformed`);
/// - otherwise: keep reading. At the timeout, [`ReplyScanner::at_timeout`] gives that first
///   failure, or sorts the leftover bytes ([`classify_timeout`]).
///
/// The cost: one look per byte, one CRC per candidate (at most [`MAX_REPLY`] bytes), one
/// queue operation per waiting candidate; [`ReplyScanner::work`] counts them so tests can
/// hold the bound.
#[derive(Debug)]
pub struct ReplyScanner<'r> {
    req: &'r Request,
    /// Positions before this one have been looked at.
    walked: usize,
    /// Incomplete candidates as (end, start), smallest end first.
    waiting: std::collections::BinaryHeap<std::cmp::Reverse<(usize, usize)>>,
    /// The first candidate that was complete but no good reply, and why.
    first_failure: Option<(usize, FrameError)>,
    work: u64,
}

impl<'r> ReplyScanner<'r> {
    pub fn new(req: &'r Request) -> Self {
        ReplyScanner {
            req,
            walked: 0,
            waiting: std::collections::BinaryHeap::new(),
            first_failure: None,
            work: 0,
        }
    }

    /// Units of work done so far: positions looked at, CRC bytes, queue operations.
    pub fn work(&self) -> u64 {
        self.work
    }

    /// Takes the whole buffer received so far (each call's buffer extends the previous one).
    pub fn feed(&mut self, buf: &[u8]) -> Scan {
        // Candidates that were waiting and are now complete, in the order they complete.
        while let Some(&std::cmp::Reverse((end, start))) = self.waiting.peek() {
            if end > buf.len() {
                break;
            }
            self.waiting.pop();
            self.work += 1;
            if let Some(found) = self.judge(buf, start, end) {
                return found;
            }
        }
        let function = self.req.pdu.function();
        while self.walked < buf.len() {
            let start = self.walked;
            self.work += 1;
            if buf[start] != self.req.address {
                self.walked += 1;
                continue;
            }
            let Some(&f) = buf.get(start + 1) else { break };
            let want = if f == function | 0x80 {
                5
            } else if f != function {
                self.walked += 1;
                continue;
            } else if self.req.pdu.counted_reply() {
                let Some(&bc) = buf.get(start + 2) else { break };
                5 + bc as usize
            } else {
                self.req.pdu.reply_len()
            };
            self.walked += 1;
            let end = start + want;
            if end > buf.len() {
                self.waiting.push(std::cmp::Reverse((end, start)));
                self.work += 1;
                continue;
            }
            if let Some(found) = self.judge(buf, start, end) {
                return found;
            }
        }
        match &self.first_failure {
            Some((skipped, e)) if self.waiting.is_empty() => {
                Scan::Done { result: Err(e.clone()), skipped: *skipped }
            }
            _ => Scan::NeedMore,
        }
    }

    /// The verdict when the timeout has come with `buf` received.
    pub fn at_timeout(&self, buf: &[u8]) -> FrameError {
        match &self.first_failure {
            Some((_, e)) => e.clone(),
            None => classify_timeout(self.req, buf),
        }
    }

    /// A complete candidate: the reply if it is one, else remembered as a failure.
    fn judge(&mut self, buf: &[u8], start: usize, end: usize) -> Option<Scan> {
        let frame = &buf[start..end];
        self.work += frame.len() as u64;
        let failure = if check_crc(frame) {
            match parse_frame(self.req, frame) {
                Err(FrameError::Malformed(why)) => FrameError::Malformed(why),
                result => return Some(Scan::Done { result, skipped: start }),
            }
        } else {
            FrameError::Crc
        };
        self.first_failure.get_or_insert((start, failure));
        None
    }
}

/// Decodes a complete, CRC-checked frame from our slave.
fn parse_frame(req: &Request, frame: &[u8]) -> Result<Reply, FrameError> {
    let f = frame[1];
    if f & 0x80 != 0 {
        return Err(FrameError::Exception(Exception::from_code(frame[2])));
    }
    match &req.pdu {
        Pdu::ReadHolding { count, .. } | Pdu::ReadInput { count, .. } => {
            let bc = frame[2] as usize;
            if bc != 2 * *count as usize {
                return Err(FrameError::Malformed("byte count differs from the registers asked for"));
            }
            let regs = frame[3..3 + bc].chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
            Ok(Reply::Registers(regs))
        }
        Pdu::ReadCoils { count, .. } => {
            let bc = frame[2] as usize;
            if bc != (*count as usize).div_ceil(8) {
                return Err(FrameError::Malformed("byte count differs from the coils asked for"));
            }
            let bits = (0..*count as usize).map(|i| frame[3 + i / 8] & (1 << (i % 8)) != 0).collect();
            Ok(Reply::Bits(bits))
        }
        Pdu::WriteCoils { .. } | Pdu::WriteRegisters { .. } => {
            // Address, function, start and quantity, as in the request.
            if frame[..6] == req.encode()[..6] {
                Ok(Reply::Echo)
            } else {
                Err(FrameError::Malformed("the reply names other registers than the request"))
            }
        }
        Pdu::WriteSingle { .. } | Pdu::WriteCoil { .. } | Pdu::EchoCommand { .. } => {
            if frame == req.encode().as_slice() {
                Ok(Reply::Echo)
            } else {
                Err(FrameError::Malformed("echo differs from the request"))
            }
        }
    }
}

/// What the bytes left over at the timeout say about why no reply came.
pub fn classify_timeout(req: &Request, buf: &[u8]) -> FrameError {
    if buf.is_empty() {
        return FrameError::Timeout;
    }
    if let Some(pos) = buf.iter().position(|&b| b == req.address) {
        if buf.get(pos + 1).is_some_and(|&f| f & 0x7F == req.pdu.function()) {
            return FrameError::Short { got: buf.len() - pos, want: req.pdu.reply_len() };
        }
    }
    if let Some(addr) = foreign_frame(buf) {
        return FrameError::ForeignAddress(addr);
    }
    FrameError::Garbled { bytes: buf.len() }
}

/// The address of a CRC-valid frame at the start of `buf` (any common reply shape).
fn foreign_frame(buf: &[u8]) -> Option<u8> {
    if buf.len() < 4 {
        return None;
    }
    let mut lens = vec![4usize, 5, 8];
    if matches!(buf[1], fc::READ_HOLDING | fc::READ_INPUT) {
        lens.push(5 + buf[2] as usize);
    }
    lens.into_iter().any(|n| buf.len() >= n && check_crc(&buf[..n])).then_some(buf[0])
}

/// Time on the wire for one character: start bit, data bits, parity bit, stop bits.
pub fn char_time(baud: u32, data_bits: u8, parity: bool, stop_bits: u8) -> std::time::Duration {
    let bits = 1 + data_bits as u32 + parity as u32 + stop_bits as u32;
    std::time::Duration::from_nanos(bits as u64 * 1_000_000_000 / baud.max(1) as u64)
}

/// The silence that must separate two frames: 3.5 characters, and at least 1.75 ms above
/// 19200 baud as the Modbus serial-line specification fixes it.
pub fn inter_frame_gap(char_time: std::time::Duration, baud: u32) -> std::time::Duration {
    if baud > 19200 {
        std::time::Duration::from_micros(1750)
    } else {
        char_time * 7 / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every wire byte comes back as itself through the named exception, and the names are
    /// the specification's.
    #[test]
    fn exceptions_keep_their_wire_byte_and_tell_their_name() {
        for code in 0..=255u8 {
            assert_eq!(Exception::from_code(code).code(), code);
        }
        assert_eq!(Exception::from_code(2), Exception::IllegalDataAddress);
        assert_eq!(Exception::from_code(0x0B), Exception::GatewayTargetFailed);
        assert_eq!(Exception::from_code(0x42), Exception::Other(0x42));
        assert_eq!(
            FrameError::Exception(Exception::IllegalDataValue).to_string(),
            "exception reply 0x03 (illegal data value)"
        );
        assert_eq!(
            FrameError::Exception(Exception::Other(0x42)).to_string(),
            "exception reply 0x42 (unknown code)"
        );
        let refusing: Vec<u8> =
            (0..=255u8).filter(|&c| Exception::from_code(c).refuses_the_block()).collect();
        assert_eq!(refusing, [2, 3]);
    }

    pub(crate) fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect()
    }

    #[test]
    fn encodes_reference_requests() {
        assert_eq!(Request::read_input(1, 0, 10).encode(), hex("01 04 00 00 00 0A 70 0D"));
        assert_eq!(Request::read_input(2, 0, 10).encode(), hex("02 04 00 00 00 0A 70 3E"));
        assert_eq!(Request::read_holding(0xF8, 2, 1).encode(), hex("F8 03 00 02 00 01 31 A3"));
        assert_eq!(Request::write_single(1, 2, 4).encode(), hex("01 06 00 02 00 04 29 C9"));
        assert_eq!(Request::write_single(1, 1, 2300).encode(), hex("01 06 00 01 08 FC DF 8B"));
        let reset = Request { address: 1, pdu: Pdu::EchoCommand { function: fc::PZEM_RESET_ENERGY } };
        assert_eq!(reset.encode(), hex("01 42 80 11"));
        assert_eq!(Request::read_input(1, 4034, 2).encode(), hex("01 04 0F C2 00 02 D3 23"));
        assert_eq!(Request::read_input(1, 4012, 28).encode(), hex("01 04 0F AC 00 1C 32 F6"));
    }

    #[test]
    fn finds_a_good_reply() {
        let req = Request::read_input(1, 0, 10);
        let reply = hex("01 04 14 08 98 03 E8 00 00 08 98 00 00 00 00 00 00 01 F4 00 64 00 00 63 CE");
        for cut in 0..reply.len() {
            assert_eq!(scan_reply(&req, &reply[..cut]), Scan::NeedMore, "cut {cut}");
        }
        match scan_reply(&req, &reply) {
            Scan::Done { result: Ok(Reply::Registers(r)), skipped: 0 } => {
                assert_eq!(r, vec![0x0898, 0x03E8, 0, 0x0898, 0, 0, 0, 0x01F4, 0x64, 0]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn skips_noise_before_the_reply() {
        let req = Request::read_input(1, 4018, 2);
        let mut buf = hex("00 FF 13 01 77");
        buf.extend(hex("01 04 04 03 84 13 88 B6 BF"));
        assert_eq!(
            scan_reply(&req, &buf),
            Scan::Done { result: Ok(Reply::Registers(vec![0x0384, 0x1388])), skipped: 5 }
        );
    }

    #[test]
    fn skips_a_foreign_frame_before_ours() {
        let req = Request::read_input(1, 4018, 2);
        let mut buf = hex("04 03 02 00 04 75 87");
        buf.extend(hex("01 04 04 03 84 13 88 B6 BF"));
        assert!(matches!(scan_reply(&req, &buf), Scan::Done { result: Ok(_), skipped: 7 }));
    }

    #[test]
    fn bad_crc_is_a_verdict() {
        let req = Request::read_input(1, 0, 10);
        let mut reply = hex("01 04 14 08 98 03 E8 00 00 08 98 00 00 00 00 00 00 01 F4 00 64 00 00 63 CE");
        reply[5] ^= 0x10;
        assert_eq!(scan_reply(&req, &reply), Scan::Done { result: Err(FrameError::Crc), skipped: 0 });
    }

    #[test]
    fn exception_replies() {
        let req = Request::read_input(1, 0, 10);
        assert_eq!(
            scan_reply(&req, &hex("01 84 02 C2 C1")),
            Scan::Done { result: Err(FrameError::Exception(Exception::IllegalDataAddress)), skipped: 0 }
        );
        let reset = Request { address: 1, pdu: Pdu::EchoCommand { function: fc::PZEM_RESET_ENERGY } };
        assert_eq!(
            scan_reply(&reset, &hex("01 C2 04 70 A3")),
            Scan::Done { result: Err(FrameError::Exception(Exception::SlaveDeviceFailure)), skipped: 0 }
        );
        assert_eq!(
            scan_reply(&reset, &hex("01 42 80 11")),
            Scan::Done { result: Ok(Reply::Echo), skipped: 0 }
        );
    }

    #[test]
    fn write_echo_must_match() {
        let req = Request::write_single(1, 2, 4);
        assert_eq!(
            scan_reply(&req, &hex("01 06 00 02 00 04 29 C9")),
            Scan::Done { result: Ok(Reply::Echo), skipped: 0 }
        );
        let mut other = Request::write_single(1, 2, 5).encode();
        assert!(matches!(scan_reply(&req, &other), Scan::Done { result: Err(FrameError::Malformed(_)), .. }));
        other.truncate(5);
        assert_eq!(scan_reply(&req, &other), Scan::NeedMore);
    }

    #[test]
    fn wrong_byte_count_is_malformed() {
        // A valid 2-register reply to a 10-register request.
        let req = Request::read_input(1, 0, 10);
        let buf = hex("01 04 04 03 84 13 88 B6 BF");
        assert!(matches!(scan_reply(&req, &buf), Scan::Done { result: Err(FrameError::Malformed(_)), .. }));
    }

    /// The burst that once froze `pmtr run`: `01 04 FF`, then exception headers with no good CRC.
    fn reported_burst(len: usize) -> Vec<u8> {
        let mut b = vec![1u8, 4, 0xFF];
        b.extend([1u8, 0x84].iter().cycle().take(len - 3));
        b
    }

    #[test]
    fn the_reported_hostile_burst_is_a_crc_verdict_in_linear_work() {
        let req = Request::read_input(1, 0, 10);
        for len in [100, 260, 1000, 4096] {
            let buf = reported_burst(len);
            let mut s = ReplyScanner::new(&req);
            let verdict = s.feed(&buf);
            // Every exception header fails its CRC. A header cut by the end of the burst is
            // still waiting, so the verdict comes at the timeout (or the 4096-byte cap).
            assert!(
                matches!(verdict, Scan::NeedMore | Scan::Done { result: Err(FrameError::Crc), skipped: 3 }),
                "{len}: {verdict:?}"
            );
            assert_eq!(s.at_timeout(&buf), FrameError::Crc, "{len}");
            assert!(s.work() <= 12 * len as u64, "{len} bytes took {} units", s.work());
        }
    }

    #[test]
    fn byte_by_byte_costs_what_the_whole_buffer_costs() {
        let req = Request::read_input(1, 0, 10);
        let buf = reported_burst(4096);
        let mut at_once = ReplyScanner::new(&req);
        let whole = at_once.feed(&buf);
        assert_eq!(whole, Scan::NeedMore, "the last header is cut by the end of the burst");
        let mut trickle = ReplyScanner::new(&req);
        for n in 1..=buf.len() {
            assert_eq!(trickle.feed(&buf[..n]), whole.clone(), "at {n} bytes");
        }
        assert_eq!(trickle.at_timeout(&buf), at_once.at_timeout(&buf));
        assert_eq!(trickle.at_timeout(&buf), FrameError::Crc);
        assert!(trickle.work() <= 12 * buf.len() as u64, "{} units", trickle.work());
    }

    #[test]
    fn a_long_header_in_the_noise_does_not_hide_the_reply() {
        let req = Request::read_input(1, 0, 10);
        let reply = hex("01 04 14 08 98 03 E8 00 00 08 98 00 00 00 00 00 00 01 F4 00 64 00 00 63 CE");
        let mut buf = hex("01 04 FF");
        buf.extend(&reply);
        match scan_reply(&req, &buf) {
            Scan::Done { result: Ok(Reply::Registers(r)), skipped: 3 } => assert_eq!(r[0], 0x0898),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_bad_crc_waits_for_a_candidate_still_arriving_then_is_the_verdict() {
        let req = Request::read_input(1, 0, 10);
        let mut bad = hex("01 04 14 08 98 03 E8 00 00 08 98 00 00 00 00 00 00 01 F4 00 64 00 00 63 CE");
        bad[5] ^= 0x10;
        // After the bad frame, the start of another candidate.
        let mut buf = bad.clone();
        buf.extend(hex("01 04 14 08"));
        let mut s = ReplyScanner::new(&req);
        assert_eq!(s.feed(&buf), Scan::NeedMore);
        assert_eq!(s.at_timeout(&buf), FrameError::Crc);
        // The candidate completes with a good reply: that is the answer.
        let good = hex("01 04 14 08 98 03 E8 00 00 08 98 00 00 00 00 00 00 01 F4 00 64 00 00 63 CE");
        let mut all = bad.clone();
        all.extend(&good);
        assert!(matches!(s.feed(&all), Scan::Done { result: Ok(Reply::Registers(_)), skipped: 25 }));
    }

    #[test]
    fn timeout_classification() {
        let req = Request::read_input(1, 0, 10);
        assert_eq!(classify_timeout(&req, &[]), FrameError::Timeout);
        assert_eq!(classify_timeout(&req, &hex("01 04 14 08")), FrameError::Short { got: 4, want: 25 });
        assert_eq!(classify_timeout(&req, &hex("04 03 02 00 04 75 87")), FrameError::ForeignAddress(4));
        assert_eq!(classify_timeout(&req, &hex("55 AA 55")), FrameError::Garbled { bytes: 3 });
    }

    #[test]
    fn timing() {
        let c = char_time(9600, 8, false, 1);
        assert_eq!(c.as_nanos(), 1_041_666);
        assert_eq!(inter_frame_gap(c, 9600).as_micros(), 3645);
        assert_eq!(char_time(19200, 8, true, 1).as_nanos(), 572_916);
        assert_eq!(inter_frame_gap(char_time(115200, 8, false, 1), 115200).as_micros(), 1750);
    }
}
