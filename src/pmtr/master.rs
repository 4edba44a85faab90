//! The master's side of the server's protocols, over a bus transport: time sync (§7), relay
//! action push with the commit handshake (§8), the reboot sentinel, and probing for a scan.
//! Each function is a short sequence of transactions; the bus task runs them between polls.

use super::action::ActionImage;
use super::registers::{epoch_registers, COIL_COMMIT, COIL_RESYNC, COIL_TIME_SYNC, HR_EPOCH};
use crate::modbus::transport::{Line, Outcome, Resync, Transport};
use crate::modbus::{Exception, FrameError, Reply, Request};
use std::time::Duration;
use tokio::time::Instant;

/// The seconds the firmware adds to the time it is given (its commit 19a8b26).
pub const FIRMWARE_TIME_OFFSET: i64 = 6;

/// Why a duty did not complete.
#[derive(Debug, thiserror::Error)]
pub enum DutyError {
    #[error("{step}: {error}")]
    Frame { step: &'static str, error: FrameError },
    #[error("{step}: unexpected reply")]
    Unexpected { step: &'static str },
    #[error(
        "the server did not take the relay action within {0:?} (it clears its commit coil when it does; \
         it never does in low-power mode)"
    )]
    NotTaken(Duration),
    #[error("port: {0}")]
    Port(#[from] std::io::Error),
}

/// How the master talks to one server.
#[derive(Debug, Clone, Copy)]
pub struct ServerLink {
    pub address: u8,
    /// Reply timeout of one transaction.
    pub timeout: Duration,
    /// Tries of one transaction.
    pub attempts: u32,
}

/// One transaction with retries; `observe` counts each try.
async fn transact<L: Line>(
    t: &mut Transport<L>,
    link: &ServerLink,
    req: &Request,
    step: &'static str,
    observe: &mut (dyn FnMut(&Outcome) + Send),
) -> Result<Reply, DutyError> {
    let mut last = FrameError::Timeout;
    for _ in 0..link.attempts.max(1) {
        let out = t.transact(req, link.timeout).await?;
        observe(&out);
        match out.result {
            Ok(r) => return Ok(r),
            // An answer: asking again changes nothing.
            Err(e @ FrameError::Exception(_)) => return Err(DutyError::Frame { step, error: e }),
            Err(e) => last = e,
        }
    }
    Err(DutyError::Frame { step, error: last })
}

async fn write<L: Line>(
    t: &mut Transport<L>,
    link: &ServerLink,
    req: Request,
    step: &'static str,
    observe: &mut (dyn FnMut(&Outcome) + Send),
) -> Result<(), DutyError> {
    match transact(t, link, &req, step, observe).await? {
        Reply::Echo => Ok(()),
        _ => Err(DutyError::Unexpected { step }),
    }
}

async fn read_coil<L: Line>(
    t: &mut Transport<L>,
    link: &ServerLink,
    coil: u16,
    step: &'static str,
    observe: &mut (dyn FnMut(&Outcome) + Send),
) -> Result<bool, DutyError> {
    match transact(t, link, &Request::read_coils(link.address, coil, 1), step, observe).await? {
        Reply::Bits(b) if !b.is_empty() => Ok(b[0]),
        _ => Err(DutyError::Unexpected { step }),
    }
}

/// What a time sync did.
#[derive(Debug, Clone, Copy)]
pub struct Synced {
    /// The Unix time written (before the firmware adds its 6 s).
    pub written: i64,
    /// The round trip measured while the server was in sync mode.
    pub round_trip: Duration,
}

/// The value to write so that the server's clock reads `set_at` (Unix seconds, UTC) at the
/// moment it takes it: the firmware adds 6 s.
pub fn epoch_to_write(set_at: i64) -> i64 {
    set_at - FIRMWARE_TIME_OFFSET
}

/// Sets the server's clock (§7): coil 0 on (the server enters its sync loop and answers at
/// once from then on), a read to measure the round trip, then at the right moment the time
/// and coil 0 off. The server sets its clock when it takes the coil, about one and a half round
/// trips (and the bus's frame gap, kept before the coil write) after the time is sent, and its
/// clock counts seconds from then on: the write is timed
/// so that this moment falls on a whole second, which leaves only the round trip's jitter as
/// error. `ms_field` goes to HR150 (unused by the firmware).
pub async fn sync_time<L: Line>(
    t: &mut Transport<L>,
    link: &ServerLink,
    ms_field: u16,
    observe: &mut (dyn FnMut(&Outcome) + Send),
) -> Result<Synced, DutyError> {
    write(t, link, Request::write_coil(link.address, COIL_TIME_SYNC, true), "time sync: enter", observe)
        .await?;
    // Once coil 0 is on, a stop waits for the time and the leave to be written: a cut here
    // would leave the server to take its clock from whatever its time registers hold.
    t.hold_stop(true);
    let result = set_time_and_leave(t, link, ms_field, observe).await;
    t.hold_stop(false);
    result
}

async fn set_time_and_leave<L: Line>(
    t: &mut Transport<L>,
    link: &ServerLink,
    ms_field: u16,
    observe: &mut (dyn FnMut(&Outcome) + Send),
) -> Result<Synced, DutyError> {
    // The bus's inter-frame gap (a `frame_gap` of a second or so paces a busy power-line bus)
    // is waited for out of the measured round trip and before the moment is chosen: otherwise
    // it would count as transit and delay the write, and the clock would be set late by it.
    t.settle().await;
    let start = Instant::now();
    let _ = read_coil(t, link, COIL_TIME_SYNC, "time sync: round trip", observe).await?;
    let round_trip = start.elapsed();
    t.settle().await;
    // The clock is taken 1.5 round trips after the time registers leave, and the gap later
    // that the coil-off write waits after the time write's reply.
    let lead = round_trip * 3 / 2 + t.gap();
    let now = chrono::Utc::now();
    let set_at_ns = now.timestamp_nanos_opt().unwrap_or(0) + lead.as_nanos() as i64;
    let next_second = set_at_ns.div_euclid(1_000_000_000) + 1;
    let wait = Duration::from_nanos((next_second * 1_000_000_000 - set_at_ns) as u64);
    tokio::time::sleep(wait).await;
    let written = epoch_to_write(next_second);
    let regs = epoch_registers(written as u64, ms_field).to_vec();
    // Whatever happens from here, coil 0 must not be left on with no time written: the
    // server would set its clock from whatever HR146 holds.
    write(t, link, Request::write_registers(link.address, HR_EPOCH, regs), "time sync: time", observe)
        .await?;
    write(t, link, Request::write_coil(link.address, COIL_TIME_SYNC, false), "time sync: leave", observe)
        .await?;
    Ok(Synced { written, round_trip })
}

/// The silence the daemon keeps before each request on a power-line bus of several servers
/// (unless the bus sets `frame_gap`): one server loop. Every server hears every frame and takes
/// one a loop off its 63-byte receive buffer; sent back to back, a request after a long reply,
/// or the frames of a relay-action push, overflow the buffers of the others, which then miss
/// their own requests. On the simulated bus of three servers (1.2 s loops, `cargo bench --bench
/// bus -- power-line`) this took the requests unanswered from 24-29 % to none, and the set-up
/// of the three from 402-479 s to 387 s.
pub const SHARED_BUS_GAP: Duration = Duration::from_millis(super::action::LOOP_PASS_MS);

/// What a power-line bus with several servers needs after a miss (see [`Resync`]): a 1 s
/// pause, then a broadcast write of 0 to the unused coil 11, a frame of a reply's length.
pub fn resync() -> Resync {
    Resync { pause: Duration::from_secs(1), frame: Request::write_coil(0, COIL_RESYNC, false) }
}

/// Pushes one slot (§8): waits for the commit coil to be clear (the last commit taken), stages
/// options, head and text in frames within the receive buffer, commits, and waits until the
/// server clears the commit coil, which it does once it has stored the slot. The coil is read
/// once per server loop (about 1.2 s), for at most four reply timeouts (and at least 10 s)
/// each wait.
pub async fn push_slot<L: Line>(
    t: &mut Transport<L>,
    link: &ServerLink,
    index: u8,
    slot: &ActionImage,
    observe: &mut (dyn FnMut(&Outcome) + Send),
) -> Result<(), DutyError> {
    let poll_every = Duration::from_millis(super::action::LOOP_PASS_MS);
    let max_wait = (link.timeout * 4).max(Duration::from_secs(10));
    wait_commit_clear(t, link, poll_every, max_wait, observe).await?;
    let requests = slot.requests(link.address, index);
    let (commit, staging) = requests.split_last().expect("a slot has requests");
    for req in staging {
        write(t, link, req.clone(), "relay action: stage", observe).await?;
    }
    write(t, link, commit.clone(), "relay action: commit", observe).await?;
    wait_commit_clear(t, link, poll_every, max_wait, observe).await
}

async fn wait_commit_clear<L: Line>(
    t: &mut Transport<L>,
    link: &ServerLink,
    poll_every: Duration,
    max_wait: Duration,
    observe: &mut (dyn FnMut(&Outcome) + Send),
) -> Result<(), DutyError> {
    let deadline = Instant::now() + max_wait;
    loop {
        if !read_coil(t, link, COIL_COMMIT, "relay action: commit coil", observe).await? {
            return Ok(());
        }
        if Instant::now() + poll_every > deadline {
            return Err(DutyError::NotTaken(max_wait));
        }
        tokio::time::sleep(poll_every).await;
    }
}

/// Leaves the sentinel in `register`.
pub async fn write_sentinel<L: Line>(
    t: &mut Transport<L>,
    link: &ServerLink,
    register: u16,
    value: u16,
    observe: &mut (dyn FnMut(&Outcome) + Send),
) -> Result<(), DutyError> {
    write(t, link, Request::write_registers(link.address, register, vec![value]), "sentinel", observe).await
}

/// What a probe found at an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Absent,
    /// Current firmware: its 12 V supply in mV.
    Current {
        supply_12v_mv: u16,
    },
    /// Refuses HR78 (illegal address): the legacy float firmware.
    Legacy,
    /// Something else answered (another kind of slave, or a garbled reply).
    Other(FrameError),
}

/// Probes one address with a read of HR78..79 (one try; the transport resynchronises a
/// power-line bus after a miss).
pub async fn probe<L: Line>(t: &mut Transport<L>, address: u8, timeout: Duration) -> std::io::Result<Probe> {
    let out = t.transact(&Request::read_holding(address, 78, 2), timeout).await?;
    Ok(match out.result {
        Ok(Reply::Registers(r)) if r.len() == 2 => Probe::Current { supply_12v_mv: r[1] },
        Ok(_) => Probe::Other(FrameError::Malformed("odd reply")),
        Err(FrameError::Exception(Exception::IllegalDataAddress)) => Probe::Legacy,
        Err(FrameError::Timeout) => Probe::Absent,
        Err(e) => Probe::Other(e),
    })
}
