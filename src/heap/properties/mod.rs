//! Heap user properties from Braze's profile and subscription events: an opt-in second
//! output beside the track events (which still go out as events, unchanged).
//!
//! # What becomes a property
//! Four Currents event types carry facts about the user rather than something the user did.
//! With `--user-properties` naming which of them to send (the allowlist: nothing personal is
//! sent unless named), each such event also yields one **update**: an identity (by the same
//! identity policy as events) and a set of properties, each named `<prefix><name>`
//! (`--user-property-prefix`, default `braze_`):
//!
//! | allowlist name | event type | property | value |
//! |---|---|---|---|
//! | `subscription` | `users.behaviors.subscription.GlobalStateChange` | `<p><channel>_subscription` | `subscription_status` |
//! | `subscription_group` | `users.behaviors.subscriptiongroup.StateChange` | `<p>subscription_group.<subscription_group_id>` | `subscription_status` |
//! | `random_bucket_number` | `users.RandomBucketNumberUpdate` | `<p>random_bucket_number` | the number |
//! | `first_name`, `last_name`, `email_address`, `phone_number`, `dob`, `home_city`, `archived` | `users.profile.Update` | `<p><field>` | the field (absent or null: unchanged) |
//! | `custom_attributes` (all) or `custom_attributes.<name>` (one) | `users.profile.Update` | `<p><name>`, nested keys joined with `.` | as event properties are written |
//!
//! Values follow the events' value rules (strings and numbers, booleans as text, arrays
//! joined with `||`, cut to 1023 characters). A custom attribute whose name collides with a
//! field's property is dropped (the field wins) and counted.
//!
//! # Order
//! Every update carries its **stamp**: the event's `time_ms` (else `time` × 1000), then its
//! event id. Within a run, a property of an identity only ever moves to a newer stamp: an
//! older update that arrives later (another object, a retry) loses that property, and an
//! update left with nothing is skipped as superseded (see
//! `heap::delivery::user_properties`). Across runs nothing is
//! remembered: a replay or a resumed object re-sends what it holds, which Heap applies as the
//! newest value (Heap keeps no time for a user property).
//!
//! # Delivery
//! `heap::delivery::user_properties` is the second lane of the delivery driver: the same fence, retry policy, parking
//! and outcome rules as events, its own pacer ceiling (Heap states no limit for the bulk
//! endpoint), one request at a time so that Heap applies updates in the order they were
//! merged, up to 1,000 users per request, one entry per identity.

pub mod map;

use std::str::FromStr;

/// The event types that can yield user properties.
pub const PROFILE_UPDATE: &str = "users.profile.Update";
pub const GLOBAL_SUBSCRIPTION: &str = "users.behaviors.subscription.GlobalStateChange";
pub const GROUP_SUBSCRIPTION: &str = "users.behaviors.subscriptiongroup.StateChange";
pub const RANDOM_BUCKET: &str = "users.RandomBucketNumberUpdate";

/// Heap's bulk `add_user_properties` takes at most 1,000 users per request (heap-facts §3).
pub const MAX_USERS_PER_REQUEST: usize = 1000;

/// The `users.profile.Update` fields that can be named, all personal data but `archived`.
pub const PROFILE_FIELDS: [&str; 7] = [
    "first_name",
    "last_name",
    "email_address",
    "phone_number",
    "dob",
    "home_city",
    "archived",
];

/// One allowlist entry of `--user-properties`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    /// Global subscription state per channel.
    Subscription,
    /// Subscription group states.
    SubscriptionGroup,
    RandomBucketNumber,
    /// One of [`PROFILE_FIELDS`].
    Profile(&'static str),
    /// Every custom attribute of a profile update.
    CustomAttributes,
    /// One custom attribute (its top-level name).
    CustomAttribute(String),
}

