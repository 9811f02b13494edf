//! The express-session + connect-redis record format.
//!
//! A record is compact JSON: a `cookie` object first, then the application's fields at the
//! top level, e.g.
//! `{"cookie":{"originalMaxAge":86400000,"expires":"2026-11-26T18:50:56.263Z","secure":false,"httpOnly":true,"path":"/","sameSite":"lax"},"userId":1,"username":"alice"}`.
//!
//! - The session type must serialize as a JSON object without a `cookie` field.
//! - Fields the Rust type does not know (written by the Node side) are kept as they were
//!   when the Rust side saves, so neither side erases the other's data. A field the Rust
//!   type knows and no longer serializes (a `None` skipped with `skip_serializing_if`) is
//!   removed.
//! - The TTL is `cookie.originalMaxAge` (connect-redis derives it from `cookie.expires`,
//!   which express-session sets to now + `originalMaxAge` before every save and touch);
//!   without it, the configured TTL. `cookie.expires` itself is not checked when reading,
//!   as connect-redis does not check it either: expiry is the Redis key's TTL.
//!
//! May import: serde, the cookie attributes, the date helpers and its parent's shared
//! types. Must not: import the native format.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use super::{Decoded, FormatError};
use crate::session::cookie::{CookieAttributes, SameSite};
use crate::session::date::{iso, parse_iso};
use crate::ttl::MAX_TTL;

/// The longest lifetime read from a record, in ms (the cache's longest TTL).
#[allow(clippy::cast_precision_loss)] // 3.2e10 is exact in an f64
const MAX_TTL_MS: f64 = MAX_TTL.as_millis() as f64;

/// Decodes a record; `Err` for anything express-session itself could not use (not JSON,
/// not an object, no `cookie` object) or that does not fit `T`.
pub(super) fn decode<T: DeserializeOwned + Serialize + Default>(
    bytes: &[u8],
) -> Result<Decoded<T>, FormatError> {
    let mut map: Map<String, Value> = serde_json::from_slice(bytes)
        .map_err(|e| FormatError(format!("not a JSON object: {e}")))?;
    let cookie = match map.remove("cookie") {
        Some(Value::Object(c)) => c,
        _ => return Err(FormatError("no `cookie` object".into())),
    };
    let ttl = cookie
        .get("originalMaxAge")
        .and_then(Value::as_f64)
        // Out of range (under a second, over the longest TTL, not finite): a lifetime this
        // side would refuse to write, so the record's own is ignored (configured TTL).
        .filter(|ms| ms.is_finite() && *ms >= 1000.0 && *ms <= MAX_TTL_MS)
        .map(|ms| Duration::from_millis(ms as u64));
    let expires = cookie
        .get("expires")
        .and_then(Value::as_str)
        .and_then(parse_iso);
    let saved_at_ms = match (expires, ttl) {
        (Some(e), Some(t)) => e.checked_sub(u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        _ => None,
    };
    let data: T = if map.is_empty() {
        // `{"cookie":{…}}` alone: a session without data yet.
        T::default()
    } else {
        serde_json::from_value(Value::Object(map.clone()))
            .map_err(|e| FormatError(format!("does not fit the session type: {e}")))?
    };
    // Keep what the Rust type does not account for: the stored fields minus those it
    // writes back.
    if let Ok(Value::Object(known)) = serde_json::to_value(&data) {
        map.retain(|k, _| !known.contains_key(k));
    }
    Ok(Decoded {
        data,
        ttl,
        saved_at_ms,
        extra: map,
    })
}

fn same_site(s: SameSite) -> &'static str {
    match s {
        SameSite::Strict => "strict",
        SameSite::Lax => "lax",
        SameSite::None => "none",
    }
}

