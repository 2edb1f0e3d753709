//! The admin API over a real application: an embedded broker in a temporary directory, real
//! listeners, the router served on a TCP port with the peer's address, driven over HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mq_starter::core::MessageView;
use mq_starter::prelude::*;
use mq_starter::Running;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::start;

const WAIT: Duration = Duration::from_secs(15);

/// What the listeners saw.
#[derive(Clone, Default)]
struct Runs {
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
}

#[mq_listener(
    topic = "t-admin-ok",
    group = "g-admin-ok",
    concurrency = 2,
    enabled = "${test.ok:false}"
)]
async fn admin_ok(State(runs): State<Runs>) -> Result<(), String> {
    runs.ok.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[mq_listener(
    topic = "t-admin-dlq",
    group = "g-admin-dlq",
    max_reconsume_times = 0,
    enabled = "${test.dlq:false}"
)]
async fn admin_fails(State(runs): State<Runs>, msg: MessageView) -> Result<(), String> {
    runs.failed.fetch_add(1, Ordering::SeqCst);
    Err(format!("always fails ({})", msg.key().unwrap_or("-")))
}

/// Holds each delivery until the test lets one through.
#[derive(Clone)]
struct Gate(Arc<tokio::sync::Semaphore>);

#[mq_listener(
    topic = "t-admin-slow",
    group = "g-admin-slow",
    concurrency = 2,
    enabled = "${test.slow:false}"
)]
async fn admin_slow(State(gate): State<Gate>, State(runs): State<Runs>) -> Result<(), String> {
    gate.0.acquire().await.map_err(|e| e.to_string())?.forget();
    runs.ok.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

/// Never enabled: it makes the application open its idempotency store, which health shows.
#[mq_listener(
    topic = "t-admin-idem",
    group = "g-admin-idem",
    idempotent = key,
    enabled = "${test.idem:false}"
)]
async fn admin_idem() -> Result<(), String> {
    Ok(())
}

/// The router of `running` served on 127.0.0.1 (or `ip`), with the peer's address unless
/// `connect_info` is false. Returns the base URL.
async fn serve_on(running: &Running, ip: IpAddr, connect_info: bool) -> String {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = running.admin_router();
    if connect_info {
        tokio::spawn(async move {
            axum::serve(
                listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
        });
    } else {
        tokio::spawn(async move { axum::serve(listener, router).await });
    }
    format!("http://{addr}")
}

async fn serve(running: &Running) -> String {
    serve_on(running, IpAddr::from([127, 0, 0, 1]), true).await
}

/// A client that does not follow redirects.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Calls `path` with an optional JSON body and bearer token; returns status and JSON body.
async fn call(
    base: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = http().request(method, format!("{base}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text:?}"));
    (status, value)
}

async fn get(base: &str, path: &str) -> Value {
    let (status, body) = call(base, Method::GET, path, None, None).await;
    assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
    body
}

async fn post(base: &str, path: &str, body: Value) -> (StatusCode, Value) {
    call(base, Method::POST, path, Some(body), None).await
}

/// Asserts an error answer: its status and code.
fn assert_error(got: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error"]["code"], code, "{}", got.1);
    assert!(got.1["error"]["message"].is_string(), "{}", got.1);
}

/// Waits until `check` of a fresh `GET path` holds; returns that body.
async fn eventually_get(
    base: &str,
    path: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let body = get(base, path).await;
        if check(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last {path}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn group_row<'a>(groups: &'a Value, group: &str) -> Option<&'a Value> {
    groups.as_array()?.iter().find(|g| g["group"] == group)
}

// --- auth ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_only_loopback_clients_are_served() {
    let app = start(&[], "", |a| a.with_state(Runs::default())).await;
    let base = serve(&app.running).await;
    assert_eq!(get(&base, "/mq/api/health").await["status"], "UP");

    // Without the peer's address nobody can tell loopback: refused.
    let blind = serve_on(&app.running, IpAddr::from([127, 0, 0, 1]), false).await;
    let got = call(&blind, Method::GET, "/mq/api/health", None, None).await;
    assert_error(&got, StatusCode::UNAUTHORIZED, "unauthorized");

    // A peer on another interface, where the machine has one.
    match outward_ip() {
        Some(ip) => {
            let outside = serve_on(&app.running, ip, true).await;
            let got = call(&outside, Method::GET, "/mq/api/groups", None, None).await;
            assert_error(&got, StatusCode::UNAUTHORIZED, "unauthorized");
        }
        None => eprintln!(
            "\n*** SKIPPED the non-loopback part: this machine has no other interface ***\n"
        ),
    }
    app.running.shutdown().await.unwrap();
}

