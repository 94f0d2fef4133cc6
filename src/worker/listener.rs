//! Event-driven discovery: S3 notifications received from an SQS queue become work.
//!
//! # Protocol
//! 1. Receive with long polling (up to 10 messages, waiting up to 10 s), hiding each message
//!    for `visibility`. Receiving pauses while `max_held` messages are held, so a slow Heap
//!    does not hide the whole queue from other replicas.
//! 2. Each message is read ([`crate::notifications::parse_body`]): S3 event notifications
//!    and S3 events from EventBridge, either wrapped by SNS or not. Test events, records that
//!    are not object creations, other buckets, keys outside the source prefix and keys that
//!    are not `.avro` are dropped, and so is a body that cannot be read (counted and warned):
//!    the listing reconciliation finds any object such a message stood for. A record that
//!    cannot be read beside records that can is warned and counted once per message, and
//!    the others are queued. A message received again while held only renews its receipt.
//! 3. Each remaining object is checked against the ledger (one listing of its own ledger
//!    prefix, so another replica's record counts) and, unless recorded at that version, sent
//!    on to the engine. The message is held ([`super::inbox`]) until every object it named has
//!    ended.
//! 4. Heartbeat: every `visibility / 3`, every held message is hidden for `visibility` again,
//!    so an object that takes longer than the queue's timeout is never received twice.
//! 5. As objects end: recorded → the message is deleted; not recorded → it is made visible
//!    again after `retry_after` (so a lasting fault is not retried in a hot loop).
//! 6. When the engine is done (it drops its side), the receive in flight is let finish (at
//!    most 10 s: cut on this side, it would still hide what it takes on the server), and
//!    every message held or taken is made visible at once, for another replica or the next
//!    start.
//!
//! A failed queue call is logged and counted; receiving tries again after a pause, and a lost
//! heartbeat or delete only means a message comes back, which the ledger check absorbs.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::inbox::{Action, Inbox, KeyEnd};
use super::scheduler::Work;
use crate::currents::key::CurrentsKey;
use crate::ledger::Ledger;
use crate::notifications::sqs::{Message, Queue};
use crate::notifications::{Body, Created, parse_body};
use crate::store::ObjectMeta;
use crate::telemetry::Metrics;
use crate::telemetry::events::{
    NotificationDropped, NotificationObjectsQueued, NotificationRecordUnreadable,
    NotificationsReceived, QueueFailed,
};

/// How the listener works; the command line documents each.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    /// The source bucket; notifications for other buckets are dropped.
    pub bucket: String,
    /// The source prefix in the bucket, empty or ending in `/`.
    pub prefix: String,
    /// How long a received message stays hidden; renewed every third of it while its objects
    /// are in flight.
    pub visibility: Duration,
    /// How long a message whose object was not recorded stays hidden before it comes back.
    pub retry_after: Duration,
    /// Messages held at once; receiving pauses beyond.
    pub max_held: usize,
}

/// The engine's side of the listener.
pub struct Listener {
    /// Objects to process, each at most once per message.
    pub work: mpsc::Receiver<Work>,
    ended: mpsc::UnboundedSender<(String, KeyEnd)>,
    task: JoinHandle<()>,
}

