//! Panic containment: a connection task that panics is dropped and counted,
//! and the worker goes on serving everyone else (monoio does not catch task
//! panics itself; an unwinding task would take the whole worker down).

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

pub struct CatchUnwind<F> {
    inner: Pin<Box<F>>,
}

impl<F: Future> CatchUnwind<F> {
    pub fn new(future: F) -> Self {
        CatchUnwind {
            inner: Box::pin(future),
        }
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.inner.as_mut();
        // AssertUnwindSafe: after a panic the future is dropped, never polled
        // again, and shard state is only touched through short RefCell
        // borrows that unwinding releases.
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_task_is_contained_and_the_runtime_goes_on() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let crashed = monoio::spawn(CatchUnwind::new(async {
                monoio::time::sleep(std::time::Duration::from_millis(1)).await;
                panic!("deliberate panic in a connection task");
            }));
            let healthy = monoio::spawn(CatchUnwind::new(async {
                monoio::time::sleep(std::time::Duration::from_millis(5)).await;
                7
            }));
            assert!(crashed.await.is_err());
            assert_eq!(healthy.await, Ok(7));
        });
    }
}
