//! The alert policy, pure: which alerts become emails, and when. The clock is passed in.
//!
//! - Only transitions are alerts (the callers turn state changes into [`Alert`]s once each).
//! - **Minimum interval**: the same kind of alert about the same subject (trigger, meter, sink)
//!   is sent at most once per `min_interval`; the ones in between are counted and the count is
//!   told in the next message.
//! - **Digest**: alerts arriving within `digest` of the first one waiting go out as one message.
//! - **Hourly cap**: at most `per_hour` messages in any hour; what the cap holds back is counted
//!   and told, by kind, in the next message that goes out.

use chrono::{DateTime, FixedOffset, Utc};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write;
use std::time::Duration;

pub use crate::config::AlertKind;

/// One alert: what happened, to what, and the facts.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub kind: AlertKind,
    pub time: DateTime<Utc>,
    /// The trigger, relay, meter or sink it is about (empty for the gateway itself).
    pub subject: String,
    /// One line for people: `trigger overvoltage tripped`.
    pub summary: String,
    /// The values and other facts, `(label, value)`.
    pub details: Vec<(String, String)>,
}

/// The limits of the policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub digest: Duration,
    pub min_interval: Duration,
    pub per_hour: u32,
}

/// What goes out as one message.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Digest {
    pub alerts: Vec<Alert>,
    /// Alerts left out by the minimum interval since the previous message, by kind.
    pub repeated: BTreeMap<AlertKind, u64>,
    /// Alerts held back by the hourly cap since the previous message, by kind.
    pub held_back: BTreeMap<AlertKind, u64>,
}

/// The policy's state.
#[derive(Debug)]
pub struct Policy {
    limits: Limits,
    pending: Vec<Alert>,
    first_pending: Option<Duration>,
    last_accepted: HashMap<(AlertKind, String), Duration>,
    sent: VecDeque<Duration>,
    repeated: BTreeMap<AlertKind, u64>,
    held_back: BTreeMap<AlertKind, u64>,
}

const HOUR: Duration = Duration::from_secs(3600);

impl Policy {
    pub fn new(limits: Limits) -> Self {
        Policy {
            limits,
            pending: Vec::new(),
            first_pending: None,
            last_accepted: HashMap::new(),
            sent: VecDeque::new(),
            repeated: BTreeMap::new(),
            held_back: BTreeMap::new(),
        }
    }

    /// Takes an alert at `now` (monotonic). False when the minimum interval left it out.
    pub fn push(&mut self, alert: Alert, now: Duration) -> bool {
        let key = (alert.kind, alert.subject.clone());
        if let Some(&last) = self.last_accepted.get(&key) {
            if now.saturating_sub(last) < self.limits.min_interval {
                *self.repeated.entry(alert.kind).or_default() += 1;
                return false;
            }
        }
        self.last_accepted.insert(key, now);
        self.pending.push(alert);
        self.first_pending.get_or_insert(now);
        true
    }

    /// When [`Policy::due`] has something next, if anything waits.
    pub fn next_due(&self) -> Option<Duration> {
        self.first_pending.map(|t| t + self.limits.digest)
    }

    /// The message due at `now`, if any. A digest the hourly cap stops is counted as held back.
    pub fn due(&mut self, now: Duration) -> Option<Digest> {
        let first = self.first_pending?;
        if now < first + self.limits.digest {
            return None;
        }
        self.first_pending = None;
        let alerts = std::mem::take(&mut self.pending);
        while self.sent.front().is_some_and(|&t| now.saturating_sub(t) >= HOUR) {
            self.sent.pop_front();
        }
        if self.sent.len() >= self.limits.per_hour as usize {
            for a in &alerts {
                *self.held_back.entry(a.kind).or_default() += 1;
            }
            return None;
        }
        self.sent.push_back(now);
        Some(Digest {
            alerts,
            repeated: std::mem::take(&mut self.repeated),
            held_back: std::mem::take(&mut self.held_back),
        })
    }
}

