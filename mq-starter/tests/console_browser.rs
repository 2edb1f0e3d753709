//! The web console (`/mq/`) in a real browser: headless Chromium over WebDriver (Debian's
//! `chromium` and `chromium-driver`), against an application on the embedded broker serving
//! `running.admin_router()` on a free port. The test signs in with the token, reads the topics,
//! groups (with lag) and listeners views, pauses and resumes a listener, resends and deletes
//! dead letters, checking through the API that they were delivered again or removed, and finds
//! the dead-lettered message by its id and by its key with its trace, and a delayed message by
//! its key while it waits, with its due time. Each view is one step (a method of `Page`) run in
//! order on one page.
//!
//! Without chromedriver the test says so loudly and skips, unless `MQ_REQUIRE_BROWSER=1` (as in
//! CI), where it fails. `MQ_CHROMEDRIVER` and `MQ_CHROMIUM` point at other binaries.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt as _;
use mq_starter::prelude::*;
use serde_json::{json, Value};
use tokio::sync::watch;

const TOKEN: &str = "console-test-token";
const WAIT: Duration = Duration::from_secs(20);

const PAYMENTS: &str = "console-payments";
const PAYMENTS_GROUP: &str = "console-payments-group";
const PAYMENT_KEY: &str = "<b>pay-1</b>";
const PAYMENT_BODY: &str = "<img src=x onerror=\"document.title='injected'\">";
const ORDERS: &str = "console-orders";
const ORDERS_GROUP: &str = "console-orders-group";
/// A topic no listener reads, for a message that waits an hour in the schedule.
const REMINDERS: &str = "console-reminders";
const REMINDER_KEY: &str = "reminder-1";

/// What the listeners share with the test.
#[derive(Clone)]
struct Shared {
    /// Until set, payments are dead-lettered at once.
    healed: Arc<AtomicBool>,
    /// Payments acknowledged.
    paid: Arc<AtomicUsize>,
    /// Orders wait for `true`, so that they stay in flight and count as lag.
    gate: Arc<watch::Sender<bool>>,
}

#[mq_listener(
    topic = "console-payments",
    group = "console-payments-group",
    enabled = "${test.console:false}"
)]
async fn console_payments(State(shared): State<Shared>) -> Outcome {
    if shared.healed.load(Ordering::SeqCst) {
        shared.paid.fetch_add(1, Ordering::SeqCst);
        Outcome::ack()
    } else {
        Outcome::dead_letter("payment provider down")
    }
}

#[mq_listener(
    topic = "console-orders",
    group = "console-orders-group",
    enabled = "${test.console:false}"
)]
async fn console_orders(State(shared): State<Shared>) {
    let mut open = shared.gate.subscribe();
    // A closed gate (the test ended) lets the delivery finish too.
    let _ = open.wait_for(|open| *open).await;
}

fn required() -> bool {
    std::env::var("MQ_REQUIRE_BROWSER").is_ok_and(|v| v == "1")
}

fn binary(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from)
}

/// A chromedriver process on a free port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start(path: &PathBuf) -> Driver {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", path.display()));
        let mut driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = std::time::Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = driver.child.try_wait() {
                panic!("chromedriver exited with {status}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "chromedriver never listened on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    }

    async fn browser(&self) -> Client {
        let chromium = binary("MQ_CHROMIUM", "/usr/bin/chromium");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                // As root in a container: no sandbox, no /dev/shm to speak of.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1400,1000"],
            }),
        );
        // Two rustls crypto providers are linked in (ring for Redis TLS, aws-lc for the
        // WebDriver client): rustls then wants one chosen. A second install is refused; fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        ClientBuilder::rustls()
            .expect("rustls' native roots")
            .capabilities(caps)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("WebDriver session on {}: {e}", self.url))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serves the admin router on a free port, as an application does.
async fn serve(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    addr
}

