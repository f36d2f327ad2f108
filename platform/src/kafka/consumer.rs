//! The at-least-once consume loop: a handler's dispositions, offsets stored only once the
//! effect is committed, batches, dead-lettering, and the consumer context that reports lag and
//! assignment.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::FutureExt;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::DeliveryFuture;
use rdkafka::statistics::Statistics;
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::metrics::{GroupLabels, HandledLabels, LagLabels, Metrics};
use crate::Ops;

use super::*;

/// Every consumer of the system: its context reports to the process's [`Ops`].
pub type KafkaConsumer = StreamConsumer<Observer>;

/// The context of every consumer: turns librdkafka's statistics into the consumer-lag gauges,
/// and its rebalances into the partition count and the `/readyz` check of the group.
pub struct Observer {
    group: String,
    metrics: Metrics,
    health: Health,
    /// The lag series reported last time, so partitions that moved away are dropped.
    reported: Mutex<HashSet<LagLabels>>,
}

impl Observer {
    pub(super) fn new(group: &str, ops: &Ops) -> Self {
        ops.health.set(
            &Self::check_name(group),
            false,
            "not assigned partitions yet (joining the group)",
            None,
        );
        Observer {
            group: group.to_string(),
            metrics: ops.metrics.clone(),
            health: ops.health.clone(),
            reported: Mutex::new(HashSet::new()),
        }
    }

    fn check_name(group: &str) -> String {
        format!("consumer_group:{group}")
    }
}

impl ClientContext for Observer {
    /// Runs on librdkafka's thread, every `statistics.interval.ms`: cheap, no waiting.
    fn stats(&self, statistics: Statistics) {
        let mut now = HashSet::new();
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // -1 is librdkafka's internal partition; a negative lag is "unknown".
                if *partition < 0 || p.consumer_lag < 0 {
                    continue;
                }
                let labels = LagLabels {
                    group: self.group.clone(),
                    topic: topic.clone(),
                    partition: partition.to_string(),
                };
                self.metrics
                    .consumer_lag
                    .get_or_create(&labels)
                    .set(p.consumer_lag);
                now.insert(labels);
            }
        }
        if let Ok(mut reported) = self.reported.lock() {
            for gone in reported.difference(&now) {
                self.metrics.consumer_lag.remove(gone);
            }
            *reported = now;
        }
    }
}

impl ConsumerContext for Observer {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let gauge = self
            .metrics
            .assigned_partitions
            .get_or_create(&GroupLabels {
                group: self.group.clone(),
            });
        let name = Self::check_name(&self.group);
        match rebalance {
            // With more members than partitions an empty assignment is normal: the process has
            // joined and is ready; it gets partitions when another member leaves.
            Rebalance::Assign(tpl) => {
                gauge.set(tpl.count() as i64);
                self.health.set(&name, true, "", None);
            }
            Rebalance::Revoke(_) => {
                gauge.set(0);
            }
            Rebalance::Error(e) => {
                self.health
                    .set(&name, false, format!("rebalance failed: {e}"), None);
            }
        }
    }
}

/// What a handler decided about one message.
pub enum Disposition {
    /// Handled (its effect is committed, or it was a duplicate): store the offset.
    Done,
    /// Handled, and its reply handed to the producer: store the offset once the broker has
    /// confirmed the reply. The consume loop moves on meanwhile, so a handler does not wait a
    /// broker round trip per message; offsets are still stored strictly in order.
    DoneWhenDelivered(DeliveryFuture),
    /// Cannot be handled: publish it to the dead-letter topic, then store the offset.
    DeadLetter {
        /// One of a few fixed words (see [`dead_letter`]): the metric label.
        reason: &'static str,
        /// What went wrong, for the `dlq.error` header and the logs.
        error: String,
    },
    /// Not handled because the process is stopping: do not store the offset, so the message is
    /// delivered again after the restart.
    Abandoned,
}

