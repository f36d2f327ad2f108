//! The change log: one row per saga per committed transition, written in the transaction that
//! made it, with what it did ([`crate::saga::changes`]). The live streams read it after a
//! [`Cursor`], so a client that reconnects with the last id it saw misses nothing still stored,
//! and a change another instance committed reaches every instance's streams.

use std::fmt;
use std::str::FromStr;

use super::*;
use crate::saga::changes::changes;

/// A position in the change log, in commit order: the writing transaction's id (PostgreSQL; 0 on
/// SQLite, whose single writer takes `seq` in commit order) and the row's number. Given out as
/// `<tx>t<seq>`, the streams' event id: letters and digits only, as some clients (and HTTP
/// tooling) keep header values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor {
    pub tx: u64,
    pub seq: i64,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}t{}", self.tx, self.seq)
    }
}

/// What an event id looks like (the API's document says so).
pub const CURSOR_PATTERN: &str = "^[0-9]{1,19}t[0-9]{1,18}$";

impl FromStr for Cursor {
    type Err = ();
    /// Exactly [`CURSOR_PATTERN`]: digits only (no sign), within range.
    fn from_str(s: &str) -> std::result::Result<Self, ()> {
        let (tx, seq) = s.split_once('t').ok_or(())?;
        let digits = |t: &str, max: usize| {
            !t.is_empty() && t.len() <= max && t.bytes().all(|b| b.is_ascii_digit())
        };
        if !digits(tx, 19) || !digits(seq, 18) {
            return Err(());
        }
        Ok(Cursor {
            tx: tx.parse().map_err(|_| ())?,
            seq: seq.parse().map_err(|_| ())?,
        })
    }
}

/// One committed change of one saga.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRecord {
    pub cursor: Cursor,
    pub saga_id: Uuid,
    pub saga_type: String,
    /// The saga's status once the change committed.
    pub status: SagaStatus,
    /// The saga's stored version once the change committed.
    pub version: i64,
    pub at: i64,
    /// What the transition did: a JSON array of [`crate::saga::changes::Change`].
    pub what: String,
}

/// Which changes a reader wants.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChangeFilter {
    pub saga_id: Option<Uuid>,
    pub saga_type: Option<String>,
    pub status: Option<SagaStatus>,
}

impl ChangeFilter {
    pub fn matches(&self, c: &ChangeRecord) -> bool {
        self.saga_id.is_none_or(|id| id == c.saga_id)
            && self.saga_type.as_ref().is_none_or(|t| *t == c.saga_type)
            && self.status.is_none_or(|s| s == c.status)
    }
}

/// Rows per multi-row insert (6 parameters each).
const CHANGES_PER_INSERT: usize = 1_000;

