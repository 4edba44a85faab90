//! A simulated PMTR_001_SRV server (Arduino Mega, three PZEM-004T, DS3231, power-line modem),
//! faithful to the firmware described in the server's reference (`pmtr-server.md`) — its quirks
//! included, so that pmtr's PMTR master mode is tested against them.
//!
//! Pure: no I/O, no clock. The caller passes monotonic sim time `t` in seconds, delivers what
//! the server hears on the shared medium with [`PmtrServer::hear`] and collects what it sends
//! with [`PmtrServer::run_until`]. [`super::plc`] is the I/O shell on a pseudo-terminal.
//!
//! What is modelled, and how:
//!
//! - **The main loop.** A pass starts every `loop_period` (×5 in low-power mode) from `boot_t`:
//!   one libmodbus `poll()` (at most one frame taken from the RX buffer), the time-sync check,
//!   then — at the same instant — the DC-bus and PZEM reads, the average registers and the
//!   relay actions. A request heard during a pass is answered at the next pass's poll.
//! - **The UART.** The AVR core's RX ring buffer holds [`RX_BUFFER_BYTES`] (64 bytes, one slot
//!   always empty: 63 usable) bytes; bytes arriving while it is full are lost. While a poll is
//!   reading (a frame started, or sync mode's continuous polling) bytes flow through it.
//! - **libmodbus 3.1.4 RTU receive.** Frames are delimited by length, as an indication
//!   (request) or, after a frame for another unit, as a confirmation (reply) — see
//!   [`frame_len`]. A poll that finds part of a frame waits for the rest, and gives up
//!   [`BYTE_TIMEOUT_S`] after the last byte, dropping what it read. A frame for another unit
//!   (its address byte is checked before the CRC) arms `confirmation_to_ignore`: the next
//!   frame is parsed as a reply and dropped, whatever it is.
//! - **modbus_reply.** Tables of §3, exceptions 01/02/03, FC 07 unanswered, FC 0x11, 0x16,
//!   0x17; broadcast executed, never answered. Exceptions 01 and 03 sleep the response timeout
//!   (0.5 s) and flush the RX buffer before the reply is sent.
//! - **Registers.** Current firmware: scaled integers of §4.1 with the PZEM's resolutions and
//!   the firmware's float (f32) truncation/rounding; the avg-pf stride bug; 5 s moving averages
//!   from 1 Hz samples with zero propagation (§6). Legacy firmware: §5 CDAB floats.
//! - **Time sync (§7)** with its +6 s, 20 s timeout and the frozen averages after a timeout.
//! - **Relay actions (§8, §10)** with [`super::pmtr_expr`] as the evaluator.

use super::pmtr_expr::Expr;
use crate::modbus::crc::{append_crc, check_crc};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// The AVR core's serial RX ring buffer: `SERIAL_RX_BUFFER_SIZE` is 64, but the ring keeps one
/// slot empty, so it holds 63 bytes. An FC 0x10 of 27 registers (63 bytes) fits; 28 do not.
pub const RX_BUFFER_BYTES: usize = 63;
/// libmodbus' byte timeout (also its response timeout, slept before a flush), seconds.
pub const BYTE_TIMEOUT_S: f64 = 0.5;
/// `timeoutSyncMillis`.
pub const SYNC_TIMEOUT_S: f64 = 20.0;
/// `sync_offset`: added to the epoch the master writes.
pub const SYNC_OFFSET_S: u64 = 6;
/// `MODBUS_RTU_MAX_ADU_LENGTH`.
const MAX_ADU: usize = 256;
/// The ring buffer of the moving averages (`nbvalues`).
const RING: usize = 20;
/// Low-power mode: entered below, left above (mV of HR79).
const LOW_POWER_ENTER_MV: u16 = 10800;
const LOW_POWER_LEAVE_MV: u16 = 11200;

const COILS: (u16, u16) = (0, 12);
const DISCRETE: (u16, u16) = (40, 12);
const INPUTS: (u16, u16) = (200, 2);

/// Which firmware the server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// `2ece7ad` (2024): scaled uint16 registers 78..188, unit id from the DIP switch.
    Current,
    /// `77c0ebe` (2022): CDAB floats in 80..188 (HR78/79 absent: exception 02), only two PZEMs
    /// (L3 reads 0), SI floats in expressions, and **unit id always 1**: the DIP switch is
    /// ignored, so the `address` given to [`PmtrServer::new`] is not used. No DC-bus registers
    /// and no low-power mode.
    LegacyFloat,
}

/// What the three PZEMs and the DC buses measure (true values; the firmware's quantisation is
/// applied on the way to the registers).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerValues {
    pub volts: [f64; 3],
    pub amps: [f64; 3],
    pub pf: [f64; 3],
    pub hz: f64,
    pub kwh: [f64; 3],
    pub v5: f64,
    pub v12: f64,
}

