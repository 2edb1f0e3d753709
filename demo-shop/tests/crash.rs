//! The demo shop SIGKILLed at seeded random moments under concurrent load: one process on the
//! embedded defaults killed many times in a row with no clean stop (some kills early in a
//! process's life, before any periodic persistence, most later; every restart reopens the same
//! data directory), and three processes sharing the work on Redis and PostgreSQL, one of them
//! killed mid-load and restarted. Then, through every process, once everything has settled:
//! - every order answered `201` exists, and none is still `CREATED` after its cancel delay;
//! - every order answered `PAID` is `PAID`; no order was cancelled before its time;
//! - one points credit per paid order (points = the sum over the user's paid orders);
//! - stock is conserved: stock = initial − paid quantities, reserved = 0;
//! - exactly one ledger entry per bill whose payment callback was answered, at most one for
//!   any bill; every timeline reads `CREATED` then `PAID` or `CANCELLED`.
//!
//! `DEMO_SHOP_KILLS=<n>` (default 10) sets the number of kills of the embedded test;
//! `DEMO_SHOP_SEED=<seed>` replays the schedule of a printed seed (the load itself depends on
//! timing).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::{redis_answers, redis_cleanup, PgDatabase, Shop};
use tokio::sync::watch;

const USERS: usize = 6;
const SKUS: [&str; 3] = ["sku-a", "sku-b", "sku-c"];
const INITIAL_STOCK: i64 = 1_000_000;
const PRICE_CENTS: i64 = 250;
const CANCEL_AFTER: Duration = Duration::from_secs(2);
const WORKERS: usize = 4;

/// What the load generator was told.
#[derive(Default)]
struct Ledger {
    /// Orders answered `201`: user and lines.
    placed: HashMap<i64, (String, BTreeMap<String, i64>)>,
    /// Orders answered `200 PAID`.
    paid: HashSet<i64>,
    /// Bills answered `201`.
    fees: HashSet<i64>,
    /// Bills whose payment callback was answered `200`.
    fees_paid: HashSet<i64>,
    /// A pay answer `200` whose order was not `PAID`.
    violations: Vec<String>,
}

/// Where the shop's live processes listen.
type Bases = watch::Receiver<Vec<String>>;

/// The shop's processes, each with its data directory and environment; the load generator
/// sees the live ones.
struct Fleet {
    dirs: Vec<PathBuf>,
    envs: Vec<Vec<(String, String)>>,
    shops: Vec<Option<Shop>>,
    publish: watch::Sender<Vec<String>>,
    reopen: Vec<Duration>,
}

impl Fleet {
    fn new(dirs: Vec<PathBuf>, envs: Vec<Vec<(String, String)>>) -> (Fleet, Bases) {
        let (publish, bases) = watch::channel(Vec::new());
        let shops = dirs.iter().map(|_| None).collect();
        let fleet = Fleet {
            dirs,
            envs,
            shops,
            publish,
            reopen: Vec::new(),
        };
        (fleet, bases)
    }

    fn announce(&self) {
        self.publish.send_replace(
            self.shops
                .iter()
                .flatten()
                .map(|s| s.base.clone())
                .collect(),
        );
    }

    async fn start(&mut self, i: usize) {
        let (dir, env) = (self.dirs[i].clone(), self.envs[i].clone());
        let (shop, took) = tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let began = Instant::now();
            let shop = Shop::start(&dir, &env);
            (shop, began.elapsed())
        })
        .await
        .unwrap();
        self.reopen.push(took);
        self.shops[i] = Some(shop);
        self.announce();
    }

    fn kill(&mut self, i: usize) {
        if let Some(shop) = self.shops[i].take() {
            self.announce();
            shop.kill();
        }
    }

    fn live(&self) -> Vec<&Shop> {
        self.shops.iter().flatten().collect()
    }

    async fn stop(mut self) {
        let shops: Vec<Shop> = self.shops.iter_mut().filter_map(Option::take).collect();
        tokio::task::spawn_blocking(move || shops.into_iter().for_each(Shop::stop))
            .await
            .unwrap();
    }
}

fn user(i: usize) -> String {
    format!("user-{i}")
}