/// The address of an interface other than loopback, if there is one (no packet is sent:
/// connecting a UDP socket only picks the route).
fn outward_ip() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_token_is_required_and_the_console_is_not_protected() {
    let app = start(&[], "mq:\n  admin:\n    token: s3cret\n", |a| {
        a.with_state(Runs::default())
    })
    .await;
    let base = serve(&app.running).await;
    for path in [
        "/mq/api/health",
        "/mq/api/dead-letters",
        "/mq/api/openapi.json",
        "/mq/api/nope",
    ] {
        let missing = call(&base, Method::GET, path, None, None).await;
        assert_error(&missing, StatusCode::UNAUTHORIZED, "unauthorized");
        let wrong = call(&base, Method::GET, path, None, Some("s3cre")).await;
        assert_error(&wrong, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let (status, body) = call(&base, Method::GET, "/mq/api/health", None, Some("s3cret")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The scheme without the word Bearer is no token; the answer names the scheme.
    let resp = http()
        .get(format!("{base}/mq/api/health"))
        .header("authorization", "s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let got = call(&base, Method::GET, "/mq/api/nope", None, Some("s3cret")).await;
    assert_error(&got, StatusCode::NOT_FOUND, "not_found");

    // The console's files hold no data: served to anyone, never cached stale.
    for (path, kind) in [
        ("/mq/", "text/html"),
        ("/mq/console.js", "text/javascript"),
        ("/mq/console.css", "text/css"),
    ] {
        let resp = http().get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert!(
            header("content-type").starts_with(kind),
            "{path}: {}",
            header("content-type")
        );
        assert_eq!(header("cache-control"), "no-cache", "{path}");
        assert!(!resp.text().await.unwrap().is_empty(), "{path}");
    }
    let resp = http().get(format!("{base}/mq")).send().await.unwrap();
    assert!(resp.status().is_redirection(), "{}", resp.status());
    assert_eq!(resp.headers()["location"], "/mq/");
    app.running.shutdown().await.unwrap();
}

// --- health and listeners --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_listener_lets_lag_pile_up_and_drains_it_when_resumed() {
    let runs = Runs::default();
    let app = start(&["ok"], "", |a| a.with_state(runs.clone())).await;
    let base = serve(&app.running).await;
    let health = get(&base, "/mq/api/health").await;
    assert_eq!(
        health,
        json!({"status": "UP", "components": {
            "broker": {"status": "UP", "backend": "embedded"},
            "idempotency": {"status": "UP", "store": "memory"},
        }})
    );

    let template = app.running.template();
    template.send("t-admin-ok", &json!({"n": 0})).await.unwrap();
    eventually_get(&base, "/mq/api/groups", "the first message settled", |g| {
        runs.ok.load(Ordering::SeqCst) == 1
            && group_row(g, "g-admin-ok").is_some_and(|r| r["lag"] == 0)
    })
    .await;
    // Its permit goes back just after the acknowledgement.
    let listeners = eventually_get(&base, "/mq/api/listeners", "nothing in flight", |l| {
        l[0]["in_flight"] == 0
    })
    .await;
    let rows = listeners.as_array().unwrap();
    assert_eq!(rows.len(), 1, "only the enabled listener runs: {listeners}");
    let row = &rows[0];
    assert_eq!(row["name"], "admin_ok");
    assert_eq!(row["topic"], "t-admin-ok");
    assert_eq!(row["group"], "g-admin-ok");
    assert_eq!(row["model"], "clustering");
    assert_eq!(row["mode"], "concurrently");
    assert_eq!(row["concurrency"], 2);
    assert_eq!(row["batch"], Value::Null);
    assert_eq!(row["in_flight"], 0);
    assert_eq!(
        row["assignment"],
        json!([0, 1, 2, 3]),
        "the only member holds every queue"
    );
    assert_eq!(row["state"], "running");

    let (status, paused) = post(&base, "/mq/api/listeners/admin_ok/pause", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{paused}");
    assert_eq!(paused[0]["state"], "paused");
    assert_eq!(
        paused[0]["assignment"],
        json!([0, 1, 2, 3]),
        "still a member"
    );
    for n in 1..=5 {
        template.send("t-admin-ok", &json!({"n": n})).await.unwrap();
    }
    let groups = eventually_get(&base, "/mq/api/groups", "the lag of five", |g| {
        group_row(g, "g-admin-ok").is_some_and(|r| r["lag"] == 5)
    })
    .await;
    assert_eq!(
        runs.ok.load(Ordering::SeqCst),
        1,
        "paused: nothing was handled"
    );
    let row = group_row(&groups, "g-admin-ok").unwrap();
    assert_eq!(row["model"], "clustering");
    assert_eq!(row["members"].as_array().unwrap().len(), 1, "{row}");
    assert_eq!(get(&base, "/mq/api/listeners").await[0]["state"], "paused");

    let (status, resumed) = post(&base, "/mq/api/listeners/admin_ok/resume", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{resumed}");
    assert_eq!(resumed[0]["state"], "running");
    eventually_get(&base, "/mq/api/groups", "the backlog drained", |g| {
        runs.ok.load(Ordering::SeqCst) == 6
            && group_row(g, "g-admin-ok").is_some_and(|r| r["lag"] == 0)
    })
    .await;

    for path in [
        "/mq/api/listeners/nobody/pause",
        "/mq/api/listeners/nobody/resume",
    ] {
        assert_error(
            &post(&base, path, json!({})).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
    }

    // A broker that is shut down is DOWN, and says why.
    app.running.broker().shutdown().await.unwrap();
    let (status, health) = call(&base, Method::GET, "/mq/api/health", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{health}");
    assert_eq!(health["status"], "DOWN");
    assert_eq!(health["components"]["broker"]["status"], "DOWN");
    assert!(
        health["components"]["broker"]["error"].is_string(),
        "{health}"
    );
    assert_eq!(health["components"]["idempotency"]["status"], "UP");
    let _ = app.running.shutdown().await;
}

/// A delivery in flight when the listener is paused finishes; nothing after it is fetched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_in_flight_finishes_after_the_pause() {
    let runs = Runs::default();
    let gate = Gate(Arc::new(tokio::sync::Semaphore::new(0)));
    let app = start(&["slow"], "", |a| {
        a.with_state(runs.clone()).with_state(gate.clone())
    })
    .await;
    let base = serve(&app.running).await;
    let template = app.running.template();
    template
        .send("t-admin-slow", &json!({"n": 0}))
        .await
        .unwrap();
    eventually_get(&base, "/mq/api/listeners", "one in flight", |l| {
        l[0]["in_flight"] == 1
    })
    .await;

    let (status, paused) = post(&base, "/mq/api/listeners/admin_slow/pause", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{paused}");
    assert_eq!(paused[0]["state"], "paused");
    assert_eq!(
        paused[0]["in_flight"], 1,
        "pausing does not cut a delivery short"
    );
    for n in 1..=2 {
        template
            .send("t-admin-slow", &json!({"n": n}))
            .await
            .unwrap();
    }
    gate.0.add_permits(3);
    eventually_get(
        &base,
        "/mq/api/groups",
        "the first settled, the others waiting",
        |g| {
            runs.ok.load(Ordering::SeqCst) == 1
                && group_row(g, "g-admin-slow").is_some_and(|r| r["lag"] == 2)
        },
    )
    .await;
    eventually_get(&base, "/mq/api/listeners", "nothing in flight", |l| {
        l[0]["in_flight"] == 0
    })
    .await;
    assert_eq!(
        runs.ok.load(Ordering::SeqCst),
        1,
        "paused: the later two were not fetched"
    );

    post(&base, "/mq/api/listeners/admin_slow/resume", json!({})).await;
    eventually_get(&base, "/mq/api/groups", "the rest handled", |g| {
        runs.ok.load(Ordering::SeqCst) == 3
            && group_row(g, "g-admin-slow").is_some_and(|r| r["lag"] == 0)
    })
    .await;
    app.running.shutdown().await.unwrap();
}

// --- topics, groups, offsets -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_groups_and_an_offset_reset_that_redelivers() {
    let runs = Runs::default();
    let app = start(&["ok"], "", |a| a.with_state(runs.clone())).await;
    let base = serve(&app.running).await;
    let template = app.running.template();
    for n in 0..3 {
        template.send("t-admin-ok", &json!({"n": n})).await.unwrap();
    }
    eventually_get(&base, "/mq/api/groups", "three settled", |g| {
        runs.ok.load(Ordering::SeqCst) == 3
            && group_row(g, "g-admin-ok").is_some_and(|r| r["lag"] == 0)
    })
    .await;

    let topics = get(&base, "/mq/api/topics").await;
    let topic = |name: &str| {
        topics
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["topic"] == name)
            .cloned()
    };
    assert_eq!(
        topic("t-admin-ok"),
        Some(json!({"topic": "t-admin-ok", "kind": "user", "queues": 4, "messages": 3}))
    );
    assert_eq!(
        topic("%RETRY%g-admin-ok%t-admin-ok").unwrap()["kind"],
        "retry"
    );

    // The figures are the broker's, as serde writes them.
    let broker = app.running.broker();
    let stats = serde_json::to_value(broker.topic_stats("t-admin-ok").await.unwrap()).unwrap();
    assert_eq!(get(&base, "/mq/api/topics/t-admin-ok").await, stats);
    let retry = get(&base, "/mq/api/topics/%25RETRY%25g-admin-ok%25t-admin-ok").await;
    assert_eq!(retry["topic"], "%RETRY%g-admin-ok%t-admin-ok");
    // Clients that leave the `%` of mq's names unescaped are understood too.
    let unescaped = get(&base, "/mq/api/topics/%25RETRY%g-admin-ok%t-admin-ok").await;
    assert_eq!(unescaped, retry);
    let stats = serde_json::to_value(broker.group_stats("g-admin-ok").await.unwrap()).unwrap();
    assert_eq!(get(&base, "/mq/api/groups/g-admin-ok").await, stats);

    // Back to the first message: the three come again.
    let (status, offsets) = post(
        &base,
        "/mq/api/groups/g-admin-ok/offset",
        json!({"topic": "t-admin-ok", "to": "first"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{offsets}");
    let offsets = offsets.as_array().unwrap();
    assert_eq!(offsets.len(), 4);
    assert!(
        offsets
            .iter()
            .all(|q| q["offset"] == 0 && q["queue_id"].is_u64()),
        "{offsets:?}"
    );
    eventually_get(&base, "/mq/api/groups", "three delivered again", |g| {
        runs.ok.load(Ordering::SeqCst) == 6
            && group_row(g, "g-admin-ok").is_some_and(|r| r["lag"] == 0)
    })
    .await;
    // A time after every message: each queue moves to its end.
    let (status, offsets) = post(
        &base,
        "/mq/api/groups/g-admin-ok/offset",
        json!({"topic": "t-admin-ok", "to": {"timestamp_ms": 4_000_000_000_000u64}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{offsets}");
    let total: u64 = offsets
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["offset"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 3, "{offsets}");
    let (status, _) = post(
        &base,
        "/mq/api/groups/g-admin-ok/offset",
        json!({"topic": "t-admin-ok", "to": "last"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // An integer written as JSON Schema allows it.
    let (status, body) = post(
        &base,
        "/mq/api/groups/g-admin-ok/offset",
        json!({"topic": "t-admin-ok", "to": {"timestamp_ms": 4_000_000_000_000.0}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // What is not there, and what cannot be.
    for (path, status, code) in [
        ("/mq/api/topics/nope", StatusCode::NOT_FOUND, "not_found"),
        ("/mq/api/groups/nope", StatusCode::NOT_FOUND, "not_found"),
        (
            "/mq/api/groups/bad%25name",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/mq/api/topics/bad.name",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
    ] {
        assert_error(
            &call(&base, Method::GET, path, None, None).await,
            status,
            code,
        );
    }
    let reset = "/mq/api/groups/g-admin-ok/offset";
    assert_error(
        &post(
            &base,
            "/mq/api/groups/nope/offset",
            json!({"topic": "t-admin-ok", "to": "first"}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &post(&base, reset, json!({"topic": "nope", "to": "first"})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    for bad in [
        json!({"topic": "t-admin-ok", "to": "middle"}),
        json!({"to": "first"}),
        json!({"topic": "t-admin-ok", "to": {"timestamp_ms": -1}}),
        json!({"topic": "t-admin-ok", "to": {"timestamp_ms": 1.5}}),
        json!({"topic": "t-admin-ok", "to": "first", "extra": 1}),
        json!({"topic": "%RETRY%g-admin-ok%t-admin-ok", "to": "first"}),
        json!({"topic": "t-admin-ok", "to": {"timestamp_ms": 9_223_372_036_854_775_808u64}}),
    ] {
        assert_error(
            &post(&base, reset, bad).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        );
    }
    let resp = http()
        .post(format!("{base}/mq/api/groups/g-admin-ok/offset"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["code"],
        "bad_request"
    );
    app.running.shutdown().await.unwrap();
}

// --- dead letters ----------------------------------------------------------------------------

fn seqs(page: &Value) -> Vec<u64> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_paged_shown_resent_and_deleted() {
    let runs = Runs::default();
    let app = start(&["dlq"], "", |a| a.with_state(runs.clone())).await;
    let base = serve(&app.running).await;
    let template = app.running.template();
    for k in ["k1", "k2", "k3"] {
        template
            .message("t-admin-dlq:tg")
            .key(k)
            .json(&json!({"key": k}))
            .unwrap()
            .send()
            .await
            .unwrap();
    }
    eventually_get(&base, "/mq/api/dead-letters", "three dead letters", |d| {
        d.as_array()
            .unwrap()
            .iter()
            .any(|g| g["group"] == "g-admin-dlq" && g["count"] == 3)
    })
    .await;

    let first = get(&base, "/mq/api/dead-letters/g-admin-dlq?limit=2").await;
    assert_eq!(seqs(&first).len(), 2, "{first}");
    let next = first["next"].as_u64().expect("a next page");
    let second = get(
        &base,
        &format!("/mq/api/dead-letters/g-admin-dlq?from={next}&limit=2"),
    )
    .await;
    assert_eq!(seqs(&second), vec![next], "{second}");
    assert_eq!(second["next"], Value::Null);
    let all = get(&base, "/mq/api/dead-letters/g-admin-dlq").await;
    assert_eq!(seqs(&all).len(), 3);
    assert_eq!(all["next"], Value::Null);

    let one = &all["items"][0];
    let seq = one["seq"].as_u64().unwrap();
    let shown = get(&base, &format!("/mq/api/dead-letters/g-admin-dlq/{seq}")).await;
    assert_eq!(&shown, one);
    assert_eq!(shown["group"], "g-admin-dlq");
    assert_eq!(shown["topic"], "t-admin-dlq");
    assert_eq!(shown["tag"], "tg");
    assert_eq!(shown["attempts"], 1);
    assert_eq!(shown["message_id"].as_str().unwrap().len(), 32);
    let key = shown["keys"][0].as_str().unwrap().to_owned();
    assert_eq!(shown["last_error"], format!("always fails ({key})"));
    assert_eq!(
        serde_json::from_str::<Value>(shown["body"].as_str().unwrap()).unwrap(),
        json!({"key": key})
    );
    assert!(
        shown["first_failure_ms"].as_u64().unwrap() <= shown["last_failure_ms"].as_u64().unwrap()
    );
    assert!(shown["properties"].is_object());

    // Delete one: gone, and a second delete finds nothing.
    let path = format!("/mq/api/dead-letters/g-admin-dlq/{seq}");
    assert_eq!(
        call(&base, Method::DELETE, &path, None, None).await,
        (StatusCode::OK, json!({"deleted": 1}))
    );
    assert_error(
        &call(&base, Method::GET, &path, None, None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &call(&base, Method::DELETE, &path, None, None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &post(&base, &format!("{path}/resend"), json!({})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    // Resend one: it leaves the queue, fails again and comes back under a new position.
    let before = seqs(&get(&base, "/mq/api/dead-letters/g-admin-dlq").await);
    assert_eq!(before.len(), 2);
    let failed = runs.failed.load(Ordering::SeqCst);
    let (status, body) = post(
        &base,
        &format!("/mq/api/dead-letters/g-admin-dlq/{}/resend", before[0]),
        json!({}),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"resent": 1})));
    let after = eventually_get(
        &base,
        "/mq/api/dead-letters/g-admin-dlq",
        "the resent one back",
        |p| {
            let s = seqs(p);
            s.len() == 2 && !s.contains(&before[0])
        },
    )
    .await;
    assert_eq!(runs.failed.load(Ordering::SeqCst), failed + 1);

    // Resend all.
    let (status, body) = post(&base, "/mq/api/dead-letters/g-admin-dlq/resend", json!({})).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"resent": 2})));
    let old = seqs(&after);
    eventually_get(
        &base,
        "/mq/api/dead-letters/g-admin-dlq",
        "both back",
        |p| {
            let s = seqs(p);
            s.len() == 2 && s.iter().all(|n| !old.contains(n))
        },
    )
    .await;

    // Bad paths and queries.
    for path in [
        "/mq/api/dead-letters/g-admin-dlq?limit=0",
        "/mq/api/dead-letters/g-admin-dlq?limit=501",
        "/mq/api/dead-letters/g-admin-dlq?from=-1",
        "/mq/api/dead-letters/g-admin-dlq?limit=many",
        "/mq/api/dead-letters/g-admin-dlq/abc",
        "/mq/api/dead-letters/g-admin-dlq/9223372036854775808",
        "/mq/api/dead-letters/g-admin-dlq?from=9223372036854775808",
        "/mq/api/dead-letters/bad%25group",
    ] {
        assert_error(
            &call(&base, Method::GET, path, None, None).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        );
    }
    // A group without dead letters has an empty page, and nothing to resend.
    assert_eq!(
        get(&base, "/mq/api/dead-letters/g-none").await,
        json!({"items": [], "next": null})
    );
    assert_eq!(
        post(&base, "/mq/api/dead-letters/g-none/resend", json!({})).await,
        (StatusCode::OK, json!({"resent": 0}))
    );
    app.running.shutdown().await.unwrap();
}

// --- the document ----------------------------------------------------------------------------

// --- messages and their trace ----------------------------------------------------------------

/// The kinds of a trace's events, oldest first.
fn kinds(trace: &Value) -> Vec<String> {
    trace["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| match e["kind"].as_str().unwrap() {
            "stored" => format!("stored:{}", e["copy"].as_str().unwrap()),
            "delivered" => format!("delivered:{}", e["outcome"]["type"].as_str().unwrap()),
            other => other.to_owned(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_found_by_id_and_key_and_its_trace_follows_it_through_a_resend() {
    let runs = Runs::default();
    let app = start(&["dlq"], "", |a| a.with_state(runs.clone())).await;
    let base = serve(&app.running).await;
    let sent = app
        .running
        .template()
        .message("t-admin-dlq")
        .key("order-42")
        .json(&json!({"order": 42}))
        .unwrap()
        .send()
        .await
        .unwrap();
    let id = sent.message_id.to_string();

    // Failed once (no retries for this listener): the original and its dead letter.
    let copies = eventually_get(
        &base,
        &format!("/mq/api/messages/{id}"),
        "a dead letter",
        |c| c.as_array().unwrap().len() == 2,
    )
    .await;
    assert_eq!(copies[0]["topic"], "t-admin-dlq", "{copies}");
    assert_eq!(copies[0]["queue_offset"], sent.queue_offset, "{copies}");
    assert_eq!(copies[0]["keys"], json!(["order-42"]));
    assert_eq!(copies[1]["topic"], "%DLQ%g-admin-dlq", "{copies}");
    assert_eq!(copies[1]["message_id"], id.as_str());

    let by_key = get(&base, "/mq/api/messages?key=order-42&topic=t-admin-dlq").await;
    assert_eq!(by_key.as_array().unwrap().len(), 1, "{by_key}");
    assert_eq!(by_key[0]["message_id"], id.as_str());
    assert_eq!(get(&base, "/mq/api/messages?key=order-43").await, json!([]));

    let trace = eventually_get(
        &base,
        &format!("/mq/api/messages/{id}/trace"),
        "the failed delivery in the trace",
        |t| kinds(t).iter().any(|k| k == "delivered:dead_lettered"),
    )
    .await;
    assert_eq!(
        kinds(&trace),
        [
            "stored:original",
            "delivered:dead_lettered",
            "stored:dead_letter"
        ],
        "{trace}"
    );
    let delivery = &trace["events"][1];
    assert_eq!(delivery["group"], "g-admin-dlq");
    assert_eq!(delivery["attempt"], 1);
    assert_eq!(delivery["error"], "always fails (order-42)");
    assert!(delivery["instance"].is_string(), "{delivery}");
    assert!(delivery["duration_ms"].is_u64(), "{delivery}");

    // Resent through the API: the trace shows the resend and the next delivery.
    let seq = get(&base, "/mq/api/dead-letters/g-admin-dlq").await["items"][0]["seq"]
        .as_u64()
        .unwrap();
    let resent = post(
        &base,
        &format!("/mq/api/dead-letters/g-admin-dlq/{seq}/resend"),
        json!({}),
    )
    .await;
    assert_eq!(resent, (StatusCode::OK, json!({"resent": 1})));
    let trace = eventually_get(
        &base,
        &format!("/mq/api/messages/{id}/trace"),
        "the resend and its delivery in the trace",
        |t| {
            let k = kinds(t);
            k.iter().any(|k| k == "resent")
                && k.iter().filter(|k| *k == "delivered:dead_lettered").count() == 2
        },
    )
    .await;
    assert!(kinds(&trace).contains(&"resent".to_owned()), "{trace}");

    // Bad and unknown ids, and a bad limit.
    let bad = call(&base, Method::GET, "/mq/api/messages/xyz", None, None).await;
    assert_error(&bad, StatusCode::BAD_REQUEST, "bad_request");
    let unknown = format!("/mq/api/messages/{:032X}", 7);
    assert_error(
        &call(&base, Method::GET, &unknown, None, None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &call(&base, Method::GET, &format!("{unknown}/trace"), None, None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let zero = call(
        &base,
        Method::GET,
        "/mq/api/messages?key=k&limit=0",
        None,
        None,
    )
    .await;
    assert_error(&zero, StatusCode::BAD_REQUEST, "bad_request");
    let no_key = call(&base, Method::GET, "/mq/api/messages", None, None).await;
    assert_error(&no_key, StatusCode::BAD_REQUEST, "bad_request");
    app.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_every_route_with_its_errors_and_the_token() {
    let app = start(&[], "", |a| a.with_state(Runs::default())).await;
    let base = serve(&app.running).await;
    let doc = get(&base, "/mq/api/openapi.json").await;
    assert_eq!(
        doc,
        serde_json::to_value(mq_starter::admin::openapi()).unwrap()
    );
    let mut routes: Vec<String> = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            routes.push(format!("{} {path}", method.to_uppercase()));
            assert_eq!(op["security"][0]["bearer"], json!([]), "{method} {path}");
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.contains_key("401"), "{method} {path}: {op}");
            for (status, response) in responses {
                if !status.starts_with('2') && path != "/mq/api/health" {
                    let schema = &response["content"]["application/json"]["schema"]["$ref"];
                    assert_eq!(
                        schema, "#/components/schemas/AdminErrorBody",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
    routes.sort();
    let mut expected = vec![
        "GET /mq/api/health",
        "GET /mq/api/listeners",
        "POST /mq/api/listeners/{name}/pause",
        "POST /mq/api/listeners/{name}/resume",
        "GET /mq/api/topics",
        "GET /mq/api/topics/{topic}",
        "GET /mq/api/groups",
        "GET /mq/api/groups/{group}",
        "POST /mq/api/groups/{group}/offset",
        "GET /mq/api/dead-letters",
        "GET /mq/api/dead-letters/{group}",
        "GET /mq/api/dead-letters/{group}/{seq}",
        "DELETE /mq/api/dead-letters/{group}/{seq}",
        "POST /mq/api/dead-letters/{group}/{seq}/resend",
        "POST /mq/api/dead-letters/{group}/resend",
        "GET /mq/api/openapi.json",
        "GET /mq/api/messages",
        "GET /mq/api/messages/{id}",
        "GET /mq/api/messages/{id}/trace",
    ];
    expected.sort();
    assert_eq!(routes, expected);
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let reset = &doc["paths"]["/mq/api/groups/{group}/offset"]["post"]["responses"];
    for status in ["400", "404", "422"] {
        assert!(reset[status].is_object(), "{status}: {reset}");
    }
    app.running.shutdown().await.unwrap();
}

// --- health on Redis -------------------------------------------------------------------------

/// On Redis, health is a PING through the broker's connection and the store's: a killed
/// server turns both DOWN (503), each with its error.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_down_when_the_redis_server_dies() {
    let Some(mut server) = support::redis::OwnRedis::start().await else {
        return;
    };
    server.ready().await;
    let url = server.url();
    let extra = format!(
        "mq:\n  broker:\n    kind: redis\n    redis:\n      url: {url}\n      prefix: admin-health\n  producer:\n    send-timeout: 1s\n  idempotency:\n    store: redis\n    redis-url: {url}\n"
    );
    let app = start(&[], &extra, |a| a.with_state(Runs::default())).await;
    let base = serve(&app.running).await;
    assert_eq!(
        get(&base, "/mq/api/health").await,
        json!({"status": "UP", "components": {
            "broker": {"status": "UP", "backend": "redis"},
            "idempotency": {"status": "UP", "store": "redis"},
        }})
    );
    server.kill();
    let (status, health) = call(&base, Method::GET, "/mq/api/health", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{health}");
    assert_eq!(health["status"], "DOWN");
    for component in ["broker", "idempotency"] {
        let c = &health["components"][component];
        assert_eq!(c["status"], "DOWN", "{health}");
        assert!(
            !c["error"].as_str().unwrap_or_default().is_empty(),
            "{health}"
        );
    }
    // Stopping without the server may fail; the test is about health.
    let _ = app.running.shutdown().await;
}
