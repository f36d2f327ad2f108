//! Any saga type: `POST /sagas/{type}`, the generic view, paging, and a saga defined in a file
//! of a temporary folder run end to end against the stub participants.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

/// The create-order input as `sagas/create_order.toml` declares it (the saga computes
/// `amount_cents`: 200).
fn create_order_input(customer: &str) -> Value {
    json!({
        "customer_id": customer,
        "order_details": {"foodItems": [{"name": "Tea", "price": 2.0, "quantity": 1}]}
    })
}

async fn start(
    app: &TestApp,
    saga_type: &str,
    input: &Value,
    key: Option<&str>,
) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let mut request = app
        .client
        .post(app.url(&format!("/sagas/{saga_type}")))
        .json(input);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let r = request.send().await.unwrap();
    let (status, headers) = (r.status(), r.headers().clone());
    (status, r.json().await.unwrap_or(Value::Null), headers)
}

/// Runs the orchestrator binary with `args`, pointed at a Kafka and a PostgreSQL that are not
/// there: (exit code, stdout, stderr). Panics if it does not exit by itself.
fn run_offline(args: &[&str], sagas_dir: Option<&Path>) -> (Option<i32>, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KAFKA_BROKERS", "127.0.0.1:1")
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .env("RUST_LOG", "warn")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args);
    if let Some(dir) = sagas_dir {
        command.env("SAGAS_DIR", dir);
    }
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    let Ok(output) = rx.recv_timeout(Duration::from_secs(30)) else {
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        panic!("orchestrator {args:?} did not exit: it tried to start instead of answering");
    };
    let output = output.unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        output.status.code(),
        text(&output.stdout),
        text(&output.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_saga_starts_by_type_and_shows_its_input_and_context() {
    let app = spawn_app().await;
    let input = create_order_input("c-generic");
    let (status, body, headers) = start(&app, "create_order", &input, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["saga_type"], "create_order");
    assert_eq!(body["definition_version"], 1);
    let id = body["saga_id"].as_str().unwrap().to_string();
    assert_eq!(headers["location"], format!("/sagas/{id}").as_str());
    let saga = app.wait_terminal(&id).await;
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    assert_eq!(saga["id"], id.as_str());
    // As given, numbers with no fraction as integers (2.0 is stored as 2), with the amount the
    // saga computed.
    let mut given_and_computed = input.clone();
    given_and_computed["order_details"]["foodItems"][0]["price"] = json!(2);
    given_and_computed["amount_cents"] = json!(200);
    assert_eq!(
        saga["input"], given_and_computed,
        "the input as it was given, with the amount the saga computed"
    );
    assert!(saga["context"]["order_id"].is_string(), "{saga}");
    assert!(saga["context"]["payment_id"].is_string(), "{saga}");
    assert_eq!(saga["context"]["amount_cents"], 200);
    assert_eq!(
        saga["order_id"], saga["context"]["order_id"],
        "CampusG's fields stay"
    );
    assert_eq!(app.order_status(&id).await.as_deref(), Some("CREATED"));

    // The AsyncAPI document of what runs: both shipped sagas' commands and replies.
    let (status, doc) = app.get_json("/asyncapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(
        doc["channels"]["payment_commands"]["address"],
        app.config
            .topics
            .role("payment_commands")
            .unwrap()
            .name
            .as_str(),
        "the topic's name on the broker (with TOPIC_PREFIX on a shared one)"
    );
    for (channel, message) in [
        ("payment_commands", "refund_payment"),
        ("payment_events", "payment.refund_failed"),
        ("order_commands", "create_order"),
        ("user_events", "user.refund_ineligible"),
        ("notification_events", "saga.compensated"),
    ] {
        assert!(
            doc["channels"][channel]["messages"][message].is_object(),
            "{channel}: {message}"
        );
    }
    // The binary prints the same document offline, for a deployment to publish.
    let (code, printed, stderr) = run_offline(
        &["--print-asyncapi", "--topic-prefix", app.kafka.prefix()],
        None,
    );
    assert_eq!(code, Some(0), "{stderr}");
    let printed: Value = serde_json::from_str(&printed).expect("stdout is the JSON document");
    assert_eq!(printed, doc, "the printed document is the served one");
    app.stop().await;
}

/// A deployment's CI checks its saga files with the binary it will run, and publishes their
/// AsyncAPI document, with no Kafka or database to reach.
#[test]
fn the_binary_checks_saga_files_and_prints_their_asyncapi_without_kafka_or_a_database() {
    let dir = quick_order_folder();
    let (code, out, stderr) = run_offline(&["--check-sagas"], Some(dir.path()));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "create_order v1: create_order -> get_payment_info -> authorize_payment -> \
             update_order_status; undone by cancel_order, revert_payment; no pivot: every step \
             can be undone (create_order compensatable, get_payment_info nothing to undo, \
             authorize_payment compensatable, update_order_status nothing to undo)",
            "quick_order v1: create_order -> pay(get_payment_info + authorize_payment) -> \
             update_order_status; undone by cancel_order, revert_payment; no pivot: every step \
             can be undone (create_order compensatable, get_payment_info nothing to undo, \
             authorize_payment compensatable, update_order_status nothing to undo)",
        ]
    );

    let (code, out, stderr) = run_offline(&["--print-asyncapi"], Some(dir.path()));
    assert_eq!(code, Some(0), "{stderr}");
    let doc: Value = serde_json::from_str(&out).expect("stdout is the JSON document");
    let about = doc["info"]["description"].as_str().unwrap();
    assert!(
        about.ends_with("create_order v1, quick_order v1"),
        "{about}"
    );
    assert!(doc["operations"]["send_update_order_status"].is_object());
    assert!(
        doc["operations"]["send_begin_refund"].is_null(),
        "only what the folder declares"
    );

    // A mistake: exit 1, nothing on stdout, one line naming the file, the step and the problem.
    std::fs::write(
        dir.path().join("ship.toml"),
        "saga = \"ship\"\nversion = 1\n[[steps]]\ncommand = \"get_payment_info\"\nsend = [\"customer_id\"]\n",
    )
    .unwrap();
    let (code, out, stderr) = run_offline(&["--check-sagas"], Some(dir.path()));
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(out, "");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in {stderr:?}"));
    for named in ["ship.toml", "step get_payment_info", "`customer_id`"] {
        assert!(line.contains(named), "{line:?} does not name {named}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_input_is_a_422_naming_the_path_and_an_unknown_type_a_404() {
    let app = spawn_app().await;
    let mut bad = create_order_input("c-bad");
    bad["amount_cents"] = json!(-5);
    bad["order_details"]["foodItems"] = json!([]);
    let (status, body, _) = start(&app, "create_order", &bad, None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("/amount_cents"), "{error}");
    assert!(error.contains("/order_details/foodItems"), "{error}");
    let (status, body, _) = start(&app, "create_order", &json!([1, 2]), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body, _) = start(&app, "no_such_saga", &json!({}), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("create_order"),
        "names the known types: {body}"
    );
    let (_, list) = app.get_json("/sagas").await;
    assert_eq!(list.as_array().unwrap().len(), 0, "nothing was started");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_follow_the_next_link_and_stay_stable_while_sagas_are_added() {
    let app = spawn_app_custom(&[], Default::default(), Default::default()).await;
    let mut started = Vec::new();
    for i in 0..7 {
        started.push(app.start_saga(&format!("c-page-{i}")).await);
    }
    let mut seen = Vec::new();
    let mut next = Some("/sagas?limit=3&type=create_order".to_string());
    let mut pages = 0;
    while let Some(path) = next.take() {
        let r = app.client.get(app.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        next = r.headers().get("link").map(|l| {
            let l = l.to_str().unwrap();
            assert!(l.ends_with("; rel=\"next\""), "{l}");
            l[l.find('<').unwrap() + 1..l.find('>').unwrap()].to_string()
        });
        let page: Vec<Value> = r.json().await.unwrap();
        seen.extend(
            page.iter()
                .map(|s| s["saga_id"].as_str().unwrap().to_string()),
        );
        pages += 1;
        // A saga added while paging sorts before the first page: no page repeats or skips one.
        app.start_saga(&format!("c-late-{pages}")).await;
    }
    assert_eq!(pages, 3, "7 sagas in pages of 3");
    let expected: Vec<String> = started.iter().rev().cloned().collect();
    assert_eq!(seen, expected, "every saga once, newest first");
    // Filters: another type has none; a cursor that was not given out is refused.
    let (_, none) = app.get_json("/sagas?type=refund_order").await;
    assert_eq!(none, json!([]));
    let (status, _) = app.get_json("/sagas?cursor=garbage").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    app.stop().await;
}

/// A saga of its own in a temporary folder, on the participants that exist: the order is
/// created, then the payment method looked up and the payment authorized in parallel, then the
/// order confirmed.
const PAY_IN_PARALLEL: &str = r#"
saga = "quick_order"
version = 1
events = "notification_events"

[input]
type = "object"
required = ["customer_id", "amount_cents"]
properties.customer_id = { type = "string" }
properties.amount_cents = { type = "integer", minimum = 0 }
properties.order_details = { type = "object" }

[[steps]]
command = "create_order"
send = ["customer_id", "order_details", "amount_cents"]
receive = ["order_id"]
compensation = { command = "cancel_order", send = ["order_id"] }

[[steps]]
name = "pay"
[[steps.parallel]]
command = "get_payment_info"
send = ["customer_id"]
receive = ["payment_method_id"]
nothing_to_undo = "a lookup"
[[steps.parallel]]
command = "authorize_payment"
send = ["customer_id", "amount_cents", "order_id"]
receive = ["payment_id"]
timeout = "5s"
compensation = { command = "revert_payment", send = ["payment_id"] }

[[steps]]
command = "update_order_status"
send = ["order_id", "customer_id"]
args = { status = "CREATED" }
nothing_to_undo = "cancel_order undoes it"
"#;

/// A temporary folder with `quick_order` (above) and the shipped `create_order`.
fn quick_order_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("quick_order.toml"), PAY_IN_PARALLEL).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/sagas/create_order.toml"),
        dir.path().join("create_order.toml"),
    )
    .unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_defined_in_a_folder_runs_end_to_end_with_a_parallel_group() {
    let dir = quick_order_folder();
    let mut app = spawn_app_custom(&[NO_IN_PROCESS], Default::default(), Default::default()).await;
    let registry = orchestrator::app::SagaArgs {
        sagas_dir: Some(dir.path().into()),
        messages_file: None,
    }
    .load(&app.config.topics)
    .unwrap();
    app.config.sagas = Arc::clone(&registry);
    app.start_all().await;

    let input =
        json!({"customer_id": "c-quick", "amount_cents": 1500, "order_details": {"foodItems": []}});
    let (status, body, _) = start(&app, "quick_order", &input, Some("k-1")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["saga_id"].as_str().unwrap().to_string();
    let saga = app.wait_terminal(&id).await;
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    assert_eq!(
        steps(&saga),
        [
            ("create_order", "forward", "COMPLETED"),
            ("get_payment_info", "forward", "COMPLETED"),
            ("authorize_payment", "forward", "COMPLETED"),
            ("update_order_status", "forward", "COMPLETED"),
        ]
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .to_vec()
    );
    // The two members were sent together, in one transition.
    let s = saga["steps"].as_array().unwrap();
    assert_eq!(s[1]["started_at"], s[2]["started_at"], "{saga}");
    assert!(
        saga.get("order_id").is_none(),
        "CampusG's fields are create-order's only"
    );
    assert_eq!(app.payment_status(&id).await.as_deref(), Some("AUTHORIZED"));

    // A declined payment while the lookup succeeds: the order is cancelled, nothing else runs.
    let declined = json!({"customer_id": "declined-quick", "amount_cents": 1500});
    let (_, body, _) = start(&app, "quick_order", &declined, None).await;
    let failed_id = body["saga_id"].as_str().unwrap().to_string();
    let failed = app.wait_terminal(&failed_id).await;
    assert_eq!(failed["status"], "COMPENSATED", "{failed}");
    let names: Vec<String> = steps(&failed).into_iter().map(|s| s.0).collect();
    assert_eq!(
        names.last().map(String::as_str),
        Some("cancel_order"),
        "{failed}"
    );
    assert!(!names.contains(&"update_order_status".to_string()));
    assert_eq!(
        app.order_status(&failed_id).await.as_deref(),
        Some("CANCELLED")
    );

    // Idempotency keys are per type: the same key starts a create_order saga of its own, and
    // again on quick_order answers with the first saga.
    let (_, other, _) = start(
        &app,
        "create_order",
        &create_order_input("c-quick"),
        Some("k-1"),
    )
    .await;
    assert_ne!(other["saga_id"], id.as_str());
    let (status, again, headers) = start(&app, "quick_order", &input, Some("k-1")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(again["saga_id"], id.as_str());
    assert_eq!(headers["idempotent-replayed"], "true");

    let (_, listed) = app.get_json("/sagas?type=quick_order").await;
    let ids: HashSet<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["saga_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, HashSet::from([id.as_str(), failed_id.as_str()]));
    app.stop().await;
}

/// The orchestrator's migrations up to (and including) `version`: the schema an earlier release
/// left behind.
fn migrations_until(version: i64) -> platform::db::Migrations {
    let cut = |m: &sqlx::migrate::Migrator| -> &'static sqlx::migrate::Migrator {
        let mut old = sqlx::migrate::Migrator::DEFAULT;
        old.migrations = m
            .migrations
            .iter()
            .filter(|x| x.version <= version)
            .cloned()
            .collect::<Vec<_>>()
            .into();
        Box::leak(Box::new(old))
    };
    platform::db::Migrations {
        sqlite: cut(orchestrator::store::MIGRATIONS.sqlite),
        postgres: cut(orchestrator::store::MIGRATIONS.postgres),
        runtime: None,
    }
}

/// Data written by the previous schema (a `customer_id` column, keys unique across all sagas,
/// one pending command stored as an object) is moved by the migration, and a saga that was
/// running goes on to its end under the new code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_stored_by_the_previous_schema_are_migrated_and_go_on() {
    let mut app = spawn_app_custom(&[NO_IN_PROCESS], fast_policy(), Default::default()).await;
    let url = app.config.database_url("orchestrator").unwrap();
    let old =
        platform::db::Db::connect(&url, &migrations_until(6), platform::db::SqliteSync::Normal)
            .await
            .unwrap();
    // A create-order saga as the previous release stored it: waiting on create_order, due.
    let registry = app.config.sagas.clone();
    let def = registry.latest("create_order").unwrap();
    let saga_id = uuid::Uuid::new_v4();
    // The previous release took NUL in item names: PostgreSQL's JSON types refuse the escape,
    // which stopped the migration there (SQLite migrated the same row).
    let mut input = create_order_input("c-migrated");
    input["amount_cents"] = json!(200);
    input["order_details"]["foodItems"][0]["name"] = json!("Tea\u{0}\u{0}");
    let (state, _) = orchestrator::saga::engine::start(
        def,
        &fast_policy(),
        saga_id,
        input.as_object().unwrap().clone(),
        platform::time::now_ms() - 1_000,
    );
    let mut json = serde_json::to_value(&state).unwrap();
    let obj = json.as_object_mut().unwrap();
    obj.remove("definition_version");
    let pending = obj["pending"][0].clone();
    obj.insert("pending".into(), pending);
    sqlx::query(
        "INSERT INTO sagas (saga_id, saga_type, status, customer_id, idempotency_key, state, version, created_at, updated_at, wake_at) \
         VALUES ($1, 'create_order', 'STARTED', 'c-migrated', 'old-key', $2, 1, $3, $3, 0)",
    )
    .bind(saga_id.to_string())
    .bind(json.to_string())
    .bind(state.created_at)
    .execute(&old.writer)
    .await
    .unwrap();
    old.close().await;

    app.start_all().await; // runs the new migrations
    let id = saga_id.to_string();
    let saga = app.wait_terminal(&id).await;
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    let mut recovered = input.clone();
    if app.config.postgres_url.is_some() {
        // Read with each NUL escape replaced; the state itself keeps it.
        recovered["order_details"]["foodItems"][0]["name"] = json!("Tea\u{FFFD}\u{FFFD}");
    }
    assert_eq!(
        saga["input"], recovered,
        "the input recovered from the stored state"
    );
    assert_eq!(
        saga["context"]["order_details"], input["order_details"],
        "the state as it was"
    );
    assert_eq!(saga["definition_version"], 1);
    assert_eq!(saga["customer_id"], "c-migrated");
    assert_eq!(steps(&saga)[0].0, "create_order");
    assert_eq!(steps(&saga).len(), 4);
    // Its key still finds it, now within its type.
    let store = app.orchestrator_store().await;
    let found = store
        .by_idempotency_key("create_order", "old-key")
        .await
        .unwrap();
    assert_eq!(found.map(|s| s.saga_id), Some(saga_id));
    app.stop().await;
}

/// Loads `sagas/` with create_order's file given `version` (and, with `keep_v1`, the shipped
/// version 1 beside it).
fn registry_with_create_order(
    topics: &platform::Topics,
    version: u32,
    keep_v1: bool,
) -> (tempfile::TempDir, Arc<orchestrator::saga::Registry>) {
    let dir = sagas_with_create_order(version, keep_v1);
    let registry = orchestrator::app::SagaArgs {
        sagas_dir: Some(dir.path().into()),
        messages_file: None,
    }
    .load(topics)
    .unwrap();
    (dir, registry)
}

/// Stops the orchestrator and gives it create_order's `version` (with version 1 beside it when
/// `keep_v1`), as a deploy would; the caller starts it again. The folder must outlive the run.
async fn redeploy(app: &mut TestApp, version: u32, keep_v1: bool) -> tempfile::TempDir {
    app.stop_orchestrator().await;
    let (dir, sagas) = registry_with_create_order(&app.config.topics, version, keep_v1);
    app.config.sagas = sagas;
    // A new process's readiness (the stopped one's says "shutting down").
    app.config.ops = platform::Ops::default();
    dir
}

/// Removes `version` of create_order from the definitions recorded in the database, as a
/// database of a release that did not record them would be: a deploy without that version then
/// has nowhere to learn it from.
async fn forget_recorded(app: &TestApp, version: i64) {
    let db = app.db("orchestrator").await;
    sqlx::query("DELETE FROM saga_definitions WHERE saga_type = 'create_order' AND version = $1")
        .bind(version)
        .execute(&db)
        .await
        .unwrap();
}

/// A saga keeps the definition version it started with; when a deploy drops that version (and
/// no instance recorded it) the saga is parked (never run under version 2) and `/readyz` says so while serving the others;
/// once the version is back, `retry` resumes it and it completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_whose_definition_version_is_gone_is_parked_and_reported_until_it_is_back() {
    let (mut app, id) = waiting_on_the_user_service("c-versioned").await;

    // Deploy: create_order version 2 only, on a database without version 1's record.
    let _v2_dir = redeploy(&mut app, 2, false).await;
    forget_recorded(&app, 1).await;
    app.start_orchestrator().await;
    let parked = app
        .wait_for(&id, std::time::Duration::from_secs(10), |s| {
            !s["parked"].is_null()
        })
        .await;
    assert!(
        parked["parked"]
            .as_str()
            .unwrap()
            .contains("version 1 is not loaded"),
        "{parked}"
    );
    assert_eq!(parked["status"], "STARTED");
    assert_eq!(parked["definition_version"], 1);
    // Ready once its consumer group has joined: the warning does not keep it out of service.
    let mut ready = Value::Null;
    for _ in 0..60 {
        let r = app.client.get(app.url("/readyz")).send().await.unwrap();
        let ok = r.status() == StatusCode::OK;
        ready = r.json().await.unwrap();
        if ok {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert_eq!(
        ready["status"], "ready",
        "the other sagas are served: {ready}"
    );
    let check = &ready["checks"]["sagas:definitions"];
    assert_eq!(check["status"], "warning", "{ready}");
    assert!(
        check["detail"]
            .as_str()
            .unwrap()
            .contains("create_order version 1"),
        "{ready}"
    );
    // New sagas start under version 2.
    let (_, body, _) = start(&app, "create_order", &create_order_input("c-v2"), None).await;
    assert_eq!(body["definition_version"], 2);
    // A retry cannot resume it while its version is missing.
    let (status, _) = app.post(&format!("/sagas/{id}/retry")).await;
    assert_eq!(status, StatusCode::CONFLICT);

    // Deploy both versions, and the missing participant: retry resumes it under version 1.
    let _both_dir = redeploy(&mut app, 2, true).await;
    app.start_service("users").await;
    app.start_orchestrator().await;
    let (status, body) = app.post(&format!("/sagas/{id}/retry")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let done = app.wait_terminal(&id).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(done["definition_version"], 1);
    let ready: Value = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ready["checks"]["sagas:definitions"]["status"], "ok",
        "{ready}"
    );
    app.stop().await;
}

/// The reply that finds a saga's definition version missing parks the saga without counting:
/// once the version is back, `retry` sends the command again and the participant's stored reply
/// (the same message id as the one that parked it) moves the saga on. It used to stay in the
/// inbox, so every re-send's answer was dropped as a duplicate until the step ran out of
/// attempts and the order was cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_parked_by_a_reply_completes_when_its_version_is_back_and_it_is_retried() {
    // Deadlines long enough that the user service's reply, not a timer, finds version 1 gone;
    // two attempts, so a reply dropped after the retry would exhaust the step.
    let policy = orchestrator::Policy {
        step_timeout_ms: 10_000,
        max_step_timeout_ms: 10_000,
        max_attempts: 2,
        ..fast_policy()
    };
    let mut app = spawn_app_custom(
        &["notification", "orders", "payments"],
        policy,
        Default::default(),
    )
    .await;
    let id = app.start_saga("c-parked-by-reply").await;
    app.wait_for(&id, std::time::Duration::from_secs(10), |s| {
        s["current_step"] == "get_payment_info"
    })
    .await;

    // Deploy version 2 only (version 1 not recorded), then let the user service answer the
    // waiting command.
    let _v2_dir = redeploy(&mut app, 2, false).await;
    forget_recorded(&app, 1).await;
    app.start_orchestrator().await;
    app.start_service("users").await;
    let parked = app
        .wait_for(&id, std::time::Duration::from_secs(9), |s| {
            !s["parked"].is_null()
        })
        .await;
    let attempts = |s: &Value| {
        s["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|st| st["name"] == "get_payment_info")
            .map(|st| st["attempts"].clone())
            .unwrap()
    };
    assert_eq!(
        attempts(&parked),
        1,
        "parked by the reply, not by a re-send: {parked}"
    );
    assert_eq!(parked["status"], "STARTED");

    // Both versions again: the retry re-sends get_payment_info, and its answer counts.
    let _both_dir = redeploy(&mut app, 2, true).await;
    app.start_orchestrator().await;
    let (status, body) = app.post(&format!("/sagas/{id}/retry")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let done = app.wait_terminal(&id).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(attempts(&done), 2, "one re-send after the retry: {done}");
    assert_eq!(app.order_status(&id).await.as_deref(), Some("CREATED"));
    app.stop().await;
}

/// A deploy that drops the version a saga runs under no longer parks it: the version was recorded
/// in the database when it was deployed, and the saga goes on under that copy, never under the
/// new version. Before the definitions were recorded it was parked until an operator redeployed
/// version 1 and retried it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_whose_version_was_dropped_from_the_files_goes_on_under_the_recorded_copy() {
    let (mut app, id) = waiting_on_the_user_service("c-recorded").await;
    let _v2_dir = redeploy(&mut app, 2, false).await;
    app.start_orchestrator().await;
    app.start_service("users").await;
    let done = app.wait_terminal(&id).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(done["definition_version"], 1, "{done}");
    assert!(done["parked"].is_null(), "{done}");
    let (_, body, _) = start(&app, "create_order", &create_order_input("c-new"), None).await;
    assert_eq!(
        body["definition_version"], 2,
        "new sagas start under the files' newest"
    );
    let db = app.db("orchestrator").await;
    let recorded: Vec<String> = strings(
        &db,
        "SELECT CAST(version AS TEXT) FROM saga_definitions WHERE saga_type = $1 ORDER BY version",
        "create_order",
    )
    .await;
    assert_eq!(recorded, ["1", "2"]);
    app.stop().await;
}

/// A definition changed without a new version while sagas run under it would run them one way
/// here and another way on instances with the recorded text: the start is refused, naming the
/// file. With no saga under it, the recorded copy is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definition_changed_under_the_same_version_is_refused_while_sagas_run_under_it() {
    let mut app = spawn_app_custom(
        &["notification", "orders"],
        fast_policy(),
        Default::default(),
    )
    .await;
    let id = app.start_saga("c-changed").await;
    app.wait_for(&id, std::time::Duration::from_secs(10), |s| {
        s["current_step"] == "get_payment_info"
    })
    .await;
    app.stop_orchestrator().await;
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/sagas/create_order.toml"
    ))
    .unwrap();
    // Comments and layout are not a change.
    std::fs::write(
        dir.path().join("create_order.toml"),
        format!("# reviewed\n{shipped}\n\n"),
    )
    .unwrap();
    let topics = app.config.topics.clone();
    let load = |dir: &std::path::Path| {
        orchestrator::app::SagaArgs {
            sagas_dir: Some(dir.into()),
            messages_file: None,
        }
        .load(&topics)
        .unwrap()
    };
    app.config.sagas = load(dir.path());
    app.config.ops = platform::Ops::default();
    app.start_orchestrator().await;
    app.stop_orchestrator().await;
    // A longer deadline is a change.
    let changed = shipped.replacen("[[steps]]", "[[steps]]\ntimeout = \"7s\"", 1);
    assert_ne!(changed, shipped, "create_order.toml has a [[steps]] table");
    std::fs::write(dir.path().join("create_order.toml"), &changed).unwrap();
    app.config.sagas = load(dir.path());
    app.config.ops = platform::Ops::default();
    let config = app.config.orchestrator(app.kafka.settings()).unwrap();
    let started =
        orchestrator::Orchestrator::start(config, tokio_util::sync::CancellationToken::new()).await;
    let err = match started {
        Ok(_) => panic!("a changed definition under the same version started"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("create_order.toml")
            && err.contains("version 1 differs")
            && err.contains("1 sagas still run under it"),
        "{err}"
    );
    // Once no saga runs under it, the changed text replaces the recorded one.
    let db = app.db("orchestrator").await;
    sqlx::query("UPDATE sagas SET status = 'CANCELLED' WHERE saga_id = $1")
        .bind(&id)
        .execute(&db)
        .await
        .unwrap();
    app.config.ops = platform::Ops::default();
    app.start_orchestrator().await;
    let source = scalar(
        &db,
        "SELECT source FROM saga_definitions WHERE saga_type = $1 AND version = 1",
        "create_order",
    )
    .await
    .unwrap();
    assert_eq!(source, changed);
    app.stop().await;
}

/// Migration 7's first text failed on PostgreSQL for states holding a NUL; its corrected text
/// leaves the same schema, and a database that ran the first text still starts (sqlx refuses a
/// database whose applied migration's checksum differs from the binary's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_ran_migration_7s_first_text_still_starts() {
    let mut app = spawn_app_on(
        Some(required_postgres()),
        &[NO_IN_PROCESS],
        fast_policy(),
        Default::default(),
    )
    .await;
    let url = app.config.database_url("orchestrator").unwrap();
    let first = include_str!(
        "../../orchestrator/migrations/superseded/postgres/0007_sagas_of_any_type.sql"
    );
    let mut earlier = sqlx::migrate::Migrator::DEFAULT;
    earlier.migrations = orchestrator::store::MIGRATIONS
        .postgres
        .migrations
        .iter()
        .filter(|m| m.version <= 7)
        .map(|m| {
            if m.version < 7 {
                return m.clone();
            }
            sqlx::migrate::Migration::new(
                7,
                m.description.clone(),
                m.migration_type,
                std::borrow::Cow::Borrowed(first),
                m.no_tx,
            )
        })
        .collect::<Vec<_>>()
        .into();
    let earlier: &'static sqlx::migrate::Migrator = Box::leak(Box::new(earlier));
    let old = platform::db::Db::connect(
        &url,
        &platform::db::Migrations {
            sqlite: orchestrator::store::MIGRATIONS.sqlite,
            postgres: earlier,
            runtime: None,
        },
        platform::db::SqliteSync::Normal,
    )
    .await
    .unwrap();
    old.close().await;
    app.start_all().await;
    let id = app.start_saga("c-after-first-text").await;
    assert_eq!(app.wait_terminal(&id).await["status"], "COMPLETED");
    app.stop().await;
}