impl Listener {
    /// Starts receiving. `stop` ends receiving (shutdown); held messages are kept until the
    /// engine reports their objects or drops the listener's side with [`Listener::finish`].
    pub fn spawn(
        queue: Arc<dyn Queue>,
        ledger: Arc<Ledger>,
        settings: ListenerSettings,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> Listener {
        let (work_tx, work) = mpsc::channel(settings.max_held.max(1));
        let (ended, ended_rx) = mpsc::unbounded_channel();
        let actor = Actor {
            queue,
            ledger,
            settings,
            inbox: Inbox::default(),
            work: work_tx,
            pending: Vec::new(),
            metrics,
        };
        let task = tokio::spawn(actor.run(ended_rx, stop));
        Listener { work, ended, task }
    }

    /// An object ended; its messages are deleted or given back.
    pub fn ended(&self, key: &str, end: KeyEnd) {
        // The actor outlives the engine's loop; a closed channel only means it already
        // released everything.
        let _ = self.ended.send((key.to_string(), end));
    }

    /// Releases what is still held and waits for the queue calls to finish.
    pub async fn finish(self) {
        let Listener { work, ended, task } = self;
        drop(ended);
        drop(work);
        if let Err(e) = task.await
            && e.is_panic()
        {
            tracing::error!("the SQS listener panicked: {e}");
        }
    }
}

struct Actor {
    queue: Arc<dyn Queue>,
    ledger: Arc<Ledger>,
    settings: ListenerSettings,
    inbox: Inbox,
    work: mpsc::Sender<Work>,
    /// Objects accepted from messages, waiting for room in the engine's channel.
    pending: Vec<Work>,
    metrics: Arc<Metrics>,
}

/// Long-poll wait: an idle queue costs 6 receives a minute, and a stop waits at most this
/// for the receive in flight (see the end of `Actor::run`).
const WAIT: Duration = Duration::from_secs(10);
/// Pause after a failed receive.
const RECEIVE_RETRY: Duration = Duration::from_secs(5);

type Receiving = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<Vec<Message>, crate::notifications::sqs::QueueError>,
            > + Send,
    >,
>;

impl Actor {
    async fn run(
        mut self,
        mut ended: mpsc::UnboundedReceiver<(String, KeyEnd)>,
        stop: CancellationToken,
    ) {
        let beat = (self.settings.visibility / 3).max(Duration::from_secs(1));
        let mut next_beat = Instant::now() + beat;
        let mut receiving: Option<Receiving> = None;
        let mut receive_after = Instant::now();
        let mut ended_open = true;
        loop {
            let may_receive = !stop.is_cancelled()
                && ended_open
                && self.inbox.len() < self.settings.max_held
                && self.pending.is_empty();
            if may_receive && receiving.is_none() && Instant::now() >= receive_after {
                let queue = self.queue.clone();
                let visibility = self.settings.visibility;
                receiving = Some(Box::pin(async move {
                    queue.receive(10, WAIT, visibility).await
                }));
            }
            if !ended_open {
                break;
            }
            let work = self.work.clone();
            tokio::select! {
                received = async { receiving.as_mut().expect("checked").await }, if receiving.is_some() => {
                    receiving = None;
                    match received {
                        Ok(messages) => {
                            NotificationsReceived { messages: messages.len() as u64 }.emit(&self.metrics);
                            for message in messages {
                                self.accept(message).await;
                            }
                        }
                        Err(e) => {
                            QueueFailed { error: &e.to_string(), retry_in: RECEIVE_RETRY }.emit(&self.metrics);
                            receive_after = Instant::now() + RECEIVE_RETRY;
                        }
                    }
                }
                permit = work.reserve(), if !self.pending.is_empty() => {
                    match permit {
                        Ok(permit) => permit.send(self.pending.remove(0)),
                        // The engine is gone: what is held is released below.
                        Err(_) => self.pending.clear(),
                    }
                }
                message = ended.recv() => match message {
                    Some((key, end)) => {
                        let mut actions = self.inbox.ended(&key, &end);
                        while let Ok((key, end)) = ended.try_recv() {
                            actions.extend(self.inbox.ended(&key, &end));
                        }
                        self.apply(actions).await;
                    }
                    None => ended_open = false,
                },
                _ = sleep_until(next_beat) => {
                    next_beat = Instant::now() + beat;
                    self.heartbeat().await;
                }
                _ = sleep_until(receive_after), if may_receive && receiving.is_none() => {}
                _ = stop.cancelled(), if may_receive => {}
            }
        }
        // A receive still open on the server would take the messages released below and
        // hide them again for a whole visibility timeout, even if this side dropped it: let
        // it end first (at most `WAIT`) and give back what it took too.
        let late = match receiving {
            Some(receive) => receive.await.unwrap_or_default(),
            None => Vec::new(),
        };
        let mut released = self.inbox.release_all();
        released.extend(late.into_iter().map(|message| Action::Release {
            receipt: message.receipt,
            after: Duration::ZERO,
        }));
        if !released.is_empty() {
            tracing::info!(
                messages = released.len(),
                "giving unfinished notifications back to the queue"
            );
        }
        self.apply(released).await;
    }

