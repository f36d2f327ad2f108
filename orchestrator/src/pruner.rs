//! Where storage is kept bounded: sent outbox rows, processed inbox rows and change-log rows
//! older than the retention time are deleted, a bounded batch at a time, so the tables stop growing under
//! sustained load. Sagas are kept, and stay queryable, unless `SAGA_RETENTION` is set: then
//! sagas that ended well that long ago go too, with their rows.
//!
//! The inbox only has to remember a reply for as long as it can be redelivered while its saga
//! waits for it; a late duplicate for a terminal saga is ignored by the engine anyway. Every
//! instance prunes; deleting the same rows twice is harmless.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::SagaStore;

pub struct Pruner {
    pub store: SagaStore,
    /// How long sent outbox rows and processed inbox rows are kept.
    pub retention: Duration,
    /// How long sagas that ended well are kept (`None`: for ever).
    pub saga_retention: Option<Duration>,
}

impl Pruner {
    pub async fn run(self, cancel: CancellationToken) {
        let store = self.store;
        let sagas = self.saga_retention.map(|retention| {
            let store = store.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                platform::prune::run(
                    "pruning ended sagas",
                    retention,
                    cancel,
                    crate::Error::is_transient,
                    |before, limit| {
                        let store = store.clone();
                        async move {
                            let pruned = store.prune_sagas(before, limit).await?;
                            if pruned > 0 {
                                tracing::info!(sagas = pruned, "pruned ended sagas");
                            }
                            Ok::<_, crate::Error>(pruned as i64 == limit)
                        }
                    },
                )
                .await;
            })
        });
        platform::prune::run(
            "pruning inbox and outbox",
            self.retention,
            cancel,
            crate::Error::is_transient,
            |before, limit| {
                let store = store.clone();
                async move {
                    let pruned = store.prune(before, limit).await?;
                    if pruned.outbox > 0 || pruned.inbox > 0 || pruned.changes > 0 {
                        tracing::debug!(
                            outbox = pruned.outbox,
                            inbox = pruned.inbox,
                            changes = pruned.changes,
                            "pruned"
                        );
                    }
                    Ok::<_, crate::Error>(
                        pruned.outbox as i64 == limit
                            || pruned.inbox as i64 == limit
                            || pruned.changes as i64 == limit,
                    )
                }
            },
        )
        .await;
        if let Some(sagas) = sagas {
            let _ = sagas.await;
        }
    }
}
