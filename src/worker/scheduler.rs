//! Runs objects through the pipeline, a bounded number at a time.
//!
//! A key is queued or in flight at most once. Every task gives its key back when it ends,
//! whichever way it ends: a result, a panic, or a cancellation. A panicked task is reported as
//! [`Ended::Panicked`] with its key, so the object is neither lost nor stuck "in progress":
//! the next poll finds it unrecorded and queues it again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::pipeline::{ObjectResult, Pipeline};
use crate::store::ObjectMeta;

/// Work for the scheduler.
#[derive(Debug, Clone)]
pub enum Work {
    Object(ObjectMeta),
    /// An `.avro` key outside the Currents layout: recorded failed without reading it.
    OutsideLayout(ObjectMeta),
}

impl Work {
    pub fn key(&self) -> &str {
        match self {
            Work::Object(m) | Work::OutsideLayout(m) => &m.key,
        }
    }
}

/// How one object's task ended.
#[derive(Debug)]
pub enum Ended {
    Object(ObjectResult),
    /// The task panicked (a bug): nothing was recorded, and the object is free to be queued
    /// again.
    Panicked {
        key: String,
        message: String,
    },
}

impl Ended {
    pub fn key(&self) -> &str {
        match self {
            Ended::Object(result) => result.key(),
            Ended::Panicked { key, .. } => key,
        }
    }
}

pub struct Scheduler {
    pipeline: Arc<Pipeline>,
    limit: usize,
    abandon: CancellationToken,
    queue: VecDeque<Work>,
    in_progress: HashSet<String>,
    tasks: JoinSet<ObjectResult>,
    /// Which key each running task holds, to give it back if the task panics.
    running: HashMap<Id, String>,
}

impl Scheduler {
    /// `limit`: objects in flight at once (at least 1). `abandon` cuts every object short.
    pub fn new(pipeline: Arc<Pipeline>, limit: usize, abandon: CancellationToken) -> Self {
        Scheduler {
            pipeline,
            limit: limit.max(1),
            abandon,
            queue: VecDeque::new(),
            in_progress: HashSet::new(),
            tasks: JoinSet::new(),
            running: HashMap::new(),
        }
    }

    /// Queues work unless the same key is queued or in flight already. Returns whether it was
    /// queued.
    pub fn enqueue(&mut self, work: Work) -> bool {
        let queued = self.in_progress.insert(work.key().to_string());
        if queued {
            self.queue.push_back(work);
            self.fill();
        }
        queued
    }

    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.tasks.is_empty()
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    pub fn in_flight(&self) -> usize {
        self.tasks.len()
    }

    /// Stops starting queued work (shutdown: stop fetching). Returns the keys not started.
    pub fn clear_queue(&mut self) -> Vec<String> {
        let cleared: Vec<String> = self.queue.drain(..).map(|w| w.key().to_string()).collect();
        for key in &cleared {
            self.in_progress.remove(key);
        }
        cleared
    }

    fn fill(&mut self) {
        while self.tasks.len() < self.limit {
            let Some(work) = self.queue.pop_front() else {
                return;
            };
            let key = work.key().to_string();
            let (pipeline, abandon) = (self.pipeline.clone(), self.abandon.clone());
            let handle = self.tasks.spawn(async move {
                match work {
                    Work::Object(meta) => pipeline.process(&meta, &abandon).await,
                    Work::OutsideLayout(meta) => {
                        pipeline.record_outside_layout(&meta, &abandon).await
                    }
                }
            });
            self.running.insert(handle.id(), key);
        }
    }

    /// The next object whose task ended, or `None` when nothing is in flight.
    pub async fn next(&mut self) -> Option<Ended> {
        let ended = match self.tasks.join_next_with_id().await? {
            Ok((id, result)) => {
                self.running.remove(&id);
                Ended::Object(result)
            }
            Err(e) => {
                let key = self.running.remove(&e.id()).unwrap_or_default();
                if e.is_panic() {
                    let payload = e.into_panic();
                    let message = payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "(no message)".into());
                    Ended::Panicked { key, message }
                } else {
                    Ended::Object(ObjectResult::Abandoned { key })
                }
            }
        };
        self.in_progress.remove(ended.key());
        self.fill();
        Some(ended)
    }
}
