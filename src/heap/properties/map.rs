//! Braze event → user-property update, by the rule in the module above (its table).

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::{Map, Value as Json};

use super::{
    Field, GLOBAL_SUBSCRIPTION, GROUP_SUBSCRIPTION, PROFILE_UPDATE, PropertyConfig, RANDOM_BUCKET,
};
use crate::currents::event::{CustomHttpEvent, Property};
use crate::currents::value::{Value, parse_lenient};
use crate::heap::map::{
    FlatObject, IdentitySource, MAX_IDENTITY_CHARS, event_millis, identity_of, text, with_value,
};

/// When an update happened: the event's `time_ms` (else `time` × 1000), then its event id.
/// A property only ever moves to a later stamp within a run.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    pub millis: i64,
    pub id: Arc<str>,
}

/// One user's properties from one event.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub identity: Arc<str>,
    pub stamp: Stamp,
    /// Names with the prefix, values strings or numbers; never empty.
    pub properties: Map<String, Json>,
    /// Values or names cut to 1023 characters.
    pub truncated: u32,
    /// Properties dropped: a custom attribute colliding with a field's name, a name Heap
    /// reserves (any casing of `id` or `user_id`), custom attributes that are not an object.
    pub dropped: u32,
}

/// What became of one event for the user-properties output.
#[derive(Debug, Clone, PartialEq)]
pub enum Mapped {
    Update(Update),
    /// Not a type the allowlist names, or nothing allowlisted in it: no update (not counted).
    Nothing,
    /// An update without an identity under the identity policy: skipped and counted.
    NoIdentity,
    /// Cannot be sent: parked with this reason.
    Unsendable(String),
}

/// Maps events to updates under one configuration.
#[derive(Debug, Clone)]
pub struct PropertyMapper {
    config: PropertyConfig,
    identity: Vec<IdentitySource>,
}

impl PropertyMapper {
    /// `identity` is the events' identity policy.
    pub fn new(config: PropertyConfig, identity: Vec<IdentitySource>) -> Self {
        PropertyMapper { config, identity }
    }

    pub fn config(&self) -> &PropertyConfig {
        &self.config
    }

    /// Whether events of this type can yield an update.
    pub fn wants(&self, event_type: &str) -> bool {
        self.config.wants(event_type)
    }

    pub fn map(&self, event: &CustomHttpEvent) -> Mapped {
        if !self.wants(&event.event_type) {
            return Mapped::Nothing;
        }
        let (json, adjustments, unreadable) = self.write(event);
        let Ok(Json::Object(mut properties)) = serde_json::from_slice::<Json>(&json) else {
            return Mapped::Unsendable("the user properties are not a JSON object".into());
        };
        let before = properties.len();
        properties.retain(|name, _| {
            let lower = name.to_ascii_lowercase();
            lower != "id" && lower != "user_id"
        });
        let reserved = before - properties.len();
        if properties.is_empty() {
            // Nothing to send because the event is malformed is parked (seen, counted,
            // replayable once fixed); nothing because nothing allowlisted changed is not.
            return match self.malformed(event, unreadable) {
                Some(reason) => Mapped::Unsendable(reason),
                None => Mapped::Nothing,
            };
        }
        let Some(identity) = identity_of(&self.identity, event) else {
            return Mapped::NoIdentity;
        };
        let chars = identity.chars().count();
        if chars > MAX_IDENTITY_CHARS {
            return Mapped::Unsendable(format!(
                "identity is {chars} characters; Heap allows at most {MAX_IDENTITY_CHARS}"
            ));
        }
        let millis = event_millis(event);
        Mapped::Update(Update {
            identity: Arc::from(identity),
            stamp: Stamp {
                millis,
                id: Arc::from(event.id.as_str()),
            },
            properties,
            truncated: adjustments.truncated,
            dropped: adjustments.collisions_dropped + reserved as u32 + unreadable,
        })
    }

