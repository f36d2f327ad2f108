//! Deadlines: claiming the sagas whose `wake_at` has passed (with a lease, so instances share
//! them) and handing back the ones a stopping timer did not get to.

use super::*;

impl SagaStore {
    /// Claims up to `limit` sagas whose timer is due, most overdue first, for `lease_ms`.
    ///
    /// The claim moves each saga's `wake_at` to the lease's end in the same statement that finds
    /// it (on PostgreSQL skipping rows another instance is claiming), so instances sharing a
    /// database split the due sagas instead of all handling the same oldest ones, and a saga
    /// whose transition fails is not due again until the lease ends, instead of staying at the
    /// front and crowding out every other deadline. A successful transition writes the saga's
    /// real next deadline; an instance that dies holding a claim delays those deadlines by the
    /// lease at most. The version is untouched: a claim is not a change of the saga.
    pub async fn due(&self, now: i64, limit: i64, lease_ms: i64) -> Result<Vec<Uuid>> {
        let lock = match self.db.engine {
            Engine::Postgres => " FOR UPDATE SKIP LOCKED",
            Engine::Sqlite => "",
        };
        let rows = sqlx::query(&format!(
            "UPDATE sagas SET wake_at = $1 WHERE saga_id IN \
             (SELECT saga_id FROM sagas WHERE wake_at <= $2 ORDER BY wake_at LIMIT $3{lock}) \
             RETURNING saga_id"
        ))
        .bind(now.saturating_add(lease_ms))
        .bind(now)
        .bind(limit)
        .fetch_all(&self.db.writer)
        .await?;
        Ok(rows
            .iter()
            .filter_map(|r| r.try_get::<String, _>("saga_id").ok())
            .filter_map(|id| Uuid::parse_str(&id).ok())
            .collect())
    }

    /// Hands back sagas claimed by [`Self::due`] at `now` that no transition has touched since,
    /// so they are due again at once.
    pub async fn release(&self, ids: &[Uuid], now: i64, lease_ms: i64) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "UPDATE sagas SET wake_at = {} WHERE wake_at = {} AND saga_id IN ({})",
            self.db.engine.placeholders(1, 1),
            self.db.engine.placeholders(2, 1),
            self.db.engine.placeholders(3, ids.len())
        );
        let mut q = db::dynamic(&sql)
            .bind(now)
            .bind(now.saturating_add(lease_ms));
        for id in ids {
            q = q.bind(id.to_string());
        }
        q.execute(&self.db.writer).await?;
        Ok(())
    }
}
