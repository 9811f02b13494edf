//! TLS and ACL on a real redis-server that speaks TLS only, with certificates made at test
//! time: a private CA, client certificates, the system's roots, an ACL user with limited
//! rights. A wrong certificate or password is a clear error and the fallback, never a hang.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache_sdk::session::{CacheSessionStore, SessionStore};
use cache_sdk::{BuildError, Cache, CacheConfig, RedisConfig, Ttl};
use cache_sdk_tests::{RedisCluster, RedisServer, TestCerts};

/// Generous bound that only catches hangs; not a performance claim.
const HANG: Duration = Duration::from_secs(2);

/// Connecting includes loading the system's roots (redis-rs does it on every attempt, even
/// with a CA file) and TLS handshakes, slow in a debug build on a busy machine: more room
/// than the default 500 ms, still well under [`HANG`].
const CONNECT: Duration = Duration::from_secs(1);

fn tls_url(server: &RedisServer) -> String {
    format!("rediss://127.0.0.1:{}", server.port())
}

/// Builds within [`HANG`], or fails the test.
async fn build(cfg: RedisConfig, require: bool) -> Result<Cache, BuildError> {
    let started = Instant::now();
    let result = tokio::time::timeout(
        HANG,
        Cache::builder()
            .redis(cfg)
            .connect_timeout(CONNECT)
            .require_redis(require)
            .build(),
    )
    .await
    .expect("building the cache hung");
    assert!(started.elapsed() < HANG);
    result
}

