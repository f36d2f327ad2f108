//! Messages nobody can handle: published to the dead-letter topic, or, when that topic cannot
//! be written (missing, denied by an ACL, the broker refusing it), kept in the component's own
//! database and published from there once it can be.
//!
//! Publishing used to be retried until shutdown while the consume loop waited for it, so one
//! unreadable message with an unwritable dead-letter topic stopped every partition of the
//! component, and a rebalance moved the stall onto the next instance. Now publishing gets
//! [`PUBLISH_LIMIT`]; past it the message goes to the `dead_letters` table (its original bytes,
//! key and headers, with the `dlq.*` headers) and the partition moves on. A background task
//! ([`DeadLetters::drain`]) publishes stored rows every [`DRAIN_EVERY`] and deletes them once
//! the topic has them; the orchestrator lists its rows at `GET /dead-letters`.
//!
//! A publish that timed out may still be delivered by the producer later, so a message can
//! reach the dead-letter topic twice: dead letters are at-least-once, like everything else.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use serde::Serialize;
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use crate::db::{self, Db};
use crate::metrics::{DeadLetterLabels, Metrics};
use crate::retry::{self, Retried};

/// How long a dead letter may take to reach the topic before it is stored instead.
pub const PUBLISH_LIMIT: Duration = Duration::from_secs(10);
/// How often stored dead letters are offered to the topic again.
pub const DRAIN_EVERY: Duration = Duration::from_secs(30);
/// Stored rows published per drain round.
const DRAIN_BATCH: i64 = 100;

/// The headers a dead letter carries besides the original message's, with what each says: one
/// list, written by [`DeadLetters::publish`] and described in `/asyncapi.json`.
pub const HEADERS: [(&str, &str); 6] = [
    ("dlq.source.topic", "The topic the message was read from"),
    ("dlq.source.partition", "Its partition"),
    ("dlq.source.offset", "Its offset there"),
    ("dlq.component", "The component that could not handle it"),
    ("dlq.reason", "Why, in one word (see the enum)"),
    ("dlq.error", "What went wrong, in words"),
];

/// Publishes messages that cannot be handled to the dead-letter topic.
#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
    source: String,
    metrics: Metrics,
    /// Where dead letters go when the topic cannot take them (`None`: no database; publishing
    /// is then retried until shutdown).
    store: Option<Db>,
    /// Set when a dead letter had to be stored: the next ones are stored at once instead of
    /// each holding up its partition for [`PUBLISH_LIMIT`]; cleared when the topic takes one.
    topic_failing: Arc<AtomicBool>,
}

/// One dead letter kept in the database, as `GET /dead-letters` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StoredDeadLetter {
    pub id: String,
    pub component: String,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    /// The original key and payload, base64.
    pub key: Option<String>,
    pub payload: Option<String>,
    /// Every header, original and `dlq.*`, as `[name, base64 value or null]`.
    pub headers: serde_json::Value,
    pub reason: String,
    pub error: String,
    pub stored_at: String,
}

impl DeadLetters {
    /// `source` names the component that gave up on the message (e.g. `orchestrator`).
    pub fn new(
        producer: FutureProducer,
        topic: impl Into<String>,
        source: impl Into<String>,
        metrics: &Metrics,
    ) -> Self {
        let letters = DeadLetters {
            producer,
            topic: topic.into(),
            source: source.into(),
            metrics: metrics.clone(),
            store: None,
            topic_failing: Arc::new(AtomicBool::new(false)),
        };
        // Every reason's series exists from the start, at zero: an alert on `increase()` then
        // sees the first dead letter, which a series created by it would hide.
        for reason in crate::kafka::dead_letter::ALL {
            let _ = letters
                .metrics
                .dead_letters
                .get_or_create(&DeadLetterLabels {
                    component: letters.source.clone(),
                    reason: reason.to_string(),
                });
        }
        letters
    }

    /// The component that gives up on messages.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Keeps dead letters the topic cannot take in `db`'s `dead_letters` table.
    pub fn with_store(mut self, db: Db) -> Self {
        self.store = Some(db);
        self
    }