impl Default for ServerValues {
    /// 230 V, 1 A, pf 1, 50 Hz, 0 kWh, 5.0 V and 12.5 V buses.
    fn default() -> Self {
        ServerValues {
            volts: [230.0; 3],
            amps: [1.0; 3],
            pf: [1.0; 3],
            hz: 50.0,
            kwh: [0.0; 3],
            v5: 5.0,
            v12: 12.5,
        }
    }
}

/// A relay action as committed into one of the five slots (`TripFormulaData`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionSlot {
    /// MA window, high byte of HR151 constrained to 1..=20 (only 5 and 10 evaluate).
    pub window: u8,
    pub pins: [u8; 8],
    /// In main-loop passes, not seconds (HR156).
    pub recovery: u16,
    /// HR157.. up to the first NUL (all 64 bytes if there is none), one char per byte.
    pub text: String,
    /// Coil 2: level written when the expression is true.
    pub level_high: bool,
    /// Coil 3.
    pub dry_run: bool,
    /// Coil 4: AUTO recovery (else MANUAL: latches).
    pub auto: bool,
}

/// The trip state kept with a slot; re-committing a slot keeps it (§10).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TripState {
    /// Never cleared once set.
    pub tripped: bool,
    /// False passes counted since the last true one.
    pub counter: u32,
}

/// What one server has seen and done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerCounters {
    /// Main-loop passes completed.
    pub passes: u64,
    /// Frames taken off the RX buffer by a poll (complete by length, whatever they hold).
    pub frames_heard: u64,
    /// CRC-valid requests for this unit or broadcast, executed.
    pub requests: u64,
    /// Replies sent (broadcasts and FC 07 get none).
    pub replies: u64,
    /// Frames for another unit (they arm `confirmation_to_ignore`).
    pub foreign: u64,
    /// Frames consumed as "the other unit's reply" and dropped.
    pub ignored_as_reply: u64,
    /// Of those, frames that were in fact addressed to this unit or broadcast: the §11 quirk.
    pub swallowed: u64,
    /// Overflow episodes of the RX buffer (one per frame that lost bytes, roughly).
    pub truncated: u64,
    /// Bytes lost to the full RX buffer.
    pub bytes_lost: u64,
    /// Frames for this unit dropped: bad CRC, incomplete after the byte timeout, too long.
    pub bad_frames: u64,
    /// Exception replies built (broadcast ones are not sent).
    pub exceptions: u64,
    /// Relay-action commits consumed (coil 1 cleared), into a slot or ignored (slot >= 5).
    pub commits: u64,
    /// Commits whose slot number was >= 5.
    pub commits_ignored: u64,
    /// Times sync mode was entered.
    pub sync_entries: u64,
    /// Successful time syncs (RTC set).
    pub time_syncs: u64,
    pub sync_timeouts: u64,
    /// Slot evaluations with an undefined result (window not 5/10, expression not compiling).
    pub undefined_results: u64,
    /// Boots after the first (reboots).
    pub reboots: u64,
}

/// Where the main loop is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Between passes: the next one polls at `at`.
    Loop { at: f64 },
    /// A poll found part of a frame and waits for the rest.
    Waiting { last_byte: f64, then: Then },
    /// An exception 01/03: sleeping the response timeout before flushing and replying.
    Flushing { until: f64, then: Then },
    /// Time-sync mode: polling continuously.
    Sync { since: f64 },
}

/// What follows a poll.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Then {
    /// The rest of a main-loop pass.
    Pass,
    /// Back to sync mode's polling.
    Sync { since: f64 },
}

/// An action slot armed: its action and its trip state.
#[derive(Debug, Clone)]
struct ArmedAction {
    action: ActionSlot,
    trip: TripState,
}

/// 15 metrics: U, I, P, f, pf for L1..L3, in the firmware's units.
type Metrics = [f64; 15];

/// Moving averages: the ring the 1 Hz timer ISR fills.
#[derive(Debug, Clone)]
struct Averages {
    ring: VecDeque<Metrics>,
    /// The next ISR tick.
    next_tick: f64,
    /// The MA timer runs (disabled during sync mode, and for good after a sync timeout).
    enabled: bool,
}

impl Averages {
    fn new(boot_t: f64) -> Self {
        Averages { ring: VecDeque::with_capacity(RING), next_tick: boot_t + 1.0, enabled: true }
    }

    /// Runs the ISR ticks up to `t` with `now` as the latest values. A value of 0 is not
    /// pushed: the previous sample is repeated (zero propagation).
    fn tick_until(&mut self, t: f64, now: &Metrics) {
        while self.next_tick <= t {
            if self.enabled {
                let prev = self.ring.back().copied().unwrap_or([0.0; 15]);
                let mut s = *now;
                for (v, p) in s.iter_mut().zip(prev) {
                    if *v == 0.0 {
                        *v = p;
                    }
                }
                if self.ring.len() == RING {
                    self.ring.pop_front();
                }
                self.ring.push_back(s);
            }
            self.next_tick += 1.0;
        }
    }

