//! [`Running`]: the commands a connection is executing, driven by the connection's own task
//! between (and while waiting for) PDUs instead of one spawned task per command. A command
//! that completes at once (a RAM or cached device) costs no task and no cross-thread wake-up;
//! one that waits (file I/O, a remote replica) is polled again when its waker fires.
//!
//! Commands are never cancelled half-way: when the connection ends, [`Running::drain`] runs
//! the rest to completion (a mirror write dropped between replicas would leave them
//! different without a dirty mark).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures::stream::{FuturesUnordered, StreamExt};

type Command = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A set of executing commands; clones share the set.
#[derive(Clone, Default)]
pub(crate) struct Running(Arc<Mutex<FuturesUnordered<Command>>>);

impl Running {
    /// Adds a command; it is first polled by the next [`Running::drive`] or
    /// [`Running::drain`] poll.
    pub(crate) fn push(&self, cmd: impl Future<Output = ()> + Send + 'static) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::pin(cmd));
    }

    /// Polls every command that can make progress. `Ready` when none is left.
    fn poll_all(&self, cx: &mut Context<'_>) -> Poll<()> {
        // The lock is only held inside this poll (never across an await): pushes from the
        // same task happen between polls.
        let mut set = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            match set.poll_next_unpin(cx) {
                Poll::Ready(Some(())) => continue,
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Drives the commands forever (never completes): select it against the reader.
    pub(crate) async fn drive(&self) {
        std::future::poll_fn(|cx| {
            let _ = self.poll_all(cx);
            Poll::<()>::Pending
        })
        .await
    }

    /// Runs every command to completion.
    pub(crate) async fn drain(&self) {
        std::future::poll_fn(|cx| self.poll_all(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn drives_commands_beside_another_future_and_drains_the_rest() {
        let running = Running::default();
        let done = Arc::new(AtomicUsize::new(0));
        for i in 0..10u64 {
            let done = done.clone();
            running.push(async move {
                if i % 2 == 1 {
                    tokio::time::sleep(Duration::from_millis(20 + i)).await;
                }
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        // The immediate ones finish while "the reader" waits.
        let reader = tokio::time::sleep(Duration::from_millis(5));
        tokio::select! {
            _ = reader => {}
            _ = running.drive() => unreachable!("drive never completes"),
        }
        assert_eq!(done.load(Ordering::SeqCst), 5);
        // A command pushed later is polled by the next drive/drain.
        let d = done.clone();
        running.push(async move {
            d.fetch_add(1, Ordering::SeqCst);
        });
        running.drain().await;
        assert_eq!(done.load(Ordering::SeqCst), 11);
        running.drain().await; // empty: immediate
    }
}
