//! The reference server `examples/erp_backend`, run as a process (built once by this test
//! with cargo) and driven over real HTTP, against redis-server processes the tests start:
//! login/profile/logout with cookies, products read through the cache, written with
//! `#[cache_put]` and evicted with `#[cache_evict]`, sessions shared by two instances in
//! express-session's format, Redis killed and restarted under a running server, a run with
//! no configuration at all, shutdown on SIGTERM and SIGINT, the product database shared by
//! two instances through one SQLite file, and the development-mode origin control.
//!
//! Set `ERP_BACKEND_BIN` to a built `erp_backend` binary to skip the build.

use std::fs::File;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cache_sdk::codec::{self, Header, TypeTag};
use cache_sdk::session::SessionSecrets;
use cache_sdk::Codec;
use cache_sdk_tests::{free_port, RedisServer};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;

use common::erp::{request, send, server_command, Backend, Response, REQUEST_TIMEOUT};

impl Backend {
    fn client(&self) -> Client {
        Client {
            port: self.port,
            cookie: None,
        }
    }
}

/// Requests to one server, with one cookie jar entry (the session cookie).
#[derive(Debug, Clone)]
struct Client {
    port: u16,
    /// `name=value` of the session cookie.
    cookie: Option<String>,
}

impl Client {
    /// The same cookie, sent to another server.
    fn to(&self, other: &Backend) -> Client {
        Client {
            port: other.port,
            cookie: self.cookie.clone(),
        }
    }

    async fn get(&mut self, path: &str) -> Response {
        self.send("GET", path, None, b"").await
    }

    async fn post_json(&mut self, path: &str, body: &Value) -> Response {
        let body = serde_json::to_vec(body).expect("json");
        self.send("POST", path, Some("application/json"), &body)
            .await
    }

    async fn put_json(&mut self, path: &str, body: &Value) -> Response {
        let body = serde_json::to_vec(body).expect("json");
        self.send("PUT", path, Some("application/json"), &body)
            .await
    }

    async fn login(&mut self, user: &str) -> Response {
        self.post_json(
            "/api/auth/login",
            &json!({"username": user, "password": format!("{user}-pass")}),
        )
        .await
    }