    /// The `window`-second average (cumulative while fewer samples exist).
    fn average(&self, window: usize) -> Metrics {
        let n = window.min(self.ring.len());
        let mut out = [0.0; 15];
        if n == 0 {
            return out;
        }
        for s in self.ring.iter().rev().take(n) {
            out.iter_mut().zip(s).for_each(|(o, v)| *o += v);
        }
        out.iter_mut().for_each(|o| *o /= n as f64);
        out
    }
}

/// A simulated PMTR_001_SRV.
#[derive(Debug, Clone)]
pub struct PmtrServer {
    address: u8,
    firmware: Firmware,
    values: ServerValues,
    period: f64,
    boot_t: f64,
    /// The time processed so far.
    now: f64,
    phase: Phase,

    coils: [bool; 12],
    discrete: [bool; 12],
    holding: Vec<u16>,
    input: [u16; 2],

    rx: VecDeque<u8>,
    /// When the last byte was heard.
    rx_t: f64,
    overflowing: bool,
    confirmation_to_ignore: bool,

    /// The latest "now" values (§6), firmware units; energy apart.
    now_values: Metrics,
    energy: [f64; 3],
    averages: Averages,
    low_power: bool,

    slots: [Option<ArmedAction>; 5],
    pins: BTreeMap<u8, bool>,
    /// The RTC: (value set, sim time when set).
    rtc: Option<(u32, f64)>,
    /// The caller's last (sim time, wall-clock epoch) pair.
    wall: Option<(f64, f64)>,

    outbox: Vec<(f64, Vec<u8>)>,
    /// An exception reply waiting for the end of the flush.
    flush_reply: Option<Vec<u8>>,
    counters: ServerCounters,
}

impl PmtrServer {
    /// A server that boots at `boot_t`; its first pass polls at `boot_t`. The real loop period
    /// is about 1.2 s. The RTC reads `None` until the first time sync.
    pub fn new(
        address: u8,
        firmware: Firmware,
        values: ServerValues,
        loop_period: Duration,
        boot_t: f64,
    ) -> Self {
        let hr_count = match firmware {
            Firmware::Current => 111,
            Firmware::LegacyFloat => 109,
        };
        PmtrServer {
            address,
            firmware,
            values,
            period: loop_period.as_secs_f64().max(1e-3),
            boot_t,
            now: boot_t,
            phase: Phase::Loop { at: boot_t },
            coils: [false; 12],
            discrete: [false; 12],
            holding: vec![0; hr_count],
            input: [0; 2],
            rx: VecDeque::new(),
            rx_t: boot_t,
            overflowing: false,
            confirmation_to_ignore: false,
            now_values: [0.0; 15],
            energy: [0.0; 3],
            averages: Averages::new(boot_t),
            low_power: false,
            slots: Default::default(),
            pins: BTreeMap::new(),
            rtc: None,
            wall: None,
            outbox: Vec::new(),
            flush_reply: None,
            counters: ServerCounters::default(),
        }
    }

    /// The unit id it answers to: the DIP-switch address, or 1 for the legacy firmware.
    pub fn unit(&self) -> u8 {
        match self.firmware {
            Firmware::Current => self.address,
            Firmware::LegacyFloat => 1,
        }
    }

    /// When the server last booted.
    pub fn boot_t(&self) -> f64 {
        self.boot_t
    }

    pub fn firmware(&self) -> Firmware {
        self.firmware
    }

    pub fn values(&self) -> &ServerValues {
        &self.values
    }

    /// Bytes seen on the shared medium at time `t` (the master's frames and the other servers'
    /// replies: everyone hears everything). Calls must come in time order; passes due before
    /// `t` are run first (their replies wait for [`PmtrServer::run_until`]).
    pub fn hear(&mut self, bytes: &[u8], t: f64) {
        self.advance(t);
        if bytes.is_empty() {
            return;
        }
        // A poll that is reading drains the UART as bytes come; otherwise the ring fills up.
        let reading = matches!(self.phase, Phase::Waiting { .. } | Phase::Sync { .. });
        for &b in bytes {
            if reading || self.rx.len() < RX_BUFFER_BYTES {
                self.rx.push_back(b);
            } else {
                self.counters.bytes_lost += 1;
                if !self.overflowing {
                    self.overflowing = true;
                    self.counters.truncated += 1;
                }
            }
        }
        self.rx_t = t;
        if let Phase::Waiting { then, .. } = self.phase {
            self.phase = Phase::Waiting { last_byte: t, then };
        }
        self.advance(t);
    }

    /// Runs what is due up to `t`; the frames sent since the last call, each with the time its
    /// first byte goes out. `wall_epoch_at_t` (Unix seconds at `t`) only serves
    /// [`PmtrServer::clock_error`].
    pub fn run_until(&mut self, t: f64, wall_epoch_at_t: f64) -> Vec<(f64, Vec<u8>)> {
        self.advance(t);
        self.wall = Some((t, wall_epoch_at_t));
        std::mem::take(&mut self.outbox)
    }

