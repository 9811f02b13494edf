//! [`SessionLayer`]: the tower middleware that gives each request its session.
//!
//! # What a request costs
//!
//! - The layer verifies the cookie's signature (no store access) and puts a lazy handle
//!   into the request's extensions.
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

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderValue, Request, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use super::cookie::Verified;
use super::error::SessionError;
use super::format::SessionFormat;
use super::id::SessionId;
use super::manager::{Loaded, Sessions};
use crate::codec::now_ms;

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
        let cookie = self.sessions.verify_header(
            req.headers()
                .get_all(COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        );
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

/// The request's session, as found in its extensions.
#[derive(Clone)]
pub(crate) struct SessionHandle(pub(crate) Arc<RequestSession>);

/// The typed data of a loaded session, shared by the handles extracted in one request.
pub(crate) struct Cell<T> {
    data: Mutex<Data<T>>,
    format: SessionFormat,
}

/// A session's data: shared with L1 until the request changes it.
pub(crate) enum Data<T> {
    Owned(T),
    Shared { value: Arc<T>, raw: Arc<[u8]> },
}

impl<T> Cell<T> {
    fn new(data: Data<T>, format: SessionFormat) -> Self {
        Self {
            data: Mutex::new(data),
            format,
        }
    }

    /// Reads the data.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        match &*lock(&self.data) {
            Data::Owned(t) => f(t),
            Data::Shared { value, .. } => f(value),
        }
    }

    /// Changes the data, first taking a copy of its own when it is shared with L1 (decoded
    /// again from the record: session types need not be `Clone`).
    pub(crate) fn write<R>(&self, f: impl FnOnce(&mut T) -> R) -> R
    where
        T: Serialize + DeserializeOwned + Default,
    {
        let mut data = lock(&self.data);
        let mut owned = match std::mem::replace(&mut *data, Data::Owned(T::default())) {
            Data::Owned(t) => t,
            Data::Shared { value, raw } => Arc::try_unwrap(value).unwrap_or_else(|_| {
                match self.format.decode::<T>(&raw) {
                    Ok(d) => d.data,
                    Err(e) => {
                        // It decoded as `T` when it was read: this does not happen.
                        tracing::error!(error = %e.0, "session record no longer decodes; starting from empty data");
                        T::default()
                    }
                }
            }),
        };
        let r = f(&mut owned);
        *data = Data::Owned(owned);
        r
    }
}

/// What the layer needs from a [`Cell`] without knowing its type.
trait Erased: Send + Sync {
    /// The record to store, in the configured format.
    fn encode(
        &self,
        sessions: &Sessions,
        snapshot: &Snapshot,
        now_ms: u64,
    ) -> Result<Vec<u8>, SessionError>;
}

