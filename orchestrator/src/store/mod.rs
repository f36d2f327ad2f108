//! Where saga state is stored: sagas, the inbox and the outbox, in one database.
//!
//! Every change a saga goes through is one transaction: a new saga with its first command, or a
//! reply recorded in the inbox together with the saga update and the commands it causes. The relay
//! later publishes the outbox; nothing is published that is not committed, and nothing committed is
//! left unpublished.
//!
//! - [`sagas`]: new sagas, reads, listing, transitions;
//! - [`inbox`]: replies applied once;
//! - [`outbox`]: what the relay publishes;
//! - [`changes`]: every committed change, in commit order, for the live streams;
//! - [`definitions`]: saga definitions every instance can run;
//! - [`due`]: deadlines claimed by the timers;
//! - [`prune`]: storage kept bounded;
//! - [`watch`]: waiting for a saga to end (long polls).

mod changes;
mod definitions;
mod due;
mod inbox;
mod outbox;
mod prune;
mod sagas;
mod watch;

pub use changes::{ChangeFilter, ChangeRecord, Cursor, CURSOR_PATTERN};
use outbox::insert_outbox;
use sagas::update_sagas;

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::Value;
use sqlx::{Any, AnyPool, Row, Transaction};

use uuid::Uuid;

use platform::db::{self, Db, Engine, Migrations};
use platform::metrics::Metrics;
use platform::{Envelope, TraceContext};

use crate::observe::{self, SagaMetrics};
use crate::saga::changes::Before;
use crate::saga::engine::Outgoing;
use crate::saga::{Decision, Ignored, SagaState, SagaStatus};
use crate::{Error, Result};

static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
/// 0007's first text failed on states holding a NUL escape; databases that ran it are accepted.
static POSTGRES: std::sync::LazyLock<sqlx::migrate::Migrator> = std::sync::LazyLock::new(|| {
    db::corrected(
        sqlx::migrate!("./migrations/postgres"),
        7,
        include_str!("../../migrations/superseded/postgres/0007_sagas_of_any_type.sql"),
    )
});

/// The orchestrator's migrations.
pub static MIGRATIONS: std::sync::LazyLock<Migrations> = std::sync::LazyLock::new(|| Migrations {
    sqlite: &SQLITE,
    postgres: &POSTGRES,
    runtime: None,
});

/// What happened to a start.
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
    /// The saga with this id, or sagas whose input or context holds this text.
    pub search: Option<String>,
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
    /// Times the broker refused it before.
    pub attempts: i64,
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
    pub changes: u64,
}

#[derive(Clone, Debug)]
pub struct SagaStore {
    db: Db,
    watchers: watch::Watchers,
    /// Counts what committed transitions did (see [`observe`]).
    metrics: Arc<SagaMetrics>,
    /// Where the definitions of stored sagas are looked up, and recorded ones learnt.
    definitions: Option<Arc<crate::saga::Registry>>,
    /// Signalled after every commit that wrote outbox rows: the relay waits on it.
    outbox_written: Arc<tokio::sync::Notify>,
    /// Signalled after every commit that recorded saga changes: the live feed waits on it.
    changes_written: Arc<tokio::sync::Notify>,
}

impl SagaStore {
    pub fn new(db: Db, metrics: Metrics) -> Self {
        SagaStore {
            db,
            watchers: Default::default(),
            metrics: SagaMetrics::of(&metrics),
            definitions: None,
            outbox_written: Default::default(),
            changes_written: Default::default(),
        }
    }

    /// The orchestrator's families, shared (the live feed counts its streams there).
    pub fn saga_metrics_arc(&self) -> Arc<SagaMetrics> {
        self.metrics.clone()
    }

    /// The orchestrator's families, for the gauges read at scrape time.
    pub fn saga_metrics(&self) -> &SagaMetrics {
        &self.metrics
    }

    /// What the relay waits on: signalled once committed transactions wrote outbox rows. A
    /// signal while the relay is busy is kept, so it runs another round.
    pub fn outbox_written(&self) -> Arc<tokio::sync::Notify> {
        self.outbox_written.clone()
    }

    /// What the live feed waits on: signalled once committed transactions recorded changes.
    pub fn changes_written(&self) -> Arc<tokio::sync::Notify> {
        self.changes_written.clone()
    }

    /// Everything a commit causes, run once it has committed and only then, for every writer
    /// (replies, timers, new sagas, cancel and retry): the relay woken for the `messages` it
    /// wrote, the waiters of each saga it `moved` told that it ended (or, running again, any
    /// final state handed out forgotten), the live feed woken, and the transitions counted
    /// (`None` before: a new saga).
    fn after_commit<'a>(
        &self,
        moved: impl IntoIterator<Item = (Option<&'a Before>, &'a SagaState)>,
        messages: usize,
    ) {
        if messages > 0 {
            self.outbox_written.notify_one();
        }
        let mut any = false;
        for (before, state) in moved {
            any = true;
            match before {
                None => observe::started(&self.metrics, state),
                Some(before) => {
                    if has_ended(state) {
                        self.watchers.wake(state);
                    } else {
                        self.watchers.reopened(state.saga_id);
                    }
                    observe::observe(&self.metrics, before, state);
                }
            }
        }
        if any {
            self.changes_written.notify_one();
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

    pub fn db(&self) -> &Db {
        &self.db
    }
}

async fn count(pool: &AnyPool, sql: &str) -> Result<i64> {
    Ok(sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await?)
}

/// Whether `state` is final: what long polls wait for.
fn has_ended(state: &SagaState) -> bool {
    state.status.is_terminal()
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
