//! Serial transport.
