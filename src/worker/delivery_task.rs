//! The delivery task: [`Delivery`] on its own tokio task, fed by a bounded channel.
//!
//! How delivery ended is never lost. When it stops on its own (a fatal answer from Heap), it
//! says so through [`DeliveryTask::stopped`] and keeps its result in the task; [`finish`]
//! always reads that result, even when it has to abort the task at a shutdown deadline (an
//! abort does not touch a task that has already returned).
//!
//! [`finish`]: DeliveryTask::finish

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::heap::delivery::{Delivery, DeliveryError, Submission};

/// How delivery ended. (What it did is in its metrics.)
#[derive(Debug)]
pub struct DeliveryEnd {
    /// `Err`: delivery stopped itself; the message says what to fix.
    pub result: Result<(), String>,
    /// It was aborted at a deadline with events still unresolved.
    pub abandoned: bool,
}

impl Default for DeliveryEnd {
    /// A dry run's end: nothing sent, nothing wrong.
    fn default() -> Self {
        DeliveryEnd {
            result: Ok(()),
            abandoned: false,
        }
    }
}

pub struct DeliveryTask {
    handle: JoinHandle<Result<(), DeliveryError>>,
    stopped: CancellationToken,
}

impl DeliveryTask {
    /// Spawns delivery; returns the task and the sender for its input. Delivery ends when
    /// every sender is dropped and everything received has an outcome, or on a fatal answer.
    pub fn spawn(delivery: Delivery, capacity: usize) -> (Self, mpsc::Sender<Submission>) {
        let (task, tx, _) = Self::spawn_lanes(delivery, capacity, false);
        (task, tx)
    }

    /// [`DeliveryTask::spawn`] with a second input, for the backfill lane, if `backfill`.
    pub fn spawn_lanes(
        delivery: Delivery,
        capacity: usize,
        backfill: bool,
    ) -> (
        Self,
        mpsc::Sender<Submission>,
        Option<mpsc::Sender<Submission>>,
    ) {
        let (tx, rx) = mpsc::channel(capacity);
        let (backfill_tx, backfill_rx) = match backfill {
            true => {
                let (tx, rx) = mpsc::channel(capacity);
                (Some(tx), Some(rx))
            }
            false => (None, None),
        };
        let stopped = CancellationToken::new();
        let signal = stopped.clone();
        let handle = tokio::spawn(async move {
            let outcome = delivery.run_lanes(rx, backfill_rx).await;
            signal.cancel();
            outcome
        });
        (DeliveryTask { handle, stopped }, tx, backfill_tx)
    }

    /// Resolves once delivery has ended on its own (its input is no longer read).
    pub fn stopped(&self) -> WaitForCancellationFuture<'_> {
        self.stopped.cancelled()
    }

    /// The token behind [`DeliveryTask::stopped`], for callers that outlive a borrow.
    pub fn stopped_token(&self) -> CancellationToken {
        self.stopped.clone()
    }

    /// Waits for delivery to end. The caller must have dropped every sender, or delivery
    /// waits for more input. At `deadline`, or when `abandon` fires, the task is aborted.
    pub async fn finish(
        mut self,
        deadline: Option<Instant>,
        abandon: &CancellationToken,
    ) -> DeliveryEnd {
        let at_deadline = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        let joined = tokio::select! {
            biased;
            joined = &mut self.handle => joined,
            _ = abandon.cancelled() => {
                self.handle.abort();
                self.handle.await
            }
            _ = at_deadline => {
                self.handle.abort();
                self.handle.await
            }
        };
        match joined {
            Ok(result) => DeliveryEnd {
                result: result.map_err(|e| e.to_string()),
                abandoned: false,
            },
            Err(e) if e.is_cancelled() => DeliveryEnd {
                abandoned: true,
                ..DeliveryEnd::default()
            },
            Err(e) => DeliveryEnd {
                result: Err(format!("the delivery task failed: {e}")),
                ..DeliveryEnd::default()
            },
        }
    }
}
