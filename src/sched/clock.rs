//! The scheduler's sense of time. Receipt stamps, deadline checks, batch-fill
//! waits and stream eviction read one [`Clock`], so tests can run those rules
//! on a hand-driven clock ([`ManualClock`]) instead of sleeping; the daemon
//! uses [`SystemClock`].

use std::time::{Duration, Instant};

use super::sync::Parker;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;

    /// Sleeps on `parker` for at most `timeout` (woken early by its
    /// unparker). A test clock may advance itself instead.
    fn park(&self, parker: &Parker, timeout: Duration) {
        parker.park_timeout(timeout);
    }
}

/// The monotonic OS clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

#[cfg(test)]
pub use manual::ManualClock;

#[cfg(test)]
mod manual {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::time::{Duration, Instant};

    use super::{Clock, Parker};

    type Event = Box<dyn FnOnce() + Send>;

    /// A clock that moves only when told, for tests that must not sleep.
    /// A timed wait ([`Clock::park`]) never blocks: it runs the next
    /// scripted event if there is one (something arrives during the wait,
    /// time does not move), else the wait runs its full course (time moves
    /// on by the timeout). Tests script events with [`ManualClock::on_park`]
    /// and read how often the scheduler waited with [`ManualClock::parks`].
    pub struct ManualClock {
        now: Mutex<Instant>,
        events: Mutex<VecDeque<Event>>,
        parks: AtomicUsize,
    }

    impl Default for ManualClock {
        fn default() -> ManualClock {
            ManualClock::new()
        }
    }

    impl ManualClock {
        pub fn new() -> ManualClock {
            ManualClock {
                now: Mutex::new(Instant::now()),
                events: Mutex::new(VecDeque::new()),
                parks: AtomicUsize::new(0),
            }
        }

        pub fn advance(&self, d: Duration) {
            *self.now.lock().unwrap() += d;
        }

        /// Runs `f` during the next timed wait instead of letting it time out.
        pub fn on_park(&self, f: impl FnOnce() + Send + 'static) {
            self.events.lock().unwrap().push_back(Box::new(f));
        }

        /// Timed waits so far.
        pub fn parks(&self) -> usize {
            self.parks.load(SeqCst)
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> Instant {
            *self.now.lock().unwrap()
        }

        fn park(&self, _parker: &Parker, timeout: Duration) {
            self.parks.fetch_add(1, SeqCst);
            let event = self.events.lock().unwrap().pop_front();
            match event {
                Some(f) => f(),
                None => self.advance(timeout),
            }
        }
    }
}
