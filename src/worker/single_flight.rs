//! [warm] One fetch per key at a time, per worker (single flight): the
//! first request that needs something fetched — a token introspected, a
//! cache miss filled — leads; the others with the same key wait for it
//! (`waiting`), then read the answer from where the leader put it (the
//! token cache, the response cache). The leader's guard ends the flight
//! however the leader ends — answered, failed, released early, or dropped
//! with its connection — so a waiter is never left waiting on a fetch
//! nobody makes. Single-threaded (`Rc`, wakers).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// Fetches under way on this worker, by (kind or provider, key hash).
#[derive(Default)]
pub struct Lookups {
    /// Shared with the leaders' guards, which outlive any borrow of the
    /// shard (a background refresh is its own task).
    pending: Rc<PendingMap>,
    /// Random per worker: nobody can aim a token at another's lookup.
    hasher: ahash::RandomState,
}

/// Flights under way, by key.
type PendingMap = RefCell<HashMap<(u16, u64), Rc<Pending>>>;

#[derive(Default)]
struct Pending {
    done: Cell<bool>,
    /// The call failed: waiters do not ask again.
    failed: Cell<bool>,
    wakers: RefCell<Vec<Waker>>,
}

/// A lookup to wait for.
pub struct Wait(Rc<Pending>);

/// The leader's side of a lookup; dropping it ends the lookup.
pub struct Lead {
    lookups: Rc<PendingMap>,
    key: (u16, u64),
    pending: Rc<Pending>,
}

impl Lookups {
    /// The key of `token` for `provider`. Two tokens may share a key: a
    /// waiter then finds no answer for its own token in the cache and
    /// leads its own lookup.
    pub fn key(&self, provider: u16, token: &[u8]) -> (u16, u64) {
        (provider, self.hasher.hash_one(token))
    }

    /// The lookup under way for `key`, if any.
    pub fn waiting(&self, key: (u16, u64)) -> Option<Wait> {
        self.pending.borrow().get(&key).cloned().map(Wait)
    }

    /// Starts a lookup for `key`.
    pub fn lead(&self, key: (u16, u64)) -> Lead {
        let pending = Rc::new(Pending::default());
        self.pending.borrow_mut().insert(key, pending.clone());
        Lead {
            lookups: self.pending.clone(),
            key,
            pending,
        }
    }

    pub fn in_flight(&self) -> usize {
        self.pending.borrow().len()
    }
}

impl Wait {
    /// Resolves when the lookup has ended.
    pub fn done(&self) -> impl Future<Output = ()> + use<> {
        Done(self.0.clone())
    }

    /// Whether it ended without an answer.
    pub fn failed(&self) -> bool {
        self.0.failed.get()
    }
}

impl Lead {
    /// The call could not be made or answered.
    pub fn failed(&self) {
        self.pending.failed.set(true);
    }

    /// Ends the flight now (the waiters need not wait for the rest of the
    /// leader's work); dropping the guard later does nothing more.
    pub fn release(&self) {
        if self.pending.done.replace(true) {
            return;
        }
        let mut pending = self.lookups.borrow_mut();
        if pending
            .get(&self.key)
            .is_some_and(|p| Rc::ptr_eq(p, &self.pending))
        {
            pending.remove(&self.key);
        }
        drop(pending);
        for waker in self.pending.wakers.borrow_mut().drain(..) {
            waker.wake();
        }
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        self.release();
    }
}

struct Done(Rc<Pending>);

impl Future for Done {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.done.get() {
            return Poll::Ready(());
        }
        self.0.wakers.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll(f: &mut Pin<Box<dyn Future<Output = ()>>>, waker: &Waker) -> bool {
        f.as_mut().poll(&mut Context::from_waker(waker)).is_ready()
    }

    #[test]
    fn waiters_are_woken_when_the_leader_ends_however_it_ends() {
        let lookups = Lookups::default();
        let key = lookups.key(0, b"token");
        assert_eq!(key, lookups.key(0, b"token"));
        assert_ne!(key, lookups.key(1, b"token"));
        assert!(lookups.waiting(key).is_none());
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        for fail in [false, true] {
            let lead = lookups.lead(key);
            assert_eq!(lookups.in_flight(), 1);
            let waits: Vec<Wait> = (0..3).map(|_| lookups.waiting(key).unwrap()).collect();
            let mut futures: Vec<Pin<Box<dyn Future<Output = ()>>>> =
                waits.iter().map(|w| Box::pin(w.done()) as _).collect();
            for f in &mut futures {
                assert!(!poll(f, &waker));
            }
            if fail {
                lead.failed();
            }
            let before = count.0.load(Ordering::SeqCst);
            drop(lead);
            assert_eq!(
                count.0.load(Ordering::SeqCst),
                before + 3,
                "every waiter woken"
            );
            for (f, w) in futures.iter_mut().zip(&waits) {
                assert!(poll(f, &waker));
                assert_eq!(w.failed(), fail);
            }
            assert_eq!(lookups.in_flight(), 0);
            assert!(lookups.waiting(key).is_none());
        }
    }

    #[test]
    fn an_early_release_ends_the_flight_once() {
        let lookups = Lookups::default();
        let key = lookups.key(0, b"k");
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let first = lookups.lead(key);
        let wait = lookups.waiting(key).unwrap();
        let mut done: Pin<Box<dyn Future<Output = ()>>> = Box::pin(wait.done());
        assert!(!poll(&mut done, &waker));
        first.release();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(poll(&mut done, &waker));
        assert!(lookups.waiting(key).is_none());
        // A new flight for the key is not ended by the old guard's drop.
        let second = lookups.lead(key);
        first.release();
        drop(first);
        assert!(lookups.waiting(key).is_some());
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "no second wake");
        drop(second);
        assert!(lookups.waiting(key).is_none());
    }
}