    /// A reset (watchdog, power): RAM tables zeroed, slots emptied, pins released, averages
    /// restarted, the UART emptied; the first pass polls at `t`. The DS3231 keeps its time.
    pub fn reboot(&mut self, t: f64) {
        self.advance(t);
        let fresh = PmtrServer::new(
            self.address,
            self.firmware,
            self.values.clone(),
            Duration::from_secs_f64(self.period),
            t,
        );
        let (rtc, wall, mut counters, outbox) =
            (self.rtc, self.wall, self.counters, std::mem::take(&mut self.outbox));
        counters.reboots += 1;
        *self = PmtrServer { rtc, wall, counters, outbox, ..fresh };
    }

    /// The RTC in Unix seconds (UTC) at sim time `t`: the value set plus the time since.
    /// `None` until the first successful time sync.
    pub fn clock(&self, t: f64) -> Option<f64> {
        self.rtc.map(|(v, set)| f64::from(v) + (t - set))
    }

    /// RTC minus wall clock at the time of the last [`PmtrServer::run_until`].
    pub fn clock_error(&self) -> Option<f64> {
        let (t, wall) = self.wall?;
        Some(self.clock(t)? - wall)
    }

    pub fn slots(&self) -> [Option<ActionSlot>; 5] {
        std::array::from_fn(|i| self.slots[i].as_ref().map(|s| s.action.clone()))
    }

    pub fn trip_state(&self, slot: usize) -> Option<TripState> {
        self.slots.get(slot)?.as_ref().map(|s| s.trip)
    }

    /// New measurements, used from the next pass on.
    pub fn set_values(&mut self, v: ServerValues) {
        self.values = v;
    }

    /// The 12 V bus: below 10.8 V the server enters low-power mode at its next pass.
    pub fn set_v12(&mut self, v: f64) {
        self.values.v12 = v;
    }

    pub fn low_power(&self) -> bool {
        self.low_power
    }

    /// Whether the server is in time-sync mode.
    pub fn syncing(&self) -> bool {
        matches!(self.phase, Phase::Sync { .. } | Phase::Waiting { then: Then::Sync { .. }, .. })
    }

    /// Whether the moving-average timer runs (not after a sync timeout).
    pub fn averages_running(&self) -> bool {
        self.averages.enabled
    }

    pub fn holding(&self, addr: u16) -> Option<u16> {
        let start = self.hr_start();
        addr.checked_sub(start).and_then(|i| self.holding.get(i as usize)).copied()
    }

    pub fn coil(&self, addr: u16) -> Option<bool> {
        self.coils.get(addr as usize).copied()
    }

    pub fn counters(&self) -> ServerCounters {
        self.counters
    }

    /// Pins the relay actions wrote, with the level last written.
    pub fn pins(&self) -> BTreeMap<u8, bool> {
        self.pins.clone()
    }

    /// Bytes waiting in the UART.
    pub fn rx_pending(&self) -> usize {
        self.rx.len()
    }

    fn hr_start(&self) -> u16 {
        match self.firmware {
            Firmware::Current => 78,
            Firmware::LegacyFloat => 80,
        }
    }

    fn hr(&self, addr: u16) -> u16 {
        self.holding(addr).unwrap_or(0)
    }

    fn set_hr(&mut self, addr: u16, v: u16) {
        let start = self.hr_start();
        if let Some(r) = addr.checked_sub(start).and_then(|i| self.holding.get_mut(i as usize)) {
            *r = v;
        }
    }

    fn set_float(&mut self, addr: u16, v: f32) {
        let bits = v.to_bits();
        self.set_hr(addr, bits as u16);
        self.set_hr(addr + 1, (bits >> 16) as u16);
    }

    // ---- the event loop ----

    fn next_event(&self) -> f64 {
        let at = match self.phase {
            Phase::Loop { at } => at,
            Phase::Waiting { last_byte, .. } => {
                if self.frame_ready() {
                    last_byte
                } else {
                    last_byte + BYTE_TIMEOUT_S
                }
            }
            Phase::Flushing { until, .. } => until,
            Phase::Sync { since } => {
                if self.rx.is_empty() {
                    since + SYNC_TIMEOUT_S
                } else {
                    self.now.min(since + SYNC_TIMEOUT_S)
                }
            }
        };
        at.max(self.now)
    }

    fn advance(&mut self, t: f64) {
        // Bounded: every step either moves time on or consumes bytes.
        loop {
            let at = self.next_event();
            if at > t {
                break;
            }
            self.now = at;
            self.step(at);
        }
        self.now = self.now.max(t);
    }

    fn step(&mut self, at: f64) {
        match self.phase {
            Phase::Loop { .. } => self.poll(at, Then::Pass),
            Phase::Waiting { then, .. } => {
                if self.frame_ready() {
                    self.take_and_handle(at, then);
                } else {
                    // Byte timeout: what was read is dropped.
                    self.consume(self.rx.len());
                    self.counters.bad_frames += 1;
                    self.after_poll(at, then);
                }
            }
            Phase::Flushing { then, .. } => {
                self.consume(self.rx.len());
                if let Some(reply) = self.flush_reply.take() {
                    self.send(at, reply);
                }
                self.after_poll(at, then);
            }
            Phase::Sync { since } => {
                if at >= since + SYNC_TIMEOUT_S {
                    self.counters.sync_timeouts += 1;
                    // The MA timer stays disabled: averages freeze (§7 step 3).
                    self.rest_of_pass(at);
                } else {
                    self.poll(at, Then::Sync { since });
                }
            }
        }
    }

