//! The generic engine: a definition's registers grouped into as few requests as the meter
//! allows, the smaller blocks to fall back to after exception 02 or 03, and the replies decoded
//! back into samples. Pure.

use super::{ByteOrder, Definition, Function, RegType, Register, WordOrder};
use crate::meter::{f32_decimal, DecodeError};
use crate::modbus::{Exception, Request};
use crate::reading::{Phase, Quantity, Sample};

/// A way of reading a definition's meter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Plan {
    /// Contiguous runs merged across gaps of at most `max_gap` registers, at most `max_block`
    /// registers per request.
    Blocks { max_block: u16, max_gap: u16 },
    /// One value per request: the last resort of a meter that refuses every block.
    Values,
}

/// One read request of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub function: Function,
    pub start: u16,
    pub count: u16,
}

/// Where a register's words are (its index in the table, the block, the offset in the
/// block), with what decoding it takes copied in, so that a reading touches nothing else.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Placement {
    register: usize,
    block: usize,
    offset: usize,
    r: Register,
    /// The quantity's plausibility limit.
    limit: f64,
}

/// How a slot's words become its raw number, resolved once per layout from its type and word
/// order (`Hi`: high word first, `Lo`: low word first), so that decoding a reading takes one
/// small match per value. `Swapped`: bytes swapped inside each register, decoded by [`raw`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    U16,
    I16,
    Bool,
    U32Hi,
    U32Lo,
    I32Hi,
    I32Lo,
    F32Hi,
    F32Lo,
    U64Hi,
    U64Lo,
    I64Hi,
    I64Lo,
    F64Hi,
    F64Lo,
    Swapped,
}

impl Kind {
    fn of(r: &Register) -> Kind {
        if r.byte_order == ByteOrder::Little {
            return Kind::Swapped;
        }
        let hi = r.word_order == WordOrder::HighFirst;
        let pick = |h, l| if hi { h } else { l };
        match r.ty {
            RegType::U16 => Kind::U16,
            RegType::I16 => Kind::I16,
            RegType::Bool => Kind::Bool,
            RegType::U32 => pick(Kind::U32Hi, Kind::U32Lo),
            RegType::I32 => pick(Kind::I32Hi, Kind::I32Lo),
            RegType::F32 => pick(Kind::F32Hi, Kind::F32Lo),
            RegType::U64 => pick(Kind::U64Hi, Kind::U64Lo),
            RegType::I64 => pick(Kind::I64Hi, Kind::I64Lo),
            RegType::F64 => pick(Kind::F64Hi, Kind::F64Lo),
        }
    }
}

/// A slot as the decoding of a reading reads it: compact, everything resolved.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Fast {
    kind: Kind,
    quantity: Quantity,
    /// None: the meter's phase.
    phase: Option<Phase>,
    /// Its index in `slots` (for [`Kind::Swapped`]).
    slot: u32,
    block: u32,
    offset: u32,
    /// value = raw / div × mul + add: (divisor, 1) or (1, scale), both exact, so the value
    /// is bit for bit [`value`]'s without a branch.
    div: f64,
    mul: f64,
    add: f64,
    /// The quantity's limit, below `f64::MAX`, so that one comparison also refuses a value
    /// that is not finite.
    limit: f64,
}

/// The requests of one poll and where each due register is in their replies.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub blocks: Vec<Block>,
    slots: Vec<Placement>,
    /// `slots`, compact, in the same order.
    fast: Vec<Fast>,
    /// For each block, the registers its reply must hold at least.
    need: Vec<usize>,
    /// Some register has a no-value marker: decoded value by value.
    markers: bool,
}

/// The span one register alone asks for: (start, count), widened to even when `even`.
fn own_span(address: u16, width: u16, even: bool) -> (u32, u32) {
    let start = u32::from(address);
    let end = start + u32::from(width);
    if even {
        let s = start & !1;
        let c = end - s;
        (s, c + (c & 1))
    } else {
        (start, end - start)
    }
}

/// Groups `registers` (function, address, width), which must not overlap, into blocks by
/// `plan`: sorted by function then address, each run extended while the next register is at
/// most `max_gap` registers after its end and the whole stays within `max_block`. Returns the
/// blocks and, for each, the indices of its registers. Pure.
pub fn group(registers: &[(Function, u16, u16)], plan: Plan, even: bool) -> Vec<(Block, Vec<usize>)> {
    let mut order: Vec<usize> = (0..registers.len()).collect();
    order.sort_by_key(|&i| (registers[i].0, registers[i].1));
    let mut out: Vec<(Block, Vec<usize>)> = Vec::new();
    // The block being built: function, start, end (exclusive, unrounded), members.
    let mut current: Option<(Function, u32, u32, Vec<usize>)> = None;
    for i in order {
        let (function, address, width) = registers[i];
        let (own_start, _) = own_span(address, width, even);
        let a = u32::from(address);
        let end = a + u32::from(width);
        if let (Plan::Blocks { max_block, max_gap }, Some((f, start, cur_end, members))) =
            (plan, current.as_mut())
        {
            let gap_ok = *f == function && a >= *cur_end && a - *cur_end <= u32::from(max_gap);
            let count = end.saturating_sub(*start);
            let count = if even { count + (count & 1) } else { count };
            if gap_ok && count <= u32::from(max_block) {
                *cur_end = end;
                members.push(i);
                continue;
            }
        }
        if let Some(done) = current.take() {
            out.push(close(done, even));
        }
        current = Some((function, own_start, end, vec![i]));
    }
    if let Some(done) = current {
        out.push(close(done, even));
    }
    out
}