/// Why a message is dead-lettered: a fixed vocabulary, so the metric has few series.
pub mod dead_letter {
    /// Not an envelope: no payload, not JSON, missing fields.
    pub const UNREADABLE: &str = "unreadable";
    /// A reply naming a saga nobody has.
    pub const UNKNOWN_SAGA: &str = "unknown_saga";
    /// A message whose type is not handled, or whose fields break its contract: a command to
    /// a service, a reply to the orchestrator.
    pub const REJECTED: &str = "rejected";
    /// Handling failed with a non-transient error, `MAX_DELIVERY_ATTEMPTS` times.
    pub const FAILED: &str = "failed";
    /// A notification its transport refused for good, or after its last retry.
    pub const UNDELIVERABLE: &str = "undeliverable";
    /// Every reason, as `dlq.reason` carries it.
    pub const ALL: [&str; 5] = [UNREADABLE, UNKNOWN_SAGA, REJECTED, FAILED, UNDELIVERABLE];
}

impl Disposition {
    pub fn dead_letter(reason: &'static str, error: impl Into<String>) -> Self {
        Disposition::DeadLetter {
            reason,
            error: error.into(),
        }
    }

    /// A message that is not a readable envelope.
    pub fn unreadable(error: impl Into<String>) -> Self {
        Self::dead_letter(dead_letter::UNREADABLE, error)
    }
}

/// Handles one message. Implementations retry their own transient failures (a database that is
/// briefly away) and return [`Disposition::Abandoned`] only when shutdown interrupts them.
pub trait MessageHandler: Send + Sync {
    fn handle(&self, message: &BorrowedMessage<'_>) -> impl Future<Output = Disposition> + Send;

    /// Handles messages that arrived together, in order, returning one disposition per message.
    /// Handlers override this to share one database transaction among them; the default handles
    /// them one by one.
    fn handle_batch<'a>(
        &'a self,
        messages: &'a [BorrowedMessage<'a>],
    ) -> impl Future<Output = Vec<Disposition>> + Send + 'a {
        async move {
            let mut out = Vec::with_capacity(messages.len());
            for m in messages {
                out.push(self.handle(m).await);
            }
            out
        }
    }
}

