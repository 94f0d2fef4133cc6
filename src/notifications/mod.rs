//! S3 event notifications, as S3 or EventBridge writes them into an SQS queue, read into
//! source keys.
//!
//! A message body is one of:
//! - an S3 event notification (AWS S3 User Guide, "Event message structure"):
//!   `{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":…},"object":{"key":…,"size":…,"eTag":…}}}, …]}`;
//! - the test message S3 sends when notifications are configured:
//!   `{"Service":"Amazon S3","Event":"s3:TestEvent",…}`;
//! - an EventBridge event, when an EventBridge rule targets the queue (AWS S3 User Guide,
//!   "EventBridge event message structure"): one object per message,
//!   `{"source":"aws.s3","detail-type":"Object Created","detail":{"bucket":{"name":…},"object":{"key":…,"size":…,"etag":…}}}`;
//! - any of those wrapped by SNS, when the bucket or the rule notifies a topic the queue
//!   subscribes to: `{"Type":"Notification","Message":"<the JSON above, as a string>"}`.
//!
//! # Keys
//! In S3 event notifications, keys arrive URL-encoded the way HTML forms encode them: `%XX`
//! for reserved bytes and `+` for a space. Currents file names contain `+` themselves, so a
//! key ending in `…+0+0000004000.avro` arrives as `…%2B0%2B0000004000.avro`; decoding `+`
//! first and `%XX` second is the only order that gives the key back. Some emulators also
//! encode `/` as `%2F`, which the same decoding handles.
//!
//! EventBridge events carry the key as it is, not encoded: the S3 guide's EventBridge page
//! documents `object.key` as the key name with no encoding (its notification page says "URL
//! encoded"), and consumers that decoded it broke keys holding `+` or `%`
//! (aws-solutions-library-samples/guidance-for-medialake-on-aws#21). Decoding it would turn
//! every Currents `+` into a space, so it is taken verbatim.
//!
//! # What is read and what is left out
//! Records that are not `ObjectCreated:*` and EventBridge events that are not `Object
//! Created` (`Object Deleted`, `Object Restore Completed`, …) are counted as
//! `other_events`. A record that names a created object but cannot be read (no `s3` entity,
//! a key that does not decode, a field of the wrong type) is reported in `unreadable` beside
//! the records that can: one broken record does not hide the others. Only a body that is
//! not JSON, or not one of the shapes above, is an error.
//!
//! - [`sqs`]: the queue, through aws-sdk-sqs.
//! - [`wiring`]: whether the bucket's notifications (or an EventBridge rule) reach the queue.

pub mod sqs;
pub mod wiring;

use serde::Deserialize;
use serde_json::Value;

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
        /// Records or events that are not object creations.
        other_events: usize,
        /// Records that name a created object but cannot be read, in body order.
        unreadable: Vec<RecordError>,
    },
    /// `s3:TestEvent`, sent once when the notification is configured.
    Test,
}

/// Why a message body could not be read at all; the message is named by the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error(
        "the body is JSON but not an S3 event notification (no `Records` or `Event`) nor an S3 EventBridge event (`source` aws.s3 with a `detail-type`)"
    )]
    NotNotification,
}

/// One record of a body that names a created object but cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record {index}: {reason}")]
pub struct RecordError {
    /// The record's index in `Records` (0 for an EventBridge event).
    pub index: usize,
    pub reason: String,
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

/// An object as both shapes name it: `eTag` in notifications, `etag` in EventBridge.
#[derive(Deserialize)]
struct Object {
    key: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(rename = "eTag", alias = "etag", default)]
    etag: Option<String>,
}

impl Object {
    fn created(self, bucket: Bucket, key: String) -> Created {
        Created {
            bucket: bucket.name,
            key,
            size: self.size.unwrap_or(0),
            etag: self.etag.unwrap_or_default().trim_matches('"').into(),
        }
    }
}

/// Reads a message body.
pub fn parse_body(body: &str) -> Result<Body, BodyError> {
    let value: Value = serde_json::from_str(body).map_err(|e| BodyError::NotJson(e.to_string()))?;
    let Value::Object(envelope) = value else {
        return Err(BodyError::NotNotification);
    };
    let text = |field: &str| envelope.get(field).and_then(Value::as_str);
    if text("Type") == Some("Notification")
        && let Some(inner) = text("Message")
    {
        return parse_body(inner);
    }
    if text("Event") == Some("s3:TestEvent") {
        return Ok(Body::Test);
    }
    if let Some(Value::Array(records)) = envelope.get("Records") {
        return Ok(notification(records));
    }
    if text("source") == Some("aws.s3")
        && let Some(detail_type) = text("detail-type")
    {
        return Ok(eventbridge(detail_type, envelope.get("detail")));
    }
    Err(BodyError::NotNotification)
}

/// The records of an S3 event notification, each read on its own.
fn notification(records: &[Value]) -> Body {
    let mut objects = Vec::new();
    let mut other_events = 0;
    let mut unreadable = Vec::new();
    for (index, record) in records.iter().enumerate() {
        let event_name = record.get("eventName").and_then(Value::as_str);
        if !event_name.is_some_and(|name| name.starts_with("ObjectCreated:")) {
            other_events += 1;
            continue;
        }
        let read = match record.get("s3") {
            None => Err("an ObjectCreated record without its `s3` entity".to_string()),
            Some(s3) => S3Entity::deserialize(s3)
                .map_err(|e| format!("its `s3` entity cannot be read: {e}"))
                .and_then(|s3| {
                    let key = decode_key(&s3.object.key)
                        .map_err(|reason| format!("key `{}`: {reason}", s3.object.key))?;
                    Ok(s3.object.created(s3.bucket, key))
                }),
        };
        match read {
            Ok(created) => objects.push(created),
            Err(reason) => unreadable.push(RecordError { index, reason }),
        }
    }
    Body::Created {
        objects,
        other_events,
        unreadable,
    }
}

