//! The Redis backend over TLS (`rediss://`), against a private server whose certificate is
//! signed by a test CA. A test binary of its own: it sets the process-wide `SSL_CERT_FILE`.

// A failed step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mq_core::redis::{RedisBroker, RedisConfig};
use mq_core::testkit::{body, drain};
use mq_core::{Broker, ConsumeFrom, ConsumerOptions, Message, SendOptions, Subscription};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for `localhost` and 127.0.0.1, signed by it.
fn certificates(dir: &Path) -> support::TlsFiles {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let mut ca = vec!["req", "-x509", "-nodes", "-days", "2"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=mq test CA",
    ]);
    openssl(dir, &ca);
    let mut csr = vec!["req", "-new", "-nodes"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(dir, &csr);
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\n\
         subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ],
    );
    support::TlsFiles {
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
        ca: dir.join("ca.crt"),
    }
}

/// `rediss://` by host name and by IP address: send, subscribe, receive, acknowledge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_urls_work_end_to_end() {
    if !support::have("openssl", "version") || !support::have("redis-server", "--version") {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let files = certificates(certs.path());
    // The client trusts the test CA through rustls-native-certs, which reads this variable.
    std::env::set_var("SSL_CERT_FILE", &files.ca);
    let Some(server) = support::OwnRedis::start(None, Some(files)) else {
        return;
    };
    for (n, url) in [
        format!("rediss://localhost:{}", server.port),
        format!("rediss://127.0.0.1:{}", server.port),
    ]
    .into_iter()
    .enumerate()
    {
        let broker = RedisBroker::connect(
            RedisConfig::new(&url)
                .prefix(format!("tls{n}"))
                .command_timeout(Duration::from_secs(5)),
        )
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}\nserver log:\n{}", server.log()));
        broker.create_topic("secure", 2).await.unwrap();
        let consumer = broker
            .subscribe(
                Subscription::new("secure", "g"),
                ConsumerOptions::new().consume_from(ConsumeFrom::First),
            )
            .await
            .unwrap();
        for i in 0..4 {
            broker
                .send(
                    Message::new("secure", format!("t{i}")).with_tag("x"),
                    SendOptions::new(),
                )
                .await
                .unwrap();
        }
        let got = drain(&*consumer, 4, Duration::from_secs(10), true).await;
        let mut bodies: Vec<String> = got.iter().map(body).collect();
        bodies.sort();
        assert_eq!(bodies, ["t0", "t1", "t2", "t3"], "through {url}");
        assert_eq!(broker.lag("g", "secure").await.unwrap(), Some(0));
        drop(consumer);
        broker.shutdown().await.unwrap();
    }

    // The same port does not speak plain RESP: a `redis://` URL fails at connect, clearly.
    let plain = format!("redis://127.0.0.1:{}", server.port);
    let started = std::time::Instant::now();
    let err = RedisBroker::connect(
        RedisConfig::new(&plain)
            .prefix("tls-plain")
            .command_timeout(Duration::from_secs(1)),
    )
    .await
    .expect_err("plain RESP to a TLS port");
    assert!(err.to_string().contains(&plain), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}