    /// One `poll()` at `t`.
    fn poll(&mut self, t: f64, then: Then) {
        if self.rx.is_empty() {
            return self.after_poll(t, then);
        }
        match frame_len(&self.rx, self.confirmation_to_ignore) {
            FrameLen::Need => self.phase = Phase::Waiting { last_byte: t, then },
            FrameLen::TooLong(read) => {
                self.consume(read);
                self.counters.bad_frames += 1;
                self.after_poll(t, then);
            }
            FrameLen::Bytes(n) if n <= self.rx.len() => self.take_and_handle(t, then),
            FrameLen::Bytes(_) => self.phase = Phase::Waiting { last_byte: t, then },
        }
    }

    fn frame_ready(&self) -> bool {
        match frame_len(&self.rx, self.confirmation_to_ignore) {
            FrameLen::Need => false,
            FrameLen::TooLong(_) => true,
            FrameLen::Bytes(n) => n <= self.rx.len(),
        }
    }

    fn consume(&mut self, n: usize) -> Vec<u8> {
        self.overflowing = false;
        self.rx.drain(..n.min(self.rx.len())).collect()
    }

    fn take_and_handle(&mut self, t: f64, then: Then) {
        let n = match frame_len(&self.rx, self.confirmation_to_ignore) {
            FrameLen::Bytes(n) => n,
            FrameLen::TooLong(read) => {
                self.consume(read);
                self.counters.bad_frames += 1;
                return self.after_poll(t, then);
            }
            FrameLen::Need => return self.after_poll(t, then),
        };
        let frame = self.consume(n);
        self.counters.frames_heard += 1;
        if self.confirmation_to_ignore {
            self.confirmation_to_ignore = false;
            self.counters.ignored_as_reply += 1;
            if frame[0] == self.unit() || frame[0] == 0 {
                self.counters.swallowed += 1;
            }
            return self.after_poll(t, then);
        }
        if frame[0] != self.unit() && frame[0] != 0 {
            self.confirmation_to_ignore = true;
            self.counters.foreign += 1;
            return self.after_poll(t, then);
        }
        if !check_crc(&frame) {
            self.counters.bad_frames += 1;
            return self.after_poll(t, then);
        }
        self.counters.requests += 1;
        let broadcast = frame[0] == 0;
        let Some((body, flush)) = self.execute(&frame[1..frame.len() - 2]) else {
            return self.after_poll(t, then);
        };
        let reply = (!broadcast).then(|| {
            let mut r = Vec::with_capacity(body.len() + 3);
            r.push(self.unit());
            r.extend_from_slice(&body);
            append_crc(&mut r);
            r
        });
        if flush {
            // The reply goes out after the sleep and the flush.
            self.flush_reply = reply;
            self.phase = Phase::Flushing { until: t + BYTE_TIMEOUT_S, then };
            return;
        }
        if let Some(r) = reply {
            self.send(t, r);
        }
        self.after_poll(t, then)
    }

    fn send(&mut self, t: f64, reply: Vec<u8>) {
        self.counters.replies += 1;
        self.outbox.push((t, reply));
    }

    fn after_poll(&mut self, t: f64, then: Then) {
        match then {
            Then::Pass if self.coils[0] => {
                self.averages.tick_until(t, &self.now_values);
                self.averages.enabled = false;
                self.counters.sync_entries += 1;
                self.phase = Phase::Sync { since: t };
            }
            Then::Pass => self.rest_of_pass(t),
            Then::Sync { .. } if !self.coils[0] => {
                let epoch = (146..150).rev().fold(0u64, |acc, a| acc << 16 | u64::from(self.hr(a)));
                self.rtc = Some((epoch.wrapping_add(SYNC_OFFSET_S) as u32, t));
                self.counters.time_syncs += 1;
                self.averages.tick_until(t, &self.now_values);
                self.averages.enabled = true;
                self.rest_of_pass(t);
            }
            Then::Sync { since } => self.phase = Phase::Sync { since },
        }
    }

    /// Everything after the poll and the sync check: DC bus, PZEMs, averages, relay actions.
    fn rest_of_pass(&mut self, t: f64) {
        self.averages.tick_until(t, &self.now_values);
        match self.firmware {
            Firmware::Current => self.refresh_current(),
            Firmware::LegacyFloat => self.refresh_legacy(),
        }
        if !self.low_power {
            self.process_formulas();
        }
        self.counters.passes += 1;
        let period = if self.low_power { 5.0 * self.period } else { self.period };
        self.phase = Phase::Loop { at: t + period };
    }

    // ---- measurements ----

