//! Keeping storage bounded: processed inbox rows and sent outbox rows past the retention, and
//! (opt-in) sagas that ended well long ago.

use super::*;

impl SagaStore {
    /// Deletes up to `limit` sent outbox rows, up to `limit` inbox rows and up to `limit` change
    /// log rows recorded before `before`; returns how many of each. Sagas are never deleted: terminal ones stay queryable.
    pub async fn prune(&self, before: i64, limit: i64) -> Result<Pruned> {
        let outbox = sqlx::query(
            "DELETE FROM outbox WHERE id IN \
             (SELECT id FROM outbox WHERE sent_at IS NOT NULL AND sent_at < $1 ORDER BY sent_at LIMIT $2)",
        )
        .bind(before)
        .bind(limit)
        .execute(&self.db.writer)
        .await?
        .rows_affected();
        let inbox = sqlx::query(
            "DELETE FROM inbox WHERE message_id IN \
             (SELECT message_id FROM inbox WHERE received_at < $1 ORDER BY received_at LIMIT $2)",
        )
        .bind(before)
        .bind(limit)
        .execute(&self.db.writer)
        .await?
        .rows_affected();
        // The live streams resume from here; a client away longer than the retention gets the
        // changes still stored.
        let changes = sqlx::query(
            "DELETE FROM saga_changes WHERE seq IN \
             (SELECT seq FROM saga_changes WHERE at < $1 ORDER BY at LIMIT $2)",
        )
        .bind(before)
        .bind(limit)
        .execute(&self.db.writer)
        .await?
        .rows_affected();
        Ok(Pruned {
            outbox,
            inbox,
            changes,
        })
    }

    /// Deletes up to `limit` sagas that ended well (`COMPLETED`, `COMPENSATED`, `CANCELLED`)
    /// before `before`, with their inbox rows and sent outbox rows, in one transaction; returns
    /// how many sagas went. `FAILED` sagas (an operator's to look at) and unsent rows stay.
    ///
    /// The delete itself says which sagas may go, not the look before it: a completed saga
    /// cancelled between the two (it runs again, undoing its steps) is no longer one that ended
    /// well, and PostgreSQL re-checks the condition on the row as the cancel left it.
    pub async fn prune_sagas(&self, before: i64, limit: i64) -> Result<u64> {
        let mut tx = self.db.writer.begin().await?;
        let ids: Vec<String> = sqlx::query(
            "SELECT saga_id FROM sagas WHERE status IN ('COMPLETED', 'COMPENSATED', 'CANCELLED') \
             AND updated_at < $1 ORDER BY updated_at LIMIT $2",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get("saga_id"))
        .collect::<std::result::Result<_, _>>()?;
        let mut pruned = 0;
        for chunk in ids.chunks(500) {
            // `before` first: SQLite numbers each `?` after the highest number used so far.
            let (cutoff, list) = (
                self.db.engine.placeholders(1, 1),
                self.db.engine.placeholders(2, chunk.len()),
            );
            let sql = format!(
                "DELETE FROM sagas WHERE status IN ('COMPLETED', 'COMPENSATED', 'CANCELLED') \
                 AND updated_at < {cutoff} AND saga_id IN ({list}) RETURNING saga_id"
            );
            let mut q = db::dynamic(&sql).bind(before);
            for id in chunk {
                q = q.bind(id);
            }
            let deleted: Vec<String> = q
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get("saga_id"))
                .collect::<std::result::Result<_, _>>()?;
            if deleted.is_empty() {
                continue;
            }
            pruned += deleted.len() as u64;
            let list = self.db.engine.placeholders(1, deleted.len());
            for sql in [
                format!("DELETE FROM inbox WHERE saga_id IN ({list})"),
                format!("DELETE FROM outbox WHERE sent_at IS NOT NULL AND msg_key IN ({list})"),
            ] {
                let mut q = db::dynamic(&sql);
                for id in &deleted {
                    q = q.bind(id);
                }
                q.execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(pruned)
    }
}