/// The subject and plain-text body of a digest, for people: what happened, where, the values,
/// and the time in local time and UTC. `prefix` may be empty (the mailer adds its own).
pub fn render(d: &Digest, gateway: &str, prefix: &str, offset: FixedOffset) -> (String, String) {
    let subject = match d.alerts.as_slice() {
        [one] => format!("{prefix} {gateway}: {}", one.summary),
        many => format!("{prefix} {gateway}: {} alerts, first: {}", many.len(), many[0].summary),
    };
    let subject = subject.trim_start().to_owned();
    let mut body = String::new();
    let _ = writeln!(body, "Gateway {gateway}\n");
    for a in &d.alerts {
        let local = a.time.with_timezone(&offset);
        let _ = writeln!(body, "{}", a.summary);
        let _ = writeln!(
            body,
            "  at {} ({} UTC)",
            local.format("%Y-%m-%d %H:%M:%S %:z"),
            a.time.format("%Y-%m-%d %H:%M:%S")
        );
        for (label, value) in &a.details {
            let _ = writeln!(body, "  {label}: {value}");
        }
        body.push('\n');
    }
    let counts = |m: &BTreeMap<AlertKind, u64>| {
        m.iter().map(|(k, n)| format!("{n} {}", k.name())).collect::<Vec<_>>().join(", ")
    };
    if !d.repeated.is_empty() {
        let _ = writeln!(body, "Left out as repeats within the minimum interval: {}.", counts(&d.repeated));
    }
    if !d.held_back.is_empty() {
        let _ = writeln!(body, "Held back by the hourly cap: {}.", counts(&d.held_back));
    }
    (subject, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn s(x: u64) -> Duration {
        Duration::from_secs(x)
    }

    fn alert(kind: AlertKind, subject: &str) -> Alert {
        Alert {
            kind,
            time: Utc.with_ymd_and_hms(2026, 11, 21, 21, 30, 0).unwrap(),
            subject: subject.into(),
            summary: format!("{} {subject}", kind.name()),
            details: vec![("values".into(), "L1U=254.2".into())],
        }
    }

    fn limits() -> Limits {
        Limits { digest: s(30), min_interval: s(300), per_hour: 10 }
    }

    #[test]
    fn alerts_within_the_digest_window_go_out_as_one() {
        let mut p = Policy::new(limits());
        assert!(p.push(alert(AlertKind::TriggerTripped, "a"), s(0)));
        assert!(p.push(alert(AlertKind::MeterSilent, "m"), s(10)));
        assert_eq!(p.next_due(), Some(s(30)));
        assert_eq!(p.due(s(29)), None);
        let d = p.due(s(30)).unwrap();
        assert_eq!(d.alerts.len(), 2);
        assert_eq!(p.due(s(31)), None, "sent once");
        assert_eq!(p.next_due(), None);
    }

    #[test]
    fn repeats_within_the_minimum_interval_are_counted_and_told() {
        let mut p = Policy::new(limits());
        assert!(p.push(alert(AlertKind::TriggerTripped, "a"), s(0)));
        assert!(!p.push(alert(AlertKind::TriggerTripped, "a"), s(100)));
        assert!(p.push(alert(AlertKind::TriggerTripped, "b"), s(100)), "another subject");
        assert!(p.push(alert(AlertKind::TriggerReleased, "a"), s(100)), "another kind");
        let d = p.due(s(130)).unwrap();
        assert_eq!(d.alerts.len(), 3);
        assert_eq!(d.repeated.get(&AlertKind::TriggerTripped), Some(&1));
        assert!(p.push(alert(AlertKind::TriggerTripped, "a"), s(300)), "the interval is over");
    }

    #[test]
    fn a_storm_of_200_transitions_in_a_minute_is_one_message_and_the_repeats_are_counted() {
        let mut p = Policy::new(limits());
        let mut sent = Vec::new();
        for i in 0..200u64 {
            let t = s(i * 60 / 200);
            let kind = if i % 2 == 0 { AlertKind::TriggerTripped } else { AlertKind::TriggerReleased };
            p.push(alert(kind, &format!("t{}", i % 10)), t);
            if let Some(d) = p.due(t) {
                sent.push(d);
            }
        }
        // Ten triggers flapping: each (trigger, kind) passes the interval once; the first
        // digest goes out 30 s after the first alert and tells the repeats seen until then.
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].alerts.len(), 10);
        let told_first: u64 = sent[0].repeated.values().sum();
        assert_eq!(told_first, 91, "the repeats of the first 30 s");
        // The next alert, after the storm, tells the rest: nothing is lost from the count.
        p.push(alert(AlertKind::MeterSilent, "m"), s(400));
        let d = p.due(s(430)).unwrap();
        assert_eq!(d.repeated.values().sum::<u64>() + told_first, 190);
    }

    #[test]
    fn the_hourly_cap_holds_back_and_says_so() {
        let mut p = Policy::new(Limits { digest: s(1), min_interval: Duration::ZERO, per_hour: 3 });
        let mut sent = 0;
        for i in 0..10u64 {
            p.push(alert(AlertKind::MeterSilent, "m"), s(i * 60));
            if p.due(s(i * 60 + 1)).is_some() {
                sent += 1;
            }
        }
        assert_eq!(sent, 3);
        p.push(alert(AlertKind::MeterBack, "m"), s(3600 + 60));
        let d = p.due(s(3600 + 61)).expect("the first message of the next hour");
        assert_eq!(d.held_back.get(&AlertKind::MeterSilent), Some(&7));
        let (_, body) = render(&d, "house-pi", "[pmtr]", FixedOffset::east_opt(3600).unwrap());
        assert!(body.contains("Held back by the hourly cap: 7 meter_silent."), "{body}");
    }

    #[test]
    fn the_message_says_what_where_the_values_and_both_times() {
        let d = Digest { alerts: vec![alert(AlertKind::TriggerTripped, "overvoltage")], ..Digest::default() };
        let (subject, body) = render(&d, "house-pi", "[pmtr]", FixedOffset::east_opt(3600).unwrap());
        assert_eq!(subject, "[pmtr] house-pi: trigger_tripped overvoltage");
        assert!(body.contains("Gateway house-pi"), "{body}");
        assert!(body.contains("at 2026-11-21 22:30:00 +01:00 (2026-11-21 21:30:00 UTC)"), "{body}");
        assert!(body.contains("values: L1U=254.2"), "{body}");
        let two = Digest {
            alerts: vec![alert(AlertKind::TriggerTripped, "a"), alert(AlertKind::MeterSilent, "m")],
            ..Digest::default()
        };
        assert_eq!(
            render(&two, "g", "[pmtr]", FixedOffset::east_opt(0).unwrap()).0,
            "[pmtr] g: 2 alerts, first: trigger_tripped a"
        );
    }

    #[test]
    fn kinds_have_config_names() {
        for k in AlertKind::ALL {
            assert_eq!(AlertKind::parse(k.name()), Some(k));
        }
    }
}