    /// Reads one message: drops it, or holds it for the objects it names.
    async fn accept(&mut self, message: Message) {
        let body = match parse_body(&message.body) {
            Ok(body) => body,
            Err(e) => {
                NotificationDropped::Unreadable {
                    message: &message.id,
                    error: &e.to_string(),
                }
                .emit(&self.metrics);
                self.apply(vec![Action::Delete {
                    receipt: message.receipt,
                }])
                .await;
                return;
            }
        };
        // Held already: its objects are in flight, the new receipt is all that changes.
        if self.inbox.renew(&message.id, &message.receipt) {
            return;
        }
        let (objects, unreadable) = match body {
            Body::Test => {
                NotificationDropped::TestEvent.emit(&self.metrics);
                self.apply(vec![Action::Delete {
                    receipt: message.receipt,
                }])
                .await;
                return;
            }
            Body::Created {
                objects,
                unreadable,
                ..
            } => (objects, unreadable),
        };
        if !unreadable.is_empty() && self.inbox.first_report(&message.id) {
            for record in &unreadable {
                NotificationRecordUnreadable {
                    message: &message.id,
                    error: &record.to_string(),
                }
                .emit(&self.metrics);
            }
        }
        let mut waiting = Vec::new();
        for created in objects {
            let Some(meta) = self.in_source(created) else {
                continue;
            };
            let checkpoint = match self.ledger.finished(&format!("{}/", meta.key)).await {
                Ok(finished) if finished.outcome(&meta.key, meta.size, &meta.etag).is_some() => {
                    continue;
                }
                Ok(finished) => finished.has_checkpoint(&meta.key, meta.size, &meta.etag),
                Err(e) => {
                    tracing::warn!(
                        message_id = %message.id,
                        "cannot check the ledger for {}, the message comes back in {:?}: {e}",
                        meta.key,
                        self.settings.retry_after
                    );
                    self.apply(vec![Action::Release {
                        receipt: message.receipt,
                        after: self.settings.retry_after,
                    }])
                    .await;
                    return;
                }
            };
            waiting.push((meta.key.clone(), meta.size, meta.etag.clone()));
            let parsed = CurrentsKey::parse(&meta.key);
            self.pending
                .push(if parsed.event_type.is_none() || parsed.date.is_none() {
                    Work::OutsideLayout(meta)
                } else if checkpoint {
                    Work::Resume(meta)
                } else {
                    Work::Object(meta)
                });
        }
        if waiting.is_empty() {
            if unreadable.is_empty() {
                NotificationDropped::NothingNew.emit(&self.metrics);
            } else {
                NotificationDropped::UnreadableRecords.emit(&self.metrics);
            }
        }
        NotificationObjectsQueued {
            objects: waiting.len() as u64,
        }
        .emit(&self.metrics);
        if let Some(action) = self.inbox.hold(&message.id, message.receipt, waiting) {
            self.apply(vec![action]).await;
        }
    }

    /// The object as a source key, or `None` for other buckets, keys outside the source
    /// prefix and keys that are not `.avro`.
    fn in_source(&self, created: Created) -> Option<ObjectMeta> {
        if created.bucket != self.settings.bucket {
            tracing::debug!(bucket = %created.bucket, "a notification for another bucket");
            return None;
        }
        let Some(key) = created.key.strip_prefix(&self.settings.prefix) else {
            tracing::debug!(key = %created.key, "a notification outside the source prefix");
            return None;
        };
        if !key.ends_with(".avro") || key.is_empty() {
            return None;
        }
        Some(ObjectMeta {
            key: key.to_string(),
            size: created.size,
            etag: created.etag,
        })
    }

    async fn heartbeat(&self) {
        let receipts = self.inbox.receipts();
        if receipts.is_empty() {
            return;
        }
        match self
            .queue
            .change_visibility(&receipts, self.settings.visibility)
            .await
        {
            Ok(failed) => {
                for (_, reason) in failed {
                    tracing::warn!("cannot extend a message's visibility: {reason}");
                }
            }
            Err(e) => tracing::warn!("cannot extend the visibility of messages in flight: {e}"),
        }
    }

    async fn apply(&self, actions: Vec<Action>) {
        let mut deletes = Vec::new();
        let mut releases: std::collections::BTreeMap<Duration, Vec<String>> = Default::default();
        for action in actions {
            match action {
                Action::Delete { receipt } => deletes.push(receipt),
                Action::Release { receipt, after } => {
                    releases.entry(after).or_default().push(receipt)
                }
            }
        }
        if !deletes.is_empty() {
            match self.queue.delete(&deletes).await {
                Ok(failed) => {
                    for (_, reason) in failed {
                        tracing::warn!(
                            "cannot delete a finished message; it will come back and be found recorded: {reason}"
                        );
                    }
                }
                Err(e) => tracing::warn!(
                    "cannot delete finished messages; they will come back and be found recorded: {e}"
                ),
            }
        }
        for (after, receipts) in releases {
            if let Err(e) = self.queue.change_visibility(&receipts, after).await {
                tracing::warn!(
                    "cannot give messages back; they come back when their visibility runs out: {e}"
                );
            }
        }
    }
}
