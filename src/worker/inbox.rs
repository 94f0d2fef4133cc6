//! Which queue messages wait on which objects: the bookkeeping behind "delete a message only
//! after its objects are recorded". Pure: it decides, the listener talks to the queue.
//!
//! # Guarantee
//! A message is deleted only when every object it named has ended recorded (done or failed)
//! in the ledger, at the version the message named. Any other end gives the message back to
//! the queue (made visible again, at once or after a delay), so a later receipt, here or on
//! another replica, tries again. A message is never forgotten without one of the two.
//!
//! "Every object it named" means every object the listener could read from it: a record
//! that cannot be read (a broken record beside good ones) never holds a message, since no
//! later receipt would read it better; the listing reconciliation finds its object. Such
//! records are reported once per message ([`Inbox::first_report`]), not at every receipt
//! of a message that comes back because another of its objects was not recorded.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

/// A message held until its objects end.
#[derive(Debug)]
struct Held {
    receipt: String,
    /// Object key → the version (`size`/`etag`) the message named.
    waiting: HashMap<String, (u64, String)>,
}

/// What to do with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Delete {
        receipt: String,
    },
    /// Make it visible again after `after` (zero: at once).
    Release {
        receipt: String,
        after: Duration,
    },
}

/// How an object ended, as far as its messages care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyEnd {
    /// Recorded done or failed at this version.
    Recorded { size: u64, etag: String },
    /// Not recorded: to be tried again after `after`.
    NotRecorded { after: Duration },
    /// The object no longer exists: its messages are spent, whatever version they named.
    Gone,
}

#[derive(Debug, Default)]
pub struct Inbox {
    /// Message id → the message.
    messages: HashMap<String, Held>,
    /// Object key → ids of the messages waiting on it.
    by_key: HashMap<String, Vec<String>>,
    /// Messages whose unreadable records were reported, oldest first: a message given back
    /// and received again does not report them again. Bounded by [`REPORTED_KEPT`]; a
    /// message deleted here is forgotten at once.
    reported: VecDeque<String>,
    reported_ids: HashSet<String>,
}

/// Message ids remembered as reported. A message given back to the queue may be received
/// by another replica and never come back here, so the memory must not grow with them;
/// forgetting the oldest only means a long-lived broken record is reported once more.
pub const REPORTED_KEPT: usize = 10_000;

impl Inbox {
    /// Messages held.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// A message received again while held (its visibility ran out, or SQS delivered it
    /// twice) takes the new receipt, since the old one may no longer work, and keeps its
    /// wait: true if it was held, and then there is nothing else to do with it.
    pub fn renew(&mut self, id: &str, receipt: &str) -> bool {
        match self.messages.get_mut(id) {
            Some(held) => {
                held.receipt = receipt.to_string();
                true
            }
            None => false,
        }
    }

    /// True the first time it is asked for `id` (until the message is deleted here, or
    /// [`REPORTED_KEPT`] other messages were reported since): whether to report the
    /// message's unreadable records now.
    pub fn first_report(&mut self, id: &str) -> bool {
        if !self.reported_ids.insert(id.to_string()) {
            return false;
        }
        self.reported.push_back(id.to_string());
        while self.reported.len() > REPORTED_KEPT {
            if let Some(oldest) = self.reported.pop_front() {
                self.reported_ids.remove(&oldest);
            }
        }
        true
    }

    /// A deleted message does not come back (SQS may rarely deliver one twice; then its
    /// records are reported again): its report is forgotten.
    fn deleted(&mut self, id: &str) {
        if self.reported_ids.remove(id) {
            self.reported.retain(|m| m != id);
        }
    }

    /// Holds a message until `objects` (key, size, etag) end. With none to wait for, the
    /// message is deleted at once. A message received again while held (its visibility ran
    /// out) keeps its wait and takes the new receipt: the old one no longer works.
    pub fn hold(
        &mut self,
        id: &str,
        receipt: String,
        objects: Vec<(String, u64, String)>,
    ) -> Option<Action> {
        if let Some(held) = self.messages.get_mut(id) {
            held.receipt = receipt;
            return None;
        }
        if objects.is_empty() {
            self.deleted(id);
            return Some(Action::Delete { receipt });
        }
        let mut waiting = HashMap::new();
        for (key, size, etag) in objects {
            let ids = self.by_key.entry(key.clone()).or_default();
            if !ids.iter().any(|m| m == id) {
                ids.push(id.to_string());
            }
            waiting.insert(key, (size, normalise(&etag)));
        }
        self.messages
            .insert(id.to_string(), Held { receipt, waiting });
        None
    }

