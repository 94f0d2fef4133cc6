//! A Heap stand-in: a real HTTP server on loopback that enforces Heap's documented track
//! contract and limits and injects faults. Tests, benchmarks and local demos deliver to it.
//!
//! Contract enforced on `POST /api/track` (heap-facts §2–4), rejecting the whole request with
//! 400 if any event is invalid, as Heap may:
//! - `app_id` must be the configured one (otherwise 401: a test affordance, Heap is silent);
//! - 1..=1000 events; identity 1..=255 characters; event name 1..=1024 characters;
//! - property keys and string values under 1024 characters; values strings or numbers only;
//! - an ISO 8601 timestamp; a non-empty idempotency key, where the first write wins.
//!
//! Rate limits are sliding windows over accepted events, per app and per identity; a request
//! that would exceed one gets 429 (with `limit_retry_after`, a `Retry-After`) and counts as a
//! violation; `fill_app_window` makes the app's window hold another sender's events, and
//! `max_body_bytes` refuses larger bodies with 413, as a proxy in front of Heap may. Faults come from a script (for
//! exact scenarios) or at random with a seed: 429 with or without `Retry-After`, 500, 503, a
//! slow answer after storing the events, and a dropped connection before or after storing.
//! Time is tokio's, so a paused test clock drives the windows and delays too.
//!
//! `POST /api/add_user_properties` is enforced too, with faults and counters of its own: see
//! [`user_properties`]; [`Standin::user_properties`] is what it applied per identity.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value as Json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::rng::Rng;
use currents_heap::heap::pacer::RateLimits;

pub mod user_properties;
use user_properties::PropertiesState;
pub use user_properties::{UserPropertiesConfig, UserPropertiesReport};

/// One injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    TooManyRequests,
    TooManyRequestsRetryAfter(u64),
    InternalError,
    Unavailable,
    /// Store the events, then answer 200 only after this long (clients time out first).
    SlowAfterStore(Duration),
    /// Close the connection without an answer, before looking at the request.
    DropBeforeStore,
    /// Store the events, then close the connection without an answer.
    DropAfterStore,
}

#[derive(Debug, Clone)]
pub struct StandinConfig {
    pub app_id: String,
    /// Limits to enforce; 0 turns one off.
    pub limits: RateLimits,
    /// Percent of requests that get a random fault from `random_faults`.
    pub fault_percent: u64,
    pub random_faults: Vec<Fault>,
    pub seed: u64,
    /// Idempotency keys whose presence makes the whole request a 400.
    pub poison_keys: HashSet<String>,
    /// Added to every answer, to make a run last long enough to interrupt.
    pub response_delay: Duration,
    /// `Retry-After` seconds on the stand-in's own rate-limit 429s (Heap may send one).
    pub limit_retry_after: Option<u64>,
    /// Bodies over this many bytes are refused with 413, as a proxy in front of Heap may.
    pub max_body_bytes: Option<usize>,
    /// `add_user_properties`'s own faults and limit (`app_id` and `max_body_bytes` are shared).
    pub user_properties: UserPropertiesConfig,
}

impl StandinConfig {
    pub fn new(app_id: impl Into<String>) -> Self {
        StandinConfig {
            app_id: app_id.into(),
            limits: RateLimits::default(),
            fault_percent: 0,
            random_faults: vec![
                Fault::TooManyRequests,
                Fault::TooManyRequestsRetryAfter(2),
                Fault::InternalError,
                Fault::Unavailable,
                Fault::SlowAfterStore(Duration::from_secs(40)),
                Fault::DropBeforeStore,
                Fault::DropAfterStore,
            ],
            seed: 1,
            poison_keys: HashSet::new(),
            response_delay: Duration::ZERO,
            limit_retry_after: None,
            max_body_bytes: None,
            user_properties: UserPropertiesConfig::default(),
        }
    }
}

/// An event the stand-in stored.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub event: Json,
    pub received_at: Instant,
}