    /// The event's allowlisted properties as one flat object: the fields first, so that a
    /// custom attribute of the same name is the one dropped. Also 1 when custom attributes
    /// are allowlisted but the event's are not a JSON object (read once, here).
    fn write(&self, event: &CustomHttpEvent) -> (Vec<u8>, crate::heap::map::Adjustments, u32) {
        let mut out = FlatObject::new(&self.config.prefix);
        let (mut shadowing, mut unreadable) = (0, 0);
        let fields = &self.config.fields;
        let has = |f: &Field| fields.contains(f);
        match &*event.event_type {
            GLOBAL_SUBSCRIPTION if has(&Field::Subscription) => {
                if let (Some(channel), Some(status)) = (
                    event.property("channel").and_then(text),
                    event.property("subscription_status"),
                ) {
                    let channel = channel.trim().to_lowercase().replace(' ', "_");
                    if !channel.is_empty() {
                        out.put_property(&format!("{channel}_subscription"), status);
                    }
                }
            }
            GROUP_SUBSCRIPTION if has(&Field::SubscriptionGroup) => {
                if let (Some(group), Some(status)) = (
                    event.property("subscription_group_id").and_then(text),
                    event.property("subscription_status"),
                ) {
                    out.put_property(&format!("subscription_group.{group}"), status);
                }
            }
            RANDOM_BUCKET if has(&Field::RandomBucketNumber) => {
                if let Some(number) = event.property("random_bucket_number") {
                    out.put_property("random_bucket_number", number);
                }
            }
            PROFILE_UPDATE => {
                for field in fields {
                    if let Field::Profile(name) = field
                        && let Some(value) = event.property(name)
                    {
                        out.put_property(name, value);
                    }
                }
                (shadowing, unreadable) = self.custom_attributes(event, &mut out);
            }
            _ => {}
        }
        let (json, mut adjustments) = out.finish();
        adjustments.collisions_dropped += shadowing;
        (json, adjustments, unreadable)
    }

    /// The allowlisted custom attributes, each under its own name. Returns how many were
    /// dropped for taking a field's name, and 1 if the field is there but not a JSON object.
    fn custom_attributes(&self, event: &CustomHttpEvent, out: &mut FlatObject<'_>) -> (u32, u32) {
        let all = self.config.fields.contains(&Field::CustomAttributes);
        let named = |name: &str| {
            all || self
                .config
                .fields
                .iter()
                .any(|f| matches!(f, Field::CustomAttribute(n) if n == name))
        };
        if !all
            && !self
                .config
                .fields
                .iter()
                .any(|f| matches!(f, Field::CustomAttribute(_)))
        {
            return (0, 0);
        }
        let Some(property) = event.property("custom_attributes") else {
            return (0, 0);
        };
        let (mut shadowing, mut object) = (0, false);
        with_object(property, |fields| {
            object = true;
            for (name, value) in fields {
                if !named(name) {
                    continue;
                }
                if shadows_a_field(name) {
                    shadowing += 1;
                } else {
                    out.put(name, value);
                }
            }
        });
        (shadowing, u32::from(!object))
    }

    /// Why an allowlisted event yields nothing because of its content, if it does
    /// (`unreadable`: its custom attributes are not a JSON object, from [`Self::write`]).
    fn malformed(&self, event: &CustomHttpEvent, unreadable: u32) -> Option<String> {
        let has = |f: &Field| self.config.fields.contains(f);
        let missing = |name: &str| event.property(name).and_then(text).is_none();
        match &*event.event_type {
            GLOBAL_SUBSCRIPTION if missing("channel") || missing("subscription_status") => {
                Some("the subscription change has no `channel` or no `subscription_status`".into())
            }
            GROUP_SUBSCRIPTION if has(&Field::SubscriptionGroup)
                && (missing("subscription_group_id") || missing("subscription_status")) =>
            {
                Some("the subscription group change has no `subscription_group_id` or no `subscription_status`".into())
            }
            PROFILE_UPDATE if unreadable > 0 => {
                Some("`custom_attributes` is not a JSON object, and nothing else allowlisted changed".into())
            }
            _ => None,
        }
    }
}

