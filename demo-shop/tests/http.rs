//! The demo shop over HTTP: the binary on an ephemeral port in a temporary data directory,
//! driven by a real HTTP client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::{eventually, redis_answers, redis_cleanup, PgDatabase, Shop};

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

/// The topics of the messages stored with business key `key`, as the admin API finds them,
/// sorted, each once.
async fn topics_with_key(shop: &Shop, key: &str) -> Vec<String> {
    let found = shop.get(&format!("/mq/api/messages?key={key}")).await;
    let mut topics: Vec<String> = found
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["topic"].as_str().unwrap().to_owned())
        .collect();
    topics.sort();
    topics.dedup();
    topics
}

/// The groups whose delivery of message `id` its trace shows acknowledged, sorted.
async fn acked_by(shop: &Shop, id: &str) -> Vec<String> {
    let (status, trace) = shop
        .call("GET", &format!("/mq/api/messages/{id}/trace"), None)
        .await;
    if status != StatusCode::OK {
        return Vec::new();
    }
    let mut groups: Vec<String> = trace["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "delivered" && e["outcome"]["type"] == "acked")
        .map(|e| e["group"].as_str().unwrap().to_owned())
        .collect();
    groups.sort();
    groups
}

/// Every message about an order carries its `message_key`: one key search finds its creation,
/// its payment or cancellation and its timeline events, and the payment's trace shows each
/// group that consumed it.
async fn an_orders_messages_are_found_by_its_key(shop: &Shop, paid: &Value, unpaid: &Value) {
    let paid_key = paid["message_key"].as_str().unwrap();
    let unpaid_key = unpaid["message_key"].as_str().unwrap();
    assert_ne!(paid_key, unpaid_key);
    eventually("the paid order's messages by its key", async || {
        topics_with_key(shop, paid_key).await
            == [
                "order-created",
                "order-events",
                "order-paid",
                "order-timeout",
            ]
    })
    .await;
    eventually("the unpaid order's messages by its key", async || {
        topics_with_key(shop, unpaid_key).await
            == ["order-created", "order-events", "order-timeout"]
    })
    .await;
    let found = shop
        .get(&format!("/mq/api/messages?key={paid_key}&topic=order-paid"))
        .await;
    let payment = found.as_array().unwrap();
    assert_eq!(payment.len(), 1, "{found}");
    assert_eq!(payment[0]["keys"], json!([paid_key]));
    let id = payment[0]["message_id"].as_str().unwrap();
    eventually("the payment's trace to show its three groups", async || {
        acked_by(shop, id).await == ["notify", "order-events-feed", "points"]
    })
    .await;
}

/// An unpaid order's cancellation is found by the order's key while it waits: under
/// `order-timeout`, due when the order's time runs out, and its trace says it is scheduled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_cancellation_is_found_before_it_is_due() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::start(dir.path(), &[("MQ__SHOP__ORDER__CANCEL_AFTER", "1h")]);
    product(&shop, "plum", 3).await;
    let placed = order(&shop, "u9", "plum", 1).await;
    let key = placed["message_key"].as_str().unwrap();
    eventually("the order's cancellation to be scheduled", async || {
        topics_with_key(&shop, key).await == ["order-created", "order-timeout"]
    })
    .await;
    let found = shop
        .get(&format!("/mq/api/messages?key={key}&topic=order-timeout"))
        .await;
    let timeout = &found.as_array().unwrap()[0];
    let created = humantime::parse_rfc3339(placed["created_at"].as_str().unwrap()).unwrap();
    let due = created + Duration::from_secs(3600);
    let due_ms = due
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert_eq!(timeout["due_ms"], due_ms, "{timeout}");
    let id = timeout["message_id"].as_str().unwrap();
    let trace = shop.get(&format!("/mq/api/messages/{id}/trace")).await;
    assert_eq!(trace["events"][0]["kind"], "scheduled", "{trace}");
    assert_eq!(trace["events"][0]["due_ms"], due_ms);
    assert_eq!(
        shop.get(&format!("/api/orders/{}", placed["id"])).await["status"],
        "CREATED"
    );
    shop.stop();
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

/// The same shop, code unchanged, with its messages on Redis Streams and its database on
/// PostgreSQL (profile `redis-broker`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shop_runs_on_the_redis_broker() {
    if !redis_answers() {
        return;
    }
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let run = format!("demo-shop-test-{}-{}", std::process::id(), uuid_like());
    orders_and_delayed_cancellation(Shop::start(
        dir.path(),
        &[
            ("MQ_PROFILES", "redis-broker"),
            ("MQ__BROKER__REDIS__PREFIX", &run),
            ("MQ__IDEMPOTENCY__PREFIX", &format!("{run}-idem")),
            ("MQ__SHOP__DATABASE__URL", &db.url),
        ],
    ))
    .await;
    redis_cleanup(&run);
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
    an_orders_messages_are_found_by_its_key(&shop, &paid, &unpaid).await;

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
    let prefix = format!("demo-shop-test-{}-{}", std::process::id(), uuid_like());
    repeated_callbacks(Shop::start(
        dir.path(),
        &[
            ("MQ_PROFILES", "redis"),
            ("MQ__IDEMPOTENCY__PREFIX", &prefix),
        ],
    ))
    .await;
    redis_cleanup(&prefix);
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
    // Each callback that got through sent its fee-paid message with the bill's key; a copy
    // that came while another was being posted waits for its retry (then is a duplicate).
    let key = fee["message_key"].as_str().unwrap();
    let topics = topics_with_key(&shop, key).await;
    assert!(topics.contains(&"fee-paid".to_owned()), "{topics:?}");
    assert!(
        topics
            .iter()
            .all(|t| t == "fee-paid" || t == "%RETRY%fee-ledger%fee-paid"),
        "{topics:?}"
    );
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
            StatusCode::NOT_FOUND,
            "kiwi",
        ),
        (
            json!([{"sku": "pear", "quantity": 0}]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "between 1 and 10000",
        ),
        (
            json!([{"sku": "pear", "quantity": -2}]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "between 1 and 10000",
        ),
        (
            json!([{"sku": "pear", "quantity": 10_001}]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "between 1 and 10000",
        ),
        (
            json!([{"sku": " ", "quantity": 1}]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "sku must not be empty",
        ),
        (
            json!([{"sku": "pear", "quantity": 6}]),
            StatusCode::CONFLICT,
            "not enough",
        ),
        (json!([]), StatusCode::UNPROCESSABLE_ENTITY, "1 to 50 items"),
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

/// An order whose process dies after its insert and before its message is committed is still
/// cancelled on time: check-back finds the order and commits the message that schedules it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_an_orders_insert_and_its_message_still_cancels_it() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::start(dir.path(), &[("DEMO_SHOP_HANG_AT", "order-after-local-tx")]);
    product(&shop, "fig", 10).await;
    let place = {
        let url = format!("{}/api/orders", shop.base);
        let http = shop.http.clone();
        tokio::spawn(async move {
            http.post(url)
                .json(&json!({"user_id": "u9", "items": [{"sku": "fig", "quantity": 4}]}))
                .send()
                .await
        })
    };
    shop.wait_line("HANGING at order-after-local-tx for order ");
    shop.kill();
    assert!(
        place.await.unwrap().is_err(),
        "the request died with the process"
    );

    let shop = Shop::start(dir.path(), &[]);
    let orders = shop.get("/api/orders?user_id=u9").await;
    assert_eq!(orders.as_array().unwrap().len(), 1, "{orders}");
    assert_eq!(orders[0]["status"], "CREATED");
    assert_eq!(shop.get("/api/products/fig").await["reserved"], 4);
    let id = orders[0]["id"].as_i64().unwrap();
    eventually("the half-created order to be cancelled", async || {
        shop.get(&format!("/api/orders/{id}")).await["status"] == "CANCELLED"
    })
    .await;
    let order = shop.get(&format!("/api/orders/{id}")).await;
    let created = humantime::parse_rfc3339(order["created_at"].as_str().unwrap()).unwrap();
    let cancelled = humantime::parse_rfc3339(order["cancelled_at"].as_str().unwrap()).unwrap();
    assert!(
        cancelled >= created + Duration::from_secs(2),
        "cancelled before its time: {order}"
    );
    let fig = shop.get("/api/products/fig").await;
    assert_eq!(
        (fig["stock"].as_i64(), fig["reserved"].as_i64()),
        (Some(10), Some(0))
    );
    eventually("CANCELLED on the timeline", async || {
        events(&shop.get(&format!("/api/orders/{id}/events")).await) == vec!["CREATED", "CANCELLED"]
    })
    .await;
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
        // mq's admin API, merged into the shop's document.
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
        "GET /mq/api/messages",
        "GET /mq/api/messages/{id}",
        "GET /mq/api/messages/{id}/trace",
        "GET /mq/api/openapi.json",
    ];
    expected.sort();
    assert_eq!(documented, expected);
    // And every documented GET without parameters answers.
    for p in [
        "/health",
        "/metrics",
        "/mq/api/dead-letters",
        "/mq/api/groups",
    ] {
        let (status, _) = shop.call("GET", p, None).await;
        assert_eq!(status, StatusCode::OK, "{p}");
    }
    shop.stop();
}

/// mq's admin routes answer 401 (JSON) without the configured bearer token (`mq.admin.token`),
/// and the OpenAPI document says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_need_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::start(dir.path(), &[("MQ__ADMIN__TOKEN", "s3cret")]);
    let list = format!("{}/mq/api/dead-letters", shop.base);
    let resend = format!("{}/mq/api/dead-letters/g/1/resend", shop.base);
    for (auth, want) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some("Bearer wrong"), StatusCode::UNAUTHORIZED),
        (Some("s3cret"), StatusCode::UNAUTHORIZED),
        (Some("Bearer s3cret"), StatusCode::OK),
    ] {
        let mut req = shop.http.get(&list);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), want, "{auth:?}");
        let body: Value = resp.json().await.unwrap();
        if want == StatusCode::UNAUTHORIZED {
            assert_eq!(body["error"]["code"], "unauthorized", "{body}");
        }
    }
    let resp = shop.http.post(&resend).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = shop
        .http
        .post(&resend)
        .header("authorization", "Bearer s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let doc = shop.get("/openapi.json").await;
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    for (path, method) in [
        ("/mq/api/dead-letters", "get"),
        ("/mq/api/dead-letters/{group}/{seq}/resend", "post"),
    ] {
        let op = &doc["paths"][path][method];
        assert!(op["responses"]["401"].is_object(), "{path}: {op}");
        assert_eq!(op["security"][0]["bearer"], json!([]), "{path}: {op}");
    }
    shop.stop();
}

/// A fresh database on the same Redis idempotency store: the new order 1 is not a duplicate of
/// the old order 1 (its messages are keyed by its reference, not its id), so it is still cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_database_is_not_silenced_by_old_idempotency_keys() {
    if !redis_answers() {
        return;
    }
    let prefix = format!("demo-shop-test-{}-{}", std::process::id(), uuid_like());
    let env = [
        ("MQ_PROFILES", "redis"),
        ("MQ__IDEMPOTENCY__PREFIX", prefix.as_str()),
    ];
    for round in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let shop = Shop::start(dir.path(), &env);
        product(&shop, "lime", 3).await;
        let id = order(&shop, "u5", "lime", 1).await["id"].as_i64().unwrap();
        assert_eq!(id, 1, "a fresh database starts its ids again");
        eventually(
            &format!("order 1 of database {round} to be cancelled"),
            async || shop.get("/api/orders/1").await["status"] == "CANCELLED",
        )
        .await;
        assert_eq!(shop.get("/api/products/lime").await["reserved"], 0);
        shop.stop();
    }
    redis_cleanup(&prefix);
}
