//! express-session + connect-redis compatibility (`SessionFormat::Express`).
//!
//! Without Node: the reference test vectors and the fixtures that express-session 1.18 +
//! connect-redis 9 produced (`tests/fixtures/express/login.json`, made by
//! `tests/node/make-fixtures.js`). With Node (`npm ci --prefix tests/node` first): the Node
//! app in `tests/node/app.js` and a Rust app share sessions on one redis-server, both ways.
//! The Node test is skipped when node or the installed packages are missing, unless
//! `CACHE_SDK_REQUIRE_NODE=1`, which makes their absence a failure.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::http::StatusCode;
use cache_sdk::session::cookie::{encode_value, find_cookie};
use cache_sdk::session::{SessionConfig, SessionFormat, SessionId, SessionSecrets, Sessions};
use cache_sdk_tests::RedisServer;
use common::*;
use std::io::{Read, Write};

fn express_config(secrets: &[&str]) -> SessionConfig {
    config(secrets).format(SessionFormat::Express)
}

fn fixture() -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/express/login.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json")
}

/// The record with its `cookie.expires` value blanked.
fn without_expires(record: &str) -> String {
    let start = record.find(r#""expires":""#).expect("expires") + 11;
    let end = start + record[start..].find('"').expect("end quote");
    format!("{}{}", &record[..start], &record[end..])
}

fn s<'a>(v: &'a serde_json::Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or_else(|| panic!("fixture field {k}"))
}

