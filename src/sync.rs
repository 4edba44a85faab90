//! One way to take a lock that a panicking holder may have poisoned.
//!
//! The daemon's shared state (status board, counters, queues) stays readable after a task
//! panicked while holding it: what it holds is plain data, every writer leaves it whole between
//! statements, and a stopped status page or spool would cost more than a half-updated counter.
//! So every `std::sync::Mutex` of the crate is taken through [`Locked::locked`], never with
//! `lock().unwrap()`. A leaf: it imports nothing of the crate.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// [`Mutex::lock`] that takes over a poisoned lock instead of failing.
pub trait Locked<T: ?Sized> {
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> Locked<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::Locked;
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_lock_poisoned_by_a_panic_is_taken_over_with_its_value() {
        let m = Arc::new(Mutex::new(7));
        let m2 = Arc::clone(&m);
        let r = std::thread::spawn(move || {
            let mut g = m2.lock().unwrap();
            *g = 8;
            panic!("holder fails");
        })
        .join();
        assert!(r.is_err());
        assert!(m.is_poisoned());
        assert_eq!(*m.locked(), 8);
        *m.locked() += 1;
        assert_eq!(*m.locked(), 9);
    }
}
