//! `sagactl`, the binary, against the real system: what it prints and how it exits.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::helpers::*;

fn sagactl(app: &TestApp, args: &[&str]) -> Output {
    sagactl_with(app, args, &[], None)
}

/// Runs `sagactl` against `app`, with environment `env` and `stdin` for its input.
fn sagactl_with(app: &TestApp, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sagactl"));
    cmd.args(args)
        .env_remove("SAGA_TOKEN")
        .env("SAGA_URL", app.url(""))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("sagactl runs");
    let mut pipe = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        pipe.write_all(text.as_bytes()).unwrap();
    }
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `sagactl` is a blocking process: run from the async tests on a thread of its own.
async fn run(app: &TestApp, args: &[&str]) -> Output {
    tokio::task::block_in_place(|| sagactl(app, args))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagactl_starts_follows_lists_and_shows_sagas_as_the_api_has_them() {
    let app = spawn_app().await;
    let order = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/order.json");

    // start --follow: the timeline live until the end, exit 0.
    let o = run(
        &app,
        &[
            "start",
            "create_order",
            "--file",
            order,
            "--set",
            "customer_id=c-cli-1",
            "--follow",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let id = out
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("started saga "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no saga id in {out}"))
        .to_string();
    assert!(out.contains(&format!("saga {id} ended COMPLETED")), "{out}");
    for step in ["update_order_status: succeeded", "STARTED → COMPLETED"] {
        assert!(out.contains(step), "{step:?} not in {out}");
    }
    // Not coloured when piped.
    assert!(!out.contains('\u{1b}'), "{out:?}");

    // show --output json is the API's own view.
    let o = run(&app, &["show", &id, "--output", "json"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let shown: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let (_, api) = app.get_saga(&id).await;
    assert_eq!(shown, api);

    // show: the timeline, one line per sending, each with its outcome.
    let o = run(&app, &["show", &id]).await;
    let out = stdout(&o);
    assert_eq!(
        out.lines()
            .filter(|l| l.contains("succeeded after"))
            .count(),
        4,
        "{out}"
    );

    // A failure path from stdin, followed: both compensations show.
    let body = order_body("noupdate-cli").to_string();
    let o = tokio::task::block_in_place(|| {
        sagactl_with(
            &app,
            &["start", "create_order", "--file", "-", "--follow"],
            &[],
            Some(&body),
        )
    });
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("undo revert_payment: succeeded"), "{out}");
    assert!(out.contains("undo cancel_order: succeeded"), "{out}");
    assert!(out.contains("ended COMPENSATED"), "{out}");

    // list, searched by customer, and by type and status.
    let o = run(&app, &["list", "--search", "c-cli-1"]).await;
    let out = stdout(&o);
    assert!(out.contains(&id), "{out}");
    assert_eq!(out.lines().count(), 2, "a header and one saga: {out}");
    let o = run(
        &app,
        &["list", "--status", "compensated", "--output", "json"],
    )
    .await;
    let listed: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["customer_id"], "noupdate-cli");

    // types: both, with their steps.
    let o = run(&app, &["types"]).await;
    let out = stdout(&o);
    assert!(
        out.contains("create_order (version 1)") && out.contains("refund_order"),
        "{out}"
    );
    assert!(out.contains("undone by revert_payment"), "{out}");

    // cancel a completed order: its steps are undone.
    let o = run(&app, &["cancel", &id]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("being cancelled"), "{}", stdout(&o));
    let o = run(&app, &["show", &id, "--follow"]).await;
    assert!(stdout(&o).contains("ended CANCELLED"), "{}", stdout(&o));

    // tail: the notification log's lines of this saga, as they are when piped.
    app.notifications(&id, 8).await;
    let log = app.config.data_dir.join("notifications.log");
    let o = run(
        &app,
        &[
            "tail",
            "--saga",
            &id,
            "--all",
            "--no-follow",
            "--file",
            log.to_str().unwrap(),
        ],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&log).unwrap();
    let expected: Vec<&str> = text
        .lines()
        .filter(|l| serde_json::from_str::<Value>(l).unwrap()["saga_id"] == id.as_str())
        .collect();
    let got = stdout(&o);
    let got: Vec<&str> = got.lines().collect();
    assert!(got.len() >= 8, "{got:?}");
    assert_eq!(got, expected[..got.len()]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagactl_says_what_went_wrong_in_one_line_and_exits_non_zero() {
    let app = spawn_app().await;
    let id = app.start_saga("c-cli-refused").await;
    app.wait_terminal(&id).await;

    let o = run(&app, &["retry", &id]).await;
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(
        err.trim(),
        "error: 409: the saga is COMPLETED and cannot be retried"
    );

    let o = run(&app, &["show", &uuid::Uuid::new_v4().to_string()]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("error: 404: no saga with id"),
        "{}",
        stderr(&o)
    );

    let o = run(
        &app,
        &["start", "create_order", "--input", r#"{"customer_id":"c"}"#],
    )
    .await;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("error: 422: the input does not match"),
        "{}",
        stderr(&o)
    );

    let o = run(&app, &["show", "../metrics"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("is not a saga id"), "{}", stderr(&o));

    let o = tokio::task::block_in_place(|| {
        sagactl_with(&app, &["list"], &[("SAGA_URL", "http://127.0.0.1:9")], None)
    });
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.starts_with("error: cannot reach the orchestrator at http://127.0.0.1:9"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);

    // A usage mistake is clap's, exit 2.
    let o = run(&app, &["start"]).await;
    assert_eq!(o.status.code(), Some(2));

    let o = run(&app, &["completions", "bash"]).await;
    assert!(o.status.success());
    assert!(stdout(&o).contains("_sagactl()"), "{}", stdout(&o));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagactl_carries_the_token_the_api_asks_for() {
    use orchestrator::http::auth::Auth;
    const OPERATOR: &str = "operator-token-for-the-cli-test";
    let mut app = spawn_app().await;
    app.stop_orchestrator().await;
    app.config.api.auth = Auth::tokens(&[("operator".into(), OPERATOR.into())]).unwrap();
    app.start_orchestrator().await;

    let o = run(&app, &["list"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).starts_with("error: 401:"), "{}", stderr(&o));

    let order = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/order.json");
    let o = tokio::task::block_in_place(|| {
        sagactl_with(
            &app,
            &["start", "create_order", "--file", order, "--follow"],
            &[("SAGA_TOKEN", OPERATOR)],
            None,
        )
    });
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("ended COMPLETED"), "{}", stdout(&o));
    let o = tokio::task::block_in_place(|| {
        sagactl_with(&app, &["dead-letters"], &[("SAGA_TOKEN", OPERATOR)], None)
    });
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "no dead letters waiting in the database");
    app.stop().await;
}
