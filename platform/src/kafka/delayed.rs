//! Retry topics: a consume loop that handles each message only once it is due, without holding
//! back anything else.
//!
//! A message on a retry topic carries [`DUE_HEADER`], when it may be tried again. When the next
//! message of a partition is not due, that partition alone is paused and its position put back on
//! the message; the loop goes on with every other partition and resumes the paused one at its due
//! time. Messages of one retry topic wait equally long, so a partition's messages fall due in
//! order and the first one not due is the only one to wait for. Nothing is held in memory: a
//! restart or a rebalance simply reads the message again and waits out what remains.

use std::collections::HashMap;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use rdkafka::consumer::Consumer;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::consumer::close;
use super::{Disposition, KafkaConsumer, MessageHandler};
use crate::dead_letters::DeadLetters;

/// The header of a message on a retry topic: when it is due, in milliseconds since the epoch.
pub const DUE_HEADER: &str = "retry.due_ms";

/// When `message` is due: its [`DUE_HEADER`], or now when it has none (or an unreadable one).
pub fn due_ms(message: &BorrowedMessage<'_>) -> i64 {
    message
        .headers()
        .and_then(|h| {
            h.iter()
                .find(|h| h.key == DUE_HEADER)
                .and_then(|h| h.value)
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// How long without a message before the loop counts as caught up.
const IDLE: Duration = Duration::from_secs(2);

/// A paused partition: when it is due, and the offset to read again from.
struct Held {
    due_ms: i64,
    offset: i64,
}

/// Consumes a retry topic with `handler`, each message at its due time; a message handled (or
/// dead-lettered) has its offset stored, as in [`super::run_consumer`]. `lateness` shows how long
/// past its due time the message handled last was taken up (0 when the loop keeps up), the age
/// of the oldest due retry. Stops when `cancel` fires.
pub async fn run_delayed<H: MessageHandler>(
    consumer: KafkaConsumer,
    handler: H,
    dead_letters: DeadLetters,
    lateness: Gauge<f64, std::sync::atomic::AtomicU64>,
    cancel: CancellationToken,
) {
    let mut held: HashMap<(String, i32), Held> = HashMap::new();
    loop {
        let next_due = held.values().map(|h| h.due_ms).min();
        let wait = next_due
            .map(|due| Duration::from_millis((due - crate::time::now_ms()).max(0) as u64))
            .unwrap_or(Duration::from_secs(3600));
        let received = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(wait), if next_due.is_some() => {
                resume_due(&consumer, &mut held);
                continue;
            }
            m = consumer.recv() => m,
            // Nothing arrives: nothing due waits either.
            _ = tokio::time::sleep(IDLE) => {
                lateness.set(0.0);
                continue;
            }
        };
        let message = match received {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "kafka consumer error");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let key = (message.topic().to_string(), message.partition());
        if held.contains_key(&key) {
            // Fetched before the pause took hold: read again from the held offset on resume.
            continue;
        }
        let now = crate::time::now_ms();
        let due = due_ms(&message);
        if due > now {
            hold(&consumer, &message);
            held.insert(
                key,
                Held {
                    due_ms: due,
                    offset: message.offset(),
                },
            );
            continue;
        }
        lateness.set((now - due) as f64 / 1000.0);
        let done = match handler.handle(&message).await {
            Disposition::Done => true,
            Disposition::DoneWhenDelivered(delivery) => matches!(delivery.await, Ok(Ok(_))),
            Disposition::DeadLetter { reason, error } => {
                dead_letters
                    .publish(&message, reason, &error, &cancel)
                    .await
            }
            Disposition::Abandoned => false,
        };
        if !done {
            // Stopping: the message is read again after the restart.
            break;
        }
        if let Err(e) =
            consumer.store_offset(message.topic(), message.partition(), message.offset())
        {
            tracing::warn!(error = %e, "cannot store offset");
        }
    }
    close(consumer).await;
}

/// Pauses `message`'s partition and puts its position back on it.
fn hold(consumer: &KafkaConsumer, message: &BorrowedMessage<'_>) {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(message.topic(), message.partition());
    if let Err(e) = consumer.pause(&tpl) {
        tracing::warn!(error = %e, topic = message.topic(), "cannot pause a partition");
    }
    seek(
        consumer,
        message.topic(),
        message.partition(),
        message.offset(),
    );
}

/// Puts the position of every partition now due back on its held message and resumes it.
fn resume_due(consumer: &KafkaConsumer, held: &mut HashMap<(String, i32), Held>) {
    let now = crate::time::now_ms();
    let due: Vec<(String, i32)> = held
        .iter()
        .filter(|(_, h)| h.due_ms <= now)
        .map(|(k, _)| k.clone())
        .collect();
    for key in due {
        let Some(h) = held.remove(&key) else { continue };
        // Again: a rebalance in between may have resumed the partition and read past it.
        seek(consumer, &key.0, key.1, h.offset);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&key.0, key.1);
        if let Err(e) = consumer.resume(&tpl) {
            // Not assigned here any more: its new owner reads it.
            tracing::debug!(error = %e, topic = %key.0, "cannot resume a partition");
        }
    }
}

fn seek(consumer: &KafkaConsumer, topic: &str, partition: i32, offset: i64) {
    // Timeout 0: the seek is queued, not waited for; the partition is paused meanwhile.
    if let Err(e) = consumer.seek(topic, partition, Offset::Offset(offset), Duration::ZERO) {
        tracing::debug!(error = %e, topic, partition, "cannot seek a partition");
    }
}
