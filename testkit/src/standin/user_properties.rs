//! `POST /api/add_user_properties` on the stand-in (heap-facts §2.3, §3–5), enforced strictly,
//! rejecting the whole request with 400 if any user is invalid:
//! - the bulk shape `{app_id, users: [{identity, properties}, ...]}` with 1..=1000 users, or
//!   the single shape `{app_id, identity, properties}`; no other fields;
//! - `app_id` as for track (the configured one, otherwise 401); the same `max_body_bytes`
//!   (413) and, as for track, no Content-Type rule;
//! - `identity` a string of 1..=255 characters; `properties` (optional, as in Heap's OpenAPI)
//!   an object whose keys have 1..=1023 characters and are no casing of `id` (reserved by Heap)
//!   or `user_id` (reserved by Heap's client doc), and whose values are numbers or strings of
//!   under 1024 characters.
//!
//! Accepted properties are applied in request order, and within a request in entry order, so
//! the last write of a key wins, as Heap documents. Faults are this endpoint's own
//! ([`UserPropertiesConfig`]: a script, random ones, a delay), so a test can fault it alone;
//! `reject_identities` makes any request holding one of them a 400 (what bisection isolates);
//! an optional per-app limit on users per window (Heap states none) answers 429 as track's does.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use hyper::StatusCode;
use serde_json::{Map, Value as Json};
use tokio::time::Instant;

use super::{Fault, Outcome, State, after_store, fault_outcome, next_fault, too_large, used};
use crate::rng::Rng;

/// The properties endpoint's own knobs; all off by default.
#[derive(Debug, Clone)]
pub struct UserPropertiesConfig {
    /// Percent of requests that get a random fault from `random_faults`.
    pub fault_percent: u64,
    pub random_faults: Vec<Fault>,
    pub seed: u64,
    /// Identities whose presence makes the whole request a 400.
    pub reject_identities: HashSet<String>,
    /// Users per `window` the app may send; 0: no limit (Heap states none for this endpoint).
    pub app_users: u64,
    pub window: Duration,
    /// `Retry-After` seconds on the limit's 429s.
    pub limit_retry_after: Option<u64>,
    /// Added to every answer of this endpoint.
    pub response_delay: Duration,
}

impl Default for UserPropertiesConfig {
    fn default() -> Self {
        UserPropertiesConfig {
            fault_percent: 0,
            random_faults: vec![
                Fault::TooManyRequests,
                Fault::InternalError,
                Fault::Unavailable,
                Fault::DropBeforeStore,
                Fault::DropAfterStore,
            ],
            seed: 2,
            reject_identities: HashSet::new(),
            app_users: 0,
            window: Duration::from_secs(60),
            limit_retry_after: None,
            response_delay: Duration::ZERO,
        }
    }
}

/// Counters of what the properties endpoint saw.
#[derive(Debug, Default, Clone)]
pub struct UserPropertiesReport {
    /// Every request to the endpoint, whatever its answer.
    pub requests: u64,
    pub accepted_requests: u64,
    /// Answered 400 (the contract, or a rejected identity).
    pub invalid_requests: u64,
    /// Answered 429, injected or for the limit.
    pub too_many_requests: u64,
    /// Answered 429 for the limit.
    pub limit_violations: u64,
    /// Users in the requests refused for the limit.
    pub limit_violation_users: u64,
    /// Answered 401 for another app id.
    pub unknown_app_requests: u64,
    /// Answered 413 for `max_body_bytes`.
    pub bodies_too_large: u64,
    /// Users (entries) in every request whose body had the bulk or single shape.
    pub users_received: u64,
    /// Users (entries) in accepted requests.
    pub users_accepted: u64,
    /// Requests refused with 400 because they held a rejected identity.
    pub rejected_identity_requests: u64,
    pub faults: HashMap<Fault, u64>,
    /// Why requests were refused with 400, most recent last.
    pub invalid_reasons: Vec<String>,
}

/// The endpoint's mutable state, inside the stand-in's one lock.
pub(super) struct PropertiesState {
    pub(super) rng: Rng,
    pub(super) script: VecDeque<Fault>,
    /// Identity → property → value, as applied.
    pub(super) applied: BTreeMap<String, BTreeMap<String, Json>>,
    pub(super) app_log: VecDeque<(Instant, u64)>,
    pub(super) report: UserPropertiesReport,
    pub(super) bodies: Vec<String>,
    pub(super) accepted: tokio::sync::watch::Sender<u64>,
}

impl PropertiesState {
    pub(super) fn new(seed: u64, accepted: tokio::sync::watch::Sender<u64>) -> Self {
        PropertiesState {
            rng: Rng::new(seed),
            script: VecDeque::new(),
            applied: BTreeMap::new(),
            app_log: VecDeque::new(),
            report: UserPropertiesReport::default(),
            bodies: Vec::new(),
            accepted,
        }
    }
}

/// One user of a request, validated.
type Update = (String, Map<String, Json>);

