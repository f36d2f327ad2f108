//! Small helpers the services' handlers share: reading command fields, reading rows, and the
//! one-row status moves of the refund commands.

use std::collections::{HashMap, HashSet};

use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use platform::db::{self};
use platform::Envelope;

use crate::Result;

/// A string field of a command payload, or a rejection naming it.
pub fn field<'a>(command: &'a Envelope, name: &str) -> Result<&'a str, String> {
    command
        .payload
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| {
            format!(
                "{} command has no string field {name:?}",
                command.message_type
            )
        })
}

/// The values of text column `name` of `rows`.
pub fn column(rows: Vec<AnyRow>, name: &str) -> Result<HashSet<String>> {
    Ok(rows
        .iter()
        .map(|r| r.try_get::<String, _>(name))
        .collect::<std::result::Result<_, _>>()?)
}

/// `key -> value` from two text columns of `rows`.
pub fn pairs(rows: Vec<AnyRow>, key: &str, value: &str) -> Result<HashMap<String, String>> {
    Ok(rows
        .iter()
        .map(|r| Ok((r.try_get::<String, _>(key)?, r.try_get::<String, _>(value)?)))
        .collect::<std::result::Result<_, sqlx::Error>>()?)
}

/// Where a row stood when asked to move from one status to another.
#[derive(Debug, PartialEq)]
pub enum StatusMove {
    /// It was in the expected status and now is in the new one.
    Moved,
    /// It is in the new status already (a command handled under another id, say).
    Already,
    /// It is in another status; nothing changed.
    Was(String),
    /// No such row (for this customer).
    Missing,
}

/// Moves one row of `table` (found by `key_column = key`, and `customer_id` when given) from
/// status `from` to `to`: the refund commands' one state change each. `table` and `key_column`
/// are the service's own names, never input.
#[allow(clippy::too_many_arguments)]
pub async fn move_status(
    tx: &mut Transaction<'_, Any>,
    table: &str,
    key_column: &str,
    key: &str,
    customer_id: Option<&str>,
    from: &str,
    to: &str,
    now: i64,
) -> Result<StatusMove> {
    let customer = if customer_id.is_some() {
        " AND customer_id = $5"
    } else {
        ""
    };
    let sql = format!(
        "UPDATE {table} SET status = $1, updated_at = $2 WHERE {key_column} = $3 AND status = $4{customer}"
    );
    let mut q = db::dynamic(&sql).bind(to).bind(now).bind(key).bind(from);
    if let Some(c) = customer_id {
        q = q.bind(c);
    }
    if q.execute(&mut **tx).await?.rows_affected() > 0 {
        return Ok(StatusMove::Moved);
    }
    let customer = if customer_id.is_some() {
        " AND customer_id = $2"
    } else {
        ""
    };
    let sql = format!("SELECT status FROM {table} WHERE {key_column} = $1{customer}");
    let mut q = db::dynamic(&sql).bind(key);
    if let Some(c) = customer_id {
        q = q.bind(c);
    }
    Ok(match q.fetch_optional(&mut **tx).await? {
        None => StatusMove::Missing,
        Some(row) => {
            let status: String = row.try_get("status")?;
            if status == to {
                StatusMove::Already
            } else {
                StatusMove::Was(status)
            }
        }
    })
}