/// Counters of what the stand-in saw.
#[derive(Debug, Default, Clone)]
pub struct StandinReport {
    pub requests: u64,
    pub accepted_requests: u64,
    pub invalid_requests: u64,
    /// Requests refused with 429 for the rate limits.
    pub limit_violations: u64,
    /// Events in the requests refused for the rate limits.
    pub limit_violation_events: u64,
    /// Requests refused with 413 for `max_body_bytes`.
    pub bodies_too_large: u64,
    /// Events whose idempotency key was already stored (ignored, first write wins).
    pub duplicates: u64,
    /// Repeats of a key whose content differed from the stored event (must stay 0).
    pub duplicate_mismatches: u64,
    pub faults: HashMap<Fault, u64>,
    /// Why requests were refused with 400, most recent last.
    pub invalid_reasons: Vec<String>,
}

struct State {
    config: StandinConfig,
    rng: Rng,
    script: VecDeque<Fault>,
    stored: HashMap<String, StoredEvent>,
    app_log: VecDeque<(Instant, u64)>,
    identity_logs: HashMap<String, VecDeque<(Instant, u64)>>,
    report: StandinReport,
    stored_count: tokio::sync::watch::Sender<usize>,
    properties: PropertiesState,
}

pub struct Standin {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    server: JoinHandle<()>,
    stored_count: tokio::sync::watch::Receiver<usize>,
    properties_accepted: tokio::sync::watch::Receiver<u64>,
}

