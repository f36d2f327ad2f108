//! Saga definitions recorded in the database: each instance records the versions it was given,
//! and learns from here the versions of stored sagas it was not given, so a rolling deploy of a
//! new version (or a version dropped from one instance's files) parks no saga.

use std::collections::BTreeSet;

use sqlx::AnyConnection;

use super::*;
use crate::saga::{Deployed, Registry};

impl SagaStore {
    /// The store learning, before it moves a saga, the recorded definition of any version
    /// `registry` was not given.
    pub fn with_definitions(mut self, registry: Arc<Registry>) -> Self {
        self.definitions = Some(registry);
        self
    }

    /// Records the definitions this instance was given. A version recorded before with another
    /// text is taken as changed when it reads differently here; while sagas still run under it
    /// the start is refused (they would run differently on each instance), else the recorded
    /// copy is replaced.
    pub async fn deploy(&self, registry: &Registry) -> Result<()> {
        let now = platform::time::now_ms();
        for given in registry.deployed() {
            let mut tx = self.db.writer.begin().await?;
            let inserted = sqlx::query(
                "INSERT INTO saga_definitions (saga_type, version, file, source, deployed_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (saga_type, version) DO NOTHING \
                 RETURNING saga_type",
            )
            .bind(&given.saga_type)
            .bind(i64::from(given.version))
            .bind(&given.file)
            .bind(&given.source)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            if inserted.is_none() {
                // Present, since the insert did nothing; deleted meanwhile only by hand.
                let Some(stored) = recorded(&mut tx, &given.saga_type, given.version).await? else {
                    return Err(Error::Unavailable(format!(
                        "saga {} version {} was removed from saga_definitions during the start",
                        given.saga_type, given.version
                    )));
                };
                if stored.source != given.source {
                    if !registry.reads_as_given(&stored) {
                        let running = unfinished(&mut tx, &given.saga_type, given.version).await?;
                        if running > 0 {
                            return Err(Error::Definition {
                                file: given.file,
                                problem: format!(
                                    "saga {} version {} differs from the version {} recorded by \
                                     an earlier deploy ({}), and {running} sagas still run under \
                                     it: give the changed definition a new version",
                                    given.saga_type, given.version, given.version, stored.file
                                ),
                            });
                        }
                        tracing::warn!(
                            saga_type = %given.saga_type,
                            version = given.version,
                            file = %given.file,
                            "saga definition changed without a new version; no saga runs under \
                             it, so the recorded copy is replaced"
                        );
                    }
                    sqlx::query(
                        "UPDATE saga_definitions SET file = $1, source = $2, deployed_at = $3 \
                         WHERE saga_type = $4 AND version = $5",
                    )
                    .bind(&given.file)
                    .bind(&given.source)
                    .bind(now)
                    .bind(&given.saga_type)
                    .bind(i64::from(given.version))
                    .execute(&mut *tx)
                    .await?;
                }
            }
            tx.commit().await?;
        }
        Ok(())
    }

    /// Learns the recorded definition of `saga_type` at `version` when it is not known yet:
    /// the readiness check does this for the versions sagas run under.
    pub async fn learn_definition(&self, saga_type: &str, version: u32) -> Result<()> {
        let Some(registry) = &self.definitions else {
            return Ok(());
        };
        let mut conn = self.db.reader.acquire().await?;
        learn(&mut conn, registry, [(saga_type.to_string(), version)]).await
    }
}

/// Before `states` are moved: learns the recorded definitions of their versions that `registry`
/// does not know, so the engine finds them.
pub(super) async fn learn_for(
    conn: &mut AnyConnection,
    registry: Option<&Arc<Registry>>,
    states: impl IntoIterator<Item = &SagaState>,
) -> Result<()> {
    let Some(registry) = registry else {
        return Ok(());
    };
    let wanted: BTreeSet<(String, u32)> = states
        .into_iter()
        .filter(|s| !registry.knows(&s.saga_type, s.definition_version))
        .map(|s| (s.saga_type.clone(), s.definition_version))
        .collect();
    learn(conn, registry, wanted).await
}

async fn learn(
    conn: &mut AnyConnection,
    registry: &Registry,
    wanted: impl IntoIterator<Item = (String, u32)>,
) -> Result<()> {
    for (saga_type, version) in wanted {
        if registry.knows(&saga_type, version) {
            continue;
        }
        if let Some(stored) = recorded(conn, &saga_type, version).await? {
            registry.learn(&stored);
        }
    }
    Ok(())
}

async fn recorded(
    conn: &mut AnyConnection,
    saga_type: &str,
    version: u32,
) -> Result<Option<Deployed>> {
    let row = sqlx::query(
        "SELECT file, source FROM saga_definitions WHERE saga_type = $1 AND version = $2",
    )
    .bind(saga_type)
    .bind(i64::from(version))
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|r| {
        Ok(Deployed {
            saga_type: saga_type.to_string(),
            version,
            file: r.try_get("file")?,
            source: r.try_get("source")?,
        })
    })
    .transpose()
}

/// Sagas of `saga_type` at `version` that still need their definition.
async fn unfinished(conn: &mut AnyConnection, saga_type: &str, version: u32) -> Result<i64> {
    Ok(sqlx::query_scalar::<_, i64>(
        "SELECT COUNT(*) FROM sagas WHERE saga_type = $1 AND definition_version = $2 \
         AND status IN ('STARTED', 'COMPENSATING', 'CANCELLING', 'FAILED')",
    )
    .bind(saga_type)
    .bind(i64::from(version))
    .fetch_one(&mut *conn)
    .await?)
}
