//! Alerts. For now only the email transport ([`email`]); alert events, digests and the queue
//! come later.

pub mod email;
