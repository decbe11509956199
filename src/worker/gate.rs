//! [warm] A per-worker FIFO gate: at most `max` holders at once, the rest
//! waiting in arrival order (costing nothing), each able to give up (its
//! timeout, its client gone) without losing the turn for the next.
//!
//! Two uses. TLS handshakes: a handshake costs a core tens of
//! microseconds of signing (a millisecond for RSA-2048), and the worker
//! runs tasks cooperatively, so a thousand ClientHellos at once would put
//! established connections' requests behind all of them; each worker runs
//! at most `max_handshakes_in_flight`, and a handshake holds its slot only
//! while it has work. Upstream circuit breaking: requests to an upstream
//! beyond its `max_requests` share wait here, at most `max_pending` of
//! them, each for at most `queue_timeout`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// A cap on holders, with a FIFO queue of waiters.
#[derive(Default)]
pub struct Gate {
    in_flight: Cell<usize>,
    waiters: RefCell<VecDeque<Waiter>>,
}

struct Waiter {
    turn: Rc<Cell<bool>>,
    waker: Waker,
}

impl Gate {
    /// Waits for a slot (FIFO). The slot is freed when the returned guard
    /// drops.
    pub fn acquire(&self, max: usize) -> Acquire<'_> {
        Acquire {
            gate: self,
            max,
            turn: None,
            done: false,
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.get()
    }

    /// Waiters in the queue now.
    pub fn queued(&self) -> usize {
        self.waiters.borrow().len()
    }

    /// Hands the next waiter its turn.
    fn wake_next(&self) {
        if let Some(next) = self.waiters.borrow_mut().pop_front() {
            next.turn.set(true);
            next.waker.wake();
        }
    }
}

pub struct Acquire<'a> {
    gate: &'a Gate,
    max: usize,
    /// Set while queued; `true` inside once it is this waiter's turn.
    turn: Option<Rc<Cell<bool>>>,
    done: bool,
}

/// A place through the gate; dropping it lets the next waiter in.
pub struct Slot<'a> {
    gate: &'a Gate,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.gate.in_flight.set(self.gate.in_flight.get() - 1);
        self.gate.wake_next();
    }
}

impl<'a> Future for Acquire<'a> {
    type Output = (Slot<'a>, bool);

    /// Ready with the slot and whether it had to wait.
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let gate = self.gate;
        let my_turn = match &self.turn {
            // Queued: go only when woken in order.
            Some(turn) => turn.get(),
            // New: go only if nobody is queued ahead.
            None => gate.waiters.borrow().is_empty(),
        };
        if my_turn && gate.in_flight.get() < self.max {
            gate.in_flight.set(gate.in_flight.get() + 1);
            let waited = self.turn.is_some();
            self.done = true;
            self.turn = None;
            return Poll::Ready((Slot { gate }, waited));
        }
        let turn = self.turn.get_or_insert_with(|| Rc::new(Cell::new(false)));
        // Woken but the slot went to a newcomer between wake and poll
        // cannot happen (newcomers queue behind waiters), but a smaller
        // `max` after a reload can: wait for the next release.
        turn.set(false);
        let turn = turn.clone();
        let mut waiters = gate.waiters.borrow_mut();
        match waiters.iter_mut().find(|w| Rc::ptr_eq(&w.turn, &turn)) {
            Some(w) => w.waker = cx.waker().clone(),
            None => waiters.push_back(Waiter {
                turn,
                waker: cx.waker().clone(),
            }),
        }
        Poll::Pending
    }
}

impl Drop for Acquire<'_> {
    /// A waiter that gives up (it timed out, or its task ended)
    /// leaves the queue; if it had just been given its turn, it passes the
    /// turn on so the free slot is not lost.
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let Some(turn) = self.turn.take() else {
            return;
        };
        self.gate
            .waiters
            .borrow_mut()
            .retain(|w| !Rc::ptr_eq(&w.turn, &turn));
        if turn.get() && self.gate.in_flight.get() < self.max {
            self.gate.wake_next();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::Wake;

    use std::sync::atomic::{AtomicBool, Ordering};

    struct Flag(AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    impl Flag {
        fn get(&self) -> bool {
            self.0.load(Ordering::Relaxed)
        }
    }

    fn poll<F: Future + Unpin>(f: &mut F, flag: &Arc<Flag>) -> Poll<F::Output> {
        let waker = Waker::from(flag.clone());
        Pin::new(f).poll(&mut Context::from_waker(&waker))
    }

    #[test]
    fn slots_are_capped_and_handed_out_in_arrival_order() {
        let gate = Gate::default();
        let flags: Vec<_> = (0..4)
            .map(|_| Arc::new(Flag(AtomicBool::new(false))))
            .collect();
        let mut a = gate.acquire(2);
        let mut b = gate.acquire(2);
        let mut c = gate.acquire(2);
        let mut d = gate.acquire(2);
        let Poll::Ready((slot_a, false)) = poll(&mut a, &flags[0]) else {
            panic!()
        };
        let Poll::Ready((slot_b, false)) = poll(&mut b, &flags[1]) else {
            panic!()
        };
        assert!(poll(&mut c, &flags[2]).is_pending());
        assert!(poll(&mut d, &flags[3]).is_pending());
        assert_eq!(gate.in_flight(), 2);
        drop(slot_a);
        assert!(
            flags[2].get() && !flags[3].get(),
            "the first waiter is woken"
        );
        // A newcomer does not jump the queue.
        let mut e = gate.acquire(2);
        assert!(poll(&mut e, &flags[0]).is_pending());
        let Poll::Ready((slot_c, true)) = poll(&mut c, &flags[2]) else {
            panic!()
        };
        drop(slot_b);
        assert!(flags[3].get());
        let Poll::Ready((_slot_d, true)) = poll(&mut d, &flags[3]) else {
            panic!()
        };
        drop(slot_c);
        let Poll::Ready((_slot_e, true)) = poll(&mut e, &flags[0]) else {
            panic!()
        };
        assert_eq!(gate.in_flight(), 2);
    }

    #[test]
    fn a_waiter_that_gives_up_passes_its_turn_on() {
        let gate = Gate::default();
        let flags: Vec<_> = (0..3)
            .map(|_| Arc::new(Flag(AtomicBool::new(false))))
            .collect();
        let mut a = gate.acquire(1);
        let Poll::Ready((slot_a, _)) = poll(&mut a, &flags[0]) else {
            panic!()
        };
        let mut b = gate.acquire(1);
        let mut c = gate.acquire(1);
        assert!(poll(&mut b, &flags[1]).is_pending());
        assert!(poll(&mut c, &flags[2]).is_pending());
        drop(slot_a);
        assert!(flags[1].get());
        // b times out after being woken, before it ran.
        drop(b);
        assert!(flags[2].get(), "the turn moved on to c");
        let Poll::Ready((_slot, true)) = poll(&mut c, &flags[2]) else {
            panic!()
        };
        // A queued waiter that gives up simply leaves the queue.
        let mut d = gate.acquire(1);
        assert!(poll(&mut d, &flags[0]).is_pending());
        drop(d);
        assert!(gate.waiters.borrow().is_empty());
    }
}
