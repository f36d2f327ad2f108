//! Where commands are sent: the outbox relay.
//!
//! It publishes committed outbox rows to Kafka in the order they were written and stamps them as
//! sent. It wakes when a transaction wrote new rows (the store signals it after each commit,
//! whoever the writer: [`SagaStore::outbox_written`]) and also polls, so rows
//! left by a crash (written, never published) go out after a restart, and rows written by another
//! instance are published even if that instance died. A crash between publishing and stamping
//! publishes a row twice; receivers de-duplicate on the message id. Several relays (one per
//! orchestrator instance on PostgreSQL) share the work through row claims; see
//! [`SagaStore::claim_unsent`].

use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use platform::retry::{self, Retried};

use crate::store::{OutboxRow, SagaStore};

/// Rows published per round trip to the database.
const BATCH: i64 = 500;
/// How long deliveries in flight may still take once shutdown has begun.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often the relay looks for rows nobody told it about.
const POLL: Duration = Duration::from_millis(500);

#[derive(Clone)]
pub struct Relay {
    store: SagaStore,
    producer: FutureProducer,
    wake: Arc<Notify>,
}

impl Relay {
    pub fn new(store: SagaStore, producer: FutureProducer) -> Self {
        Relay {
            wake: store.outbox_written(),
            store,
            producer,
        }
    }

    /// Publishes until `cancel` fires. A round in progress is finished first, so nothing is left
    /// half-sent.
    pub async fn run(self, cancel: CancellationToken) {
        let mut failures = retry::policy_iter();
        loop {
            let claim = match retry::until_cancelled(
                &cancel,
                "reading the outbox",
                |e: &crate::Error| e.is_transient(),
                || self.store.claim_unsent(BATCH, platform::time::now_ms()),
            )
            .await
            {
                Retried::Ok(claim) => claim,
                Retried::Permanent(e) => {
                    tracing::error!(error = %e, "cannot read the outbox");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(POLL) => {}
                    }
                    continue;
                }
                Retried::Cancelled => break,
            };
            if claim.rows.is_empty() {
                drop(claim);
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(POLL) => {}
                }
                continue;
            }
            let full_batch = claim.rows.len() as i64 == BATCH;
            let (sent, refused) = self.publish(&claim.rows, &cancel).await;
            for (id, error) in &refused {
                if let Some(row) = claim.rows.iter().find(|r| r.id == *id) {
                    tracing::warn!(
                        saga_id = %row.key,
                        topic = %row.topic,
                        attempts = row.attempts + 1,
                        %error,
                        "outbox row not published; it is tried again later, holding back only \
                         its saga's later messages on that topic"
                    );
                }
            }
            let nothing_went = sent.is_empty() && !refused.is_empty();
            if let Err(e) = self
                .store
                .finish_claim(claim, &sent, &refused, platform::time::now_ms())
                .await
            {
                // The rows stay unsent and go out again (receivers de-duplicate on message id).
                tracing::warn!(error = %e, rows = sent.len(), "cannot mark outbox rows sent");
            }
            if nothing_went {
                // Every row refused: the broker is likely away; wait before the next round. A
                // refusal among deliveries that went is the row's own, retried on its schedule.
                let delay = failures.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(
                    retry_in_ms = delay.as_millis() as u64,
                    "no outbox row published; retrying"
                );
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            } else {
                failures = retry::policy_iter();
                if !full_batch {
                    // Let replies that arrived meanwhile batch up for the next round.
                    tokio::task::yield_now().await;
                }
            }
        }
        platform::kafka::flush(&self.producer);
    }

    /// Hands every row to the producer first, then waits for the deliveries, so a batch costs one
    /// round trip to the broker rather than one per row. Returns the ids delivered, and those
    /// refused with why. Rows left unconfirmed by a shutdown are in neither: they go out after
    /// the restart. A claim holds at most one row per saga and topic, so one refused row never
    /// lets a later row of its saga overtake it, and the others go on.
    async fn publish(
        &self,
        rows: &[OutboxRow],
        cancel: &CancellationToken,
    ) -> (Vec<i64>, Vec<(i64, String)>) {
        let mut pending = Vec::with_capacity(rows.len());
        let mut refused = Vec::new();
        for row in rows {
            let mut record = FutureRecord::to(&row.topic)
                .key(&row.key)
                .payload(&row.payload);
            if let Some(headers) = row.trace.kafka_headers() {
                record = record.headers(headers);
            }
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push((row.id, delivery));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => {
                        refused.push((row.id, e.to_string()));
                        break;
                    }
                }
            }
        }
        let mut sent = Vec::with_capacity(pending.len());
        // On shutdown, deliveries get a grace period; rows not confirmed by then stay unsent and
        // go out again after the restart (receivers de-duplicate).
        let stop = async {
            cancel.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        tokio::pin!(stop);
        for (id, delivery) in pending {
            let delivery = tokio::select! {
                d = delivery => d,
                _ = &mut stop => break,
            };
            match delivery {
                Ok(Ok(_)) => sent.push(id),
                Ok(Err((e, _))) => refused.push((id, e.to_string())),
                Err(_) => refused.push((id, "the producer dropped the delivery".to_string())),
            }
        }
        (sent, refused)
    }
}
