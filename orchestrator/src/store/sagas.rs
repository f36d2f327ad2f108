//! Sagas: storing new ones (with their first commands), reading them, and moving one through a
//! transition decided by the engine, under optimistic concurrency (`version`).

use super::*;

impl SagaStore {
    /// How many sagas that still need their definition (running, or FAILED and retryable) each
    /// (type, version) has.
    pub async fn versions_in_use(&self) -> Result<Vec<(String, u32, i64)>> {
        let rows = sqlx::query(
            "SELECT saga_type, CAST(definition_version AS BIGINT) AS definition_version, COUNT(*) AS n FROM sagas \
             WHERE status IN ('STARTED', 'COMPENSATING', 'CANCELLING', 'FAILED') \
             GROUP BY saga_type, definition_version",
        )
        .fetch_all(&self.db.reader)
        .await?;
        rows.iter()
            .map(|r| {
                let version: i64 = r.try_get("definition_version")?;
                Ok((
                    r.try_get("saga_type")?,
                    u32::try_from(version).unwrap_or(0),
                    r.try_get("n")?,
                ))
            })
            .collect()
    }

    /// Stores new sagas and their first messages in ONE transaction (group commit for
    /// starts): one multi-row insert of the sagas, one of their messages. A saga whose
    /// idempotency key was used before (by an earlier request, or earlier in this batch) is not
    /// stored; its result is the saga the key started.
    #[tracing::instrument(level = "debug", name = "intake", skip_all, fields(sagas = sagas.len()))]
    pub async fn create_many(&self, sagas: &[NewSaga]) -> Result<Vec<Result<Created>>> {
        if sagas.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.db.writer.begin().await?;
        let sql = format!(
            "INSERT INTO sagas (saga_id, saga_type, definition_version, status, idempotency_key, input, state, version, created_at, updated_at, wake_at, traceparent, tracestate) \
             VALUES {} ON CONFLICT (saga_type, idempotency_key) DO NOTHING RETURNING saga_id",
            self.db.engine.values(sagas.len(), 13)
        );
        let mut q = db::dynamic(&sql);
        for saga in sagas {
            let state = &saga.state;
            q = q
                .bind(state.saga_id.to_string())
                .bind(&state.saga_type)
                .bind(i64::from(state.definition_version))
                .bind(state.status.as_str())
                .bind(saga.idempotency_key.as_deref())
                .bind(state.input_json.as_deref().unwrap_or("{}"))
                .bind(to_json(state))
                .bind(1_i64)
                .bind(state.created_at)
                .bind(state.updated_at)
                .bind(state.next_wake())
                .bind(state.trace.traceparent.as_deref())
                .bind(state.trace.tracestate.as_deref());
        }
        let inserted: HashSet<String> = q
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| row.try_get::<String, _>("saga_id"))
            .collect::<std::result::Result<_, _>>()?;
        let is_new = |s: &NewSaga| inserted.contains(&s.state.saga_id.to_string());
        let messages: Vec<Outgoing> = sagas
            .iter()
            .filter(|s| is_new(s))
            .flat_map(|s| s.messages.iter().cloned())
            .collect();
        if let Some(now) = sagas.iter().map(|s| s.state.created_at).max() {
            insert_outbox(&mut tx, self.db.engine, &messages, now).await?;
        }
        let started: Vec<_> = sagas
            .iter()
            .filter(|s| is_new(s))
            .map(|s| (None, &s.state, 1))
            .collect();
        changes::record(&mut tx, self.db.engine, &started).await?;
        tx.commit().await?;
        self.after_commit(
            sagas.iter().filter(|s| is_new(s)).map(|s| (None, &s.state)),
            messages.len(),
        );
        let mut results = Vec::with_capacity(sagas.len());
        for saga in sagas {
            if is_new(saga) {
                results.push(Ok(Created::New));
                continue;
            }
            // Not inserted: its key's row exists (that is why the insert did nothing).
            let key = saga.idempotency_key.as_deref().unwrap_or_default();
            results.push(
                match self.by_idempotency_key(&saga.state.saga_type, key).await {
                    Ok(Some(existing)) => Ok(Created::Existing(Box::new(existing))),
                    Ok(None) => Err(Error::Conflict(saga.state.saga_id)),
                    Err(e) => Err(e),
                },
            );
        }
        Ok(results)
    }

    /// The saga of `saga_type` an idempotency key started (keys are unique per type).
    pub async fn by_idempotency_key(
        &self,
        saga_type: &str,
        key: &str,
    ) -> Result<Option<SagaState>> {
        let row = sqlx::query(
            "SELECT saga_id, state, traceparent, tracestate, input FROM sagas WHERE saga_type = $1 AND idempotency_key = $2",
        )
        .bind(saga_type)
        .bind(key)
        .fetch_optional(&self.db.writer)
        .await?;
        row.map(|r| decode(&r)).transpose()
    }

    pub async fn get(&self, saga_id: Uuid) -> Result<Option<SagaState>> {
        let row = sqlx::query(
            "SELECT saga_id, state, traceparent, tracestate, input FROM sagas WHERE saga_id = $1",
        )
        .bind(saga_id.to_string())
        .fetch_optional(&self.db.reader)
        .await?;
        row.map(|r| decode(&r)).transpose()
    }

    /// A page of sagas, newest first: those after `after` (the last one of the previous page),
    /// filtered by type and status. Paging by position in that order, not by offset, keeps
    /// pages stable while sagas are being added (new ones sort before the first page).
    pub async fn list(&self, filter: &ListFilter, limit: i64) -> Result<Vec<SagaState>> {
        let mut conditions = Vec::new();
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };
        if filter.saga_type.is_some() {
            conditions.push(format!("saga_type = ${}", next()));
        }
        if filter.status.is_some() {
            conditions.push(format!("status = ${}", next()));
        }
        if filter.search.is_some() {
            // The state's JSON holds the context, which holds the input. Case-insensitive on
            // both engines (SQLite's LIKE is, for ASCII).
            let (a, b) = (next(), next());
            let like = match self.db.engine {
                Engine::Postgres => "ILIKE",
                Engine::Sqlite => "LIKE",
            };
            conditions.push(format!("(saga_id = ${a} OR state {like} ${b} ESCAPE '\\')"));
        }
        if filter.after.is_some() {
            let (a, b, c) = (next(), next(), next());
            conditions.push(format!(
                "(created_at < ${a} OR (created_at = ${b} AND saga_id < ${c}))"
            ));
        }
        let filter_sql = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let sql = format!(
            "SELECT saga_id, state, traceparent, tracestate, input FROM sagas {filter_sql} \
             ORDER BY created_at DESC, saga_id DESC LIMIT ${}",
            next()
        );
        let mut q = db::dynamic(&sql);
        if let Some(t) = &filter.saga_type {
            q = q.bind(t.clone());
        }
        if let Some(status) = filter.status {
            q = q.bind(status.as_str());
        }
        if let Some(text) = &filter.search {
            q = q.bind(text.clone()).bind(like_pattern(text));
        }
        if let Some((created_at, saga_id)) = filter.after {
            q = q
                .bind(created_at)
                .bind(created_at)
                .bind(saga_id.to_string());
        }
        let rows = q.bind(limit).fetch_all(&self.db.reader).await?;
        rows.iter().map(decode).collect()
    }

    /// Applies `decide` to one saga in one transaction (timers, cancel, retry). `None` when there
    /// is no such saga.
    pub async fn transition(
        &self,
        saga_id: Uuid,
        now: i64,
        decide: impl FnOnce(&SagaState) -> Decision,
    ) -> Result<Option<Changed>> {
        let mut tx = self.db.writer.begin().await?;
        let outcome = transition_in(
            &mut tx,
            self.db.engine,
            self.definitions.as_ref(),
            saga_id,
            now,
            decide,
        )
        .await?;
        match outcome {
            Some(Ok((before, state, messages))) => {
                if has_ended(&state) {
                    self.announce_ended(&mut tx, &[&state]).await?;
                }
                tx.commit().await?;
                self.after_commit([(Some(&before), &state)], messages);
                match (&state.parked, before.was_parked()) {
                    (Some(reason), false) => Ok(Some(Changed::Parked {
                        status: state.status,
                        reason: reason.clone(),
                    })),
                    _ => Ok(Some(Changed::Yes {
                        status: state.status,
                        messages,
                    })),
                }
            }
            Some(Err(why)) => {
                tx.rollback().await?;
                Ok(Some(Changed::No(why)))
            }
            None => {
                tx.rollback().await?;
                Ok(None)
            }
        }
    }
}

