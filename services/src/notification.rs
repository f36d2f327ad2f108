//! The notification service: one JSON line per message on every command, event, lifecycle and
//! dead-letter topic, to a log file and (optionally) stdout, so `tail -f` shows sagas moving.
//!
//! It has its own consumer group, so it sees every message without taking any from the
//! orchestrator or the services.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};

use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::Message;
use serde_json::{json, Map, Value};
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
    /// When the log file is rotated and how many old ones are kept.
    pub rotation: Rotation,
    pub kafka: KafkaSettings,
    pub topics: Topics,
    /// Where metrics and readiness go (shared with the other components of the process).
    pub ops: Ops,
    /// Emails and alerts from saga outcomes; `None`: only the log.
    pub delivery: Option<crate::delivery::DeliveryConfig>,
}

/// The notification log's rotation: past `max_bytes` the file is renamed `<name>.1` (older ones
/// shift to `.2`, ...) and a new one started; only `keep` old files are kept. The current file
/// keeps its name, so `tail -F` follows it across rotations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    pub max_bytes: u64,
    pub keep: usize,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            max_bytes: 100 * 1024 * 1024,
            keep: 5,
        }
    }
}

/// [`Rotation`] as settings.
#[derive(Debug, Clone, clap::Args)]
pub struct RotationArgs {
    /// Rotate the notification log once it passes this many bytes.
    #[arg(long, env = "NOTIFICATION_LOG_MAX_BYTES", default_value_t = Rotation::default().max_bytes,
          value_parser = clap::value_parser!(u64).range(1024..))]
    pub notification_log_max_bytes: u64,
    /// Rotated notification logs kept (`notifications.log.1` is the newest).
    #[arg(long, env = "NOTIFICATION_LOG_KEEP", default_value_t = Rotation::default().keep)]
    pub notification_log_keep: usize,
}

impl RotationArgs {
    pub fn rotation(&self) -> Rotation {
        Rotation {
            max_bytes: self.notification_log_max_bytes,
            keep: self.notification_log_keep,
        }
    }
}

/// The log file, rotated by size. Writes go to the blocking pool: one per batch of messages.
#[derive(Clone)]
pub(crate) struct LogFile(Arc<std::sync::Mutex<FileRotate<AppendCount>>>);

impl LogFile {
    /// Opens (creating) `path`, failing at once if it cannot be written.
    fn open(path: &Path, rotation: Rotation) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let file = FileRotate::new(
            path,
            AppendCount::new(rotation.keep),
            // Rotate after the write that passes the limit: a batch of lines is never split.
            ContentLimit::BytesSurpassed(usize::try_from(rotation.max_bytes).unwrap_or(usize::MAX)),
            Compression::None,
            None,
        );
        Ok(LogFile(Arc::new(std::sync::Mutex::new(file))))
    }

    pub(crate) async fn append(&self, text: Arc<String>) -> std::io::Result<()> {
        let file = self.0.clone();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
            f.write_all(text.as_bytes())?;
            f.flush()
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

struct Notifier {
    file: LogFile,
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
    let file = LogFile::open(&config.log_file, config.rotation).map_err(log_err)?;
    let t = &config.topics;
    // Every topic: commands, replies, lifecycle events and dead letters; but not the delivery
    // jobs (whole rendered emails), whose every attempt the deliveries log instead.
    let jobs = crate::delivery::job_topics(t);
    let topics = t.all();
    let names: Vec<&str> = topics
        .iter()
        .map(|t| t.name.as_str())
        .filter(|n| !jobs.contains(n))
        .collect();
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
    let deliveries = match config.delivery {
        Some(delivery) => Some(
            crate::delivery::start(
                delivery,
                &config.kafka,
                t,
                &config.ops,
                file.clone(),
                cancel.clone(),
            )
            .await?,
        ),
        None => None,
    };
    let notifier = Notifier {
        file,
        path,
        stdout: config.stdout,
        dead_letter_topic: t.dead_letter.name.clone(),
        cancel: cancel.clone(),
    };
    let token = cancel.clone();
    let join: JoinHandle<()> = tokio::spawn(async move {
        tokio::join!(
            platform::kafka::run_consumer(consumer, notifier, dead_letters, token),
            broker_check,
            async {
                if let Some(d) = deliveries {
                    d.await
                }
            }
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
    async fn handle_batch<'a>(&'a self, messages: &'a [BorrowedMessage<'a>]) -> Vec<Disposition> {
        match self.log(messages).await {
            Disposition::Done => messages.iter().map(|_| Disposition::Done).collect(),
            _ => messages.iter().map(|_| Disposition::Abandoned).collect(),
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
        let text = Arc::new(text);
        let written = platform::retry::until_cancelled(
            &self.cancel,
            "writing the notification log",
            |_| true,
            || self.file.append(text.clone()),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The log grew for ever. Past its size it is rotated: the current file
    /// keeps its name, at most `keep` old ones remain, no batch is split across files.
    #[tokio::test]
    async fn the_log_is_rotated_by_size_and_keeps_only_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notifications.log");
        let log = LogFile::open(
            &path,
            Rotation {
                max_bytes: 1_000,
                keep: 2,
            },
        )
        .unwrap();
        for i in 0..100 {
            let batch = format!("{{\"line\":{i},\"pad\":\"{}\"}}\n", "x".repeat(80));
            log.append(Arc::new(batch.repeat(2))).await.unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "notifications.log",
                "notifications.log.1",
                "notifications.log.2"
            ]
        );
        let current = std::fs::read_to_string(&path).unwrap();
        assert!(
            current.contains("\"line\":99"),
            "the newest lines are in the current file"
        );
        for name in &names {
            let text = std::fs::read_to_string(dir.path().join(name)).unwrap();
            assert!(text.len() <= 1_000 + 200, "{name}: {} bytes", text.len());
            for line in text.lines() {
                serde_json::from_str::<Value>(line).expect("whole lines only");
            }
        }
        let oldest = std::fs::read_to_string(dir.path().join("notifications.log.2")).unwrap();
        assert!(!oldest.contains("\"line\":0,"), "the oldest lines are gone");
    }
}
