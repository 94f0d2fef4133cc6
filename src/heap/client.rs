//! The HTTP call to Heap's bulk track endpoint, and what each answer means for delivery.
//!
//! Heap documents only 200 and 400 (heap-facts §5). Assumed where it is silent: 429 and 408
//! are rate limiting or timeouts and retried, as are all 5xx; other 4xx reject the request's
//! content; 401, 403 and 404 mean the URL or app id is wrong, and a redirect means the URL is.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};

pub use super::pacer::Scope;

/// What Heap's answer means for the events in a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Accepted,
    /// Try again later (no sooner than `retry_after` if Heap said so).
    Retry {
        reason: String,
        retry_after: Option<Duration>,
        /// For a 429: the rate limit the body names, read from the whole body (the reason
        /// holds only its start); `None` when it names none, or for other answers.
        scope: Option<Scope>,
    },
    /// Heap refused the content: split the batch to find the offending events.
    Rejected {
        reason: String,
    },
    /// Configuration is wrong: stop, send nothing more, park nothing.
    Fatal {
        reason: String,
    },
}

/// Heap's answer and the HTTP status it came with (`None` if no response arrived).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: Option<u16>,
    pub answer: Answer,
    /// Whether the request reached Heap's server (false only when no connection was made):
    /// a request sent but not answered may have been stored, and counted for the rate limit.
    pub connected: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--heap-url `{url}` is not a valid http(s) URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

/// Sends one bulk body and says what the answer means. The seam between delivery's rules and
/// HTTP: [`HeapClient`] in production, a scripted fake in unit tests.
pub trait Transport: Send + Sync + 'static {
    /// Never fails: every outcome, a transport error included, is a [`Reply`].
    fn post(&self, body: Vec<u8>) -> Pin<Box<dyn Future<Output = Reply> + Send + '_>>;

    /// The same host's `add_user_properties` endpoint, with the same answer rules; `None`
    /// where there is none (scripted fakes).
    fn user_properties(&self) -> Option<Arc<dyn Transport>> {
        None
    }
}

impl Transport for HeapClient {
    fn post(&self, body: Vec<u8>) -> Pin<Box<dyn Future<Output = Reply> + Send + '_>> {
        Box::pin(HeapClient::post(self, body))
    }

    fn user_properties(&self) -> Option<Arc<dyn Transport>> {
        Some(Arc::new(HeapClient {
            http: self.http.clone(),
            post_url: self.user_properties_url.clone(),
            user_properties_url: self.user_properties_url.clone(),
        }))
    }
}

/// Heap's bulk track endpoint (and, through [`Transport::user_properties`], its
/// `add_user_properties` endpoint on the same host: heap-facts §1).
pub struct HeapClient {
    http: reqwest::Client,
    /// Where [`HeapClient::post`] sends: `/api/track`, or `/api/add_user_properties` for the
    /// client [`Transport::user_properties`] makes (same connection pool and answer rules).
    post_url: reqwest::Url,
    user_properties_url: reqwest::Url,
}

