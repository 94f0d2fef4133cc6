//! An in-memory SQS queue for tests, as Quickwit's `queue_sources/memory_queue.rs`: the
//! listener, its inbox and the engine with notifications run on a paused tokio clock,
//! without moto.
//!
//! # What it models of SQS
//! - `receive(max, wait, visibility)` returns up to `max` (at most 10) visible messages,
//!   oldest first, and hides each for `visibility`; with none visible it long-polls: it
//!   waits until one is sent, one becomes visible again, or `wait` (at most 20 s) runs out.
//!   All times are `tokio::time`, so a paused clock drives them.
//! - Every receive gives a message a new receipt; only the latest one works (SQS asks for
//!   the most recent receipt), an older one fails its entry with `ReceiptHandleIsInvalid`.
//! - A message whose visibility runs out is received again (redelivery), with a new
//!   receipt and its receive count raised.
//! - `delete` removes a message for good; deleting an already deleted message succeeds,
//!   as in SQS. Deleting with a stale receipt of a message still queued fails the entry
//!   (SQS answers success but may keep the message: stricter here, so a test sees it). `change_visibility` hides a message in flight for the given time from now;
//!   zero makes it visible at once.
//! - Injected failures: [`MemoryQueue::fail_next`] makes the next calls of an operation fail
//!   as a whole, as a lost connection or a denied request would.
//!
//! What it does not model: FIFO queues, message attributes, delays on send, the retention
//! period and a dead-letter queue's redrive.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use currents_heap::notifications::sqs::{Message, Queue, QueueError, QueueFuture};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The operations of [`Queue`], to inject failures into and to count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Receive,
    Delete,
    ChangeVisibility,
}

impl Op {
    fn operation(self) -> &'static str {
        match self {
            Op::Receive => "receive from",
            Op::Delete => "delete messages from",
            Op::ChangeVisibility => "change the visibility of messages in",
        }
    }
}

/// A message as the queue keeps it.
#[derive(Debug, Clone)]
struct Stored {
    id: String,
    body: String,
    /// Hidden until then; at or before now, it is visible.
    visible_at: Instant,
    /// The latest receipt, the only one that works; `None` before the first receive.
    receipt: Option<String>,
    /// Receipts it had before the latest.
    past_receipts: Vec<String>,
    receives: u32,
}

#[derive(Debug, Default)]
struct State {
    /// By send order, which is receive order.
    messages: BTreeMap<u64, Stored>,
    next_seq: u64,
    next_receipt: u64,
    /// Latest receipt → the message's send order.
    by_receipt: HashMap<String, u64>,
    /// Message ids deleted, in order.
    deleted: Vec<String>,
    /// Every receipt of a deleted message.
    spent: HashSet<String>,
    /// Calls of each operation that are still to fail, and with which error code.
    failing: HashMap<Op, (usize, String)>,
    calls: HashMap<Op, u64>,
}

/// One message as a test sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peek {
    pub id: String,
    pub body: String,
    /// Times received so far.
    pub receives: u32,
    /// When it is visible again; `None` if it is visible now.
    pub hidden_until: Option<Instant>,
}

/// An in-memory queue; share it as `Arc<MemoryQueue>` between the code under test (as
/// `Arc<dyn Queue>`) and the test.
#[derive(Debug)]
pub struct MemoryQueue {
    name: String,
    state: Mutex<State>,
    /// Woken when a message is sent or made visible at once, for long polls in progress.
    changed: Notify,
}

impl Default for MemoryQueue {
    fn default() -> Self {
        MemoryQueue::new("memory-queue")
    }
}

