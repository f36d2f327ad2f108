//! Where new sagas come in: a start (`POST /sagas/{type}`, or `POST /orders` for create-order)
//! hands its new saga to the intake, which stores the
//! sagas of requests that arrive together in ONE transaction (group commit) — under load a
//! create costs a share of one commit instead of a commit and four round trips of its own, and
//! requests stop queueing one by one for the single SQLite writer.
//!
//! The intake lives as long as someone can send to it: it stops when the HTTP server, the last
//! holder of an [`Intake`], has finished its requests, so graceful shutdown loses no create.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::saga::engine::Outgoing;
use crate::saga::SagaState;
use crate::store::{Created, NewSaga, SagaStore};
use crate::Result;

/// New sagas stored per transaction, at most.
const BATCH: usize = 256;

struct Request {
    saga: NewSaga,
    ticket: Ticket,
    done: oneshot::Sender<Result<Created>>,
}

/// Who decides the fate of a new saga whose request ran out of time: the intake takes it (it
/// will be stored, and the client must get that answer) or the timeout abandons it (it will
/// not be stored, and the client can safely send it again). Exactly one of the two wins, so a
/// client is never told 503 about a saga that is then stored.
#[derive(Debug, Clone, Default)]
pub struct Ticket(Arc<AtomicU8>);

const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const ABANDONED: u8 = 2;

impl Ticket {
    /// The intake is about to store the saga: true unless the request was abandoned first.
    fn take(&self) -> bool {
        self.0
            .compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The request ran out of time: true if the saga will therefore never be stored, false if
    /// the intake has it already (then the request must wait for the outcome).
    pub fn abandon(&self) -> bool {
        self.0
            .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// The handle every start uses.
#[derive(Clone)]
pub struct Intake {
    tx: mpsc::Sender<Request>,
}

impl Intake {
    /// Starts the intake task; it ends once every clone of the returned handle is dropped.
    pub fn start(store: SagaStore) -> (Intake, impl std::future::Future<Output = ()>) {
        let (tx, rx) = mpsc::channel(BATCH * 4);
        (Intake { tx }, run(store, rx))
    }

    /// Stores a new saga and its first messages (see [`SagaStore::create`]).
    /// `ticket` settles a race with the request's timeout (see [`Ticket`]).
    pub async fn create(
        &self,
        state: SagaState,
        idempotency_key: Option<String>,
        messages: Vec<Outgoing>,
        ticket: Ticket,
    ) -> Result<Created> {
        let (done, answer) = oneshot::channel();
        let saga = NewSaga {
            state,
            idempotency_key,
            messages,
        };
        self.tx
            .send(Request { saga, ticket, done })
            .await
            .map_err(|_| crate::Error::Stopping)?;
        answer.await.map_err(|_| crate::Error::Stopping)?
    }
}

async fn run(store: SagaStore, mut rx: mpsc::Receiver<Request>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        // A request that ran out of time while queued was answered "not stored": keep it so.
        let (sagas, waiters): (Vec<NewSaga>, Vec<_>) = batch
            .drain(..)
            .filter(|r| r.ticket.take())
            .map(|r| (r.saga, r.done))
            .unzip();
        if sagas.is_empty() {
            continue;
        }
        let results = match store.create_many(&sagas).await {
            Ok(results) => results,
            Err(e) if e.is_transient() || sagas.len() == 1 => {
                // The database is away (or busy): the same for every saga of the batch, and
                // trying them one by one would only make each client wait longer.
                tracing::warn!(error = %e, sagas = sagas.len(), "cannot store new sagas");
                let message = e.to_string();
                let mut results = vec![Err(e)];
                results.resize_with(sagas.len(), || {
                    Err(crate::Error::Unavailable(message.clone()))
                });
                results
            }
            Err(e) => {
                // One bad saga must not fail the others: each on its own, with its own error.
                tracing::debug!(error = %e, "batch of new sagas failed; storing them one by one");
                let mut results = Vec::with_capacity(sagas.len());
                for saga in &sagas {
                    let one = store.create_many(std::slice::from_ref(saga)).await;
                    results.push(one.and_then(|mut one| {
                        one.pop()
                            .unwrap_or(Err(crate::Error::Conflict(saga.state.saga_id)))
                    }));
                }
                results
            }
        };
        for (waiter, result) in waiters.into_iter().zip(results) {
            // The client may have gone; the saga is stored either way.
            let _ = waiter.send(result);
        }
    }
}
