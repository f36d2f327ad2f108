//! Moving one saga: the one path the timers, cancel and retry take (replies, which come in
//! batches, go through the store's inbox the same way). The engine decides on the saga as
//! stored, inside the store's transaction, in a span that continues the saga's own trace; a
//! version conflict (another writer stored the saga meanwhile) is decided again on the fresh
//! state; what the commit causes (the relay woken, waiters told, transitions counted) happens in
//! the store once it has committed.

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use platform::retry::{self, Retried};

use crate::saga::{Decision, SagaState};
use crate::store::{Changed, SagaStore};
use crate::Error;

/// How long a caller keeps at it.
pub enum Persist<'a> {
    /// Background work (timers): every transient failure (the database away, a conflict) is
    /// tried again, until `cancel` fires.
    UntilCancelled(&'a CancellationToken),
    /// A client's request: conflicts are decided again (bounded by the request's deadline);
    /// any other failure is the client's answer at once (a database away is a 503).
    Request,
}

/// Moves saga `saga_id` by `decide` at `now`, in `span` (which gets the saga's type, step and
/// trace). `Ok(None)`: there is no such saga.
pub async fn transition(
    store: &SagaStore,
    saga_id: Uuid,
    now: i64,
    span: &tracing::Span,
    persist: Persist<'_>,
    decide: impl Fn(&SagaState) -> Decision,
) -> Retried<Option<Changed>, Error> {
    let never = CancellationToken::new();
    let (cancel, background) = match persist {
        Persist::UntilCancelled(cancel) => (cancel, true),
        Persist::Request => (&never, false),
    };
    retry::until_cancelled(
        cancel,
        "moving a saga",
        |e: &Error| {
            if background {
                e.is_transient()
            } else {
                matches!(e, Error::Conflict(_))
            }
        },
        || {
            store.transition(saga_id, now, |state| {
                let trace = platform::trace::continue_trace(span, &state.trace);
                span.record("saga_type", state.saga_type.as_str());
                span.record("step", state.current_step());
                decide(state).traced(&trace)
            })
        },
    )
    .await
}
