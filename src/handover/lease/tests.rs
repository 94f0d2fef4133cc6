//! The lease's rules on a paused clock, against an in-memory store with the conditional
//! writes the real ones have (the real ones are in the store conformance tests).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::*;
use crate::store::{ObjectMeta, Opened, ReadRange, StoreFuture, Versioned};

/// Each key's bytes and version.
type Objects = HashMap<String, (Vec<u8>, u64)>;

/// Objects with a version counter, shared by every view of one store.
#[derive(Default, Clone)]
struct Shared {
    objects: Arc<Mutex<Objects>>,
    next: Arc<AtomicU64>,
    turns: Arc<AtomicU64>,
}

/// One process's view of the store; `down` cuts this view off (an outage or a partition).
#[derive(Default)]
struct Mem {
    shared: Shared,
    down: AtomicBool,
    /// The next conditional write lands, then answers an error (a 500 or a reset
    /// connection after the store committed it).
    lose_next_answer: AtomicBool,
}

impl Shared {
    /// Gives other tasks 0 to 2 turns before a request is served (a seeded, varying
    /// schedule), so that candidates on one runtime interleave their reads and writes as
    /// processes do.
    async fn interleave(&self) {
        let turn = self.turns.fetch_add(1, Ordering::SeqCst);
        for _ in 0..(turn.wrapping_mul(2_654_435_761) >> 7) % 3 {
            tokio::task::yield_now().await;
        }
    }
}

impl Mem {
    /// Another process's view of the same objects.
    fn view(&self) -> Arc<Mem> {
        Arc::new(Mem {
            shared: self.shared.clone(),
            ..Mem::default()
        })
    }

    fn outage(&self, key: &str) -> Option<StoreError> {
        self.down
            .load(Ordering::SeqCst)
            .then(|| StoreError::new("put", key.to_string(), StoreErrorKind::Unavailable, "down"))
    }
}

impl ObjectStore for Mem {
    fn describe(&self) -> String {
        "mem".into()
    }
    fn list<'a>(&'a self, _: &'a str) -> StoreFuture<'a, Vec<ObjectMeta>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn list_folders<'a>(&'a self, _: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Vec<u8>> {
        Box::pin(async move { Ok(self.get_versioned(key).await?.bytes) })
    }
    fn open_range<'a>(&'a self, key: &'a str, _: &'a ReadRange) -> StoreFuture<'a, Opened> {
        Box::pin(async move { Err(StoreError::new("get", key, StoreErrorKind::Invalid, "no")) })
    }
    fn put<'a>(&'a self, key: &'a str, bytes: Vec<u8>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let v = self.shared.next.fetch_add(1, Ordering::SeqCst) + 1;
            self.shared
                .objects
                .lock()
                .unwrap()
                .insert(key.into(), (bytes, v));
            Ok(())
        })
    }
    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.shared.objects.lock().unwrap().remove(key);
            Ok(())
        })
    }
    fn get_versioned<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Versioned> {
        Box::pin(async move {
            self.shared.interleave().await;
            if let Some(e) = self.outage(key) {
                return Err(e);
            }
            match self.shared.objects.lock().unwrap().get(key) {
                Some((bytes, v)) => Ok(Versioned {
                    bytes: bytes.clone(),
                    version: v.to_string(),
                }),
                None => Err(StoreError::new(
                    "get",
                    key,
                    StoreErrorKind::NotFound,
                    "none",
                )),
            }
        })
    }
    fn put_if<'a>(
        &'a self,
        key: &'a str,
        bytes: Vec<u8>,
        condition: &'a PutCondition,
    ) -> StoreFuture<'a, String> {
        Box::pin(async move {
            self.shared.interleave().await;
            if let Some(e) = self.outage(key) {
                return Err(e);
            }
            let mut objects = self.shared.objects.lock().unwrap();
            let holds = match (condition, objects.get(key)) {
                (PutCondition::Absent, None) => true,
                (PutCondition::Version(want), Some((_, v))) => *want == v.to_string(),
                _ => false,
            };
            if !holds {
                return Err(StoreError::new(
                    "put",
                    key,
                    StoreErrorKind::PreconditionFailed,
                    "412",
                ));
            }
            let v = self.shared.next.fetch_add(1, Ordering::SeqCst) + 1;
            objects.insert(key.into(), (bytes, v));
            if self.lose_next_answer.swap(false, Ordering::SeqCst) {
                return Err(StoreError::new(
                    "put",
                    key,
                    StoreErrorKind::Unavailable,
                    "connection reset",
                ));
            }
            Ok(v.to_string())
        })
    }
}

