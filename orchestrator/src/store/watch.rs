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

use platform::db::Engine;

use crate::saga::SagaState;
use crate::Result;

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

/// The sagas someone is waiting for, each with how many wait: counted under the map's lock, so
/// the last waiter to leave removes the entry whatever else holds the slot at that moment (a
/// wake-up in progress holds it too, which a reference count would mistake for a waiter).
#[derive(Clone, Debug, Default)]
pub struct Watchers(Arc<Mutex<HashMap<Uuid, Entry>>>);

#[derive(Debug)]
struct Entry {
    slot: Arc<Slot>,
    waiters: usize,
}

impl Watchers {
    /// Registers interest in `saga_id` until the guard is dropped.
    pub fn watch(&self, saga_id: Uuid) -> Watch {
        let mut map = self.lock();
        let entry = map.entry(saga_id).or_insert_with(|| Entry {
            slot: Arc::default(),
            waiters: 0,
        });
        entry.waiters += 1;
        Watch {
            saga_id,
            slot: entry.slot.clone(),
            watchers: self.clone(),
        }
    }

    /// Hands `state`, the final state of its saga, to everyone waiting for it (cheap when nobody
    /// is: no copy is made).
    pub fn wake(&self, state: &SagaState) {
        let slot = self.lock().get(&state.saga_id).map(|e| e.slot.clone());
        if let Some(slot) = slot {
            *slot.ended.lock().unwrap_or_else(|p| p.into_inner()) = Some(state.clone());
            slot.notify.notify_waiters();
        }
    }

    /// `saga_id` runs again (a cancel of a completed saga, a retry of a failed one): a final
    /// state handed out before is no longer its state, and must not answer a later waiter.
    pub fn reopened(&self, saga_id: Uuid) {
        if let Some(e) = self.lock().get(&saga_id) {
            *e.slot.ended.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    /// Wakes everyone waiting for `saga_id`, which another instance ended: they read it.
    pub fn wake_id(&self, saga_id: Uuid) {
        if let Some(e) = self.lock().get(&saga_id) {
            e.slot.notify.notify_waiters();
        }
    }

    /// How many sagas have waiters (an entry exists only while someone waits).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Entry>> {
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
        if let Some(entry) = map.get_mut(&self.saga_id) {
            entry.waiters = entry.waiters.saturating_sub(1);
            if entry.waiters == 0 {
                map.remove(&self.saga_id);
            }
        }
    }
}

impl super::SagaStore {
    /// Like [`Self::get`], but if the saga has not ended yet, waits up to `wait` for it to end.
    pub async fn get_when_ended(&self, saga_id: Uuid, wait: Duration) -> Result<Option<SagaState>> {
        let deadline = tokio::time::Instant::now() + wait;
        let watch = self.watchers.watch(saga_id);
        loop {
            // Armed before reading, so an end committed in between still wakes us.
            let notified = watch.slot.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let state = match watch.slot.ended() {
                Some(ended) => return Ok(Some(ended)),
                None => self.get(saga_id).await?,
            };
            match state {
                Some(s) if s.completed_at.is_none() && tokio::time::Instant::now() < deadline => {}
                other => return Ok(other),
            }
            let recheck = (tokio::time::Instant::now() + RECHECK).min(deadline);
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(recheck) => {}
            }
        }
    }

    /// Wakes waiters of sagas that other instances end, until `cancel` fires (PostgreSQL only:
    /// on SQLite this process is the only writer). `url` is the database's.
    pub async fn listen_for_ends(&self, url: String, cancel: CancellationToken) {
        if self.db.engine == Engine::Postgres {
            listen(self.watchers.clone(), url, cancel).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saga::{engine, SagaStatus};
    use crate::Policy;

    fn saga() -> SagaState {
        let def = crate::saga::create_order();
        engine::start(
            &def,
            &Policy::default(),
            Uuid::new_v4(),
            Default::default(),
            0,
        )
        .0
    }

    /// A waiter that left while a wake-up held the slot kept its entry for
    /// good (the reference count said someone still waited), with the final state in it.
    #[test]
    fn the_last_waiter_removes_the_entry_even_during_a_wake_up() {
        let watchers = Watchers::default();
        let s = saga();
        let w = watchers.watch(s.saga_id);
        let during_wake = w.slot.clone(); // what `wake` holds while it hands out the state
        drop(w);
        drop(during_wake);
        assert_eq!(watchers.len(), 0, "the entry leaked");

        // Two waiters: the entry stays until both have gone.
        let (a, b) = (watchers.watch(s.saga_id), watchers.watch(s.saga_id));
        drop(a);
        assert_eq!(watchers.len(), 1);
        drop(b);
        assert_eq!(watchers.len(), 0);
    }

    /// A waiter arriving after a saga was reopened must not be answered with
    /// the final state it had before.
    #[test]
    fn a_reopened_saga_does_not_answer_with_its_old_final_state() {
        let watchers = Watchers::default();
        let mut s = saga();
        let early = watchers.watch(s.saga_id);
        s.status = SagaStatus::Completed;
        watchers.wake(&s);
        assert_eq!(
            early.slot.ended().map(|e| e.status),
            Some(SagaStatus::Completed)
        );
        // A cancel moves it to CANCELLING while `early` is still around.
        watchers.reopened(s.saga_id);
        let late = watchers.watch(s.saga_id);
        assert_eq!(late.slot.ended(), None);
    }
}
