//! The producer's batching loop, independent of what a batch is written to.
//!
//! ```text
//!  send() ──► bounded queue ──► batcher task
//!                                 collect rows until `max_rows`, `linger` after the
//!                                 batch's first row, a flush, or the queue closing
//!                                 wait for one of `max_in_flight` slots (still topping
//!                                 the batch up meanwhile) and for the turn to send, then
//!                                 hand the batch to the sink on a task of its own
//!                                 ──► one INSERT ──► one ack per row
//! ```
//!
//! Batches are written in the order their rows were queued, also when several are in
//! flight: each sink holds the [`Turn`] until its statement is on the connection, and
//! turns are taken one after another in queue order. The server runs the statements of
//! one connection in the order they arrive, so rows of one key keep their order.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Mutex, OwnedMutexGuard, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// What the queue carries.
pub(crate) enum Command<R> {
    /// One row to write.
    Row(R),
    /// Write what is queued now and answer once every batch before this point is done.
    Flush(oneshot::Sender<()>),
}

/// The right to send the next statement; the sink drops it once its statement is handed
/// to the connection, and the next batch's sink cannot start sending before that.
pub(crate) type Turn = OwnedMutexGuard<()>;

/// How batches are cut.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_rows: usize,
    pub linger: Duration,
    pub max_in_flight: usize,
}

/// Runs until the queue closes and every batch is done. `sink` writes one batch and
/// answers its rows; it runs on a task of its own, holding one in-flight slot and, until
/// its statement is sent, the [`Turn`].
pub(crate) async fn run<R, S, F>(mut rx: mpsc::Receiver<Command<R>>, limits: Limits, sink: S)
where
    R: Send + 'static,
    S: Fn(Vec<R>, Turn) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let max_in_flight = limits.max_in_flight.max(1);
    let slots = Arc::new(Semaphore::new(max_in_flight));
    let max_rows = limits.max_rows.max(1);
    let turns = Arc::new(Mutex::new(()));
    let mut closed = false;
    while !closed {
        let mut batch = Vec::new();
        let mut flush = None;
        // The first row (or a flush with nothing queued before it).
        match rx.recv().await {
            None => break,
            Some(Command::Flush(done)) => {
                all_done(&slots, max_in_flight).await;
                let _ = done.send(());
                continue;
            }
            Some(Command::Row(r)) => batch.push(r),
        }
        // Fill until full, lingered, flushed or closed. What is queued already joins without
        // waiting; only then does the linger timer run (tokio's timer rounds up to the next
        // millisecond, so a zero linger must not touch it).
        let deadline = Instant::now() + limits.linger;
        while batch.len() < max_rows && flush.is_none() && !closed {
            let next = match rx.try_recv() {
                Ok(cmd) => Some(cmd),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) if limits.linger.is_zero() => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Err(_lingered) => break,
                        Ok(cmd) => cmd,
                    }
                }
            };
            match next {
                None => closed = true,
                Some(Command::Row(r)) => batch.push(r),
                Some(Command::Flush(done)) => flush = Some(done),
            }
        }
        // Wait for a slot; rows that arrive meanwhile still join this batch.
        let slot: OwnedSemaphorePermit = loop {
            if batch.len() >= max_rows || flush.is_some() || closed {
                break acquire(&slots).await;
            }
            tokio::select! {
                biased;
                slot = acquire(&slots) => break slot,
                cmd = rx.recv() => match cmd {
                    None => closed = true,
                    Some(Command::Row(r)) => batch.push(r),
                    Some(Command::Flush(done)) => flush = Some(done),
                },
            }
        };
        let turn = turns.clone().lock_owned().await;
        let write = sink(batch, turn);
        tokio::spawn(async move {
            write.await;
            drop(slot);
        });
        if let Some(done) = flush {
            all_done(&slots, max_in_flight).await;
            let _ = done.send(());
        }
    }
    all_done(&slots, max_in_flight).await;
}

async fn acquire(slots: &Arc<Semaphore>) -> OwnedSemaphorePermit {
    // The semaphore lives as long as this loop and is never closed.
    #[allow(clippy::expect_used)]
    slots
        .clone()
        .acquire_owned()
        .await
        .expect("semaphore is never closed")
}