/// An S3 event delivered by EventBridge: one object, its key not encoded.
fn eventbridge(detail_type: &str, detail: Option<&Value>) -> Body {
    #[derive(Deserialize)]
    struct Detail {
        bucket: Bucket,
        object: Object,
    }
    if detail_type != "Object Created" {
        return Body::Created {
            objects: Vec::new(),
            other_events: 1,
            unreadable: Vec::new(),
        };
    }
    let read = match detail {
        None => Err("an Object Created event without its `detail`".to_string()),
        Some(detail) => Detail::deserialize(detail)
            .map_err(|e| format!("its `detail` cannot be read: {e}"))
            .map(|detail| {
                let key = detail.object.key.clone();
                detail.object.created(detail.bucket, key)
            }),
    };
    let (objects, unreadable) = match read {
        Ok(created) => (vec![created], Vec::new()),
        Err(reason) => (Vec::new(), vec![RecordError { index: 0, reason }]),
    };
    Body::Created {
        objects,
        other_events: 0,
        unreadable,
    }
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
                other_events: 1,
                unreadable: vec![]
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
        // A source other than S3 on the same queue.
        let other = r#"{"source":"aws.ec2","detail-type":"EC2 Instance State-change Notification","detail":{}}"#;
        assert_eq!(parse_body(other), Err(BodyError::NotNotification));
        assert_eq!(parse_body("[1]"), Err(BodyError::NotNotification));
    }

    /// An EventBridge event as the S3 guide shows it, for `key` (verbatim JSON text).
    fn eventbridge(detail_type: &str, key: &str) -> String {
        format!(
            r#"{{"version":"0","id":"17793124-05d4-b198-2fde-7ededc63b103","detail-type":"{detail_type}","source":"aws.s3","account":"111122223333","time":"2026-11-12T00:00:00Z","region":"ca-central-1","resources":["arn:aws:s3:::b"],"detail":{{"version":"0","bucket":{{"name":"b"}},"object":{{"key":"{key}","size":5,"etag":"b1946ac92492d2347c6235b4d2611184","sequencer":"00617F08299329D189"}},"request-id":"N4N7GDK58NMKJ12R","requester":"123456789012","source-ip-address":"1.2.3.4","reason":"PutObject"}}}}"#
        )
    }

    #[test]
    fn reads_eventbridge_object_created_with_the_key_verbatim() {
        // The key is not encoded in EventBridge: `+` stays a plus, `%2B` stays as written.
        let key = "currents/event_type=users.messages.email.Open/date=2026-11-27-13/277540.+0+0000004000 %2B.avro";
        assert_eq!(
            parse_body(&eventbridge("Object Created", key)).unwrap(),
            Body::Created {
                objects: vec![Created {
                    bucket: "b".into(),
                    key: key.into(),
                    size: 5,
                    etag: "b1946ac92492d2347c6235b4d2611184".into()
                }],
                other_events: 0,
                unreadable: vec![]
            }
        );
        // Wrapped by SNS when the rule targets a topic the queue subscribes to.
        let sns = serde_json::json!({"Type": "Notification", "Message": eventbridge("Object Created", "a+b.avro")})
            .to_string();
        match parse_body(&sns).unwrap() {
            Body::Created { objects, .. } => assert_eq!(objects[0].key, "a+b.avro"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn other_eventbridge_events_are_counted_and_a_broken_one_is_reported() {
        for detail_type in [
            "Object Deleted",
            "Object Restore Completed",
            "Object Tags Added",
        ] {
            assert_eq!(
                parse_body(&eventbridge(detail_type, "a.avro")).unwrap(),
                Body::Created {
                    objects: vec![],
                    other_events: 1,
                    unreadable: vec![]
                },
                "{detail_type}"
            );
        }
        let no_key = r#"{"source":"aws.s3","detail-type":"Object Created","detail":{"bucket":{"name":"b"},"object":{"size":1}}}"#;
        let no_detail = r#"{"source":"aws.s3","detail-type":"Object Created"}"#;
        for body in [no_key, no_detail] {
            match parse_body(body).unwrap() {
                Body::Created {
                    objects,
                    unreadable,
                    ..
                } => {
                    assert!(objects.is_empty(), "{body}");
                    assert_eq!(unreadable.len(), 1, "{body}");
                    assert_eq!(unreadable[0].index, 0);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_broken_record_is_reported_beside_the_good_ones() {
        let body = format!(
            r#"{{"Records":[{},{{"eventName":"ObjectCreated:Put"}},{},{},{}]}}"#,
            record("ObjectCreated:Put", "good1.avro"),
            record("ObjectCreated:Put", "bad%FF.avro"),
            r#"{"eventName":"ObjectCreated:Copy","s3":{"bucket":{"name":"b"},"object":{"key":7}}}"#,
            record("ObjectCreated:Post", "good2.avro"),
        );
        let Body::Created {
            objects,
            other_events,
            unreadable,
        } = parse_body(&body).unwrap()
        else {
            panic!("not created")
        };
        let keys: Vec<&str> = objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["good1.avro", "good2.avro"]);
        assert_eq!(other_events, 0);
        let indexes: Vec<usize> = unreadable.iter().map(|r| r.index).collect();
        assert_eq!(indexes, [1, 2, 3]);
        assert!(unreadable[0].reason.contains("without its `s3` entity"));
        assert!(unreadable[1].reason.contains("UTF-8"), "{}", unreadable[1]);
        assert!(
            unreadable[2].reason.contains("cannot be read"),
            "{}",
            unreadable[2]
        );
        assert!(unreadable[2].to_string().starts_with("record 3: "));
    }
}