/// Records, inside `tx`, what moved each saga from its mark `before` (`None`: a new saga) to its
/// state, at its new stored version.
pub(super) async fn record(
    tx: &mut Transaction<'_, Any>,
    engine: Engine,
    moved: &[(Option<&Before>, &SagaState, i64)],
) -> Result<()> {
    for chunk in moved.chunks(CHANGES_PER_INSERT) {
        let sql = format!(
            "INSERT INTO saga_changes (saga_id, saga_type, status, version, at, what) VALUES {}",
            engine.values(chunk.len(), 6)
        );
        let mut q = db::dynamic(&sql);
        for (before, state, version) in chunk {
            let what = serde_json::to_string(&changes(*before, state))
                .unwrap_or_else(|_| "[]".to_string());
            q = q
                .bind(state.saga_id.to_string())
                .bind(&state.saga_type)
                .bind(state.status.as_str())
                .bind(*version)
                .bind(state.updated_at)
                .bind(what);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// On PostgreSQL, rows whose transaction is older than every one still running: all committed
/// (or rolled back), so nothing can appear before them any more. A transaction that writes and
/// stays open holds the streams back for as long.
const SETTLED: &str = "tx < pg_snapshot_xmin(pg_current_snapshot())";

impl SagaStore {
    /// Up to `limit` changes after `after` (and at most `until`), in commit order, that `filter`
    /// wants.
    pub async fn changes_after(
        &self,
        after: Cursor,
        until: Option<Cursor>,
        filter: &ChangeFilter,
        limit: i64,
    ) -> Result<Vec<ChangeRecord>> {
        let mut conditions = Vec::new();
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };
        let (tx, order) = match self.db.engine {
            Engine::Postgres => {
                let (a, b) = (next(), next());
                conditions.push(format!("(tx, seq) > (CAST(${a} AS TEXT)::xid8, ${b})"));
                conditions.push(SETTLED.to_string());
                if until.is_some() {
                    let (a, b) = (next(), next());
                    conditions.push(format!("(tx, seq) <= (CAST(${a} AS TEXT)::xid8, ${b})"));
                }
                ("CAST(tx AS TEXT)", "tx, seq")
            }
            Engine::Sqlite => {
                conditions.push(format!("seq > ${}", next()));
                if until.is_some() {
                    conditions.push(format!("seq <= ${}", next()));
                }
                ("'0'", "seq")
            }
        };
        if filter.saga_id.is_some() {
            conditions.push(format!("saga_id = ${}", next()));
        }
        if filter.saga_type.is_some() {
            conditions.push(format!("saga_type = ${}", next()));
        }
        if filter.status.is_some() {
            conditions.push(format!("status = ${}", next()));
        }
        let sql = format!(
            "SELECT {tx} AS tx, seq, saga_id, saga_type, status, version, at, what FROM saga_changes \
             WHERE {} ORDER BY {order} LIMIT ${}",
            conditions.join(" AND "),
            next()
        );
        let mut q = db::dynamic(&sql);
        for c in std::iter::once(after).chain(until) {
            q = match self.db.engine {
                Engine::Postgres => q.bind(c.tx.to_string()).bind(c.seq),
                Engine::Sqlite => q.bind(c.seq),
            };
        }
        if let Some(id) = filter.saga_id {
            q = q.bind(id.to_string());
        }
        if let Some(t) = &filter.saga_type {
            q = q.bind(t.clone());
        }
        if let Some(s) = filter.status {
            q = q.bind(s.as_str());
        }
        let rows = q.bind(limit).fetch_all(&self.db.reader).await?;
        rows.iter().map(change_record).collect()
    }

    /// Where the change log ends now: a reader starting here gets every change committed from
    /// now on.
    pub async fn changes_head(&self) -> Result<Cursor> {
        let sql = match self.db.engine {
            Engine::Postgres => format!(
                "SELECT CAST(tx AS TEXT) AS tx, seq FROM saga_changes WHERE {SETTLED} \
                 ORDER BY tx DESC, seq DESC LIMIT 1"
            ),
            Engine::Sqlite => {
                "SELECT '0' AS tx, seq FROM saga_changes ORDER BY seq DESC LIMIT 1".to_string()
            }
        };
        let row = sqlx::query(&sql).fetch_optional(&self.db.reader).await?;
        row.map(|r| cursor_of(&r))
            .transpose()
            .map(Option::unwrap_or_default)
    }
}

fn cursor_of(row: &sqlx::any::AnyRow) -> Result<Cursor> {
    let tx: String = row.try_get("tx")?;
    Ok(Cursor {
        tx: tx.parse().map_err(|_| Error::CorruptChange(tx.clone()))?,
        seq: row.try_get("seq")?,
    })
}

fn change_record(row: &sqlx::any::AnyRow) -> Result<ChangeRecord> {
    let id: String = row.try_get("saga_id")?;
    let status: String = row.try_get("status")?;
    Ok(ChangeRecord {
        cursor: cursor_of(row)?,
        saga_id: Uuid::parse_str(&id).map_err(|_| Error::CorruptChange(id.clone()))?,
        saga_type: row.try_get("saga_type")?,
        status: SagaStatus::parse(&status).ok_or(Error::CorruptChange(status))?,
        version: row.try_get("version")?,
        at: row.try_get("at")?,
        what: row.try_get("what")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_what_it_writes_and_refuses_anything_else() {
        let c = Cursor { tx: 812, seq: 4 };
        assert_eq!(c.to_string().parse::<Cursor>(), Ok(c));
        for bad in [
            "", "4", "at1", "1tb", "1t2t3", "t1", "1-1", "+1t2", "1t+2", "1t", "1tt1",
        ] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad:?} was taken");
        }
        assert!(Cursor { tx: 1, seq: 0 } > Cursor { tx: 0, seq: 9 });
    }
}
