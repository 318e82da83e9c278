//! The state of each event source (connecting, running, failed and the broker's reason),
//! kept by the gateway and written by the sources themselves: `/readyz` and
//! `GET /-/sources` show it. The core holds it without knowing what a source is.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// What a source is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Connecting,
    Running,
    Failed,
}

/// One source's state, as `/readyz` and the admin API show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct State {
    pub kind: &'static str,
    pub state: Phase,
    /// The broker's reason for a failure, the next tick, or what it listens on.
    pub detail: String,
    /// Messages or ticks turned into tasks since the source started.
    pub delivered: u64,
    /// Messages that reached no function, or could not be stored.
    pub dropped: u64,
}

/// The state of every source, by trigger name.
#[derive(Debug, Clone, Default)]
pub struct States(Arc<Mutex<BTreeMap<String, State>>>);

impl States {
    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, State>) -> R) -> R {
        let mut g = match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }

    /// Records a change of phase; a change is logged, a repeat is not.
    pub fn set(&self, trigger: &str, kind: &'static str, state: Phase, detail: String) {
        self.with(|m| {
            let entry = m.entry(trigger.to_string()).or_insert(State {
                kind,
                state,
                detail: String::new(),
                delivered: 0,
                dropped: 0,
            });
            let changed = entry.state != state || entry.detail != detail;
            entry.kind = kind;
            entry.state = state;
            entry.detail = detail;
            if changed {
                match state {
                    Phase::Failed => {
                        tracing::error!(trigger, kind, state = "failed", "{}", entry.detail)
                    }
                    Phase::Connecting => {
                        tracing::warn!(trigger, kind, state = "connecting", "{}", entry.detail)
                    }
                    Phase::Running => {
                        tracing::info!(trigger, kind, state = "running", "{}", entry.detail)
                    }
                }
            }
        });
    }

    pub fn count(&self, trigger: &str, delivered: u64, dropped: u64) {
        self.with(|m| {
            if let Some(e) = m.get_mut(trigger) {
                e.delivered += delivered;
                e.dropped += dropped;
            }
        });
    }

    pub fn remove(&self, trigger: &str) {
        self.with(|m| m.remove(trigger));
    }

    pub fn snapshot(&self) -> BTreeMap<String, State> {
        self.with(|m| m.clone())
    }
}
