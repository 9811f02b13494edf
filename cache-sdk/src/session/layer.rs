//! [`SessionLayer`]: the tower middleware that gives each request its session.
//!
//! This file is only the tower glue: the layer, the service and its future. It verifies
//! the cookie, puts a [`RequestSession`] into the request, and after the handler turns the
//! request session's outcome into a `Set-Cookie` header and, on failure, a
//! [`SessionSaveFailed`] extension. Which write a request needs and how it is made lives
//! in `request.rs`. May import: tower, http, [`Sessions`] and the request session. Must not:
//! read or write the store itself.
//!
//! # What a request costs
//!
//! - The layer verifies the cookie's signature on every request (HMAC-SHA256 of the id,
//!   constant-time comparison; no store access) and puts a lazy handle into the
//!   request's extensions. The check is not cached: with the CPU's SHA instructions it is
//!   1–2% of a read-only request's CPU time over HTTP (`BENCHMARKS.md`), less than a
//!   bounded map of verified cookies would cost to look up, and a cache keyed by cookie
//!   values would be one more place where a forged value meets a valid one.
//! - The store is read only when a handler extracts [`Session<T>`](super::Session): at most
//!   one `GET` per request, and none when the record is held in L1 (with a coherent cache,
//!   see [`CacheSessionStore`](super::CacheSessionStore)): a read-only request for a hot
//!   session then costs no Redis command.
//! - After the handler, the session is written only when it changed (`SET … XX PX`, or
//!   `SET … NX PX` under a fresh id for a new session). A session that was only read has
//!   its expiry extended (`PEXPIRE`, the record is not rewritten) at most once per
//!   [touch interval](super::SessionConfig::touch_interval) per process, with a refreshed
//!   cookie; otherwise a read-only request costs that one `GET` (or nothing) and no write.
//! - A new session nobody wrote to is not stored and gets no cookie.
//! - On the read-only path of a session held in L1 nothing is decoded or copied (the
//!   handler reads the value L1 shares), the session code locks only the request's own state,
//!   and whether to touch is decided from the record L1 holds (it carries this process's
//!   last touch), without a second lookup; no `Set-Cookie` is written.
//!
//! # Concurrent requests of one session
//!
//! Each request works on its own copy, read when its handler asks. When two requests of
//! one session both change it, the one that finishes last writes the whole record and the
//! other's changes are lost (last writer wins; there is no merge). Requests that only read
//! never write the record, so they cannot undo another request's change. A save never
//! brings back a session that another request destroyed or regenerated meanwhile (it only
//! replaces an existing record), so logging out cannot be undone by a slow request still
//! in flight. Keep data that several concurrent requests update (counters, carts edited
//! from two tabs) in the cache or a database rather than in the session.
//!
//! With L1 coherence on, a session is read from this instance's L1 while it is there. A
//! change made through another instance (or by a Node backend sharing the sessions)
//! evicts it when the invalidation arrives: on loopback within tens of microseconds
//! typically and a few milliseconds at the 99th percentile (`docs/coherence.md`). A
//! request that reaches this instance inside that window reads the previous version, and
//! if it writes, last writer wins as above. Requests of one user separated by a network
//! round trip are not affected in practice; with `Coherence::Off` every request reads
//! Redis.
//!
//! # When a save fails
//!
//! The handler's response is kept (status and body): turning a finished response into a
//! bare 500 would hide what the handler did. The failure is logged at `error` level
//! (without the session id), no cookie is set for a new session that was not stored, and
//! a [`SessionSaveFailed`] is put into the response's extensions so that an outer layer
//! can report it or turn it into an error page. Handlers that must not go on without a
//! stored session (a login) can call [`Session::save`](super::Session::save) themselves
//! and handle the error.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderValue, Request, Response};

use super::manager::Sessions;
use super::request::{RequestSession, SessionHandle};

/// Adds sessions to a service. Cheap to clone.
///
/// ```
/// use axum::{routing::get, Router};
/// use cache_sdk::session::{CacheSessionStore, Session, SessionConfig, SessionLayer, Sessions};
///
/// #[derive(Default, serde::Serialize, serde::Deserialize)]
/// struct Visits { count: u32 }
///
/// async fn count(session: Session<Visits>) -> String {
///     let n = session.update(|v| { v.count += 1; v.count });
///     format!("visit {n}")
/// }
///
/// let store = CacheSessionStore::new(cache_sdk::Cache::in_memory());
/// let sessions = Sessions::new(store, SessionConfig::development()).unwrap();
/// let app: Router = Router::new().route("/", get(count)).layer(SessionLayer::new(sessions));
/// # let _ = app;
/// ```
#[derive(Debug, Clone)]
pub struct SessionLayer {
    sessions: Sessions,
}