impl Drop for Standin {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// What the handler decided; `Drop` closes the connection without an answer.
enum Outcome {
    Answer(StatusCode, String, Option<u64>),
    Drop,
}

impl Standin {
    pub async fn start(config: StandinConfig) -> std::io::Result<Standin> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stored_count, stored_count_rx) = tokio::sync::watch::channel(0);
        let (properties_accepted, properties_accepted_rx) = tokio::sync::watch::channel(0);
        let state = Arc::new(Mutex::new(State {
            stored_count,
            properties: PropertiesState::new(config.user_properties.seed, properties_accepted),
            rng: Rng::new(config.seed),
            config,
            script: VecDeque::new(),
            stored: HashMap::new(),
            app_log: VecDeque::new(),
            identity_logs: HashMap::new(),
            report: StandinReport::default(),
        }));
        let server_state = state.clone();
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = server_state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| serve(state.clone(), request));
                    // A dropped connection ends here with an error, which is the point.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Standin {
            addr,
            state,
            server,
            stored_count: stored_count_rx,
            properties_accepted: properties_accepted_rx,
        })
    }

    /// The base URL, for `--heap-url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Faults for the next requests, in order, before any random ones.
    pub fn script(&self, faults: impl IntoIterator<Item = Fault>) {
        self.lock().script.extend(faults);
    }

    /// Counts `n` events in the app's window as if another sender had just sent them: Heap's
    /// window still holds a predecessor's last minute.
    pub fn fill_app_window(&self, n: u64) {
        self.lock().app_log.push_back((Instant::now(), n));
    }

    /// Changes the limits enforced from now on (Heap's real limit moving under a run).
    pub fn set_limits(&self, limits: RateLimits) {
        self.lock().config.limits = limits;
    }

    /// [`Standin::set_limits`] for a task that outlives this borrow.
    pub fn limits_handle(&self) -> impl Fn(RateLimits) + Send + Sync + 'static {
        let state = self.state.clone();
        move |limits| {
            state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .config
                .limits = limits
        }
    }

    pub fn stored(&self) -> HashMap<String, StoredEvent> {
        self.lock().stored.clone()
    }

    /// Waits until at least `n` distinct events are stored.
    pub async fn wait_until_stored(&self, n: usize) {
        let mut count = self.stored_count.clone();
        let _ = count.wait_for(|stored| *stored >= n).await;
    }

    pub fn report(&self) -> StandinReport {
        self.lock().report.clone()
    }

    /// `add_user_properties`: what was applied, identity → property → value (last write wins).
    pub fn user_properties(&self) -> BTreeMap<String, BTreeMap<String, Json>> {
        self.lock().properties.applied.clone()
    }

    /// `add_user_properties`: its counters.
    pub fn user_properties_report(&self) -> UserPropertiesReport {
        self.lock().properties.report.clone()
    }

    /// `add_user_properties`: every request body received, in order, whatever the answer
    /// (non-UTF-8 bytes replaced), for checks of request shapes and of what left the process.
    pub fn user_property_bodies(&self) -> Vec<String> {
        self.lock().properties.bodies.clone()
    }

    /// `add_user_properties`: faults for its next requests, in order, before any random ones.
    pub fn script_user_properties(&self, faults: impl IntoIterator<Item = Fault>) {
        self.lock().properties.script.extend(faults);
    }

    /// `add_user_properties`: from now on, any request holding one of these identities is a
    /// 400 (replacing the configured set; empty: none).
    pub fn set_rejected_identities(&self, identities: impl IntoIterator<Item = String>) {
        self.lock().config.user_properties.reject_identities = identities.into_iter().collect();
    }

    /// `add_user_properties`: the app's limit from now on, users per `window` (0: none).
    pub fn set_user_properties_limit(&self, app_users: u64, window: Duration) {
        let config = &mut self.lock().config.user_properties;
        config.app_users = app_users;
        config.window = window;
    }

    /// Waits until at least `n` `add_user_properties` requests were accepted.
    pub async fn wait_until_user_property_requests(&self, n: u64) {
        let mut accepted = self.properties_accepted.clone();
        let _ = accepted.wait_for(|accepted| *accepted >= n).await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

async fn serve(
    state: Arc<Mutex<State>>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let properties = match request.uri().path() {
        "/api/track" => false,
        "/api/add_user_properties" => true,
        _ => return Ok(answer(StatusCode::NOT_FOUND, "{}".into(), None)),
    };
    if request.method() != Method::POST {
        return Ok(answer(StatusCode::NOT_FOUND, "{}".into(), None));
    }
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return Err(std::io::Error::other(e)),
    };
    let (outcome, delay) = {
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        if properties {
            (
                state.handle_user_properties(&body),
                state.config.user_properties.response_delay,
            )
        } else {
            (state.handle(&body), state.config.response_delay)
        }
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match outcome {
        Ok(Outcome::Answer(status, text, retry_after)) => Ok(answer(status, text, retry_after)),
        Ok(Outcome::Drop) => Err(std::io::Error::other("stand-in dropped the connection")),
        Err(delay) => {
            tokio::time::sleep(delay).await;
            Ok(answer(StatusCode::OK, "{}".into(), None))
        }
    }
}

fn answer(status: StatusCode, body: String, retry_after: Option<u64>) -> Response<Full<Bytes>> {
    let mut response = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    if let Some(seconds) = retry_after {
        response = response.header("retry-after", seconds.to_string());
    }
    response
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

impl State {
    /// `Err(delay)` means: answer 200 after `delay` (the events are already stored).
    fn handle(&mut self, body: &[u8]) -> Result<Outcome, Duration> {
        self.report.requests += 1;
        if let Some(too_large) = too_large(self.config.max_body_bytes, body) {
            self.report.bodies_too_large += 1;
            return Ok(too_large);
        }
        let (faults, percent) = (&self.config.random_faults, self.config.fault_percent);
        let fault = next_fault(&mut self.script, &mut self.rng, faults, percent);
        if let Some(fault) = fault {
            *self.report.faults.entry(fault).or_insert(0) += 1;
            if let Some(outcome) = fault_outcome(fault) {
                return Ok(outcome);
            }
        }
        let outcome = self.accept(body);
        after_store(fault, outcome)
    }

    fn accept(&mut self, body: &[u8]) -> Outcome {
        let events = match self.validate(body) {
            Ok(events) => events,
            Err((status, reason)) => {
                if status == StatusCode::BAD_REQUEST {
                    self.report.invalid_requests += 1;
                    self.report.invalid_reasons.push(reason.clone());
                }
                return Outcome::Answer(
                    status,
                    serde_json::json!({ "error": reason }).to_string(),
                    None,
                );
            }
        };
        let now = Instant::now();
        let limits = self.config.limits;
        let mut per_identity: HashMap<String, u64> = HashMap::new();
        for event in &events {
            *per_identity
                .entry(event["identity"].as_str().unwrap_or_default().to_string())
                .or_insert(0) += 1;
        }
        let app_used = used(&mut self.app_log, now, limits.window);
        let app_over = limits.app_events > 0 && app_used + events.len() as u64 > limits.app_events;
        let identity_over = limits.identity_events > 0
            && per_identity.iter().any(|(identity, n)| {
                let log = self.identity_logs.entry(identity.clone()).or_default();
                used(log, now, limits.window) + n > limits.identity_events
            });
        if app_over || identity_over {
            self.report.limit_violations += 1;
            self.report.limit_violation_events += events.len() as u64;
            return Outcome::Answer(
                StatusCode::TOO_MANY_REQUESTS,
                r#"{"error":"rate limit exceeded"}"#.into(),
                self.config.limit_retry_after,
            );
        }
        self.app_log.push_back((now, events.len() as u64));
        for (identity, n) in per_identity {
            self.identity_logs
                .entry(identity)
                .or_default()
                .push_back((now, n));
        }
        for event in events {
            let key = event["idempotency_key"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            match self.stored.entry(key) {
                std::collections::hash_map::Entry::Occupied(stored) => {
                    self.report.duplicates += 1;
                    if stored.get().event != event {
                        self.report.duplicate_mismatches += 1;
                    }
                }
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(StoredEvent {
                        event,
                        received_at: now,
                    });
                }
            }
        }
        self.report.accepted_requests += 1;
        self.stored_count.send_replace(self.stored.len());
        Outcome::Answer(StatusCode::OK, "{}".into(), None)
    }

    fn validate(&self, body: &[u8]) -> Result<Vec<Json>, (StatusCode, String)> {
        let bad = |reason: String| (StatusCode::BAD_REQUEST, reason);
        let json: Json =
            serde_json::from_slice(body).map_err(|e| bad(format!("body is not JSON: {e}")))?;
        let app_id = json
            .get("app_id")
            .and_then(Json::as_str)
            .ok_or_else(|| bad("app_id is missing".into()))?;
        if app_id != self.config.app_id {
            return Err((StatusCode::UNAUTHORIZED, "unknown app_id".into()));
        }
        let Some(Json::Array(events)) = json.get("events") else {
            return Err(bad("events is missing".into()));
        };
        if events.is_empty() || events.len() > 1000 {
            return Err(bad(format!("{} events; 1 to 1000 allowed", events.len())));
        }
        for (i, event) in events.iter().enumerate() {
            check_event(event).map_err(|reason| bad(format!("event {i}: {reason}")))?;
            let key = event["idempotency_key"].as_str().unwrap_or_default();
            if self.config.poison_keys.contains(key) {
                return Err(bad(format!("event {i}: rejected (poisoned key {key})")));
            }
        }
        Ok(events.clone())
    }
}

/// The answer a fault gives before the request is looked at; `None` for the faults that
/// store first (shared by both endpoints).
fn fault_outcome(fault: Fault) -> Option<Outcome> {
    let status = |status, retry_after| Some(Outcome::Answer(status, "{}".into(), retry_after));
    match fault {
        Fault::TooManyRequests => status(StatusCode::TOO_MANY_REQUESTS, None),
        Fault::TooManyRequestsRetryAfter(s) => status(StatusCode::TOO_MANY_REQUESTS, Some(s)),
        Fault::InternalError => status(StatusCode::INTERNAL_SERVER_ERROR, None),
        Fault::Unavailable => status(StatusCode::SERVICE_UNAVAILABLE, None),
        Fault::DropBeforeStore => Some(Outcome::Drop),
        Fault::SlowAfterStore(_) | Fault::DropAfterStore => None,
    }
}

/// Heap's 413 for a body over the stand-in's limit (`None`: no limit, or within it).
fn too_large(max_body_bytes: Option<usize>, body: &[u8]) -> Option<Outcome> {
    max_body_bytes.is_some_and(|max| body.len() > max).then(|| {
        Outcome::Answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            r#"{"error":"request body too large"}"#.into(),
            None,
        )
    })
}

/// The next scripted fault, else one of `random` for `percent` of requests.
fn next_fault(
    script: &mut VecDeque<Fault>,
    rng: &mut Rng,
    random: &[Fault],
    percent: u64,
) -> Option<Fault> {
    script
        .pop_front()
        .or_else(|| (!random.is_empty() && rng.percent(percent)).then(|| *rng.pick(random)))
}

/// What a fault that strikes after the store makes of an accepted request: `Err(delay)` is an
/// answer held back `delay` (Heap has stored the request), `Outcome::Drop` a connection closed
/// with no answer; any other fault or outcome is the outcome as it is.
fn after_store(fault: Option<Fault>, outcome: Outcome) -> Result<Outcome, Duration> {
    match (fault, &outcome) {
        (Some(Fault::SlowAfterStore(delay)), Outcome::Answer(StatusCode::OK, ..)) => Err(delay),
        (Some(Fault::DropAfterStore), Outcome::Answer(StatusCode::OK, ..)) => Ok(Outcome::Drop),
        _ => Ok(outcome),
    }
}

fn used(log: &mut VecDeque<(Instant, u64)>, now: Instant, window: Duration) -> u64 {
    while log.front().is_some_and(|(at, _)| *at + window <= now) {
        log.pop_front();
    }
    log.iter().map(|(_, n)| n).sum()
}

/// Checks one track event against Heap's documented contract; the reason names the field.
pub fn check_event(event: &Json) -> Result<(), String> {
    let object = event.as_object().ok_or("not an object")?;
    for key in object.keys() {
        if !matches!(
            key.as_str(),
            "identity" | "event" | "timestamp" | "idempotency_key" | "properties"
        ) {
            return Err(format!("unknown field `{key}`"));
        }
    }
    let text = |field: &str, max: usize| -> Result<(), String> {
        let value = object
            .get(field)
            .and_then(Json::as_str)
            .ok_or(format!("`{field}` is not a string"))?;
        let chars = value.chars().count();
        if chars == 0 || chars > max {
            return Err(format!(
                "`{field}` has {chars} characters; 1 to {max} allowed"
            ));
        }
        Ok(())
    };
    text("identity", 255)?;
    text("event", 1024)?;
    text("idempotency_key", 1024)?;
    let timestamp = object
        .get("timestamp")
        .and_then(Json::as_str)
        .ok_or("`timestamp` is missing")?;
    if !is_iso8601(timestamp) {
        return Err(format!("`timestamp` {timestamp:?} is not ISO 8601"));
    }
    if let Some(properties) = object.get("properties") {
        let properties = properties
            .as_object()
            .ok_or("`properties` is not an object")?;
        for (key, value) in properties {
            if key.chars().count() >= 1024 {
                return Err("a property key has 1024 or more characters".into());
            }
            match value {
                Json::Number(_) => {}
                Json::String(s) if s.chars().count() < 1024 => {}
                Json::String(_) => {
                    return Err(format!("property `{key}` has 1024 or more characters"));
                }
                other => {
                    return Err(format!(
                        "property `{key}` is {other}, not a string or number"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SS`, optional fraction, then `Z` or `±HH:MM`.
fn is_iso8601(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        b.get(range)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    let fixed = b.len() >= 19
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    if !fixed {
        return false;
    }
    let mut rest = &s[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let n = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return false;
        }
        rest = &fraction[n..];
    }
    rest == "Z"
        || (rest.len() == 6
            && matches!(rest.as_bytes()[0], b'+' | b'-')
            && rest.as_bytes()[3] == b':'
            && rest[1..3]
                .bytes()
                .chain(rest[4..6].bytes())
                .all(|c| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_iso8601() {
        for good in [
            "2017-03-10T22:21:56+00:00",
            "2017-03-10T22:21:56.123Z",
            "2017-03-10T22:21:56-05:30",
        ] {
            assert!(is_iso8601(good), "{good}");
        }
        for bad in [
            "2017-03-10 22:21:56",
            "1489184516",
            "2017-03-10T22:21:56",
            "2017-03-10T22:21:56.Z",
        ] {
            assert!(!is_iso8601(bad), "{bad}");
        }
    }

    #[test]
    fn rejects_events_outside_the_contract() {
        let ok = serde_json::json!({"identity":"a","event":"e","timestamp":"2017-03-10T22:21:56Z","idempotency_key":"k","properties":{"n":1,"s":"x"}});
        assert_eq!(check_event(&ok), Ok(()));
        let mut bool_value = ok.clone();
        bool_value["properties"]["b"] = Json::Bool(true);
        assert!(
            check_event(&bool_value)
                .unwrap_err()
                .contains("not a string or number")
        );
        let mut long_identity = ok.clone();
        long_identity["identity"] = Json::String("x".repeat(256));
        assert!(
            check_event(&long_identity)
                .unwrap_err()
                .contains("256 characters")
        );
        let mut extra = ok;
        extra["user_id"] = Json::String("1".into());
        assert!(check_event(&extra).unwrap_err().contains("unknown field"));
    }
}
