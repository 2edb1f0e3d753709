//! The demo shop over HTTP: the binary on an ephemeral port in a temporary data directory,
//! driven by a real HTTP client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

const CONFIG_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config");

/// A running shop process.
struct Shop {
    child: Child,
    base: String,
    lines: mpsc::Receiver<String>,
    http: reqwest::Client,
}

impl Shop {
    fn start(data: &Path, extra_env: &[(&str, &str)]) -> Shop {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_demo-shop"));
        cmd.env("MQ_CONFIG_DIR", CONFIG_DIR)
            .env("MQ__SERVER__ADDR", "127.0.0.1:0")
            .env("MQ__MQ__BROKER__DATA_DIR", data.join("mq"))
            .env("MQ__SHOP__ORDER__CANCEL_AFTER", "2s")
            .env("MQ__MQ__BROKER__TRANSACTION__TIMEOUT", "500ms")
            .env("MQ__MQ__BROKER__TRANSACTION__CHECK_INTERVAL", "500ms")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start demo-shop");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let addr = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("demo-shop did not say where it listens");
            if let Some(a) = line.strip_prefix("listening on ") {
                break a.to_owned();
            }
        };
        Shop {
            child,
            base: addr,
            lines: rx,
            http: reqwest::Client::new(),
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let url = format!("{}{}", self.base, path);
        let req = match method {
            "POST" => self.http.post(url),
            _ => self.http.get(url),
        };
        let req = match body {
            Some(b) => req.json(&b),
            None => req,
        };
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call("GET", path, None).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call("POST", path, Some(body)).await
    }