/// A NUL in a start input is refused on both fronts, naming where it is: it was taken, and
/// later stopped PostgreSQL's migration and the storing of dead letters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_in_a_start_input_is_refused_naming_where() {
    let app = spawn_app_with(&[]).await;
    let mut input = create_order_input("c-nul\u{0}");
    input["order_details"]["foodItems"][0]["name"] = json!("Tea\u{0}");
    let (status, body, _) = start(&app, "create_order", &input, None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("/customer_id: contains a NUL")
            && error.contains("/order_details/foodItems/0/name: contains a NUL"),
        "{error}"
    );
    let mut order = order_body("c-nul");
    order["order_details"]["deliveryLocation"] = json!("Level 2\u{0}");
    let r = app
        .client
        .post(app.url("/orders"))
        .json(&order)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("NUL"), "{body}");
    let (_, list) = app.get_json("/sagas").await;
    assert_eq!(list.as_array().unwrap().len(), 0, "nothing stored: {list}");
    app.stop().await;
}

/// `POST /sagas/create_order` used to skip every check `POST /orders` made: a client set the
/// amount (1,000 x $99,999 authorized for 0 cents), a blank or multi-line customer id, items of
/// any shape, and fields later steps receive (`order_id`, which compensations then send). Both
/// fronts now hold create_order's input schema, and the amount is computed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_fronts_hold_the_same_rules_and_the_amount_is_computed_not_taken() {
    let app = spawn_app().await;
    let expensive = json!({
        "customer_id": "c-expensive",
        "order_details": {"foodItems": [{"name": "Gold", "price": 99_999.0, "quantity": 1000}]}
    });
    let mut cheap = expensive.clone();
    cheap["amount_cents"] = json!(0);
    let (status, body, _) = start(&app, "create_order", &cheap, None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("/amount_cents: computed by the saga"),
        "{error}"
    );

    let mut preset = create_order_input("c-preset");
    preset["order_id"] = json!("ord-of-someone-else");
    preset["payment_id"] = json!("pay-of-someone-else");
    let (status, body, _) = start(&app, "create_order", &preset, None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("/order_id: set by the reply to step create_order")
            && error.contains("/payment_id: set by the reply to step authorize_payment"),
        "{error}"
    );

    for customer in ["", "   ", "c-1\nc-2", "c-\u{1b}[31m"] {
        let input = create_order_input(customer);
        let (status, body, _) = start(&app, "create_order", &input, None).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{customer:?}: {body}"
        );
        assert!(
            body["error"].as_str().unwrap().contains("/customer_id: "),
            "{customer:?}: {body}"
        );
        let r = app
            .client
            .post(app.url("/orders"))
            .json(&order_body(customer))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{customer:?} on /orders"
        );
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("/customer_id: "),
            "the same rule, the same words: {body}"
        );
    }
    let mut shapeless = create_order_input("c-shapeless");
    shapeless["order_details"]["foodItems"] = json!([{"name": "Tea"}, 7]);
    let (status, body, _) = start(&app, "create_order", &shapeless, None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("/order_details/foodItems/0: ")
            && error.contains("/order_details/foodItems/1: "),
        "{error}"
    );
    let (_, list) = app.get_json("/sagas").await;
    assert_eq!(list.as_array().unwrap().len(), 0, "nothing stored: {list}");

    // What the items cost is what is authorized.
    let (status, body, _) = start(&app, "create_order", &expensive, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["saga_id"].as_str().unwrap().to_string();
    let saga = app.wait_terminal(&id).await;
    assert_eq!(saga["amount_cents"], 9_999_900_000i64, "{saga}");
    let db = app.db("payments").await;
    let authorized = scalar(
        &db,
        "SELECT CAST(amount_cents AS TEXT) FROM payments WHERE saga_id = $1",
        &id,
    )
    .await;
    assert_eq!(authorized.as_deref(), Some("9999900000"));
    app.stop().await;
}
