//! Redis for the backend's tests: the server of `REDIS_URL` (default 127.0.0.1:6379), a
//! namespace per test, removed afterwards. Without Redis the tests say so loudly and skip,
//! unless `MQ_REQUIRE_REDIS=1` (as in CI), where they fail.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

/// The URL of the shared server, if one answers.
pub fn redis_url() -> Option<String> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let ok = redis::Client::open(url.as_str())
        .ok()
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)).ok())
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c).ok());
    if ok.is_some() {
        return Some(url);
    }
    let why = format!("no Redis answers at {url}");
    if std::env::var("MQ_REQUIRE_REDIS").is_ok_and(|v| v == "1") {
        panic!("MQ_REQUIRE_REDIS=1 but {why}");
    }
    eprintln!("\n*** SKIPPED: {why}. Set REDIS_URL or start redis-server to run this test. ***\n");
    None
}

/// A key prefix no other test uses; its keys are deleted on drop.
pub struct Namespace {
    pub url: String,
    pub prefix: String,
}

impl Namespace {
    pub fn new(url: &str) -> Self {
        Namespace {
            url: url.to_owned(),
            prefix: format!("mqtest-{}", mq_core::MessageId::new()),
        }
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if std::env::var_os("MQ_KEEP_KEYS").is_some() {
            eprintln!("keys kept under {}:*", self.prefix);
            return;
        }
        let Ok(client) = redis::Client::open(self.url.as_str()) else {
            return;
        };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(2)) else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query(&mut conn)
            .unwrap_or_default();
        for chunk in keys.chunks(500) {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(chunk).query(&mut conn);
        }
    }
}

/// Says loudly that a test is skipped because `why`, or panics under `MQ_REQUIRE_REDIS=1`.
pub fn skip(why: &str) {
    if std::env::var("MQ_REQUIRE_REDIS").is_ok_and(|v| v == "1") {
        panic!("MQ_REQUIRE_REDIS=1 but {why}");
    }
    eprintln!("\n*** SKIPPED: {why}. Install it to run this test. ***\n");
}

/// Whether `program` runs (`program version_arg`); if not, says so (see [`skip`]).
pub fn have(program: &str, version_arg: &str) -> bool {
    let ok = std::process::Command::new(program)
        .arg(version_arg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        skip(&format!("`{program}` is not installed"));
    }
    ok
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The TLS files of a private server (`--tls-*` arguments).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub ca: std::path::PathBuf,
}

/// A private `redis-server` of one test: a free port, its data in a temporary directory with
/// every write fsynced to the append-only file, so that a SIGKILL loses nothing a client was
/// told is stored. [`kill`](OwnRedis::kill) and [`restart`](OwnRedis::restart) simulate an
/// outage; it is killed when dropped.
pub struct OwnRedis {
    /// The plain port, or the TLS port when started with TLS.
    pub port: u16,
    password: Option<String>,
    tls: Option<TlsFiles>,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    /// Starts a server, or returns `None` (saying so) when `redis-server` is not installed.
    pub fn start(password: Option<&str>, tls: Option<TlsFiles>) -> Option<Self> {
        if !have("redis-server", "--version") {
            return None;
        }
        let mut server = OwnRedis {
            port: free_port(),
            password: password.map(str::to_owned),
            tls,
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
        };
        server.launch();
        Some(server)
    }

    /// `redis://[:password@]127.0.0.1:port` (plain servers).
    pub fn url(&self) -> String {
        match &self.password {
            Some(pw) => format!("redis://:{pw}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// Whether the process is running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL, and waits until the process is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory (it reloads its AOF).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    fn launch(&mut self) {
        let dir = self.dir.path();
        let mut cmd = std::process::Command::new("redis-server");
        cmd.arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .args(["--daemonize", "no", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"]);
        match &self.tls {
            None => {
                cmd.arg("--port").arg(self.port.to_string());
            }
            Some(tls) => {
                cmd.args(["--port", "0", "--tls-port"])
                    .arg(self.port.to_string())
                    .arg("--tls-cert-file")
                    .arg(&tls.cert)
                    .arg("--tls-key-file")
                    .arg(&tls.key)
                    .arg("--tls-ca-cert-file")
                    .arg(&tls.ca)
                    .args(["--tls-auth-clients", "no"]);
            }
        }
        if let Some(pw) = &self.password {
            cmd.arg("--requirepass").arg(pw);
        }
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        self.child = Some(cmd.spawn().expect("spawning redis-server"));
        self.wait_ready();
    }

    /// Waits until the server answers PING (plain) or accepts connections (TLS).
    fn wait_ready(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if !self.running() {
                panic!("redis-server exited at start; its log:\n{}", self.log());
            }
            if self.ready() {
                return;
            }
            if std::time::Instant::now() > deadline {
                panic!("redis-server did not get ready; its log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn ready(&self) -> bool {
        if self.tls.is_some() {
            return std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok();
        }
        redis::Client::open(self.url().as_str())
            .ok()
            .and_then(|c| {
                c.get_connection_with_timeout(Duration::from_millis(500))
                    .ok()
            })
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c).ok())
            .is_some()
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