impl SessionLayer {
    /// A layer on these sessions.
    ///
    /// ```
    /// # use cache_sdk::session::{CacheSessionStore, SessionConfig, SessionLayer, Sessions};
    /// let sessions = Sessions::new(CacheSessionStore::new(cache_sdk::Cache::in_memory()), SessionConfig::development()).unwrap();
    /// let layer = SessionLayer::new(sessions);
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn new(sessions: Sessions) -> Self {
        Self { sessions }
    }

    /// The sessions it serves (for a stats endpoint, say).
    ///
    /// ```
    /// # use cache_sdk::session::{CacheSessionStore, SessionConfig, SessionLayer, Sessions};
    /// # let sessions = Sessions::new(CacheSessionStore::new(cache_sdk::Cache::in_memory()), SessionConfig::development()).unwrap();
    /// let layer = SessionLayer::new(sessions);
    /// assert_eq!(layer.sessions().config().cookie.name, "sid");
    /// ```
    #[must_use]
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }
}

impl<S> tower_layer::Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionService {
            inner,
            sessions: self.sessions.clone(),
        }
    }
}

/// The service [`SessionLayer`] wraps around an inner service.
///
/// `poll_ready` is the inner service's own. `call` calls the inner service right away (on
/// the instance that was polled ready, so no clone of it is needed) and boxes the returned
/// future together with the work that follows the response.
///
/// ```
/// # use cache_sdk::session::{CacheSessionStore, SessionConfig, SessionLayer, SessionService, Sessions};
/// use tower::Layer;
/// let sessions = Sessions::new(CacheSessionStore::new(cache_sdk::Cache::in_memory()), SessionConfig::development()).unwrap();
/// let svc: SessionService<()> = SessionLayer::new(sessions).layer(());
/// # let _ = svc;
/// ```
#[derive(Debug, Clone)]
pub struct SessionService<S> {
    inner: S,
    sessions: Sessions,
}

/// Put into a response's extensions when its session could not be saved.
///
/// ```
/// let f = cache_sdk::session::SessionSaveFailed { message: "redis error: OOM".into() };
/// assert!(f.message.contains("OOM"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSaveFailed {
    /// What went wrong (never holds the session id).
    pub message: String,
}

/// A `Cookie` header as text, leniently: bytes that are not UTF-8 become U+FFFD (only
/// the cookie holding them is then unusable). Borrowed when the header is valid.
fn lossy(v: &HeaderValue) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(v.as_bytes())
}

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for SessionService<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Response<ResBody>, S::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        // Read leniently, as browsers and express do: a byte that is not visible ASCII in
        // one cookie (a sibling subdomain's, say) must not hide the others in the header.
        // A valid header is borrowed, not copied; one header (the usual case) needs no list.
        let cookie = {
            let mut values = req.headers().get_all(COOKIE).iter();
            match (values.next(), values.next()) {
                (None, _) => None,
                (Some(one), None) => self.sessions.verify_header([lossy(one).as_ref()]),
                (Some(first), Some(second)) => {
                    let headers: Vec<_> = [first, second]
                        .into_iter()
                        .chain(values)
                        .map(lossy)
                        .collect();
                    self.sessions
                        .verify_header(headers.iter().map(std::convert::AsRef::as_ref))
                }
            }
        };
        let handle = Arc::new(RequestSession::new(self.sessions.clone(), cookie));
        req.extensions_mut().insert(SessionHandle(handle.clone()));
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut res = fut.await?;
            let outcome = handle.finish().await;
            if let Some(cookie) = outcome.cookie {
                match HeaderValue::from_str(&cookie) {
                    Ok(v) => {
                        res.headers_mut().append(SET_COOKIE, v);
                    }
                    Err(_) => tracing::error!("session cookie is not a valid header value"),
                }
            }
            if let Some(e) = outcome.failed {
                res.extensions_mut().insert(SessionSaveFailed {
                    message: e.to_string(),
                });
            }
            Ok(res)
        })
    }
}
