//! The lease's metrics and its part of `/readyz`: which process sends, how often that
//! changed, and how fresh the lease is (see `handover::lease`).

use std::sync::Mutex;
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Labels;

/// This process's part in the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseRole {
    /// No lease is used (`--single-process`, a dry run, or not started yet).
    None,
    /// Watching the lease, ready to take over.
    Standby,
    /// Holding it: this process sends.
    Held,
    /// It stopped sending because it could not renew in time, or the lease was taken.
    Fenced,
}

impl LeaseRole {
    fn label(self) -> &'static str {
        match self {
            LeaseRole::None => "none",
            LeaseRole::Standby => "standby",
            LeaseRole::Held => "held",
            LeaseRole::Fenced => "fenced",
        }
    }
}

pub(super) struct LeaseMetrics {
    held: Gauge,
    transitions: Family<Labels, Counter>,
    renewal_age: Gauge,
    /// The role, and when the lease was last renewed (holder) or read (standby).
    state: Mutex<(LeaseRole, Option<Instant>)>,
}

impl LeaseMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let held = Gauge::default();
        registry.register(
            "currents_heap_lease_held",
            "1 while this process holds the lease (it sends to Heap), else 0",
            held.clone(),
        );
        let transitions = Family::<Labels, Counter>::default();
        registry.register(
            "currents_heap_lease_transitions",
            "Changes of this process's part in the lease, by the part it took (held, standby, fenced)",
            transitions.clone(),
        );
        let renewal_age = Gauge::default();
        registry.register(
            "currents_heap_lease_renewal_age_seconds",
            "Seconds since this process last renewed the lease (holder) or read it (standby)",
            renewal_age.clone(),
        );
        LeaseMetrics {
            held,
            transitions,
            renewal_age,
            state: Mutex::new((LeaseRole::None, None)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (LeaseRole, Option<Instant>)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn set_role(&self, role: LeaseRole) {
        let mut state = self.lock();
        if state.0 != role {
            self.transitions
                .get_or_create(&vec![("to", role.label().to_string())])
                .inc();
        }
        *state = (role, Some(Instant::now()));
        self.held.set(i64::from(role == LeaseRole::Held));
    }

    pub(super) fn touched(&self) {
        self.lock().1 = Some(Instant::now());
    }

    pub(super) fn role(&self) -> LeaseRole {
        self.lock().0
    }

    /// Sets the age gauge; called before each render.
    pub(super) fn refresh(&self) {
        if let Some(at) = self.lock().1 {
            self.renewal_age.set(at.elapsed().as_secs() as i64);
        }
    }

    /// Why `/readyz` fails for the lease's sake, if it does; `Some(None)`: ready whatever
    /// the polls say (a standby does not poll).
    pub(super) fn readiness(&self, fresh_within: std::time::Duration) -> Option<Option<String>> {
        let (role, at) = *self.lock();
        let age = at.map(|at| at.elapsed());
        match role {
            LeaseRole::None | LeaseRole::Held => None,
            LeaseRole::Fenced => Some(Some(
                "self-fenced: the lease could not be renewed in time (or was taken), so this process sends nothing; it watches the lease again".into(),
            )),
            LeaseRole::Standby => Some(match age {
                Some(age) if age <= fresh_within => None,
                _ => Some(format!(
                    "standby: the lease could not be read for {}s: check the state store",
                    age.map_or(0, |a| a.as_secs())
                )),
            }),
        }
    }
}