/// Loads the saga, lets `decide` move it, stores the result under a version check and writes its
/// messages to the outbox — all inside `tx`, which the caller commits. Gives the new state and the
/// number of messages, or why nothing changed; `None` when there is no such saga.
pub(super) async fn transition_in(
    tx: &mut Transaction<'_, Any>,
    engine: Engine,
    definitions: Option<&Arc<crate::saga::Registry>>,
    saga_id: Uuid,
    now: i64,
    decide: impl FnOnce(&SagaState) -> Decision,
) -> Result<Option<std::result::Result<(Before, SagaState, usize), Ignored>>> {
    let row = sqlx::query(
        "SELECT saga_id, state, version, traceparent, tracestate, input FROM sagas WHERE saga_id = $1",
    )
    .bind(saga_id.to_string())
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let current = decode(&row)?;
    let version: i64 = row.try_get("version")?;
    super::definitions::learn_for(tx, definitions, [&current]).await?;
    match decide(&current) {
        Decision::Ignored(why) => Ok(Some(Err(why))),
        Decision::Applied { state, messages } => {
            let changed = (version, state, 1);
            update_sagas(tx, engine, &[&changed]).await?;
            insert_outbox(tx, engine, &messages, now).await?;
            let before = Before::of(&current);
            super::changes::record(tx, engine, &[(Some(&before), &changed.1, version + 1)]).await?;
            Ok(Some(Ok((before, changed.1, messages.len()))))
        }
    }
}

