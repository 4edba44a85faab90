//! Alerts by email (see the README "Alerts"):
//! - [`events`]: which trigger and relay changes are alerts, and how they read (pure);
//! - [`policy`]: digests, the minimum interval per kind and subject, the hourly cap, and the
//!   plain-text message (pure);
//! - [`queue`]: the bounded on-disk queue of emails waiting for the SMTP server;
//! - [`email`]: the SMTP transport through lettre (rustls), and the steps of `pmtr test-email`;
//! - [`watch`]: storage events and the meters' counters turned into alerts, on transitions only
//!   (pure);
//! - [`run`]: the alert task the daemon runs: events in, the policy, the queue, and a sender that
//!   blocks nothing else.

pub mod email;
pub mod events;
pub mod policy;
pub mod queue;
pub mod run;
pub mod watch;