impl State {
    /// As [`State::handle`], for `add_user_properties`.
    pub(super) fn handle_user_properties(&mut self, body: &[u8]) -> Result<Outcome, Duration> {
        let p = &mut self.properties;
        p.report.requests += 1;
        p.bodies.push(String::from_utf8_lossy(body).into_owned());
        if let Ok(json) = serde_json::from_slice::<Json>(body) {
            p.report.users_received += match (json.get("users"), json.get("identity")) {
                (Some(Json::Array(users)), _) => users.len() as u64,
                (None, Some(_)) => 1,
                _ => 0,
            };
        }
        if let Some(too_large) = too_large(self.config.max_body_bytes, body) {
            p.report.bodies_too_large += 1;
            return Ok(too_large);
        }
        let config = &self.config.user_properties;
        let fault = next_fault(
            &mut p.script,
            &mut p.rng,
            &config.random_faults,
            config.fault_percent,
        );
        if let Some(fault) = fault {
            *p.report.faults.entry(fault).or_insert(0) += 1;
            if let Some(outcome) = fault_outcome(fault) {
                if matches!(outcome, Outcome::Answer(StatusCode::TOO_MANY_REQUESTS, ..)) {
                    p.report.too_many_requests += 1;
                }
                return Ok(outcome);
            }
        }
        let outcome = self.accept_user_properties(body);
        after_store(fault, outcome)
    }

    fn accept_user_properties(&mut self, body: &[u8]) -> Outcome {
        let updates = match self.validate_user_properties(body) {
            Ok(updates) => updates,
            Err((status, reason)) => {
                let report = &mut self.properties.report;
                match status {
                    StatusCode::BAD_REQUEST => {
                        report.invalid_requests += 1;
                        report.invalid_reasons.push(reason.clone());
                    }
                    StatusCode::UNAUTHORIZED => report.unknown_app_requests += 1,
                    _ => {}
                }
                return Outcome::Answer(
                    status,
                    serde_json::json!({ "error": reason }).to_string(),
                    None,
                );
            }
        };
        let config = &self.config.user_properties;
        let p = &mut self.properties;
        let now = Instant::now();
        let users = updates.len() as u64;
        if config.app_users > 0
            && used(&mut p.app_log, now, config.window) + users > config.app_users
        {
            p.report.limit_violations += 1;
            p.report.limit_violation_users += users;
            p.report.too_many_requests += 1;
            return Outcome::Answer(
                StatusCode::TOO_MANY_REQUESTS,
                r#"{"error":"rate limit exceeded"}"#.into(),
                config.limit_retry_after,
            );
        }
        p.app_log.push_back((now, users));
        for (identity, properties) in updates {
            let applied = p.applied.entry(identity).or_default();
            for (key, value) in properties {
                applied.insert(key, value);
            }
        }
        p.report.accepted_requests += 1;
        p.report.users_accepted += users;
        p.accepted.send_replace(p.report.accepted_requests);
        Outcome::Answer(StatusCode::OK, "{}".into(), None)
    }

    fn validate_user_properties(
        &mut self,
        body: &[u8],
    ) -> Result<Vec<Update>, (StatusCode, String)> {
        let bad = |reason: String| (StatusCode::BAD_REQUEST, reason);
        let json: Json =
            serde_json::from_slice(body).map_err(|e| bad(format!("body is not JSON: {e}")))?;
        let object = json
            .as_object()
            .ok_or_else(|| bad("body is not an object".into()))?;
        let app_id = object
            .get("app_id")
            .and_then(Json::as_str)
            .ok_or_else(|| bad("app_id is missing".into()))?;
        if app_id != self.config.app_id {
            return Err((StatusCode::UNAUTHORIZED, "unknown app_id".into()));
        }
        let bulk = object.contains_key("users");
        let allowed: &[&str] = if bulk {
            &["app_id", "users"]
        } else {
            &["app_id", "identity", "properties"]
        };
        if let Some(unknown) = object.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(bad(format!("unknown field `{unknown}`")));
        }
        let updates = if bulk {
            let Some(Json::Array(users)) = object.get("users") else {
                return Err(bad("users is not an array".into()));
            };
            if users.is_empty() || users.len() > 1000 {
                return Err(bad(format!("{} users; 1 to 1000 allowed", users.len())));
            }
            users
                .iter()
                .enumerate()
                .map(|(i, user)| check_user(user, false).map_err(|r| bad(format!("user {i}: {r}"))))
                .collect::<Result<Vec<_>, _>>()?
        } else {
            vec![check_user(&json, true).map_err(bad)?]
        };
        let rejected = &self.config.user_properties.reject_identities;
        if let Some((identity, _)) = updates.iter().find(|(id, _)| rejected.contains(id)) {
            self.properties.report.rejected_identity_requests += 1;
            return Err(bad(format!("rejected identity {identity:?}")));
        }
        Ok(updates)
    }
}

/// Checks one user (a bulk entry, or the single-shape body when `single`) against Heap's
/// documented contract; the reason names the field.
pub fn check_user(user: &Json, single: bool) -> Result<(String, Map<String, Json>), String> {
    let object = user.as_object().ok_or("not an object")?;
    if !single
        && let Some(unknown) = object
            .keys()
            .find(|k| !matches!(k.as_str(), "identity" | "properties"))
    {
        return Err(format!("unknown field `{unknown}`"));
    }
    let identity = object
        .get("identity")
        .and_then(Json::as_str)
        .ok_or("`identity` is not a string")?;
    let chars = identity.chars().count();
    if chars == 0 || chars > 255 {
        return Err(format!(
            "`identity` has {chars} characters; 1 to 255 allowed"
        ));
    }
    let properties = match object.get("properties") {
        None => Map::new(),
        Some(Json::Object(properties)) => properties.clone(),
        Some(_) => return Err("`properties` is not an object".into()),
    };
    for (key, value) in &properties {
        let chars = key.chars().count();
        if chars == 0 || chars >= 1024 {
            return Err(format!(
                "a property key has {chars} characters; 1 to 1023 allowed"
            ));
        }
        if key.eq_ignore_ascii_case("id") || key.eq_ignore_ascii_case("user_id") {
            return Err(format!("property key `{key}` is reserved by Heap"));
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
    Ok((identity.to_string(), properties))
}