async fn post(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    body: Value,
) -> Option<(StatusCode, Value)> {
    let resp = http
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .ok()?;
    let status = resp.status();
    let v = resp.json().await.unwrap_or(Value::Null);
    Some((status, v))
}

/// One client: places orders, pays most of them soon after, now and then posts a bill and
/// has it paid with repeated callbacks.
async fn worker(
    id: usize,
    seed: u64,
    mut bases: Bases,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    fee_seq: Arc<AtomicU64>,
) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    while !stop.load(Ordering::Relaxed) {
        let Some(url) = pick(&mut rng, &bases.borrow_and_update()) else {
            let _ = tokio::time::timeout(Duration::from_millis(100), bases.changed()).await;
            continue;
        };
        if rng.u32(0..100) < 88 {
            let who = user(rng.usize(..USERS));
            let mut lines = BTreeMap::new();
            for _ in 0..rng.usize(1..=2) {
                *lines
                    .entry(SKUS[rng.usize(..SKUS.len())].to_owned())
                    .or_insert(0) += rng.i64(1..=3);
            }
            let items: Vec<Value> = lines
                .iter()
                .map(|(sku, q)| json!({"sku": sku, "quantity": q}))
                .collect();
            let Some((status, order)) = post(
                &http,
                &url,
                "/api/orders",
                json!({"user_id": who, "items": items}),
            )
            .await
            else {
                continue;
            };
            if status != StatusCode::CREATED {
                continue;
            }
            let order_id = order["id"].as_i64().unwrap();
            ledger.lock().unwrap().placed.insert(order_id, (who, lines));
            if rng.u32(0..100) >= 60 {
                continue;
            }
            tokio::time::sleep(Duration::from_millis(rng.u64(0..150))).await;
            // A payment that failed on a dead process is tried again on the next one, as a
            // client would, while the order is young enough.
            let placed = Instant::now();
            while placed.elapsed() < Duration::from_millis(1200) && !stop.load(Ordering::Relaxed) {
                let Some(url) = pick(&mut rng, &bases.borrow()) else {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    continue;
                };
                let path = format!("/api/orders/{order_id}/pay");
                match post(
                    &http,
                    &url,
                    &path,
                    json!({"payment_id": format!("pay-{order_id}")}),
                )
                .await
                {
                    Some((StatusCode::OK, after)) => {
                        let mut l = ledger.lock().unwrap();
                        if after["status"] == "PAID" {
                            l.paid.insert(order_id);
                        } else {
                            l.violations.push(format!("pay answered 200 with {after}"));
                        }
                        break;
                    }
                    Some(_) => break,
                    None => tokio::time::sleep(Duration::from_millis(30)).await,
                }
            }
        } else {
            let n = fee_seq.fetch_add(1, Ordering::Relaxed);
            let Some((status, fee)) = post(
                &http,
                &url,
                "/api/fees",
                json!({"household": format!("h-{id}-{n}"), "period": "2026-12", "amount_cents": 1000 + n}),
            )
            .await
            else {
                continue;
            };
            if status != StatusCode::CREATED {
                continue;
            }
            let fee_id = fee["id"].as_i64().unwrap();
            ledger.lock().unwrap().fees.insert(fee_id);
            let mut calls = tokio::task::JoinSet::new();
            for _ in 0..rng.usize(2..=3) {
                let (http, url) = (http.clone(), url.clone());
                calls.spawn(async move {
                    post(
                        &http,
                        &url,
                        &format!("/api/fees/{fee_id}/payment-notify"),
                        json!({"transaction_id": format!("tx-{fee_id}")}),
                    )
                    .await
                });
            }
            while let Some(r) = calls.join_next().await {
                if matches!(r.unwrap(), Some((StatusCode::OK, _))) {
                    ledger.lock().unwrap().fees_paid.insert(fee_id);
                }
            }
        }
    }
}

fn pick(rng: &mut fastrand::Rng, bases: &[String]) -> Option<String> {
    (!bases.is_empty()).then(|| bases[rng.usize(..bases.len())].clone())
}

fn seed() -> u64 {
    std::env::var("DEMO_SHOP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                % 1_000_000_000
        })
}