/// Stores each `(version read, new state, transitions)` over the version that was read, counting
/// `transitions` new versions, in one statement (one round trip however many sagas a batch of
/// replies moved). Another writer (an instance, the timer) having stored a version since is an
/// [`Error::Conflict`]: the transaction rolls back and the caller retries on fresh state.
pub(super) async fn update_sagas(
    tx: &mut Transaction<'_, Any>,
    engine: Engine,
    changed: &[&(i64, SagaState, i64)],
) -> Result<()> {
    for chunk in changed.chunks(SAGAS_PER_UPDATE) {
        let sql = format!(
            "WITH v (id, status, state, transitions, updated_at, wake_at, version) AS (VALUES {}) \
             UPDATE sagas SET status = v.status, state = v.state, version = sagas.version + v.transitions, \
             updated_at = v.updated_at, wake_at = v.wake_at \
             FROM v WHERE sagas.saga_id = v.id AND sagas.version = v.version RETURNING saga_id",
            engine.values(chunk.len(), 7)
        );
        let mut q = db::dynamic(&sql);
        for (version, state, transitions) in chunk.iter().copied() {
            q = q
                .bind(state.saga_id.to_string())
                .bind(state.status.as_str())
                .bind(to_json(state))
                .bind(*transitions)
                .bind(state.updated_at)
                .bind(state.next_wake())
                .bind(*version);
        }
        let updated: std::collections::HashSet<String> = q
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .map(|row| row.try_get::<String, _>("saga_id"))
            .collect::<std::result::Result<_, _>>()?;
        if let Some((_, lost, _)) = chunk
            .iter()
            .copied()
            .find(|(_, state, _)| !updated.contains(&state.saga_id.to_string()))
        {
            return Err(Error::Conflict(lost.saga_id));
        }
    }
    Ok(())
}

/// `%text%` for `LIKE … ESCAPE '\'`, with the wildcards in `text` taken literally. The text is
/// matched as it appears in JSON (a quote in it is `\"` there).
fn like_pattern(text: &str) -> String {
    let json = serde_json::to_string(text).unwrap_or_default();
    let inner = json
        .get(1..json.len().saturating_sub(1))
        .unwrap_or_default();
    let mut pattern = String::with_capacity(inner.len() + 2);
    pattern.push('%');
    for c in inner.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// Sagas per multi-row update (7 parameters each).
pub(super) const SAGAS_PER_UPDATE: usize = 1_000;
