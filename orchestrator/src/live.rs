//! The live feed behind the event streams: one task per instance tails the change log (see
//! [`crate::store::Cursor`]) and broadcasts what it reads to every open stream, so a thousand
//! streams cost one query, not a thousand. It reads at once when this instance commits a change
//! and every [`POLL_EVERY`] otherwise, which brings the changes other instances commit (several
//! orchestrators on one PostgreSQL database) within that time.
//!
//! A stream subscribes before it reads what it missed from the database, so nothing falls
//! between the two; every batch says where the feed read from ([`Batch::after`]), so a stream
//! that finds a gap (the feed restarted its tail at the head, past changes committed since the
//! stream opened) reads the gap from the database too. A stream that falls a whole broadcast buffer behind — a client that does not
//! read — is dropped, not buffered: the client reconnects with its last event id and resumes
//! from the database.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::store::{ChangeFilter, ChangeRecord, Cursor, SagaStore};

/// How often the feed reads the change log when this instance committed nothing.
pub const POLL_EVERY: Duration = Duration::from_millis(250);

/// Changes per read of the change log.
pub const PAGE: i64 = 500;

/// What the feed read in one go: the changes after `after`, in commit order.
#[derive(Debug)]
pub struct Batch {
    pub after: Cursor,
    pub changes: Vec<ChangeRecord>,
}

/// Settings of the event streams.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// Streams open at once on this instance; more are answered 503.
    pub max_streams: usize,
    /// Batches a stream may fall behind before it is dropped.
    pub buffer: usize,
    /// How often a quiet stream gets a comment, so proxies and clients see it is alive.
    pub heartbeat: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_streams: 1_000,
            buffer: 256,
            heartbeat: Duration::from_secs(15),
        }
    }
}

/// One open stream's place under the cap.
pub struct Place {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<crate::observe::SagaMetrics>,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.metrics.event_streams_open.dec();
    }
}

/// The feed, shared by the HTTP handlers (cheap to clone).
#[derive(Clone)]
pub struct Feed(Arc<Inner>);

struct Inner {
    metrics: Arc<crate::observe::SagaMetrics>,
    sender: broadcast::Sender<Arc<Batch>>,
    streams: Arc<Semaphore>,
    limits: StreamLimits,
    /// Signalled by the store after every commit that recorded changes.
    written: Arc<Notify>,
    /// Fires on shutdown: every stream ends, so the server's graceful stop is not held open.
    stop: CancellationToken,
}

impl Feed {
    pub fn new(store: &SagaStore, limits: StreamLimits, stop: CancellationToken) -> Self {
        let (sender, _) = broadcast::channel(limits.buffer.max(1));
        Feed(Arc::new(Inner {
            metrics: store.saga_metrics_arc(),
            sender,
            streams: Arc::new(Semaphore::new(limits.max_streams)),
            limits,
            written: store.changes_written(),
            stop,
        }))
    }

    pub fn limits(&self) -> StreamLimits {
        self.0.limits
    }

    /// A place for one more stream, held until the guard drops, or `None` when
    /// [`StreamLimits::max_streams`] are open.
    pub fn enter(&self) -> Option<Place> {
        let permit = self.0.streams.clone().try_acquire_owned().ok()?;
        self.0.metrics.event_streams_open.inc();
        Some(Place {
            _permit: permit,
            metrics: self.0.metrics.clone(),
        })
    }

    /// Counts a stream closed because its client fell behind.
    pub fn dropped(&self) {
        self.0.metrics.event_streams_dropped.inc();
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Batch>> {
        self.0.sender.subscribe()
    }

    pub fn stopping(&self) -> &CancellationToken {
        &self.0.stop
    }

    /// Tails the change log until shutdown. Reads nothing while no stream listens.
    pub async fn run(self, store: SagaStore) {
        let inner = &self.0;
        let mut cursor: Option<Cursor> = None;
        loop {
            tokio::select! {
                _ = inner.stop.cancelled() => return,
                _ = inner.written.notified() => {}
                _ = tokio::time::sleep(POLL_EVERY) => {}
            }
            if inner.sender.receiver_count() == 0 {
                // Nobody to tell: start again from the head when someone listens.
                cursor = None;
                continue;
            }
            let mut at = match cursor {
                Some(c) => c,
                // Starting again from the head: the streams that opened since the last tail
                // are told where it is, and read what came before it themselves (their cursor
                // is older), even if nothing more is ever committed.
                None => match store.changes_head().await {
                    Ok(head) => {
                        let _ = inner.sender.send(Arc::new(Batch {
                            after: head,
                            changes: Vec::new(),
                        }));
                        head
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the change log's head; retrying");
                        continue;
                    }
                },
            };
            loop {
                match store
                    .changes_after(at, None, &ChangeFilter::default(), PAGE)
                    .await
                {
                    Ok(changes) => {
                        let full = changes.len() as i64 == PAGE;
                        let Some(last) = changes.last().map(|c| c.cursor) else {
                            break;
                        };
                        // No receiver (all left meanwhile) is no error.
                        let _ = inner.sender.send(Arc::new(Batch { after: at, changes }));
                        at = last;
                        if !full {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the change log; retrying");
                        break;
                    }
                }
            }
            cursor = Some(at);
        }
    }
}
