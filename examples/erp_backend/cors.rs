//! The browser origins allowed to call this API with the user's cookies: CORS for
//! `fetch(…, {credentials: "include"})` from a front end on another origin, and the same list
//! for the WebSocket `Origin` check (`ws.rs`).
//!
//! `CORS_ORIGINS=https://erp.example.com,https://admin.example.com` (exact origins: scheme,
//! host and port, no path). A listed origin's preflight (`OPTIONS`) and responses carry
//! `Access-Control-Allow-Origin: <that origin>` and `Access-Control-Allow-Credentials: true`;
//! any other origin gets neither, so its browser refuses to hand the answer to its page.
//! Without the variable no CORS header is sent at all (same-origin front ends only).
//! `ALLOWED_ORIGINS`, the WebSocket setting's older name, is read when `CORS_ORIGINS` is not
//! set.

use std::collections::HashMap;
use std::time::Duration;

use axum::http::{header, HeaderValue, Method};
use tower_http::cors::{AllowCredentials, AllowOrigin, CorsLayer};

/// How long a browser may reuse a preflight answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// The allowed origins, normalised (lowercase, no trailing `/`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedOrigins(Vec<String>);

impl AllowedOrigins {
    /// Reads `CORS_ORIGINS` (or its older name `ALLOWED_ORIGINS`).
    ///
    /// # Errors
    /// A message naming the variable when an entry is not an `http(s)://host[:port]` origin,
    /// or when both variables are set to different lists.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, String> {
        let read = |name: &str| -> Result<Option<Self>, String> {
            let Some(v) = vars.get(name).filter(|v| !v.trim().is_empty()) else {
                return Ok(None);
            };
            let mut list = Vec::new();
            for item in v.split(',').map(str::trim).filter(|o| !o.is_empty()) {
                list.push(
                    normalise(item).ok_or_else(|| {
                        format!(
                            "{name}={v:?} is invalid: {item:?} is not an origin such as https://erp.example.com (scheme, host and port only)"
                        )
                    })?,
                );
            }
            Ok(Some(Self(list)))
        };
        match (read("CORS_ORIGINS")?, read("ALLOWED_ORIGINS")?) {
            (Some(cors), Some(old)) if cors != old => Err(
                "ALLOWED_ORIGINS differs from CORS_ORIGINS: one list serves CORS and WebSockets; remove ALLOWED_ORIGINS"
                    .to_owned(),
            ),
            (Some(list), _) | (None, Some(list)) => Ok(list),
            (None, None) => Ok(Self::default()),
        }
    }

    /// Whether no origin is listed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a browser's `Origin` header value is listed.
    pub fn contains(&self, origin: &str) -> bool {
        let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        self.0.contains(&origin)
    }

    /// The CORS layer for this list, or `None` when no origin is listed.
    pub fn layer(&self) -> Option<CorsLayer> {
        if self.is_empty() {
            return None;
        }
        let values: Vec<HeaderValue> = self
            .0
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        let list = self.clone();
        Some(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(values))
                // Only with a listed origin: an unlisted one gets no CORS header at all.
                .allow_credentials(AllowCredentials::predicate(move |origin, _| {
                    origin.to_str().is_ok_and(|o| list.contains(o))
                }))
                .allow_methods([
                    Method::GET,
                    Method::POST,
                    Method::PUT,
                    Method::DELETE,
                    Method::OPTIONS,
                ])
                .allow_headers([header::CONTENT_TYPE])
                .expose_headers([header::RETRY_AFTER])
                .max_age(PREFLIGHT_MAX_AGE),
        )
    }
}

/// `scheme://host[:port]` in lowercase, or `None` when `origin` is not one.
fn normalise(origin: &str) -> Option<String> {
    let origin = origin.trim_end_matches('/').to_ascii_lowercase();
    let (scheme, authority) = origin.split_once("://")?;
    let valid = matches!(scheme, "http" | "https")
        && !authority.is_empty()
        && !authority.contains(['/', '?', '#', '@', ' ', '*']);
    valid.then_some(origin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::vars;

    #[test]
    fn origins_are_normalised_and_matched_exactly() {
        let o = AllowedOrigins::from_vars(&vars(&[(
            "CORS_ORIGINS",
            " https://ERP.example.com/ , http://localhost:5173",
        )]))
        .unwrap();
        assert!(o.contains("https://erp.example.com"));
        assert!(o.contains("http://localhost:5173"));
        assert!(!o.contains("http://erp.example.com"));
        assert!(!o.contains("https://erp.example.com.evil.io"));
        assert!(!o.contains("null"));
        assert!(o.layer().is_some());
        let none = AllowedOrigins::from_vars(&vars(&[])).unwrap();
        assert!(none.is_empty() && none.layer().is_none());
    }

    #[test]
    fn the_older_name_is_read_and_must_agree() {
        let old =
            AllowedOrigins::from_vars(&vars(&[("ALLOWED_ORIGINS", "https://a.example")])).unwrap();
        assert!(old.contains("https://a.example"));
        let err = AllowedOrigins::from_vars(&vars(&[
            ("CORS_ORIGINS", "https://a.example"),
            ("ALLOWED_ORIGINS", "https://b.example"),
        ]))
        .unwrap_err();
        assert!(err.starts_with("ALLOWED_ORIGINS"), "{err}");
    }

    #[test]
    fn non_origins_are_refused() {
        for bad in [
            "*",
            "erp.example.com",
            "https://erp.example.com/app",
            "ftp://x",
        ] {
            let err = AllowedOrigins::from_vars(&vars(&[("CORS_ORIGINS", bad)])).unwrap_err();
            assert!(err.starts_with("CORS_ORIGINS"), "{bad}: {err}");
        }
    }
}
