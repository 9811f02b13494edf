//! Cookies through the layer, against a real redis-server: bad cookies of every kind give a
//! fresh anonymous session (never an error and never a store read for a bad signature),
//! secret rotation, and the attributes.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use cache_sdk::session::cookie::encode_value;
use cache_sdk::session::{SessionConfig, SessionId, SessionSecrets};
use cache_sdk_tests::{wait_until, RedisServer};
use common::*;

async fn logged_in(app: &axum::Router) -> String {
    let r = send(app, "POST", "/login?user=1&name=alice", None).await;
    assert_eq!(r.status, StatusCode::OK);
    r.cookie()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cookies_give_a_fresh_anonymous_session() {
    let server = RedisServer::start();
    let cache = cache_on(Some(&server)).await;
    let app = app(sessions(&cache, config(&["the-secret"])));
    let good = logged_in(&app).await;
    assert_eq!(
        send(&app, "GET", "/profile", Some(&good)).await.status,
        StatusCode::OK
    );
    let id = id_of(&good);
    let value = good.split_once('=').expect("pair").1.to_owned();
    let sig = value.split_once('.').expect("sig").1.to_owned();

    let other = SessionSecrets::new(["guessed-secret"]).expect("secret");
    let forged = encode_value(&other.sign(&SessionId::parse(&id).expect("id")));
    let mut flipped = sig.clone().into_bytes();
    flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).expect("ascii");
    let bad: Vec<(&str, String)> = vec![
        ("tampered signature", format!("sid=s%3A{id}.{flipped}")),
        (
            "tampered id",
            format!(
                "sid=s%3A{}.{sig}",
                id.replacen(&id[..1], if &id[..1] == "a" { "b" } else { "a" }, 1)
            ),
        ),
        ("forged with another secret", format!("sid={forged}")),
        ("unsigned id", format!("sid={id}")),
        ("no signature", format!("sid=s%3A{id}")),
        ("padded signature", format!("sid=s%3A{id}.{sig}%3D")),
        ("malformed escapes", "sid=s%3A%%%ZZ.x".to_owned()),
        ("not utf-8 when decoded", "sid=%FF%FE%FD".to_owned()),
        ("empty", "sid=".to_owned()),
        (
            "oversized",
            format!("sid=s%3A{id}.{sig}{}", "A".repeat(5000)),
        ),
        ("huge id", format!("sid=s%3A{}.{sig}", "a".repeat(3000))),
    ];
    for (what, cookie) in &bad {
        let before = command_calls(&server);
        let r = send(&app, "GET", "/profile", Some(cookie)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}");
        assert!(r.set_cookies.is_empty(), "{what}");
        assert!(
            delta(&server, &before).is_empty(),
            "{what}: a bad cookie must not reach the store"
        );
        // Writing with a bad cookie starts a new session under a new id.
        let r = send(&app, "POST", "/visit", Some(cookie)).await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "1"), "{what}");
        assert_ne!(id_of(&r.cookie()), id, "{what}");
    }
    // The real session is untouched by all of that.
    assert_eq!(
        send(&app, "GET", "/profile", Some(&good)).await.status,
        StatusCode::OK
    );

    // Unknown (never stored) and expired ids: validly signed, no record.
    let unknown = format!(
        "sid={}",
        encode_value(
            &SessionSecrets::new(["the-secret"])
                .expect("s")
                .sign(&SessionId::generate())
        )
    );
    let r = send(&app, "POST", "/visit", Some(&unknown)).await;
    assert_eq!(r.body, "1");
    assert_ne!(r.cookie(), unknown, "an unknown id is never adopted");
    server.cli(&["PEXPIRE", &format!("sess:{id}"), "1"]);
    assert!(wait_until(Duration::from_secs(5), || server
        .cli(&["EXISTS", &format!("sess:{id}")])
        == "0")
    .await
    .is_some());
    assert_eq!(
        send(&app, "GET", "/profile", Some(&good)).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_cookie_of_the_name_counts() {
    let server = RedisServer::start();
    let cache = cache_on(Some(&server)).await;
    let app = app(sessions(&cache, config(&["s"])));
    let good = logged_in(&app).await;
    let r = send(
        &app,
        "GET",
        "/profile",
        Some(&format!("other=1; {good}; sid=junk")),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = send(&app, "GET", "/profile", Some(&format!("sid=junk; {good}"))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_rotation_accepts_old_cookies_and_resigns_them() {
    let server = RedisServer::start();
    let cache = cache_on(Some(&server)).await;
    let old_app = app(sessions(&cache, config(&["old-secret"])));
    let old_cookie = logged_in(&old_app).await;
    let id = id_of(&old_cookie);

    // Deployed with a new secret, the old one kept as previous.
    let rotated = app(sessions(&cache, config(&["new-secret", "old-secret"])));
    let r = send(&rotated, "GET", "/profile", Some(&old_cookie)).await;
    assert_eq!(r.status, StatusCode::OK);
    let resigned = r.cookie();
    assert_eq!(id_of(&resigned), id, "same session id");
    assert_ne!(resigned, old_cookie);
    let new_only = SessionSecrets::new(["new-secret"]).expect("secret");
    let value = resigned
        .split_once('=')
        .expect("pair")
        .1
        .replace("%3A", ":")
        .replace("%2B", "+")
        .replace("%2F", "/");
    assert!(
        new_only.verify(&value).is_some(),
        "signed with the current secret"
    );
    // A cookie signed with the current secret is not re-sent.
    let r = send(&rotated, "GET", "/profile", Some(&resigned)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.set_cookies.is_empty());

    // Once the old secret is dropped, old cookies stop working; new ones keep working.
    let new_app = app(sessions(&cache, config(&["new-secret"])));
    assert_eq!(
        send(&new_app, "GET", "/profile", Some(&old_cookie))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(&new_app, "GET", "/profile", Some(&resigned))
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn attributes_are_secure_by_default() {
    let cache = cache_sdk::Cache::in_memory();
    let cfg = SessionConfig::from_vars([
        ("SESSION_SECRET", "production-secret-of-enough-length!"),
        ("SESSION_COOKIE_NAME", "app.sid"),
    ])
    .expect("cfg");
    let app = app(sessions(&cache, cfg));
    let r = send(&app, "POST", "/visit", None).await;
    let c = &r.set_cookies[0];
    assert!(c.starts_with("app.sid=s%3A"), "{c}");
    for attr in [
        "; Path=/",
        "; Expires=",
        "; HttpOnly",
        "; Secure",
        "; SameSite=Lax",
    ] {
        assert!(c.contains(attr), "{attr} missing in {c}");
    }
    assert!(!c.contains("Max-Age"), "{c}");

    let dev = SessionConfig::from_vars([("APP_ENV", "development")]).expect("cfg");
    let app = common::app(sessions(&cache, dev));
    let c = &send(&app, "POST", "/visit", None).await.set_cookies[0];
    assert!(!c.contains("Secure"), "{c}");
    assert!(c.contains("HttpOnly"));
}