    /// The PZEM library's floats (f32) for phase `i`: V, A, W, kWh, Hz, pf.
    fn pzem(&self, i: usize) -> [f32; 6] {
        let v = &self.values;
        let raw = |x: f64, res: f64| (x * res).round().max(0.0);
        let watts = v.volts[i] * v.amps[i] * v.pf[i];
        [
            (raw(v.volts[i], 10.0) / 10.0) as f32,
            (raw(v.amps[i], 1000.0) / 1000.0) as f32,
            (raw(watts, 10.0) / 10.0) as f32,
            (raw(v.kwh[i], 1000.0) / 1000.0) as f32,
            (raw(v.hz, 10.0) / 10.0) as f32,
            (raw(v.pf[i], 100.0) / 100.0) as f32,
        ]
    }

    fn refresh_current(&mut self) {
        let v5 = (self.values.v5 * 1000.0).round().clamp(0.0, 65535.0) as u16;
        // analogRead(A15) * 14310 / 1023, the ADC quantising first.
        let adc = (self.values.v12 / 14.31 * 1023.0).floor().clamp(0.0, 1023.0) as u32;
        let v12 = (adc * 14310 / 1023) as u16;
        self.set_hr(78, v5);
        self.set_hr(79, v12);
        if v12 < LOW_POWER_ENTER_MV {
            self.low_power = true;
        } else if v12 > LOW_POWER_LEAVE_MV {
            self.low_power = false;
        }
        // floor(10·V), floor(100·A), floor(0.5+W), floor(10·kWh), floor(10·Hz), floor(100·pf),
        // in the AVR's 32-bit floats; the float→uint16 cast saturates here (undefined there).
        let scaled =
            |x: f32, k: f32, round: bool| (if round { (x + 0.5).floor() } else { (x * k).floor() }) as u16;
        for i in 0..3 {
            let p = self.pzem(i);
            let u = scaled(p[0], 10.0, false);
            self.set_hr(80 + i as u16, u);
            self.now_values[i] = f64::from(u);
            if self.low_power {
                continue; // HR83..97 keep stale values
            }
            let regs = [
                (83, scaled(p[1], 100.0, false)),
                (86, scaled(p[2], 1.0, true)),
                (89, scaled(p[3], 10.0, false)),
                (92, scaled(p[4], 10.0, false)),
                (95, scaled(p[5], 100.0, false)),
            ];
            for (base, r) in regs {
                self.set_hr(base + i as u16, r);
            }
            self.now_values[3 + i] = f64::from(regs[0].1);
            self.now_values[6 + i] = f64::from(regs[1].1);
            self.energy[i] = f64::from(regs[2].1);
            self.now_values[9 + i] = f64::from(regs[3].1);
            self.now_values[12 + i] = f64::from(regs[4].1);
        }
        if self.low_power {
            return;
        }
        let avg = self.averages.average(5);
        let round = |x: f64| (0.5 + x).floor().clamp(0.0, 65535.0) as u16;
        for i in 0..3u16 {
            let k = i as usize;
            self.set_hr(98 + i, round(avg[k]));
            self.set_hr(101 + i, round(avg[3 + k]));
            self.set_hr(104 + i, round(avg[6 + k]));
            self.set_hr(107 + i, round(avg[9 + k]));
            // The stride bug: 110 + 2·i.
            self.set_hr(110 + 2 * i, round(avg[12 + k]));
        }
    }

    fn refresh_legacy(&mut self) {
        // Only two PZEMs were read; L3 forced to 0.
        for i in 0..3u16 {
            let k = i as usize;
            let p = if k < 2 { self.pzem(k) } else { [0.0; 6] };
            for (q, base) in [80u16, 86, 92, 98, 104, 110].into_iter().enumerate() {
                self.set_float(base + 2 * i, p[q]);
            }
            self.now_values[k] = f64::from(p[0]);
            self.now_values[3 + k] = f64::from(p[1]);
            self.now_values[6 + k] = f64::from(p[2]);
            self.energy[k] = f64::from(p[3]);
            self.now_values[9 + k] = f64::from(p[4]);
            self.now_values[12 + k] = f64::from(p[5]);
        }
        let avg = self.averages.average(5);
        for (q, base) in [116u16, 122, 128, 134, 140].into_iter().enumerate() {
            self.set_float(base, avg[3 * q] as f32);
            self.set_float(base + 2, 0.0);
            self.set_float(base + 4, 0.0);
        }
    }

    // ---- relay actions ----

    fn process_formulas(&mut self) {
        if self.coils[1] {
            self.commit();
            self.coils[1] = false;
            self.counters.commits += 1;
        }
        for i in 0..5 {
            let Some(slot) = &self.slots[i] else { continue };
            let Some(result) = self.evaluate(&slot.action) else {
                self.counters.undefined_results += 1;
                continue;
            };
            let Some(slot) = self.slots[i].as_mut() else { continue };
            let a = &slot.action;
            let mut write = None;
            if result != 0.0 || result.is_nan() {
                if !a.dry_run {
                    slot.trip = TripState { tripped: true, counter: 0 };
                    write = Some(a.level_high);
                }
            } else if slot.trip.tripped && a.auto {
                slot.trip.counter = slot.trip.counter.saturating_add(1);
                if slot.trip.counter >= u32::from(a.recovery) && !a.dry_run {
                    write = Some(!a.level_high);
                }
            }
            if let Some(level) = write {
                for &p in &a.pins {
                    self.pins.insert(p, level);
                }
            }
        }
    }

