//! The live event streams (`GET /sagas/{id}/events`, `GET /events`): the state first, then every
//! committed change in order; nothing missed across a reconnect; a change committed by one
//! instance on another instance's stream within a second; the cap, the heartbeats, and a client
//! that stops reading dropped.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use sagactl::client::{Client, StreamEvent};

use crate::helpers::*;

/// Collects events of `path` until `done` says so, the stream ends, or `within` passes.
async fn collect(
    client: &Client,
    path: &str,
    last_event_id: Option<&str>,
    within: Duration,
    done: impl Fn(&[StreamEvent]) -> bool,
) -> (Vec<StreamEvent>, bool) {
    let mut events = Vec::new();
    let stream = client
        .events(path, last_event_id)
        .await
        .expect("stream opens");
    let mut stream = Box::pin(stream);
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(e))) => {
                events.push(e);
                if done(&events) {
                    return (events, false);
                }
            }
            Ok(Some(Err(e))) => panic!("stream broke: {e}"),
            Ok(None) => return (events, true),
            Err(_) => panic!("no end in {within:?}; got {events:#?}"),
        }
    }
}

fn kinds(events: &[StreamEvent]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.event == "change")
        .flat_map(|e| e.data["changes"].as_array().cloned().unwrap_or_default())
        .map(|c| match c["step"].as_str() {
            Some(step) => format!("{} {step}", c["kind"].as_str().unwrap()),
            None => match c["to"].as_str() {
                Some(to) => format!("status {to}"),
                None => c["kind"].as_str().unwrap().to_string(),
            },
        })
        .collect()
}