/// Whether a custom attribute's name is one a field or another event type writes: the
/// profile fields (allowlisted or not: a custom `email_address` must not pass for the field),
/// `random_bucket_number`, `<channel>_subscription` and `subscription_group`. Such an
/// attribute is dropped and counted, whatever the order of events, so the property keeps one
/// source.
fn shadows_a_field(name: &str) -> bool {
    let top = name.split('.').next().unwrap_or(name);
    super::PROFILE_FIELDS.contains(&top)
        || top == "random_bucket_number"
        || top == "subscription_group"
        || top.ends_with("_subscription")
}

/// Runs `f` on the fields of a property that holds a JSON object (as JSON text, as Braze
/// writes `custom_attributes`, or as an object).
fn with_object(property: &Property, f: impl FnOnce(&[(Cow<'_, str>, Value<'_>)])) {
    with_value(property, |value| match value {
        Value::Object(fields) => f(fields),
        Value::String(text) => {
            if let Ok((Value::Object(fields), _)) = parse_lenient(text) {
                f(&fields);
            }
        }
        _ => {}
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::currents::datum::Datum;
    use crate::currents::event::User;

    fn mapper(fields: &str) -> PropertyMapper {
        PropertyMapper::new(
            PropertyConfig {
                fields: fields.split(',').map(|f| f.parse().unwrap()).collect(),
                ..PropertyConfig::default()
            },
            vec![IdentitySource::ExternalUserId],
        )
    }

    fn event(event_type: &str, properties: &[(&str, &str)]) -> CustomHttpEvent {
        CustomHttpEvent {
            event_type: Arc::from(event_type),
            id: "e1".into(),
            time: 1_764_248_400,
            user: User {
                external_user_id: Some("u1".into()),
                ..User::default()
            },
            properties: properties
                .iter()
                .map(|(k, v)| (Arc::from(*k), Property::Avro(Datum::String((*v).into()))))
                .collect(),
        }
    }

    #[test]
    fn a_custom_attribute_never_passes_for_a_field_or_another_type_s_property() {
        let profile = event(
            PROFILE_UPDATE,
            &[(
                "custom_attributes",
                r#"{"plan":"pro","email_address":"ca@x","home_city":"CA","email_subscription":"x","subscription_group":{"g1":"y"},"random_bucket_number":3}"#,
            )],
        );
        let Mapped::Update(update) = mapper("custom_attributes").map(&profile) else {
            panic!("an update");
        };
        assert_eq!(
            Json::Object(update.properties),
            serde_json::json!({"braze_plan": "pro"})
        );
        assert_eq!(update.dropped, 5);
    }

    #[test]
    fn a_malformed_event_is_parked_with_its_reason_not_dropped_in_silence() {
        let bad = event(PROFILE_UPDATE, &[("custom_attributes", "{not json")]);
        assert!(matches!(
            mapper("custom_attributes").map(&bad),
            Mapped::Unsendable(reason) if reason.contains("custom_attributes")
        ));
        let no_channel = event(
            GLOBAL_SUBSCRIPTION,
            &[("subscription_status", "Subscribed")],
        );
        assert!(matches!(
            mapper("subscription").map(&no_channel),
            Mapped::Unsendable(reason) if reason.contains("channel")
        ));
        // Nothing allowlisted changed: no update, and nothing to park.
        let unchanged = event(PROFILE_UPDATE, &[("first_name", "Ann")]);
        assert_eq!(mapper("home_city").map(&unchanged), Mapped::Nothing);
    }

    #[test]
    fn the_stamp_is_time_ms_then_the_event_id() {
        let mut profile = event(PROFILE_UPDATE, &[("home_city", "Paris")]);
        profile.properties.push((
            Arc::from("time_ms"),
            Property::Avro(Datum::Long(1_764_248_400_123)),
        ));
        let Mapped::Update(update) = mapper("home_city").map(&profile) else {
            panic!("an update");
        };
        assert_eq!(
            update.stamp,
            Stamp {
                millis: 1_764_248_400_123,
                id: Arc::from("e1")
            }
        );
    }
}