    fn commit(&mut self) {
        let hr151 = self.hr(151);
        let slot = usize::from(hr151 & 0xFF);
        if slot >= 5 {
            self.counters.commits_ignored += 1;
            return;
        }
        let window = ((hr151 >> 8) as u8).clamp(1, 20);
        let mut pins = [0u8; 8];
        for (j, a) in (152..156).enumerate() {
            let [hi, lo] = self.hr(a).to_be_bytes();
            pins[2 * j] = hi;
            pins[2 * j + 1] = lo;
        }
        let bytes: Vec<u8> = (157..189).flat_map(|a| self.hr(a).to_be_bytes()).collect();
        let text = bytes.iter().take_while(|&&b| b != 0).map(|&b| b as char).collect();
        let action = ActionSlot {
            window,
            pins,
            recovery: self.hr(156),
            text,
            level_high: self.coils[2],
            dry_run: self.coils[3],
            auto: self.coils[4],
        };
        let trip = self.slots[slot].as_ref().map(|s| s.trip).unwrap_or_default();
        self.slots[slot] = Some(ArmedAction { action, trip });
    }

    /// The expression's value, or `None` when the firmware's result is undefined.
    fn evaluate(&self, a: &ActionSlot) -> Option<f32> {
        if a.window != 5 && a.window != 10 {
            return None;
        }
        let expr = Expr::parse(&a.text).ok()?;
        let avg = self.averages.average(usize::from(a.window));
        let avg = match self.firmware {
            Firmware::Current => avg.map(|x| (0.5 + x).floor()),
            Firmware::LegacyFloat => avg,
        };
        let energy = self.energy;
        let var = move |name: &str| -> f32 {
            let b = name.as_bytes();
            let phase = match b {
                [b'L', d @ b'1'..=b'3', ..] => usize::from(d - b'1'),
                _ => return 0.0,
            };
            let q = match &b[2..] {
                b"U" => 0,
                b"I" => 1,
                b"P" => 2,
                b"f" => 3,
                b"pf" => 4,
                b"e" => return energy[phase] as f32,
                _ => return 0.0,
            };
            avg[3 * q + phase] as f32
        };
        Some(expr.eval(&var))
    }

    // ---- modbus_reply ----

    /// Executes a request PDU; the reply PDU and whether an exception flushes first. `None`:
    /// no reply at all (FC 07).
    fn execute(&mut self, pdu: &[u8]) -> Option<(Vec<u8>, bool)> {
        let fc = pdu[0];
        let word = |i: usize| u16::from_be_bytes([pdu[i], pdu[i + 1]]);
        let hr = (self.hr_start(), self.holding.len() as u16);
        let fits = |(start, count): (u16, u16), addr: u16, nb: u16| {
            addr >= start && u32::from(addr - start) + u32::from(nb) <= u32::from(count)
        };
        let exc = |s: &mut Self, code: u8| {
            s.counters.exceptions += 1;
            Some((vec![fc | 0x80, code], code != 2))
        };
        match fc {
            0x01..=0x04 => {
                let (addr, nb) = (word(1), word(3));
                let bits = fc <= 2;
                let table = match fc {
                    1 => COILS,
                    2 => DISCRETE,
                    3 => hr,
                    _ => INPUTS,
                };
                if !(1..=if bits { 2000 } else { 125 }).contains(&nb) {
                    return exc(self, 3);
                }
                if !fits(table, addr, nb) {
                    return exc(self, 2);
                }
                let i0 = usize::from(addr - table.0);
                let mut out = vec![fc];
                if bits {
                    let src = if fc == 1 { &self.coils } else { &self.discrete };
                    let n = usize::from(nb);
                    out.push(n.div_ceil(8) as u8);
                    for chunk in src[i0..i0 + n].chunks(8) {
                        out.push(chunk.iter().enumerate().fold(0u8, |b, (k, &on)| b | (u8::from(on) << k)));
                    }
                } else {
                    let src: &[u16] = if fc == 3 { &self.holding } else { &self.input };
                    out.push((2 * nb) as u8);
                    src[i0..i0 + usize::from(nb)]
                        .iter()
                        .for_each(|r| out.extend_from_slice(&r.to_be_bytes()));
                }
                Some((out, false))
            }
            0x05 => {
                let (addr, value) = (word(1), word(3));
                if !fits(COILS, addr, 1) {
                    return exc(self, 2);
                }
                match value {
                    0xFF00 => self.coils[usize::from(addr)] = true,
                    0x0000 => self.coils[usize::from(addr)] = false,
                    _ => {
                        self.counters.exceptions += 1;
                        return Some((vec![fc | 0x80, 3], false));
                    }
                }
                Some((pdu.to_vec(), false))
            }
            0x06 => {
                let (addr, value) = (word(1), word(3));
                if !fits(hr, addr, 1) {
                    return exc(self, 2);
                }
                self.set_hr(addr, value);
                Some((pdu.to_vec(), false))
            }
            0x0F => {
                let (addr, nb, bc) = (word(1), word(3), usize::from(pdu[5]));
                if !(1..=1968).contains(&nb) || bc * 8 < usize::from(nb) {
                    return exc(self, 3);
                }
                if !fits(COILS, addr, nb) {
                    return exc(self, 2);
                }
                for k in 0..usize::from(nb) {
                    self.coils[usize::from(addr) + k] = pdu[6 + k / 8] >> (k % 8) & 1 == 1;
                }
                Some((pdu[..5].to_vec(), false))
            }
            0x10 => {
                let (addr, nb, bc) = (word(1), word(3), usize::from(pdu[5]));
                if !(1..=123).contains(&nb) || bc != 2 * usize::from(nb) {
                    return exc(self, 3);
                }
                if !fits(hr, addr, nb) {
                    return exc(self, 2);
                }
                for k in 0..nb {
                    self.set_hr(addr + k, word(6 + 2 * usize::from(k)));
                }
                Some((pdu[..5].to_vec(), false))
            }
            0x11 => {
                let mut out = vec![fc, 10, 180, 0xFF];
                out.extend_from_slice(b"LMB3.1.4");
                Some((out, false))
            }
            0x16 => {
                let (addr, and, or) = (word(1), word(3), word(5));
                if !fits(hr, addr, 1) {
                    return exc(self, 2);
                }
                let v = self.hr(addr);
                self.set_hr(addr, (v & and) | (or & !and));
                Some((pdu.to_vec(), false))
            }
            0x17 => {
                let (raddr, rnb, waddr, wnb, bc) = (word(1), word(3), word(5), word(7), usize::from(pdu[9]));
                if !(1..=121).contains(&wnb) || !(1..=125).contains(&rnb) || bc != 2 * usize::from(wnb) {
                    return exc(self, 3);
                }
                if !fits(hr, raddr, rnb) || !fits(hr, waddr, wnb) {
                    return exc(self, 2);
                }
                for k in 0..wnb {
                    self.set_hr(waddr + k, word(10 + 2 * usize::from(k)));
                }
                let mut out = vec![fc, (2 * rnb) as u8];
                (raddr..raddr + rnb).for_each(|a| out.extend_from_slice(&self.hr(a).to_be_bytes()));
                Some((out, false))
            }
            0x07 => None,
            _ => exc(self, 1),
        }
    }
}

