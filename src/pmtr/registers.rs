//! The PMTR_001_SRV register map of the master's duties: the coils and holding registers of
//! the time sync and of the relay-action slots. The numbers are the firmware's 0-based PDU
//! addresses (../shared/reference/pmtr-server.md §3-§5). Its telemetry (what a poll reads) is a
//! meter model's: [`crate::meter::pmtr_srv`].

/// Coil 0: time-sync request (1 enters sync mode, 0 says the time registers are ready).
pub const COIL_TIME_SYNC: u16 = 0;
/// Coil 1: relay-action commit; the server clears it once it has taken the slot.
pub const COIL_COMMIT: u16 = 1;
/// Coils 2..4: level when true (1 = HIGH), dry run, automatic recovery.
pub const COIL_ACTION_OPTIONS: u16 = 2;
/// An unused coil: a broadcast write of 0 to it resynchronises the servers' receivers (§11).
pub const COIL_RESYNC: u16 = 11;

/// HR146..149: Unix time, least significant word first; HR150: milliseconds (never used by
/// the firmware).
pub const HR_EPOCH: u16 = 146;
/// HR151: slot (low byte) and moving-average window (high byte); 152..155 pins; 156 recovery;
/// 157..188 the expression text.
pub const HR_ACTION: u16 = 151;
pub const HR_ACTION_TEXT: u16 = 157;
/// Registers of the expression text: 64 bytes, NUL included.
pub const ACTION_TEXT_REGISTERS: u16 = 32;

/// The registers HR146..150 of a time sync: `epoch` least significant word first, then the
/// millisecond field (the firmware ignores it; pmtr puts its reboot sentinel there for the
/// legacy firmware).
pub fn epoch_registers(epoch: u64, ms_field: u16) -> [u16; 5] {
    [epoch as u16, (epoch >> 16) as u16, (epoch >> 32) as u16, (epoch >> 48) as u16, ms_field]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_words_are_least_significant_first() {
        // The reference's example: 1725000000 = 0x66D16940.
        assert_eq!(epoch_registers(1_725_000_000, 0), [0x6940, 0x66D1, 0, 0, 0]);
    }
}