/// The `cookie` object, in express-session's field order.
fn cookie_json(attrs: &CookieAttributes, ttl: Duration, now_ms: u64) -> String {
    let max_age = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    let mut out = format!(
        r#"{{"originalMaxAge":{max_age},"expires":"{}","secure":{},"httpOnly":{}"#,
        iso(now_ms.saturating_add(max_age)),
        attrs.secure,
        attrs.http_only
    );
    if let Some(d) = &attrs.domain {
        out.push_str(r#","domain":"#);
        out.push_str(&Value::String(d.clone()).to_string());
    }
    out.push_str(r#","path":"#);
    out.push_str(&Value::String(attrs.path.clone()).to_string());
    out.push_str(r#","sameSite":""#);
    out.push_str(same_site(attrs.same_site));
    out.push_str("\"}");
    out
}

/// Encodes a record: the cookie object, the type's fields in their declared order, then
/// the preserved fields.
pub(super) fn encode<T: Serialize>(
    data: &T,
    extra: &Map<String, Value>,
    attrs: &CookieAttributes,
    ttl: Duration,
    now_ms: u64,
) -> Result<Vec<u8>, FormatError> {
    let body = serde_json::to_string(data).map_err(|e| FormatError(e.to_string()))?;
    let fields: Map<String, Value> = serde_json::from_str(&body).map_err(|_| {
        FormatError("the session type must serialize as a JSON object (a struct or a map)".into())
    })?;
    if fields.contains_key("cookie") {
        return Err(FormatError(
            "the session type must not have a field named `cookie`: express-session keeps its cookie there".into(),
        ));
    }
    let mut out = String::with_capacity(body.len() + 200);
    out.push_str(r#"{"cookie":"#);
    out.push_str(&cookie_json(attrs, ttl, now_ms));
    let inner = body
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .unwrap_or_default();
    if !inner.trim().is_empty() {
        out.push(',');
        out.push_str(inner);
    }
    for (k, v) in extra {
        if k != "cookie" && !fields.contains_key(k) {
            out.push(',');
            out.push_str(&Value::String(k.clone()).to_string());
            out.push(':');
            out.push_str(&v.to_string());
        }
    }
    out.push('}');
    Ok(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct User {
        #[serde(skip_serializing_if = "Option::is_none")]
        user_id: Option<u64>,
        #[serde(default)]
        username: String,
    }

    const CAPTURED: &str = r#"{"cookie":{"originalMaxAge":86400000,"expires":"2026-11-26T18:50:56.263Z","secure":false,"httpOnly":true,"path":"/","sameSite":"lax"},"userId":1,"username":"alice"}"#;

    fn attrs() -> CookieAttributes {
        let mut a = CookieAttributes::new("connect.sid");
        a.secure = false;
        a
    }

    #[test]
    fn decodes_the_captured_record() {
        let d = decode::<User>(CAPTURED.as_bytes()).expect("decodes");
        assert_eq!(
            d.data,
            User {
                user_id: Some(1),
                username: "alice".into()
            }
        );
        assert_eq!(d.ttl, Some(Duration::from_secs(86_400)));
        assert_eq!(d.saved_at_ms, Some(1_795_719_056_263 - 86_400_000));
        assert!(d.extra.is_empty());
    }

    #[test]
    fn encodes_byte_for_byte_like_express() {
        let d = decode::<User>(CAPTURED.as_bytes()).expect("decodes");
        let now = 1_795_719_056_263 - 86_400_000;
        let out = encode(
            &d.data,
            &d.extra,
            &attrs(),
            Duration::from_secs(86_400),
            now,
        )
        .expect("encodes");
        assert_eq!(String::from_utf8(out).expect("utf8"), CAPTURED);
    }

    #[test]
    fn keeps_unknown_fields_and_drops_cleared_ones() {
        let stored = r#"{"cookie":{},"userId":1,"username":"a","cart":[1,2],"flash":null}"#;
        let mut d = decode::<User>(stored.as_bytes()).expect("decodes");
        assert_eq!(d.ttl, None);
        d.data.user_id = None;
        let out = encode(&d.data, &d.extra, &attrs(), Duration::from_secs(60), 0).expect("encodes");
        let v: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["cart"], serde_json::json!([1, 2]));
        assert!(v.get("flash").is_some());
        assert!(v.get("userId").is_none());
        assert_eq!(v["cookie"]["originalMaxAge"], 60_000);
        assert_eq!(v["cookie"]["expires"], "1970-01-01T00:01:00.000Z");
    }

    #[test]
    fn ignores_a_lifetime_out_of_range() {
        for max_age in ["31536000001", "1e300", "-5000", "999", "\"x\"", "null"] {
            let stored = format!(r#"{{"cookie":{{"originalMaxAge":{max_age}}},"userId":1}}"#);
            let d = decode::<User>(stored.as_bytes()).expect("decodes");
            assert_eq!(d.ttl, None, "{max_age}");
            assert_eq!(d.saved_at_ms, None);
        }
        let stored = r#"{"cookie":{"originalMaxAge":31536000000},"userId":1}"#;
        let d = decode::<User>(stored.as_bytes()).expect("decodes");
        assert_eq!(d.ttl, Some(MAX_TTL));
    }

    #[test]
    fn refuses_what_express_cannot_use() {
        assert!(decode::<User>(b"not json").is_err());
        assert!(decode::<User>(b"[1]").is_err());
        assert!(decode::<User>(br#"{"userId":1}"#).is_err());
        assert!(decode::<User>(br#"{"cookie":1,"userId":1}"#).is_err());
        assert!(decode::<User>(br#"{"cookie":{},"userId":"x"}"#).is_err());
        assert!(encode(&5u8, &Map::new(), &attrs(), Duration::from_secs(1), 0).is_err());
        let mut m = std::collections::BTreeMap::new();
        m.insert("cookie", 1);
        assert!(encode(&m, &Map::new(), &attrs(), Duration::from_secs(1), 0).is_err());
    }
}
