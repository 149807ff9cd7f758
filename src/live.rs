//! [`Live`]: settings a reload swaps whole. Readers take a snapshot (an
//! `Arc`) and keep using it to the end of what they are doing, so a request
//! or an attempt in flight finishes on the settings it started with.

use std::sync::{Arc, RwLock};

pub struct Live<T>(RwLock<Arc<T>>);

impl<T> Live<T> {
    pub fn new(value: T) -> Self {
        Live(RwLock::new(Arc::new(value)))
    }

    /// The current settings.
    pub fn get(&self) -> Arc<T> {
        self.0.read().expect("not poisoned").clone()
    }

    /// Replaces the settings for everyone who asks from now on.
    pub fn set(&self, value: T) {
        *self.0.write().expect("not poisoned") = Arc::new(value);
    }

    /// Sets what [`Live::get`] returned earlier again (when the rest of a
    /// reload fails).
    pub fn put_back(&self, previous: Arc<T>) {
        *self.0.write().expect("not poisoned") = previous;
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Live<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}
