//! The reference server `examples/erp_backend` on the open internet, over real sockets
//! against real redis-servers, with two instances where it matters: "log out everywhere"
//! closes the other sessions' WebSockets on every instance; heartbeats close a silent socket
//! and the per-instance socket cap holds; WebSocket events flow again after Redis restarts;
//! hundreds of slow connections neither starve the server nor stay open; the connection
//! limit; failed logins limited across instances and during a Redis outage; CORS and the
//! WebSocket `Origin` check for listed and unlisted origins.
//!
//! (`tests/tests/erp_backend.rs` covers the rest: WebSockets refused without a session or
//! from a foreign origin, events from A on B, logout closing the socket.)
//!
//! Set `ERP_BACKEND_BIN` to a built `erp_backend` binary to skip the build.

use std::time::{Duration, Instant};

use cache_sdk_tests::RedisServer;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;

use common::erp::{request, send, Backend, Response, REQUEST_TIMEOUT};

/// `REDIS_URL` of `redis`, one session secret (so that instances accept each other's
/// cookies), and `extra`.
fn env_with<'a>(redis: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![("REDIS_URL", redis), ("SESSION_SECRET", "demo-secret")];
    env.extend_from_slice(extra);
    env
}

/// A login attempt from the test's address, with `extra` headers.
async fn login_attempt(port: u16, user: &str, password: &str, extra: &[(&str, &str)]) -> Response {
    let body = serde_json::to_vec(&json!({"username": user, "password": password})).unwrap();
    let mut headers = vec![("Content-Type", "application/json")];
    headers.extend_from_slice(extra);
    send(port, "POST", "/api/auth/login", &headers, &body).await
}

/// Logs `user` in on `port`: the session cookie.
async fn login(port: u16, user: &str) -> String {
    let r = login_attempt(port, user, &format!("{user}-pass"), &[]).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    r.cookie().expect("a session cookie")
}

async fn get_json(port: u16, path: &str, cookie: Option<&str>) -> Value {
    let headers: Vec<(&str, &str)> = cookie.map(|c| ("Cookie", c)).into_iter().collect();
    let r = send(port, "GET", path, &headers, b"").await;
    assert_eq!(
        r.status,
        200,
        "{path}: {:?}",
        String::from_utf8_lossy(&r.body)
    );
    r.json()
}

/// Polls `path` until `cond` holds (at most `within`); returns whether it did.
async fn eventually(
    port: u16,
    path: &str,
    within: Duration,
    cond: impl Fn(&Value) -> bool,
) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond(&get_json(port, path, None).await) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------
// WebSockets: a minimal RFC 6455 client

struct WsClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

#[derive(Debug, PartialEq)]
enum WsFrame {
    Text(String),
    Ping(Vec<u8>),
    Close,
}