/// A handler of messages that can handle several in one transaction (see
/// [`together_or_alone`]).
pub trait Batched: Sync {
    /// What each message is handled with: its span and trace, say.
    type Context: Send + Sync;
    /// What the shared transaction decided for each message.
    type Result: Send;
    fn context(&self, envelope: &crate::Envelope, message: &BorrowedMessage<'_>) -> Self::Context;
    /// Refuses a message before any transaction (a reply whose payload breaks its contract),
    /// with what becomes of it; `None` lets it be handled.
    fn refuse(&self, _envelope: &crate::Envelope) -> Option<Disposition> {
        None
    }
    /// Handles every readable message in one transaction; `None` when that failed (having
    /// logged why), and each must be handled alone.
    fn together(
        &self,
        items: &[(&crate::Envelope, &Self::Context)],
    ) -> impl Future<Output = Option<Vec<Self::Result>>> + Send;
    /// Finishes one message with what the shared transaction decided for it.
    fn done(
        &self,
        envelope: &crate::Envelope,
        context: &Self::Context,
        result: Self::Result,
    ) -> impl Future<Output = Disposition> + Send;
    /// Handles one message on its own, with its own retries.
    fn alone(
        &self,
        envelope: &crate::Envelope,
        context: &Self::Context,
    ) -> impl Future<Output = Disposition> + Send;
}

/// The one way a batch of messages is handled. Each message's envelope is read (one that cannot
/// be, or that the handler [refuses](Batched::refuse), is dead-lettered) and given its context;
/// when several are readable, they are handled [together](Batched::together) in one
/// transaction; when there is only one, or that transaction fails, each is handled
/// [alone](Batched::alone), with its own retries. So one bad message costs the batch its shared
/// commit, never the other messages.
pub async fn together_or_alone<B: Batched>(
    handler: &B,
    messages: &[BorrowedMessage<'_>],
) -> Vec<Disposition> {
    let parsed: Vec<Result<(crate::Envelope, B::Context), Disposition>> = messages
        .iter()
        .map(|m| {
            let envelope =
                crate::Envelope::from_bytes(m.payload()).map_err(Disposition::unreadable)?;
            match handler.refuse(&envelope) {
                Some(refused) => Err(refused),
                None => {
                    let context = handler.context(&envelope, m);
                    Ok((envelope, context))
                }
            }
        })
        .collect();
    let results = {
        let readable: Vec<(&crate::Envelope, &B::Context)> = parsed
            .iter()
            .filter_map(|p| p.as_ref().ok().map(|(e, c)| (e, c)))
            .collect();
        if readable.len() > 1 {
            handler.together(&readable).await
        } else {
            None
        }
    };
    let mut results = results.map(Vec::into_iter);
    let mut out = Vec::with_capacity(messages.len());
    for p in parsed {
        let (envelope, context) = match p {
            Ok(ok) => ok,
            Err(refused) => {
                out.push(refused);
                continue;
            }
        };
        out.push(match results.as_mut().and_then(Iterator::next) {
            Some(result) => handler.done(&envelope, &context, result).await,
            None => handler.alone(&envelope, &context).await,
        });
    }
    out
}

/// [`MessageHandler::handle`] for a [`Batched`] handler: the same path as a batch, for a batch of
/// one.
pub async fn alone<B: Batched>(handler: &B, message: &BorrowedMessage<'_>) -> Disposition {
    together_or_alone(handler, std::slice::from_ref(message))
        .await
        .pop()
        .unwrap_or(Disposition::Abandoned)
}

/// Messages handed to a handler at once, at most: the ones already fetched when the first
/// arrives, so batching adds no waiting.
pub const MAX_BATCH: usize = 256;

/// Replies handed to the producer but not confirmed yet, beyond which the loop waits.
const MAX_UNCONFIRMED: usize = 1_000;

/// A handled message whose offset is stored once everything before it is stored and its own
/// reply (if any) is confirmed.
struct Unconfirmed {
    topic: String,
    partition: i32,
    offset: i64,
    delivery: Option<DeliveryFuture>,
}

/// The consume loop every component uses: receive, handle, dead-letter if needed, store the
/// offset only after the handler is done (and its reply confirmed). Stops when `cancel` fires,
/// then commits stored offsets.
pub async fn run_consumer<H: MessageHandler>(
    consumer: KafkaConsumer,
    handler: H,
    dead_letters: DeadLetters,
    cancel: CancellationToken,
) {
    let handled = |outcome: &str| {
        dead_letters
            .metrics()
            .messages_handled
            .get_or_create_owned(&HandledLabels {
                component: dead_letters.source().to_string(),
                outcome: outcome.to_string(),
            })
    };
    let (done, dead_lettered) = (handled("done"), handled("dead_lettered"));
    let mut unconfirmed: VecDeque<Unconfirmed> = VecDeque::new();
    'receive: loop {
        let waiting = unconfirmed.front().is_some_and(|f| f.delivery.is_some());
        let first = tokio::select! {
            _ = cancel.cancelled() => break,
            m = consumer.recv() => m,
            // Nothing new to read: store the offsets of replies confirmed meanwhile, so an idle
            // consumer commits its last message instead of keeping it until the next one.
            _ = confirm_next(&consumer, &mut unconfirmed), if waiting => continue,
        };
        let first = match first {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "kafka consumer error");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match consumer.recv().now_or_never() {
                Some(Ok(m)) => batch.push(m),
                _ => break,
            }
        }
        let dispositions = handler.handle_batch(&batch).await;
        for (message, disposition) in batch.iter().zip(dispositions) {
            let delivery = match disposition {
                Disposition::Done => {
                    done.inc();
                    None
                }
                Disposition::DoneWhenDelivered(d) => {
                    done.inc();
                    Some(d)
                }
                Disposition::DeadLetter { reason, error } => {
                    if !dead_letters.publish(message, reason, &error, &cancel).await {
                        break 'receive;
                    }
                    dead_lettered.inc();
                    None
                }
                // Nothing after it is stored either: it is all delivered again after a restart.
                Disposition::Abandoned => break 'receive,
            };
            unconfirmed.push_back(Unconfirmed {
                topic: message.topic().to_string(),
                partition: message.partition(),
                offset: message.offset(),
                delivery,
            });
        }
        let full = unconfirmed.len() > MAX_UNCONFIRMED;
        store_confirmed(&consumer, &mut unconfirmed, full).await;
    }
    // Wait (briefly) for replies still on their way, so their offsets can be stored.
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        store_confirmed(&consumer, &mut unconfirmed, true),
    )
    .await;
    close(consumer).await;
    // Only a shutdown ends the loop; should anything else, the component must not go on
    // serving with a consumer that no longer consumes: it stops, and its readiness says so.
    if !cancel.is_cancelled() {
        tracing::error!(
            component = dead_letters.source(),
            "the consumer stopped on its own; stopping the component"
        );
        cancel.cancel();
    }
}