fn time(v: &Value) -> SystemTime {
    humantime::parse_rfc3339(v.as_str().unwrap()).unwrap()
}

async fn all_orders(shop: &Shop) -> BTreeMap<i64, Value> {
    let mut out = BTreeMap::new();
    for u in 0..USERS {
        let list = shop.get(&format!("/api/orders?user_id={}", user(u))).await;
        for o in list.as_array().unwrap() {
            out.insert(o["id"].as_i64().unwrap(), o.clone());
        }
    }
    out
}

/// Polls `check` until it returns no complaint or `limit` passes; the last complaints fail the
/// test.
async fn settle<F>(what: &str, limit: Duration, mut check: F)
where
    F: AsyncFnMut() -> Vec<String>,
{
    let began = Instant::now();
    loop {
        let complaints = check().await;
        if complaints.is_empty() {
            return;
        }
        if began.elapsed() > limit {
            panic!(
                "{what}: {} violations after {limit:?}, first: {:?}",
                complaints.len(),
                &complaints[..complaints.len().min(10)]
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Starts the load generator against the fleet's live processes.
fn load(
    seed: u64,
    bases: &Bases,
    ledger: &Arc<Mutex<Ledger>>,
    stop: &Arc<AtomicBool>,
) -> tokio::task::JoinSet<()> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let fee_seq = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..WORKERS {
        workers.spawn(worker(
            w,
            rng.u64(..),
            bases.clone(),
            ledger.clone(),
            stop.clone(),
            fee_seq.clone(),
        ));
    }
    workers
}

async fn products(shop: &Shop) {
    for sku in SKUS {
        let (status, body) = shop
            .post(
                "/api/products",
                json!({"sku": sku, "name": sku, "price_cents": PRICE_CENTS, "stock": INITIAL_STOCK}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
}

/// Stops the load and returns what it was told.
async fn finish(
    mut workers: tokio::task::JoinSet<()>,
    ledger: Arc<Mutex<Ledger>>,
    stop: &AtomicBool,
) -> Ledger {
    stop.store(true, Ordering::Relaxed);
    while let Some(w) = workers.join_next().await {
        w.unwrap();
    }
    let ledger = Arc::try_unwrap(ledger).ok().unwrap().into_inner().unwrap();
    assert!(ledger.violations.is_empty(), "{:?}", ledger.violations);
    ledger
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shop_keeps_its_promises_under_repeated_sigkill() {
    let kills: usize = std::env::var("DEMO_SHOP_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let seed = seed();
    println!("demo-shop crash test: {kills} kills, seed {seed} (DEMO_SHOP_SEED={seed} replays it)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().unwrap();
    let (mut fleet, bases) = Fleet::new(vec![dir.path().to_path_buf()], vec![Vec::new()]);
    fleet.start(0).await;
    products(fleet.live()[0]).await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let workers = load(rng.u64(..), &bases, &ledger, &stop);
    for k in 0..kills {
        // One life in three is short: killed before the broker's periodic persistence.
        let life = if rng.u32(0..3) == 0 {
            rng.u64(50..500)
        } else {
            rng.u64(500..3000)
        };
        tokio::time::sleep(Duration::from_millis(life)).await;
        fleet.kill(0);
        let placed = ledger.lock().unwrap().placed.len();
        println!(
            "kill {}/{kills} after {life} ms ({placed} orders answered so far)",
            k + 1
        );
        fleet.start(0).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ledger = finish(workers, ledger, &stop).await;
    assert!(
        ledger.placed.len() >= 10 * kills,
        "too little load to prove anything: {} orders",
        ledger.placed.len()
    );
    let summary = verify(&ledger, &fleet.live(), Duration::from_secs(60)).await;
    let mut reopen = fleet.reopen.clone();
    reopen.sort();
    println!(
        "demo-shop crash test: seed {seed}, {kills} kills, {summary}; restart to listening p50 {:?}, max {:?}",
        reopen.get(reopen.len() / 2).copied().unwrap_or_default(),
        reopen.last().copied().unwrap_or_default(),
    );
    fleet.stop().await;
}

/// Three processes on Redis and PostgreSQL behind one load generator, one SIGKILLed mid-load
/// and restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_shops_on_redis_and_postgres_share_the_work_through_a_kill() {
    if !redis_answers() {
        return;
    }
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let seed = seed();
    println!("demo-shop multi-process test: seed {seed} (DEMO_SHOP_SEED={seed} replays it)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let run = format!(
        "demo-shop-fleet-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let dir = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = (0..3).map(|i| dir.path().join(format!("p{i}"))).collect();
    let envs = (0..3)
        .map(|i| {
            vec![
                ("MQ_PROFILES".to_owned(), "redis-broker".to_owned()),
                ("MQ__BROKER__REDIS__PREFIX".to_owned(), run.clone()),
                ("MQ__IDEMPOTENCY__PREFIX".to_owned(), format!("{run}-idem")),
                // What the settling below counts on: a killed process's idempotency leases
                // run out in 3 s, not the default minute.
                ("MQ__IDEMPOTENCY__LEASE".to_owned(), "3s".to_owned()),
                // Kept by the harness and shown if the test fails.
                ("RUST_LOG".to_owned(), "info,sqlx=warn".to_owned()),
                ("MQ__INSTANCE_NAME".to_owned(), format!("shop-{i}")),
                (
                    "MQ__BROKER__REDIS__HEARTBEAT_INTERVAL".to_owned(),
                    "300ms".to_owned(),
                ),
                ("MQ__SHOP__DATABASE__URL".to_owned(), db.url.clone()),
            ]
        })
        .collect();
    let (mut fleet, bases) = Fleet::new(dirs, envs);
    for i in 0..3 {
        fleet.start(i).await;
    }
    products(fleet.live()[0]).await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let workers = load(rng.u64(..), &bases, &ledger, &stop);
    let victim = rng.usize(..3);
    let life = rng.u64(1500..4000);
    tokio::time::sleep(Duration::from_millis(life)).await;
    fleet.kill(victim);
    println!("killed shop-{victim} after {life} ms");
    tokio::time::sleep(Duration::from_millis(rng.u64(200..1500))).await;
    fleet.start(victim).await;
    tokio::time::sleep(Duration::from_millis(rng.u64(1500..3000))).await;
    let ledger = finish(workers, ledger, &stop).await;
    assert!(
        ledger.placed.len() >= 20,
        "too little load: {} orders",
        ledger.placed.len()
    );
    // A killed process leaves what it held to run out: its members' heartbeats (0.9 s here),
    // its idempotency leases (3 s here, renewed while a handler runs), the transaction
    // checker's lock (30 s).
    let summary = verify(&ledger, &fleet.live(), Duration::from_secs(120)).await;
    println!("demo-shop multi-process test: seed {seed}, shop-{victim} killed, {summary}");
    fleet.stop().await;
    redis_cleanup(&run);
    drop(db);
}

/// Checks the promises through `shops[0]`, and that every other process shows the same
/// orders, points and stock; every order must have settled within `settle_within`. Returns a
/// summary of what was checked.
async fn verify(ledger: &Ledger, shops: &[&Shop], settle_within: Duration) -> String {
    let shop = shops[0];
    // Every order settles: PAID or CANCELLED, never cancelled early, never unpaid.
    settle("orders left CREATED", settle_within, async || {
        all_orders(shop)
            .await
            .values()
            .filter(|o| o["status"] == "CREATED")
            .map(|o| format!("order {} still CREATED", o["id"]))
            .collect()
    })
    .await;
    let orders = all_orders(shop).await;
    let mut complaints = Vec::new();
    for (id, (who, lines)) in &ledger.placed {
        match orders.get(id) {
            None => complaints.push(format!("order {id} answered 201 is gone")),
            Some(o) => {
                let items: BTreeMap<String, i64> = o["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| {
                        (
                            i["sku"].as_str().unwrap().to_owned(),
                            i["quantity"].as_i64().unwrap(),
                        )
                    })
                    .collect();
                if o["user_id"] != who.as_str() || &items != lines {
                    complaints.push(format!("order {id} is not what was placed: {o}"));
                }
            }
        }
    }
    for id in &ledger.paid {
        if orders.get(id).is_some_and(|o| o["status"] != "PAID") {
            complaints.push(format!(
                "order {id} answered PAID is {}",
                orders[id]["status"]
            ));
        }
    }
    for o in orders.values().filter(|o| o["status"] == "CANCELLED") {
        let (created, cancelled) = (time(&o["created_at"]), time(&o["cancelled_at"]));
        if cancelled < created + CANCEL_AFTER {
            complaints.push(format!("order {} cancelled before its time: {o}", o["id"]));
        }
    }
    assert!(
        complaints.is_empty(),
        "{} violations: {complaints:#?}",
        complaints.len()
    );

    // One points credit per paid order.
    let paid: Vec<&Value> = orders.values().filter(|o| o["status"] == "PAID").collect();
    let mut expected_points: HashMap<String, i64> = HashMap::new();
    for o in &paid {
        *expected_points
            .entry(o["user_id"].as_str().unwrap().to_owned())
            .or_default() += o["total_cents"].as_i64().unwrap() / 100;
    }
    settle("points", Duration::from_secs(30), async || {
        let mut out = Vec::new();
        for u in 0..USERS {
            let got = shop.get(&format!("/api/users/{}/points", user(u))).await["points"]
                .as_i64()
                .unwrap();
            let want = expected_points.get(&user(u)).copied().unwrap_or(0);
            if got != want {
                out.push(format!(
                    "{} has {got} points, paid orders give {want}",
                    user(u)
                ));
            }
        }
        out
    })
    .await;

    // Stock is conserved.
    for sku in SKUS {
        let sold: i64 = paid
            .iter()
            .flat_map(|o| o["items"].as_array().unwrap())
            .filter(|i| i["sku"] == sku)
            .map(|i| i["quantity"].as_i64().unwrap())
            .sum();
        let p = shop.get(&format!("/api/products/{sku}")).await;
        assert_eq!(
            (
                p["stock"].as_i64().unwrap(),
                p["reserved"].as_i64().unwrap()
            ),
            (INITIAL_STOCK - sold, 0),
            "{sku}: stock not conserved ({sold} sold)"
        );
    }

    // One ledger entry per paid bill.
    settle("ledger", Duration::from_secs(30), async || {
        let mut out = Vec::new();
        for fee in &ledger.fees {
            let entries = shop.get(&format!("/api/fees/{fee}/ledger")).await;
            let n = entries.as_array().unwrap().len();
            let status = shop.get(&format!("/api/fees/{fee}")).await["status"].clone();
            let want = usize::from(ledger.fees_paid.contains(fee) || status == "PAID");
            if n != want {
                out.push(format!(
                    "bill {fee} ({status}) has {n} ledger entries, not {want}"
                ));
            }
        }
        out
    })
    .await;

    // Every timeline: CREATED, then the order's outcome, once each.
    settle("timelines", Duration::from_secs(30), async || {
        let mut out = Vec::new();
        for (id, o) in &orders {
            let events: Vec<Value> = shop
                .get(&format!("/api/orders/{id}/events"))
                .await
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["event"].clone())
                .collect();
            if events != vec![json!("CREATED"), o["status"].clone()] {
                out.push(format!(
                    "order {id} ({}) has timeline {events:?}",
                    o["status"]
                ));
            }
        }
        out
    })
    .await;

    // Every process shows the same.
    for other in &shops[1..] {
        assert_eq!(
            all_orders(other).await,
            orders,
            "{} disagrees on orders",
            other.base
        );
        for u in 0..USERS {
            let path = format!("/api/users/{}/points", user(u));
            assert_eq!(
                other.get(&path).await,
                shop.get(&path).await,
                "{}: {path}",
                other.base
            );
        }
        for sku in SKUS {
            let path = format!("/api/products/{sku}");
            assert_eq!(
                other.get(&path).await,
                shop.get(&path).await,
                "{}: {path}",
                other.base
            );
        }
    }
    format!(
        "{} orders answered ({} in the database), {} paid, {} cancelled, {} bills ({} paid)",
        ledger.placed.len(),
        orders.len(),
        paid.len(),
        orders.len() - paid.len(),
        ledger.fees.len(),
        ledger.fees_paid.len(),
    )
}