    /// An object ended: what to do with the messages that waited on it.
    pub fn ended(&mut self, key: &str, end: &KeyEnd) -> Vec<Action> {
        let Some(ids) = self.by_key.remove(key) else {
            return Vec::new();
        };
        let mut actions = Vec::new();
        for id in ids {
            let Some(held) = self.messages.get_mut(&id) else {
                continue;
            };
            let Some(version) = held.waiting.remove(key) else {
                continue;
            };
            let release_after = match end {
                KeyEnd::Gone => None,
                KeyEnd::Recorded { size, etag }
                    if *size == version.0 && normalise(etag) == version.1 =>
                {
                    None
                }
                // Another version was recorded (the object was replaced while in flight): the
                // message's own version is not done, so it comes back at once.
                KeyEnd::Recorded { .. } => Some(Duration::ZERO),
                KeyEnd::NotRecorded { after } => Some(*after),
            };
            match release_after {
                None if held.waiting.is_empty() => {
                    let held = self.messages.remove(&id).expect("held above");
                    self.deleted(&id);
                    actions.push(Action::Delete {
                        receipt: held.receipt,
                    });
                }
                None => {}
                Some(after) => {
                    let held = self.messages.remove(&id).expect("held above");
                    self.forget(&id, &held);
                    actions.push(Action::Release {
                        receipt: held.receipt,
                        after,
                    });
                }
            }
        }
        actions
    }

    /// Every receipt held, for the visibility heartbeat.
    pub fn receipts(&self) -> Vec<String> {
        self.messages.values().map(|h| h.receipt.clone()).collect()
    }

    /// Gives every message back at once (shutdown), forgetting them.
    pub fn release_all(&mut self) -> Vec<Action> {
        self.by_key.clear();
        self.messages
            .drain()
            .map(|(_, held)| Action::Release {
                receipt: held.receipt,
                after: Duration::ZERO,
            })
            .collect()
    }

    fn forget(&mut self, id: &str, held: &Held) {
        for key in held.waiting.keys() {
            if let Some(ids) = self.by_key.get_mut(key) {
                ids.retain(|m| m != id);
                if ids.is_empty() {
                    self.by_key.remove(key);
                }
            }
        }
    }
}