const D: Duration = Duration::from_secs(15);

fn client(store: &Arc<Mem>, me: &str, role: Role) -> LeaseClient {
    LeaseClient::new(store.clone(), me.into(), role, LeaseTimings::of(D))
}

/// `client` takes the free lease and keeps it renewed, writing `sent` each time: its keeper
/// and the fence delivery would keep to.
async fn held(client: &LeaseClient, sent: serde_json::Value) -> (Keeper, watch::Receiver<Instant>) {
    let Acquired::Held(holding, _) = client
        .acquire(&CancellationToken::new(), |_, _| false)
        .await
    else {
        panic!("the lease is free");
    };
    let (fence, fence_rx) = watch::channel(Instant::now());
    (client.keep(holding, move |_| sent.clone(), fence), fence_rx)
}

fn body(holder: &str, state: LeaseState) -> LeaseBody {
    LeaseBody {
        holder: holder.into(),
        role: Role::Run,
        state,
        writes: 3,
        duration_ms: 15_000,
        written_at: 0,
        sent: serde_json::Value::Null,
    }
}

fn present(version: &str, b: LeaseBody) -> Read {
    Read::Present {
        version: version.into(),
        body: Some(b),
    }
}

#[tokio::test(start_paused = true)]
async fn an_absent_lease_is_created_and_a_released_one_taken_at_once() {
    let t = LeaseTimings::of(D);
    let now = Instant::now();
    let mut watch = Watch::default();
    assert_eq!(
        watch.judge(&Read::Absent, "me", &t, now),
        Verdict::Take {
            condition: PutCondition::Absent,
            takeover: Takeover::Fresh
        }
    );
    let verdict = watch.judge(
        &present("7", body("other", LeaseState::Released)),
        "me",
        &t,
        now,
    );
    assert!(matches!(
        verdict,
        Verdict::Take { condition: PutCondition::Version(v), takeover: Takeover::Released { .. } } if v == "7"
    ));
}