    /// Copies the original bytes, key and headers, adding `dlq.*` headers with the source topic,
    /// partition, offset, the component and the error, to the dead-letter topic — or, if that
    /// does not succeed within [`PUBLISH_LIMIT`], to the database. `false` only if `cancel`
    /// fired first (the message is then not consumed, and comes again).
    pub async fn publish(
        &self,
        message: &BorrowedMessage<'_>,
        reason: &str,
        error: &str,
        cancel: &CancellationToken,
    ) -> bool {
        let mut headers: Vec<(String, Option<Vec<u8>>)> = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        let [topic, partition, offset, component, why, text] = HEADERS.map(|(name, _)| name);
        for (k, v) in [
            (topic, message.topic().to_string()),
            (partition, message.partition().to_string()),
            (offset, message.offset().to_string()),
            (component, self.source.clone()),
            (why, reason.to_string()),
            (text, error.to_string()),
        ] {
            headers.push((k.to_string(), Some(v.into_bytes())));
        }
        let letter = Letter {
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
        };
        // Neither the topic nor the table may take it right now (the database refusing the row
        // for good, say): the letter is never dropped and the consumer never stops over it; the
        // partition waits, saying so, and both are tried again.
        let mut backoff = Duration::from_secs(1);
        loop {
            match self
                .publish_once(message, reason, error, &letter, cancel)
                .await
            {
                Some(published) => return published,
                None => {
                    tracing::error!(
                        topic = message.topic(),
                        partition = message.partition(),
                        offset = message.offset(),
                        retry_in_s = backoff.as_secs(),
                        "a dead letter can be neither published nor stored; its partition waits"
                    );
                    tokio::select! {
                        _ = cancel.cancelled() => return false,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// One try: the topic (within [`PUBLISH_LIMIT`]), else the table. `Some(true)` once either
    /// has it, `Some(false)` if `cancel` fired, `None` if neither took it.
    async fn publish_once(
        &self,
        message: &BorrowedMessage<'_>,
        reason: &str,
        error: &str,
        letter: &Letter,
        cancel: &CancellationToken,
    ) -> Option<bool> {
        let started = tokio::time::Instant::now();
        let limit = if self.topic_failing.load(Ordering::Relaxed) {
            Duration::ZERO
        } else {
            PUBLISH_LIMIT
        };
        let mut delay = Duration::from_millis(100);
        loop {
            let left = limit.saturating_sub(started.elapsed());
            let outcome = match &self.store {
                Some(_) if left.is_zero() => break,
                Some(_) => tokio::time::timeout(left, self.send(letter))
                    .await
                    .unwrap_or_else(|_| Err("no delivery in time".into())),
                None => self.send(letter).await,
            };
            match outcome {
                Ok(()) => {
                    tracing::warn!(
                        topic = message.topic(),
                        partition = message.partition(),
                        offset = message.offset(),
                        reason,
                        error,
                        "message dead-lettered"
                    );
                    self.count(reason);
                    return Some(true);
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot publish to the dead-letter topic; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return Some(false),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        // The topic would not take it in time: keep it in the database instead.
        let Some(store) = &self.store else {
            return Some(false);
        };
        let stored =
            retry::until_cancelled(cancel, "storing a dead letter", db::is_transient, || {
                self.store_letter(store, message, reason, error, letter)
            })
            .await;
        match stored {
            Retried::Ok(id) => {
                self.topic_failing.store(true, Ordering::Relaxed);
                tracing::error!(
                    topic = message.topic(),
                    partition = message.partition(),
                    offset = message.offset(),
                    reason,
                    error,
                    dead_letter_topic = %self.topic,
                    stored_as = %id,
                    "dead-letter topic unwritable: message kept in the dead_letters table"
                );
                self.count(reason);
                Some(true)
            }
            Retried::Permanent(e) => {
                tracing::error!(error = %e, "cannot store a dead letter either");
                None
            }
            Retried::Cancelled => Some(false),
        }
    }

    fn count(&self, reason: &str) {
        self.metrics
            .dead_letters
            .get_or_create(&DeadLetterLabels {
                component: self.source.clone(),
                reason: reason.to_string(),
            })
            .inc();
    }

    async fn send(&self, letter: &Letter) -> Result<(), String> {
        let mut headers = OwnedHeaders::new_with_capacity(letter.headers.len());
        for (k, v) in &letter.headers {
            headers = headers.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.topic).headers(headers);
        if let Some(k) = &letter.key {
            record = record.key(k.as_slice());
        }
        if let Some(p) = &letter.payload {
            record = record.payload(p.as_slice());
        }
        self.producer
            .send(record, Duration::from_secs(5))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e.to_string())
    }

    async fn store_letter(
        &self,
        store: &Db,
        message: &BorrowedMessage<'_>,
        reason: &str,
        error: &str,
        letter: &Letter,
    ) -> Result<String, sqlx::Error> {
        let id = uuid::Uuid::new_v4().to_string();
        let headers: Vec<serde_json::Value> = letter
            .headers
            .iter()
            .map(|(k, v)| serde_json::json!([k, v.as_ref().map(|v| B64.encode(v))]))
            .collect();
        sqlx::query(
            "INSERT INTO dead_letters (dlq_id, component, source_topic, source_partition, \
             source_offset, msg_key, payload, headers, reason, error, stored_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&id)
        .bind(&self.source)
        .bind(message.topic())
        .bind(message.partition())
        .bind(message.offset())
        .bind(letter.key.as_ref().map(|k| B64.encode(k)))
        .bind(letter.payload.as_ref().map(|p| B64.encode(p)))
        .bind(serde_json::Value::Array(headers).to_string())
        .bind(reason)
        // The error may quote the message, NUL included, which a PostgreSQL text column refuses:
        // the letter would then be neither published nor stored.
        .bind(error.replace('\0', "\u{FFFD}"))
        .bind(crate::time::now_ms())
        .execute(&store.writer)
        .await?;
        Ok(id)
    }

    /// Publishes stored dead letters, oldest first, deleting each once the topic has it; stops
    /// at the first that fails. Returns how many went and how many are left.
    pub async fn republish_stored(&self) -> Result<(usize, i64), sqlx::Error> {
        let Some(store) = &self.store else {
            return Ok((0, 0));
        };
        let mut published = 0;
        for row in list(store, DRAIN_BATCH).await? {
            let letter = Letter::decode(&row);
            if let Err(e) = self.send(&letter).await {
                tracing::warn!(error = %e, "stored dead letters still cannot be published");
                break;
            }
            self.topic_failing.store(false, Ordering::Relaxed);
            sqlx::query("DELETE FROM dead_letters WHERE dlq_id = $1")
                .bind(&row.id)
                .execute(&store.writer)
                .await?;
            published += 1;
        }
        let left: i64 = sqlx::query("SELECT COUNT(*) AS n FROM dead_letters")
            .fetch_one(&store.reader)
            .await?
            .try_get("n")?;
        if published > 0 {
            tracing::info!(
                published,
                left,
                "stored dead letters published to the dead-letter topic"
            );
        }
        Ok((published, left))
    }

    /// Offers stored dead letters to the topic every [`DRAIN_EVERY`] until `cancel` fires.
    pub async fn drain(self, cancel: CancellationToken) {
        if self.store.is_none() {
            return;
        }
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(DRAIN_EVERY) => {}
            }
            let round = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.republish_stored() => r,
            };
            if let Err(e) = round {
                tracing::warn!(error = %e, "cannot read stored dead letters");
            }
        }
    }
}

/// The stored dead letters of `db`, oldest first.
pub async fn list(db: &Db, limit: i64) -> Result<Vec<StoredDeadLetter>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT dlq_id, component, source_topic, source_partition, source_offset, msg_key, \
         payload, headers, reason, error, stored_at FROM dead_letters \
         ORDER BY stored_at, dlq_id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(&db.reader)
    .await?;
    rows.iter()
        .map(|r| {
            let headers: String = r.try_get("headers")?;
            Ok(StoredDeadLetter {
                id: r.try_get("dlq_id")?,
                component: r.try_get("component")?,
                source_topic: r.try_get("source_topic")?,
                source_partition: r.try_get::<i32, _>("source_partition")?,
                source_offset: r.try_get("source_offset")?,
                key: r.try_get("msg_key")?,
                payload: r.try_get("payload")?,
                headers: serde_json::from_str(&headers).unwrap_or(serde_json::Value::Null),
                reason: r.try_get("reason")?,
                error: r.try_get("error")?,
                stored_at: crate::time::rfc3339(r.try_get("stored_at")?),
            })
        })
        .collect()
}

/// A dead letter's bytes.
struct Letter {
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Letter {
    fn decode(row: &StoredDeadLetter) -> Letter {
        let bytes = |s: &Option<String>| s.as_ref().and_then(|s| B64.decode(s).ok());
        let headers = row
            .headers
            .as_array()
            .map(|hs| {
                hs.iter()
                    .filter_map(|h| {
                        let name = h.get(0)?.as_str()?.to_string();
                        let value = h
                            .get(1)
                            .and_then(|v| v.as_str())
                            .and_then(|v| B64.decode(v).ok());
                        Some((name, value))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Letter {
            key: bytes(&row.key),
            payload: bytes(&row.payload),
            headers,
        }
    }
}