#[test]
fn reference_test_vectors() {
    // From the format reference: (secret, sid, signature).
    let vectors = [
        (
            "keyboard cat",
            "OLNk22Xhb51PmM3cpkVC_jWsveshh3KM",
            "atD7bENXG/PIsMcTFadNRQBUnndXQA1MRa+8UeDVpBg",
        ),
        (
            "demo-secret",
            "WOef9FivrmsL5Jm4ZfKIhGODeF-zLMFp",
            "ZF5YvS5w7Qw9sN+fkGxpt2ZVp52MdBEnapIuVT7/6Rg",
        ),
        (
            "pässwörd-✓",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "wndKITGMhZyUKtiy7r55FxtHEhB6KNS4mEMcq0l44Zo",
        ),
        (
            "old-secret",
            "rvWfOEkxVb2A_Tmjoz2DHzgTtg2p2BaU",
            "J8rwnd8wqav2+c0NHdJDHV6IVXJit0Sfm1inQChsCaw",
        ),
        (
            "new-secret",
            "rvWfOEkxVb2A_Tmjoz2DHzgTtg2p2BaU",
            "vRYAhGdRYiyRZWMjV4nvNICIwiZY1tiN+BIMarQL7IQ",
        ),
    ];
    for (secret, sid, sig) in vectors {
        let secrets = SessionSecrets::new([secret]).expect("secret");
        let id = SessionId::parse(sid).expect("sid");
        assert_eq!(secrets.sign(&id), format!("s:{sid}.{sig}"), "{secret}");
        let wire = encode_value(&secrets.sign(&id));
        assert_eq!(
            wire,
            format!("s%3A{sid}.{}", sig.replace('+', "%2B").replace('/', "%2F"))
        );
        let header = format!("connect.sid={wire}");
        let value = find_cookie([header.as_str()], "connect.sid").expect("cookie");
        assert_eq!(secrets.verify(&value).expect("verifies").id, id);
    }
    // Rotation: a cookie by old-secret verifies under [new, old] and is marked for re-signing.
    let rotated = SessionSecrets::new(["new-secret", "old-secret"]).expect("secrets");
    let v = rotated
        .verify("s:rvWfOEkxVb2A_Tmjoz2DHzgTtg2p2BaU.J8rwnd8wqav2+c0NHdJDHV6IVXJit0Sfm1inQChsCaw")
        .expect("old cookie accepted");
    assert!(v.rotated);
    assert!(rotated
        .sign(&v.id)
        .ends_with("vRYAhGdRYiyRZWMjV4nvNICIwiZY1tiN+BIMarQL7IQ"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_reads_and_writes_what_express_wrote() {
    let fx = fixture();
    let server = RedisServer::start();
    let cache = cache_on(Some(&server)).await;
    let sessions = common::sessions(&cache, express_config(&[s(&fx, "secret")]));

    // The cookie Node set verifies, and carries the id Node stored under.
    let value = find_cookie([s(&fx, "cookie")], "connect.sid").expect("cookie");
    let id = sessions.verify(&value).expect("signature").id;
    assert_eq!(id.as_str(), s(&fx, "sid"));
    assert!(s(&fx, "setCookie").ends_with("; HttpOnly; SameSite=Lax"));

    // The record Node stored decodes; re-encoded at the same instant it is byte-identical.
    server.set_raw(&id.key(), s(&fx, "record").as_bytes()).await;
    let loaded = sessions
        .load::<UserSession>(&id)
        .await
        .expect("load")
        .expect("decodes");
    assert_eq!(
        loaded.data,
        UserSession {
            user_id: Some(1),
            username: "alice".into(),
            visits: 0
        }
    );
    assert_eq!(loaded.ttl, Duration::from_secs(86_400));
    let saved_at = loaded.saved_at_ms.expect("from cookie.expires");
    let record: serde_json::Value = serde_json::from_str(s(&fx, "record")).expect("json");
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Exact<'a> {
        user_id: u64,
        username: &'a str,
    }
    let sessions_raw = Sessions::new(
        cache_sdk::session::CacheSessionStore::new(cache.clone()),
        express_config(&[s(&fx, "secret")]),
    )
    .expect("sessions");
    let id2 = sessions_raw
        .create(
            &Exact {
                user_id: 1,
                username: "alice",
            },
            None,
        )
        .await
        .expect("create");
    // Byte for byte what express-session writes, but for the `expires` instant.
    let ours = String::from_utf8(server.get_raw(&id2.key()).await.expect("raw")).expect("utf8");
    assert_eq!(without_expires(&ours), without_expires(s(&fx, "record")));
    assert_eq!(
        record["cookie"]["expires"]
            .as_str()
            .and_then(|e| e.get(..10))
            .map(str::len),
        Some(10)
    );
    assert!(saved_at > 0);

    // Through the layer: Node's cookie opens the session; a change keeps Node's own field.
    server
        .set_raw(&id.key(), s(&fx, "recordWithCart").as_bytes())
        .await;
    let app = app(sessions.clone());
    let r = send(&app, "GET", "/profile", Some(s(&fx, "cookie"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("alice"));
    let r = send(&app, "POST", "/visit", Some(s(&fx, "cookie"))).await;
    assert_eq!(r.body, "1");
    let stored: serde_json::Value =
        serde_json::from_slice(&server.get_raw(&id.key()).await.expect("raw")).expect("json");
    assert_eq!(
        stored["cart"],
        serde_json::json!(["apple"]),
        "Node's field kept"
    );
    assert_eq!(stored["visits"], 1);
    assert_eq!(stored["userId"], 1);
    let text = String::from_utf8(server.get_raw(&id.key()).await.expect("raw")).expect("utf8");
    assert!(
        text.starts_with(r#"{"cookie":{"originalMaxAge":86400000,"expires":""#),
        "{text}"
    );
    let pttl = server.pttl(&id.key()).await;
    assert!(
        pttl > 86_000_000 && pttl <= 86_400_000,
        "TTL from cookie.originalMaxAge: {pttl}"
    );

    // A record without a cookie object (Node would answer 500) is a fresh session here.
    server.set_raw(&id.key(), br#"{"userId":1}"#).await;
    assert_eq!(
        send(&app, "GET", "/profile", Some(s(&fx, "cookie")))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn express_touch_is_an_expiry_update_to_original_max_age() {
    let server = RedisServer::start();
    let cache = cache_on(Some(&server)).await;
    let sessions = common::sessions(
        &cache,
        express_config(&["s"]).touch_interval(Duration::ZERO),
    );
    let id = SessionId::parse("rvWfOEkxVb2A_Tmjoz2DHzgTtg2p2BaU").expect("id");
    // Written by another side with a one-minute maxAge and a stale expires.
    server
        .set_raw(&id.key(), br#"{"cookie":{"originalMaxAge":60000,"expires":"2020-01-01T00:00:00.000Z","httpOnly":true,"path":"/"},"userId":4,"username":"dan"}"#)
        .await;
    server.cli(&["EXPIRE", &id.key(), "10"]);
    let app = app(sessions.clone());
    let cookie = format!("connect.sid={}", encode_value(&sessions.cookie_value(&id)));
    let before = command_calls(&server);
    let r = send(&app, "GET", "/profile", Some(&cookie)).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "connect-redis does not check cookie.expires either"
    );
    let d = delta(&server, &before);
    assert_eq!((d.get("get"), d.get("set")), (Some(&1), None), "{d:?}");
    let pttl = server.pttl(&id.key()).await;
    assert!(
        pttl > 50_000 && pttl <= 60_000,
        "touched to originalMaxAge: {pttl}"
    );
}

// ---- Node, live ----

struct NodeApp {
    child: Child,
    port: u16,
}

impl Drop for NodeApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node_app(redis: &RedisServer, secret: &str) -> Option<NodeApp> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("node");
    let required = std::env::var("CACHE_SDK_REQUIRE_NODE").is_ok_and(|v| v == "1");
    let ready = dir.join("node_modules/express-session").exists()
        && Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !ready {
        assert!(
            !required,
            "node or tests/node/node_modules is missing: run `npm ci --prefix tests/node`"
        );
        eprintln!("skipping the live Node test: node or tests/node/node_modules missing (run `npm ci --prefix tests/node`)");
        return None;
    }
    let mut child = Command::new("node")
        .arg(dir.join("app.js"))
        .env("REDIS_URL", redis.url())
        .env("SESSION_SECRET", secret)
        .env("PORT", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start node");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("node output");
    let port = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("node app did not start: {line:?}"));
    Some(NodeApp { child, port })
}

/// One HTTP/1.1 request to the Node app: (status, Set-Cookie pair if any, body).
fn node(
    app: &NodeApp,
    method: &str,
    path: &str,
    cookie: Option<&str>,
) -> (u16, Option<String>, String) {
    // Plain blocking I/O: the Node process answers on its own, nothing here needs the runtime.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", app.port)).expect("connect");
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n{cookie}Connection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).expect("write");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("http response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let set_cookie = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("set-cookie")
            .then(|| v.trim().split(';').next().unwrap_or("").to_owned())
    });
    (status, set_cookie, body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_and_rust_share_sessions_both_ways() {
    cache_sdk_tests::init_tracing();
    let server = RedisServer::start();
    let secret = "shared-secret";
    let Some(node_app) = node_app(&server, secret) else {
        return;
    };
    // This test is about the wire format, request after request with no pause: sessions
    // are read from Redis every time (coherence off), so the Rust side never acts on an L1
    // copy whose invalidation by Node's write is still in flight. Express sessions cached
    // in L1 and evicted by other clients' writes: `coherence.rs`.
    let cache = cache_sdk::Cache::builder()
        .redis_url(server.url())
        .require_redis(true)
        .coherence(cache_sdk::Coherence::Off)
        .build()
        .await
        .expect("cache");
    let rust = app(common::sessions(&cache, express_config(&[secret])));

    // Node logs in; Rust reads and changes that session; Node sees the change.
    let (status, cookie, _) = node(&node_app, "POST", "/login?user=1&name=alice", None);
    assert_eq!(status, 200);
    let node_cookie = cookie.expect("node set a cookie");
    let r = send(&rust, "GET", "/profile", Some(&node_cookie)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let user: UserSession = serde_json::from_str(&r.body).expect("json");
    assert_eq!((user.user_id, user.username.as_str()), (Some(1), "alice"));
    let (status, _, cart) = node(&node_app, "POST", "/cart?item=apple", Some(&node_cookie));
    assert_eq!((status, cart.as_str()), (200, r#"["apple"]"#));
    assert_eq!(
        send(&rust, "POST", "/visit", Some(&node_cookie)).await.body,
        "1"
    );
    let (status, _, body) = node(&node_app, "GET", "/profile", Some(&node_cookie));
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        seen,
        serde_json::json!({"userId":1,"username":"alice","visits":1,"cart":["apple"]})
    );

    // Rust logs in; Node reads and changes that session; Rust sees the change.
    let login = send(&rust, "POST", "/login?user=2&name=bob", None).await;
    let rust_cookie = login.cookie();
    assert!(rust_cookie.starts_with("connect.sid=s%3A"));
    let (status, _, body) = node(&node_app, "GET", "/profile", Some(&rust_cookie));
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        (seen["userId"].as_u64(), seen["username"].as_str()),
        (Some(2), Some("bob"))
    );
    let (_, _, visits) = node(&node_app, "POST", "/visit", Some(&rust_cookie));
    assert_eq!(visits, "1");
    let r = send(&rust, "GET", "/profile", Some(&rust_cookie)).await;
    let user: UserSession = serde_json::from_str(&r.body).expect("json");
    assert_eq!(user.visits, 1);
    let key = format!("sess:{}", id_of(&rust_cookie));
    let pttl = server.pttl(&key).await;
    assert!(pttl > 86_000_000, "{pttl}");

    // Logging out on one side ends the session on the other.
    assert_eq!(
        send(&rust, "POST", "/logout", Some(&rust_cookie))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        node(&node_app, "GET", "/profile", Some(&rust_cookie)).0,
        401
    );
    assert_eq!(
        node(&node_app, "POST", "/logout", Some(&node_cookie)).0,
        200
    );
    assert_eq!(
        send(&rust, "GET", "/profile", Some(&node_cookie))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}
