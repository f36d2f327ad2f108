//! Waiting for a saga to end without polling: `GET /sagas/{id}?wait_ms=N` parks on a per-saga
//! [`Notify`] that the store pokes after committing a saga's last transition. Another instance
//! may make that transition (several orchestrators share one database), so a waiter also
//! re-reads the saga every [`RECHECK`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use uuid::Uuid;

/// How often a waiter re-reads its saga in case another instance ended it.
pub const RECHECK: Duration = Duration::from_millis(200);

/// The sagas someone is waiting for.
#[derive(Clone, Debug, Default)]
pub struct Watchers(Arc<Mutex<HashMap<Uuid, Arc<Notify>>>>);

impl Watchers {
    /// Registers interest in `saga_id` until the guard is dropped.
    pub fn watch(&self, saga_id: Uuid) -> Watch {
        let notify = self
            .lock()
            .entry(saga_id)
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone();
        Watch {
            saga_id,
            notify,
            watchers: self.clone(),
        }
    }

    /// Wakes everyone waiting for `saga_id` (cheap when nobody is).
    pub fn wake(&self, saga_id: Uuid) {
        if let Some(n) = self.lock().get(&saga_id) {
            n.notify_waiters();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<Notify>>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Interest in one saga; the last guard of a saga removes its entry.
pub struct Watch {
    saga_id: Uuid,
    pub notify: Arc<Notify>,
    watchers: Watchers,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut map = self.watchers.lock();
        // The map's reference and ours: nobody else waits.
        if Arc::strong_count(&self.notify) == 2 {
            map.remove(&self.saga_id);
        }
    }
}