/// How long shutdown waits for a consumer to commit and leave its group.
const CLOSE_LIMIT: Duration = Duration::from_secs(10);

/// Commits the stored offsets and closes the consumer (it leaves its group) on a thread of its
/// own, waiting at most [`CLOSE_LIMIT`]. Both calls block, and closing during a rebalance can
/// block for good inside librdkafka (seen: `rd_kafka_assign` from the close's rebalance handling
/// waiting on a queue nobody serves): on a runtime worker that froze the whole process, timers
/// included. A close that does not finish is left behind; the group moves the partitions after
/// the session timeout, and offsets not committed mean redelivery, which the inbox absorbs.
pub(super) async fn close(consumer: KafkaConsumer) {
    let (done, closed) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("consumer-close".into())
        .spawn(move || {
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                // Nothing stored since the last auto-commit is also a (harmless) error here.
                tracing::debug!(error = %e, "final offset commit");
            }
            consumer.unsubscribe();
            drop(consumer);
            let _ = done.send(());
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start a thread to close the consumer");
        return;
    }
    if tokio::time::timeout(CLOSE_LIMIT, closed).await.is_err() {
        tracing::warn!(
            limit_s = CLOSE_LIMIT.as_secs(),
            "the Kafka consumer did not close in time; going on without it"
        );
    }
}

/// Waits for the reply of the oldest handled message to be confirmed (or to fail), then stores
/// its offset and those of every confirmed message after it. Cancel-safe: dropped while waiting,
/// it leaves the queue as it was.
async fn confirm_next(consumer: &KafkaConsumer, queue: &mut VecDeque<Unconfirmed>) {
    if let Some(front) = queue.front_mut() {
        if let Some(delivery) = front.delivery.as_mut() {
            if !matches!(delivery.await, Ok(Ok(_))) {
                tracing::warn!(topic = %front.topic, offset = front.offset, "reply not delivered");
            }
            front.delivery = None;
        }
    }
    store_confirmed(consumer, queue, false).await;
}

/// Stores the offsets of the handled messages at the front of the queue whose replies are
/// confirmed; with `wait`, waits for every reply in the queue.
async fn store_confirmed(consumer: &KafkaConsumer, queue: &mut VecDeque<Unconfirmed>, wait: bool) {
    while let Some(front) = queue.front_mut() {
        if let Some(delivery) = front.delivery.as_mut() {
            let result = if wait {
                Some(delivery.await)
            } else {
                delivery.now_or_never()
            };
            match result {
                None => return,
                Some(Ok(Ok(_))) => {}
                // Not delivered: the saga's step deadline makes the orchestrator re-send the
                // command, and the stored reply goes out again.
                Some(_) => {
                    tracing::warn!(topic = %front.topic, offset = front.offset, "reply not delivered")
                }
            }
        }
        if let Err(e) = consumer.store_offset(&front.topic, front.partition, front.offset) {
            tracing::warn!(error = %e, "cannot store offset");
        }
        queue.pop_front();
    }
}