/// Waits until no batch is in flight: every slot free at once.
async fn all_done(slots: &Semaphore, max_in_flight: usize) {
    // `max_in_flight` fits in u32: the builder caps it.
    let n = u32::try_from(max_in_flight).unwrap_or(u32::MAX);
    if let Ok(all) = slots.acquire_many(n).await {
        drop(all);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use super::*;

    /// A sink that records batch sizes and the most batches ever in flight together.
    #[derive(Default)]
    struct Recorder {
        sizes: Mutex<Vec<usize>>,
        sent: Mutex<Vec<u32>>,
        in_flight: AtomicUsize,
        most_in_flight: AtomicUsize,
    }

    fn limits(max_rows: usize, max_in_flight: usize) -> Limits {
        Limits {
            max_rows,
            linger: Duration::from_secs(3600),
            max_in_flight,
        }
    }

    /// Records each batch's size, and its rows in the order batches take their turn.
    fn sink(
        rec: &Arc<Recorder>,
    ) -> impl Fn(Vec<u32>, Turn) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        let rec = rec.clone();
        move |batch: Vec<u32>, turn: Turn| {
            let rec = rec.clone();
            Box::pin(async move {
                let now = rec.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                rec.most_in_flight.fetch_max(now, Ordering::SeqCst);
                // Tasks start in any order; the turn puts their "sends" in queue order.
                tokio::task::yield_now().await;
                rec.sent.lock().unwrap().extend(&batch);
                drop(turn);
                tokio::task::yield_now().await;
                rec.sizes.lock().unwrap().push(batch.len());
                rec.in_flight.fetch_sub(1, Ordering::SeqCst);
            })
        }
    }

    #[tokio::test]
    async fn full_batches_then_the_rest_on_close() {
        let rec = Arc::new(Recorder::default());
        let (tx, rx) = mpsc::channel(2000);
        for i in 0..1200 {
            tx.send(Command::Row(i)).await.unwrap();
        }
        drop(tx);
        // A linger of an hour: only fullness and the queue closing cut batches.
        run(rx, limits(500, 1), sink(&rec)).await;
        assert_eq!(*rec.sizes.lock().unwrap(), [500, 500, 200]);
        assert_eq!(rec.most_in_flight.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn flush_cuts_the_batch_and_answers_after_it_is_written() {
        let rec = Arc::new(Recorder::default());
        let (tx, rx) = mpsc::channel(100);
        let task = tokio::spawn(run(rx, limits(500, 4), sink(&rec)));
        for i in 0..3 {
            tx.send(Command::Row(i)).await.unwrap();
        }
        let (done, flushed) = oneshot::channel();
        tx.send(Command::Flush(done)).await.unwrap();
        flushed.await.unwrap();
        assert_eq!(*rec.sizes.lock().unwrap(), [3]);
        // A flush with nothing queued answers too.
        let (done, flushed) = oneshot::channel();
        tx.send(Command::Flush(done)).await.unwrap();
        flushed.await.unwrap();
        drop(tx);
        task.await.unwrap();
        assert_eq!(*rec.sizes.lock().unwrap(), [3]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_more_than_max_in_flight() {
        let rec = Arc::new(Recorder::default());
        let (tx, rx) = mpsc::channel(10_000);
        for i in 0..10_000 {
            tx.send(Command::Row(i)).await.unwrap();
        }
        drop(tx);
        run(rx, limits(10, 3), sink(&rec)).await;
        let sizes = rec.sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 10_000);
        assert!(sizes.iter().all(|&s| s <= 10), "{sizes:?}");
        let most = rec.most_in_flight.load(Ordering::SeqCst);
        assert!((1..=3).contains(&most), "{most}");
        // Sent in the order queued, although batches ran on tasks of their own.
        assert!(rec.sent.lock().unwrap().iter().copied().eq(0..10_000));
    }

    #[tokio::test]
    async fn linger_sends_a_partial_batch() {
        let rec = Arc::new(Recorder::default());
        let (tx, rx) = mpsc::channel(100);
        let l = Limits {
            max_rows: 500,
            linger: Duration::from_millis(1),
            max_in_flight: 1,
        };
        let task = tokio::spawn(run(rx, l, sink(&rec)));
        tx.send(Command::Row(1)).await.unwrap();
        // The queue stays open: only the linger can cut this batch.
        for _ in 0..1000 {
            if !rec.sizes.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(*rec.sizes.lock().unwrap(), [1]);
        drop(tx);
        task.await.unwrap();
    }
}