impl<T: Serialize + Send + Sync + 'static> Erased for Cell<T> {
    fn encode(
        &self,
        sessions: &Sessions,
        snapshot: &Snapshot,
        now_ms: u64,
    ) -> Result<Vec<u8>, SessionError> {
        self.read(|data| sessions.encode_record(data, &snapshot.extra, snapshot.ttl, now_ms))
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a plain read or write of the data; a panic inside a
    // handler's closure cannot leave it half-updated in a way later code relies on.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Per-request session state.
pub(crate) struct RequestSession {
    sessions: Sessions,
    cookie: Option<Verified>,
    /// Serializes loading and saving within the request.
    io: tokio::sync::Mutex<()>,
    state: Mutex<State>,
}

struct Typed {
    any: Arc<dyn Any + Send + Sync>,
    erased: Arc<dyn Erased>,
}

#[derive(Default)]
struct State {
    loaded: Option<Typed>,
    /// The stored id; `None` while the session is new (not stored).
    id: Option<SessionId>,
    ttl: Duration,
    saved_at_ms: Option<u64>,
    extra: Map<String, Value>,
    /// Bumped by every change; `saved_generation` is the one last written.
    generation: u64,
    saved_generation: u64,
    destroy: bool,
    regenerate: bool,
    /// The cookie to send, decided by a save, touch or destroy.
    cookie: Option<CookieAction>,
}

#[derive(Clone)]
enum CookieAction {
    Set { id: SessionId, expires_ms: u64 },
    Remove,
}

/// What the layer learns at the end of the request.
#[derive(Default)]
pub(crate) struct Outcome {
    pub(crate) cookie: Option<String>,
    pub(crate) failed: Option<SessionError>,
}

struct Snapshot {
    ttl: Duration,
    extra: Map<String, Value>,
}

impl RequestSession {
    fn new(sessions: Sessions, cookie: Option<Verified>) -> Self {
        Self {
            sessions,
            cookie,
            io: tokio::sync::Mutex::new(()),
            state: Mutex::new(State::default()),
        }
    }

    /// Loads the session as `T` (once per request). `Err` when it was already loaded as
    /// another type.
    pub(crate) async fn load<T>(&self) -> Result<Arc<Cell<T>>, &'static str>
    where
        T: Serialize + DeserializeOwned + Default + Send + Sync + 'static,
    {
        let _io = self.io.lock().await;
        if let Some(l) = &lock(&self.state).loaded {
            return l
                .any
                .clone()
                .downcast::<Cell<T>>()
                .map_err(|_| "the session was already extracted as another type in this request");
        }
        let found = match &self.cookie {
            None => None,
            Some(v) => match self.sessions.load_shared::<T>(&v.id).await {
                Ok(found) => found.map(|l| (v.id.clone(), l)),
                Err(e) => {
                    tracing::error!(error = %e, "session could not be read; starting a fresh session");
                    None
                }
            },
        };
        let format = self.sessions.config().format;
        let mut st = lock(&self.state);
        let cell = match found {
            Some((id, r)) => {
                st.id = Some(id);
                st.ttl = r.ttl;
                st.saved_at_ms = r.saved_at_ms;
                st.extra = r.extra;
                let data = match Arc::try_unwrap(r.data) {
                    Ok(owned) => Data::Owned(owned),
                    Err(value) => Data::Shared { value, raw: r.raw },
                };
                Cell::new(data, format)
            }
            None => {
                let fresh = Loaded::fresh(T::default(), self.sessions.config().ttl);
                st.id = None;
                st.ttl = fresh.ttl;
                st.saved_at_ms = None;
                st.extra = fresh.extra;
                Cell::new(Data::Owned(fresh.data), format)
            }
        };
        let cell = Arc::new(cell);
        st.loaded = Some(Typed {
            any: cell.clone(),
            erased: cell.clone(),
        });
        Ok(cell)
    }

    pub(crate) fn with_state<R>(&self, f: impl FnOnce(&mut StateView<'_>) -> R) -> R {
        let mut st = lock(&self.state);
        f(&mut StateView(&mut st))
    }

    /// Writes what changed: destroy, regenerate, create or save; or touches. Updates the
    /// state so that a later call writes only newer changes.
    pub(crate) async fn flush(&self) -> Result<(), SessionError> {
        let _io = self.io.lock().await;
        self.flush_locked().await
    }

    async fn flush_locked(&self) -> Result<(), SessionError> {
        let (erased, id, generation, changed, destroy, regenerate, snapshot, saved_at) = {
            let st = lock(&self.state);
            let Some(l) = &st.loaded else { return Ok(()) };
            (
                l.erased.clone(),
                st.id.clone(),
                st.generation,
                st.generation != st.saved_generation,
                st.destroy,
                st.regenerate,
                Snapshot {
                    ttl: st.ttl,
                    extra: st.extra.clone(),
                },
                st.saved_at_ms,
            )
        };
        let sessions = &self.sessions;

        if destroy {
            let result = match &id {
                Some(id) => sessions.destroy(id).await.map(|_| ()),
                None => Ok(()),
            };
            let mut st = lock(&self.state);
            st.destroy = false;
            st.regenerate = false;
            st.id = None;
            st.saved_generation = st.generation;
            st.loaded = None;
            if self.cookie.is_some() || id.is_some() {
                st.cookie = Some(CookieAction::Remove);
            }
            return result;
        }

        let mut id = id;
        if regenerate {
            if let Some(old) = id.take() {
                sessions.destroy(&old).await?;
            }
            let mut st = lock(&self.state);
            st.id = None;
            st.regenerate = false;
        }

        match id {
            None if changed || regenerate => {
                let now = now_ms();
                let record = erased.encode(sessions, &snapshot, now)?;
                let new_id = sessions.create_raw(record, snapshot.ttl, now).await?;
                let mut st = lock(&self.state);
                st.id = Some(new_id.clone());
                st.saved_generation = generation;
                st.cookie = Some(CookieAction::Set {
                    id: new_id,
                    expires_ms: expiry(snapshot.ttl),
                });
                Ok(())
            }
            None => Ok(()),
            Some(id) if changed => {
                let now = now_ms();
                let record = erased.encode(sessions, &snapshot, now)?;
                let result = sessions.save_raw(&id, record, snapshot.ttl, now).await;
                let mut st = lock(&self.state);
                match result {
                    Ok(()) => {
                        st.saved_generation = generation;
                        st.cookie = Some(CookieAction::Set {
                            id,
                            expires_ms: expiry(snapshot.ttl),
                        });
                        Ok(())
                    }
                    Err(SessionError::Gone) => {
                        // Destroyed meanwhile (a logout in another request): stay gone.
                        st.saved_generation = generation;
                        st.id = None;
                        st.cookie = Some(CookieAction::Remove);
                        Err(SessionError::Gone)
                    }
                    Err(e) => Err(e),
                }
            }
            Some(id) => {
                if sessions.needs_touch(&id, saved_at) {
                    let found = sessions.touch(&id, snapshot.ttl).await?;
                    let mut st = lock(&self.state);
                    st.cookie = Some(if found {
                        CookieAction::Set {
                            id,
                            expires_ms: expiry(snapshot.ttl),
                        }
                    } else {
                        CookieAction::Remove
                    });
                    if !found {
                        st.id = None;
                    }
                } else if self.cookie.as_ref().is_some_and(|c| c.rotated) {
                    // Signed with a previous secret: sign again with the current one.
                    let mut st = lock(&self.state);
                    if st.cookie.is_none() {
                        st.cookie = Some(CookieAction::Set {
                            id,
                            expires_ms: expiry(snapshot.ttl),
                        });
                    }
                }
                Ok(())
            }
        }
    }

    /// Runs after the handler: writes, and says which cookie to send.
    pub(crate) async fn finish(&self) -> Outcome {
        let _io = self.io.lock().await;
        let failed = match self.flush_locked().await {
            Ok(()) => None,
            Err(SessionError::Gone) => {
                tracing::debug!(
                    "session destroyed by another request before this save; not recreated"
                );
                None
            }
            Err(e) => {
                tracing::error!(error = %e, "session could not be saved; the response is sent without it");
                Some(e)
            }
        };
        let action = lock(&self.state).cookie.take();
        let attrs = &self.sessions.config().cookie;
        let cookie = action.map(|a| match a {
            CookieAction::Set { id, expires_ms } => {
                attrs.set_cookie(&self.sessions.cookie_value(&id), expires_ms)
            }
            CookieAction::Remove => attrs.removal(),
        });
        Outcome { cookie, failed }
    }
}

fn expiry(ttl: Duration) -> u64 {
    now_ms().saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
}

/// Mutable access to a request's session flags, for [`Session`](super::Session).
pub(crate) struct StateView<'a>(&'a mut State);

impl StateView<'_> {
    pub(crate) fn id(&self) -> Option<SessionId> {
        self.0.id.clone()
    }
    pub(crate) fn changed(&mut self) {
        self.0.generation += 1;
    }
    pub(crate) fn is_changed(&self) -> bool {
        self.0.generation != self.0.saved_generation || self.0.regenerate || self.0.destroy
    }
    pub(crate) fn clear_extra(&mut self) {
        self.0.extra.clear();
    }
    pub(crate) fn destroy(&mut self) {
        self.0.destroy = true;
    }
    pub(crate) fn regenerate(&mut self) {
        self.0.regenerate = true;
    }
    pub(crate) fn ttl(&self) -> Duration {
        self.0.ttl
    }
    pub(crate) fn set_ttl(&mut self, ttl: Duration) {
        self.0.ttl = ttl;
        self.0.generation += 1;
    }
}