/// Listings quote ETags and notifications do not.
fn normalise(etag: &str) -> String {
    etag.trim_matches('"').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(key: &str) -> (String, u64, String) {
        (key.to_string(), 10, "e1".to_string())
    }

    fn recorded() -> KeyEnd {
        KeyEnd::Recorded {
            size: 10,
            etag: "\"e1\"".into(),
        }
    }

    #[test]
    fn a_message_is_deleted_only_when_all_its_objects_are_recorded() {
        let mut inbox = Inbox::default();
        assert_eq!(
            inbox.hold("m1", "r1".into(), vec![object("a"), object("b")]),
            None
        );
        assert_eq!(inbox.ended("a", &recorded()), vec![]);
        assert_eq!(
            inbox.ended("b", &recorded()),
            vec![Action::Delete {
                receipt: "r1".into()
            }]
        );
        assert!(inbox.is_empty());
        assert_eq!(inbox.ended("b", &recorded()), vec![], "ended twice");
    }

    #[test]
    fn one_unrecorded_object_gives_the_whole_message_back() {
        let mut inbox = Inbox::default();
        inbox.hold("m1", "r1".into(), vec![object("a"), object("b")]);
        let after = Duration::from_secs(60);
        assert_eq!(
            inbox.ended("a", &KeyEnd::NotRecorded { after }),
            vec![Action::Release {
                receipt: "r1".into(),
                after
            }]
        );
        assert!(inbox.is_empty());
        assert_eq!(inbox.ended("b", &recorded()), vec![], "already given back");
    }

    #[test]
    fn messages_sharing_an_object_each_end_with_it() {
        let mut inbox = Inbox::default();
        inbox.hold("m1", "r1".into(), vec![object("a")]);
        inbox.hold("m2", "r2".into(), vec![object("a")]);
        let mut actions = inbox.ended("a", &recorded());
        actions.sort_by_key(|a| format!("{a:?}"));
        assert_eq!(
            actions,
            vec![
                Action::Delete {
                    receipt: "r1".into()
                },
                Action::Delete {
                    receipt: "r2".into()
                }
            ]
        );
    }

    #[test]
    fn a_gone_object_spends_its_message() {
        let mut inbox = Inbox::default();
        inbox.hold("m1", "r1".into(), vec![object("a")]);
        assert_eq!(
            inbox.ended("a", &KeyEnd::Gone),
            vec![Action::Delete {
                receipt: "r1".into()
            }]
        );
    }

    #[test]
    fn another_version_recorded_does_not_delete_the_message() {
        let mut inbox = Inbox::default();
        inbox.hold("m1", "r1".into(), vec![object("a")]);
        let other = KeyEnd::Recorded {
            size: 11,
            etag: "e2".into(),
        };
        assert_eq!(
            inbox.ended("a", &other),
            vec![Action::Release {
                receipt: "r1".into(),
                after: Duration::ZERO
            }]
        );
    }

    #[test]
    fn a_redelivered_message_takes_the_new_receipt_and_keeps_its_wait() {
        let mut inbox = Inbox::default();
        inbox.hold("m1", "r1".into(), vec![object("a")]);
        assert_eq!(inbox.hold("m1", "r2".into(), vec![object("a")]), None);
        assert_eq!(inbox.receipts(), vec!["r2".to_string()]);
        assert_eq!(
            inbox.ended("a", &recorded()),
            vec![Action::Delete {
                receipt: "r2".into()
            }]
        );
    }

    #[test]
    fn nothing_to_wait_for_deletes_at_once_and_shutdown_releases_the_rest() {
        let mut inbox = Inbox::default();
        assert_eq!(
            inbox.hold("m0", "r0".into(), vec![]),
            Some(Action::Delete {
                receipt: "r0".into()
            })
        );
        inbox.hold("m1", "r1".into(), vec![object("a")]);
        assert_eq!(
            inbox.release_all(),
            vec![Action::Release {
                receipt: "r1".into(),
                after: Duration::ZERO
            }]
        );
        assert_eq!(inbox.ended("a", &recorded()), vec![]);
    }

    #[test]
    fn a_message_received_again_while_held_only_takes_the_new_receipt() {
        let mut inbox = Inbox::default();
        assert!(!inbox.renew("m1", "r0"), "not held yet");
        inbox.hold("m1", "r1".into(), vec![object("a")]);
        assert!(inbox.renew("m1", "r2"));
        assert_eq!(inbox.len(), 1);
        assert_eq!(
            inbox.ended("a", &recorded()),
            vec![Action::Delete {
                receipt: "r2".into()
            }]
        );
    }

    #[test]
    fn unreadable_records_are_reported_once_per_message_until_it_is_deleted() {
        let mut inbox = Inbox::default();
        assert!(inbox.first_report("m1"));
        // Its good object was not recorded: the message comes back, and is not reported
        // again.
        inbox.hold("m1", "r1".into(), vec![object("a")]);
        let after = Duration::from_secs(60);
        inbox.ended("a", &KeyEnd::NotRecorded { after });
        assert!(!inbox.first_report("m1"));
        // Received again and recorded: deleted, and forgotten.
        inbox.hold("m1", "r2".into(), vec![object("a")]);
        inbox.ended("a", &recorded());
        assert!(inbox.first_report("m1"), "a deleted message is forgotten");
        // A message with nothing readable is deleted at once, and forgotten too.
        assert!(inbox.first_report("m2"));
        inbox.hold("m2", "r3".into(), vec![]);
        assert!(inbox.first_report("m2"));
    }

    #[test]
    fn the_memory_of_reports_is_bounded() {
        let mut inbox = Inbox::default();
        for n in 0..REPORTED_KEPT + 5 {
            assert!(inbox.first_report(&format!("m{n}")));
        }
        assert_eq!(inbox.reported.len(), REPORTED_KEPT);
        assert_eq!(inbox.reported_ids.len(), REPORTED_KEPT);
        assert!(inbox.first_report("m0"), "the oldest was forgotten");
        assert!(!inbox.first_report(&format!("m{}", REPORTED_KEPT + 4)));
    }
}