#[tokio::test(start_paused = true)]
async fn a_held_lease_expires_only_after_it_is_seen_unchanged_for_the_duration() {
    let t = LeaseTimings::of(D);
    let start = Instant::now();
    let mut watch = Watch::default();
    let held = |v: &str| present(v, body("other", LeaseState::Held));
    // Renewed every 5 s: never expires, and is seen live from the first change on.
    for i in 0..10u32 {
        let now = start + Duration::from_secs(5) * i;
        let verdict = watch.judge(&held(&i.to_string()), "me", &t, now);
        assert_eq!(
            verdict,
            Verdict::Held {
                body: Some(body("other", LeaseState::Held)),
                live: i > 0
            },
            "read {i}"
        );
    }
    // Then unchanged: held until 15 s after it was first seen, taken from then on.
    let last = start + Duration::from_secs(45);
    assert!(matches!(
        watch.judge(&held("9"), "me", &t, last + D - Duration::from_millis(1)),
        Verdict::Held { .. }
    ));
    assert!(matches!(
        watch.judge(&held("9"), "me", &t, last + D),
        Verdict::Take {
            takeover: Takeover::Expired { .. },
            ..
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn a_holder_with_a_longer_duration_is_waited_for_longer() {
    let t = LeaseTimings::of(D);
    let start = Instant::now();
    let mut watch = Watch::default();
    let mut long = body("other", LeaseState::Held);
    long.duration_ms = 60_000;
    let read = present("1", long);
    watch.judge(&read, "me", &t, start);
    assert!(matches!(
        watch.judge(&read, "me", &t, start + Duration::from_secs(59)),
        Verdict::Held { .. }
    ));
    assert!(matches!(
        watch.judge(&read, "me", &t, start + Duration::from_secs(60)),
        Verdict::Take { .. }
    ));
}

#[tokio::test(start_paused = true)]
async fn an_unreadable_lease_is_held_by_someone_until_it_expires() {
    let t = LeaseTimings::of(D);
    let start = Instant::now();
    let mut watch = Watch::default();
    let garbage = Read::Present {
        version: "1".into(),
        body: None,
    };
    assert!(matches!(
        watch.judge(&garbage, "me", &t, start),
        Verdict::Held {
            body: None,
            live: false
        }
    ));
    // Its holder's duration is unknown: the longest one is waited for.
    assert!(matches!(
        watch.judge(&garbage, "me", &t, start + D),
        Verdict::Held { .. }
    ));
    assert!(matches!(
        watch.judge(&garbage, "me", &t, start + MAX_DURATION),
        Verdict::Take {
            takeover: Takeover::Expired { .. },
            ..
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn a_holder_whose_lease_was_deleted_creates_it_again_and_keeps_sending() {
    let store = Arc::new(Mem::default());
    let a = client(&store, "a", Role::Run);
    let (keeper, fence_rx) = held(&a, serde_json::json!({"sent": [[0, 7]]})).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    store.delete(LEASE_KEY).await.unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!keeper.lost().is_cancelled(), "the holder kept its place");
    assert!(*fence_rx.borrow() > Instant::now(), "and may still send");
    let body: LeaseBody = serde_json::from_slice(&store.get(LEASE_KEY).await.unwrap()).unwrap();
    assert_eq!(body.holder, "a");
    assert_eq!(
        body.sent,
        serde_json::json!({"sent": [[0, 7]]}),
        "and its record"
    );
}

/// One renewal that fails (a blip) is retried every `watch_every`, before the deadline:
/// waiting a whole `renew_every` again would start the retry at the deadline itself.
#[tokio::test(start_paused = true)]
async fn one_failed_renewal_is_retried_before_the_deadline() {
    let store = Arc::new(Mem::default());
    let a = client(&store, "a", Role::Run);
    let (keeper, fence_rx) = held(&a, serde_json::Value::Null).await;
    // Renewals start at 5, 10, 15 s: only the one at 10 s meets the outage.
    tokio::time::sleep(Duration::from_millis(9_500)).await;
    store.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    store.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!keeper.lost().is_cancelled(), "the holder kept its place");
    assert!(*fence_rx.borrow() > Instant::now(), "and may still send");
}

/// A renewal that landed but answered an error moves the version under the holder: its next
/// renewal is refused, and it must recognise its own write rather than give the lease up.
#[tokio::test(start_paused = true)]
async fn a_renewal_that_landed_but_answered_an_error_does_not_lose_the_lease() {
    let store = Arc::new(Mem::default());
    let a = client(&store, "a", Role::Run);
    let (keeper, fence_rx) = held(&a, serde_json::Value::Null).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    store.lose_next_answer.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(
        !store.lose_next_answer.load(Ordering::SeqCst),
        "a renewal was written in between"
    );
    assert!(!keeper.lost().is_cancelled(), "the holder kept its place");
    assert!(*fence_rx.borrow() > Instant::now(), "and may still send");
    assert!(keeper.release(Duration::from_secs(1)).await);
    let body: LeaseBody = serde_json::from_slice(&store.get(LEASE_KEY).await.unwrap()).unwrap();
    assert_eq!(
        (body.holder.as_str(), body.state),
        ("a", LeaseState::Released)
    );
}

/// The safety rule, over many random schedules: a holder's last moment to send (the start
/// of its last successful renewal + 2D/3) comes before a candidate that first saw that
/// renewal's version at any later moment may take the lease.
#[tokio::test(start_paused = true)]
async fn the_holder_stops_sending_before_any_candidate_may_take_over() {
    let t = LeaseTimings::of(D);
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..1000 {
        let start = Instant::now();
        let write_takes = Duration::from_millis(rng.u64(0..3_000));
        let seen_after = Duration::from_millis(rng.u64(0..4_000));
        let holding = Holding::after_write("2".into(), body("h", LeaseState::Held), start, &t);
        let mut watch = Watch::default();
        let first_seen = start + write_takes + seen_after;
        let read = present("2", body("h", LeaseState::Held));
        watch.judge(&read, "c", &t, first_seen);
        // The earliest moment the candidate may take it.
        let mut at = first_seen;
        while matches!(watch.judge(&read, "c", &t, at), Verdict::Held { .. }) {
            at += Duration::from_millis(100);
        }
        assert!(!holding.may_send(at), "holder may still send when taken");
        assert!(at >= holding.may_send_until + (t.duration - t.renew_deadline));
    }
}

#[tokio::test(start_paused = true)]
async fn candidates_racing_for_a_free_lease_leave_exactly_one_holder() {
    for round in 0..50u64 {
        let store = Arc::new(Mem::default());
        // A different interleaving each round.
        store.shared.turns.store(round * 7, Ordering::SeqCst);
        let racing: Vec<_> = (0..8)
            .map(|i| {
                let candidate = LeaseClient::new(
                    store.view(),
                    format!("c{i}"),
                    Role::Run,
                    LeaseTimings::of(D),
                );
                tokio::spawn(async move {
                    let stop = CancellationToken::new();
                    // Less than a watch period: a loser is back to watching by then.
                    tokio::time::timeout(
                        Duration::from_secs(1),
                        candidate.acquire(&stop, |_, _| false),
                    )
                    .await
                    .is_ok()
                })
            })
            .collect();
        let mut held = 0;
        for candidate in racing {
            held += usize::from(candidate.await.unwrap());
        }
        assert_eq!(
            held, 1,
            "round {round}: exactly one candidate holds the lease"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_renewing_holder_keeps_it_and_a_clean_release_hands_over_within_a_watch_period() {
    let store = Arc::new(Mem::default());
    let stop = CancellationToken::new();
    let a = client(&store, "a", Role::Run);
    let Acquired::Held(holding, Takeover::Fresh) = a.acquire(&stop, |_, _| false).await else {
        panic!("a free lease is taken fresh");
    };
    let (fence, fence_rx) = watch::channel(Instant::now());
    let keeper = a.keep(holding, |_| serde_json::Value::Null, fence);
    let b = client(&store, "b", Role::Run);
    let started = Instant::now();
    let waiting = tokio::spawn(async move {
        let stop = CancellationToken::new();
        let got = b.acquire(&stop, |_, _| false).await;
        (got, Instant::now())
    });
    // A minute of renewals: the fence keeps moving ahead, the standby keeps waiting.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!waiting.is_finished());
    assert!(*fence_rx.borrow() > Instant::now());
    let released_at = Instant::now();
    assert!(keeper.release(Duration::from_secs(5)).await);
    let (got, at) = waiting.await.unwrap();
    assert!(matches!(got, Acquired::Held(_, Takeover::Released { .. })));
    assert!(at - released_at <= LeaseTimings::of(D).watch_every);
    assert!(at - started >= Duration::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn a_holder_cut_off_from_the_state_fences_itself_before_a_standby_takes_over() {
    let t = LeaseTimings::of(D);
    for cut_at_ms in [0u64, 1_700, 4_999, 5_001, 9_000] {
        let store = Arc::new(Mem::default());
        let a = client(&store, "a", Role::Run);
        let (keeper, fence_rx) = held(&a, serde_json::Value::Null).await;
        let lost = keeper.lost();
        // The standby watches from the start through its own view of the store.
        let b = LeaseClient::new(store.view(), "b".into(), Role::Run, t);
        let standby = tokio::spawn(async move {
            let got = b.acquire(&CancellationToken::new(), |_, _| false).await;
            (got, Instant::now())
        });
        tokio::time::sleep(Duration::from_secs(20) + Duration::from_millis(cut_at_ms)).await;
        // Only the holder is cut off.
        store.down.store(true, Ordering::SeqCst);
        let cut = Instant::now();
        lost.cancelled().await;
        let fenced_at = Instant::now();
        let last_deadline = *fence_rx.borrow();
        assert!(fenced_at - cut <= t.renew_deadline, "cut at {cut_at_ms}");
        assert!(
            last_deadline <= fenced_at,
            "fenced while the deadline was still ahead"
        );
        let (got, taken_at) = standby.await.unwrap();
        assert!(
            matches!(got, Acquired::Held(_, Takeover::Expired { .. })),
            "cut at {cut_at_ms}"
        );
        assert!(
            taken_at >= last_deadline + (t.duration - t.renew_deadline),
            "taken while the holder could still send"
        );
        assert!(
            !keeper.release(Duration::from_secs(1)).await,
            "a lost lease is not released"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_holder_whose_lease_was_taken_stops_at_its_next_renewal() {
    let store = Arc::new(Mem::default());
    let a = client(&store, "a", Role::Run);
    let (keeper, fence_rx) = held(&a, serde_json::Value::Null).await;
    // Someone overwrites it (a store that ignored a condition, or a hand edit).
    store
        .put(
            LEASE_KEY,
            serde_json::to_vec(&body("x", LeaseState::Held)).unwrap(),
        )
        .await
        .unwrap();
    let before = Instant::now();
    keeper.lost().cancelled().await;
    assert!(Instant::now() - before <= LeaseTimings::of(D).renew_every);
    assert!(*fence_rx.borrow() <= Instant::now());
}

#[tokio::test(start_paused = true)]
async fn a_backfill_gives_up_to_a_live_run_holder_but_not_to_a_dead_one() {
    let store = Arc::new(Mem::default());
    let run = client(&store, "run-1", Role::Run);
    let (keeper, _rx) = held(&run, serde_json::Value::Null).await;
    let backfill = client(&store, "bf", Role::Backfill);
    let gave_up = |b: &LeaseBody, live: bool| live && b.role == Role::Run;
    let started = Instant::now();
    let got = backfill.acquire(&CancellationToken::new(), gave_up).await;
    assert!(matches!(got, Acquired::GaveUp(ref b) if b.holder == "run-1"));
    assert!(Instant::now() - started <= LeaseTimings::of(D).renew_every + Duration::from_secs(2));
    // The run worker is cut off (or killed) without a release: the backfill takes the lease
    // once it has seen it unchanged for D.
    drop(keeper);
    store.down.store(true, Ordering::SeqCst);
    let backfill = LeaseClient::new(
        store.view(),
        "bf".into(),
        Role::Backfill,
        LeaseTimings::of(D),
    );
    let before = Instant::now();
    let got = backfill.acquire(&CancellationToken::new(), gave_up).await;
    assert!(matches!(got, Acquired::Held(_, Takeover::Expired { .. })));
    assert!(Instant::now() - before >= D);
}

#[tokio::test(start_paused = true)]
async fn a_holder_whose_lease_was_overwritten_with_garbage_writes_it_again() {
    let store = Arc::new(Mem::default());
    let a = client(&store, "a", Role::Run);
    let (keeper, fence_rx) = held(&a, serde_json::Value::Null).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    store
        .put(LEASE_KEY, b"{\"holder\": garbage".to_vec())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!keeper.lost().is_cancelled(), "no gap without a sender");
    assert!(*fence_rx.borrow() > Instant::now());
    let body: LeaseBody = serde_json::from_slice(&store.get(LEASE_KEY).await.unwrap()).unwrap();
    assert_eq!(body.holder, "a");
}
