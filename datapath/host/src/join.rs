//! A small "run these futures concurrently, wait for all" helper, so that a large I/O split
//! into several commands keeps them all in flight without spawning tasks.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::Poll;

use crate::error::HostError;

/// Polls every future until all have finished; returns their outputs in order, or the first
/// error (by position) once all have finished.
pub(crate) async fn join_all<T, F>(futs: Vec<F>) -> Result<Vec<T>, HostError>
where
    F: Future<Output = Result<T, HostError>>,
{
    let mut futs: Vec<Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut results: Vec<Option<Result<T, HostError>>> = futs.iter().map(|_| None).collect();
    poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in futs.iter_mut().zip(results.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(r) => *slot = Some(r),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    results.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn runs_concurrently_and_keeps_order() {
        let start = tokio::time::Instant::now();
        let futs: Vec<_> = (0..5u64)
            .map(|i| async move {
                tokio::time::sleep(Duration::from_millis(100 - i * 10)).await;
                Ok::<u64, HostError>(i)
            })
            .collect();
        assert_eq!(join_all(futs).await.unwrap(), vec![0, 1, 2, 3, 4]);
        assert!(start.elapsed() < Duration::from_millis(300));
    }

    #[tokio::test]
    async fn waits_for_all_then_reports_the_first_error() {
        let finished = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let futs: Vec<_> = (0..3u64)
            .map(|i| {
                let finished = finished.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(10 * (3 - i))).await;
                    finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if i == 1 {
                        Err(HostError::Closed)
                    } else {
                        Ok(i)
                    }
                }
            })
            .collect();
        assert!(matches!(join_all(futs).await, Err(HostError::Closed)));
        assert_eq!(finished.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert!(
            join_all(Vec::<std::future::Ready<Result<u8, HostError>>>::new())
                .await
                .unwrap()
                .is_empty()
        );
    }
}