/// How much of the RX buffer the next frame takes, by libmodbus 3.1.4's length rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameLen {
    /// Not enough bytes yet to know.
    Need,
    /// This many bytes, address and CRC included (maybe more than are there yet).
    Bytes(usize),
    /// Longer than an RTU ADU: libmodbus gives up after reading this many bytes.
    TooLong(usize),
}

/// The length of the frame at the start of `buf`, parsed as a request (indication) or, when
/// `confirmation` is set, as a reply — as libmodbus' `compute_meta_length_after_function` and
/// `compute_data_length_after_meta` do.
pub fn frame_len(buf: &VecDeque<u8>, confirmation: bool) -> FrameLen {
    if buf.len() < 2 {
        return FrameLen::Need;
    }
    let fc = buf[1];
    let meta = if !confirmation {
        match fc {
            0..=6 => 4,
            0x0F | 0x10 => 5,
            0x16 => 6,
            0x17 => 9,
            _ => 0,
        }
    } else {
        match fc {
            0x05 | 0x06 | 0x0F | 0x10 => 4,
            0x16 => 6,
            _ => 1,
        }
    };
    if buf.len() < 2 + meta {
        return FrameLen::Need;
    }
    let data = match (confirmation, fc) {
        (false, 0x0F | 0x10) => usize::from(buf[6]),
        (false, 0x17) => usize::from(buf[10]),
        (true, 0..=4 | 0x11 | 0x17) => usize::from(buf[2]),
        _ => 0,
    };
    let total = 2 + meta + data + 2;
    if total > MAX_ADU {
        return FrameLen::TooLong(2 + meta);
    }
    FrameLen::Bytes(total)
}

/// The holding-register image of a relay action for HR151..=188 (38 registers), as the Python
/// client builds it: `[(window << 8) | slot, pins (first in the high byte)…, recovery, text…]`,
/// the text NUL-terminated and zero-padded. Longer texts are cut at 63 bytes.
pub fn action_registers(slot: u8, window: u8, pins: [u8; 8], recovery: u16, text: &str) -> Vec<u16> {
    let mut regs = vec![u16::from(window) << 8 | u16::from(slot)];
    regs.extend(pins.chunks(2).map(|p| u16::from(p[0]) << 8 | u16::from(p[1])));
    regs.push(recovery);
    let mut bytes: Vec<u8> = text.bytes().take(63).collect();
    bytes.resize(64, 0);
    regs.extend(bytes.chunks(2).map(|c| u16::from(c[0]) << 8 | u16::from(c[1])));
    regs
}

#[cfg(test)]
mod tests;
