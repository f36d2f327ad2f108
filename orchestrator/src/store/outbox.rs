//! The outbox: messages written with the saga change that caused them, claimed and published by
//! the relay in order per saga and topic, then stamped sent.

use super::*;

impl SagaStore {
    /// Claims up to `limit` unpublished outbox rows for this relay, oldest first, leaving out
    /// rows waiting out a failure (`not_before`) — which still hold back their saga's later rows
    /// on their topic.
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
    pub async fn claim_unsent(&self, limit: i64, now: i64) -> Result<Claim> {
        const OLDEST_OF_ITS_KEY: &str = "SELECT id, topic, msg_key, payload, traceparent, tracestate, attempts \
             FROM outbox o WHERE sent_at IS NULL AND (not_before IS NULL OR not_before <= $2) \
             AND NOT EXISTS (SELECT 1 FROM outbox e WHERE e.topic = o.topic AND e.msg_key = o.msg_key \
                             AND e.sent_at IS NULL AND e.id < o.id) \
             ORDER BY id LIMIT $1";
        match self.db.engine {
            Engine::Postgres => {
                let mut tx = self.db.writer.begin().await?;
                let rows = sqlx::query(&format!("{OLDEST_OF_ITS_KEY} FOR UPDATE SKIP LOCKED"))
                    .bind(limit)
                    .bind(now)
                    .fetch_all(&mut *tx)
                    .await?;
                Ok(Claim {
                    rows: outbox_rows(&rows)?,
                    tx: Some(tx),
                })
            }
            Engine::Sqlite => {
                let rows = sqlx::query(OLDEST_OF_ITS_KEY)
                    .bind(limit)
                    .bind(now)
                    .fetch_all(&self.db.writer)
                    .await?;
                Ok(Claim {
                    rows: outbox_rows(&rows)?,
                    tx: None,
                })
            }
        }
    }

    /// Marks the published rows of a claim as sent and releases the rest: a row not in `sent`
    /// stays unsent and is claimed again by a later round of any relay; one in `failed` (with
    /// the broker's refusal) only once its `not_before` has passed, so it holds back nothing but
    /// its own saga's later rows on its topic.
    pub async fn finish_claim(
        &self,
        claim: Claim,
        sent: &[i64],
        failed: &[(i64, String)],
        now: i64,
    ) -> Result<()> {
        let failed: Vec<(i64, i64, &str)> = failed
            .iter()
            .map(|(id, error)| {
                let before = claim.rows.iter().find(|r| r.id == *id).map(|r| r.attempts);
                (*id, before.unwrap_or(0) + 1, error.as_str())
            })
            .collect();
        match claim.tx {
            Some(mut tx) => {
                mark_sent(&mut tx, self.db.engine, sent, now).await?;
                mark_refused(&mut tx, &failed, now).await?;
                tx.commit().await?;
            }
            None => {
                let mut conn = self.db.writer.acquire().await?;
                mark_sent(&mut conn, self.db.engine, sent, now).await?;
                mark_refused(&mut conn, &failed, now).await?;
            }
        }
        Ok(())
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

    /// What on-call watches of the sagas, read at scrape time: how many have not ended, how
    /// many of those are parked (no deadline brings them back), when the oldest of them started,
    /// and how many dead letters wait in the table.
    pub async fn saga_gauges(&self) -> Result<SagaGauges> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, \
             COALESCE(SUM(CASE WHEN wake_at IS NULL THEN 1 ELSE 0 END), 0) AS parked, \
             MIN(created_at) AS oldest \
             FROM sagas WHERE status IN ('STARTED', 'COMPENSATING', 'CANCELLING')",
        )
        .fetch_one(&self.db.reader)
        .await?;
        let stored = count(&self.db.reader, "SELECT COUNT(*) FROM dead_letters").await?;
        Ok(SagaGauges {
            in_flight: row.try_get("n")?,
            parked: row.try_get("parked")?,
            oldest_started_at: row.try_get("oldest")?,
            dead_letters_stored: stored,
        })
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

/// Stamps outbox rows as published.
pub(super) async fn mark_sent(
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

/// Records each `(id, attempts so far, refusal)`: the row waits before it is claimed again.
async fn mark_refused(
    conn: &mut sqlx::AnyConnection,
    failed: &[(i64, i64, &str)],
    now: i64,
) -> Result<()> {
    for (id, attempts, error) in failed {
        sqlx::query(
            "UPDATE outbox SET attempts = $1, not_before = $2, last_error = $3 WHERE id = $4",
        )
        .bind(*attempts)
        .bind(now + retry_after_ms(*attempts))
        .bind(*error)
        .bind(*id)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// How long a row the broker refused `attempts` times waits before it is tried again: 100 ms,
/// doubling, at most 30 s.
fn retry_after_ms(attempts: i64) -> i64 {
    100_i64
        .saturating_mul(1 << attempts.clamp(1, 20).saturating_sub(1))
        .min(30_000)
}

pub(super) fn outbox_rows(rows: &[sqlx::any::AnyRow]) -> Result<Vec<OutboxRow>> {
    rows.iter()
        .map(|r| {
            Ok(OutboxRow {
                id: r.try_get("id")?,
                attempts: r
                    .try_get::<i64, _>("attempts")
                    .or_else(|_| r.try_get::<i32, _>("attempts").map(i64::from))?,
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

pub(super) async fn insert_outbox(
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
pub(super) const OUTBOX_ROWS_PER_INSERT: usize = 1_000; // 7 parameters each

/// See [`SagaStore::saga_gauges`].
#[derive(Debug, Clone, Copy)]
pub struct SagaGauges {
    pub in_flight: i64,
    pub parked: i64,
    pub oldest_started_at: Option<i64>,
    pub dead_letters_stored: i64,
}
