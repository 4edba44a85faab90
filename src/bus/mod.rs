//! Bus engine.
