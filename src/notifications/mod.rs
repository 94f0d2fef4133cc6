//! S3 event notifications, as S3 writes them into an SQS queue, read into source keys.
//!
//! A message body is one of (AWS S3 User Guide, "Event message structure"):
//! - `{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":…},"object":{"key":…,"size":…,"eTag":…}}}, …]}`;
//! - the test message S3 sends when notifications are configured:
//!   `{"Service":"Amazon S3","Event":"s3:TestEvent",…}`;
//! - either of those wrapped by SNS, when the bucket notifies a topic the queue subscribes to:
//!   `{"Type":"Notification","Message":"<the JSON above, as a string>"}`.
//!
//! Keys arrive URL-encoded the way HTML forms encode them: `%XX` for reserved bytes and `+`
//! for a space. Currents file names contain `+` themselves, so a key ending in
//! `…+0+0000004000.avro` arrives as `…%2B0%2B0000004000.avro`; decoding `+` first and `%XX`
//! second is the only order that gives the key back. Some emulators also encode `/` as `%2F`,
//! which the same decoding handles.
//!
//! - [`sqs`]: the queue, through aws-sdk-sqs.

pub mod sqs;

use serde::Deserialize;

/// One object that a notification says was created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    pub bucket: String,
    /// The full key in the bucket, decoded.
    pub key: String,
    /// Bytes; 0 when the notification does not say.
    pub size: u64,
    /// The ETag without quotes; empty when the notification does not say.
    pub etag: String,
}

/// What one message body holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Created objects; other records (removals, restores) are left out.
    Created {
        objects: Vec<Created>,
        /// Records that are not `ObjectCreated:*`.
        other_events: usize,
    },
    /// `s3:TestEvent`, sent once when the notification is configured.
    Test,
}

/// Why a message body could not be read; the message is named by the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("the body is JSON but not an S3 event notification (no `Records` or `Event`)")]
    NotNotification,
    #[error("record {index}: {reason}")]
    Record { index: usize, reason: String },
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "Records")]
    records: Option<Vec<Record>>,
    #[serde(rename = "Event")]
    event: Option<String>,
    /// SNS: the notification as a string.
    #[serde(rename = "Type")]
    sns_type: Option<String>,
    #[serde(rename = "Message")]
    message: Option<String>,
}

#[derive(Deserialize)]
struct Record {
    #[serde(rename = "eventName", default)]
    event_name: String,
    s3: Option<S3Entity>,
}

#[derive(Deserialize)]
struct S3Entity {
    bucket: Bucket,
    object: Object,
}

#[derive(Deserialize)]
struct Bucket {
    name: String,
}

#[derive(Deserialize)]
struct Object {
    key: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(rename = "eTag", default)]
    etag: Option<String>,
}

/// Reads a message body.
pub fn parse_body(body: &str) -> Result<Body, BodyError> {
    let envelope: Envelope =
        serde_json::from_str(body).map_err(|e| BodyError::NotJson(e.to_string()))?;
    if envelope.sns_type.as_deref() == Some("Notification")
        && let Some(inner) = &envelope.message
    {
        return parse_body(inner);
    }
    if envelope.event.as_deref() == Some("s3:TestEvent") {
        return Ok(Body::Test);
    }
    let Some(records) = envelope.records else {
        return Err(BodyError::NotNotification);
    };
    let mut objects = Vec::new();
    let mut other_events = 0;
    for (index, record) in records.into_iter().enumerate() {
        if !record.event_name.starts_with("ObjectCreated:") {
            other_events += 1;
            continue;
        }
        let Some(s3) = record.s3 else {
            return Err(BodyError::Record {
                index,
                reason: "an ObjectCreated record without its `s3` entity".into(),
            });
        };
        let key = decode_key(&s3.object.key).map_err(|reason| BodyError::Record {
            index,
            reason: format!("key `{}`: {reason}", s3.object.key),
        })?;
        objects.push(Created {
            bucket: s3.bucket.name,
            key,
            size: s3.object.size.unwrap_or(0),
            etag: s3.object.etag.unwrap_or_default().trim_matches('"').into(),
        });
    }
    Ok(Body::Created {
        objects,
        other_events,
    })
}

/// Decodes a key as S3 writes it into a notification: `+` is a space, then `%XX` bytes.
/// Errors: the bytes are not UTF-8 (S3 keys always are).
pub fn decode_key(encoded: &str) -> Result<String, String> {
    let spaced = encoded.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|key| key.into_owned())
        .map_err(|e| format!("the decoded key is not UTF-8: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(event: &str, key: &str) -> String {
        format!(
            r#"{{"eventVersion":"2.1","eventSource":"aws:s3","eventName":"{event}","s3":{{"bucket":{{"name":"b"}},"object":{{"key":"{key}","size":12,"eTag":"0123abc","sequencer":"00A"}}}}}}"#
        )
    }

    #[test]
    fn decodes_keys_as_s3_encodes_them() {
        let cases = [
            // A Currents file name: `+` in the name arrives as %2B.
            (
                "currents/event_type%3Dusers.messages.email.Open/date%3D2026-11-27-13/277540.%2B0%2B0000004000.avro",
                "currents/event_type=users.messages.email.Open/date=2026-11-27-13/277540.+0+0000004000.avro",
            ),
            ("a+b/c%20d", "a b/c d"),
            ("caf%C3%A9/%E2%9C%93.avro", "café/✓.avro"),
            // Emulators that encode `/` too.
            ("a%2Fb%2F%2Fc", "a/b//c"),
            ("100%25", "100%"),
        ];
        for (encoded, key) in cases {
            assert_eq!(decode_key(encoded).unwrap(), key, "{encoded}");
        }
        assert!(decode_key("bad%FF").unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn reads_created_records_and_counts_the_others() {
        let body = format!(
            r#"{{"Records":[{},{}]}}"#,
            record("ObjectCreated:Put", "k%2B1.avro"),
            record("ObjectRemoved:Delete", "gone.avro")
        );
        assert_eq!(
            parse_body(&body).unwrap(),
            Body::Created {
                objects: vec![Created {
                    bucket: "b".into(),
                    key: "k+1.avro".into(),
                    size: 12,
                    etag: "0123abc".into()
                }],
                other_events: 1
            }
        );
    }

    #[test]
    fn reads_test_events_and_sns_envelopes() {
        let test = r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Time":"2026-11-29T10:00:00.000Z","Bucket":"b","RequestId":"x","HostId":"y"}"#;
        assert_eq!(parse_body(test).unwrap(), Body::Test);
        let inner = format!(
            r#"{{"Records":[{}]}}"#,
            record("ObjectCreated:CompleteMultipartUpload", "a.avro")
        );
        let sns = serde_json::json!({"Type": "Notification", "Message": inner}).to_string();
        match parse_body(&sns).unwrap() {
            Body::Created { objects, .. } => assert_eq!(objects[0].key, "a.avro"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refuses_what_is_not_a_notification() {
        assert!(matches!(parse_body("{"), Err(BodyError::NotJson(_))));
        assert_eq!(
            parse_body(r#"{"hello":1}"#),
            Err(BodyError::NotNotification)
        );
        let no_entity = r#"{"Records":[{"eventName":"ObjectCreated:Put"}]}"#;
        assert!(matches!(
            parse_body(no_entity),
            Err(BodyError::Record { index: 0, .. })
        ));
    }
}
