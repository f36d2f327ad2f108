//! Upgrades and rollbacks on one database: this release beside the previous one (a rolling
//! deploy), and this release on a schema a newer one migrated (a rollback). Schema changes go
//! expand, then contract, and readers tolerate what one release ahead writes (see
//! `docs/deploying.md`, "Upgrades").

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::helpers::*;
use crate::procs::{free_addr, spawn_processes_using, INSTANCES};

/// The previous release's orchestrator and the files it shipped, built by
/// `scripts/previous-release.sh` (`.ci/run` does): `PREVIOUS_RELEASE_DIR`. Without it the test
/// says why it does not run.
fn previous_release() -> Option<PathBuf> {
    let dir = std::env::var_os("PREVIOUS_RELEASE_DIR").map(PathBuf::from);
    if dir.is_none() {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "skipped: {} runs the previous release; set PREVIOUS_RELEASE_DIR=$(scripts/previous-release.sh)",
            std::thread::current().name().unwrap_or("this test")
        );
    }
    dir
}

/// The newest orchestrator migration of the previous release (the commit in
/// `.ci/previous-release`).
const PREVIOUS_SCHEMA: i64 = 9;

/// A rolling deploy from the previous release to this one: an instance of the previous release
/// runs sagas, an instance of this release joins it on the same PostgreSQL database (migrating
/// it) and Kafka group, both take orders and each other's replies and deadlines, then the old
/// instance is replaced. Every saga ends, and ends right, whichever release moved it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_release_and_this_one_run_side_by_side_on_one_database() {
    let Some(previous) = previous_release() else {
        return;
    };
    // The previous release reads its own files: this release's may use what it does not know.
    let own = |file: &str| previous.join(file).display().to_string();
    let old = (
        previous.join("orchestrator"),
        vec![
            ("SAGAS_DIR".to_string(), own("sagas")),
            ("TOPICS_FILE".to_string(), own("topics.json")),
            ("MESSAGES_FILE".to_string(), own("messages.toml")),
        ],
    );
    let mut app = spawn_processes_using(
        Some(required_postgres()),
        &[],
        1,
        HashMap::from([("orchestrator", old)]),
    )
    .await;
    let db = app.db("orchestrator").await;
    let schema = |sql: &'static str| {
        let db = db.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&db)
                .await
                .unwrap()
        }
    };
    let newest = "SELECT MAX(version) FROM _sqlx_migrations";
    assert_eq!(
        schema(newest).await,
        PREVIOUS_SCHEMA,
        "the previous release's schema"
    );
    let mut ids = app.post_many_to(&["orchestrator"], 80, "old").await;
    assert_eq!(ids.len(), 80, "the previous release takes orders");

    // This release joins while the old one's sagas run: it migrates the database under it.
    app.instance_addrs.insert("orchestrator-2", free_addr());
    app.spawn_proc("orchestrator-2");
    app.wait_healthy_at("orchestrator-2").await;
    assert!(
        schema(newest).await > PREVIOUS_SCHEMA,
        "migrated by this release"
    );
    ids.extend(app.post_many_to(&INSTANCES[..2], 80, "both").await);
    // The old instance keeps serving on the migrated schema, reading what the new one wrote.
    let (status, created) = app.post_order("c-old-after-migration").await;
    assert_eq!(status, 202, "{created}");
    ids.push(created["saga_id"].as_str().unwrap().to_string());
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The old instance is replaced by this release.
    let (exit, _) = app.sigterm("orchestrator");
    assert!(exit.success(), "{exit:?}");
    let (old_log, _) = app.proc_output("orchestrator");
    app.binaries.clear();
    app.spawn_proc("orchestrator");
    app.wait_healthy_at("orchestrator").await;
    ids.extend(app.post_many_to(&INSTANCES[..2], 40, "new").await);

    let by_status = app
        .all_terminal_and_consistent(&ids, Duration::from_secs(120))
        .await;
    assert_eq!(by_status.get("COMPLETED"), Some(&51), "{by_status:?}");
    assert_eq!(by_status.get("COMPENSATED"), Some(&150), "{by_status:?}");
    let errors: Vec<&str> = old_log.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(
        errors.is_empty(),
        "the previous release ran cleanly beside this one: {errors:#?}"
    );
    app.stop().await;
}