    /// Waits for a line on stdout that contains `text`.
    fn wait_line(&self, text: &str) {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("no line with {text:?}"));
            if line.contains(text) {
                return;
            }
        }
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM: the shop stops serving, lets handlers finish, commits and exits cleanly.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "demo-shop did not stop cleanly: {status}");
    }
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..300 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn product(shop: &Shop, sku: &str, stock: i64) {
    let (status, body) = shop
        .post(
            "/api/products",
            json!({"sku": sku, "name": sku, "price_cents": 250, "stock": stock}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

async fn order(shop: &Shop, user: &str, sku: &str, quantity: i64) -> Value {
    let (status, body) = shop
        .post(
            "/api/orders",
            json!({"user_id": user, "items": [{"sku": sku, "quantity": quantity}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["status"], "CREATED");
    body
}

fn events(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaid_orders_are_cancelled_and_paid_ones_are_not() {
    let dir = tempfile::tempdir().unwrap();
    orders_and_delayed_cancellation(Shop::start(dir.path(), &[])).await;
}

/// The same shop, code unchanged, with its messages on Redis Streams (profile `redis-broker`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shop_runs_on_the_redis_broker() {
    if !redis_answers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = format!("demo-shop-test-{}-{}", std::process::id(), uuid_like());
    orders_and_delayed_cancellation(Shop::start(
        dir.path(),
        &[
            ("MQ_PROFILES", "redis-broker"),
            ("MQ__MQ__BROKER__REDIS__PREFIX", &run),
            ("MQ__MQ__IDEMPOTENCY__PREFIX", &format!("{run}-idem")),
        ],
    ))
    .await;
}

/// A name part no other run uses.
fn uuid_like() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

async fn orders_and_delayed_cancellation(shop: Shop) {
    product(&shop, "apple", 10).await;
    let unpaid = order(&shop, "u1", "apple", 3).await;
    let paid = order(&shop, "u1", "apple", 2).await;
    assert_eq!(shop.get("/api/products/apple").await["reserved"], 5);

    let pay = |id: i64, payment: &str| {
        let path = format!("/api/orders/{id}/pay");
        let body = json!({"payment_id": payment});
        let shop = &shop;
        async move { shop.post(&path, body).await }
    };
    let paid_id = paid["id"].as_i64().unwrap();
    let (status, first) = pay(paid_id, "pay-1").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["status"], "PAID");
    // Paying again with the same payment id: the same answer, nothing changes.
    let (status, again) = pay(paid_id, "pay-1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, first);

    let unpaid_id = unpaid["id"].as_i64().unwrap();
    eventually("the unpaid order to be cancelled", async || {
        shop.get(&format!("/api/orders/{unpaid_id}")).await["status"] == "CANCELLED"
    })
    .await;
    eventually("the timelines", async || {
        events(&shop.get(&format!("/api/orders/{unpaid_id}/events")).await).len() == 2
            && events(&shop.get(&format!("/api/orders/{paid_id}/events")).await).len() == 2
    })
    .await;
    assert_eq!(
        events(&shop.get(&format!("/api/orders/{unpaid_id}/events")).await),
        vec!["CREATED", "CANCELLED"]
    );
    assert_eq!(
        events(&shop.get(&format!("/api/orders/{paid_id}/events")).await),
        vec!["CREATED", "PAID"]
    );
    // The paid order's delay fired too, and left it alone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        shop.get(&format!("/api/orders/{paid_id}")).await["status"],
        "PAID"
    );
    let apple = shop.get("/api/products/apple").await;
    assert_eq!(apple["stock"], 8, "two sold");
    assert_eq!(
        apple["reserved"], 0,
        "the cancelled order's reservation is released"
    );
    // 500 cents paid: 5 points, credited once.
    assert_eq!(shop.get("/api/users/u1/points").await["points"], 5);

    let (status, body) = pay(unpaid_id, "pay-2").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("cancelled"));
    let (status, _) = pay(paid_id, "pay-other").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(shop.get("/api/users/u1/points").await["points"], 5);
    let mine = shop.get("/api/orders?user_id=u1").await;
    assert_eq!(mine.as_array().unwrap().len(), 2);
    shop.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_payment_callbacks_post_one_ledger_entry() {
    let dir = tempfile::tempdir().unwrap();
    repeated_callbacks(Shop::start(dir.path(), &[])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_payment_callbacks_with_the_redis_profile() {
    if !redis_answers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Each run its own keys: the store remembers processed keys for a day.
    let prefix = format!("demo-shop-test:{}", std::process::id());
    repeated_callbacks(Shop::start(
        dir.path(),
        &[
            ("MQ_PROFILES", "redis"),
            ("MQ__MQ__IDEMPOTENCY__PREFIX", &prefix),
        ],
    ))
    .await;
}

/// Whether Redis answers on 127.0.0.1:6379; says so loudly when not (and fails under
/// `MQ_REQUIRE_REDIS=1`, as in CI).
fn redis_answers() -> bool {
    use std::io::{Read, Write};
    let ok = std::net::TcpStream::connect("127.0.0.1:6379")
        .and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"PING\r\n")?;
            let mut buf = [0u8; 7];
            s.read_exact(&mut buf)?;
            Ok(&buf == b"+PONG\r\n")
        })
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var("MQ_REQUIRE_REDIS").map_or(true, |v| v != "1"),
            "MQ_REQUIRE_REDIS=1 but no Redis answers on 127.0.0.1:6379"
        );
        eprintln!("\n*** SKIPPED: no Redis on 127.0.0.1:6379 for the redis profile ***\n");
    }
    ok
}

async fn repeated_callbacks(shop: Shop) {
    let (status, fee) = shop
        .post(
            "/api/fees",
            json!({"household": "A-101", "period": "2026-11", "amount_cents": 12000}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{fee}");
    assert_eq!(fee["status"], "UNPAID");
    let id = fee["id"].as_i64().unwrap();
    // The provider calls back three times at once.
    let url = format!("{}/api/fees/{id}/payment-notify", shop.base);
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let (http, url) = (shop.http.clone(), url.clone());
        calls.spawn(async move {
            http.post(url)
                .json(&json!({"transaction_id": "wx-777"}))
                .send()
                .await
                .unwrap()
                .status()
        });
    }
    while let Some(status) = calls.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    eventually("the bill to be paid", async || {
        shop.get(&format!("/api/fees/{id}")).await["status"] == "PAID"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ledger = shop.get(&format!("/api/fees/{id}/ledger")).await;
    assert_eq!(ledger.as_array().unwrap().len(), 1, "{ledger}");
    let fee = shop.get(&format!("/api/fees/{id}")).await;
    assert_eq!(fee["receipt_no"], ledger[0]["receipt_no"]);
    let (status, _) = shop
        .post(
            "/api/fees",
            json!({"household": "A-101", "period": "2026-11", "amount_cents": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    shop.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_4xx_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::start(dir.path(), &[]);
    product(&shop, "pear", 5).await;
    let raw = |body: &'static str| {
        let url = format!("{}/api/orders", shop.base);
        let http = shop.http.clone();
        async move {
            let r = http
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = raw("{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "bad_json");
    let (status, body) = raw(r#"{"user_id": "u", "items": "many"}"#).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    for (items, code, needle) in [
        (
            json!([{"sku": "kiwi", "quantity": 1}]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "kiwi",
        ),
        (
            json!([{"sku": "pear", "quantity": 0}]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "positive",
        ),
        (
            json!([{"sku": "pear", "quantity": -2}]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "positive",
        ),
        (
            json!([{"sku": "pear", "quantity": 6}]),
            StatusCode::CONFLICT,
            "not enough",
        ),
        (json!([]), StatusCode::UNPROCESSABLE_ENTITY, "at least one"),
    ] {
        let (status, body) = shop
            .post("/api/orders", json!({"user_id": "u", "items": items}))
            .await;
        assert_eq!(status, code, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{message}");
    }
    let big = "x".repeat(100 * 1024);
    let (status, body) = shop
        .post("/api/orders", json!({"user_id": big, "items": []}))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    for path in [
        "/api/orders/404",
        "/api/fees/404",
        "/api/products/none",
        "/api/orders/404/events",
    ] {
        let (status, body) = shop.call("GET", path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_eq!(body["error"]["code"], "not_found");
    }
    let (status, body) = shop.call("GET", "/api/orders/abc", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = shop
        .post("/api/orders/404/pay", json!({"payment_id": "p"}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let pear = shop.get("/api/products/pear").await;
    assert_eq!(
        (pear["stock"].as_i64(), pear["reserved"].as_i64()),
        (Some(5), Some(0))
    );
    assert!(shop
        .get("/api/orders?user_id=u")
        .await
        .as_array()
        .unwrap()
        .is_empty());
    shop.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_half_message_and_commit_is_settled_by_check_back() {
    let dir = tempfile::tempdir().unwrap();
    // The local transaction commits, then the process dies before answering the broker.
    let shop = Shop::start(dir.path(), &[("DEMO_SHOP_HANG_AT", "after-local-tx")]);
    product(&shop, "plum", 10).await;
    let committed = order(&shop, "u7", "plum", 2).await["id"].as_i64().unwrap();
    let pay = {
        let url = format!("{}/api/orders/{committed}/pay", shop.base);
        let http = shop.http.clone();
        tokio::spawn(async move {
            http.post(url)
                .json(&json!({"payment_id": "p-7"}))
                .send()
                .await
        })
    };
    shop.wait_line(&format!("HANGING at after-local-tx for order {committed}"));
    shop.kill();
    assert!(
        pay.await.unwrap().is_err(),
        "the request died with the process"
    );

    // The local transaction never ran; then the process dies.
    let shop = Shop::start(dir.path(), &[("DEMO_SHOP_HANG_AT", "before-local-tx")]);
    let rolled_back = order(&shop, "u8", "plum", 1).await["id"].as_i64().unwrap();
    let pay = {
        let url = format!("{}/api/orders/{rolled_back}/pay", shop.base);
        let http = shop.http.clone();
        tokio::spawn(async move {
            http.post(url)
                .json(&json!({"payment_id": "p-8"}))
                .send()
                .await
        })
    };
    shop.wait_line(&format!(
        "HANGING at before-local-tx for order {rolled_back}"
    ));
    shop.kill();
    let _ = pay.await;

    // After a restart, check-back reads the transaction log: the first commits, the second
    // rolls back.
    let shop = Shop::start(dir.path(), &[]);
    eventually("points from the committed payment", async || {
        shop.get("/api/users/u7/points").await["points"] == 5
    })
    .await;
    eventually("the committed payment on the timeline", async || {
        events(&shop.get(&format!("/api/orders/{committed}/events")).await)
            == vec!["CREATED", "PAID"]
    })
    .await;
    assert_eq!(
        shop.get(&format!("/api/orders/{committed}")).await["status"],
        "PAID"
    );
    // The rolled-back one stays unpaid, then its delay cancels it.
    eventually("the unpaid order to be cancelled", async || {
        shop.get(&format!("/api/orders/{rolled_back}")).await["status"] == "CANCELLED"
    })
    .await;
    assert_eq!(shop.get("/api/users/u8/points").await["points"], 0);
    let plum = shop.get("/api/products/plum").await;
    assert_eq!(
        (plum["stock"].as_i64(), plum["reserved"].as_i64()),
        (Some(8), Some(0))
    );
    shop.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_every_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::start(dir.path(), &[]);
    let doc = shop.get("/openapi.json").await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented: Vec<String> = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    documented.sort();
    let mut expected = vec![
        "POST /api/products",
        "GET /api/products/{sku}",
        "POST /api/orders",
        "GET /api/orders",
        "GET /api/orders/{id}",
        "POST /api/orders/{id}/pay",
        "GET /api/orders/{id}/events",
        "GET /api/users/{id}/points",
        "POST /api/fees",
        "GET /api/fees/{id}",
        "POST /api/fees/{id}/payment-notify",
        "GET /api/fees/{id}/ledger",
        "GET /health",
        "GET /metrics",
        "GET /api/mq/dead-letters",
        "POST /api/mq/dead-letters/{id}/resend",
    ];
    expected.sort();
    assert_eq!(documented, expected);
    // And every documented GET without parameters answers.
    for p in ["/health", "/metrics", "/api/mq/dead-letters"] {
        let (status, _) = shop.call("GET", p, None).await;
        assert_eq!(status, StatusCode::OK, "{p}");
    }
    shop.stop();
}
