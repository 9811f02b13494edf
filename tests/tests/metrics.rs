//! `GET /metrics` of the reference server (`examples/erp_backend`, run as a process) on a
//! real redis-server: a scripted workload (product reads that miss then hit, a login and a
//! logout, tampered and unknown session cookies, a cookie signed with the previous secret,
//! Redis killed and restarted), then the scrapes, parsed with a real Prometheus parser
//! (`prometheus_client.parser`, the Prometheus project's Python client), must show the right counts, histograms with buckets, and the L2
//! availability gauge going 1 → 0 → 1. The Grafana dashboard (`docs/grafana/cache-sdk.json`)
//! must only use names that the scrape has.
//!
//! Set `ERP_BACKEND_BIN` to a built `erp_backend` binary to skip the build.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cache_sdk::session::cookie::encode_value;
use cache_sdk::session::{SessionId, SessionSecrets};
use cache_sdk_tests::{free_port, RedisServer};
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);

/// The example binary, built once (as `tests/tests/erp_backend.rs` builds it, so that a
/// workspace test run reuses the same build).
fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(bin) = std::env::var("ERP_BACKEND_BIN") {
            return bin.into();
        }
        let exe = std::env::current_exe().expect("test binary path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("<target>/<profile>");
        let target_dir = profile_dir.parent().expect("<target>");
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev",
            Some(other) => other,
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "--quiet", "--workspace", "--all-features"])
            .args(["--example", "erp_backend", "--profile", profile])
            .env("CARGO_TARGET_DIR", target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null())
            .output()
            .expect("run cargo");
        assert!(
            out.status.success(),
            "building examples/erp_backend failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        profile_dir
            .join("examples")
            .join(format!("erp_backend{}", std::env::consts::EXE_SUFFIX))
    })
}

