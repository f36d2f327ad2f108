//! Waiting for a saga to end without polling: `GET /sagas/{id}?wait_ms=N` parks on a per-saga
//! [`Notify`] that the store pokes, with the saga's final state, after committing its last
//! transition, so the waiter answers without reading the saga again. Another instance may make
//! that transition (several orchestrators share one PostgreSQL database): on PostgreSQL the
//! transaction that ends sagas also sends their ids with `NOTIFY` ([`CHANNEL`]), and every
//! instance's [`listen`] task wakes its own waiters, which then read the saga. A waiter also
//! re-reads the saga every couple of seconds, for a notification lost while a connection was
//! down.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::saga::SagaState;

/// The PostgreSQL channel that carries the ids of sagas that ended, comma-separated.
pub const CHANNEL: &str = "saga_ended";

/// Saga ids per notification: a payload must stay under PostgreSQL's 8,000 bytes.
pub const IDS_PER_NOTIFY: usize = 200;

/// How long a waiter waits between safety re-reads of its saga: wake-ups (in-process, or by
/// `NOTIFY` from other instances) are what normally answers.
pub const RECHECK: Duration = Duration::from_secs(2);

/// Until `cancel` fires, listens on [`CHANNEL`] and wakes the waiters of every saga named there.
/// A lost connection is reconnected after a pause; waiters cover the gap with [`RECHECK`].
pub async fn listen(watchers: Watchers, url: String, cancel: CancellationToken) {
    loop {
        let listening = async {
            let mut listener = PgListener::connect(&url).await?;
            listener.listen(CHANNEL).await?;
            loop {
                let note = listener.recv().await?;
                for id in note.payload().split(',') {
                    if let Ok(id) = Uuid::parse_str(id) {
                        watchers.wake_id(id);
                    }
                }
            }
        };
        let result: Result<(), sqlx::Error> = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listening => r,
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "listening for sagas ended by other instances; reconnecting");
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
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

    /// Wakes everyone waiting for `saga_id`, which another instance ended: they read it.
    pub fn wake_id(&self, saga_id: Uuid) {
        if let Some(slot) = self.lock().get(&saga_id) {
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