/// A rollback: this release starting on a database a newer release migrated further. sqlx
/// refused a database with an applied migration it does not know ("migration 9999 was
/// previously applied but is missing"), so no rollback was possible once a newer release had
/// started; now the unknown migration is accepted (a newer release only adds) and the sagas run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn this_release_starts_on_a_schema_a_newer_release_migrated() {
    let mut app = spawn_app_custom(&[NO_IN_PROCESS], fast_policy(), Default::default()).await;
    let url = app.config.database_url("orchestrator").unwrap();
    let db = platform::db::Db::connect(
        &url,
        &orchestrator::store::MIGRATIONS,
        platform::db::SqliteSync::Normal,
    )
    .await
    .unwrap();
    let checksum = match db.engine {
        platform::db::Engine::Postgres => "decode('00', 'hex')",
        platform::db::Engine::Sqlite => "X'00'",
    };
    sqlx::query(&format!(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'a newer release', TRUE, {checksum}, 1)"
    ))
    .execute(&db.writer)
    .await
    .unwrap();
    sqlx::query("CREATE TABLE from_a_newer_release (id BIGINT)")
        .execute(&db.writer)
        .await
        .unwrap();
    db.close().await;
    app.start_all().await;
    let id = app.start_saga("c-rolled-back").await;
    assert_eq!(app.wait_terminal(&id).await["status"], "COMPLETED");
    app.stop().await;
}

/// The stub services' databases from before the participant runtime owned `processed_commands`
/// and `dead_letters` (each service's own migrations 1 to 3 created them) start under this
/// release, which records the runtime's migration beside theirs, and handle commands as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_database_of_the_previous_layout_starts_and_serves() {
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    use std::borrow::Cow;
    let mut app = spawn_app_custom(&[NO_IN_PROCESS], fast_policy(), Default::default()).await;
    let firsts = [
        (
            "orders",
            include_str!("../../services/migrations/superseded/order/0001_orders.sql"),
        ),
        (
            "users",
            include_str!("../../services/migrations/superseded/user/0001_payment_methods.sql"),
        ),
        (
            "payments",
            include_str!("../../services/migrations/superseded/payment/0001_payments.sql"),
        ),
    ];
    for (component, first) in firsts {
        let step = |version, sql: &'static str| {
            Migration::new(
                version,
                Cow::Borrowed("previous layout"),
                MigrationType::Simple,
                Cow::Borrowed(sql),
                false,
            )
        };
        let mut old = Migrator::DEFAULT;
        old.migrations = vec![
            step(1, first),
            step(
                2,
                "CREATE INDEX processed_commands_by_time ON processed_commands (processed_at);",
            ),
            step(
                3,
                "CREATE TABLE dead_letters (dlq_id TEXT PRIMARY KEY, component TEXT NOT NULL, \
                 source_topic TEXT NOT NULL, source_partition INTEGER NOT NULL, \
                 source_offset BIGINT NOT NULL, msg_key TEXT, payload TEXT, headers TEXT NOT NULL, \
                 reason TEXT NOT NULL, error TEXT NOT NULL, stored_at BIGINT NOT NULL);",
            ),
        ]
        .into();
        let old: &'static Migrator = Box::leak(Box::new(old));
        let url = app.config.database_url(component).unwrap();
        let db = platform::db::Db::connect(
            &url,
            &platform::db::Migrations {
                sqlite: old,
                postgres: old,
                runtime: None,
            },
            platform::db::SqliteSync::Normal,
        )
        .await
        .unwrap();
        db.close().await;
    }
    app.start_all().await;
    let id = app.start_saga("c-previous-layout").await;
    assert_eq!(app.wait_terminal(&id).await["status"], "COMPLETED");
    for (component, _) in firsts {
        let db = app.db(component).await;
        let versions: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
                .fetch_all(&db)
                .await
                .unwrap();
        assert_eq!(versions, [1, 2, 3, 9_000_001], "{component}");
        let handled = count(
            &db,
            "SELECT COUNT(*) FROM processed_commands WHERE saga_id = $1",
            &id,
        )
        .await;
        assert!(
            handled >= 1,
            "{component} handled the saga's commands once each"
        );
    }
    app.stop().await;
}
