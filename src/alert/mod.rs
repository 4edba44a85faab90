//! Alerts (groundwork): the policy that turns alert events into few, readable emails.
//! Nothing in the daemon uses it yet; see the README ("Alerts").

pub mod policy;
