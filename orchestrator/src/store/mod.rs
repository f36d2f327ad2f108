//! Where saga state is stored: sagas, the inbox and the outbox, in one database.
//!
//! Every change a saga goes through is one transaction: a new saga with its first command, or a
//! reply recorded in the inbox together with the saga update and the commands it causes. The relay
//! later publishes the outbox; nothing is published that is not committed, and nothing committed is
//! left unpublished.

mod watch;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;
use sqlx::{Any, AnyPool, Row, Transaction};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use platform::db::{self, Db, Engine, Migrations};
use platform::metrics::Metrics;
use platform::{Envelope, TraceContext};

use crate::observe::{self, Before};
use crate::saga::engine::Outgoing;
use crate::saga::{Decision, Ignored, SagaState, SagaStatus};
use crate::{Error, Result};

static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The orchestrator's migrations.
pub const MIGRATIONS: Migrations = Migrations {
    sqlite: &SQLITE,
    postgres: &POSTGRES,
};

/// What happened to a `POST /orders`.
#[derive(Debug)]
pub enum Created {
    New,
    /// The idempotency key was used before; this is the saga it started.
    Existing(Box<SagaState>),
}

/// A saga to store, with its first messages.
#[derive(Debug, Clone)]
pub struct NewSaga {
    pub state: SagaState,
    pub idempotency_key: Option<String>,
    pub messages: Vec<Outgoing>,
}

/// Which sagas a listing shows.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub saga_type: Option<String>,
    pub status: Option<SagaStatus>,
    /// Only sagas after this one (its `created_at` and id) in newest-first order.
    pub after: Option<(i64, Uuid)>,
}

/// What happened to a reply.
#[derive(Debug, PartialEq)]
pub enum ReplyOutcome {
    Applied {
        status: SagaStatus,
        messages: usize,
    },
    /// Its message id is in the inbox already.
    Duplicate,
    /// Recorded, but the saga was not waiting for it.
    Ignored(Ignored),
    /// No saga has the reply's correlation id.
    UnknownSaga,
}

/// What a transition did.
#[derive(Debug, PartialEq)]
pub enum Changed {
    Yes {
        status: SagaStatus,
        messages: usize,
    },
    /// Set aside for an operator: its stored state cannot go on under its definition.
    Parked {
        status: SagaStatus,
        reason: String,
    },
    No(Ignored),
}

/// A row of the outbox, ready to publish.
#[derive(Debug)]
pub struct OutboxRow {
    pub id: i64,
    pub topic: String,
    pub key: String,
    pub payload: String,
    /// Sent as the message's `traceparent` / `tracestate` headers.
    pub trace: TraceContext,
}

/// Outbox rows claimed by one relay round; see [`SagaStore::claim_unsent`].
pub struct Claim {
    pub rows: Vec<OutboxRow>,
    /// PostgreSQL: the transaction holding the rows' locks until the round ends.
    tx: Option<Transaction<'static, Any>>,
}

/// What one pruning pass deleted.
#[derive(Debug, Default, PartialEq)]
pub struct Pruned {
    pub outbox: u64,
    pub inbox: u64,
}

#[derive(Clone, Debug)]
pub struct SagaStore {
    db: Db,
    watchers: watch::Watchers,
    /// Counts what committed transitions did (see [`observe`]).
    metrics: Metrics,
}