/// Builds, expecting the fallback; returns the reason `require_redis` gives.
async fn falls_back(cfg: RedisConfig) -> String {
    let cache = build(cfg.clone(), false).await.expect("build");
    let s = cache.stats();
    assert!(!s.connected && s.using_fallback, "{s:?}");
    cache.set("cache:tls:1", &1u8, Ttl::Api).await.expect("set");
    assert_eq!(cache.get::<u8>("cache:tls:1").await.expect("get"), Some(1));
    match build(cfg, true).await {
        Err(BuildError::RedisRequired(why)) => why.to_string(),
        other => panic!("expected RedisRequired, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_ca_from_the_environment() {
    cache_sdk_tests::init_tracing();
    let certs = TestCerts::generate();
    let server = RedisServer::start_tls(&certs, false, &[]);
    let cfg = CacheConfig::from_vars([
        ("REDIS_HOST", "127.0.0.1".to_string()),
        ("REDIS_PORT", server.port().to_string()),
        ("REDIS_TLS", "true".to_string()),
        ("REDIS_TLS_CA_FILE", certs.path("ca.pem")),
    ])
    .expect("config");
    let cache = Cache::builder()
        .config(cfg)
        .connect_timeout(CONNECT)
        .require_redis(true)
        .build()
        .await
        .expect("build");
    assert!(cache.stats().connected);
    cache
        .set("cache:tls:1", &7u32, Ttl::Api)
        .await
        .expect("set");
    cache.clear_local();
    assert_eq!(cache.get::<u32>("cache:tls:1").await.expect("get"), Some(7));
    assert_eq!(server.cli(&["EXISTS", "cache:tls:1"]), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_when_the_server_asks_for_one() {
    cache_sdk_tests::init_tracing();
    let certs = TestCerts::generate();
    let server = RedisServer::start_tls(&certs, true, &[]);
    let base = RedisConfig::url(tls_url(&server)).with_tls_ca_file(certs.path("ca.pem"));

    let cache = build(
        base.clone()
            .with_client_cert(certs.path("client.pem"), certs.path("client.key")),
        true,
    )
    .await
    .expect("build with the client certificate");
    assert!(cache.stats().connected);
    // The invalidation link uses the same TLS settings as the data connection.
    let c = cache.clone();
    cache_sdk_tests::wait_until(Duration::from_secs(5), move || {
        c.stats().coherence == cache_sdk::CoherenceState::Tracking
    })
    .await
    .expect("the invalidation link comes up over TLS");
    cache
        .set("cache:mtls:1", &1u8, Ttl::Api)
        .await
        .expect("set");
    assert_eq!(server.cli(&["EXISTS", "cache:mtls:1"]), "1");

    // No client certificate, or one from another CA: the server closes the handshake.
    let why = falls_back(base.clone()).await;
    assert!(!why.is_empty());
    let why = falls_back(base.with_client_cert(
        certs.path("other-client.pem"),
        certs.path("other-client.key"),
    ))
    .await;
    assert!(!why.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_or_system_roots_fall_back_with_a_certificate_error() {
    cache_sdk_tests::init_tracing();
    let certs = TestCerts::generate();
    let server = RedisServer::start_tls(&certs, false, &[]);
    // A CA that did not sign the server's certificate.
    let why =
        falls_back(RedisConfig::url(tls_url(&server)).with_tls_ca_file(certs.path("other-ca.pem")))
            .await;
    assert!(why.to_lowercase().contains("certificate"), "{why}");
    // The system's roots do not trust a private CA either (no "accept anything" mode).
    let why = falls_back(RedisConfig::url(tls_url(&server))).await;
    assert!(why.to_lowercase().contains("certificate"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_plain_mixed_up_fall_back_without_hanging() {
    cache_sdk_tests::init_tracing();
    let certs = TestCerts::generate();
    let tls = RedisServer::start_tls(&certs, false, &[]);
    let plain = RedisServer::start();
    falls_back(RedisConfig::url(format!(
        "redis://127.0.0.1:{}",
        tls.port()
    )))
    .await;
    falls_back(
        RedisConfig::url(format!("rediss://127.0.0.1:{}", plain.port()))
            .with_tls_ca_file(certs.path("ca.pem")),
    )
    .await;
}

/// An ACL user that may use the cache's and the sessions' keys and the commands the SDK
/// sends, and nothing else; the default user is off.
const ACL: &[&str] = &[
    "--user",
    "default",
    "off",
    "--user",
    "admin",
    "on",
    ">admin-pass",
    "~*",
    "&*",
    "+@all",
    "--user",
    "app",
    "on",
    ">app-pass",
    "~cache:*",
    "~sess:*",
    "resetchannels",
    "-@all",
    "+@connection",
    "+get",
    "+set",
    "+mget",
    "+del",
    "+exists",
    "+pexpire",
    "+pttl",
    "+incrby",
    "+scan",
    "+eval",
];

fn admin(server: &RedisServer, args: &[&str]) -> String {
    let mut all = vec![
        "--user",
        "admin",
        "--pass",
        "admin-pass",
        "--no-auth-warning",
    ];
    all.extend_from_slice(args);
    server.cli(&all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_user_with_limited_rights_over_tls() {
    cache_sdk_tests::init_tracing();
    let certs = TestCerts::generate();
    let server = RedisServer::start_tls(&certs, false, ACL);
    let cfg = CacheConfig::from_vars([
        ("REDIS_HOST", "127.0.0.1".to_string()),
        ("REDIS_PORT", server.port().to_string()),
        ("REDIS_TLS", "true".to_string()),
        ("REDIS_TLS_CA_FILE", certs.path("ca.pem")),
        ("REDIS_USERNAME", "app".to_string()),
        ("REDIS_PASSWORD", "app-pass".to_string()),
    ])
    .expect("config");
    let cache = Cache::builder()
        .config(cfg)
        .connect_timeout(CONNECT)
        .require_redis(true)
        .build()
        .await
        .expect("build");

    // Everything the SDK does on its own keys is allowed.
    cache
        .set("cache:acl:1", &1u32, Ttl::Api)
        .await
        .expect("set");
    cache
        .set_many(&[("cache:acl:2", 2u32), ("cache:acl:3", 3u32)], Ttl::Api)
        .await
        .expect("set_many");
    cache.clear_local();
    assert_eq!(
        cache
            .get_many::<u32>(&["cache:acl:1", "cache:acl:2", "cache:acl:9"])
            .await
            .expect("get_many"),
        vec![Some(1), Some(2), None]
    );
    assert_eq!(cache.incr("cache:acl:n").await.expect("incr"), 1);
    assert!(cache
        .expire("cache:acl:1", Ttl::secs(60))
        .await
        .expect("expire"));
    assert!(cache.ttl("cache:acl:1").await.expect("ttl").is_some());
    assert_eq!(cache.scan("cache:acl:*").await.expect("scan").len(), 4);
    assert!(cache.delete("cache:acl:3").await.expect("delete"));
    let store = CacheSessionStore::new(cache.clone());
    let id = store
        .create(b"{}".to_vec(), Duration::from_secs(60))
        .await
        .expect("create a session");
    assert!(store
        .touch(&id, Duration::from_secs(60))
        .await
        .expect("touch"));
    assert_eq!(store.count().await.expect("count"), 1);
    assert_eq!(admin(&server, &["EXISTS", "cache:acl:2"]), "1");

    // A key outside the user's rights: Redis says NOPERM, a typed error, not the fallback.
    // (The reads above met one already: the cache's reserved keys, whose tag and clear
    // stamps this user may not read, are then taken as none.)
    let errors_before = cache.stats().backend_errors;
    let err = cache
        .set("user:1:theme", &1u8, Ttl::Api)
        .await
        .expect_err("outside the ACL");
    assert!(
        matches!(err, cache_sdk::Error::Backend(ref e) if e.code() == Some("NOPERM")),
        "{err:?}"
    );
    assert!(err.to_string().to_lowercase().contains("noperm"), "{err}");
    let s = cache.stats();
    assert!(
        s.connected && s.backend_errors == errors_before + 1,
        "{s:?}"
    );
    assert_eq!(admin(&server, &["EXISTS", "user:1:theme"]), "0");
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn wrong_password_falls_back_with_a_clear_log_that_hides_it() {
    let certs = TestCerts::generate();
    let server = RedisServer::start_tls(&certs, false, ACL);
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);

    let cfg = RedisConfig::url(tls_url(&server))
        .with_tls_ca_file(certs.path("ca.pem"))
        .with_auth(Some("app"), "not-the-app-pass");
    let why = falls_back(cfg.clone()).await;
    drop(guard);

    let logs = String::from_utf8_lossy(&logs.0.lock().expect("logs")).into_owned();
    assert!(logs.contains("in-memory fallback"), "{logs}");
    assert!(
        logs.contains("WRONGPASS") || logs.contains("AuthenticationFailed"),
        "{logs}"
    );
    assert!(!logs.contains("not-the-app-pass"), "{logs}");
    assert!(!why.contains("not-the-app-pass"), "{why}");
    assert!(!format!("{cfg:?}").contains("not-the-app-pass"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_over_tls_with_client_certificates() {
    cache_sdk_tests::init_tracing();
    let certs = TestCerts::generate();
    let cluster = RedisCluster::start_tls(&certs, 3, 0);
    let cfg = CacheConfig::from_vars([
        ("REDIS_CLUSTER_NODES", cluster.seeds().join(",")),
        ("REDIS_TLS", "true".to_string()),
        ("REDIS_TLS_CA_FILE", certs.path("ca.pem")),
        ("REDIS_TLS_CERT_FILE", certs.path("client.pem")),
        ("REDIS_TLS_KEY_FILE", certs.path("client.key")),
    ])
    .expect("config");
    let cache = Cache::builder()
        .config(cfg)
        .connect_timeout(CONNECT)
        .require_redis(true)
        .build()
        .await
        .expect("build");
    let items: Vec<(String, u32)> = (0..60).map(|i| (format!("cache:tc:{i}"), i)).collect();
    cache.set_many(&items, Ttl::Api).await.expect("set_many");
    cache.clear_local();
    let keys: Vec<&str> = items.iter().map(|(k, _)| k.as_str()).collect();
    let got = cache.get_many::<u32>(&keys).await.expect("get_many");
    assert_eq!(got, (0..60).map(Some).collect::<Vec<_>>());
    assert_eq!(cache.scan("cache:tc:*").await.expect("scan").len(), 60);
    let per_master = cluster.keys_per_master();
    assert!(
        per_master.len() == 3 && per_master.iter().all(|&n| n > 0),
        "{per_master:?}"
    );

    // Without the client certificate the nodes refuse the handshake: fallback.
    let why = falls_back(
        RedisConfig::cluster(cluster.seeds())
            .with_tls(true)
            .with_tls_ca_file(certs.path("ca.pem")),
    )
    .await;
    assert!(!why.is_empty());
}