impl HeapClient {
    /// `base_url` is e.g. `https://heapanalytics.com` or `https://c.eu.heap-api.com`.
    pub fn new(base_url: &str, request_timeout: Duration) -> Result<Self, ClientError> {
        let bad = |reason: String| ClientError::BadUrl {
            url: base_url.to_string(),
            reason,
        };
        let base = reqwest::Url::parse(base_url).map_err(|e| bad(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
            return Err(bad("expected http:// or https:// and a host".into()));
        }
        let endpoint = |path: &str| {
            base.join(&format!("{}/api/{path}", base.path().trim_end_matches('/')))
                .map_err(|e| bad(e.to_string()))
        };
        let track_url = endpoint("track")?;
        let user_properties_url = endpoint("add_user_properties")?;
        let http = reqwest::Client::builder()
            .timeout(request_timeout)
            .connect_timeout(request_timeout.min(Duration::from_secs(10)))
            // A redirect would turn the POST into something else: treat it as a wrong URL.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("currents-heap/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Build(e.to_string()))?;
        Ok(HeapClient {
            http,
            post_url: track_url,
            user_properties_url,
        })
    }

    /// Where this client posts (the track endpoint, for the client the commands build).
    pub fn track_url(&self) -> &str {
        self.post_url.as_str()
    }

    /// Posts one bulk body. Never fails: every outcome is a [`Reply`].
    pub async fn post(&self, body: Vec<u8>) -> Reply {
        let response = self
            .http
            .post(self.post_url.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(e) => {
                return Reply {
                    status: None,
                    connected: !e.is_connect(),
                    answer: transport_failure(&e),
                };
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        // Reading the body can fail too (connection dropped mid-answer): that is a retry.
        let text = match response.text().await {
            Ok(text) => text,
            Err(e) if status.is_success() => {
                return Reply {
                    status: Some(status.as_u16()),
                    connected: true,
                    answer: Answer::Retry {
                        reason: format!("Heap answered {status} but the body was cut off: {e}"),
                        retry_after: None,
                        scope: None,
                    },
                };
            }
            Err(_) => String::new(),
        };
        Reply {
            status: Some(status.as_u16()),
            connected: true,
            answer: classify(status, &text, retry_after),
        }
    }
}

pub(crate) fn classify(status: StatusCode, body: &str, retry_after: Option<Duration>) -> Answer {
    let reason = || format!("Heap answered {status}{}", excerpt(body));
    match status.as_u16() {
        200..=299 => Answer::Accepted,
        401 | 403 => Answer::Fatal {
            reason: format!(
                "{}: check the Heap app id (HEAP_APP_ID, --heap-app-id or the file of --heap-app-id-file)",
                reason()
            ),
        },
        404 => Answer::Fatal {
            reason: format!("{}: check --heap-url / HEAP_API_URL", reason()),
        },
        300..=399 => Answer::Fatal {
            reason: format!("{} (a redirect): check --heap-url / HEAP_API_URL", reason()),
        },
        429 => Answer::Retry {
            reason: reason(),
            retry_after,
            scope: scope_named(body),
        },
        408 | 425 | 500..=599 => Answer::Retry {
            reason: reason(),
            retry_after,
            scope: None,
        },
        400..=499 => Answer::Rejected { reason: reason() },
        _ => Answer::Retry {
            reason: reason(),
            retry_after,
            scope: None,
        },
    }
}

/// The rate limit a 429's body names, searched in the whole body. Heap documents no 429 body
/// (heap-facts §5), so this reads words: "identity" names the per-identity limit (it wins,
/// being the narrower claim); the word "app" or "app_id" the app's. Anything else names none.
fn scope_named(body: &str) -> Option<Scope> {
    let lower = body.to_ascii_lowercase();
    let mut words = lower.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
    if lower.contains("identity") {
        Some(Scope::Identity)
    } else if words.any(|w| w == "app" || w == "app_id") {
        Some(Scope::App)
    } else {
        None
    }
}

fn transport_failure(e: &reqwest::Error) -> Answer {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    // The error's source chain says why (reset, refused, ...); the URL is not secret.
    let mut reason = format!("request to Heap {what}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        reason.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    Answer::Retry {
        reason,
        retry_after: None,
        scope: None,
    }
}

/// `Retry-After` is either seconds or an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds.min(24 * 3600)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

/// The start of a response body, for messages.
fn excerpt(body: &str) -> String {
    let body = body.trim();
    if body.is_empty() || body == "{}" {
        return String::new();
    }
    let cut: String = body.chars().take(200).collect();
    format!(": {cut}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_heap_answers() {
        let s = |c| StatusCode::from_u16(c).unwrap();
        assert_eq!(classify(s(200), "{}", None), Answer::Accepted);
        assert!(
            matches!(classify(s(400), "bad", None), Answer::Rejected { ref reason } if reason.contains("400") && reason.contains("bad"))
        );
        assert!(matches!(
            classify(s(413), "", None),
            Answer::Rejected { .. }
        ));
        for code in [401, 403, 404, 301] {
            assert!(
                matches!(classify(s(code), "", None), Answer::Fatal { .. }),
                "{code}"
            );
        }
        let after = Some(Duration::from_secs(3));
        assert_eq!(
            classify(s(429), "", after),
            Answer::Retry {
                reason: "Heap answered 429 Too Many Requests".into(),
                retry_after: after,
                scope: None,
            }
        );
        for code in [408, 500, 502, 503, 504] {
            assert!(
                matches!(classify(s(code), "", None), Answer::Retry { .. }),
                "{code}"
            );
        }
    }

    #[test]
    fn parses_retry_after_in_both_forms() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn rejects_bad_urls_and_builds_the_track_url() {
        assert!(HeapClient::new("heapanalytics.com", Duration::from_secs(1)).is_err());
        assert!(HeapClient::new("ftp://x", Duration::from_secs(1)).is_err());
        let client = HeapClient::new("https://c.eu.heap-api.com/", Duration::from_secs(1)).unwrap();
        assert_eq!(client.track_url(), "https://c.eu.heap-api.com/api/track");
        let proxied = HeapClient::new("http://127.0.0.1:9/heap", Duration::from_secs(1)).unwrap();
        assert_eq!(proxied.track_url(), "http://127.0.0.1:9/heap/api/track");
    }
}