impl FromStr for Field {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        match s {
            "subscription" => Ok(Field::Subscription),
            "subscription_group" => Ok(Field::SubscriptionGroup),
            "random_bucket_number" => Ok(Field::RandomBucketNumber),
            "custom_attributes" => Ok(Field::CustomAttributes),
            _ => {
                if let Some(field) = PROFILE_FIELDS.iter().find(|f| **f == s) {
                    return Ok(Field::Profile(field));
                }
                match s.strip_prefix("custom_attributes.") {
                    Some(name) if name.contains(['*', '.']) => Err(format!(
                        "`{s}`: name one top-level custom attribute (no `*` or `.`), or `custom_attributes` for all"
                    )),
                    Some(name) if !name.is_empty() => Ok(Field::CustomAttribute(name.to_string())),
                    _ => Err(format!(
                        "unknown user property field `{s}` (expected subscription, subscription_group, random_bucket_number, {}, custom_attributes or custom_attributes.<name>)",
                        PROFILE_FIELDS.join(", ")
                    )),
                }
            }
        }
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Field::Subscription => f.write_str("subscription"),
            Field::SubscriptionGroup => f.write_str("subscription_group"),
            Field::RandomBucketNumber => f.write_str("random_bucket_number"),
            Field::Profile(name) => f.write_str(name),
            Field::CustomAttributes => f.write_str("custom_attributes"),
            Field::CustomAttribute(name) => write!(f, "custom_attributes.{name}"),
        }
    }
}

/// The user-properties output's settings; the command line documents each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropertyConfig {
    /// The allowlist; empty turns the output off.
    pub fields: Vec<Field>,
    /// Prepended to every user property name.
    pub prefix: String,
    /// Users per minute this process sends to `add_user_properties` at most (a ceiling of
    /// its own; lowered on 429 like the events' budget).
    pub users_per_minute: u64,
}

/// Default ceiling: Heap states none for the bulk endpoint (UNVERIFIED whether updates count
/// against the 15,000 events per minute of track), so a third of the track budget.
pub const DEFAULT_USERS_PER_MINUTE: u64 = 5_000;
pub const DEFAULT_PREFIX: &str = "braze_";

impl Default for PropertyConfig {
    fn default() -> Self {
        PropertyConfig {
            fields: Vec::new(),
            prefix: DEFAULT_PREFIX.to_string(),
            users_per_minute: DEFAULT_USERS_PER_MINUTE,
        }
    }
}

impl PropertyConfig {
    /// Whether the output is on.
    pub fn enabled(&self) -> bool {
        !self.fields.is_empty()
    }

    /// Whether events of this type can yield an update under the allowlist.
    pub fn wants(&self, event_type: &str) -> bool {
        self.fields.iter().any(|f| match f {
            Field::Subscription => event_type == GLOBAL_SUBSCRIPTION,
            Field::SubscriptionGroup => event_type == GROUP_SUBSCRIPTION,
            Field::RandomBucketNumber => event_type == RANDOM_BUCKET,
            Field::Profile(_) | Field::CustomAttributes | Field::CustomAttribute(_) => {
                event_type == PROFILE_UPDATE
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_parse_by_their_braze_names_and_say_what_is_expected() {
        let parsed: Vec<Field> = "subscription, dob,custom_attributes.plan,custom_attributes"
            .split(',')
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(
            parsed,
            vec![
                Field::Subscription,
                Field::Profile("dob"),
                Field::CustomAttribute("plan".into()),
                Field::CustomAttributes
            ]
        );
        for field in &parsed {
            assert_eq!(field.to_string().parse::<Field>().unwrap(), *field);
        }
        let err = "email".parse::<Field>().unwrap_err();
        assert!(
            err.contains("`email`") && err.contains("email_address"),
            "{err}"
        );
        assert!("custom_attributes.".parse::<Field>().is_err());
    }

    #[test]
    fn only_the_allowlisted_types_are_wanted() {
        let config = PropertyConfig {
            fields: vec![Field::Subscription],
            ..PropertyConfig::default()
        };
        assert!(config.wants(GLOBAL_SUBSCRIPTION));
        assert!(!config.wants(PROFILE_UPDATE));
        assert!(!PropertyConfig::default().enabled());
    }
}
