//! The scheduler's synchronisation primitives, in one place so that its
//! protocols (claim/park/unpark, latest-wins slots, batch fill, decode-batch
//! joins) can be model-checked with `loom` on the production code. Normally
//! these are std atomics, crossbeam's `ArrayQueue` and `Parker`; built with
//! `--cfg loom` (`scripts/loom.sh`) they are loom's atomics and locks, a
//! lock-guarded bounded queue and a condvar parker, so loom sees and
//! permutes every step. Loom does not model `SeqCst` loads and stores as
//! one total order, so the protocols put a `fence(SeqCst)` between a flag
//! store and the load that must not move before it (fences it does model).
//! And a flag that other threads change with a read-modify-write is also
//! written with one (`swap`, never `store`): loom 0.7.3 lets a plain store
//! slip between another thread's RMW read and write (tokio-rs/loom#254),
//! a false alarm; on x86-64 a `SeqCst` store is an `xchg` anyway.

#[cfg(not(loom))]
mod imp {
    pub use crossbeam::queue::ArrayQueue as Queue;
    pub use crossbeam::sync::{Parker, Unparker};
    pub use std::sync::RwLock;
    pub use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, fence};
}

#[cfg(loom)]
mod imp {
    use std::collections::VecDeque;
    use std::sync::Arc;
    use std::time::Duration;

    pub use loom::sync::RwLock;
    pub use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, fence};
    use loom::sync::{Condvar, Mutex};

    /// A bounded queue with `ArrayQueue`'s interface; every operation is
    /// one atomic step (as `ArrayQueue`'s are linearizable).
    pub struct Queue<T> {
        cap: usize,
        items: Mutex<VecDeque<T>>,
    }

    impl<T> Queue<T> {
        pub fn new(cap: usize) -> Queue<T> {
            assert!(cap > 0, "capacity must be non-zero");
            Queue {
                cap,
                items: Mutex::new(VecDeque::new()),
            }
        }

        fn items(&self) -> loom::sync::MutexGuard<'_, VecDeque<T>> {
            self.items.lock().unwrap_or_else(|e| e.into_inner())
        }

        pub fn push(&self, t: T) -> Result<(), T> {
            let mut q = self.items();
            if q.len() >= self.cap {
                return Err(t);
            }
            q.push_back(t);
            Ok(())
        }

        pub fn force_push(&self, t: T) -> Option<T> {
            let mut q = self.items();
            let old = if q.len() >= self.cap {
                q.pop_front()
            } else {
                None
            };
            q.push_back(t);
            old
        }

        pub fn pop(&self) -> Option<T> {
            self.items().pop_front()
        }

        pub fn is_empty(&self) -> bool {
            self.items().is_empty()
        }
    }

    struct Token {
        set: Mutex<bool>,
        cv: Condvar,
    }

    /// crossbeam's `Parker`: one wake-up token. Loom has no time, so
    /// `park_timeout` waits like `park`: a protocol that needs the timeout
    /// to make progress deadlocks, and loom reports the deadlock.
    pub struct Parker {
        unparker: Unparker,
    }

    #[derive(Clone)]
    pub struct Unparker {
        token: Arc<Token>,
    }

    impl Default for Parker {
        fn default() -> Parker {
            Parker::new()
        }
    }

    impl Parker {
        pub fn new() -> Parker {
            Parker {
                unparker: Unparker {
                    token: Arc::new(Token {
                        set: Mutex::new(false),
                        cv: Condvar::new(),
                    }),
                },
            }
        }

        pub fn unparker(&self) -> &Unparker {
            &self.unparker
        }

        pub fn park(&self) {
            let t = &self.unparker.token;
            let mut set = t.set.lock().unwrap_or_else(|e| e.into_inner());
            while !*set {
                set = t.cv.wait(set).unwrap_or_else(|e| e.into_inner());
            }
            *set = false;
        }

        pub fn park_timeout(&self, _timeout: Duration) {
            self.park();
        }
    }

    impl Unparker {
        pub fn unpark(&self) {
            *self.token.set.lock().unwrap_or_else(|e| e.into_inner()) = true;
            self.token.cv.notify_one();
        }
    }
}

pub use imp::*;
