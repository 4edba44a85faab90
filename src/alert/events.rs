//! Which state changes are alerts, and how they read. Pure.

use super::policy::{Alert, AlertKind};
use crate::reading::{Cause, ChangeEvent, StateChange, Subject};

/// The alert of a trigger's or relay's change, if it is one. `trigger_alerts` is the
/// trigger's `alert` setting (relays always alert when forced by hand).
pub fn from_change(c: &StateChange, trigger_alerts: bool) -> Option<Alert> {
    let (kind, what) = match (c.subject, c.event) {
        (Subject::Trigger, _) if !trigger_alerts => return None,
        (Subject::Trigger, ChangeEvent::Tripped) => (AlertKind::TriggerTripped, "tripped"),
        (Subject::Trigger, ChangeEvent::Latched) => (AlertKind::TriggerTripped, "tripped and latched"),
        (Subject::Trigger, ChangeEvent::WouldTrip) => (AlertKind::TriggerTripped, "would trip (dry run)"),
        (Subject::Trigger, ChangeEvent::Released) => (AlertKind::TriggerReleased, "released"),
        (Subject::Trigger, ChangeEvent::Reset) => (AlertKind::TriggerReleased, "reset by hand"),
        (Subject::Trigger, ChangeEvent::WouldRelease) => {
            (AlertKind::TriggerReleased, "would release (dry run)")
        }
        (Subject::Relay, ChangeEvent::Forced) => {
            (AlertKind::RelayForced, if c.active { "forced on" } else { "forced off" })
        }
        (Subject::Relay, ChangeEvent::Unforced) => (AlertKind::RelayForced, "handed back to its triggers"),
        (Subject::Relay, ChangeEvent::Failed) => (
            AlertKind::RelayFailed,
            if c.active { "could not be switched on" } else { "could not be switched off" },
        ),
        (Subject::Neutral, ChangeEvent::NeutralFault) => (AlertKind::NeutralFault, "fault: a broken neutral"),
        (Subject::Neutral, ChangeEvent::NeutralOk | ChangeEvent::NeutralSuspect) if c.held => {
            (AlertKind::NeutralFault, "no longer in fault")
        }
        _ => return None,
    };
    // Evaluations give `L1U=254.2 L2U=231`; hands and stale data give words.
    let label = if matches!(c.cause, Cause::Values(_)) { "values" } else { "cause" };
    let mut details = Vec::new();
    if !c.cause.is_empty() {
        details.push((label.to_owned(), c.cause.to_string()));
    }
    Some(Alert {
        kind,
        time: c.time,
        subject: c.name.to_string(),
        summary: format!("{} {} {what}", c.subject.as_str(), c.name),
        details,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(subject: Subject, event: ChangeEvent, active: bool, cause: impl Into<Cause>) -> StateChange {
        StateChange {
            time: chrono::DateTime::UNIX_EPOCH,
            subject,
            name: "x".into(),
            event,
            active,
            held: false,
            dry_run: false,
            cause: cause.into(),
        }
    }

    #[test]
    fn transitions_that_matter_are_alerts_with_their_values() {
        let a = from_change(
            &change(Subject::Trigger, ChangeEvent::Tripped, true, Cause::Values("L1U=254.2".into())),
            true,
        )
        .unwrap();
        assert_eq!((a.kind, a.summary.as_str()), (AlertKind::TriggerTripped, "trigger x tripped"));
        assert_eq!(a.details, vec![("values".to_owned(), "L1U=254.2".to_owned())]);
        let a = from_change(&change(Subject::Relay, ChangeEvent::Forced, false, "forced off by uid 0"), true);
        assert_eq!(a.unwrap().summary, "relay x forced off");
        let a =
            from_change(&change(Subject::Trigger, ChangeEvent::Reset, false, "reset by uid 0 pid 1"), true);
        assert_eq!(a.unwrap().details[0].0, "cause");
    }

    #[test]
    fn switches_restores_and_quiet_triggers_are_not() {
        assert_eq!(
            from_change(
                &change(Subject::Relay, ChangeEvent::Switched, true, Cause::Start("start".into())),
                true
            ),
            None
        );
        let a =
            from_change(&change(Subject::Neutral, ChangeEvent::NeutralFault, true, "shift 38.2 V"), false)
                .unwrap();
        assert_eq!(
            (a.kind, a.summary.as_str()),
            (AlertKind::NeutralFault, "neutral x fault: a broken neutral")
        );
        // Suspect from ok is no mail; leaving a fault is.
        assert_eq!(
            from_change(&change(Subject::Neutral, ChangeEvent::NeutralSuspect, false, "x"), true),
            None
        );
        let mut back = change(Subject::Neutral, ChangeEvent::NeutralOk, false, "shift 2.0 V");
        back.held = true;
        assert_eq!(from_change(&back, true).map(|a| a.kind), Some(AlertKind::NeutralFault));
        assert_eq!(from_change(&change(Subject::Trigger, ChangeEvent::Restored, true, ""), true), None);
        assert_eq!(from_change(&change(Subject::Trigger, ChangeEvent::Tripped, true, "L1U=1"), false), None);
    }
}