impl MemoryQueue {
    pub fn new(name: &str) -> Self {
        MemoryQueue {
            name: name.to_string(),
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends a message, visible at once; its id (`m1`, `m2`, … in send order).
    pub fn send(&self, body: impl Into<String>) -> String {
        let id = {
            let mut state = self.state();
            state.next_seq += 1;
            let seq = state.next_seq;
            let id = format!("m{seq}");
            state.messages.insert(
                seq,
                Stored {
                    id: id.clone(),
                    body: body.into(),
                    visible_at: Instant::now(),
                    receipt: None,
                    past_receipts: Vec::new(),
                    receives: 0,
                },
            );
            id
        };
        self.changed.notify_waiters();
        id
    }

    /// Makes the next `times` calls of `op` fail as a whole with the service error `code`
    /// (e.g. `"ServiceUnavailable"`, or `"AWS.SimpleQueueService.NonExistentQueue"`).
    pub fn fail_next(&self, op: Op, times: usize, code: &str) {
        self.state().failing.insert(op, (times, code.to_string()));
    }

    /// Calls of `op` so far, failed ones included.
    pub fn calls(&self, op: Op) -> u64 {
        self.state().calls.get(&op).copied().unwrap_or(0)
    }

    /// Messages not deleted, visible or in flight.
    pub fn len(&self) -> usize {
        self.state().messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Messages visible now.
    pub fn visible(&self) -> usize {
        let now = Instant::now();
        self.state()
            .messages
            .values()
            .filter(|m| m.visible_at <= now)
            .count()
    }

    /// Messages hidden now (received and neither deleted nor visible again).
    pub fn in_flight(&self) -> usize {
        self.len() - self.visible()
    }

    /// Ids of the messages deleted so far, in order.
    pub fn deleted(&self) -> Vec<String> {
        self.state().deleted.clone()
    }

    /// A message not deleted, by id.
    pub fn peek(&self, id: &str) -> Option<Peek> {
        let now = Instant::now();
        self.state()
            .messages
            .values()
            .find(|m| m.id == id)
            .map(|m| Peek {
                id: m.id.clone(),
                body: m.body.clone(),
                receives: m.receives,
                hidden_until: (m.visible_at > now).then_some(m.visible_at),
            })
    }

    /// Counts the call; its injected failure, if one is due.
    fn call(&self, op: Op) -> Result<(), QueueError> {
        let mut state = self.state();
        *state.calls.entry(op).or_default() += 1;
        let Some((times, code)) = state.failing.get_mut(&op) else {
            return Ok(());
        };
        let code = code.clone();
        *times -= 1;
        if *times == 0 {
            state.failing.remove(&op);
        }
        Err(QueueError {
            operation: op.operation(),
            queue: self.name.clone(),
            reason: format!("injected failure ({code})"),
            code: Some(code),
            status: None,
        })
    }

    /// Takes up to `max` visible messages, hiding each for `visibility`; else when the next
    /// hidden one becomes visible.
    fn take(&self, max: usize, visibility: Duration) -> Result<Vec<Message>, Option<Instant>> {
        let now = Instant::now();
        let mut state = self.state();
        let visible: Vec<u64> = state
            .messages
            .iter()
            .filter(|(_, m)| m.visible_at <= now)
            .map(|(seq, _)| *seq)
            .take(max)
            .collect();
        if visible.is_empty() {
            return Err(state.messages.values().map(|m| m.visible_at).min());
        }
        let mut taken = Vec::new();
        for seq in visible {
            state.next_receipt += 1;
            let receipt = format!("receipt-{}", state.next_receipt);
            let message = state.messages.get_mut(&seq).expect("listed above");
            let old = message.receipt.replace(receipt.clone());
            message.visible_at = now + visibility;
            message.receives += 1;
            taken.push(Message {
                id: message.id.clone(),
                receipt: receipt.clone(),
                body: message.body.clone(),
            });
            if let Some(old) = old {
                message.past_receipts.push(old.clone());
                state.by_receipt.remove(&old);
            }
            state.by_receipt.insert(receipt, seq);
        }
        Ok(taken)
    }

    /// The message a receipt names, if it is the message's latest; the reason otherwise.
    fn seq_of(state: &State, receipt: &str) -> Result<u64, String> {
        state
            .by_receipt
            .get(receipt)
            .copied()
            .ok_or_else(|| "ReceiptHandleIsInvalid: not the latest receipt of a message".into())
    }
}

impl Queue for MemoryQueue {
    fn describe(&self) -> String {
        format!("memory://{}", self.name)
    }

    fn receive(
        &self,
        max: u8,
        wait: Duration,
        visibility: Duration,
    ) -> QueueFuture<'_, Vec<Message>> {
        Box::pin(async move {
            self.call(Op::Receive)?;
            let max = usize::from(max.clamp(1, 10));
            let deadline = Instant::now() + wait.min(Duration::from_secs(20));
            loop {
                // Registered before looking, so a send between the look and the wait wakes it.
                let changed = self.changed.notified();
                let next_visible = match self.take(max, visibility) {
                    Ok(taken) => return Ok(taken),
                    Err(next_visible) => next_visible,
                };
                if Instant::now() >= deadline {
                    return Ok(Vec::new());
                }
                let wake = next_visible.map_or(deadline, |at| at.min(deadline));
                tokio::select! {
                    _ = changed => {}
                    _ = tokio::time::sleep_until(wake) => {}
                }
            }
        })
    }

    fn delete<'a>(&'a self, receipts: &'a [String]) -> QueueFuture<'a, Vec<(usize, String)>> {
        Box::pin(async move {
            self.call(Op::Delete)?;
            let mut state = self.state();
            let mut failed = Vec::new();
            for (index, receipt) in receipts.iter().enumerate() {
                // A receipt of a message deleted already: SQS answers success.
                if state.spent.contains(receipt) {
                    continue;
                }
                match Self::seq_of(&state, receipt) {
                    Ok(seq) => {
                        let message = state.messages.remove(&seq).expect("indexed");
                        state.by_receipt.remove(receipt);
                        state.spent.extend(message.past_receipts);
                        state.spent.insert(receipt.clone());
                        state.deleted.push(message.id);
                    }
                    Err(reason) => failed.push((index, reason)),
                }
            }
            Ok(failed)
        })
    }

    fn change_visibility<'a>(
        &'a self,
        receipts: &'a [String],
        visibility: Duration,
    ) -> QueueFuture<'a, Vec<(usize, String)>> {
        Box::pin(async move {
            self.call(Op::ChangeVisibility)?;
            let now = Instant::now();
            let mut failed = Vec::new();
            {
                let mut state = self.state();
                for (index, receipt) in receipts.iter().enumerate() {
                    match Self::seq_of(&state, receipt) {
                        Ok(seq) => {
                            state.messages.get_mut(&seq).expect("indexed").visible_at =
                                now + visibility;
                        }
                        Err(reason) => failed.push((index, reason)),
                    }
                }
            }
            if visibility.is_zero() {
                self.changed.notify_waiters();
            }
            Ok(failed)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn a_receive_hides_messages_until_their_visibility_runs_out() {
        let queue = MemoryQueue::default();
        let id = queue.send("one");
        let first = queue.receive(10, SECOND, 30 * SECOND).await.unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(
            (first[0].id.as_str(), first[0].body.as_str()),
            (id.as_str(), "one")
        );
        assert_eq!((queue.visible(), queue.in_flight()), (0, 1));
        // A long poll meanwhile waits its whole time and gets nothing.
        let started = Instant::now();
        assert!(
            queue
                .receive(10, 20 * SECOND, SECOND)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(started.elapsed(), 20 * SECOND);
        // Redelivered once the 30 s have passed, with a new receipt; the old one is stale.
        let again = queue.receive(10, 20 * SECOND, 30 * SECOND).await.unwrap();
        assert_eq!(started.elapsed(), 30 * SECOND, "woken as it became visible");
        assert_eq!(again[0].id, id);
        assert_ne!(again[0].receipt, first[0].receipt);
        assert_eq!(queue.peek(&id).unwrap().receives, 2);
        let failed = queue.delete(&[first[0].receipt.clone()]).await.unwrap();
        assert_eq!(failed.len(), 1, "a stale receipt does not delete");
        assert!(
            queue
                .delete(&[again[0].receipt.clone()])
                .await
                .unwrap()
                .is_empty()
        );
        assert!(queue.is_empty());
        assert_eq!(queue.deleted(), vec![id]);
        // Deleting it again succeeds, with either receipt.
        let receipts = [first[0].receipt.clone(), again[0].receipt.clone()];
        assert!(queue.delete(&receipts).await.unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_poll_wakes_for_a_send_and_for_a_message_given_back() {
        let queue = std::sync::Arc::new(MemoryQueue::default());
        let sender = queue.clone();
        let started = Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(3 * SECOND).await;
            sender.send("late");
        });
        let got = queue.receive(10, 20 * SECOND, 60 * SECOND).await.unwrap();
        assert_eq!((got.len(), started.elapsed()), (1, 3 * SECOND));
        let giver = queue.clone();
        let receipt = got[0].receipt.clone();
        tokio::spawn(async move {
            tokio::time::sleep(2 * SECOND).await;
            giver
                .change_visibility(&[receipt], Duration::ZERO)
                .await
                .unwrap();
        });
        let again = queue.receive(10, 20 * SECOND, 60 * SECOND).await.unwrap();
        assert_eq!((again.len(), started.elapsed()), (1, 5 * SECOND));
    }

    #[tokio::test(start_paused = true)]
    async fn receives_take_at_most_max_oldest_first_and_visibility_can_be_extended() {
        let queue = MemoryQueue::default();
        for n in 0..12 {
            queue.send(format!("{n}"));
        }
        let first = queue.receive(10, SECOND, 10 * SECOND).await.unwrap();
        let bodies: Vec<&str> = first.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(bodies, ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]);
        assert_eq!(
            queue.receive(10, SECOND, 10 * SECOND).await.unwrap().len(),
            2
        );
        // Extend the first at 5 s by 10 s more: still hidden at 12 s, visible at 15 s.
        tokio::time::sleep(5 * SECOND).await;
        let receipts = [first[0].receipt.clone()];
        assert!(
            queue
                .change_visibility(&receipts, 10 * SECOND)
                .await
                .unwrap()
                .is_empty()
        );
        tokio::time::sleep(7 * SECOND).await;
        assert_eq!(queue.visible(), 11);
        tokio::time::sleep(3 * SECOND).await;
        assert_eq!(queue.visible(), 12);
    }

    #[tokio::test(start_paused = true)]
    async fn injected_failures_fail_the_next_calls_then_stop() {
        let queue = MemoryQueue::new("q");
        queue.send("x");
        queue.fail_next(Op::Receive, 2, "ServiceUnavailable");
        for _ in 0..2 {
            let e = queue.receive(10, SECOND, SECOND).await.unwrap_err();
            assert_eq!(e.code.as_deref(), Some("ServiceUnavailable"));
            assert!(e.to_string().contains("receive from q"), "{e}");
        }
        let got = queue.receive(10, SECOND, SECOND).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(queue.calls(Op::Receive), 3);
        queue.fail_next(Op::Delete, 1, "AccessDenied");
        assert!(queue.delete(&[got[0].receipt.clone()]).await.is_err());
        assert_eq!(queue.len(), 1, "a failed delete deletes nothing");
    }
}