fn close(
    (function, start, end, members): (Function, u32, u32, Vec<usize>),
    even: bool,
) -> (Block, Vec<usize>) {
    let mut count = end - start;
    if even {
        count += count & 1;
    }
    let count = count.min(0x1_0000 - start);
    (Block { function, start: start as u16, count: count as u16 }, members)
}

impl Definition {
    /// The widest request one register alone needs (its width, made even where the meter
    /// wants even requests): the smallest block limit a fallback goes down to.
    pub fn widest(&self) -> u16 {
        self.registers
            .iter()
            .map(|r| own_span(r.address, r.width(), self.read.even).1 as u16)
            .max()
            .unwrap_or(1)
    }

    /// The plan to start with: the meter's largest blocks.
    pub fn first_plan(&self) -> Plan {
        Plan::Blocks { max_block: self.read.max_block, max_gap: self.read.max_gap }
    }

    /// The plan after `plan` was refused, by the definition's `fallback`: by default half the
    /// block limit (even where the meter wants it), down to the widest register, then one value
    /// per request, then none; or the next smaller limit of its list, then none.
    pub fn smaller(&self, plan: Plan) -> Option<Plan> {
        match (plan, self.read.fallback.listed()) {
            (Plan::Values, _) => None,
            (Plan::Blocks { max_block, max_gap }, Some(listed)) => {
                let next = listed.iter().copied().find(|&l| l < max_block)?;
                Some(Plan::Blocks { max_block: next, max_gap })
            }
            (Plan::Blocks { max_block, max_gap }, None) => {
                let mut half = max_block / 2;
                if self.read.even {
                    half &= !1;
                }
                if half >= self.widest() && half < max_block {
                    Some(Plan::Blocks { max_block: half, max_gap })
                } else {
                    Some(Plan::Values)
                }
            }
        }
    }

    /// Every plan, largest blocks first.
    pub fn plans(&self) -> Vec<Plan> {
        std::iter::successors(Some(self.first_plan()), |&p| self.smaller(p)).collect()
    }

    /// The plan to read by from now on after the meter answered a request of `plan` with
    /// `exception`: the next smaller one when it refuses the registers asked for (02, 03).
    pub fn fallback(&self, plan: Plan, exception: Exception) -> Option<Plan> {
        exception.refuses_the_block().then(|| self.smaller(plan)).flatten()
    }

    /// Which registers poll number `poll` reads, a bit each in table order (the first register
    /// the lowest bit): what tells one poll's layout from another's. None for a table of more
    /// than 128 registers.
    pub fn due_mask(&self, poll: u64) -> Option<u128> {
        if self.registers.len() > 128 {
            return None;
        }
        let mut mask = 0u128;
        for (i, r) in self.registers.iter().enumerate() {
            // Most registers are read every poll: no division for them.
            if r.every <= 1 || r.due(poll) {
                mask |= 1 << i;
            }
        }
        Some(mask)
    }

    /// The requests of poll number `poll` (the first is 0) by `plan`: the registers due then.
    pub fn layout(&self, plan: Plan, poll: u64) -> Layout {
        let due: Vec<usize> = (0..self.registers.len()).filter(|&i| self.registers[i].due(poll)).collect();
        let spans: Vec<(Function, u16, u16)> = due
            .iter()
            .map(|&i| (self.registers[i].function, self.registers[i].address, self.registers[i].width()))
            .collect();
        let groups = group(&spans, plan, self.read.even);
        let mut slots = Vec::with_capacity(due.len());
        let mut blocks = Vec::with_capacity(groups.len());
        for (b, (block, members)) in groups.into_iter().enumerate() {
            for m in members {
                let register = due[m];
                let offset = usize::from(self.registers[register].address - block.start);
                let r = self.registers[register];
                slots.push(Placement { register, block: b, offset, r, limit: r.quantity.limit() });
            }
            blocks.push(block);
        }
        // Samples in table order.
        slots.sort_by_key(|s| s.register);
        let mut need = vec![0; blocks.len()];
        let fast = slots
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let r = &s.r;
                need[s.block] = need[s.block].max(s.offset + usize::from(r.width()));
                let (div, mul) = match r.divisor {
                    Some(d) => (d, 1.0),
                    None => (1.0, r.scale),
                };
                Fast {
                    kind: Kind::of(r),
                    quantity: r.quantity,
                    phase: r.phase,
                    slot: i as u32,
                    block: s.block as u32,
                    offset: s.offset as u32,
                    div,
                    mul,
                    add: r.offset,
                    // NaN refuses every value, as `abs() <= NaN` does.
                    limit: if s.limit.is_nan() { -1.0 } else { s.limit.min(f64::MAX) },
                }
            })
            .collect();
        let markers = slots.iter().any(|s| s.r.no_value.is_some());
        Layout { blocks, slots, fast, need, markers }
    }
}

