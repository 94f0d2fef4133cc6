use std::sync::Arc;
use std::time::Duration;

use super::control::check_name;
use super::*;
use crate::currents::key::DateHour;
use crate::deadletter::{DeadLetterFilter, DeadLetterStore};
use crate::ledger::Ledger;
use crate::store::LocalStore;
use crate::store::ObjectStore;

/// A state directory that does not exist yet, removed when dropped.
struct State(std::path::PathBuf);

impl State {
    fn new(label: &str) -> (State, Control, Arc<dyn ObjectStore>) {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "currents-heap-handover-{label}-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::lazy(&dir));
        (State(dir), Control::new(store.clone()), store)
    }
}

impl Drop for State {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn hour(text: &str) -> DateHour {
    DateHour::parse(text).unwrap()
}

fn beat(worker: &str, beat_at: i64) -> Heartbeat {
    Heartbeat {
        worker: worker.into(),
        host: "h".into(),
        pid: 1,
        started_at: 0,
        beat_at,
    }
}

const NOW: i64 = 1_764_248_400;

#[test]
fn a_new_worker_has_a_fresh_id_of_host_pid_and_random_hex() {
    let a = Heartbeat::new_worker(NOW);
    let b = Heartbeat::new_worker(NOW);
    assert_ne!(a.worker, b.worker, "a restarted worker is a new worker");
    let (rest, hex) = a.worker.rsplit_once('-').unwrap();
    assert_eq!(hex.len(), 8);
    assert!(hex.bytes().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(rest, format!("{}-{}", a.host, std::process::id()));
    assert_eq!(
        (a.started_at, a.beat_at, a.pid),
        (NOW, NOW, std::process::id())
    );
    check_name("worker id", &a.worker).unwrap();
}

#[test]
fn a_heartbeat_is_live_within_stale_after_either_way() {
    let stale = STALE_AFTER.as_secs() as i64;
    let hb = beat("w", NOW);
    assert!(hb.is_live(NOW));
    assert!(hb.is_live(NOW + stale));
    assert!(!hb.is_live(NOW + stale + 1));
    assert!(hb.is_live(NOW - stale), "a writer's clock a little ahead");
    assert!(!hb.is_live(NOW - stale - 1));
    assert!(!beat("w", i64::MIN).is_live(i64::MAX));
    assert!(HEARTBEAT_INTERVAL * 3 <= STALE_AFTER, "three missed beats");
}

#[tokio::test]
async fn live_workers_are_the_fresh_readable_ones_sorted_by_id() {
    let (_dir, control, store) = State::new("live");
    assert!(
        control.live_workers(NOW).await.unwrap().is_empty(),
        "no state yet"
    );
    control.beat(&beat("w-b", NOW - 10)).await.unwrap();
    control.beat(&beat("w-a", NOW)).await.unwrap();
    control.beat(&beat("w-old", NOW - 91)).await.unwrap();
    store
        .put("control/workers/w-bad.json", b"{not json".to_vec())
        .await
        .unwrap();
    let live = control.live_workers(NOW).await.unwrap();
    let ids: Vec<&str> = live.iter().map(|hb| hb.worker.as_str()).collect();
    assert_eq!(ids, ["w-a", "w-b"]);
    assert_eq!(control.workers().await.unwrap().len(), 3);

    control.retire("w-a").await.unwrap();
    control.retire("w-a").await.unwrap();
    let live = control.live_workers(NOW).await.unwrap();
    assert_eq!(live, [beat("w-b", NOW - 10)]);

    assert_eq!(
        control
            .prune_workers(NOW, Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        control
            .prune_workers(NOW + 3580, Duration::from_secs(3600))
            .await
            .unwrap(),
        1,
        "w-old, stale for over an hour"
    );
    assert_eq!(control.workers().await.unwrap(), [beat("w-b", NOW - 10)]);
}

#[tokio::test]
async fn a_request_writes_queued_progress_and_is_listed_oldest_first() {
    let (_dir, control, store) = State::new("request");
    let (from, to) = (hour("2026-11-01-00"), hour("2026-11-08-00"));
    let second = control.request(from, to, "w-a", NOW + 5).await.unwrap();
    let first = control
        .request(hour("2026-10-01-05"), hour("2026-10-02-00"), "w-b", NOW)
        .await
        .unwrap();
    let (unix, hex) = second.id.split_once('-').unwrap();
    assert_eq!(unix, (NOW + 5).to_string());
    assert!(hex.len() == 8 && hex.bytes().all(|c| c.is_ascii_hexdigit()));
    assert_eq!((second.from, second.to), (from, to));
    assert_eq!(
        (second.worker.as_str(), second.requested_at),
        ("w-a", NOW + 5)
    );

    let text = String::from_utf8(
        store
            .get(&format!("control/backfills/{}/request.json", second.id))
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(text.contains("\"from\": \"2026-11-01-00\""), "{text}");

    let listed = control.requests().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].0, first);
    assert_eq!(listed[1].0, second);
    let queued = listed[1].1.clone().unwrap();
    assert_eq!(queued, BackfillProgress::queued(&second, NOW + 5));
    assert_eq!(queued.state, BackfillState::Queued);
    assert_eq!(queued.worker, "w-a");

    let running = BackfillProgress {
        state: BackfillState::Running,
        worker: "w-a".into(),
        found: 10,
        ended: 4,
        events_sent: 400,
        started_at: Some(NOW + 10),
        updated_at: NOW + 30,
        ..queued
    };
    control.report(&running).await.unwrap();
    assert_eq!(control.progress(&second.id).await.unwrap(), Some(running));
    assert_eq!(control.progress("1-00000000").await.unwrap(), None);
    assert_eq!(
        control.get_request(&first.id).await.unwrap(),
        Some(first.clone())
    );

    let adopted = control.adopt(&first, "w-c").await.unwrap();
    assert_eq!(adopted.worker, "w-c");
    assert_eq!(control.get_request(&first.id).await.unwrap(), Some(adopted));

    assert!(matches!(
        control.request(to, from, "w-a", NOW).await,
        Err(HandoverError::Range(RangeError::Empty { .. }))
    ));
    assert!(matches!(
        control.request(from, from, "w-a", NOW).await,
        Err(HandoverError::Range(RangeError::Empty { .. }))
    ));
}

#[tokio::test]
async fn unreadable_control_objects_are_skipped_or_named() {
    let (_dir, control, store) = State::new("corrupt");
    let good = control
        .request(hour("2026-11-01-00"), hour("2026-11-02-00"), "w", NOW)
        .await
        .unwrap();
    store
        .put("control/backfills/2-bad/request.json", b"[]".to_vec())
        .await
        .unwrap();
    // Progress alone: a backfill that stopped between its two writes.
    store
        .put("control/backfills/3-orphan/progress.json", b"{}".to_vec())
        .await
        .unwrap();
    store
        .put(
            &format!("control/backfills/{}/progress.json", good.id),
            b"{\"id\": 1}".to_vec(),
        )
        .await
        .unwrap();
    let listed = control.requests().await.unwrap();
    assert_eq!(listed, [(good.clone(), None)]);
    let error = control.progress(&good.id).await.unwrap_err();
    let key = format!("control/backfills/{}/progress.json", good.id);
    assert_eq!(error.key(), Some(key.as_str()));
    assert!(error.to_string().contains(&key), "{error}");
}

#[tokio::test]
async fn ids_that_are_not_one_plain_key_segment_are_refused() {
    let (dir, control, _) = State::new("names");
    for bad in ["", ".", "..", "a/b", "../x", "a b", &"x".repeat(201)] {
        assert!(
            matches!(
                control.beat(&beat(bad, NOW)).await,
                Err(HandoverError::InvalidName { .. })
            ),
            "{bad:?}"
        );
        assert!(control.retire(bad).await.is_err(), "{bad:?}");
        assert!(control.progress(bad).await.is_err(), "{bad:?}");
    }
    assert!(!dir.0.exists(), "nothing was written");
}

#[tokio::test]
async fn the_ledger_and_dead_letters_do_not_see_control_objects() {
    let (_dir, control, store) = State::new("apart");
    control.beat(&beat("w", NOW)).await.unwrap();
    control
        .request(hour("2026-11-01-00"), hour("2026-11-02-00"), "w", NOW)
        .await
        .unwrap();
    let dead_letters = DeadLetterStore::new(store.clone());
    assert!(
        dead_letters
            .list(&DeadLetterFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
    let (finished, failed) = Ledger::new(store).read_all().await.unwrap();
    assert!(finished.is_empty() && failed.entries.is_empty() && failed.unreadable.is_empty());
}

#[test]
fn the_owner_is_the_live_addressee_else_the_lowest_live_id() {
    let request = BackfillRequest {
        id: "1-00000000".into(),
        from: hour("2026-11-01-00"),
        to: hour("2026-11-02-00"),
        worker: "w-m".into(),
        requested_at: NOW,
    };
    let live = [beat("w-a", NOW), beat("w-m", NOW), beat("w-z", NOW)];
    assert_eq!(owner(&request, &live), Some("w-m"));
    let unsorted = [beat("w-z", NOW), beat("w-b", NOW)];
    assert_eq!(owner(&request, &unsorted), Some("w-b"));
    assert_eq!(owner(&request, &[]), None);
    assert_eq!(addressee(&unsorted), Some("w-b"));
    assert_eq!(addressee(&[]), None);
}

#[test]
fn eta_follows_the_pace_so_far() {
    let request = BackfillRequest {
        id: "1-00000000".into(),
        from: hour("2026-11-01-00"),
        to: hour("2026-11-02-00"),
        worker: "w".into(),
        requested_at: NOW,
    };
    let mut progress = BackfillProgress::queued(&request, NOW);
    assert_eq!(progress.eta_secs(NOW), None, "not started");
    progress.started_at = Some(NOW);
    progress.found = 100;
    assert_eq!(progress.eta_secs(NOW + 60), None, "nothing ended yet");
    progress.ended = 25;
    assert_eq!(progress.eta_secs(NOW + 60), Some(180));
    progress.ended = 100;
    assert_eq!(progress.eta_secs(NOW + 60), Some(0));
    progress.ended = 1;
    progress.found = u64::MAX;
    assert_eq!(progress.eta_secs(i64::MAX), Some(u64::MAX), "saturates");
    assert!(!BackfillState::Queued.is_terminal() && !BackfillState::Running.is_terminal());
    assert!(BackfillState::Done.is_terminal() && BackfillState::Incomplete.is_terminal());
    assert!(BackfillState::DoneWithFailures.is_terminal());
}

#[test]
fn states_and_hours_read_back_as_written() {
    let json = serde_json::to_string(&BackfillState::DoneWithFailures).unwrap();
    assert_eq!(json, "\"done_with_failures\"");
    let request: BackfillRequest = serde_json::from_str(
        r#"{"id":"1-0","from":"2026-11-01T05","to":"2026-11-02","worker":"w","requested_at":1}"#,
    )
    .unwrap();
    assert_eq!(request.from, hour("2026-11-01-05"));
    assert_eq!(request.to, hour("2026-11-02-00"));
    let back: BackfillRequest =
        serde_json::from_str(&serde_json::to_string(&request).unwrap()).unwrap();
    assert_eq!(back, request);
    assert!(
        serde_json::from_str::<BackfillRequest>(
            r#"{"id":"1-0","from":"2026-13-01","to":"2026-11-02","worker":"w","requested_at":1}"#
        )
        .is_err()
    );
}

#[tokio::test]
async fn a_range_is_checked_once_for_every_side() {
    let from = hour("2026-11-01-00");
    assert_eq!(check_range(from, hour("2026-11-01-01")), Ok(()));
    let longest = DateHour::from_hours_since_epoch(from.hours_since_epoch() + MAX_RANGE_HOURS);
    assert_eq!(check_range(from, longest), Ok(()));
    assert!(matches!(
        check_range(from, from),
        Err(RangeError::Empty { .. })
    ));
    let too_long = DateHour::from_hours_since_epoch(longest.hours_since_epoch() + 1);
    let error = check_range(from, too_long).unwrap_err();
    assert!(error.to_string().contains("9601 hours"), "{error}");
    let (dir, control, _) = State::new("range");
    assert!(matches!(
        control.request(from, too_long, "w", NOW).await,
        Err(HandoverError::Range(RangeError::TooLong { .. }))
    ));
    assert!(!dir.0.exists(), "nothing was written");
}

#[tokio::test]
async fn retention_deletes_only_what_ended_long_ago_beyond_the_most_recent() {
    let (_dir, control, store) = State::new("prune");
    const DAY: i64 = 24 * 3600;
    let (from, to) = (hour("2026-11-01-00"), hour("2026-11-02-00"));
    let ended_at = |request: &BackfillRequest, state, updated_at| BackfillProgress {
        state,
        updated_at,
        ..BackfillProgress::queued(request, request.requested_at)
    };
    // Oldest first: an open one from long ago, three that ended 15 days ago, one yesterday.
    let open = control
        .request(from, to, "w", NOW - 90 * DAY)
        .await
        .unwrap();
    let mut old = Vec::new();
    for n in 0..3 {
        let request = control
            .request(from, to, "w", NOW - 20 * DAY + n)
            .await
            .unwrap();
        control
            .report(&ended_at(&request, BackfillState::Done, NOW - 15 * DAY))
            .await
            .unwrap();
        old.push(request);
    }
    let recent = control.request(from, to, "w", NOW - DAY).await.unwrap();
    control
        .report(&ended_at(&recent, BackfillState::Incomplete, NOW - DAY))
        .await
        .unwrap();
    // Unreadable progress: never deleted. An old progress without its request: deleted.
    let unreadable = control
        .request(from, to, "w", NOW - 30 * DAY)
        .await
        .unwrap();
    let key = format!("control/backfills/{}/progress.json", unreadable.id);
    store.put(&key, b"{".to_vec()).await.unwrap();
    let orphan = BackfillProgress {
        id: "1-0000000a".into(),
        ..ended_at(&open, BackfillState::Queued, NOW - 15 * DAY)
    };
    control.report(&orphan).await.unwrap();

    let retention = Duration::from_secs(14 * 24 * 3600);
    // Keeping the 3 most recent finished: old[1], old[2] and recent stay.
    assert_eq!(
        control.prune_requests(NOW, retention, 3).await.unwrap(),
        2,
        "old[0] and the orphaned progress"
    );
    let ids: Vec<String> = control
        .requests()
        .await
        .unwrap()
        .into_iter()
        .map(|(r, _)| r.id)
        .collect();
    let expected: Vec<String> = [&open, &unreadable, &old[1], &old[2], &recent]
        .map(|r| r.id.clone())
        .to_vec();
    assert_eq!(ids, expected);
    assert_eq!(control.progress(&old[0].id).await.unwrap(), None);
    assert_eq!(control.progress(&orphan.id).await.unwrap(), None);
    // With none kept beyond the rule, the rest of the old ones go; nothing else ever does.
    assert_eq!(control.prune_requests(NOW, retention, 0).await.unwrap(), 2);
    assert_eq!(
        control
            .prune_requests(NOW + 100 * DAY, retention, 0)
            .await
            .unwrap(),
        1,
        "recent, once it too is old"
    );
    let left: Vec<String> = control
        .requests()
        .await
        .unwrap()
        .into_iter()
        .map(|(r, _)| r.id)
        .collect();
    assert_eq!(left, [open.id.clone(), unreadable.id.clone()]);

    // Heartbeats: a live one stays whatever the limit; one dated far ahead goes.
    control.beat(&beat("w-live", NOW)).await.unwrap();
    control.beat(&beat("w-ahead", NOW + 2 * DAY)).await.unwrap();
    control.beat(&beat("w-dead", NOW - 2 * DAY)).await.unwrap();
    assert_eq!(
        control.prune(NOW).await,
        Pruned {
            heartbeats: 2,
            requests: 0
        }
    );
    assert_eq!(control.prune_workers(NOW, Duration::ZERO).await.unwrap(), 0);
    assert_eq!(control.workers().await.unwrap(), [beat("w-live", NOW)]);
}