/// A running `erp_backend`, killed on drop.
struct Backend {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Backend {
    async fn start(env: &[(&str, String)]) -> Backend {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("cache-sdk-metrics-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let log = File::create(dir.join("server.log")).expect("log file");
        let mut cmd = Command::new(binary());
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy().into_owned();
            if ["REDIS_", "SESSION_", "CACHE_", "ERP_DB_"]
                .iter()
                .any(|p| name.starts_with(p))
                || [
                    "APP_ENV",
                    "NODE_ENV",
                    "PORT",
                    "HOST",
                    "RUST_LOG",
                    "DATABASE_URL",
                ]
                .contains(&name.as_str())
            {
                cmd.env_remove(name);
            }
        }
        let child = cmd
            .env("PORT", port.to_string())
            .env("HOST", "127.0.0.1")
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start erp_backend");
        let mut backend = Backend { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = backend.child.try_wait().ok().flatten() {
                panic!("erp_backend exited with {status}:\n{}", backend.logs());
            }
            if let Ok(r) = try_send(port, "GET", "/healthz", &[], b"").await {
                if r.status == 200 {
                    return backend;
                }
            }
            assert!(Instant::now() < deadline, "no answer:\n{}", backend.logs());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    async fn send(&self, method: &str, path: &str, cookie: Option<&str>, body: &[u8]) -> Reply {
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(c) = cookie {
            headers.push(("Cookie", c));
        }
        try_send(self.port, method, path, &headers, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    async fn get(&self, path: &str, cookie: Option<&str>) -> Reply {
        self.send("GET", path, cookie, b"").await
    }

    /// `GET /metrics`, parsed by `prometheus-parse`; also the raw text.
    async fn scrape(&self) -> Metrics {
        let r = self.get("/metrics", None).await;
        assert_eq!(r.status, 200);
        assert!(
            r.header("content-type")
                .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
            "{:?}",
            r.headers
        );
        Metrics::parse(String::from_utf8(r.body).expect("UTF-8"))
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `name=value` of the cookie the answer sets.
    fn cookie(&self) -> String {
        let set = self.header("set-cookie").expect("a Set-Cookie");
        set.split(';').next().unwrap_or_default().trim().to_owned()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON")
    }
}

/// One request on its own connection (`Connection: close`, answers are small and not
/// chunked by this server except `/metrics`, which is read to the end).
async fn try_send(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Reply> {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| std::io::Error::other("timed out"))??;
    let bad = || std::io::Error::other("malformed answer");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(bad)?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v == "chunked")
    {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n").ok_or_else(bad)?;
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..eol]).trim(), 16)
                .map_err(|_| bad())?;
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(..size).ok_or_else(bad)?);
            rest = rest.get(size + 2..).ok_or_else(bad)?;
        }
        body = out;
    }
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// One scrape, as the Prometheus project's Python client parses it.
struct Metrics {
    text: String,
    /// Every sample: its family's type, its name (`_bucket`, `_sum`, `_count` for the parts
    /// of a histogram; the family's name for a counter), labels and value.
    samples: Vec<Sample>,
}

#[derive(Debug, Deserialize)]
struct Sample {
    kind: String,
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the exposition text with `prometheus_client.parser` (the Prometheus project's
/// Python client; `scripts/test.sh` installs it): any line it cannot read fails the test.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        name = family.name if family.type in ("counter", "gauge") else s.name
        out.append({"kind": family.type, "name": name, "labels": s.labels, "value": s.value})
json.dump(out, sys.stdout)
"#;

impl Metrics {
    fn parse(text: String) -> Metrics {
        // scripts/test.sh names the interpreter that has the parser when it is not the
        // first `python3` on PATH (e.g. Debian's package beside a pyenv Python).
        let python = std::env::var("CACHE_SDK_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut child = Command::new(python)
            .args(["-c", PARSE])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 (with prometheus_client: pip install prometheus-client)");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write the scrape");
        let out = child.wait_with_output().expect("python3");
        assert!(
            out.status.success(),
            "the Prometheus parser refused the scrape: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        let samples = serde_json::from_slice(&out.stdout).expect("the parser's JSON");
        Metrics { text, samples }
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The value of the counter or gauge `name` with these labels, summed over the other
    /// labels (0 when absent).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels)
            .map(|s| {
                assert!(
                    s.kind == "counter" || s.kind == "gauge",
                    "{name}: {}",
                    s.kind
                );
                s.value
            })
            .sum()
    }

    /// The number of observations of histogram `name` with these labels, checking that it
    /// is a real histogram (buckets, not a summary).
    fn observations(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let bucket = format!("{name}_bucket");
        let buckets = self.matching(&bucket, labels).count();
        let count = format!("{name}_count");
        let counts: Vec<&Sample> = self.matching(&count, labels).collect();
        assert!(
            counts.iter().all(|s| s.kind == "histogram"),
            "{name} is not a histogram"
        );
        assert!(
            counts.is_empty() || buckets > 3 * counts.len(),
            "{name}: too few buckets"
        );
        counts.iter().map(|s| s.value as u64).sum()
    }

    /// Every sample name in the text (`_bucket`, `_sum`, `_count` included).
    fn names(&self) -> BTreeSet<String> {
        self.text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| l.split(['{', ' ']).next())
            .map(str::to_owned)
            .collect()
    }
}

/// Scrapes until `done` holds (at most `within`); the last scrape.
async fn scrape_until(
    server: &Backend,
    within: Duration,
    done: impl Fn(&Metrics) -> bool,
) -> Metrics {
    let deadline = Instant::now() + within;
    loop {
        // Any call may be the one that finds Redis gone or back.
        server.get("/healthz", None).await;
        let m = server.scrape().await;
        if done(&m) || Instant::now() > deadline {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_workload_shows_in_the_scrape_and_the_dashboard_names_exist() {
    let mut redis = RedisServer::start();
    let server = Backend::start(&[
        ("REDIS_URL", redis.url()),
        ("SESSION_SECRET", "new-secret,old-secret".into()),
    ])
    .await;
    let before = server.scrape().await;
    assert_eq!(
        before.value("cache_l2_available", &[]),
        1.0,
        "starts on Redis"
    );

    // Product reads: the first one loads, the next ones hit a tier.
    for _ in 0..5 {
        assert_eq!(server.get("/api/products/2", None).await.status, 200);
    }
    // A login, a session read and a logout.
    let login = server
        .send(
            "POST",
            "/api/auth/login",
            None,
            &serde_json::to_vec(&json!({"username": "alice", "password": "alice-pass"})).unwrap(),
        )
        .await;
    assert_eq!(login.status, 200);
    let cookie = login.cookie();
    assert_eq!(
        server.get("/api/user/profile", Some(&cookie)).await.status,
        200
    );
    // Tampered cookies: the signature's last character changed (three requests).
    let (name, value) = cookie.split_once('=').unwrap();
    let mut tampered = value.to_owned();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    for _ in 0..3 {
        let r = server
            .get("/api/user/profile", Some(&format!("{name}={tampered}")))
            .await;
        assert_eq!(r.status, 401);
    }
    // Correctly signed cookies for sessions that do not exist: one under the current
    // secret, one under the previous one (a rotation used).
    for secret in ["new-secret", "old-secret"] {
        let signed = SessionSecrets::new([secret])
            .unwrap()
            .sign(&SessionId::generate());
        let r = server
            .get(
                "/api/user/profile",
                Some(&format!("{name}={}", encode_value(&signed))),
            )
            .await;
        assert_eq!(r.status, 401);
    }
    assert_eq!(
        server
            .send("POST", "/api/auth/logout", Some(&cookie), b"{}")
            .await
            .status,
        200
    );

    let m = server.scrape().await;
    let delta =
        |name: &str, labels: &[(&str, &str)]| m.value(name, labels) - before.value(name, labels);
    assert_eq!(delta("cache_session_created", &[]), 1.0);
    assert_eq!(delta("cache_session_destroyed", &[]), 1.0);
    assert_eq!(
        delta(
            "cache_session_rejected",
            &[("cache_session_reason", "bad_signature")]
        ),
        3.0
    );
    assert_eq!(
        delta(
            "cache_session_rejected",
            &[("cache_session_reason", "unknown_id")]
        ),
        2.0
    );
    assert_eq!(delta("cache_session_secret_rotations", &[]), 1.0);
    assert_eq!(
        m.observations(
            "http_server_request_duration",
            &[
                ("http_route", "/api/products/{id}"),
                ("http_response_status_code", "200")
            ]
        ),
        5
    );
    // The counters are the same ones `Stats` reports.
    let stats = server.get("/api/cache/stats", None).await.json();
    let m = server.scrape().await;
    let requests = |tier: &str, result: &str| {
        m.value(
            "cache_requests",
            &[("cache_tier", tier), ("cache_result", result)],
        )
    };
    assert_eq!(requests("l1", "hit"), stats["l1Hits"].as_f64().unwrap());
    assert_eq!(requests("l1", "miss"), stats["l1Misses"].as_f64().unwrap());
    assert_eq!(
        requests("l2", "hit") + requests("fallback", "hit"),
        stats["l2Hits"].as_f64().unwrap()
    );
    assert_eq!(
        requests("fallback", "hit") + requests("fallback", "miss"),
        0.0
    );
    assert!(
        requests("l1", "hit") + requests("l2", "hit") >= 4.0,
        "product reads hit"
    );
    assert_eq!(
        m.value("cache_loads", &[]),
        stats["loads"].as_f64().unwrap()
    );
    assert!(m.value("cache_loads", &[]) >= 1.0);
    assert!(m.observations("cache_load_duration", &[("cache_load_result", "ok")]) >= 1);
    assert!(m.observations("cache_redis_duration", &[]) >= 3);
    assert_eq!(m.value("cache_l2_outages", &[]), 0.0);

    // Redis goes away: the gauge drops to 0, reads are served by the fallback.
    redis.kill();
    let down = scrape_until(&server, Duration::from_secs(10), |m| {
        m.value("cache_l2_available", &[]) == 0.0
    })
    .await;
    assert_eq!(
        down.value("cache_l2_available", &[]),
        0.0,
        "{}",
        server.logs()
    );
    for id in [3, 4] {
        assert_eq!(
            server
                .get(&format!("/api/products/{id}"), None)
                .await
                .status,
            200
        );
    }
    let down = server.scrape().await;
    assert_eq!(down.value("cache_l2_outages", &[]), 1.0);
    assert!(
        down.value("cache_redis_errors", &[("error_type", "unreachable")])
            + down.value("cache_redis_errors", &[("error_type", "timeout")])
            >= 1.0
    );
    assert_eq!(
        down.value("cache_redis_errors", &[("error_type", "rejected")]),
        0.0
    );
    assert!(down.value("cache_requests", &[("cache_tier", "fallback")]) >= 2.0);
    assert!(down.value("cache_fallback_operations", &[]) >= 2.0);
    assert!(down.value("cache_entries", &[("cache_tier", "fallback")]) >= 2.0);
    assert!(down.value("cache_fallback_bytes", &[]) > 0.0);

    // Redis is back: the gauge returns to 1 and the outage's length is recorded.
    redis.restart();
    let up = scrape_until(&server, Duration::from_secs(10), |m| {
        m.value("cache_l2_available", &[]) == 1.0
    })
    .await;
    assert_eq!(
        up.value("cache_l2_available", &[]),
        1.0,
        "{}",
        server.logs()
    );
    let up = scrape_until(&server, Duration::from_secs(5), |m| {
        m.value("cache_replay_pending", &[]) == 0.0
    })
    .await;
    assert_eq!(up.observations("cache_l2_outage_duration", &[]), 1);
    assert!(
        up.value(
            "cache_replay_writes",
            &[("cache_replay_result", "replayed")]
        ) >= 2.0,
        "the products read during the outage were written back"
    );
    assert_eq!(up.value("cache_l2_outages", &[]), 1.0);

    // Every name the dashboard queries is in the scrape.
    let names = up.names();
    let dashboard = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/grafana/cache-sdk.json"),
    )
    .expect("docs/grafana/cache-sdk.json");
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).expect("JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 8, "the dashboard has queries");
    let mut used = BTreeSet::new();
    for expr in &exprs {
        for token in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if token.starts_with("cache_") || token.starts_with("http_server_") {
                used.insert(token.to_owned());
            }
        }
    }
    let missing: Vec<_> = used
        .iter()
        .filter(|n| !names.contains(*n))
        .filter(|n| !is_label(n))
        .collect();
    assert!(
        missing.is_empty(),
        "names in the dashboard but not in the scrape: {missing:?}"
    );
}

/// Label names the dashboard uses inside `{…}` and `by (…)`.
fn is_label(name: &str) -> bool {
    [
        "cache_tier",
        "cache_result",
        "cache_operation",
        "cache_load_result",
        "cache_timeout",
        "cache_refresh_state",
        "cache_replay_result",
        "cache_session_reason",
    ]
    .contains(&name)
}

/// Every `expr` of the dashboard's targets.
fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}