    /// Sends a request (bounded by [`REQUEST_TIMEOUT`]) and keeps the cookie it sets.
    async fn send(
        &mut self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Response {
        let mut headers = Vec::new();
        if let Some(c) = &self.cookie {
            headers.push(("Cookie", c.as_str()));
        }
        if let Some(t) = content_type {
            headers.push(("Content-Type", t));
        }
        let r = send(self.port, method, path, &headers, body).await;
        for c in r.set_cookies() {
            let pair = c.split(';').next().unwrap_or_default().trim();
            let cleared = pair.ends_with('=') || c.contains("Max-Age=0");
            self.cookie = (!cleared).then(|| pair.to_owned());
        }
        r
    }

    /// The session id in the cookie (`name=s%3A<id>.<sig>`).
    fn session_id(&self) -> String {
        let cookie = self.cookie.as_deref().expect("a session cookie");
        let value = cookie.split_once('=').expect("name=value").1;
        let signed = value.strip_prefix("s%3A").expect("s: prefix");
        signed.split('.').next().expect("id").to_owned()
    }
}

// ---------------------------------------------------------------------------------------
// Helpers

/// The product as the server stores it (for decoding the cache's bincode payload).
#[derive(Debug, PartialEq, Deserialize)]
struct Product {
    id: u64,
    name: String,
    price_cents: u64,
    stock: u32,
}

/// Decodes a cached product straight from Redis: the envelope header, then the bincode
/// payload.
async fn cached_product(redis: &RedisServer, id: u64) -> Option<(Product, Header)> {
    let bytes = redis.get_raw(&format!("cache:product:{id}")).await?;
    let header = Header::parse(&bytes).expect("an envelope");
    assert_eq!(header.codec, Codec::Bincode);
    let product =
        codec::decode::<Product>(&bytes, TypeTag::UNTAGGED, usize::MAX).expect("a product");
    Some((product, header))
}

async fn cache_stats(client: &mut Client) -> Value {
    client.get("/api/cache/stats").await.expect(200)
}

/// Polls `path` until `cond` holds for its JSON (at most `within`); returns the last
/// answer. Every answer must be a 200.
async fn wait_for_json(
    client: &mut Client,
    path: &str,
    within: Duration,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let v = client.get(path).await.expect(200);
        if cond(&v) || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn redis_env(redis: &RedisServer) -> Vec<(&'static str, String)> {
    vec![("REDIS_URL", redis.url())]
}

fn pairs<'a>(env: &'a [(&'a str, String)]) -> Vec<(&'a str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_configuration_runs_on_memory_and_sigterm_exits_zero() {
    let mut server = Backend::start(&[]).await;
    let mut client = server.client();

    let health = client.get("/healthz").await.expect(200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["store"], "memory");
    assert_eq!(health["redisConfigured"], false);

    assert_eq!(
        client.login("alice").await.expect(200),
        json!({"success": true})
    );
    assert_eq!(
        client.get("/api/user/profile").await.expect(200),
        json!({"userId": 1, "username": "alice"})
    );
    assert_eq!(
        client.get("/api/session/stats").await.expect(200),
        json!({
            "success": true,
            "store": "memory",
            "totalSessions": 1,
            // The session and alice's session index (`sess-user:1`).
            "redisStats": {"connected": false, "usingFallback": true, "inMemoryKeys": 2}
        })
    );
    let product = client.get("/api/products/1").await.expect(200);
    assert_eq!(
        product,
        json!({"id": 1, "name": "Standard Desk", "priceCents": 1999, "stock": 5})
    );

    let logs = server.logs();
    assert!(logs.contains("Redis is not enabled"), "{logs}");
    assert!(logs.contains("development mode"), "{logs}");
    assert!(logs.contains("SESSION_SECRET is not set"), "{logs}");
    // Development mode: a cookie that works on http://localhost.
    let login = client.login("bob").await;
    assert!(!login.set_cookies()[0].contains("Secure"));

    // An idle keep-alive connection must not hold the shutdown up.
    let mut idle = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(REQUEST_TIMEOUT, idle.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

    let status = server.stop_with("TERM").await;
    assert_eq!(status.code(), Some(0), "{}", server.logs());
    assert!(server.logs().contains("SIGTERM"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_profile_logout_with_cookies() {
    let redis = RedisServer::start();
    let env = redis_env(&redis);
    let server = Backend::start(&pairs(&env)).await;
    let mut client = server.client();

    let health = client.get("/healthz").await.expect(200);
    assert_eq!(
        (health["status"].clone(), health["store"].clone()),
        (json!("ok"), json!("redis"))
    );

    // Not logged in.
    assert_eq!(
        client.get("/api/user/profile").await.expect(401),
        json!({"error": "Not authenticated"})
    );
    // Wrong credentials, for a known and an unknown user.
    for (user, password) in [("alice", "bob-pass"), ("mallory", "alice-pass")] {
        let r = client
            .post_json(
                "/api/auth/login",
                &json!({"username": user, "password": password}),
            )
            .await;
        assert_eq!(r.expect(401), json!({"error": "Invalid credentials"}));
        assert!(r.set_cookies().is_empty());
    }
    // Malformed JSON: 400 with a JSON error; valid JSON of the wrong shape: 422.
    let r = client
        .send(
            "POST",
            "/api/auth/login",
            Some("application/json"),
            b"{\"username\": \"alice\", ",
        )
        .await;
    assert!(r.expect(400)["error"].is_string());
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "{}",
        r.text()
    );
    let r = client
        .post_json("/api/auth/login", &json!({"username": "alice"}))
        .await;
    assert!(r.expect(422)["error"].is_string());
    // Nothing of the above stored a session.
    assert_eq!(
        client.get("/api/session/stats").await.expect(200)["totalSessions"],
        0
    );

    // Login: a session in Redis, a signed HttpOnly cookie.
    let login = client.login("alice").await;
    assert_eq!(login.expect(200), json!({"success": true}));
    let set_cookie = login.set_cookies()[0];
    assert!(set_cookie.starts_with("sid=s%3A"), "{set_cookie}");
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Lax"));
    let first_id = client.session_id();
    let key = format!("sess:{first_id}");
    let record = redis.get_raw(&key).await.expect("session in Redis");
    let record: Value = serde_json::from_slice(&record).expect("a JSON record");
    assert_eq!(record["data"], json!({"userId": 1, "username": "alice"}));
    let pttl = redis.pttl(&key).await;
    assert!(
        (86_000_000..=86_400_000).contains(&pttl),
        "session TTL {pttl} ms"
    );

    assert_eq!(
        client.get("/api/user/profile").await.expect(200),
        json!({"userId": 1, "username": "alice"})
    );
    assert_eq!(
        client.get("/api/session/stats").await.expect(200),
        json!({
            "success": true,
            "store": "redis",
            "totalSessions": 1,
            "redisStats": {"connected": true, "usingFallback": false, "inMemoryKeys": 0}
        })
    );

    // Logging in again regenerates the id: the old record is gone, the old cookie dead.
    let old = client.clone();
    assert_eq!(
        client.login("bob").await.expect(200),
        json!({"success": true})
    );
    let second_id = client.session_id();
    assert_ne!(second_id, first_id);
    assert!(redis.get_raw(&key).await.is_none());
    assert_eq!(old.clone().get("/api/user/profile").await.status, 401);
    assert_eq!(
        client.get("/api/user/profile").await.expect(200),
        json!({"userId": 2, "username": "bob"})
    );

    // Logout: the record is deleted and the cookie cleared.
    let kept = client.clone();
    let out = client.send("POST", "/api/auth/logout", None, b"").await;
    assert_eq!(out.expect(200), json!({"success": true}));
    assert!(out.set_cookies()[0].contains("Max-Age=0"));
    assert!(client.cookie.is_none());
    assert!(redis.get_raw(&format!("sess:{second_id}")).await.is_none());
    assert_eq!(
        kept.clone().get("/api/user/profile").await.expect(401),
        json!({"error": "Not authenticated"})
    );
    assert_eq!(
        client.get("/api/session/stats").await.expect(200)["totalSessions"],
        0
    );
    // Logging out without a session is a success too.
    let again = client.send("POST", "/api/auth/logout", None, b"").await;
    assert_eq!(again.expect(200), json!({"success": true}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn products_are_read_through_written_and_evicted() {
    let redis = RedisServer::start();
    let env = redis_env(&redis);
    let mut server = Backend::start(&pairs(&env)).await;
    let mut client = server.client();
    let desk = json!({"id": 1, "name": "Standard Desk", "priceCents": 1999, "stock": 5});

    // First read: a miss, one query, the value cached in Redis for the `api` preset.
    assert_eq!(client.get("/api/products/1").await.expect(200), desk);
    let stats = cache_stats(&mut client).await;
    assert_eq!(
        (stats["loads"].clone(), stats["dbQueries"].clone()),
        (json!(1), json!(1))
    );
    let (cached, header) = cached_product(&redis, 1).await.expect("cached in Redis");
    assert_eq!(cached.name, "Standard Desk");
    // With its tags (envelope format 2: the tags sit between header and payload).
    let bytes = redis.get_raw("cache:product:1").await.expect("cached");
    let mut tags = codec::tags_of(&bytes).expect("tags");
    tags.sort_unstable();
    assert_eq!(tags, ["catalog", "product:1"]);
    // Fresh for the `api` preset (the envelope's expiry), kept one hour longer in Redis
    // for fail-safe.
    let fresh = header.remaining().expect("an expiry").as_millis();
    assert!(
        (5 * 60_000..=15 * 60_000).contains(&fresh),
        "product TTL {fresh} ms"
    );
    let pttl = redis.pttl("cache:product:1").await;
    assert!(
        (65 * 60_000..=75 * 60_000).contains(&pttl),
        "product TTL plus the fail-safe window {pttl} ms"
    );

    // Further reads: served by the cache, no query.
    for _ in 0..3 {
        assert_eq!(client.get("/api/products/1").await.expect(200), desk);
    }
    let stats = cache_stats(&mut client).await;
    assert_eq!(
        (stats["loads"].clone(), stats["dbQueries"].clone()),
        (json!(1), json!(1))
    );
    // With L1 coherence on, the instance's own write also evicts its L1 entry, so the
    // first of these reads may be an L2 hit; every read is served by a cache tier.
    let hits = stats["l1Hits"].as_u64().unwrap() + stats["l2Hits"].as_u64().unwrap();
    assert!(hits >= 3, "{stats}");
    assert!(stats["l1Hits"].as_u64().unwrap() >= 2, "{stats}");
    assert_eq!(stats["connected"], true);

    // Unknown ids are 404 and never cached; ids that are not numbers are 400.
    for _ in 0..2 {
        assert_eq!(
            client.get("/api/products/101").await.expect(404),
            json!({"error": "Product 101 not found"})
        );
    }
    assert_eq!(cache_stats(&mut client).await["dbQueries"], 3);
    assert_eq!(redis.cli(&["EXISTS", "cache:product:101"]), "0");
    assert!(client.get("/api/products/desk").await.expect(400)["error"].is_string());

    // PUT: the database and the cache get the new value; the next read needs no query.
    let standing = json!({"name": "Standing Desk", "priceCents": 49_900, "stock": 3});
    let put = client.put_json("/api/products/1", &standing).await;
    let new_desk = json!({"id": 1, "name": "Standing Desk", "priceCents": 49_900, "stock": 3});
    assert_eq!(put.expect(200), new_desk);
    assert_eq!(
        cached_product(&redis, 1).await.expect("cached").0,
        Product {
            id: 1,
            name: "Standing Desk".into(),
            price_cents: 49_900,
            stock: 3
        }
    );
    let pttl = redis.pttl("cache:product:1").await;
    assert!((5 * 60_000..=15 * 60_000).contains(&pttl), "{pttl}");
    let queries = cache_stats(&mut client).await["dbQueries"].clone();
    assert_eq!(client.get("/api/products/1").await.expect(200), new_desk);
    assert_eq!(cache_stats(&mut client).await["dbQueries"], queries);
    // An id in the body is accepted when it matches the path.
    let mut with_id = standing.clone();
    with_id["id"] = json!(1);
    assert_eq!(
        client
            .put_json("/api/products/1", &with_id)
            .await
            .expect(200),
        new_desk
    );

    // Bodies that are not a product: nothing changes.
    let refused: [(&[u8], u16); 5] = [
        (
            br#"{"id": 2, "name": "X", "priceCents": 1, "stock": 1}"#,
            422,
        ),
        (
            br#"{"name": "X", "priceCents": 1, "stock": 1, "colour": "red"}"#,
            422,
        ),
        (br#"{"name": "X", "priceCents": 1, "stock": "many"}"#, 422),
        (br#"{"name": "  ", "priceCents": 1, "stock": 1}"#, 422),
        (br#"{"name": "X", "#, 400),
    ];
    for (body, status) in refused {
        let r = client
            .send("PUT", "/api/products/1", Some("application/json"), body)
            .await;
        assert!(r.expect(status)["error"].is_string());
    }
    assert_eq!(
        cached_product(&redis, 1).await.expect("cached").0.name,
        "Standing Desk"
    );
    assert_eq!(
        client
            .put_json("/api/products/500", &standing)
            .await
            .expect(404),
        json!({"error": "Product 500 not found"})
    );

    // DELETE: 204, gone from the database and from Redis.
    let r = client.send("DELETE", "/api/products/1", None, b"").await;
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    assert_eq!(redis.cli(&["EXISTS", "cache:product:1"]), "0");
    assert_eq!(client.get("/api/products/1").await.status, 404);
    assert_eq!(
        client
            .send("DELETE", "/api/products/1", None, b"")
            .await
            .status,
        404
    );

    // Ctrl-C stops it cleanly too.
    let status = server.stop_with("INT").await;
    assert_eq!(status.code(), Some(0), "{}", server.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_sessions_in_express_format() {
    let redis = RedisServer::start();
    let mut env = redis_env(&redis);
    env.push(("SESSION_FORMAT", "express".into()));
    env.push(("SESSION_SECRET", "demo-secret".into()));
    let a = Backend::start(&pairs(&env)).await;
    let b = Backend::start(&pairs(&env)).await;

    let mut on_a = a.client();
    let login = on_a.login("alice").await;
    assert_eq!(login.expect(200), json!({"success": true}));
    // express-session's cookie: connect.sid=s%3A<id>.<base64 HMAC-SHA256>, verifiable with
    // the shared secret.
    let cookie = on_a.cookie.clone().expect("cookie");
    assert!(cookie.starts_with("connect.sid=s%3A"), "{cookie}");
    let value = cookie
        .split_once('=')
        .unwrap()
        .1
        .replace("%3A", ":")
        .replace("%2B", "+")
        .replace("%2F", "/");
    let secrets = SessionSecrets::new(["demo-secret"]).unwrap();
    let id = on_a.session_id();
    assert_eq!(
        secrets
            .verify(&value)
            .expect("signed with the secret")
            .id
            .as_str(),
        id
    );

    // connect-redis's record: the cookie object first, then the fields, compact JSON.
    let raw = redis.get_raw(&format!("sess:{id}")).await.expect("record");
    let text = String::from_utf8(raw).unwrap();
    assert!(
        text.starts_with(r#"{"cookie":{"originalMaxAge":86400000,"#),
        "{text}"
    );
    assert!(
        text.ends_with(r#","userId":1,"username":"alice"}"#),
        "{text}"
    );

    // The other instance knows the user.
    let mut on_b = on_a.to(&b);
    assert_eq!(
        on_b.get("/api/user/profile").await.expect(200),
        json!({"userId": 1, "username": "alice"})
    );
    assert_eq!(
        on_b.get("/api/session/stats").await.expect(200)["totalSessions"],
        1
    );
    // Logging out on one logs out on both.
    assert_eq!(
        on_b.send("POST", "/api/auth/logout", None, b"")
            .await
            .expect(200),
        json!({"success": true})
    );
    assert_eq!(on_a.get("/api/user/profile").await.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_never_fails_a_request_and_recovery_is_automatic() {
    let mut redis = RedisServer::start();
    let env = redis_env(&redis);
    let server = Backend::start(&pairs(&env)).await;
    let mut client = server.client();
    let mut ops = server.client();

    client.login("alice").await.expect(200);
    client.get("/api/products/2").await.expect(200);

    redis.kill();
    // Every endpoint answers, none with a 5xx, each within the client timeout.
    let health = wait_for_json(&mut ops, "/healthz", Duration::from_secs(5), |h| {
        h["status"] == "degraded"
    })
    .await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["store"], "memory");
    for path in [
        "/api/user/profile",
        "/api/products/2",
        "/api/products/3",
        "/api/products/999",
        "/api/cache/stats",
        "/api/session/stats",
        "/healthz",
    ] {
        let r = client.get(path).await;
        assert!(r.status < 500, "{path}: {} {}", r.status, r.text());
    }
    let stats = ops.get("/api/session/stats").await.expect(200);
    assert_eq!(stats["store"], "memory");
    assert_eq!(stats["redisStats"]["usingFallback"], true);
    assert_eq!(cache_stats(&mut ops).await["usingFallback"], true);

    // Logging in works on memory meanwhile.
    assert_eq!(
        client.login("bob").await.expect(200),
        json!({"success": true})
    );
    let id = client.session_id();
    assert_eq!(
        client.get("/api/user/profile").await.expect(200),
        json!({"userId": 2, "username": "bob"})
    );

    // Redis is back: the server returns to it by itself, with what was written meanwhile.
    redis.restart();
    let stats = wait_for_json(
        &mut ops,
        "/api/session/stats",
        Duration::from_secs(5),
        |s| s["store"] == "redis",
    )
    .await;
    assert_eq!(stats["store"], "redis", "{stats}\n{}", server.logs());
    assert_eq!(stats["redisStats"]["connected"], true);
    assert_eq!(ops.get("/healthz").await.expect(200)["status"], "ok");
    assert!(redis.get_raw(&format!("sess:{id}")).await.is_some());
    assert_eq!(
        client.get("/api/user/profile").await.expect(200),
        json!({"userId": 2, "username": "bob"})
    );
    assert_eq!(client.get("/api/products/2").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_at_start_then_found() {
    // A port where Redis will be, but is not yet.
    let mut redis = RedisServer::start();
    redis.kill();
    let port = redis.port().to_string();
    let env = [
        ("REDIS_ENABLED", "true"),
        ("REDIS_HOST", "127.0.0.1"),
        ("REDIS_PORT", port.as_str()),
        ("REDIS_DB", "0"),
        ("REDIS_TLS", "false"),
    ];
    let server = Backend::start(&env).await;
    let logs = server.logs();
    assert!(logs.contains("Redis is unreachable"), "{logs}");

    let mut client = server.client();
    let health = client.get("/healthz").await.expect(200);
    assert_eq!(
        (health["status"].clone(), health["store"].clone()),
        (json!("degraded"), json!("memory"))
    );
    assert_eq!(
        client.login("alice").await.expect(200),
        json!({"success": true})
    );

    redis.restart();
    let health = wait_for_json(&mut client, "/healthz", Duration::from_secs(5), |h| {
        h["status"] == "ok"
    })
    .await;
    assert_eq!(health["store"], "redis", "{health}\n{}", server.logs());
    assert_eq!(
        client.get("/api/user/profile").await.expect(200),
        json!({"userId": 1, "username": "alice"})
    );
    assert!(redis
        .get_raw(&format!("sess:{}", client.session_id()))
        .await
        .is_some());
}

// ---------------------------------------------------------------------------------------
// The product database and the origin control

/// A directory of its own for a test's database file, removed on drop.
struct DbDir(PathBuf);

impl DbDir {
    fn new(name: &str) -> DbDir {
        let dir =
            std::env::temp_dir().join(format!("cache-sdk-erp-db-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        DbDir(dir)
    }

    /// `DATABASE_URL` for the file `erp.db` in this directory.
    fn url(&self) -> String {
        format!("sqlite:{}", self.0.join("erp.db").display())
    }
}

impl Drop for DbDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn origin(client: &mut Client) -> Value {
    client.get("/api/admin/origin").await.expect(200)
}

/// Runs the server with these variables until it exits (it must, within 10 s): its exit
/// code and its log.
async fn run_until_exit(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = DbDir::new(&format!("exit-{}", free_port()));
    let log = File::create(dir.0.join("server.log")).expect("log file");
    let mut child = server_command(&dir.0, log)
        .env("PORT", free_port().to_string())
        .envs(env.iter().copied())
        .spawn()
        .expect("start erp_backend");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("erp_backend still running with {env:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let logs = std::fs::read_to_string(dir.0.join("server.log")).unwrap_or_default();
    (status.code(), logs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_database_file() {
    let dir = DbDir::new("shared");
    let url = dir.url();
    // A 1 s product TTL, so that an entry B cached before A's write expires soon.
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("CACHE_TTL_API", "1"),
        ("ERP_DB_LATENCY_MS", "1"),
    ];
    // Both start at the same moment on a new file: it is created and seeded once.
    let (a, b) = tokio::join!(Backend::start(&env), Backend::start(&env));
    let (mut a, mut b) = (a.client(), b.client());
    assert!(dir.0.join("erp.db").exists());

    let mouse = json!({"id": 5, "name": "Standard Mouse", "priceCents": 2999, "stock": 25});
    assert_eq!(b.get("/api/products/5").await.expect(200), mouse);
    assert_eq!(a.get("/api/products/5").await.expect(200), mouse);

    // A PUT on A reaches the shared file: B reads it as soon as B's own cache has no
    // entry (product 3 was never read on B; product 5 once B's entry expired).
    let changed = json!({"name": "Shared Monitor", "priceCents": 12_900, "stock": 2});
    let put = a.put_json("/api/products/3", &changed).await.expect(200);
    assert_eq!(b.get("/api/products/3").await.expect(200), put);
    let renamed = json!({"name": "Quiet Mouse", "priceCents": 3499, "stock": 9});
    let put = a.put_json("/api/products/5", &renamed).await.expect(200);
    let seen = wait_for_json(&mut b, "/api/products/5", Duration::from_secs(5), |v| {
        v == &put
    })
    .await;
    assert_eq!(seen, put);

    // A DELETE on B is a 404 on A for a product A never cached.
    assert_eq!(
        b.send("DELETE", "/api/products/9", None, b"").await.status,
        204
    );
    assert_eq!(
        a.get("/api/products/9").await.expect(404),
        json!({"error": "Product 9 not found"})
    );

    // Each instance counts its own database calls.
    let (on_a, on_b) = (
        origin(&mut a).await["loads"].clone(),
        origin(&mut b).await["loads"].clone(),
    );
    assert!(
        on_a.as_u64().unwrap() >= 4 && on_b.as_u64().unwrap() >= 3,
        "{on_a} {on_b}"
    );
    drop((a, b));

    // A third instance on the same file, later, finds the changes (no re-seeding).
    let c = Backend::start(&env).await;
    let mut c = c.client();
    assert_eq!(
        c.get("/api/products/3").await.expect(200)["name"],
        "Shared Monitor"
    );
    assert_eq!(c.get("/api/products/9").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origin_control_slows_and_fails_the_database_in_development() {
    let dir = DbDir::new("origin");
    let url = dir.url();
    let server = Backend::start(&[("DATABASE_URL", url.as_str())]).await;
    let mut client = server.client();

    assert_eq!(
        origin(&mut client).await,
        json!({"latencyMs": 20, "failing": false, "loads": 0})
    );
    assert_eq!(client.get("/api/products/1").await.expect(200)["id"], 1);
    assert_eq!(origin(&mut client).await["loads"], 1);

    // Failing: a read the cache answers still works; a read that reaches the database is
    // a 503 after the latency, and is counted.
    let set = client
        .post_json(
            "/api/admin/origin",
            &json!({"failing": true, "latencyMs": 300}),
        )
        .await;
    assert_eq!(
        set.expect(200),
        json!({"latencyMs": 300, "failing": true, "loads": 1})
    );
    assert_eq!(client.get("/api/products/1").await.expect(200)["id"], 1);
    let start = Instant::now();
    let r = client.get("/api/products/2").await;
    let took = start.elapsed();
    let body = r.expect(503);
    assert_eq!(body["error"], "Product database unavailable");
    assert!(
        body["detail"].as_str().unwrap().contains("origin control"),
        "{body}"
    );
    assert!(took >= Duration::from_millis(300), "{took:?}");
    let stats = cache_stats(&mut client).await;
    assert_eq!(stats["dbQueries"], 2, "{stats}");
    // Errors are not cached: the next read tries again (and fails again).
    assert_eq!(client.get("/api/products/2").await.status, 503);
    // Writes fail too, and are counted.
    let desk = json!({"name": "Desk", "priceCents": 1, "stock": 1});
    assert_eq!(client.put_json("/api/products/2", &desk).await.status, 503);
    assert_eq!(
        origin(&mut client).await,
        json!({"latencyMs": 300, "failing": true, "loads": 4})
    );

    // Back to normal.
    let set = client
        .post_json("/api/admin/origin", &json!({"failing": false}))
        .await;
    assert_eq!(set.expect(200)["failing"], false);
    client
        .post_json("/api/admin/origin", &json!({"latencyMs": 0}))
        .await
        .expect(200);
    assert_eq!(client.get("/api/products/2").await.expect(200)["id"], 2);
    assert_eq!(
        origin(&mut client).await,
        json!({"latencyMs": 0, "failing": false, "loads": 5})
    );

    // Bodies that are not a change: a JSON error, nothing changed.
    let refused: [(&[u8], u16); 5] = [
        (br#"{"failing": "#, 400),
        (br#"{"failing": "yes"}"#, 422),
        (br#"{"latencyMs": -1}"#, 422),
        (br#"{"latencyMs": 60001}"#, 422),
        (br#"{}"#, 422),
    ];
    for (body, status) in refused {
        let r = client
            .send("POST", "/api/admin/origin", Some("application/json"), body)
            .await;
        assert!(r.expect(status)["error"].is_string(), "{}", r.text());
    }
    let r = client
        .post_json("/api/admin/origin", &json!({"failng": true}))
        .await;
    assert!(r.expect(422)["detail"].as_str().unwrap().contains("failng"));
    assert_eq!(
        origin(&mut client).await,
        json!({"latencyMs": 0, "failing": false, "loads": 5})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_has_no_origin_control_and_uses_erp_db_by_default() {
    let server = Backend::start(&[
        ("APP_ENV", "production"),
        ("SESSION_SECRET", "a production secret for this test"),
    ])
    .await;
    let mut client = server.client();
    assert_eq!(
        client.get("/api/admin/origin").await.expect(404),
        json!({"error": "Not found"})
    );
    let r = client
        .post_json("/api/admin/origin", &json!({"failing": true}))
        .await;
    assert_eq!(r.expect(404), json!({"error": "Not found"}));
    let r = client.post_json("/api/admin/cache/clear", &json!({})).await;
    assert_eq!(r.expect(404), json!({"error": "Not found"}));
    assert_eq!(client.get("/api/products/1").await.expect(200)["id"], 1);
    // Without DATABASE_URL the file is erp.db in the working directory.
    assert!(server.dir.join("erp.db").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_database_setting_stops_the_server_with_a_clear_message() {
    let dir = DbDir::new("bad");
    std::fs::write(dir.0.join("erp.db"), vec![b'x'; 4096]).expect("write");
    let not_a_database = dir.url();
    let missing_dir = format!("sqlite:{}", dir.0.join("no/such/dir/erp.db").display());
    for (k, v, says) in [
        ("DATABASE_URL", "postgres://db/erp", "DATABASE_URL"),
        ("DATABASE_URL", "sqlite:", "DATABASE_URL"),
        ("ERP_DB_LATENCY_MS", "soon", "ERP_DB_LATENCY_MS"),
        (
            "DATABASE_URL",
            not_a_database.as_str(),
            "cannot open the product database",
        ),
        (
            "DATABASE_URL",
            missing_dir.as_str(),
            "cannot open the product database",
        ),
    ] {
        let (code, logs) = run_until_exit(&[(k, v)]).await;
        assert_eq!(code, Some(1), "{k}={v}: {logs}");
        assert!(logs.contains(says), "{k}={v}: {logs}");
        assert!(!logs.contains("panicked"), "{logs}");
    }
}

// ---------------------------------------------------------------------------------------
// WebSockets (`GET /api/ws`): a minimal RFC 6455 client over a raw socket.

/// An open WebSocket: reads server frames (text, ping, close).
struct WsClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// What the server sent.
#[derive(Debug, PartialEq)]
enum WsFrame {
    Text(String),
    Ping,
    Close,
}

/// Opens `GET /api/ws` with the client's cookie and `origin`: the socket on a 101, the
/// status otherwise.
async fn ws_connect(client: &Client, origin: Option<&str>) -> Result<WsClient, u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", client.port))
        .await
        .expect("connect");
    let mut head = format!(
        "GET /api/ws HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        client.port
    );
    if let Some(c) = &client.cookie {
        head.push_str(&format!("Cookie: {c}\r\n"));
    }
    if let Some(o) = origin {
        head.push_str(&format!("Origin: {o}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let end = loop {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(REQUEST_TIMEOUT, stream.read(&mut chunk))
            .await
            .expect("an answer to the upgrade")
            .expect("read");
        assert!(n > 0, "closed before answering the upgrade");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let status: u16 = String::from_utf8_lossy(&buf[..end])
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    if status != 101 {
        return Err(status);
    }
    buf.drain(..end);
    Ok(WsClient { stream, buf })
}

impl WsClient {
    /// The next frame within `within`, or `None` when nothing came (or the socket closed
    /// without a close frame: `Some(Close)`).
    async fn next(&mut self, within: Duration) -> Option<WsFrame> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(frame) = self.parse() {
                return Some(frame);
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => return Some(WsFrame::Close),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn parse(&mut self) -> Option<WsFrame> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        let opcode = b[0] & 0x0f;
        let (len, start) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => (
                usize::try_from(u64::from_be_bytes(b[2..10].try_into().unwrap())).unwrap(),
                10,
            ),
            126 | 127 => return None,
            n => (usize::from(n), 2),
        };
        if b.len() < start + len {
            return None;
        }
        let payload = b[start..start + len].to_vec();
        self.buf.drain(..start + len);
        Some(match opcode {
            1 => WsFrame::Text(String::from_utf8(payload).expect("utf-8")),
            8 => WsFrame::Close,
            9 => WsFrame::Ping,
            other => panic!("unexpected opcode {other}"),
        })
    }

    /// The next text frame (pings skipped), as JSON.
    async fn event(&mut self, within: Duration) -> Value {
        loop {
            match self.next(within).await {
                Some(WsFrame::Text(t)) => return serde_json::from_str(&t).expect("json"),
                Some(WsFrame::Ping) => {}
                other => panic!("expected an event, got {other:?}"),
            }
        }
    }

    /// Sends a masked text frame.
    async fn send_text(&mut self, text: &str) {
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x81, 0x80 | u8::try_from(text.len()).expect("short")];
        frame.extend_from_slice(&mask);
        frame.extend(text.bytes().enumerate().map(|(i, c)| c ^ mask[i % 4]));
        self.stream.write_all(&frame).await.expect("send");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_need_a_session_and_an_allowed_origin() {
    let redis = RedisServer::start();
    let env = redis_env(&redis);
    let server = Backend::start(&pairs(&env)).await;
    let mut client = server.client();
    // No session: 401, with or without an origin.
    assert_eq!(ws_connect(&client, None).await.err(), Some(401));
    assert_eq!(
        ws_connect(&client, Some("http://localhost:5173"))
            .await
            .err(),
        Some(401)
    );
    let login = client.login("alice").await;
    assert_eq!(login.header("cache-control"), Some("no-store"));
    login.expect(200);
    let profile = client.get("/api/user/profile").await;
    assert_eq!(profile.header("cache-control"), Some("no-store"));
    // A foreign origin: 403 even with a session.
    assert_eq!(
        ws_connect(&client, Some("https://evil.example.com"))
            .await
            .err(),
        Some(403)
    );
    // The same host, and localhost in development: upgraded.
    let port = client.port;
    let mut ws = ws_connect(&client, Some(&format!("http://127.0.0.1:{port}")))
        .await
        .expect("upgraded");
    let _local = ws_connect(&client, Some("http://localhost:5173"))
        .await
        .expect("upgraded");
    ws.send_text("hello").await;
    let stats = wait_for_json(&mut client, "/api/ws/stats", Duration::from_secs(3), |v| {
        v["messagesReceived"] == 1
    })
    .await;
    assert_eq!(stats["connections"], 2, "{stats}");
    assert_eq!(stats["messagesReceived"], 1, "{stats}");
    assert!(stats["subscribers"].as_u64() >= Some(1), "{stats}");
    // At most 5 sockets per session.
    let mut more = Vec::new();
    for _ in 0..3 {
        more.push(ws_connect(&client, None).await.expect("upgraded"));
    }
    assert_eq!(ws_connect(&client, None).await.err(), Some(429));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn product_events_cross_instances_and_logout_closes_the_socket() {
    let redis = RedisServer::start();
    let mut env = redis_env(&redis);
    // One secret, so that both instances accept the cookie.
    env.push(("SESSION_SECRET", "demo-secret".into()));
    let a = Backend::start(&pairs(&env)).await;
    let b = Backend::start(&pairs(&env)).await;
    let mut on_a = a.client();
    on_a.login("alice").await.expect(200);
    let mut ws = ws_connect(&on_a.to(&b), None).await.expect("upgraded on b");

    // A PUT and a DELETE on A reach the socket on B.
    let started = Instant::now();
    let desk = json!({"id": 1, "name": "Standing Desk", "priceCents": 49_900, "stock": 3});
    on_a.put_json("/api/products/1", &desk).await.expect(200);
    let event = ws.event(Duration::from_secs(3)).await;
    println!("event from A on B after {:?}", started.elapsed());
    assert_eq!(event, json!({"type": "product.updated", "id": 1}));
    let r = on_a.send("DELETE", "/api/products/1", None, b"").await;
    assert_eq!(r.status, 204);
    assert_eq!(
        ws.event(Duration::from_secs(3)).await,
        json!({"type": "product.deleted", "id": 1})
    );
    let stats = on_a.to(&b).get("/api/ws/stats").await.expect(200);
    assert_eq!(stats["messagesSent"], 2, "{stats}");

    // Logout on A closes the socket on B within a second.
    on_a.send("POST", "/api/auth/logout", None, b"")
        .await
        .expect(200);
    let closed = Instant::now();
    loop {
        match ws.next(Duration::from_secs(1)).await {
            Some(WsFrame::Close) => break,
            Some(WsFrame::Ping | WsFrame::Text(_)) => {}
            None => panic!("the socket is still open 1 s after the logout"),
        }
    }
    assert!(
        closed.elapsed() < Duration::from_secs(1),
        "{:?}",
        closed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_changes_on_two_instances_are_all_kept() {
    let redis = RedisServer::start();
    let mut env = redis_env(&redis);
    env.push(("SESSION_SECRET", "demo-secret".into()));
    let a = Backend::start(&pairs(&env)).await;
    let b = Backend::start(&pairs(&env)).await;

    let mut on_a = a.client();
    assert_eq!(on_a.get("/api/session").await.status, 401);
    on_a.login("alice").await.expect(200);
    let on_b = on_a.to(&b);

    // 50 requests at once with one cookie: 25 preferences, 25 cart lines, half on each
    // instance.
    let mut tasks = Vec::new();
    for i in 0..50u64 {
        let mut client = if i % 2 == 0 {
            on_a.clone()
        } else {
            on_b.clone()
        };
        tasks.push(tokio::spawn(async move {
            let r = if i < 25 {
                client
                    .put_json(
                        &format!("/api/user/preferences/key{i}"),
                        &json!({"value": {"n": i}}),
                    )
                    .await
            } else {
                client
                    .post_json("/api/cart/items", &json!({"productId": i, "quantity": 1}))
                    .await
            };
            (r.status, r.text())
        }));
    }
    for t in tasks {
        let (status, body) = t.await.expect("request task");
        assert_eq!(
            status,
            200,
            "{body}\n--- a:\n{}\n--- b:\n{}",
            a.logs(),
            b.logs()
        );
    }

    for client in [&mut on_a.clone(), &mut on_b.clone()] {
        let r = client.get("/api/session").await;
        let id = client.session_id();
        let stored = redis.get_raw(&format!("sess:{id}")).await;
        assert_eq!(
            r.status,
            200,
            "{}: {:?}\n{}",
            r.text(),
            stored.map(|b| String::from_utf8_lossy(&b).into_owned()),
            a.logs()
        );
        let s = r.json();
        assert_eq!(s["userId"], 1);
        assert_eq!(s["username"], "alice");
        let prefs = s["preferences"].as_object().expect("preferences");
        assert_eq!(prefs.len(), 25, "{s}");
        for i in 0..25 {
            assert_eq!(prefs[&format!("key{i}")], json!({"n": i}));
        }
        let mut products: Vec<u64> = s["cart"]
            .as_array()
            .expect("cart")
            .iter()
            .map(|l| l["productId"].as_u64().expect("productId"))
            .collect();
        products.sort_unstable();
        assert_eq!(products, (25..50).collect::<Vec<_>>(), "{s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_product_is_still_served_while_the_origin_fails() {
    let dir = DbDir::new("fail-safe");
    let url = dir.url();
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("CACHE_TTL_API", "1"),
        ("ERP_DB_LATENCY_MS", "1"),
    ];
    let server = Backend::start(&env).await;
    let mut client = server.client();

    let first = client.get("/api/products/4").await;
    assert_eq!(
        first.header("cache-status"),
        Some("cache-sdk; fwd=miss; stored")
    );
    let product = first.expect(200);
    let hit = client.get("/api/products/4").await;
    assert!(
        hit.header("cache-status")
            .is_some_and(|s| s.starts_with("cache-sdk; hit")),
        "{:?}",
        hit.header("cache-status")
    );
    client
        .post_json("/api/admin/origin", &json!({"failing": true}))
        .await
        .expect(200);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // Past its 1 s TTL, with the database failing: the stale value answers.
    for _ in 0..3 {
        let r = client.get("/api/products/4").await;
        assert_eq!(
            r.header("cache-status"),
            Some("cache-sdk; hit; detail=stale")
        );
        assert_eq!(r.expect(200), product);
    }
    // A product never cached has no stale value: the failure shows.
    assert_eq!(client.get("/api/products/6").await.status, 503);
}

/// Logs `user` in on `server` from a client that says it is `agent`.
async fn login_from(server: &Backend, user: &str, agent: &str) -> Client {
    let body = serde_json::to_vec(&json!({"username": user, "password": format!("{user}-pass")}))
        .expect("json");
    let r = request(
        server.port,
        "POST",
        "/api/auth/login",
        &[("Content-Type", "application/json"), ("User-Agent", agent)],
        &body,
    )
    .await
    .expect("login");
    assert_eq!(r.expect(200), json!({"success": true}));
    let cookie = r.set_cookies()[0]
        .split(';')
        .next()
        .expect("name=value")
        .trim()
        .to_owned();
    Client {
        port: server.port,
        cookie: Some(cookie),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_sessions_are_listed_without_their_ids() {
    let redis = RedisServer::start();
    let mut env = redis_env(&redis);
    env.push(("SESSION_SECRET", "demo-secret".into()));
    let a = Backend::start(&pairs(&env)).await;

    let mut anonymous = a.client();
    assert_eq!(anonymous.get("/api/user/sessions").await.status, 401);
    assert_eq!(
        anonymous
            .post_json("/api/auth/logout-all", &json!({}))
            .await
            .status,
        401
    );

    let mut first = login_from(&a, "alice", "agent-one").await;
    let mut second = login_from(&a, "alice", "agent-two").await;
    let _bob = login_from(&a, "bob", "agent-bob").await;

    let r = second.get("/api/user/sessions").await;
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let list = r.expect(200);
    let list = list.as_array().expect("an array");
    assert_eq!(list.len(), 2, "{list:?}");
    for s in list {
        let keys: Vec<_> = s.as_object().expect("an object").keys().cloned().collect();
        let mut keys = keys;
        keys.sort();
        assert_eq!(
            keys,
            ["createdAt", "current", "id", "lastSeenAt", "userAgent"]
        );
        assert!(s["createdAt"].as_u64().is_some() && s["lastSeenAt"].as_u64().is_some());
        let id = s["id"].as_str().expect("id");
        for c in [&first, &second] {
            assert!(
                !id.is_empty() && !c.session_id().contains(id) && !id.contains(&c.session_id())
            );
        }
        let current = s["current"].as_bool().expect("current");
        let agent = s["userAgent"].as_str().expect("userAgent");
        assert_eq!(current, agent == "agent-two", "{s}");
        assert!(agent == "agent-one" || agent == "agent-two");
    }

    // Logged out: no longer listed.
    first
        .post_json("/api/auth/logout", &json!({}))
        .await
        .expect(200);
    let list = second.get("/api/user/sessions").await.expect(200);
    assert_eq!(list.as_array().expect("an array").len(), 1);
    assert_eq!(list[0]["current"], json!(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_all_ends_every_other_session_on_every_instance_at_once() {
    let redis = RedisServer::start();
    let mut env = redis_env(&redis);
    env.push(("SESSION_SECRET", "demo-secret".into()));
    let a = Backend::start(&pairs(&env)).await;
    let b = Backend::start(&pairs(&env)).await;

    let mut current = login_from(&a, "alice", "agent-current").await;
    let others = [
        login_from(&a, "alice", "agent-other-1").await,
        login_from(&b, "alice", "agent-other-2").await,
    ];
    let mut bob = login_from(&b, "bob", "agent-bob").await;
    let cookies: Vec<_> = [&current, &others[0], &others[1]]
        .iter()
        .map(|c| c.cookie.clone())
        .collect();
    assert_eq!(
        cookies
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        3,
        "distinct cookies"
    );
    // Every session is known (and held in L1) on B.
    for c in &others {
        c.to(&b).get("/api/user/profile").await.expect(200);
    }
    current.to(&b).get("/api/user/profile").await.expect(200);

    let r = current.post_json("/api/auth/logout-all", &json!({})).await;
    assert_eq!(r.expect(200), json!({"success": true, "loggedOut": 2}));

    // At once, on the other instance too.
    for c in &others {
        assert_eq!(c.to(&b).get("/api/user/profile").await.status, 401);
        assert_eq!(c.clone().get("/api/user/profile").await.status, 401);
    }
    current.get("/api/user/profile").await.expect(200);
    current.to(&b).get("/api/user/profile").await.expect(200);
    bob.get("/api/user/profile").await.expect(200);

    let list = current.to(&b).get("/api/user/sessions").await.expect(200);
    assert_eq!(list.as_array().expect("an array").len(), 1);
    assert_eq!(list[0]["current"], json!(true));
    assert_eq!(list[0]["userAgent"], json!("agent-current"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_lists_are_invalidated_by_tag_and_the_cache_is_cleared_everywhere() {
    let redis = RedisServer::start();
    let dir = DbDir::new("catalog");
    let url = dir.url();
    let mut env = redis_env(&redis);
    env.push(("DATABASE_URL", url));
    env.push(("ERP_DB_LATENCY_MS", "1".to_owned()));
    let env = pairs(&env);
    let (a, b) = tokio::join!(Backend::start(&env), Backend::start(&env));
    let (mut a, mut b) = (a.client(), b.client());
    let status = |r: &Response| r.header("cache-status").unwrap_or_default().to_owned();
    let ids = |v: &Value| -> Vec<u64> {
        v.as_array()
            .expect("a JSON array")
            .iter()
            .map(|p| p["id"].as_u64().expect("id"))
            .collect()
    };

    // Pages of 20, and the whole catalogue without `page`; cached and shared.
    let first = a.get("/api/products?page=1").await;
    assert!(status(&first).contains("fwd=miss"), "{}", status(&first));
    assert_eq!(ids(&first.expect(200)), (1..=20).collect::<Vec<_>>());
    let again = a.get("/api/products?page=1").await;
    assert_eq!(status(&again), "cache-sdk; hit");
    let on_b = b.get("/api/products?page=1").await;
    assert_eq!(status(&on_b), "cache-sdk; hit", "B reads A's cached page");
    assert_eq!(ids(&b.get("/api/products").await.expect(200)).len(), 100);
    assert_eq!(status(&b.get("/api/products").await), "cache-sdk; hit");
    assert!(b
        .get("/api/products?page=6")
        .await
        .expect(200)
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(b.get("/api/products?page=0").await.status, 422);

    // A PUT on A invalidates the tag `catalog`: B's very next list read reflects it.
    let changed = json!({"name": "Tagged Monitor", "priceCents": 12_900, "stock": 2});
    a.put_json("/api/products/3", &changed).await.expect(200);
    let page = b.get("/api/products?page=1").await;
    assert!(status(&page).contains("fwd=miss"), "{}", status(&page));
    assert_eq!(page.expect(200)[2]["name"], "Tagged Monitor");
    let all = b.get("/api/products").await.expect(200);
    assert_eq!(all[2]["name"], "Tagged Monitor");
    // The product itself was written after the invalidation: a hit with the new value.
    assert_eq!(
        b.get("/api/products/3").await.expect(200)["name"],
        "Tagged Monitor"
    );

    // A DELETE on B: A's next list read no longer has the product.
    assert_eq!(
        b.send("DELETE", "/api/products/9", None, b"").await.status,
        204
    );
    let listed = ids(&a.get("/api/products?page=1").await.expect(200));
    assert!(!listed.contains(&9) && listed.len() == 20, "{listed:?}");

    // Clear on A: the next product read on either instance is a miss.
    a.get("/api/products/5").await.expect(200);
    assert_eq!(status(&a.get("/api/products/5").await), "cache-sdk; hit");
    assert_eq!(status(&b.get("/api/products/5").await), "cache-sdk; hit");
    let cleared = a.post_json("/api/admin/cache/clear", &json!({})).await;
    assert_eq!(cleared.expect(200), json!({"cleared": true}));
    let on_b = b.get("/api/products/5").await;
    assert!(status(&on_b).contains("fwd=miss"), "B: {}", status(&on_b));
    assert_eq!(on_b.expect(200)["id"], 5);
    let on_a = a.get("/api/products/7").await;
    assert!(status(&on_a).contains("fwd=miss"), "A: {}", status(&on_a));
    assert!(status(&a.get("/api/products?page=1").await).contains("fwd=miss"));
}

// ---------------------------------------------------------------------------------------
// Bulk reads and the stampede lock across instances

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn products_by_ids_come_in_order_from_one_database_call() {
    let dir = DbDir::new("bulk");
    let redis = RedisServer::start();
    let url = dir.url();
    let env = [("DATABASE_URL", url.as_str()), ("REDIS_URL", &redis.url())];
    let server = Backend::start(&env).await;
    let mut client = server.client();
    let before = origin(&mut client).await["loads"].as_u64().unwrap();

    // 50 cold products and one unknown id, in a chosen order.
    let mut ids: Vec<u64> = (1..=50).rev().collect();
    ids.insert(10, 999);
    let list = ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    let path = format!("/api/products?ids={list}");
    let body = client.get(&path).await.expect(200);
    let items = body.as_array().expect("an array");
    assert_eq!(items.len(), ids.len());
    for (id, item) in ids.iter().zip(items) {
        assert_eq!(item["id"], *id, "{item}");
        if *id == 999 {
            assert_eq!(
                item,
                &json!({"id": 999, "status": 404, "error": "Product 999 not found"})
            );
        } else {
            assert!(item["name"].is_string(), "{item}");
        }
    }
    let after = origin(&mut client).await["loads"].as_u64().unwrap();
    assert_eq!(after - before, 1, "one database call for 50 cold ids");
    assert!(
        cached_product(&redis, 37).await.is_some(),
        "written to Redis"
    );

    // Warm now: the list and a single read cost no database call; only 999 is asked again.
    assert_eq!(client.get(&path).await.expect(200), body);
    assert_eq!(
        client.get("/api/products/12").await.expect(200),
        items[ids.iter().position(|i| *i == 12).unwrap()]
    );
    let warm = origin(&mut client).await["loads"].as_u64().unwrap();
    assert_eq!(warm - after, 1, "only the unknown id reached the database");

    // Products read in bulk carry the `catalog` tag, as single reads do: a PUT of product
    // 60 invalidates it, and the next bulk read of 1..=20 asks the database again.
    let known = "/api/products?ids=1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20";
    client.get(known).await.expect(200);
    let warm = origin(&mut client).await["loads"].as_u64().unwrap();
    client.get(known).await.expect(200);
    assert_eq!(
        origin(&mut client).await["loads"].as_u64().unwrap(),
        warm,
        "all cached"
    );
    let lamp = json!({"name": "Lamp", "priceCents": 1_900, "stock": 8});
    client.put_json("/api/products/60", &lamp).await.expect(200);
    let put = origin(&mut client).await["loads"].as_u64().unwrap();
    client.get(known).await.expect(200);
    assert_eq!(
        origin(&mut client).await["loads"].as_u64().unwrap() - put,
        1,
        "the catalog tag reached the products cached by the bulk read"
    );

    assert_eq!(client.get("/api/products?ids=1,x").await.status, 400);
    assert_eq!(
        client.get("/api/products").await.status,
        200,
        "without ids: the catalogue"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_make_one_database_call_for_150_concurrent_reads() {
    let dir = DbDir::new("stampede");
    let redis = RedisServer::start();
    let url = dir.url();
    // A slow database, so that every request arrives while the first read is running.
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("REDIS_URL", &redis.url()),
        ("ERP_DB_LATENCY_MS", "300"),
        // A loaded test machine: a Redis answer slower than the default 100 ms would
        // count as an outage, and each instance would then load on its own.
        ("REDIS_TIMEOUT_MS", "2000"),
    ];
    let (a, b, c) = tokio::join!(
        Backend::start(&env),
        Backend::start(&env),
        Backend::start(&env)
    );
    let servers = [&a, &b, &c];
    let mut before = 0;
    for s in servers {
        before += origin(&mut s.client()).await["loads"].as_u64().unwrap();
    }
    let mut tasks = Vec::new();
    for i in 0..150 {
        let mut client = servers[i % 3].client();
        tasks.push(tokio::spawn(async move {
            client.get("/api/products/7").await.expect(200)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap()["id"], 7);
    }
    let mut after = 0;
    let mut outages = 0;
    for s in servers {
        after += origin(&mut s.client()).await["loads"].as_u64().unwrap();
        outages += cache_stats(&mut s.client()).await["outages"]
            .as_u64()
            .unwrap_or(0);
    }
    let logs = || {
        servers
            .iter()
            .map(|s| s.logs())
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    assert_eq!(outages, 0, "Redis stayed up:\n{}", logs());
    assert_eq!(
        after - before,
        1,
        "one database call across three instances:\n{}",
        logs()
    );
}
