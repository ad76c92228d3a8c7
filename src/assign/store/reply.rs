//! The writer thread's answers to the requests waiting on it, with one
//! wake-up of each runtime per batch instead of one per request.
//!
//! A tokio task woken from outside its runtime costs a write to the
//! runtime's eventfd (and a wake-up of a sleeping runtime) per wake: a
//! batch of 30 new units cost 30 of them. So each runtime that submits
//! commands gets a relay, a task on that runtime: the writer hands it the
//! batch's wakers and wakes it once, and it wakes them from inside the
//! runtime, where a wake is a push onto a local queue. A thread outside
//! any runtime, or a relay whose runtime is gone, is woken directly.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use super::error::StoreError;

/// A one-shot channel from the writer to one waiting request.
pub(super) fn channel<T>() -> (Reply<T>, Answer<T>) {
    let slot = Arc::new(Slot {
        state: Mutex::new(SlotState {
            value: None,
            waker: None,
            closed: false,
        }),
        relay: this_runtimes_relay(),
    });
    (Reply(Some(slot.clone())), Answer(slot))
}

struct Slot<T> {
    state: Mutex<SlotState<T>>,
    relay: Option<Arc<Relay>>,
}

struct SlotState<T> {
    value: Option<T>,
    waker: Option<Waker>,
    /// The writer dropped the reply unanswered (it stopped).
    closed: bool,
}

/// The writer's end: answered once, with [`Reply::send`].
pub(super) struct Reply<T>(Option<Arc<Slot<T>>>);

impl<T> Reply<T> {
    /// Stores the answer; the waiter's wake-up goes through its relay and
    /// happens at [`Wakes::finish`].
    pub(super) fn send(mut self, value: T, wakes: &mut Wakes) {
        let slot = self.0.take().expect("answered once");
        let waker = {
            let mut s = slot.state.lock().expect("reply lock");
            s.value = Some(value);
            s.waker.take()
        };
        if let Some(w) = waker {
            match &slot.relay {
                Some(relay) => wakes.add(relay, w),
                None => w.wake(),
            }
        }
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            let waker = {
                let mut s = slot.state.lock().expect("reply lock");
                s.closed = true;
                s.waker.take()
            };
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

/// The request's end: resolves to the answer, or [`StoreError::Closed`]
/// if the writer stopped without one.
pub(super) struct Answer<T>(Arc<Slot<T>>);

impl<T> Future for Answer<T> {
    type Output = Result<T, StoreError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = self.0.state.lock().expect("reply lock");
        if let Some(v) = s.value.take() {
            return Poll::Ready(Ok(v));
        }
        if s.closed {
            return Poll::Ready(Err(StoreError::Closed));
        }
        match &s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => s.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// The relays a batch's answers went to; each is woken once.
#[derive(Default)]
pub(super) struct Wakes(Vec<Arc<Relay>>);

impl Wakes {
    fn add(&mut self, relay: &Arc<Relay>, waker: Waker) {
        if let Err(waker) = relay.hand(waker) {
            return waker.wake();
        }
        if !self.0.iter().any(|r| Arc::ptr_eq(r, relay)) {
            self.0.push(relay.clone());
        }
    }

    /// Wakes each relay handed a waker since the last call.
    pub(super) fn finish(&mut self) {
        for relay in self.0.drain(..) {
            let task = relay.state.lock().expect("relay lock").task.take();
            if let Some(t) = task {
                t.wake();
            }
        }
    }
}

/// One runtime's relay: the wakers handed to it, and its task's waker.
struct Relay {
    state: Mutex<RelayState>,
    /// False once its task is gone (the runtime shut down).
    alive: AtomicBool,
}

struct RelayState {
    handed: Vec<Waker>,
    task: Option<Waker>,
}

impl Relay {
    /// Queues `waker` for the relay task, or gives it back if the task is gone.
    fn hand(&self, waker: Waker) -> Result<(), Waker> {
        let mut s = self.state.lock().expect("relay lock");
        if !self.alive.load(Ordering::Acquire) {
            return Err(waker);
        }
        s.handed.push(waker);
        Ok(())
    }
}

/// The relay's task: wakes what it is handed, from inside its runtime.
struct RelayTask {
    relay: Arc<Relay>,
    /// The batch being woken (kept to reuse its allocation).
    spare: Vec<Waker>,
}

impl Future for RelayTask {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        loop {
            {
                let mut s = this.relay.state.lock().expect("relay lock");
                if s.handed.is_empty() {
                    s.task = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                std::mem::swap(&mut s.handed, &mut this.spare);
            }
            for w in this.spare.drain(..) {
                w.wake();
            }
        }
    }
}

impl Drop for RelayTask {
    fn drop(&mut self) {
        let handed = {
            let mut s = self.relay.state.lock().expect("relay lock");
            self.relay.alive.store(false, Ordering::Release);
            std::mem::take(&mut s.handed)
        };
        for w in handed {
            w.wake();
        }
    }
}

thread_local! {
    /// This thread's relay and the runtime it runs on.
    static RELAY: RefCell<Option<(tokio::runtime::Id, Arc<Relay>)>> = const { RefCell::new(None) };
}

/// The relay of the runtime this thread runs, started on first use; none
/// outside a runtime.
fn this_runtimes_relay() -> Option<Arc<Relay>> {
    let rt = tokio::runtime::Handle::try_current().ok()?;
    let id = rt.id();
    RELAY.with(|cell| {
        let mut cell = cell.borrow_mut();
        if let Some((at, relay)) = cell.as_ref() {
            if *at == id && relay.alive.load(Ordering::Acquire) {
                return Some(relay.clone());
            }
        }
        let relay = Arc::new(Relay {
            state: Mutex::new(RelayState {
                handed: Vec::new(),
                task: None,
            }),
            alive: AtomicBool::new(true),
        });
        // Dropped unpolled if the runtime is shutting down: then it is
        // marked dead at once and nothing waits on it.
        drop(rt.spawn(RelayTask {
            relay: relay.clone(),
            spare: Vec::new(),
        }));
        *cell = Some((id, relay.clone()));
        Some(relay)
    })
}
