//! The inbox: a reply is recorded by its message id in the same transaction as the saga change
//! it causes, so a redelivered reply finds its id and changes nothing.

use super::*;

impl SagaStore {
    /// Handles one reply in one transaction: records it in the inbox (a duplicate stops here),
    /// lets `decide` compute the saga's next state, stores it under optimistic concurrency, and
    /// writes the resulting messages to the outbox.
    pub async fn apply_reply(
        &self,
        reply: &Envelope,
        now: i64,
        decide: impl Fn(&SagaState) -> Decision,
    ) -> Result<ReplyOutcome> {
        let outcomes = self
            .apply_replies(&[reply], now, |state, _| decide(state))
            .await?;
        // One reply in, one outcome out.
        Ok(outcomes
            .into_iter()
            .next()
            .unwrap_or(ReplyOutcome::Duplicate))
    }

    /// Handles replies that arrived together in ONE transaction, in order — the same steps as
    /// [`Self::apply_reply`] for each, one commit for all — with a constant number of statements
    /// per batch plus one `UPDATE` per saga changed: every statement is a round trip (to the
    /// SQLite worker thread, or to PostgreSQL), and round trips are what a reply costs. Any error
    /// rolls the whole batch back; the caller then handles the replies one by one.
    pub async fn apply_replies(
        &self,
        replies: &[&Envelope],
        now: i64,
        decide: impl Fn(&SagaState, &Envelope) -> Decision,
    ) -> Result<Vec<ReplyOutcome>> {
        use std::collections::{HashMap, HashSet};
        if replies.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.db.writer.begin().await?;

        // 1. Record every reply in the inbox; the ones already there are duplicates.
        let sql = format!(
            "INSERT INTO inbox (message_id, saga_id, message_type, received_at) VALUES {} \
             ON CONFLICT (message_id) DO NOTHING RETURNING message_id",
            self.db.engine.values(replies.len(), 4)
        );
        let mut q = db::dynamic(&sql);
        for r in replies {
            q = q
                .bind(r.message_id.to_string())
                .bind(r.correlation_id.to_string())
                .bind(&r.message_type)
                .bind(now);
        }
        let mut fresh: HashSet<String> = q
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| row.try_get::<String, _>("message_id"))
            .collect::<std::result::Result<_, _>>()?;

        // 2. Load every saga the fresh replies name, once.
        let mut ids: Vec<String> = replies
            .iter()
            .filter(|r| fresh.contains(&r.message_id.to_string()))
            .map(|r| r.correlation_id.to_string())
            .collect();
        ids.sort();
        ids.dedup();
        // saga id -> (version read, current state, transitions applied)
        let mut sagas: HashMap<Uuid, (i64, SagaState, i64)> = HashMap::new();
        let mut before: HashMap<Uuid, Before> = HashMap::new();
        if !ids.is_empty() {
            // PostgreSQL: lock them now, in saga id order, so two instances handling replies
            // of the same sagas (a rebalance) wait for each other instead of deadlocking.
            let lock = match self.db.engine {
                Engine::Postgres => " ORDER BY saga_id FOR UPDATE",
                Engine::Sqlite => "",
            };
            let sql = format!(
                "SELECT saga_id, state, version, traceparent, tracestate, input FROM sagas WHERE saga_id IN ({}){lock}",
                self.db.engine.placeholders(1, ids.len())
            );
            let mut q = db::dynamic(&sql);
            for id in &ids {
                q = q.bind(id);
            }
            for row in q.fetch_all(&mut *tx).await? {
                let state = decode(&row)?;
                before.insert(state.saga_id, Before::of(&state));
                sagas.insert(state.saga_id, (row.try_get("version")?, state, 0));
            }
            definitions::learn_for(
                &mut tx,
                self.definitions.as_ref(),
                sagas.values().map(|(_, s, _)| s),
            )
            .await?;
        }

        // 3. Move each saga through its replies, in arrival order, in memory.
        let mut outcomes = Vec::with_capacity(replies.len());
        let mut messages: Vec<Outgoing> = Vec::new();
        // Replies that changed nothing leave the inbox again. An orphan is dead-lettered, and
        // again if it comes again. An ignored reply must stay applicable: a late confirmation of
        // a compensation that gave up (the saga `FAILED`) is ignored, and when an operator
        // retries, the service answers the re-sent command with that same stored reply, same
        // message id, which would otherwise be dropped as a duplicate and fail the saga again.
        let mut forget: Vec<String> = Vec::new();
        for reply in replies {
            let message_id = reply.message_id.to_string();
            // `remove`: the same message twice in one batch is a duplicate the second time.
            if !fresh.remove(&message_id) {
                outcomes.push(ReplyOutcome::Duplicate);
                continue;
            }
            let Some((_, state, applied)) = sagas.get_mut(&reply.correlation_id) else {
                forget.push(message_id);
                outcomes.push(ReplyOutcome::UnknownSaga);
                continue;
            };
            match decide(state, reply) {
                Decision::Ignored(why) => {
                    forget.push(message_id);
                    outcomes.push(ReplyOutcome::Ignored(why));
                }
                Decision::Applied {
                    state: next,
                    messages: out,
                } => {
                    // A reply that parks its saga (its definition version is not loaded) was
                    // not applied: it leaves the inbox, so that when the saga resumes and
                    // re-sends the command, the participant's stored answer (same message id)
                    // counts instead of being dropped as a duplicate.
                    if next.parked.is_some() && state.parked.is_none() {
                        forget.push(message_id);
                    }
                    outcomes.push(ReplyOutcome::Applied {
                        status: next.status,
                        messages: out.len(),
                    });
                    *state = next;
                    *applied += 1;
                    messages.extend(out);
                }
            }
        }

        // 4. Store each changed saga once, under its version check, and the messages.
        let changed: Vec<_> = sagas.values().filter(|(_, _, n)| *n > 0).collect();
        update_sagas(&mut tx, self.db.engine, &changed).await?;
        let moved: Vec<_> = changed
            .iter()
            .map(|(version, state, n)| (before.get(&state.saga_id), state, version + n))
            .collect();
        changes::record(&mut tx, self.db.engine, &moved).await?;
        insert_outbox(&mut tx, self.db.engine, &messages, now).await?;
        if !forget.is_empty() {
            let sql = format!(
                "DELETE FROM inbox WHERE message_id IN ({})",
                self.db.engine.placeholders(1, forget.len())
            );
            let mut q = db::dynamic(&sql);
            for id in &forget {
                q = q.bind(id);
            }
            q.execute(&mut *tx).await?;
        }
        let ended: Vec<&SagaState> = sagas
            .values()
            .filter(|(_, state, applied)| *applied > 0 && has_ended(state))
            .map(|(_, state, _)| state)
            .collect();
        self.announce_ended(&mut tx, &ended).await?;
        tx.commit().await?;
        self.after_commit(
            sagas
                .values()
                .filter(|(_, _, applied)| *applied > 0)
                .filter_map(|(_, state, _)| before.get(&state.saga_id).map(|b| (Some(b), state))),
            messages.len(),
        );
        let duplicates = outcomes
            .iter()
            .filter(|o| **o == ReplyOutcome::Duplicate)
            .count();
        if duplicates > 0 {
            self.metrics.inbox_duplicates.inc_by(duplicates as u64);
        }
        Ok(outcomes)
    }
}