impl Layout {
    /// The requests to send to the meter at `address`.
    pub fn requests(&self, address: u8) -> Vec<Request> {
        self.blocks
            .iter()
            .map(|b| match b.function {
                Function::Input => Request::read_input(address, b.start, b.count),
                Function::Holding => Request::read_holding(address, b.start, b.count),
            })
            .collect()
    }

    /// How many registers of the table this poll reads.
    pub fn values(&self) -> usize {
        self.slots.len()
    }

    /// Decodes the replies to [`Layout::requests`] (in the same order) by `def`'s table, for a
    /// meter on `meter_phase`. A missing register or an implausible value refuses the reading.
    pub fn decode(
        &self,
        def: &Definition,
        replies: &[Vec<u16>],
        meter_phase: Phase,
    ) -> Result<Vec<Sample>, DecodeError> {
        let mut out = Vec::with_capacity(self.slots.len());
        self.decode_into(def, replies, meter_phase, &mut out)?;
        Ok(out)
    }

    /// [`Layout::decode`] into `out` (cleared first), reusing its allocation. `_def` is the
    /// definition the layout was made from (its table is copied into the layout).
    pub fn decode_into(
        &self,
        _def: &Definition,
        replies: &[Vec<u16>],
        meter_phase: Phase,
        out: &mut Vec<Sample>,
    ) -> Result<(), DecodeError> {
        out.clear();
        if replies.len() != self.blocks.len() {
            return Err(DecodeError::Missing("a reply"));
        }
        // Every reply long enough (one check per block) and every value plausible: done.
        // Otherwise the value by value decoding finds the same samples and the first error.
        if !self.markers
            && replies.len() == self.need.len()
            && replies.iter().zip(&self.need).all(|(r, &n)| r.len() >= n)
            && self.decode_fast(replies, meter_phase, out)
        {
            return Ok(());
        }
        out.clear();
        self.decode_checked(replies, meter_phase, out)
    }

    /// Decodes every slot into `out`; false when a value is implausible. The replies must be
    /// as long as `need` says.
    #[inline]
    fn decode_fast(&self, replies: &[Vec<u16>], meter_phase: Phase, out: &mut Vec<Sample>) -> bool {
        let mut ok = true;
        out.extend(self.fast.iter().map(|f| {
            let words = &replies[f.block as usize];
            let value = self.raw_of(f, words) / f.div * f.mul + f.add;
            ok &= value.abs() <= f.limit;
            Sample { phase: f.phase.unwrap_or(meter_phase), quantity: f.quantity, value }
        }));
        ok
    }

    /// A slot's raw number from its block's reply.
    #[inline(always)]
    fn raw_of(&self, f: &Fast, w: &[u16]) -> f64 {
        let o = f.offset as usize;
        let w32 = |h: usize, l: usize| u32::from(w[o + h]) << 16 | u32::from(w[o + l]);
        let w64 = |hi_first: bool| {
            let at = |k: usize| u64::from(w[o + if hi_first { k } else { 3 - k }]);
            at(0) << 48 | at(1) << 32 | at(2) << 16 | at(3)
        };
        match f.kind {
            Kind::U16 => f64::from(w[o]),
            Kind::I16 => f64::from(w[o] as i16),
            Kind::Bool => f64::from(u8::from(w[o] != 0)),
            Kind::U32Hi => f64::from(w32(0, 1)),
            Kind::U32Lo => f64::from(w32(1, 0)),
            Kind::I32Hi => f64::from(w32(0, 1) as i32),
            Kind::I32Lo => f64::from(w32(1, 0) as i32),
            Kind::F32Hi => f32_decimal(f32::from_bits(w32(0, 1))),
            Kind::F32Lo => f32_decimal(f32::from_bits(w32(1, 0))),
            Kind::U64Hi => w64(true) as f64,
            Kind::U64Lo => w64(false) as f64,
            Kind::I64Hi => w64(true) as i64 as f64,
            Kind::I64Lo => w64(false) as i64 as f64,
            Kind::F64Hi => f64::from_bits(w64(true)),
            Kind::F64Lo => f64::from_bits(w64(false)),
            Kind::Swapped => self.raw_swapped(f, w),
        }
    }

