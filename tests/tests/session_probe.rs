//! Regressions for what a security probe found: a planted record's fields and lifetime
//! surviving a login, an out-of-range lifetime answering 500, and one bad cookie hiding
//! the session cookie.

mod common;

use axum::body::Body;
use axum::http::{header, HeaderValue, Request, StatusCode};
use cache_sdk::session::cookie::encode_value;
use cache_sdk::session::{SessionFormat, SessionId, Sessions};
use cache_sdk::Cache;
use common::*;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

const SECRET: &str = "probe-secret";

fn express(cache: &Cache) -> Sessions {
    sessions(cache, config(&[SECRET]).format(SessionFormat::Express))
}

/// The `Cookie` header for a session id.
fn cookie_for(sessions: &Sessions, id: &SessionId) -> String {
    format!(
        "{}={}",
        sessions.config().cookie.name,
        encode_value(&sessions.cookie_value(id))
    )
}

/// Plants `record` under a fresh id, as an attacker with write access to a sibling app
/// (or a Node backend) could, and returns the id.
async fn plant(cache: &Cache, record: &str) -> SessionId {
    let id = SessionId::generate();
    cache
        .set_raw(
            &id.key(),
            record.as_bytes().to_vec(),
            cache_sdk::Ttl::Session,
        )
        .await
        .expect("planted");
    id
}

async fn record(cache: &Cache, id: &str) -> Value {
    let key = format!("sess:{id}");
    let raw = cache.get_raw(&key).await.expect("read").expect("stored");
    serde_json::from_slice(&raw).expect("json")
}

fn new_id(reply: &Reply) -> String {
    let pair = reply.cookie();
    let value = pair.split_once('=').expect("pair").1.replace("%3A", ":");
    value
        .strip_prefix("s:")
        .and_then(|v| v.split_once('.'))
        .expect("signed id")
        .0
        .to_owned()
}

#[tokio::test]
async fn regenerate_drops_planted_fields_and_lifetime() {
    let cache = Cache::in_memory();
    let sessions = express(&cache);
    let app = app(sessions.clone());
    let planted = plant(
        &cache,
        r#"{"cookie":{"originalMaxAge":31536000000,"expires":"2030-01-01T00:00:00.000Z","httpOnly":true,"path":"/"},"csrfSecret":"attacker","passport":{"user":1},"role":"admin","username":"x"}"#,
    )
    .await;
    let cookie = cookie_for(&sessions, &planted);

    let login = send(&app, "POST", "/login?user=7&name=alice", Some(&cookie)).await;
    assert_eq!(login.status, StatusCode::OK, "{login:?}");
    let id = new_id(&login);
    assert_ne!(id, planted.as_str());
    assert!(cache.get_raw(&planted.key()).await.expect("read").is_none());

    let stored = record(&cache, &id).await;
    for field in ["csrfSecret", "passport", "role"] {
        assert!(
            stored.get(field).is_none(),
            "{field} carried over: {stored}"
        );
    }
    assert_eq!(stored["userId"], 7);
    let configured = u64::try_from(sessions.config().ttl.as_millis()).expect("ms");
    assert_eq!(stored["cookie"]["originalMaxAge"], configured);
    let left = cache
        .ttl(&format!("sess:{id}"))
        .await
        .expect("ttl")
        .expect("expires");
    assert!(left <= sessions.config().ttl, "{left:?}");
}

#[tokio::test]
async fn an_out_of_range_lifetime_is_ignored_not_a_500() {
    let cache = Cache::in_memory();
    let sessions = express(&cache);
    let app = app(sessions.clone());
    let configured = u64::try_from(sessions.config().ttl.as_millis()).expect("ms");
    for max_age in ["31536000001", "1e300", "-86400000", "0.5"] {
        let planted = plant(
            &cache,
            &format!(r#"{{"cookie":{{"originalMaxAge":{max_age}}},"visits":1}}"#),
        )
        .await;
        let cookie = cookie_for(&sessions, &planted);
        // A plain save keeps the id and writes the configured lifetime.
        let visit = send(&app, "POST", "/visit", Some(&cookie)).await;
        assert_eq!(visit.status, StatusCode::OK, "{max_age}: {visit:?}");
        assert_eq!(visit.body, "2");
        let stored = record(&cache, planted.as_str()).await;
        assert_eq!(stored["cookie"]["originalMaxAge"], configured, "{max_age}");
        // A login from it answers 200 too.
        let login = send(&app, "POST", "/login?user=1&name=a", Some(&cookie)).await;
        assert_eq!(login.status, StatusCode::OK, "{max_age}: {login:?}");
    }

    // The native envelope: a lifetime over the longest TTL is ignored as well.
    let native = sessions_native(&cache);
    let app = common::app(native.clone());
    let planted = plant(
        &cache,
        r#"{"v":1,"ttl":999999999999,"savedAt":1,"data":{"visits":4}}"#,
    )
    .await;
    let cookie = cookie_for(&native, &planted);
    let visit = send(&app, "POST", "/visit", Some(&cookie)).await;
    assert_eq!(visit.status, StatusCode::OK, "{visit:?}");
    assert_eq!(visit.body, "5");
    let stored = record(&cache, planted.as_str()).await;
    assert_eq!(stored["ttl"], native.config().ttl.as_secs());
}

fn sessions_native(cache: &Cache) -> Sessions {
    sessions(cache, config(&[SECRET]))
}

#[tokio::test]
async fn a_non_ascii_cookie_does_not_hide_the_session_cookie() {
    let cache = Cache::in_memory();
    let sessions = sessions_native(&cache);
    let app = app(sessions.clone());
    let login = send(&app, "POST", "/login?user=3&name=carol", None).await;
    let session = login.cookie();

    for header in [
        format!("theme=d\u{e9}j\u{e0}; {session}").into_bytes(),
        [b"a=\xff\xfe; ".as_slice(), session.as_bytes(), b"; z=\x80"].concat(),
        [session.as_bytes(), b"; tracking=\xc3"].concat(),
    ] {
        let req = Request::builder()
            .uri("/profile")
            .header(
                header::COOKIE,
                HeaderValue::from_bytes(&header).expect("header bytes"),
            )
            .body(Body::empty())
            .expect("request");
        let res = app.clone().oneshot(req).await.expect("infallible");
        assert_eq!(res.status(), StatusCode::OK);
        let body = res.into_body().collect().await.expect("body").to_bytes();
        let user: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(user["username"], "carol");
    }
}