impl SagaStore {
    pub fn new(db: Db, metrics: Metrics) -> Self {
        SagaStore {
            db,
            watchers: Default::default(),
            metrics,
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

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
            let recheck = (tokio::time::Instant::now() + watch::RECHECK).min(deadline);
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(recheck) => {}
            }
        }
    }

    /// Tells waiters of `state`'s saga that it ended, if it did; if it runs (again), forgets
    /// any final state handed out before.
    fn ended(&self, state: &SagaState) {
        if has_ended(state) {
            self.watchers.wake(state);
        } else {
            self.watchers.reopened(state.saga_id);
        }
    }

    /// On PostgreSQL, inside the transaction that ends them: tells every instance's waiters (see
    /// [`watch::listen`]) that these sagas ended, once the transaction commits.
    async fn announce_ended(
        &self,
        tx: &mut Transaction<'_, Any>,
        ended: &[&SagaState],
    ) -> Result<()> {
        if self.db.engine != Engine::Postgres {
            return Ok(());
        }
        for chunk in ended.chunks(watch::IDS_PER_NOTIFY) {
            let ids: Vec<String> = chunk.iter().map(|s| s.saga_id.to_string()).collect();
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(watch::CHANNEL)
                .bind(ids.join(","))
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Wakes waiters of sagas that other instances end, until `cancel` fires (PostgreSQL only:
    /// on SQLite this process is the only writer). `url` is the database's.
    pub async fn listen_for_ends(&self, url: String, cancel: CancellationToken) {
        if self.db.engine == Engine::Postgres {
            watch::listen(self.watchers.clone(), url, cancel).await;
        }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Stores new sagas and their first messages in ONE transaction (group commit for
    /// `POST /orders`): one multi-row insert of the sagas, one of their messages. A saga whose
    /// idempotency key was used before (by an earlier request, or earlier in this batch) is not
    /// stored; its result is the saga the key started.
    pub async fn create_many(&self, sagas: &[NewSaga]) -> Result<Vec<Result<Created>>> {
        if sagas.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.db.writer.begin().await?;
        let sql = format!(
            "INSERT INTO sagas (saga_id, saga_type, definition_version, status, idempotency_key, input, state, version, created_at, updated_at, wake_at, traceparent, tracestate) \
             VALUES {} ON CONFLICT (saga_type, idempotency_key) DO NOTHING RETURNING saga_id",
            self.db.engine.values(sagas.len(), 13)
        );
        let mut q = db::dynamic(&sql);
        for saga in sagas {
            let state = &saga.state;
            q = q
                .bind(state.saga_id.to_string())
                .bind(&state.saga_type)
                .bind(i64::from(state.definition_version))
                .bind(state.status.as_str())
                .bind(saga.idempotency_key.as_deref())
                .bind(state.input_json.as_deref().unwrap_or("{}"))
                .bind(to_json(state))
                .bind(1_i64)
                .bind(state.created_at)
                .bind(state.updated_at)
                .bind(state.next_wake())
                .bind(state.trace.traceparent.as_deref())
                .bind(state.trace.tracestate.as_deref());
        }
        let inserted: HashSet<String> = q
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| row.try_get::<String, _>("saga_id"))
            .collect::<std::result::Result<_, _>>()?;
        let is_new = |s: &NewSaga| inserted.contains(&s.state.saga_id.to_string());
        let messages: Vec<Outgoing> = sagas
            .iter()
            .filter(|s| is_new(s))
            .flat_map(|s| s.messages.iter().cloned())
            .collect();
        if let Some(now) = sagas.iter().map(|s| s.state.created_at).max() {
            insert_outbox(&mut tx, self.db.engine, &messages, now).await?;
        }
        tx.commit().await?;
        let mut results = Vec::with_capacity(sagas.len());
        for saga in sagas {
            if is_new(saga) {
                observe::started(&self.metrics, &saga.state);
                results.push(Ok(Created::New));
                continue;
            }
            // Not inserted: its key's row exists (that is why the insert did nothing).
            let key = saga.idempotency_key.as_deref().unwrap_or_default();
            results.push(match self.by_idempotency_key(&saga.state.saga_type, key).await {
                Ok(Some(existing)) => Ok(Created::Existing(Box::new(existing))),
                Ok(None) => Err(Error::Conflict(saga.state.saga_id)),
                Err(e) => Err(e),
            });
        }
        Ok(results)
    }

    /// The saga of `saga_type` an idempotency key started (keys are unique per type).
    pub async fn by_idempotency_key(&self, saga_type: &str, key: &str) -> Result<Option<SagaState>> {
        let row = sqlx::query(
            "SELECT saga_id, state, traceparent, tracestate, input FROM sagas WHERE saga_type = $1 AND idempotency_key = $2",
        )
        .bind(saga_type)
        .bind(key)
        .fetch_optional(&self.db.writer)
        .await?;
        row.map(|r| decode(&r)).transpose()
    }

    pub async fn get(&self, saga_id: Uuid) -> Result<Option<SagaState>> {
        let row = sqlx::query(
            "SELECT saga_id, state, traceparent, tracestate, input FROM sagas WHERE saga_id = $1",
        )
        .bind(saga_id.to_string())
        .fetch_optional(&self.db.reader)
        .await?;
        row.map(|r| decode(&r)).transpose()
    }

    /// A page of sagas, newest first: those after `after` (the last one of the previous page),
    /// filtered by type and status. Paging by position in that order, not by offset, keeps
    /// pages stable while sagas are being added (new ones sort before the first page).
    pub async fn list(&self, filter: &ListFilter, limit: i64) -> Result<Vec<SagaState>> {
        let mut conditions = Vec::new();
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };
        if filter.saga_type.is_some() {
            conditions.push(format!("saga_type = ${}", next()));
        }
        if filter.status.is_some() {
            conditions.push(format!("status = ${}", next()));
        }
        if filter.after.is_some() {
            let (a, b, c) = (next(), next(), next());
            conditions.push(format!(
                "(created_at < ${a} OR (created_at = ${b} AND saga_id < ${c}))"
            ));
        }
        let filter_sql = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let sql = format!(
            "SELECT saga_id, state, traceparent, tracestate, input FROM sagas {filter_sql} \
             ORDER BY created_at DESC, saga_id DESC LIMIT ${}",
            next()
        );
        let mut q = db::dynamic(&sql);
        if let Some(t) = &filter.saga_type {
            q = q.bind(t.clone());
        }
        if let Some(status) = filter.status {
            q = q.bind(status.as_str());
        }
        if let Some((created_at, saga_id)) = filter.after {
            q = q.bind(created_at).bind(created_at).bind(saga_id.to_string());
        }
        let rows = q.bind(limit).fetch_all(&self.db.reader).await?;
        rows.iter().map(decode).collect()
    }

    /// Handles one reply in one transaction: records it in the inbox (a duplicate stops here),
    /// lets `decide` compute the saga's next state, stores it under optimistic concurrency, and
    /// writes the resulting messages to the outbox.
    pub async fn apply_reply(
        &self,
        reply: &Envelope,
        now: i64,
        decide: impl Fn(&SagaState) -> Decision,
    ) -> Result<ReplyOutcome> {
        let outcomes = self
            .apply_replies(&[reply], now, |state, _| decide(state))
            .await?;
        // One reply in, one outcome out.
        Ok(outcomes
            .into_iter()
            .next()
            .unwrap_or(ReplyOutcome::Duplicate))
    }

    /// Handles replies that arrived together in ONE transaction, in order — the same steps as
    /// [`Self::apply_reply`] for each, one commit for all — with a constant number of statements
    /// per batch plus one `UPDATE` per saga changed: every statement is a round trip (to the
    /// SQLite worker thread, or to PostgreSQL), and round trips are what a reply costs. Any error
    /// rolls the whole batch back; the caller then handles the replies one by one.
    pub async fn apply_replies(
        &self,
        replies: &[&Envelope],
        now: i64,
        decide: impl Fn(&SagaState, &Envelope) -> Decision,
    ) -> Result<Vec<ReplyOutcome>> {
        use std::collections::{HashMap, HashSet};
        if replies.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.db.writer.begin().await?;

        // 1. Record every reply in the inbox; the ones already there are duplicates.
        let sql = format!(
            "INSERT INTO inbox (message_id, saga_id, message_type, received_at) VALUES {} \
             ON CONFLICT (message_id) DO NOTHING RETURNING message_id",
            self.db.engine.values(replies.len(), 4)
        );
        let mut q = db::dynamic(&sql);
        for r in replies {
            q = q
                .bind(r.message_id.to_string())
                .bind(r.correlation_id.to_string())
                .bind(&r.message_type)
                .bind(now);
        }
        let mut fresh: HashSet<String> = q
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| row.try_get::<String, _>("message_id"))
            .collect::<std::result::Result<_, _>>()?;

        // 2. Load every saga the fresh replies name, once.
        let mut ids: Vec<String> = replies
            .iter()
            .filter(|r| fresh.contains(&r.message_id.to_string()))
            .map(|r| r.correlation_id.to_string())
            .collect();
        ids.sort();
        ids.dedup();
        // saga id -> (version read, current state, transitions applied)
        let mut sagas: HashMap<Uuid, (i64, SagaState, i64)> = HashMap::new();
        let mut before: HashMap<Uuid, Before> = HashMap::new();
        if !ids.is_empty() {
            // PostgreSQL: lock them now, in saga id order, so two instances handling replies
            // of the same sagas (a rebalance) wait for each other instead of deadlocking.
            let lock = match self.db.engine {
                Engine::Postgres => " ORDER BY saga_id FOR UPDATE",
                Engine::Sqlite => "",
            };
            let sql = format!(
                "SELECT saga_id, state, version, traceparent, tracestate, input FROM sagas WHERE saga_id IN ({}){lock}",
                self.db.engine.placeholders(1, ids.len())
            );
            let mut q = db::dynamic(&sql);
            for id in &ids {
                q = q.bind(id);
            }
            for row in q.fetch_all(&mut *tx).await? {
                let state = decode(&row)?;
                before.insert(state.saga_id, Before::of(&state));
                sagas.insert(state.saga_id, (row.try_get("version")?, state, 0));
            }
        }

        // 3. Move each saga through its replies, in arrival order, in memory.
        let mut outcomes = Vec::with_capacity(replies.len());
        let mut messages: Vec<Outgoing> = Vec::new();
        // Replies that changed nothing leave the inbox again. An orphan is dead-lettered, and
        // again if it comes again. An ignored reply must stay applicable: a late confirmation of
        // a compensation that gave up (the saga `FAILED`) is ignored, and when an operator
        // retries, the service answers the re-sent command with that same stored reply, same
        // message id, which would otherwise be dropped as a duplicate and fail the saga again.
        let mut forget: Vec<String> = Vec::new();
        for reply in replies {
            let message_id = reply.message_id.to_string();
            // `remove`: the same message twice in one batch is a duplicate the second time.
            if !fresh.remove(&message_id) {
                outcomes.push(ReplyOutcome::Duplicate);
                continue;
            }
            let Some((_, state, applied)) = sagas.get_mut(&reply.correlation_id) else {
                forget.push(message_id);
                outcomes.push(ReplyOutcome::UnknownSaga);
                continue;
            };
            match decide(state, reply) {
                Decision::Ignored(why) => {
                    forget.push(message_id);
                    outcomes.push(ReplyOutcome::Ignored(why));
                }
                Decision::Applied {
                    state: next,
                    messages: out,
                } => {
                    outcomes.push(ReplyOutcome::Applied {
                        status: next.status,
                        messages: out.len(),
                    });
                    *state = next;
                    *applied += 1;
                    messages.extend(out);
                }
            }
        }

        // 4. Store each changed saga once, under its version check, and the messages.
        let changed: Vec<_> = sagas.values().filter(|(_, _, n)| *n > 0).collect();
        update_sagas(&mut tx, self.db.engine, &changed).await?;
        insert_outbox(&mut tx, self.db.engine, &messages, now).await?;
        if !forget.is_empty() {
            let sql = format!(
                "DELETE FROM inbox WHERE message_id IN ({})",
                self.db.engine.placeholders(1, forget.len())
            );
            let mut q = db::dynamic(&sql);
            for id in &forget {
                q = q.bind(id);
            }
            q.execute(&mut *tx).await?;
        }
        let ended: Vec<&SagaState> = sagas
            .values()
            .filter(|(_, state, applied)| *applied > 0 && has_ended(state))
            .map(|(_, state, _)| state)
            .collect();
        self.announce_ended(&mut tx, &ended).await?;
        tx.commit().await?;
        for state in ended {
            self.ended(state);
        }
        let duplicates = outcomes
            .iter()
            .filter(|o| **o == ReplyOutcome::Duplicate)
            .count();
        if duplicates > 0 {
            self.metrics.inbox_duplicates.inc_by(duplicates as u64);
        }
        for (_, state, applied) in sagas.values() {
            if let (true, Some(b)) = (*applied > 0, before.get(&state.saga_id)) {
                observe::observe(&self.metrics, b, state);
            }
        }
        Ok(outcomes)
    }

    /// Applies `decide` to one saga in one transaction (timers, cancel, retry). `None` when there
    /// is no such saga.
    pub async fn transition(
        &self,
        saga_id: Uuid,
        now: i64,
        decide: impl FnOnce(&SagaState) -> Decision,
    ) -> Result<Option<Changed>> {
        let mut tx = self.db.writer.begin().await?;
        let outcome = transition_in(&mut tx, self.db.engine, saga_id, now, decide).await?;
        match outcome {
            Some(Ok((before, state, messages))) => {
                if has_ended(&state) {
                    self.announce_ended(&mut tx, &[&state]).await?;
                }
                tx.commit().await?;
                self.ended(&state);
                observe::observe(&self.metrics, &before, &state);
                match (&state.parked, before.was_parked()) {
                    (Some(reason), false) => Ok(Some(Changed::Parked {
                        status: state.status,
                        reason: reason.clone(),
                    })),
                    _ => Ok(Some(Changed::Yes {
                        status: state.status,
                        messages,
                    })),
                }
            }
            Some(Err(why)) => {
                tx.rollback().await?;
                Ok(Some(Changed::No(why)))
            }
            None => {
                tx.rollback().await?;
                Ok(None)
            }
        }
    }

    /// Claims up to `limit` sagas whose timer is due, most overdue first, for `lease_ms`.
    ///
    /// The claim moves each saga's `wake_at` to the lease's end in the same statement that finds
    /// it (on PostgreSQL skipping rows another instance is claiming), so instances sharing a
    /// database split the due sagas instead of all handling the same oldest ones, and a saga
    /// whose transition fails is not due again until the lease ends, instead of staying at the
    /// front and crowding out every other deadline. A successful transition writes the saga's
    /// real next deadline; an instance that dies holding a claim delays those deadlines by the
    /// lease at most. The version is untouched: a claim is not a change of the saga.
    pub async fn due(&self, now: i64, limit: i64, lease_ms: i64) -> Result<Vec<Uuid>> {
        let lock = match self.db.engine {
            Engine::Postgres => " FOR UPDATE SKIP LOCKED",
            Engine::Sqlite => "",
        };
        let rows = sqlx::query(&format!(
            "UPDATE sagas SET wake_at = $1 WHERE saga_id IN \
             (SELECT saga_id FROM sagas WHERE wake_at <= $2 ORDER BY wake_at LIMIT $3{lock}) \
             RETURNING saga_id"
        ))
        .bind(now.saturating_add(lease_ms))
        .bind(now)
        .bind(limit)
        .fetch_all(&self.db.writer)
        .await?;
        Ok(rows
            .iter()
            .filter_map(|r| r.try_get::<String, _>("saga_id").ok())
            .filter_map(|id| Uuid::parse_str(&id).ok())
            .collect())
    }

    /// Hands back sagas claimed by [`Self::due`] at `now` that no transition has touched since,
    /// so they are due again at once.
    pub async fn release(&self, ids: &[Uuid], now: i64, lease_ms: i64) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "UPDATE sagas SET wake_at = {} WHERE wake_at = {} AND saga_id IN ({})",
            self.db.engine.placeholders(1, 1),
            self.db.engine.placeholders(2, 1),
            self.db.engine.placeholders(3, ids.len())
        );
        let mut q = db::dynamic(&sql)
            .bind(now)
            .bind(now.saturating_add(lease_ms));
        for id in ids {
            q = q.bind(id.to_string());
        }
        q.execute(&self.db.writer).await?;
        Ok(())
    }

    /// Claims up to `limit` unpublished outbox rows for this relay, oldest first.
    ///
    /// On PostgreSQL several orchestrator instances run a relay each: a claim is a transaction
    /// holding row locks (`FOR UPDATE SKIP LOCKED`, so relays never wait for each other nor
    /// publish the same row), and it takes only the oldest unsent row of each (topic, key) —
    /// a saga's next message on a topic waits until the one before it is published, whichever
    /// relay holds it. On SQLite (one instance per database file) the claim is a plain read, so
    /// the single writer connection is not held while Kafka confirms deliveries, with the same
    /// rule applied to what it read: within one round a (topic, key) has at most one row, so a
    /// row whose delivery fails can never be overtaken by a later row of its saga (a
    /// `cancel_order` published before the `create_order` it undoes leaves an order behind).
    pub async fn claim_unsent(&self, limit: i64) -> Result<Claim> {
        match self.db.engine {
            Engine::Postgres => {
                let mut tx = self.db.writer.begin().await?;
                let rows = sqlx::query(
                    "SELECT id, topic, msg_key, payload, traceparent, tracestate FROM outbox o WHERE sent_at IS NULL \
                     AND NOT EXISTS (SELECT 1 FROM outbox e WHERE e.topic = o.topic AND e.msg_key = o.msg_key \
                                     AND e.sent_at IS NULL AND e.id < o.id) \
                     ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                )
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?;
                Ok(Claim {
                    rows: outbox_rows(&rows)?,
                    tx: Some(tx),
                })
            }
            Engine::Sqlite => {
                let rows = sqlx::query(
                    "SELECT id, topic, msg_key, payload, traceparent, tracestate FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT $1",
                )
                .bind(limit)
                .fetch_all(&self.db.writer)
                .await?;
                // Rows are in id order, and the lowest unsent ids are all here: the first row
                // of each (topic, key) is the oldest unsent one.
                let mut seen = HashSet::new();
                let rows = outbox_rows(&rows)?
                    .into_iter()
                    .filter(|r| seen.insert((r.topic.clone(), r.key.clone())))
                    .collect();
                Ok(Claim { rows, tx: None })
            }
        }
    }

    /// Marks the published rows of a claim as sent and releases the rest: a row not in `sent`
    /// stays unsent and is claimed again by the next round of any relay.
    pub async fn finish_claim(&self, claim: Claim, sent: &[i64], now: i64) -> Result<()> {
        match claim.tx {
            Some(mut tx) => {
                mark_sent(&mut tx, self.db.engine, sent, now).await?;
                tx.commit().await?;
            }
            None => {
                let mut conn = self.db.writer.acquire().await?;
                mark_sent(&mut conn, self.db.engine, sent, now).await?;
            }
        }
        Ok(())
    }

    /// Deletes up to `limit` sent outbox rows and up to `limit` inbox rows recorded before
    /// `before`; returns how many of each. Sagas are never deleted: terminal ones stay queryable.
    pub async fn prune(&self, before: i64, limit: i64) -> Result<Pruned> {
        let outbox = sqlx::query(
            "DELETE FROM outbox WHERE id IN \
             (SELECT id FROM outbox WHERE sent_at IS NOT NULL AND sent_at < $1 ORDER BY sent_at LIMIT $2)",
        )
        .bind(before)
        .bind(limit)
        .execute(&self.db.writer)
        .await?
        .rows_affected();
        let inbox = sqlx::query(
            "DELETE FROM inbox WHERE message_id IN \
             (SELECT message_id FROM inbox WHERE received_at < $1 ORDER BY received_at LIMIT $2)",
        )
        .bind(before)
        .bind(limit)
        .execute(&self.db.writer)
        .await?
        .rows_affected();
        Ok(Pruned { outbox, inbox })
    }

    /// Deletes up to `limit` sagas that ended well (`COMPLETED`, `COMPENSATED`, `CANCELLED`)
    /// before `before`, with their inbox rows and sent outbox rows, in one transaction; returns
    /// how many sagas went. `FAILED` sagas (an operator's to look at) and unsent rows stay.
    pub async fn prune_sagas(&self, before: i64, limit: i64) -> Result<u64> {
        let mut tx = self.db.writer.begin().await?;
        let ids: Vec<String> = sqlx::query(
            "SELECT saga_id FROM sagas WHERE status IN ('COMPLETED', 'COMPENSATED', 'CANCELLED') \
             AND updated_at < $1 ORDER BY updated_at LIMIT $2",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get("saga_id"))
        .collect::<std::result::Result<_, _>>()?;
        if ids.is_empty() {
            return Ok(0);
        }
        for chunk in ids.chunks(500) {
            let list = self.db.engine.placeholders(1, chunk.len());
            for sql in [
                format!("DELETE FROM inbox WHERE saga_id IN ({list})"),
                format!("DELETE FROM outbox WHERE sent_at IS NOT NULL AND msg_key IN ({list})"),
                format!("DELETE FROM sagas WHERE saga_id IN ({list})"),
            ] {
                let mut q = db::dynamic(&sql);
                for id in chunk {
                    q = q.bind(id);
                }
                q.execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(ids.len() as u64)
    }

    /// How many outbox rows are not published yet, and when the oldest was written (for the
    /// outbox gauges, read at each scrape).
    pub async fn outbox_backlog(&self) -> Result<(i64, Option<i64>)> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM outbox WHERE sent_at IS NULL",
        )
        .fetch_one(&self.db.reader)
        .await?;
        Ok((row.try_get("n")?, row.try_get("oldest")?))
    }

    /// Number of outbox rows not yet published (for tests and health checks).
    pub async fn unsent_count(&self) -> Result<i64> {
        count(
            &self.db.reader,
            "SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL",
        )
        .await
    }
}