    #[cold]
    #[inline(never)]
    fn raw_swapped(&self, f: &Fast, w: &[u16]) -> f64 {
        let r = &self.slots[f.slot as usize].r;
        let o = f.offset as usize;
        raw(&w[o..o + usize::from(r.width())], r.ty, r.word_order, r.byte_order)
    }

    /// Value by value, each reply's length checked: the first missing register or
    /// implausible value is the error; a register holding its no-value marker gives no sample.
    #[cold]
    fn decode_checked(
        &self,
        replies: &[Vec<u16>],
        meter_phase: Phase,
        out: &mut Vec<Sample>,
    ) -> Result<(), DecodeError> {
        for s in &self.slots {
            let r = &s.r;
            let words = replies[s.block]
                .get(s.offset..s.offset + usize::from(r.width()))
                .ok_or(DecodeError::Missing("a register of the definition's table"))?;
            if r.no_value.is_some_and(|m| bits(words, r.word_order, r.byte_order) == m) {
                continue;
            }
            let sample = Sample::new(r.phase_on(meter_phase), r.quantity, value(r, words));
            // Not finite, or beyond the quantity's limit.
            if !(sample.value.is_finite() && sample.value.abs() <= s.limit) {
                return Err(
                    DecodeError::first_implausible(&[sample]).unwrap_or(DecodeError::Missing("a value"))
                );
            }
            out.push(sample);
        }
        Ok(())
    }
}

/// The words of a value (as many as its type's width) put together by word and byte order.
#[inline]
pub fn bits(words: &[u16], word_order: WordOrder, byte_order: ByteOrder) -> u64 {
    let fix = |w: u16| if byte_order == ByteOrder::Little { w.swap_bytes() } else { w };
    match (words, word_order) {
        ([w], _) => u64::from(fix(*w)),
        ([a, b], WordOrder::HighFirst) => u64::from(fix(*a)) << 16 | u64::from(fix(*b)),
        ([a, b], WordOrder::LowFirst) => u64::from(fix(*b)) << 16 | u64::from(fix(*a)),
        (ws, WordOrder::HighFirst) => ws.iter().fold(0, |acc, &w| acc << 16 | u64::from(fix(w))),
        (ws, WordOrder::LowFirst) => ws.iter().rev().fold(0, |acc, &w| acc << 16 | u64::from(fix(w))),
    }
}

/// The raw number in `words` (as many as the type's width) by type, word and byte order.
#[inline]
pub fn raw(words: &[u16], ty: RegType, word_order: WordOrder, byte_order: ByteOrder) -> f64 {
    let bits = bits(words, word_order, byte_order);
    match ty {
        RegType::U16 => f64::from(bits as u16),
        RegType::I16 => f64::from(bits as u16 as i16),
        RegType::U32 => f64::from(bits as u32),
        RegType::I32 => f64::from(bits as u32 as i32),
        RegType::U64 => bits as f64,
        RegType::I64 => bits as i64 as f64,
        RegType::F32 => f32_decimal(f32::from_bits(bits as u32)),
        RegType::F64 => f64::from_bits(bits),
        RegType::Bool => f64::from(u8::from(bits != 0)),
    }
}

/// A register's SI value from its words.
#[inline]
pub fn value(r: &Register, words: &[u16]) -> f64 {
    let x = raw(words, r.ty, r.word_order, r.byte_order);
    let scaled = match r.divisor {
        Some(d) => x / d,
        None => x * r.scale,
    };
    scaled + r.offset
}

/// The inverse of [`raw`] for integers and floats, for tests and simulators: `x` (already
/// raw: divided by the scale) to the type's words.
pub fn encode(x: f64, ty: RegType, word_order: WordOrder, byte_order: ByteOrder) -> Vec<u16> {
    let bits: u64 = match ty {
        RegType::U16 | RegType::Bool => x.round() as u16 as u64,
        RegType::I16 => x.round() as i16 as u16 as u64,
        RegType::U32 => x.round() as u32 as u64,
        RegType::I32 => x.round() as i32 as u32 as u64,
        RegType::U64 => x.round() as u64,
        RegType::I64 => x.round() as i64 as u64,
        RegType::F32 => u64::from((x as f32).to_bits()),
        RegType::F64 => x.to_bits(),
    };
    let n = usize::from(ty.width());
    let fix = |w: u16| if byte_order == ByteOrder::Little { w.swap_bytes() } else { w };
    let mut words: Vec<u16> = (0..n).map(|k| fix((bits >> (16 * (n - 1 - k))) as u16)).collect();
    if word_order == WordOrder::LowFirst {
        words.reverse();
    }
    words
}
