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
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cache_sdk::session::cookie::encode_value;
use cache_sdk::session::{SessionId, SessionSecrets};
use cache_sdk_tests::RedisServer;
use serde::Deserialize;
use serde_json::json;

mod common;

use common::erp::{send, Backend, Response};

/// Requests as the workload sends them: JSON, with a cookie or without.
impl Backend {
    async fn send(&self, method: &str, path: &str, cookie: Option<&str>, body: &[u8]) -> Response {
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(c) = cookie {
            headers.push(("Cookie", c));
        }
        send(self.port, method, path, &headers, body).await
    }

    async fn get(&self, path: &str, cookie: Option<&str>) -> Response {
        self.send("GET", path, cookie, b"").await
    }

    /// `GET /metrics`, parsed by `prometheus_client`; also the raw text.
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
    let url = redis.url();
    let server = Backend::start(&[
        ("REDIS_URL", url.as_str()),
        ("SESSION_SECRET", "new-secret,old-secret"),
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
    let cookie = login.cookie().expect("a Set-Cookie");
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
