//! The notification service: one JSON line per message on every command, event, lifecycle and
//! dead-letter topic, to a log file and (optionally) stdout, so `tail -f` shows sagas moving.
//!
//! It has its own consumer group, so it sees every message without taking any from the
//! orchestrator or the services.

use std::future::Future;
use std::path::PathBuf;

use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::Message;
use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use platform::kafka::{DeadLetters, Disposition, KafkaSettings, MessageHandler};
use platform::{Envelope, Ops, Topics, TraceContext};

use crate::runtime::ServiceHandle;
use crate::{Error, Result};

pub const NAME: &str = "notification-service";

/// Where the notification service writes.
#[derive(Debug, Clone)]
pub struct NotificationConfig {
    pub log_file: PathBuf,
    /// Also print every line to stdout (the default for the standalone binary).
    pub stdout: bool,
    pub kafka: KafkaSettings,
    pub topics: Topics,
    /// Where metrics and readiness go (shared with the other components of the process).
    pub ops: Ops,
}

struct Notifier {
    file: Mutex<tokio::fs::File>,
    path: String,
    stdout: bool,
    dead_letter_topic: String,
    cancel: CancellationToken,
}

/// Starts the notification service.
pub async fn start(config: NotificationConfig, cancel: CancellationToken) -> Result<ServiceHandle> {
    let path = config.log_file.display().to_string();
    let log_err = |source| Error::Log {
        path: path.clone(),
        source,
    };
    if let Some(dir) = config
        .log_file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        tokio::fs::create_dir_all(dir).await.map_err(log_err)?;
    }
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&config.log_file)
        .await
        .map_err(log_err)?;
    let t = &config.topics;
    // Every topic: commands, replies, lifecycle events and dead letters.
    let topics = t.all();
    let names: Vec<&str> = topics.iter().map(|t| t.name.as_str()).collect();
    let consumer = config.kafka.consumer(NAME, &names, &config.ops)?;
    let producer = config.kafka.producer()?;
    // A message the notifier cannot read is still logged; dead-lettering happens only if the log
    // itself cannot be written, which the handler retries instead.
    let dead_letters = DeadLetters::new(
        producer.clone(),
        &t.dead_letter.name,
        NAME,
        &config.ops.metrics,
    );
    let broker_check = platform::health::watch_broker(
        config.ops.health.clone(),
        format!("kafka:{NAME}"),
        producer,
        cancel.clone(),
    );
    let notifier = Notifier {
        file: Mutex::new(file),
        path,
        stdout: config.stdout,
        dead_letter_topic: t.dead_letter.name.clone(),
        cancel: cancel.clone(),
    };
    let token = cancel.clone();
    let join: JoinHandle<()> = tokio::spawn(async move {
        tokio::join!(
            platform::kafka::run_consumer(consumer, notifier, dead_letters, token),
            broker_check
        );
        tracing::info!(service = NAME, "stopped");
    });
    tracing::info!(service = NAME, log = %config.log_file.display(), "started");
    Ok(ServiceHandle::new(NAME, cancel, join))
}

impl MessageHandler for Notifier {
    async fn handle(&self, message: &BorrowedMessage<'_>) -> Disposition {
        self.log(std::slice::from_ref(message)).await
    }

    /// One write for every message fetched together: a file write is a trip to tokio's
    /// blocking pool (measured: one per message cost 2 % of the CPU of a benchmark).
    fn handle_batch<'a>(
        &'a self,
        messages: &'a [BorrowedMessage<'a>],
    ) -> impl Future<Output = Vec<Disposition>> + Send + 'a {
        async move {
            match self.log(messages).await {
                Disposition::Done => messages.iter().map(|_| Disposition::Done).collect(),
                _ => messages.iter().map(|_| Disposition::Abandoned).collect(),
            }
        }
    }
}

impl Notifier {
    /// Appends one line per message to the log (and stdout), retrying until it is written or
    /// shutdown begins.
    async fn log(&self, messages: &[BorrowedMessage<'_>]) -> Disposition {
        let mut text = String::new();
        for message in messages {
            let line = describe(message, message.topic() == self.dead_letter_topic);
            text.push_str(&line.to_string());
            text.push('\n');
        }
        let written = platform::retry::until_cancelled(
            &self.cancel,
            "writing the notification log",
            |_| true,
            || async {
                let mut f = self.file.lock().await;
                f.write_all(text.as_bytes()).await?;
                f.flush().await
            },
        )
        .await;
        match written {
            platform::retry::Retried::Ok(()) => {
                if self.stdout {
                    print!("{text}");
                }
                Disposition::Done
            }
            _ => {
                tracing::warn!(path = %self.path, "notification log not written");
                Disposition::Abandoned
            }
        }
    }
}

/// The log line for one message.
fn describe(message: &BorrowedMessage<'_>, dead_letter: bool) -> Value {
    let mut line = Map::new();
    line.insert(
        "time".into(),
        json!(platform::time::rfc3339(platform::time::now_ms())),
    );
    line.insert("topic".into(), json!(message.topic()));
    line.insert("partition".into(), json!(message.partition()));
    line.insert("offset".into(), json!(message.offset()));
    if let Some(trace_id) = TraceContext::from_kafka(message.headers()).trace_id() {
        line.insert("trace_id".into(), json!(trace_id));
    }
    match Envelope::from_bytes(message.payload()) {
        Ok(e) => {
            line.insert("type".into(), json!(e.message_type));
            line.insert("saga_id".into(), json!(e.correlation_id));
            line.insert("message_id".into(), json!(e.message_id));
            line.insert("causation_id".into(), json!(e.causation_id));
            line.insert("payload".into(), e.payload);
        }
        Err(reason) => {
            let raw = message
                .payload()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            let raw: String = raw.chars().take(1024).collect();
            line.insert("type".into(), json!(null));
            line.insert("unreadable".into(), json!(reason));
            line.insert("raw".into(), json!(raw));
        }
    }
    if dead_letter {
        let mut dlq = Map::new();
        if let Some(headers) = message.headers() {
            for h in headers.iter() {
                if let Some(k) = h.key.strip_prefix("dlq.") {
                    let v = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                    dlq.insert(k.to_string(), json!(v));
                }
            }
        }
        line.insert("dead_letter".into(), Value::Object(dlq));
    }
    Value::Object(line)
}