/// Opens `GET /api/ws` with `cookie` and `origin`: the socket on a 101, the status otherwise.
async fn ws_connect(
    port: u16,
    cookie: Option<&str>,
    origin: Option<&str>,
) -> Result<WsClient, u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut head = format!(
        "GET /api/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    if let Some(c) = cookie {
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
    /// The next frame within `within` (`None`: nothing came; a dropped connection is a
    /// `Close`).
    async fn next(&mut self, within: Duration) -> Option<WsFrame> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(frame) = self.parse() {
                return Some(frame);
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return None,
                Ok(Ok(0) | Err(_)) => return Some(WsFrame::Close),
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
            9 => WsFrame::Ping(payload),
            other => panic!("unexpected opcode {other}"),
        })
    }

    /// Sends a masked control or text frame (short payloads only).
    async fn send_frame(&mut self, opcode: u8, payload: &[u8]) {
        let mask = [7u8, 1, 3, 9];
        let mut frame = vec![
            0x80 | opcode,
            0x80 | u8::try_from(payload.len()).expect("short"),
        ];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, c)| c ^ mask[i % 4]));
        self.stream.write_all(&frame).await.expect("send");
    }

    /// Waits (at most `within`) for the server to close the socket, answering pings when
    /// `answer_pings`; text frames are skipped. Returns how long it took.
    async fn closed_within(&mut self, within: Duration, answer_pings: bool) -> Option<Duration> {
        let start = Instant::now();
        loop {
            let left = within.checked_sub(start.elapsed())?;
            match self.next(left).await? {
                WsFrame::Close => return Some(start.elapsed()),
                WsFrame::Ping(p) if answer_pings => self.send_frame(0xA, &p).await,
                WsFrame::Ping(_) | WsFrame::Text(_) => {}
            }
        }
    }

    /// The next text frame (pings answered), as JSON.
    async fn event(&mut self, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(WsFrame::Text(t)) => return serde_json::from_str(&t).expect("json"),
                Some(WsFrame::Ping(p)) => self.send_frame(0xA, &p).await,
                other => panic!("expected an event, got {other:?}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Sessions and WebSockets

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_everywhere_closes_the_other_sessions_sockets_on_every_instance() {
    let redis = RedisServer::start();
    let url = redis.url();
    let env = env_with(&url, &[]);
    let a = Backend::start(&env).await;
    let b = Backend::start(&env).await;
    let current = login(a.port, "alice").await;
    let other = login(b.port, "alice").await;
    let bob = login(b.port, "bob").await;
    let mut kept = ws_connect(a.port, Some(&current), None)
        .await
        .expect("kept");
    let mut on_b = ws_connect(b.port, Some(&other), None)
        .await
        .expect("other on b");
    let mut on_a = ws_connect(a.port, Some(&other), None)
        .await
        .expect("other on a");
    let mut bobs = ws_connect(b.port, Some(&bob), None).await.expect("bob's");

    let r = send(
        a.port,
        "POST",
        "/api/auth/logout-all",
        &[("Cookie", &current)],
        b"",
    )
    .await;
    assert_eq!(r.json(), json!({"success": true, "loggedOut": 1}));
    let started = Instant::now();
    for (name, ws) in [("on B", &mut on_b), ("on A", &mut on_a)] {
        let left = Duration::from_secs(1).saturating_sub(started.elapsed());
        assert!(
            ws.closed_within(left, true).await.is_some(),
            "the other session's socket {name} is still open 1 s after logout-all"
        );
    }
    // The session that asked, and another user, keep their sockets.
    assert_eq!(
        kept.closed_within(Duration::from_millis(500), true).await,
        None
    );
    assert_eq!(
        bobs.closed_within(Duration::from_millis(100), true).await,
        None
    );
    let r = send(
        a.port,
        "PUT",
        "/api/products/2",
        &[("Cookie", &current), ("Content-Type", "application/json")],
        br#"{"id":2,"name":"Chair","priceCents":9900,"stock":1}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        kept.event(Duration::from_secs(3)).await,
        json!({"type": "product.updated", "id": 2})
    );
    assert_eq!(
        bobs.event(Duration::from_secs(3)).await,
        json!({"type": "product.updated", "id": 2})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_close_a_silent_socket_and_the_instance_cap_holds() {
    let redis = RedisServer::start();
    let url = redis.url();
    let env = env_with(&url, &[("WS_PING_SECS", "1"), ("WS_MAX_CONNECTIONS", "2")]);
    let a = Backend::start(&env).await;
    let alice = login(a.port, "alice").await;
    let bob = login(a.port, "bob").await;
    let mut silent = ws_connect(a.port, Some(&alice), None)
        .await
        .expect("silent");
    let mut alive = ws_connect(a.port, Some(&alice), None).await.expect("alive");
    // The instance's cap (2): another session is refused.
    assert_eq!(ws_connect(a.port, Some(&bob), None).await.err(), Some(503));

    // A client that never answers a ping is closed after two silent intervals; one that
    // answers stays. Both are read at once, so that each sees its pings in time.
    let (silent_closed, alive_closed) = tokio::join!(
        silent.closed_within(Duration::from_secs(5), false),
        alive.closed_within(Duration::from_secs(4), true),
    );
    let took = silent_closed.expect("the silent socket is closed");
    assert!(
        took >= Duration::from_millis(1500),
        "closed too soon: {took:?}"
    );
    assert_eq!(alive_closed, None, "the answering socket stays open");
    assert!(
        eventually(a.port, "/api/ws/stats", Duration::from_secs(2), |s| s
            ["connections"]
            == 1)
        .await,
        "the closed socket is counted out"
    );
    // A place is free again.
    let _bobs = ws_connect(a.port, Some(&bob), None)
        .await
        .expect("upgraded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_events_flow_again_after_redis_restarts() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let env = env_with(&url, &[]);
    let a = Backend::start(&env).await;
    let b = Backend::start(&env).await;
    redis.kill();
    for port in [a.port, b.port] {
        assert!(
            eventually(port, "/api/ws/stats", Duration::from_secs(5), |s| {
                s["pubsub"]["connected"] == false
            })
            .await,
            "the outage is noticed"
        );
    }
    redis.restart();
    for port in [a.port, b.port] {
        assert!(
            eventually(port, "/api/ws/stats", Duration::from_secs(8), |s| {
                s["pubsub"]["connected"] == true && s["pubsub"]["resubscribes"].as_u64() >= Some(1)
            })
            .await,
            "the subscription comes back"
        );
    }
    for port in [a.port, b.port] {
        assert!(
            eventually(port, "/api/session/stats", Duration::from_secs(8), |s| {
                s["store"] == "redis"
            })
            .await,
            "the sessions are back on Redis"
        );
    }
    // The restarted Redis is empty (no persistence): log in after it, then open a socket
    // on B; the instances' subscriptions are the ones made before the outage.
    let cookie = login(a.port, "alice").await;
    let mut ws = ws_connect(b.port, Some(&cookie), None)
        .await
        .expect("upgraded on b");
    let r = send(
        a.port,
        "PUT",
        "/api/products/3",
        &[("Cookie", &cookie), ("Content-Type", "application/json")],
        br#"{"id":3,"name":"Lamp","priceCents":2500,"stock":4}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        ws.event(Duration::from_secs(3)).await,
        json!({"type": "product.updated", "id": 3})
    );
}

// ---------------------------------------------------------------------------------------
// Slow clients

/// Opens a connection that sends a request head one byte at a time, never finishing it;
/// returns when the server closes it (or after `give_up`), with how long that took.
async fn slow_client(port: u16, give_up: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
        .await
        .ok()?;
    let mut buf = [0u8; 1024];
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                // Closed (a 408 may come first: read on until the end).
                Ok(0) | Err(_) => return Some(started.elapsed()),
                Ok(_) => {}
            },
            () = tokio::time::sleep(Duration::from_millis(300)) => {
                if started.elapsed() > give_up {
                    return None;
                }
                if stream.write_all(b"a").await.is_err() {
                    return Some(started.elapsed());
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_connections_neither_starve_the_server_nor_stay_open() {
    const SLOW: usize = 300;
    let a = Backend::start(&[("HTTP_HEADER_TIMEOUT_SECS", "2")]).await;
    let port = a.port;
    let slow: Vec<_> = (0..SLOW)
        .map(|_| tokio::spawn(slow_client(port, Duration::from_secs(6))))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // While they trickle: normal requests are answered at once.
    for _ in 0..10 {
        let started = Instant::now();
        let r = send(port, "GET", "/healthz", &[], b"").await;
        assert_eq!(r.status, 200);
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "a request took {:?} during the flood",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every slow connection is closed by the header-read timeout (2 s), busy as it looks.
    let mut longest = Duration::ZERO;
    for task in slow {
        let took = task
            .await
            .unwrap()
            .expect("a slow connection still open after 6 s");
        longest = longest.max(took);
    }
    println!("{SLOW} slow connections closed, the last after {longest:?}");
    assert!(longest >= Duration::from_millis(1500), "{longest:?}");
    send(port, "GET", "/healthz", &[], b"").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_makes_new_connections_wait() {
    let a = Backend::start(&[
        ("HTTP_HEADER_TIMEOUT_SECS", "2"),
        ("HTTP_MAX_CONNECTIONS", "4"),
    ])
    .await;
    // Wait for the readiness probe's connection to be counted out.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(
            TcpStream::connect(("127.0.0.1", a.port))
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The fifth waits until the idle ones are closed by the header-read timeout.
    let started = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        request(a.port, "GET", "/healthz", &[], b""),
    )
    .await
    .expect("answered once a slot is free")
    .expect("a response");
    assert_eq!(r.status, 200);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1200),
        "answered after {waited:?}: the limit did not hold"
    );
    assert!(
        a.logs().contains("connection limit reached"),
        "{}",
        a.logs()
    );
}

// ---------------------------------------------------------------------------------------
// Failed logins

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_limited_across_instances() {
    let redis = RedisServer::start();
    let url = redis.url();
    let env = env_with(&url, &[("LOGIN_MAX_FAILURES_PER_CLIENT", "8")]);
    let a = Backend::start(&env).await;
    let b = Backend::start(&env).await;
    // 4 failures for alice (on both instances): 401; the 5th: 429.
    for i in 0..4 {
        let port = if i % 2 == 0 { a.port } else { b.port };
        assert_eq!(login_attempt(port, "alice", "guess", &[]).await.status, 401);
    }
    let r = login_attempt(b.port, "alice", "guess", &[]).await;
    assert_eq!(r.status, 429);
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((890..=900).contains(&retry), "Retry-After: {retry}");
    // Now even the right password is refused, on either instance.
    for port in [a.port, b.port] {
        let r = login_attempt(port, "alice", "alice-pass", &[]).await;
        assert_eq!(r.status, 429);
        assert!(r.header("retry-after").is_some());
    }
    // Another user is not blocked by alice's failures.
    login(a.port, "bob").await;
    // Per client address (8 here): X-Forwarded-For is not trusted by default, so a
    // client cannot hand itself new addresses.
    for (i, name) in ["carol", "dave", "erin"].iter().enumerate() {
        let forwarded = format!("198.51.100.{i}");
        let r = login_attempt(b.port, name, "guess", &[("X-Forwarded-For", &forwarded)]).await;
        assert_eq!(r.status, if i < 2 { 401 } else { 429 }, "{name}");
    }
    let r = login_attempt(a.port, "bob", "bob-pass", &[]).await;
    assert_eq!(r.status, 429, "the address has used up its failures");
    // The counters are in Redis, hashed.
    let keys = redis.cli(&["KEYS", "ratelimit:login:*"]);
    assert_eq!(keys.lines().count(), 5, "{keys}");
    assert!(
        !keys.contains("alice") && !keys.contains("127.0.0.1"),
        "{keys}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_limited_during_a_redis_outage() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let a = Backend::start(&env_with(&url, &[("LOGIN_MAX_FAILURES", "3")])).await;
    redis.kill();
    for _ in 0..2 {
        assert_eq!(
            login_attempt(a.port, "alice", "guess", &[]).await.status,
            401
        );
    }
    assert_eq!(
        login_attempt(a.port, "alice", "guess", &[]).await.status,
        429
    );
    let r = login_attempt(a.port, "alice", "alice-pass", &[]).await;
    assert_eq!(r.status, 429);
    // Another user still logs in (in memory).
    login(a.port, "bob").await;
}

// ---------------------------------------------------------------------------------------
// CORS and the WebSocket origin check

/// A CORS preflight for `POST /api/auth/login` from `origin`.
async fn preflight(port: u16, origin: &str) -> Response {
    let headers = [
        ("Origin", origin),
        ("Access-Control-Request-Method", "POST"),
        ("Access-Control-Request-Headers", "content-type"),
    ];
    send(port, "OPTIONS", "/api/auth/login", &headers, b"").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_and_websockets_allow_listed_origins_only() {
    let redis = RedisServer::start();
    let url = redis.url();
    let listed = "https://erp.example.com";
    let env = env_with(
        &url,
        &[(
            "CORS_ORIGINS",
            "https://erp.example.com,https://admin.example.com",
        )],
    );
    let a = Backend::start(&env).await;

    // Preflight from a listed origin.
    let r = preflight(a.port, listed).await;
    assert!(r.status < 300, "{}", r.status);
    assert_eq!(r.header("access-control-allow-origin"), Some(listed));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert!(r
        .header("access-control-allow-methods")
        .is_some_and(|m| m.contains("POST")));
    // A response to a listed origin.
    let body = serde_json::to_vec(&json!({"username": "alice", "password": "alice-pass"})).unwrap();
    let r = send(
        a.port,
        "POST",
        "/api/auth/login",
        &[("Origin", listed), ("Content-Type", "application/json")],
        &body,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some(listed));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    let cookie = r.cookie().expect("a session cookie");

    // An unlisted origin: no CORS header at all, on the preflight or the answer.
    for origin in ["https://evil.example.com", "http://erp.example.com", "null"] {
        let r = preflight(a.port, origin).await;
        assert_eq!(r.header("access-control-allow-origin"), None, "{origin}");
        assert_eq!(
            r.header("access-control-allow-credentials"),
            None,
            "{origin}"
        );
        let r = send(
            a.port,
            "GET",
            "/api/user/profile",
            &[("Origin", origin), ("Cookie", &cookie)],
            b"",
        )
        .await;
        assert_eq!(r.header("access-control-allow-origin"), None, "{origin}");
        assert_eq!(
            r.header("access-control-allow-credentials"),
            None,
            "{origin}"
        );
    }

    // WebSockets: the same list.
    let _ok = ws_connect(a.port, Some(&cookie), Some(listed))
        .await
        .expect("listed");
    let _admin = ws_connect(a.port, Some(&cookie), Some("https://admin.example.com"))
        .await
        .expect("listed");
    for origin in ["https://evil.example.com", "http://localhost:5173"] {
        assert_eq!(
            ws_connect(a.port, Some(&cookie), Some(origin)).await.err(),
            Some(403),
            "{origin}"
        );
    }
    assert_eq!(
        ws_connect(a.port, None, Some(listed)).await.err(),
        Some(401)
    );
}
