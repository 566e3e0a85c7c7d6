//! Progress of a byte stream, reported to whoever shows it.
//!
//! The backup operations count bytes as they stream; they never draw
//! anything. The command line passes an observer that draws a progress bar
//! on a terminal; the service and the tests pass [`Progress::hidden`].

use std::{fmt, sync::Arc};

/// Something that shows progress: a progress bar, a log line, a metric.
pub trait ProgressObserver: Send + Sync {
    /// The total is known now (bytes).
    fn set_length(&self, total: u64);
    /// `n` more bytes are done.
    fn inc(&self, n: u64);
}

/// A cheap, clonable handle on an optional [`ProgressObserver`].
#[derive(Clone, Default)]
pub struct Progress(Option<Arc<dyn ProgressObserver>>);

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Progress")
            .field("shown", &self.0.is_some())
            .finish()
    }
}

impl Progress {
    /// Progress nobody watches.
    pub fn hidden() -> Self {
        Self(None)
    }

    /// Progress reported to `observer`.
    pub fn new(observer: Arc<dyn ProgressObserver>) -> Self {
        Self(Some(observer))
    }

    /// The total is known now (bytes).
    pub fn set_length(&self, total: u64) {
        if let Some(o) = &self.0 {
            o.set_length(total);
        }
    }

    /// `n` more bytes are done.
    pub fn inc(&self, n: u64) {
        if let Some(o) = &self.0 {
            o.inc(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[derive(Default)]
    struct Count {
        total: AtomicU64,
        done: AtomicU64,
    }

    impl ProgressObserver for Count {
        fn set_length(&self, total: u64) {
            self.total.store(total, Ordering::Relaxed);
        }
        fn inc(&self, n: u64) {
            self.done.fetch_add(n, Ordering::Relaxed);
        }
    }

    #[test]
    fn clones_report_to_the_same_observer() {
        let count = Arc::new(Count::default());
        let p = Progress::new(count.clone());
        p.set_length(10);
        p.clone().inc(3);
        p.inc(4);
        Progress::hidden().inc(100);
        assert_eq!(count.total.load(Ordering::Relaxed), 10);
        assert_eq!(count.done.load(Ordering::Relaxed), 7);
    }
}
