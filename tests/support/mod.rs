//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use currents_heap::currents::datum::Datum;
use currents_heap::currents::event::{CUSTOM_EVENT, CustomHttpEvent, Property, User};

/// A fresh, empty directory under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "currents-heap-{label}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CustomEvent for `identity`, with a few properties like real ones.
pub fn custom_event(n: usize, identity: &str) -> CustomHttpEvent {
    CustomHttpEvent {
        event_type: Arc::from(CUSTOM_EVENT),
        id: format!("evt-{n:06}"),
        time: 1_764_248_400 + n as i64,
        user: User {
            user_id: Some(format!("{:024x}", n)),
            external_user_id: Some(identity.to_string()),
            device_id: Some(format!("device-{}", n % 97)),
            timezone: Some("Europe/Berlin".into()),
        },
        properties: vec![
            (Arc::from("app_id"), Property::Avro(Datum::String("app-1".into()))),
            (Arc::from("platform"), Property::Avro(Datum::String("ios".into()))),
            (Arc::from("name"), Property::Avro(Datum::String("Added To Cart".into()))),
            (
                Arc::from("custom_properties"),
                Property::Json(serde_json::from_str(&format!(r#"{{"sku":"sku-{n}","price":{n}.5,"tags":["a","b"],"cart":{{"items":{}}}}}"#, n % 7)).unwrap()),
            ),
        ],
    }
}