/// `GET` an admin API route with the token: the test's own look, beside the browser's.
async fn api(addr: SocketAddr, path: &str) -> Value {
    let answer = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let status = answer.status();
    let body = answer.text().await.unwrap();
    assert!(status.is_success(), "GET {path}: {status} {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// The browser on the console, and what the steps check against.
struct Page {
    browser: Client,
    addr: SocketAddr,
    shared: Shared,
    template: MqTemplate,
}

impl Page {
    async fn click(&self, css: &str) {
        self.browser
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    async fn text(&self, css: &str) -> Option<String> {
        let element = self.browser.find(Locator::Css(css)).await.ok()?;
        element.text().await.ok()
    }

    /// Waits until the element's text is `want`; with `refresh`, reloads the view meanwhile.
    async fn text_becomes(&self, css: &str, want: &str, refresh: bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let got = self.text(css).await;
            if got.as_deref() == Some(want) {
                return;
            }
            self.no_error().await;
            assert!(
                tokio::time::Instant::now() < deadline,
                "{css} shows {got:?}, not {want:?}"
            );
            if refresh {
                self.click("#refresh").await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Fails with the console's error message, if it shows one.
    async fn no_error(&self) {
        let error = self.browser.find(Locator::Id("error")).await.unwrap();
        if error.is_displayed().await.unwrap() {
            panic!(
                "the console shows an error: {}",
                error.text().await.unwrap()
            );
        }
    }

    /// Opening the console asks for the token; once given, the topics view loads.
    async fn sign_in(&self) {
        let url = format!("http://{}/mq/", self.addr);
        self.browser.goto(&url).await.unwrap();
        self.browser
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css("#token-form:not([hidden])"))
            .await
            .unwrap();
        let error = self.text("#error").await.unwrap_or_default();
        assert!(error.starts_with("unauthorized"), "{error:?}");
        let input = self.browser.find(Locator::Id("token-input")).await.unwrap();
        input.send_keys(TOKEN).await.unwrap();
        self.click("#token-submit").await;
    }

    async fn topics(&self) {
        let row = |topic: &str, col: &str| {
            format!(r#"tr[data-testid="topic-row"][data-topic="{topic}"] td[data-col="{col}"]"#)
        };
        self.text_becomes(&row(PAYMENTS, "kind"), "user", false)
            .await;
        self.text_becomes(&row(PAYMENTS, "messages"), "1", false)
            .await;
        self.text_becomes(&row(ORDERS, "messages"), "3", false)
            .await;
        self.no_error().await;
    }

    async fn groups(&self) {
        self.click("#nav-groups").await;
        let lag = format!(r#"tr[data-group="{ORDERS_GROUP}"] td[data-col="lag"]"#);
        self.text_becomes(&lag, "3", true).await;
        self.click(&format!(
            r#"tr[data-group="{ORDERS_GROUP}"] button[data-testid="group-open"]"#
        ))
        .await;
        self.text_becomes("#group-detail-name", ORDERS_GROUP, false)
            .await;
        let cells = self
            .browser
            .find_all(Locator::Css(&format!(
                r#"tr[data-testid="group-queue-row"][data-topic="{ORDERS}"] td[data-col="lag"]"#
            )))
            .await
            .unwrap();
        let mut lag = 0;
        for cell in cells {
            lag += cell.text().await.unwrap().parse::<u64>().unwrap();
        }
        assert_eq!(lag, 3, "the per-queue lag adds up to the group's");
        self.no_error().await;
    }

    async fn listeners(&self) {
        self.click("#nav-listeners").await;
        let row =
            |name: &str, col: &str| format!(r#"tr[data-listener="{name}"] td[data-col="{col}"]"#);
        self.text_becomes(&row("console_orders", "in_flight"), "3", true)
            .await;
        self.text_becomes(&row("console_payments", "state"), "running", false)
            .await;
        self.click(r#"tr[data-listener="console_payments"] button[data-testid="listener-pause"]"#)
            .await;
        self.text_becomes(&row("console_payments", "state"), "paused", false)
            .await;
        self.text_becomes("#status", "Paused console_payments", false)
            .await;
        let listeners = api(self.addr, "/mq/api/listeners").await;
        let payments = listeners
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == "console_payments")
            .unwrap();
        assert_eq!(payments["state"], "paused");
        self.click(r#"tr[data-listener="console_payments"] button[data-testid="listener-resume"]"#)
            .await;
        self.text_becomes(&row("console_payments", "state"), "running", false)
            .await;
        self.no_error().await;
    }

    async fn dead_letters(&self) {
        self.click("#nav-dead-letters").await;
        let group_row =
            format!(r#"tr[data-testid="dlq-group-row"][data-group="{PAYMENTS_GROUP}"]"#);
        self.text_becomes(&format!(r#"{group_row} td[data-col="count"]"#), "1", true)
            .await;
        self.click(&format!(r#"{group_row} button[data-testid="dlq-open"]"#))
            .await;
        self.text_becomes("#dlq-group-name", PAYMENTS_GROUP, false)
            .await;
        let row = self
            .browser
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(r#"tr[data-testid="dlq-row"]"#))
            .await
            .unwrap();
        let seq = row.attr("data-seq").await.unwrap().unwrap();
        let row_css = format!(r#"tr[data-testid="dlq-row"][data-seq="{seq}"]"#);
        self.text_becomes(
            &format!(r#"{row_css} td[data-col="last_error"]"#),
            "payment provider down",
            false,
        )
        .await;
        self.click(&format!(r#"{row_css} button[data-testid="dlq-show"]"#))
            .await;
        self.text_becomes(r#"#dlq-item tr[data-key="topic"] td"#, PAYMENTS, false)
            .await;
        self.text_becomes(
            &format!(r#"{row_css} td[data-col="keys"]"#),
            PAYMENT_KEY,
            false,
        )
        .await;
        self.text_becomes(r#"#dlq-item tr[data-key="body"] td"#, PAYMENT_BODY, false)
            .await;
        assert_eq!(
            self.browser.title().await.unwrap(),
            "mq console",
            "markup ran"
        );

        self.shared.healed.store(true, Ordering::SeqCst);
        self.click(&format!(r#"{row_css} button[data-testid="dlq-resend"]"#))
            .await;
        self.text_becomes(
            "#status",
            &format!("Resent 1 dead letter (seq {seq}) of {PAYMENTS_GROUP}"),
            false,
        )
        .await;
        self.no_error().await;

        // Delivered again, and settled: the group has no lag left on the topic.
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.shared.paid.load(Ordering::SeqCst) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the resent payment never came"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        loop {
            let groups = api(self.addr, "/mq/api/groups").await;
            let payments = groups
                .as_array()
                .unwrap()
                .iter()
                .find(|g| g["group"] == PAYMENTS_GROUP)
                .cloned()
                .unwrap();
            if payments["lag"] == 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "lag stays: {payments}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(self.shared.paid.load(Ordering::SeqCst), 1);
        // Through the API: it left the dead-letter queue, went to the group's retry topic, and
        // the group settled it there.
        let page = api(self.addr, &format!("/mq/api/dead-letters/{PAYMENTS_GROUP}")).await;
        assert_eq!(page["items"], json!([]), "{page}");
        let stats = api(self.addr, &format!("/mq/api/groups/{PAYMENTS_GROUP}")).await;
        let retry = format!("%RETRY%{PAYMENTS_GROUP}%{PAYMENTS}");
        let committed: u64 = stats["queues"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|q| q["topic"] == retry.as_str())
            .map(|q| q["committed"].as_u64().unwrap())
            .sum();
        assert_eq!(committed, 1, "{stats}");
        // The page says so too.
        self.text_becomes(
            r#"#dlq-items-table tr[data-testid="empty"] td"#,
            "none",
            false,
        )
        .await;
    }

    /// Finds the payment by its id and by its key, with its trace.
    async fn message_search(&self, id: &str) {
        self.click("#nav-messages").await;
        let input = self
            .browser
            .find(Locator::Id("search-input"))
            .await
            .unwrap();
        input.send_keys(id).await.unwrap();
        self.click("#search-submit").await;
        let row = format!(
            r#"tr[data-testid="message-row"][data-message-id="{id}"][data-topic="{PAYMENTS}"] td[data-col="keys"]"#
        );
        self.text_becomes(&row, PAYMENT_KEY, false).await;
        self.text_becomes("#trace-id", id, false).await;
        // Oldest first: the original's store.
        self.text_becomes(
            r#"#trace-table tr[data-kind="stored"] td[data-col="topic"]"#,
            PAYMENTS,
            false,
        )
        .await;
        self.no_error().await;

        self.click("#search-by-key").await;
        input.clear().await.unwrap();
        input.send_keys(PAYMENT_KEY).await.unwrap();
        self.click("#search-submit").await;
        self.text_becomes(&row, PAYMENT_KEY, false).await;
        self.click(&format!(
            r#"tr[data-message-id="{id}"][data-topic="{PAYMENTS}"] button[data-testid="message-trace"]"#
        ))
        .await;
        self.text_becomes("#trace-id", id, false).await;
        self.no_error().await;
    }

    /// Finds a delayed message by its key while it waits: no offset yet, its due time in the
    /// "Stored (or due)" column, and a trace that says it is scheduled.
    async fn waiting_message_search(&self, id: &str, due: &str) {
        self.click("#nav-messages").await;
        self.click("#search-by-key").await;
        let input = self
            .browser
            .find(Locator::Id("search-input"))
            .await
            .unwrap();
        input.clear().await.unwrap();
        input.send_keys(REMINDER_KEY).await.unwrap();
        self.click("#search-submit").await;
        let row = format!(
            r#"tr[data-testid="message-row"][data-message-id="{id}"][data-topic="{REMINDERS}"][data-waiting="true"]"#
        );
        self.text_becomes(
            &format!(r#"{row} td[data-col="store_timestamp"]"#),
            &format!("due {due}"),
            false,
        )
        .await;
        self.text_becomes(&format!(r#"{row} td[data-col="queue_offset"]"#), "–", false)
            .await;
        self.click(&format!(r#"{row} button[data-testid="message-trace"]"#))
            .await;
        self.text_becomes("#trace-id", id, false).await;
        self.text_becomes(
            r#"#trace-table tr[data-kind="scheduled"] td[data-col="topic"]"#,
            REMINDERS,
            false,
        )
        .await;
        self.no_error().await;
    }

    /// Two more dead letters: one deleted (a second click confirms), the other resent with
    /// "Resend all".
    async fn delete_and_resend_all(&self) {
        self.shared.healed.store(false, Ordering::SeqCst);
        for key in ["pay-2", "pay-3"] {
            self.template
                .message(PAYMENTS)
                .key(key)
                .bytes("pay again")
                .send()
                .await
                .unwrap();
        }
        let rows = r#"#dlq-items-table tr[data-testid="dlq-row"]"#;
        let deadline = tokio::time::Instant::now() + WAIT;
        let seqs = loop {
            let mut seqs = Vec::new();
            for row in self.browser.find_all(Locator::Css(rows)).await.unwrap() {
                if let Ok(Some(seq)) = row.attr("data-seq").await {
                    seqs.push(seq);
                }
            }
            if seqs.len() == 2 {
                break seqs;
            }
            assert!(tokio::time::Instant::now() < deadline, "rows {seqs:?}");
            self.click("#refresh").await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        };

        let delete = format!(
            r#"tr[data-seq="{}"] button[data-testid="dlq-delete"]"#,
            seqs[0]
        );
        self.click(&delete).await;
        self.text_becomes(&delete, "Really delete?", false).await;
        self.click(&delete).await;
        self.text_becomes(
            "#status",
            &format!(
                "Deleted 1 dead letter (seq {}) of {PAYMENTS_GROUP}",
                seqs[0]
            ),
            false,
        )
        .await;

        self.shared.healed.store(true, Ordering::SeqCst);
        self.click("#dlq-resend-all").await;
        self.text_becomes(
            "#status",
            &format!("Resent 1 dead letter(s) of {PAYMENTS_GROUP}"),
            false,
        )
        .await;
        self.no_error().await;
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.shared.paid.load(Ordering::SeqCst) < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the resent payment never came"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let page = api(self.addr, &format!("/mq/api/dead-letters/{PAYMENTS_GROUP}")).await;
        assert_eq!(page["items"], json!([]), "{page}");
        // The deleted one is gone for good: only the resent one was paid.
        assert_eq!(self.shared.paid.load(Ordering::SeqCst), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_broker_and_resends_dead_letters() {
    let driver_path = binary("MQ_CHROMEDRIVER", "/usr/bin/chromedriver");
    if !driver_path.exists() {
        let why = format!("no chromedriver at {}", driver_path.display());
        if required() {
            panic!("MQ_REQUIRE_BROWSER=1 but {why}");
        }
        eprintln!(
            "\n*** SKIPPED: {why}. `apt-get install chromium chromium-driver` to run this test. ***\n"
        );
        return;
    }
    let shared = Shared {
        healed: Arc::default(),
        paid: Arc::default(),
        gate: Arc::new(watch::channel(false).0),
    };
    let app = support::start(
        &["console"],
        &format!("mq:\n  admin:\n    token: {TOKEN}\n"),
        |a| a.with_state(shared.clone()),
    )
    .await;
    let addr = serve(app.running.admin_router()).await;

    let template = app.running.template();
    // Markup in a key and a body must reach the page as text.
    let payment_id = template
        .message(PAYMENTS)
        .key(PAYMENT_KEY)
        .bytes(PAYMENT_BODY)
        .send()
        .await
        .unwrap()
        .message_id
        .to_string();
    for i in 0..3 {
        template
            .send_bytes(ORDERS, format!("order {i}"))
            .await
            .unwrap();
    }
    // Due in an hour, to the millisecond (the console shows times in milliseconds).
    let due = std::time::UNIX_EPOCH
        + Duration::from_millis(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64
                + 3_600_000,
        );
    let reminder_id = template
        .message(REMINDERS)
        .key(REMINDER_KEY)
        .delay(Delay::At(due))
        .bytes("call back")
        .send()
        .await
        .unwrap()
        .message_id
        .to_string();
    let due = humantime::format_rfc3339_millis(due).to_string();
    let broker = app.running.broker();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !broker
        .dead_letter_counts()
        .await
        .unwrap()
        .iter()
        .any(|(g, n)| g == PAYMENTS_GROUP && *n == 1)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the payment was never dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let driver = Driver::start(&driver_path);
    let page = Page {
        browser: driver.browser().await,
        addr,
        shared: shared.clone(),
        template: app.running.template(),
    };
    let steps = AssertUnwindSafe(async {
        page.sign_in().await;
        page.topics().await;
        page.groups().await;
        page.listeners().await;
        page.dead_letters().await;
        page.delete_and_resend_all().await;
        page.message_search(&payment_id).await;
        page.waiting_message_search(&reminder_id, &due).await;
    })
    .catch_unwind()
    .await;

    // Clean up on failure too: the browser, the waiting orders, the application.
    let _ = page.browser.clone().close().await;
    drop(driver);
    shared.gate.send_replace(true);
    app.running.shutdown().await.unwrap();
    if let Err(panic) = steps {
        std::panic::resume_unwind(panic);
    }
}
