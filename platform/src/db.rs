//! One database handle for SQLite (the default, a file) and PostgreSQL (production).
//!
//! Queries are written once, in the SQL both engines accept, and run through sqlx's `Any` driver;
//! only the migrations differ per engine. SQLite allows one writer at a time, so for SQLite the
//! handle keeps a single writer connection (no `SQLITE_BUSY` between our own connections) beside a
//! pool of readers; for PostgreSQL both are the same pool.

use std::path::Path;
use std::time::Duration;

use sqlx::any::{install_default_drivers, AnyPoolOptions};
use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::{Any, AnyPool, Executor};

use crate::{Error, Result};

/// Which engine a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    pub fn of(url: &str) -> Result<Self> {
        if url.starts_with("sqlite:") {
            Ok(Engine::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Engine::Postgres)
        } else {
            Err(Error::Database {
                context: "choosing the engine".into(),
                source: sqlx::Error::Configuration(
                    "DATABASE_URL must start with sqlite: or postgres://".into(),
                ),
            })
        }
    }
}

/// `migrator` with migration `version`'s text replaced in place by a corrected one, still
/// accepting databases that ran `earlier_sql`, its first text. sqlx refuses to start on a
/// database whose applied migration's checksum differs from the binary's; the checksum kept is
/// the first text's, so databases that ran either text (the same schema) agree with it.
/// Only for a fix that leaves the schema exactly as the first text did.
pub fn corrected(mut migrator: Migrator, version: i64, earlier_sql: &'static str) -> Migrator {
    let mut list = migrator.migrations.to_vec();
    for m in list.iter_mut().filter(|m| m.version == version) {
        let first = sqlx::migrate::Migration::new(
            m.version,
            m.description.clone(),
            m.migration_type,
            std::borrow::Cow::Borrowed(earlier_sql),
            m.no_tx,
        );
        m.checksum = first.checksum;
    }
    migrator.migrations = list.into();
    migrator
}

/// `migrator`, accepting a database where a newer release applied migrations this one does not
/// know. Schema changes go expand, then contract: a release adds tables and columns (with
/// defaults) that the release before it ignores, and drops or renames one only a release after
/// nothing reads it any more. So an instance of release N keeps working beside release N+1 on
/// one database during a rolling deploy, and a rollback to N starts on N+1's schema. The
/// migrations this binary knows are still checked (checksums).
pub fn tolerant(migrator: &Migrator, runtime: Option<&Migrator>) -> Migrator {
    let mut migrations = migrator.migrations.to_vec();
    migrations.extend(runtime.iter().flat_map(|r| r.migrations.iter().cloned()));
    migrations.sort_by_key(|m| m.version);
    Migrator {
        migrations: migrations.into(),
        ignore_missing: true,
        locking: migrator.locking,
        no_tx: migrator.no_tx,
    }
}

/// The migrations of one component, for each engine.
pub struct Migrations {
    pub sqlite: &'static Migrator,
    pub postgres: &'static Migrator,
    /// The migrations of the runtime the component is built on (the participants' shared
    /// tables), one set for both engines, numbered apart and run with the component's own.
    pub runtime: Option<&'static Migrator>,
}

/// How a SQLite database trades durability for speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SqliteSync {
    /// fsync at every commit: durable against power loss.
    Full,
    /// fsync at checkpoints (WAL): durable against a process crash, not against power loss.
    Normal,
}

/// The database settings of a component with a database of its own (`DATABASE_URL`,
/// `SQLITE_SYNCHRONOUS`): one declaration for every binary.
#[derive(Debug, Clone, clap::Args)]
pub struct DbArgs {
    /// `postgres://...` in production, or `sqlite://path?mode=rwc`.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// SQLite only: `normal` survives a process crash, `full` also a power loss.
    #[arg(long, env = "SQLITE_SYNCHRONOUS", value_enum, default_value = "normal")]
    pub sqlite_synchronous: SqliteSync,
}

/// PostgreSQL connections for reads that need no transaction (the HTTP API), apart from the
/// writers' 10.
const READ_CONNECTIONS: u32 = 6;

/// A connected, migrated database.
#[derive(Clone, Debug)]
pub struct Db {
    /// Transactions that write go here.
    pub writer: AnyPool,
    /// Reads that need no transaction (the HTTP API) go here.
    pub reader: AnyPool,
    pub engine: Engine,
}

/// The SQLite URL for a file, creating its folder.
pub fn sqlite_url(path: &Path) -> Result<String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            context: format!("creating {}", dir.display()),
            source,
        })?;
    }
    Ok(format!("sqlite://{}?mode=rwc", path.display()))
}