/// Loads the saga, lets `decide` move it, stores the result under a version check and writes its
/// messages to the outbox — all inside `tx`, which the caller commits. Gives the new state and the
/// number of messages, or why nothing changed; `None` when there is no such saga.
async fn transition_in(
    tx: &mut Transaction<'_, Any>,
    engine: Engine,
    saga_id: Uuid,
    now: i64,
    decide: impl FnOnce(&SagaState) -> Decision,
) -> Result<Option<std::result::Result<(Before, SagaState, usize), Ignored>>> {
    let row = sqlx::query(
        "SELECT saga_id, state, version, traceparent, tracestate, input FROM sagas WHERE saga_id = $1",
    )
    .bind(saga_id.to_string())
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let current = decode(&row)?;
    let version: i64 = row.try_get("version")?;
    match decide(&current) {
        Decision::Ignored(why) => Ok(Some(Err(why))),
        Decision::Applied { state, messages } => {
            let changed = (version, state, 1);
            update_sagas(tx, engine, &[&changed]).await?;
            insert_outbox(tx, engine, &messages, now).await?;
            Ok(Some(Ok((Before::of(&current), changed.1, messages.len()))))
        }
    }
}

/// Stamps outbox rows as published.
async fn mark_sent(
    conn: &mut sqlx::AnyConnection,
    engine: Engine,
    ids: &[i64],
    now: i64,
) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "UPDATE outbox SET sent_at = {} WHERE id IN ({})",
        engine.placeholders(1, 1),
        engine.placeholders(2, ids.len())
    );
    let mut q = db::dynamic(&sql).bind(now);
    for id in ids {
        q = q.bind(*id);
    }
    q.execute(conn).await?;
    Ok(())
}

