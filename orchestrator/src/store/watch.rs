//! Waiting for a saga to end without polling: `GET /sagas/{id}?wait_ms=N` parks on a per-saga
//! [`Notify`] that the store pokes, with the saga's final state, after committing its last
//! transition, so the waiter answers without reading the saga again. Another instance may make
//! that transition (several orchestrators share one PostgreSQL database), so a waiter also
//! re-reads the saga now and then; see [`Rechecks`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use uuid::Uuid;

use platform::db::Engine;

use crate::saga::SagaState;

/// When a waiter re-reads its saga in case another instance ended it: after 200 ms, then twice
/// as long each time up to 1 s, so thousands of waiters under load do not turn into thousands of
/// reads per second. On SQLite only this process writes the database, so its own wake-ups are
/// enough and the re-read is a rare safety net.
#[derive(Debug)]
pub struct Rechecks {
    next: Duration,
    max: Duration,
}

impl Rechecks {
    pub fn new(engine: Engine) -> Self {
        match engine {
            Engine::Postgres => Rechecks {
                next: Duration::from_millis(200),
                max: Duration::from_secs(1),
            },
            Engine::Sqlite => Rechecks {
                next: Duration::from_secs(2),
                max: Duration::from_secs(2),
            },
        }
    }

    /// How long until the next re-read.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }
}

/// What waiters of one saga share: the wake-up, and the final state that came with it.
#[derive(Debug, Default)]
pub struct Slot {
    pub notify: Notify,
    ended: Mutex<Option<SagaState>>,
}

impl Slot {
    /// The final state, if this process ended the saga while someone waited.
    pub fn ended(&self) -> Option<SagaState> {
        self.ended.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The sagas someone is waiting for.
#[derive(Clone, Debug, Default)]
pub struct Watchers(Arc<Mutex<HashMap<Uuid, Arc<Slot>>>>);

impl Watchers {
    /// Registers interest in `saga_id` until the guard is dropped.
    pub fn watch(&self, saga_id: Uuid) -> Watch {
        let notify = self.lock().entry(saga_id).or_default().clone();
        Watch {
            saga_id,
            slot: notify,
            watchers: self.clone(),
        }
    }

    /// Hands `state`, the final state of its saga, to everyone waiting for it (cheap when nobody
    /// is: no copy is made).
    pub fn wake(&self, state: &SagaState) {
        let slot = self.lock().get(&state.saga_id).cloned();
        if let Some(slot) = slot {
            *slot.ended.lock().unwrap_or_else(|p| p.into_inner()) = Some(state.clone());
            slot.notify.notify_waiters();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<Slot>>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Interest in one saga; the last guard of a saga removes its entry.
pub struct Watch {
    saga_id: Uuid,
    pub slot: Arc<Slot>,
    watchers: Watchers,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut map = self.watchers.lock();
        // The map's reference and ours: nobody else waits.
        if Arc::strong_count(&self.slot) == 2 {
            map.remove(&self.saga_id);
        }
    }
}