impl Db {
    /// Connects to `url`, creating the database if needed, and runs the migrations.
    pub async fn connect(
        url: &str,
        migrations: &Migrations,
        sqlite_sync: SqliteSync,
    ) -> Result<Self> {
        install_default_drivers();
        let engine = Engine::of(url)?;
        if !Any::database_exists(url).await.unwrap_or(false) {
            // Another process may create it at the same moment; connecting below tells.
            let _ = Any::create_database(url).await;
        }
        let db = match engine {
            Engine::Sqlite => {
                let sync = match sqlite_sync {
                    SqliteSync::Full => "PRAGMA synchronous = FULL",
                    SqliteSync::Normal => "PRAGMA synchronous = NORMAL",
                };
                let options = move || {
                    AnyPoolOptions::new().after_connect(move |conn, _| {
                        Box::pin(async move {
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute(sync).await?;
                            conn.execute("PRAGMA busy_timeout = 5000").await?;
                            // Statement journals (multi-row statements inside a transaction
                            // keep one) in memory, not in a temporary file: they only matter
                            // while the statement runs. Measured: 4 % of the CPU in files.
                            conn.execute("PRAGMA temp_store = MEMORY").await?;
                            // Checkpoint every ~16 MB of WAL instead of ~4 MB: a page rewritten
                            // many times in between (the hot end of an index) is copied back
                            // once. Durability is unchanged (the WAL is the log).
                            conn.execute("PRAGMA wal_autocheckpoint = 4000").await?;
                            Ok(())
                        })
                    })
                };
                let writer = options()
                    .max_connections(1)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect(url)
                    .await
                    .map_err(Error::db(format!(
                        "connecting to DATABASE_URL={}",
                        redact(url)
                    )))?;
                tolerant(migrations.sqlite, migrations.runtime)
                    .run(&writer)
                    .await?;
                let reader = options()
                    .max_connections(4)
                    .connect(url)
                    .await
                    .map_err(Error::db(format!(
                        "connecting to DATABASE_URL={}",
                        redact(url)
                    )))?;
                Db {
                    writer,
                    reader,
                    engine,
                }
            }
            Engine::Postgres => {
                // One connection first, for its error: the pool retries a refused connection
                // until its acquire timeout and then says only "pool timed out".
                let first = tokio::time::timeout(
                    Duration::from_secs(10),
                    <sqlx::AnyConnection as sqlx::Connection>::connect(url),
                )
                .await;
                match first {
                    Ok(Ok(conn)) => {
                        let _ = sqlx::Connection::close(conn).await;
                    }
                    Ok(Err(e)) => {
                        return Err(Error::db(format!(
                            "connecting to DATABASE_URL={}",
                            redact(url)
                        ))(e))
                    }
                    Err(_) => {
                        return Err(Error::Config(format!(
                            "DATABASE_URL={}: the server did not answer within 10 s",
                            redact(url)
                        )))
                    }
                }
                let pool = AnyPoolOptions::new()
                    .max_connections(10)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect(url)
                    .await
                    .map_err(Error::db(format!(
                        "connecting to DATABASE_URL={}",
                        redact(url)
                    )))?;
                tolerant(migrations.postgres, migrations.runtime)
                    .run(&pool)
                    .await?;
                // Reads of the API get a pool of their own: a flood of GETs then waits for a
                // reader connection instead of taking the ones the reply consumer, the relay and
                // the timers write with. Opened on first use (components that never read there
                // hold no connection).
                let reader = AnyPoolOptions::new()
                    .max_connections(READ_CONNECTIONS)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect_lazy(url)
                    .map_err(Error::db(format!(
                        "connecting to DATABASE_URL={}",
                        redact(url)
                    )))?;
                Db {
                    writer: pool,
                    reader,
                    engine,
                }
            }
        };
        Ok(db)
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.reader).await.is_ok()
    }

    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}

/// Whether a database error can pass by itself: the connection dropped, the server is
/// restarting, the pool is exhausted, a lock or serialization conflict. Anything else (a
/// constraint, a syntax error, a decoding error) will fail the same way again.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // PostgreSQL: connection exception (08), insufficient resources (53), operator
            // intervention such as a shutdown (57), serialization failure or deadlock (40).
            // SQLite: SQLITE_BUSY (5) and SQLITE_LOCKED (6), with extended codes.
            if code.len() == 5 {
                ["08", "53", "57", "40"].iter().any(|c| code.starts_with(c))
            } else {
                code.parse::<i32>()
                    .map(|n| matches!(n & 0xff, 5 | 6))
                    .unwrap_or(false)
            }
        }
        _ => false,
    }
}