fn outbox_rows(rows: &[sqlx::any::AnyRow]) -> Result<Vec<OutboxRow>> {
    rows.iter()
        .map(|r| {
            Ok(OutboxRow {
                id: r.try_get("id")?,
                topic: r.try_get("topic")?,
                key: r.try_get("msg_key")?,
                payload: r.try_get("payload")?,
                trace: TraceContext {
                    traceparent: r.try_get("traceparent")?,
                    tracestate: r.try_get("tracestate")?,
                },
            })
        })
        .collect()
}

async fn count(pool: &AnyPool, sql: &str) -> Result<i64> {
    Ok(sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await?)
}

async fn insert_outbox(
    tx: &mut Transaction<'_, Any>,
    engine: Engine,
    messages: &[Outgoing],
    now: i64,
) -> Result<()> {
    // One statement for all: rows keep the order of `messages` (ids are assigned in order).
    for chunk in messages.chunks(OUTBOX_ROWS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO outbox (message_id, topic, msg_key, payload, created_at, traceparent, tracestate) VALUES {}",
            engine.values(chunk.len(), 7)
        );
        let mut q = db::dynamic(&sql);
        for m in chunk {
            q = q
                .bind(m.envelope.message_id.to_string())
                .bind(&m.topic)
                .bind(m.envelope.key())
                .bind(m.envelope.to_json())
                .bind(now)
                .bind(m.trace.traceparent.as_deref())
                .bind(m.trace.tracestate.as_deref());
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Rows per multi-row outbox insert: well under SQLite's and PostgreSQL's bound-parameter limits.
const OUTBOX_ROWS_PER_INSERT: usize = 1_000; // 7 parameters each

/// Stores each `(version read, new state, transitions)` over the version that was read, counting
/// `transitions` new versions, in one statement (one round trip however many sagas a batch of
/// replies moved). Another writer (an instance, the timer) having stored a version since is an
/// [`Error::Conflict`]: the transaction rolls back and the caller retries on fresh state.
async fn update_sagas(
    tx: &mut Transaction<'_, Any>,
    engine: Engine,
    changed: &[&(i64, SagaState, i64)],
) -> Result<()> {
    for chunk in changed.chunks(SAGAS_PER_UPDATE) {
        let sql = format!(
            "WITH v (id, status, state, transitions, updated_at, wake_at, version) AS (VALUES {}) \
             UPDATE sagas SET status = v.status, state = v.state, version = sagas.version + v.transitions, \
             updated_at = v.updated_at, wake_at = v.wake_at \
             FROM v WHERE sagas.saga_id = v.id AND sagas.version = v.version RETURNING saga_id",
            engine.values(chunk.len(), 7)
        );
        let mut q = db::dynamic(&sql);
        for (version, state, transitions) in chunk.iter().copied() {
            q = q
                .bind(state.saga_id.to_string())
                .bind(state.status.as_str())
                .bind(to_json(state))
                .bind(*transitions)
                .bind(state.updated_at)
                .bind(state.next_wake())
                .bind(*version);
        }
        let updated: std::collections::HashSet<String> = q
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .map(|row| row.try_get::<String, _>("saga_id"))
            .collect::<std::result::Result<_, _>>()?;
        if let Some((_, lost, _)) = chunk
            .iter()
            .copied()
            .find(|(_, state, _)| !updated.contains(&state.saga_id.to_string()))
        {
            return Err(Error::Conflict(lost.saga_id));
        }
    }
    Ok(())
}

/// Sagas per multi-row update (7 parameters each).
const SAGAS_PER_UPDATE: usize = 1_000;

/// Whether `state` is final: what long polls wait for.
fn has_ended(state: &SagaState) -> bool {
    matches!(
        state.status,
        SagaStatus::Completed
            | SagaStatus::Compensated
            | SagaStatus::Cancelled
            | SagaStatus::Failed
    )
}

fn to_json(state: &SagaState) -> String {
    serde_json::to_string(state).unwrap_or_else(|_| Value::Null.to_string())
}

fn decode(row: &sqlx::any::AnyRow) -> Result<SagaState> {
    let id: String = row.try_get("saga_id")?;
    let json: String = row.try_get("state")?;
    let mut state: SagaState =
        serde_json::from_str(&json).map_err(|source| Error::CorruptState {
            saga_id: id,
            source,
        })?;
    // Kept beside the JSON, not in it: written once, never rewritten by a transition.
    state.trace = TraceContext {
        traceparent: row.try_get("traceparent")?,
        tracestate: row.try_get("tracestate")?,
    };
    state.input_json = row.try_get("input")?;
    Ok(state)
}
