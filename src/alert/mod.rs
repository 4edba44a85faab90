//! Alerts (groundwork): the policy that turns alert events into few, readable emails, and the
//! on-disk queue of the emails waiting for the SMTP server.
//! Nothing in the daemon uses it yet; see the README ("Alerts").

pub mod events;
pub mod policy;
pub mod queue;