/// `url` with every password in it masked: the userinfo's (`user:secret@`) and a query
/// parameter's (`?password=secret`, which sqlx also accepts), so the URL can be logged. Parsed
/// with a URL parser: slicing strings missed the query form.
pub fn redact(raw: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(raw) else {
        return "(a URL that cannot be parsed)".into();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    let secret = |k: &str| {
        let k = k.to_ascii_lowercase();
        k.contains("password") || k == "pass" || k == "pwd" || k.contains("secret")
    };
    if parsed.query_pairs().any(|(k, _)| secret(&k)) {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if secret(&k) {
                    "***".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

/// Drops the PostgreSQL database `url` names (connecting to the server through `server_url`),
/// closing its connections first. For throw-away databases (benchmarks).
pub async fn drop_database(server_url: &str, url: &str) -> Result<()> {
    install_default_drivers();
    let name = url
        .split('?')
        .next()
        .and_then(|u| u.rsplit_once('/'))
        .map(|(_, n)| n.to_string())
        .unwrap_or_default();
    if name.is_empty() || name.contains('"') {
        return Ok(());
    }
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .connect(server_url)
        .await
        .map_err(Error::db(format!("connecting to {}", redact(server_url))))?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&pool)
        .await
        .map_err(Error::db(format!("dropping database {name}")))?;
    pool.close().await;
    Ok(())
}

/// Replaces the database name of a PostgreSQL URL: `postgres://h/test` + `x` → `postgres://h/x`.
/// Used to give each component (and each test) a database of its own on one server.
pub fn with_database_name(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// A statement whose text is built at run time (multi-row inserts, `IN` lists): not kept in the
/// connection's prepared-statement cache. Every batch size is another text, so caching them
/// mostly evicts the fixed statements, and a cached 256-row statement is a large compiled
/// program: with the cache, the orchestrator's memory grew by tens of MB. (PostgreSQL: an unnamed
/// statement instead of one more named one on the server.)
pub fn dynamic(sql: &str) -> sqlx::query::Query<'_, Any, sqlx::any::AnyArguments<'_>> {
    sqlx::query(sql).persistent(false)
}

/// The rows of `select … IN (keys)`: `select` ends with the key column (`"SELECT saga_id,
/// order_id FROM orders WHERE saga_id"`), the list is bound from `keys`. No keys, no query.
pub async fn fetch_in<'c, E, K>(
    executor: E,
    engine: Engine,
    select: &str,
    keys: &[K],
) -> std::result::Result<Vec<sqlx::any::AnyRow>, sqlx::Error>
where
    E: Executor<'c, Database = Any>,
    K: AsRef<str>,
{
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!("{select} IN ({})", engine.placeholders(1, keys.len()));
    let mut q = dynamic(&sql);
    for key in keys {
        q = q.bind(key.as_ref());
    }
    q.fetch_all(executor).await
}

impl Engine {
    /// `($1, $2, ...), ($n, ...)`: `rows` tuples of `width` placeholders, for multi-row
    /// statements (the `Any` driver's QueryBuilder writes `?`, which PostgreSQL does not accept).
    /// Values are always bound, never formatted in. See [`Engine::placeholders`] for SQLite.
    pub fn values(self, rows: usize, width: usize) -> String {
        (0..rows)
            .map(|r| format!("({})", self.placeholders(r * width + 1, width)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `n` placeholders for the parameters numbered from `first`, for `IN (...)` lists: `$first,
    /// $first+1, ...` on PostgreSQL, anonymous `?` on SQLite. SQLite looks each named parameter
    /// up in a list, at parse time and again when sqlx binds it, so a statement with thousands of
    /// `$n` costs time quadratic in their number (measured: 4 % of the CPU of a benchmark); `?`
    /// costs nothing. A statement must then use generated placeholders only, in binding order
    /// (sqlx numbers `?` from 1 regardless of any `$n` beside them).
    pub fn placeholders(self, first: usize, n: usize) -> String {
        match self {
            Engine::Sqlite => vec!["?"; n].join(", "),
            Engine::Postgres => (first..first + n)
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_row_placeholders_are_numbered_in_order() {
        let pg = Engine::Postgres;
        assert_eq!(pg.values(2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(pg.placeholders(2, 3), "$2, $3, $4");
        assert_eq!(pg.values(0, 3), "");
        assert_eq!(Engine::Sqlite.values(2, 2), "(?, ?), (?, ?)");
        assert_eq!(Engine::Sqlite.placeholders(5, 3), "?, ?, ?");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite://data/x.db"), "sqlite://data/x.db");
        // The query form sqlx accepts too, kept apart from the other parameters.
        let masked = redact("postgres://saga@127.0.0.1:1/saga?password=hunter2&sslmode=require");
        assert!(!masked.contains("hunter2"), "{masked}");
        assert!(
            masked.contains("password=***") && masked.contains("sslmode=require"),
            "{masked}"
        );
        assert!(!redact("postgres://u:p%40ss@h/db").contains("p%40ss"));
        assert!(!redact("not a url hunter2").contains("hunter2"));
    }

    #[test]
    fn database_names_are_replaced() {
        assert_eq!(
            with_database_name("postgres://u@h:5432/test", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_database_name("postgres://u@h:5432", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_database_name("postgres://u@h/test?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }

    #[test]
    fn engines_are_told_apart() {
        assert_eq!(Engine::of("sqlite://a.db").unwrap(), Engine::Sqlite);
        assert_eq!(Engine::of("postgres://h/db").unwrap(), Engine::Postgres);
        assert!(Engine::of("mysql://h/db").is_err());
    }
}