/// Every change of `saga_id` stored (or of every saga, `None`), in commit order.
async fn stored_changes(app: &TestApp, saga_id: Option<&str>) -> Vec<String> {
    let store = app.orchestrator_store().await;
    let filter = orchestrator::store::ChangeFilter {
        saga_id: saga_id.map(|s| s.parse().unwrap()),
        ..Default::default()
    };
    let rows = store
        .changes_after(Default::default(), None, &filter, 100_000)
        .await
        .unwrap();
    store.db().close().await;
    rows.iter().map(|r| r.cursor.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_stream_sends_its_state_then_every_change_in_order_and_ends_with_it() {
    let (mut app, id) = waiting_on_the_user_service("c-live").await;
    let client = Client::new(&app.url(""), None).unwrap();
    let path = format!("/sagas/{id}/events");
    let stream = client.events(&path, None).await.unwrap();
    let mut stream = Box::pin(stream);

    // The state as it is now comes first, with an id to resume from.
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.event, "saga");
    assert_eq!(first.data["status"], "STARTED");
    assert_eq!(first.data["current_step"], "get_payment_info");
    assert!(first.id.is_some(), "{first:?}");

    // The user service is away: the command is re-sent, live.
    let resent = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a re-send arrives")
        .unwrap()
        .unwrap();
    assert_eq!(resent.event, "change", "{resent:?}");
    assert!(
        kinds(std::slice::from_ref(&resent))
            .iter()
            .any(|k| k == "resent get_payment_info"),
        "{resent:?}"
    );

    app.start_service("users").await;
    let mut events = vec![first, resent];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Some(e) = tokio::time::timeout_at(deadline, stream.next())
        .await
        .expect("the stream ends with the saga")
    {
        events.push(e.unwrap());
    }

    // Every change after the first state, in commit order, each followed by the state it left.
    // (A client's last event id stays with it across the events that carry none.)
    let ids: Vec<&str> = events
        .iter()
        .enumerate()
        .filter(|(i, e)| *i == 0 || e.event == "change")
        .filter_map(|(_, e)| e.id.as_deref())
        .collect();
    let stored = stored_changes(&app, Some(&id)).await;
    let after_first: Vec<&str> = stored
        .iter()
        .map(String::as_str)
        .skip_while(|s| *s != ids[1])
        .collect();
    assert_eq!(&ids[1..], &after_first[..], "every stored change, in order");
    let last = events.last().unwrap();
    assert_eq!(last.event, "saga");
    assert_eq!(last.data["status"], "COMPLETED");
    let seen = kinds(&events);
    let tail: Vec<&str> = seen
        .iter()
        .map(String::as_str)
        .skip_while(|k| *k != "replied get_payment_info")
        .collect();
    assert_eq!(
        tail,
        [
            "replied get_payment_info",
            "sent authorize_payment",
            "replied authorize_payment",
            "sent update_order_status",
            "replied update_order_status",
            "status COMPLETED"
        ],
        "{seen:?}"
    );
    for pair in events.windows(2) {
        if pair[0].event == "change" {
            assert_eq!(pair[1].event, "saga", "a change is followed by its state");
            assert_eq!(pair[1].data["saga_id"], id.as_str());
        }
    }

    // A reconnect after the end: 204, so an EventSource stops trying.
    let r = app
        .client
        .get(app.url(&path))
        .header("last-event-id", *ids.last().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // Without an id, the state of an ended saga, then the end.
    let (again, ended) = collect(&client, &path, None, Duration::from_secs(5), |_| false).await;
    assert!(ended);
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].data["status"], "COMPLETED");

    // Refusals in words.
    let (status, body) = app.get_json("/sagas/not-a-uuid/events").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = app
        .get_json(&format!("/sagas/{}/events", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(status, 404, "{body}");
    let r = app
        .client
        .get(app.url("/events"))
        .header("last-event-id", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("Last-Event-ID"),
        "{body}"
    );
    let (status, body) = app.get_json("/events?status=DONE").await;
    assert_eq!(status, 400, "{body}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_with_the_last_event_id_misses_no_change() {
    let app = spawn_app().await;
    let client = Client::new(&app.url(""), None).unwrap();
    // Opened before anything happens: it sees every change from the first.
    let stream = client.events("/events", None).await.unwrap();
    let mut stream = Box::pin(stream);
    let mut sagas = Vec::new();
    for i in 0..4 {
        sagas.push(app.start_saga(&format!("c-resume-{i}")).await);
    }
    let mut first = Vec::new();
    while first.len() < 6 {
        let e = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("changes arrive")
            .unwrap()
            .unwrap();
        first.push(e);
    }
    drop(stream);
    let last = first.last().unwrap().id.clone().unwrap();

    // Away: more sagas start and end.
    for i in 0..4 {
        sagas.push(app.start_saga(&format!("noupdate-resume-{i}")).await);
    }
    for id in &sagas {
        app.wait_terminal(id).await;
    }
    let stored = stored_changes(&app, None).await;

    let (rest, _) = collect(
        &client,
        "/events",
        Some(&last),
        Duration::from_secs(20),
        |got| got.len() + 6 >= stored.len(),
    )
    .await;
    let ids: Vec<String> = first
        .iter()
        .chain(rest.iter())
        .map(|e| e.id.clone().unwrap())
        .collect();
    assert_eq!(ids, stored, "every change once, in commit order");
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len());

    // A filtered stream resumes with the same ids, only those it asks for.
    let (ended, _) = collect(
        &client,
        "/events?type=create_order&status=compensated",
        Some("0t0"),
        Duration::from_secs(10),
        |got| got.len() >= 4,
    )
    .await;
    assert!(ended.iter().all(|e| e.data["status"] == "COMPENSATED"));
    let ended_ids: HashSet<&str> = ended
        .iter()
        .map(|e| e.data["saga_id"].as_str().unwrap())
        .collect();
    let compensated: HashSet<&str> = sagas[4..].iter().map(String::as_str).collect();
    assert_eq!(ended_ids, compensated);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_committed_on_one_instance_reaches_a_stream_on_another_within_a_second() {
    let app = crate::procs::spawn_processes_on(Some(required_postgres()), &[], 2).await;
    let client = Client::new(&app.url_of("orchestrator-2", ""), None).unwrap();
    let stream = client.events("/events", None).await.unwrap();
    let mut stream = Box::pin(stream);
    let mut worst = 0;
    let mut seen = 0;
    for i in 0..5 {
        // Started (committed) by the first instance.
        let r = app
            .client
            .post(app.url_of("orchestrator", "/orders"))
            .json(&order_body(&format!("c-across-{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let id = r.json::<Value>().await.unwrap()["saga_id"]
            .as_str()
            .unwrap()
            .to_string();
        loop {
            // The saga may take its time (a consumer group settling); each change, once made,
            // may not.
            let e = tokio::time::timeout(Duration::from_secs(30), stream.next())
                .await
                .expect("the saga moves on")
                .unwrap()
                .unwrap();
            if e.data["saga_id"] != id.as_str() {
                continue;
            }
            let committed = sagactl::render::millis(e.data["at"].as_str().unwrap()).unwrap();
            let latency = platform::time::now_ms() - committed;
            worst = worst.max(latency);
            seen += 1;
            assert!(
                latency < 1_000,
                "a change reached the other instance {latency} ms after it was made"
            );
            if e.data["status"] == "COMPLETED" {
                break;
            }
        }
    }
    eprintln!("{seen} changes across instances; the slowest took {worst} ms");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_capped_and_a_quiet_one_gets_heartbeats() {
    let mut app = spawn_app().await;
    app.stop_orchestrator().await;
    app.config.api.streams.max_streams = 2;
    app.config.api.streams.heartbeat = Duration::from_millis(200);
    app.start_orchestrator().await;

    let open = |path: &'static str| app.client.get(app.url(path)).send();
    let mut a = open("/events").await.unwrap();
    let b = open("/events?type=refund_order").await.unwrap();
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    let third = open("/events").await.unwrap();
    assert_eq!(third.status(), 503);
    let body: Value = third.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("too many event streams"),
        "{body}"
    );
    let metrics = app.metrics_text().await;
    assert!(
        metrics.lines().any(|l| l == "saga_event_streams_open 2"),
        "{metrics}"
    );

    // Quiet: heartbeats only.
    let started = Instant::now();
    let mut text = String::new();
    while started.elapsed() < Duration::from_millis(900) {
        if let Ok(Ok(Some(chunk))) =
            tokio::time::timeout(Duration::from_millis(300), a.chunk()).await
        {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
    assert!(
        text.matches(": heartbeat\n").count() >= 2,
        "no heartbeats in {text:?}"
    );

    // A stream that closes gives its place back.
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = open("/events").await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed stream's place never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(a);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_not_buffered() {
    let mut app = spawn_app().await;
    app.stop_orchestrator().await;
    app.config.api.streams.buffer = 1;
    app.start_orchestrator().await;

    // A client with a small receive window that sends its request and reads nothing.
    let connected = Instant::now();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut conn = socket.connect(app.addr).await.unwrap();
    conn.write_all(b"GET /events HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Far more changes than the kernel's socket buffers hold (a few MB on loopback), written
    // to the change log the way every writer records them: the feed broadcasts them, and the
    // stream cannot send them.
    let db = app.db("orchestrator").await;
    let pad = "x".repeat(4_000);
    let what = format!(r#"[{{"kind":"started","pad":"{pad}"}}]"#);
    let rows = 3_000;
    for _ in 0..rows / 100 {
        let mut sql = String::from(
            "INSERT INTO saga_changes (saga_id, saga_type, status, version, at, what) VALUES ",
        );
        let values: Vec<String> = (0..100)
            .map(|_| {
                format!(
                    "('{}', 'create_order', 'STARTED', 1, {}, '{what}')",
                    uuid::Uuid::new_v4(),
                    platform::time::now_ms()
                )
            })
            .collect();
        sql.push_str(&values.join(", "));
        sqlx::query(&sql).execute(&db).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1_000)).await;

    // Reading now: what was sent, then the end — the server closed the stream. Read within
    // the server's write timeout (10 s), the stream finds it fell behind and says so; later,
    // the write timeout has closed the connection already.
    let behind = connected.elapsed() < Duration::from_secs(8);
    let mut received = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server kept the stream of a client that did not read"),
        }
    }
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..text.len().min(300)]
    );
    let changes = text.matches("event: change").count();
    assert!(
        changes < rows,
        "{changes} changes were delivered: the client was not dropped"
    );
    assert!(
        !behind || text.contains("event: dropped"),
        "{changes} changes, no notice"
    );
    let metrics = app.metrics_text().await;
    assert!(
        !behind
            || metrics.lines().any(|l| {
                l.starts_with("saga_event_streams_dropped_total ") && !l.ends_with(" 0")
            }),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("event_streams"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(metrics.lines().any(|l| l == "saga_event_streams_open 0"));
    app.stop().await;
}
