//! Notifications that reach people: saga outcomes become emails (here through the file
//! transport `cargo run` uses, one `.eml` per delivery) and operator alerts, with retries on
//! retry topics that hold back nothing else.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::*;

/// The `.eml` files written so far, by file name.
fn emails(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Parsed by Python's `email` package, as a mail client reads it: the headers, the plain text
/// and the HTML part.
fn parse_eml(path: &Path) -> Value {
    let script = r#"
import email, json, sys
from email import policy
m = email.message_from_binary_file(open(sys.argv[1], 'rb'), policy=policy.default)
text = m.get_body(preferencelist=('plain',))
html = m.get_body(preferencelist=('html',))
print(json.dumps({
    'from': str(m['From']), 'to': str(m['To']), 'subject': str(m['Subject']),
    'message_id': str(m['Message-ID']), 'multipart': m.get_content_type(),
    'text': text.get_content() if text else None, 'html': html.get_content() if html else None,
    'defects': [str(d) for d in m.defects],
}))
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Waits until the mail folder holds an email to `customer` with `subject`.
async fn wait_for_email(dir: &Path, customer: &str, subject: &str, within: Duration) -> Value {
    let start = Instant::now();
    loop {
        for path in emails(dir) {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.contains(&format!("To: {customer}@")) && text.contains(subject) {
                return parse_eml(&path);
            }
        }
        assert!(
            start.elapsed() < within,
            "no email to {customer} within {within:?}; there are {:?}",
            emails(dir)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The notification log's delivery lines.
fn delivery_lines(app: &TestApp) -> Vec<Value> {
    std::fs::read_to_string(app.config.data_dir.join("notifications.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| {
            l["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("delivery."))
        })
        .collect()
}

/// Every outcome of the create-order saga tells its customer once, in words that fit: a
/// confirmation for a good order, "not placed" with the reason and "payment released" for each
/// failure path, "cancelled" after the confirmation of an order then cancelled. Each email is a well-formed message (Python's parser
/// finds no defect) with text and HTML parts and the delivery's Message-ID. A `bounce-` address
/// is refused for good: no email, no retry, a dead letter naming the refusal. A `slowmail-`
/// mailbox refuses twice: the email goes out on the third try, from the retry topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_order_outcome_emails_its_customer_once() {
    let mut app = spawn_app_with(&[NO_IN_PROCESS]).await;
    // Retry delays a test can wait out: 1 s, 2 s, 3 s.
    for (role, delay) in [
        ("mail_retry_10s", 1_000),
        ("mail_retry_1m", 2_000),
        ("mail_retry_10m", 3_000),
    ] {
        app.config.topics.by_role.get_mut(role).unwrap().delay_ms = Some(delay);
    }
    app.start_all().await;
    let mail = app.config.data_dir.join("mail");

    let good = app.start_saga("c-mail").await;
    let mut failed = Vec::new();
    for customer in [
        "nocard-mail",
        "declined-mail",
        "noupdate-mail",
        "noorder-mail",
    ] {
        failed.push((customer, app.start_saga(customer).await));
    }
    let bounce = app.start_saga("bounce-mail").await;
    let slow = app.start_saga("slowmail-mail").await;
    assert_eq!(app.wait_terminal(&good).await["status"], "COMPLETED");

    let confirmed = wait_for_email(
        &mail,
        "c-mail",
        "Your order is confirmed",
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(confirmed["subject"], "Your order is confirmed");
    assert_eq!(confirmed["from"], "Campus Orders <orders@campus.example>");
    assert_eq!(confirmed["multipart"], "multipart/alternative");
    assert_eq!(confirmed["defects"], serde_json::json!([]));
    let (_, saga) = app.get_saga(&good).await;
    let order_id = saga["context"]["order_id"].as_str().unwrap().to_string();
    let text = confirmed["text"].as_str().unwrap();
    assert!(
        text.contains(&order_id) && text.contains("2 x Burger"),
        "{text}"
    );
    assert!(confirmed["html"].as_str().unwrap().contains(&order_id));
    assert!(confirmed["message_id"]
        .as_str()
        .unwrap()
        .ends_with("@saga-orchestrator>"));

    for (customer, id) in &failed {
        assert_eq!(app.wait_terminal(id).await["status"], "COMPENSATED");
        let email = wait_for_email(
            &mail,
            customer,
            "Your order could not be placed",
            Duration::from_secs(20),
        )
        .await;
        assert_eq!(
            email["subject"], "Your order could not be placed",
            "{customer}"
        );
        let text = email["text"].as_str().unwrap();
        let (_, saga) = app.get_saga(id).await;
        // The participant's words, without the step's name.
        let error = saga["error"].as_str().unwrap();
        let (_, reason) = error.split_once(" failed: ").unwrap();
        assert!(
            text.contains(&format!("your order: {reason}.")),
            "{customer}: {text} / {error}"
        );
        assert!(
            text.contains("released") && !text.contains(" failed: "),
            "{customer}: {text}"
        );
    }

    // A cancel tells the customer the order was cancelled.
    let cancelled = app.start_saga("c-cancel-mail").await;
    assert_eq!(app.wait_terminal(&cancelled).await["status"], "COMPLETED");
    let r = app
        .client
        .post(app.url(&format!("/sagas/{cancelled}/cancel")))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    app.wait_for(&cancelled, Duration::from_secs(20), |s| {
        s["status"] == "CANCELLED"
    })
    .await;
    wait_for_email(
        &mail,
        "c-cancel-mail",
        "Your order is confirmed",
        Duration::from_secs(20),
    )
    .await;
    let email = wait_for_email(
        &mail,
        "c-cancel-mail",
        "Your order was cancelled",
        Duration::from_secs(20),
    )
    .await;
    assert!(email["text"]
        .as_str()
        .unwrap()
        .contains("cancelled, as asked"));

    // The slow mailbox takes the email on the third try, after the 1 s and 2 s retries.
    app.wait_terminal(&slow).await;
    let email = wait_for_email(
        &mail,
        "slowmail-mail",
        "Your order is confirmed",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(email["to"], "slowmail-mail@customers.example");
    app.wait_terminal(&bounce).await;

    // Each delivery once, however the outcome consumer and the retries went.
    let lines = delivery_lines(&app);
    let attempts = |customer: &str, what: &str| {
        lines
            .iter()
            .filter(|l| {
                l["to"]
                    .as_str()
                    .is_some_and(|t| t.starts_with(&format!("{customer}@")))
                    && l["type"] == what
            })
            .count()
    };
    assert_eq!(
        attempts("slowmail-mail", "delivery.retrying"),
        2,
        "{lines:#?}"
    );
    assert_eq!(attempts("slowmail-mail", "delivery.sent"), 1);
    let db = app.db("notification").await;
    let dead = count_dead_letters_of(&app, &bounce).await;
    assert_eq!(
        attempts("bounce-mail", "delivery.dead_lettered"),
        1,
        "{lines:#?}"
    );
    assert_eq!(
        attempts("bounce-mail", "delivery.retrying"),
        0,
        "a refusal for good is not retried"
    );
    assert!(dead.contains("550"), "the dead letter says why: {dead}");
    let recorded = scalar(
        &db,
        "SELECT status FROM deliveries WHERE saga_id = $1",
        &bounce,
    )
    .await;
    assert_eq!(recorded.as_deref(), Some("dead_lettered"));
    let sent = count(
        &db,
        "SELECT COUNT(*) FROM deliveries WHERE status = $1",
        "sent",
    )
    .await;
    assert_eq!(
        sent, 8,
        "one email per outcome: good, 4 failures, the cancelled order's two, slowmail"
    );
    assert_eq!(emails(&mail).len(), 8, "{:?}", emails(&mail));

    // A job that comes again (a redelivery, a crash before its offset was committed) finds its
    // delivery recorded and sends nothing.
    let delivery_id = scalar(
        &db,
        "SELECT delivery_id FROM deliveries WHERE saga_id = $1",
        &good,
    )
    .await
    .unwrap();
    let again = serde_json::json!({
        "message_id": uuid::Uuid::new_v4(),
        "type": "delivery.mail",
        "correlation_id": good,
        "timestamp": "2026-12-06T00:00:00Z",
        "payload": {
            "delivery_id": delivery_id, "rule": "order_confirmed", "channel": "mail",
            "to": "c-mail@customers.example", "attempt": 1,
            "content": {"subject": "Your order is confirmed", "text": "again", "html": null},
        },
    });
    let producer: rdkafka::producer::FutureProducer = app.kafka.client().create().unwrap();
    let topic = app.config.topics.role("mail").unwrap().name.clone();
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&topic)
                .key(&good)
                .payload(&again.to_string()),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let start = Instant::now();
    while !delivery_lines(&app)
        .iter()
        .any(|l| l["type"] == "delivery.duplicate" && l["delivery_id"] == delivery_id.as_str())
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the job read again was not seen"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(emails(&mail).len(), 8, "nothing sent twice");

    // What /metrics says of it.
    let metrics = app.metrics_text().await;
    let deliveries = |outcome: &str| {
        crate::observability::sample(
            &metrics,
            "notification_deliveries_total",
            &[("channel", "mail"), ("outcome", outcome)],
        )
    };
    assert_eq!(deliveries("sent"), Some(8.0), "{metrics}");
    assert_eq!(deliveries("retried"), Some(2.0));
    assert_eq!(deliveries("dead_lettered"), Some(1.0));
    assert_eq!(deliveries("duplicate"), Some(1.0));
    assert!(
        crate::observability::sample(
            &metrics,
            "notification_retry_oldest_due_age_seconds",
            &[("channel", "mail")]
        )
        .is_some(),
        "{metrics}"
    );
    app.stop().await;
}

/// The dead-letter error of the delivery of saga `id`, as the dead-letter topic's reader (the
/// notification log) recorded it.
async fn count_dead_letters_of(app: &TestApp, id: &str) -> String {
    let start = Instant::now();
    loop {
        let log = std::fs::read_to_string(app.config.data_dir.join("notifications.log"))
            .unwrap_or_default();
        if let Some(line) = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["saga_id"] == id && l["dead_letter"].is_object())
        {
            return line["dead_letter"]["error"]
                .as_str()
                .unwrap_or_default()
                .to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no dead letter for {id}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the test webhook receiver saw: each request's headers and body, and how many it was
/// told to refuse first.
#[derive(Default)]
struct Hook {
    refuse: std::sync::atomic::AtomicUsize,
    seen: std::sync::Mutex<Vec<(axum::http::HeaderMap, String)>>,
}

/// A FAILED saga alerts the operators through the webhook, apart from customer mail: the
/// receiver refuses the first request (503), the alert comes again from the retry topic, and the
/// one it accepts carries an HMAC-SHA256 signature over the timestamp and the body that the
/// secret verifies (as Python's `hmac` computes it). Meanwhile, with the alert waiting for its
/// retry, a customer's confirmation goes out at once: an alert's trouble holds up no email.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_saga_alerts_the_operators_by_a_signed_webhook_retried_apart_from_mail() {
    use axum::routing::post;
    use std::sync::atomic::Ordering;
    let hook = std::sync::Arc::new(Hook::default());
    hook.refuse.store(1, Ordering::SeqCst);
    let state = hook.clone();
    let receiver = axum::Router::new().route(
        "/hook",
        post(move |headers: axum::http::HeaderMap, body: String| {
            let state = state.clone();
            async move {
                state.seen.lock().unwrap().push((headers, body));
                if state.refuse.load(Ordering::SeqCst) > 0 {
                    state.refuse.fetch_sub(1, Ordering::SeqCst);
                    axum::http::StatusCode::SERVICE_UNAVAILABLE
                } else {
                    axum::http::StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, receiver).await });

    let secret = "whsec-test-secret-0123456789";
    let mut app = spawn_app_custom(&[NO_IN_PROCESS], fast_policy(), Default::default()).await;
    app.config.chaos = services::chaos::Chaos {
        failure_rate: 1.0,
        commands: vec!["cancel_order".into()],
        ..Default::default()
    };
    app.config.delivery.alert_webhook_url = Some(format!("http://{hook_addr}/hook"));
    app.config.delivery.alert_webhook_secret = Some(secret.into());
    app.config
        .topics
        .by_role
        .get_mut("alerts_retry_10s")
        .unwrap()
        .delay_ms = Some(3_000);
    app.start_all().await;

    let failed = app.start_saga("nocard-alert").await;
    assert_eq!(app.wait_terminal(&failed).await["status"], "FAILED");
    // The first request comes and is refused; the alert now waits 3 s on its retry topic.
    let start = Instant::now();
    while hook.seen.lock().unwrap().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(20), "no alert came");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused_at = Instant::now();
    let good = app.start_saga("c-while-alert-waits").await;
    assert_eq!(app.wait_terminal(&good).await["status"], "COMPLETED");
    let mail = app.config.data_dir.join("mail");
    wait_for_email(
        &mail,
        "c-while-alert-waits",
        "Your order is confirmed",
        Duration::from_secs(20),
    )
    .await;
    let mail_took = refused_at.elapsed();
    assert_eq!(
        hook.seen.lock().unwrap().len(),
        1,
        "the email went out before the alert's retry"
    );

    let start = Instant::now();
    while hook.seen.lock().unwrap().len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the alert was not retried"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let retried_after = refused_at.elapsed();
    eprintln!("email while the alert waited: {mail_took:?}; alert retried after {retried_after:?}");
    assert!(
        retried_after >= Duration::from_millis(2_500),
        "the retry waited its delay: {retried_after:?}"
    );
    let (headers, body) = hook.seen.lock().unwrap()[1].clone();
    let alert: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(alert["saga_id"], failed.as_str());
    assert_eq!(alert["status"], "FAILED");
    assert!(
        alert["reason"]
            .as_str()
            .unwrap()
            .contains("cancel_order failed"),
        "{alert}"
    );
    assert!(alert["subject"]
        .as_str()
        .unwrap()
        .starts_with("[saga FAILED] create_order"));

    // The signature, checked as a receiver in another language would.
    let signature = headers["x-saga-signature"].to_str().unwrap();
    let (t, v1) = signature
        .strip_prefix("t=")
        .and_then(|s| s.split_once(",v1="))
        .unwrap_or_else(|| panic!("{signature}"));
    let check = std::process::Command::new("python3")
        .args([
            "-c",
            "import hmac,hashlib,sys; print(hmac.new(sys.argv[1].encode(), sys.argv[2].encode() + b'.' + sys.stdin.buffer.read(), hashlib.sha256).hexdigest())",
            secret,
            t,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    check
        .stdin
        .as_ref()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), v1);
    let age = platform::time::now_ms() / 1000 - t.parse::<i64>().unwrap();
    assert!((0..60).contains(&age), "a fresh timestamp: {age} s");

    // Once: no third request, and the delivery is recorded sent after 2 attempts.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(hook.seen.lock().unwrap().len(), 2);
    let db = app.db("notification").await;
    let row = scalar(
        &db,
        "SELECT status FROM deliveries WHERE saga_id = $1 AND channel = 'alerts'",
        &failed,
    )
    .await;
    assert_eq!(row.as_deref(), Some("sent"));
    app.stop().await;
}

/// The test SMTP server (tests/smtp/server.py, on aiosmtpd) as a process.
struct SmtpServer {
    child: std::process::Child,
    port: u16,
    outbox: PathBuf,
}

impl SmtpServer {
    /// The Python that has aiosmtpd: `SMTP_TEST_PYTHON` (what .ci/run installs), else
    /// `python3`; `None` when neither has it, unless `REQUIRE_SMTP_SERVER` makes that a failure.
    fn python() -> Option<String> {
        let python = std::env::var("SMTP_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let has = std::process::Command::new(&python)
            .args(["-c", "import aiosmtpd"])
            .output()
            .is_ok_and(|o| o.status.success());
        if has {
            return Some(python);
        }
        assert!(
            std::env::var("REQUIRE_SMTP_SERVER").is_err(),
            "{python} has no aiosmtpd (pip install aiosmtpd)"
        );
        eprintln!("skipped: {python} has no aiosmtpd (pip install aiosmtpd; .ci/run does)");
        None
    }

    /// Starts it on `port` (0: a free one), writing what it accepts to `outbox`.
    fn start(python: &str, port: u16, outbox: &Path) -> Self {
        Self::start_with(python, port, outbox, &[])
    }

    /// [`Self::start`] with more of the server's arguments (`--delay-ms`).
    fn start_with(python: &str, port: u16, outbox: &Path, args: &[&str]) -> Self {
        use std::io::BufRead;
        let port = if port == 0 {
            crate::procs::free_addr().port()
        } else {
            port
        };
        let mut child = std::process::Command::new(python)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp/server.py"))
            .arg(port.to_string())
            .arg(outbox)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("the SMTP server starts");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the SMTP server did not start");
        SmtpServer {
            child,
            port,
            outbox: outbox.to_path_buf(),
        }
    }

    /// Goes away at once, as a crashed server does.
    fn kill(mut self) -> (u16, PathBuf) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        (self.port, self.outbox.clone())
    }

    /// The messages it accepted, as files.
    fn received(outbox: &Path) -> Vec<String> {
        emails(outbox)
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `n` create-order sagas of customers `{tag}-{i}` at once; their ids.
async fn start_orders(app: &TestApp, tag: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(10) {
        let starts = chunk.iter().map(|i| {
            let customer = format!("{tag}-{i}");
            async move { app.start_saga(&customer).await }
        });
        ids.extend(futures_util::future::join_all(starts).await);
    }
    ids
}

/// Waits until the accepted messages number `n`.
async fn wait_received(outbox: &Path, n: usize, within: Duration) {
    let start = Instant::now();
    while SmtpServer::received(outbox).len() < n {
        assert!(
            start.elapsed() < within,
            "{} of {n} emails within {within:?}",
            SmtpServer::received(outbox).len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The proof of "non-blocking", against a real SMTP server. With the server up, orders and
/// their confirmations flow. With it gone (killed), the sagas still end and the notification
/// log still records them, at the speed they had, while every email waits on the retry topics:
/// nothing is accepted meanwhile. When the server is back, the waiting emails go out, each
/// exactly once (one message per customer, as many sent in the deliveries table). The rates up and
/// down are printed for the closing note; they are measured, not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mail_server_that_goes_away_holds_up_no_saga_and_its_emails_go_out_once_it_is_back() {
    let Some(python) = SmtpServer::python() else {
        return;
    };
    let outbox = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start(&python, 0, outbox.path());
    let mut app = spawn_app_with(&[NO_IN_PROCESS]).await;
    app.config.delivery.smtp_url = Some(format!("smtp://127.0.0.1:{}", smtp.port));
    for (role, delay) in [
        ("mail_retry_10s", 2_000),
        ("mail_retry_1m", 4_000),
        ("mail_retry_10m", 8_000),
    ] {
        app.config.topics.by_role.get_mut(role).unwrap().delay_ms = Some(delay);
    }
    app.start_all().await;
    const N: usize = 40;
    // Warm: every consumer has joined and every connection is open before anything is timed.
    const W: usize = 10;
    for id in start_orders(&app, "c-warm", W).await {
        app.wait_terminal(&id).await;
    }
    wait_received(outbox.path(), W, Duration::from_secs(30)).await;

    let t = Instant::now();
    let up = start_orders(&app, "c-up", N).await;
    for id in &up {
        assert_eq!(app.wait_terminal(id).await["status"], "COMPLETED");
    }
    let sagas_up = t.elapsed();
    wait_received(outbox.path(), W + N, Duration::from_secs(30)).await;
    let emails_up = t.elapsed();

    let (port, _) = smtp.kill();
    let t = Instant::now();
    let down = start_orders(&app, "c-down", N).await;
    for id in &down {
        assert_eq!(app.wait_terminal(id).await["status"], "COMPLETED");
    }
    let sagas_down = t.elapsed();
    // The log has every one of them too.
    let log = app.config.data_dir.join("notifications.log");
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let logged = down
            .iter()
            .filter(|id| {
                text.contains(&format!("\"type\":\"saga.completed\",\"saga_id\":\"{id}\""))
            })
            .count();
        if logged == N {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{logged} of {N} logged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logged_down = t.elapsed();
    assert_eq!(
        SmtpServer::received(outbox.path()).len(),
        W + N,
        "nothing is accepted while the server is away"
    );
    // Each email's first try fails and it moves to a retry topic.
    let start = Instant::now();
    let retrying = loop {
        let lines = delivery_lines(&app);
        let retrying = lines
            .iter()
            .filter(|l| l["type"] == "delivery.retrying")
            .count();
        if retrying >= N {
            break retrying;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{retrying} of {N} emails moved to a retry topic: {:#?}",
            lines.last()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        SmtpServer::received(outbox.path()).len(),
        W + N,
        "nothing is accepted while the server is away"
    );

    let back = Instant::now();
    let _smtp = SmtpServer::start(&python, port, outbox.path());
    wait_received(outbox.path(), W + 2 * N, Duration::from_secs(40)).await;
    let caught_up = back.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let received = SmtpServer::received(outbox.path());
    assert_eq!(received.len(), W + 2 * N, "no email twice");
    for i in 0..N {
        let to = format!("To: c-down-{i}@customers.example");
        assert_eq!(
            received.iter().filter(|m| m.contains(&to)).count(),
            1,
            "{to}"
        );
    }
    let ids: std::collections::HashSet<&str> = received
        .iter()
        .filter_map(|m| m.lines().find(|l| l.starts_with("Message-ID:")))
        .collect();
    assert_eq!(ids.len(), W + 2 * N);
    let db = app.db("notification").await;
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM deliveries WHERE status = $1",
            "sent"
        )
        .await,
        (W + 2 * N) as i64
    );
    let rate = |d: Duration| N as f64 / d.as_secs_f64();
    eprintln!(
        "mail server up: {N} sagas in {sagas_up:?} ({:.0}/s), their emails by {emails_up:?}; \
         down: {N} sagas in {sagas_down:?} ({:.0}/s), logged by {logged_down:?} ({:.0}/s), \
         {retrying} retries; back: the {N} waiting emails out {caught_up:?} after",
        rate(sagas_up),
        rate(sagas_down),
        rate(logged_down),
    );
    app.stop().await;
}

/// Shutdown in the middle of a send (a slow server holds the email's DATA for 1.5 s): the
/// service finishes that delivery, records it and stores its offset before it stops, so the
/// service started again sends nothing more. One email, recorded sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_during_a_send_finishes_it_and_the_next_start_sends_nothing_more() {
    let Some(python) = SmtpServer::python() else {
        return;
    };
    let outbox = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start_with(&python, 0, outbox.path(), &["--delay-ms", "1500"]);
    let mut app = spawn_app_with(&[NO_IN_PROCESS]).await;
    app.config.delivery.smtp_url = Some(format!("smtp://127.0.0.1:{}", smtp.port));
    app.start_all().await;
    let id = app.start_saga("c-shutdown").await;
    assert_eq!(app.wait_terminal(&id).await["status"], "COMPLETED");
    // The job reaches the mail consumer, whose send now waits on the slow DATA.
    let db = app.db("notification").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        SmtpServer::received(outbox.path()).is_empty(),
        "the send is still in progress"
    );

    let stopping = Instant::now();
    app.services.remove("notification").unwrap().stop().await;
    let stopped_in = stopping.elapsed();
    assert_eq!(
        SmtpServer::received(outbox.path()).len(),
        1,
        "the send in progress finished"
    );
    let status = scalar(&db, "SELECT status FROM deliveries WHERE saga_id = $1", &id).await;
    assert_eq!(status.as_deref(), Some("sent"));

    app.start_service("notification").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        SmtpServer::received(outbox.path()).len(),
        1,
        "nothing sent again"
    );
    eprintln!("stopped during a send in {stopped_in:?}");
    app.stop().await;
}

/// A CA and a certificate for 127.0.0.1 it signed, made with openssl in `dir`: the paths of
/// the CA, the server's certificate and its key.
fn test_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let script = r#"set -e
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem \
  -days 2 -subj /CN=saga-test-ca -addext basicConstraints=critical,CA:TRUE \
  -addext keyUsage=critical,keyCertSign 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key -out server.csr \
  -subj /CN=127.0.0.1 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' > ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile ext 2>/dev/null
"#;
    let ok = std::process::Command::new("sh")
        .args(["-c", script])
        .current_dir(dir)
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl made no certificates");
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// SMTP as deployments have it: STARTTLS (port 587 style) and implicit TLS (465 style), each
/// with AUTH required before MAIL, and the server's certificate checked against a private CA
/// (SMTP_CA_FILE). The server refuses anything before TLS and AUTH, so an email it accepts went
/// through both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emails_go_out_over_starttls_and_implicit_tls_with_auth() {
    let Some(python) = SmtpServer::python() else {
        return;
    };
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_certificates(certs.path());
    for implicit in [false, true] {
        let outbox = tempfile::tempdir().unwrap();
        let mut args = vec![
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--user",
            "saga",
            "--password",
            "s3cret p@ss",
        ];
        if implicit {
            args.push("--implicit-tls");
        }
        let smtp = SmtpServer::start_with(&python, 0, outbox.path(), &args);
        let url = if implicit {
            format!("smtps://saga:s3cret%20p%40ss@127.0.0.1:{}", smtp.port)
        } else {
            format!(
                "smtp://saga:s3cret%20p%40ss@127.0.0.1:{}?tls=required",
                smtp.port
            )
        };
        let mut app = spawn_app_with(&[NO_IN_PROCESS]).await;
        app.config.delivery.smtp_url = Some(url);
        app.config.delivery.smtp_ca_file = Some(ca.clone());
        app.start_all().await;
        let id = app.start_saga("c-tls").await;
        assert_eq!(app.wait_terminal(&id).await["status"], "COMPLETED");
        wait_received(outbox.path(), 1, Duration::from_secs(20)).await;
        let received = SmtpServer::received(outbox.path());
        assert!(
            received[0].contains("To: c-tls@customers.example"),
            "implicit {implicit}"
        );
        let db = app.db("notification").await;
        let status = scalar(&db, "SELECT status FROM deliveries WHERE saga_id = $1", &id).await;
        assert_eq!(status.as_deref(), Some("sent"), "implicit {implicit}");
        app.stop().await;
    }
}
