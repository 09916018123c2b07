//! The live generations of one pipeline: unique ids, `max_generations`, each
//! generation's cancel flag and its outbox. A worker never blocks on a
//! client: it pushes a generation's encoded messages into the generation's
//! bounded outbox (lock-free) and wakes the slot's delivery side, which the
//! registry's user provides (`D`: a topic or a query, say) and which drains
//! the outbox off the worker, in order. A worker checks [`Registry::room`]
//! before each step, so a consumer that falls behind ends its own
//! generation (explicitly) instead of stalling the worker or losing tokens.
//!
//! Locks: `inner` (ids and free slots) is taken by zenoh callbacks when a
//! command is registered or cancelled and by delivery threads when a
//! generation ends; `delivery` by the callback that registers and the slot's
//! delivery thread. Neither is ever taken by a worker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crossbeam::queue::ArrayQueue;
use crossbeam::sync::Unparker;

use crate::error::{ErrorCode, Rejection};

/// One message for a generation's client, encoded.
pub enum Out {
    /// A token message (or held-back text flushed at the end).
    Msg(Vec<u8>),
    /// The final message: after it is delivered the slot is free again.
    Final(Vec<u8>),
    /// An admitted tool call: `publish` (key, payload; `None` for a dry
    /// run) goes out first, then `msg` to the client.
    Call {
        publish: Option<(String, Vec<u8>)>,
        msg: Vec<u8>,
    },
}

pub struct Slot<D> {
    pub cancel: Arc<AtomicBool>,
    outbox: ArrayQueue<Out>,
    /// Where this slot's messages go while a generation holds it.
    delivery: Mutex<Option<D>>,
    waker: OnceLock<Unparker>,
}

struct Inner {
    ids: HashMap<String, usize>,
    /// The id holding each slot.
    held_by: Vec<Option<String>>,
    free: Vec<usize>,
}

pub struct Registry<D> {
    slots: Box<[Slot<D>]>,
    inner: Mutex<Inner>,
    live: AtomicUsize,
}

impl<D> Registry<D> {
    /// `max` live generations, each with an outbox of `outbox` messages.
    pub fn new(max: usize, outbox: usize) -> Registry<D> {
        Registry {
            slots: (0..max)
                .map(|_| Slot {
                    cancel: Arc::new(AtomicBool::new(false)),
                    outbox: ArrayQueue::new(outbox.max(3)),
                    delivery: Mutex::new(None),
                    waker: OnceLock::new(),
                })
                .collect(),
            inner: Mutex::new(Inner {
                ids: HashMap::new(),
                held_by: vec![None; max],
                free: (0..max).rev().collect(),
            }),
            live: AtomicUsize::new(0),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    pub fn slot(&self, i: usize) -> &Slot<D> {
        &self.slots[i]
    }

    /// Generations registered right now.
    pub fn live(&self) -> usize {
        self.live.load(SeqCst)
    }

    /// Takes a free slot for `id` with its delivery; the slot index and the
    /// generation's cancel flag.
    pub fn register(&self, id: &str, delivery: D) -> Result<(usize, Arc<AtomicBool>), Rejection> {
        let mut inner = self.inner();
        if inner.ids.contains_key(id) {
            return Err(Rejection::new(
                ErrorCode::DuplicateId,
                format!(
                    "a generation with id {id:?} is already running; this command is refused and that generation goes on"
                ),
            ));
        }
        let Some(i) = inner.free.pop() else {
            return Err(Rejection::new(
                ErrorCode::TooManyGenerations,
                format!(
                    "{} generations already running (max_generations)",
                    self.slots.len()
                ),
            ));
        };
        inner.ids.insert(id.to_string(), i);
        inner.held_by[i] = Some(id.to_string());
        let slot = &self.slots[i];
        slot.cancel.store(false, SeqCst);
        *slot.delivery.lock().unwrap_or_else(|e| e.into_inner()) = Some(delivery);
        self.live.fetch_add(1, SeqCst);
        Ok((i, slot.cancel.clone()))
    }

    /// Frees slot `i`. Called by the delivery side when the final message
    /// goes out, or when a registered generation could not be queued.
    pub fn release_slot(&self, i: usize) {
        let mut inner = self.inner();
        if let Some(id) = inner.held_by[i].take() {
            inner.ids.remove(&id);
            inner.free.push(i);
            self.live.fetch_sub(1, SeqCst);
        }
    }

    /// Sets `id`'s cancel flag; false if no such generation is live.
    pub fn cancel(&self, id: &str) -> bool {
        match self.inner().ids.get(id) {
            Some(&i) => {
                self.slots[i].cancel.store(true, SeqCst);
                true
            }
            None => false,
        }
    }

    /// Free places in slot `i`'s outbox.
    pub fn room(&self, i: usize) -> usize {
        let q = &self.slots[i].outbox;
        q.capacity() - q.len()
    }

    /// Queues a message for slot `i`'s client and wakes its delivery.
    /// Never blocks; `Err` when the outbox is full.
    pub fn push(&self, i: usize, out: Out) -> Result<(), Out> {
        let slot = &self.slots[i];
        slot.outbox.push(out)?;
        if let Some(w) = slot.waker.get() {
            w.unpark();
        }
        Ok(())
    }
}

impl<D> Slot<D> {
    /// The next message to deliver.
    pub fn pop(&self) -> Option<Out> {
        self.outbox.pop()
    }

    pub fn is_empty(&self) -> bool {
        self.outbox.is_empty()
    }

    /// Installs the delivery side's wake-up (once, at start).
    pub fn set_waker(&self, w: Unparker) {
        let _ = self.waker.set(w);
    }

    /// The current delivery, locked (delivery side only).
    pub fn delivery(&self) -> MutexGuard<'_, Option<D>> {
        self.delivery.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_bounded_and_slots_are_reused() {
        let r: Registry<&str> = Registry::new(2, 4);
        let (a, _) = r.register("a", "ta").unwrap();
        assert_eq!(
            r.register("a", "x").unwrap_err().code,
            ErrorCode::DuplicateId
        );
        let (b, _) = r.register("b", "tb").unwrap();
        assert_ne!(a, b);
        assert_eq!(
            r.register("c", "tc").unwrap_err().code,
            ErrorCode::TooManyGenerations
        );
        assert_eq!(r.live(), 2);
        r.release_slot(a);
        let (c, flag) = r.register("c", "tc").unwrap();
        assert_eq!(c, a, "the freed slot is reused");
        assert!(r.cancel("c"));
        assert!(flag.load(SeqCst));
        assert!(!r.cancel("a"));
        assert_eq!(*r.slot(c).delivery(), Some("tc"));
    }

    #[test]
    fn outbox_is_bounded_and_in_order() {
        let r: Registry<()> = Registry::new(1, 3);
        let (i, _) = r.register("g", ()).unwrap();
        assert_eq!(r.room(i), 3);
        for n in 0..3u8 {
            assert!(r.push(i, Out::Msg(vec![n])).is_ok());
        }
        assert!(r.push(i, Out::Msg(vec![9])).is_err(), "full outbox refuses");
        assert_eq!(r.room(i), 0);
        let got: Vec<u8> = std::iter::from_fn(|| r.slot(i).pop())
            .map(|o| match o {
                Out::Msg(b) | Out::Final(b) | Out::Call { msg: b, .. } => b[0],
            })
            .collect();
        assert_eq!(got, vec![0, 1, 2]);
    }
}
