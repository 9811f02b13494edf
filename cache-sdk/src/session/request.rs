//! The per-request session: the state a request's handlers change through
//! [`Session`](super::Session), and the small named steps that write it when the request
//! ends (or at [`Session::save`](super::Session::save)): [`destroy`](RequestSession::destroy),
//! [`regenerate`](RequestSession::regenerate), [`create`](RequestSession::create),
//! [`save`](RequestSession::save), [`touch`](RequestSession::touch).
//!
//! [`RequestSession::flush`] only decides which step applies; each step writes through
//! [`Sessions`] and records the cookie to send. The tower glue (`layer.rs`) turns the
//! [`Outcome`] into a `Set-Cookie` header and a response extension.
//!
//! May import: [`Sessions`] (load, create, save, touch, destroy), the session id, the format
//! (to copy shared data), the cookie check. Must not: know tower or HTTP types, or the
//! cache under the store.

use crate::metrics::SessionEvent;
use std::any::Any;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use super::cookie::Verified;
use super::error::SessionError;
use super::format::SessionFormat;
use super::id::SessionId;
use super::manager::{Loaded, Sessions};
use super::merge::merge3;
use super::store::SaveIf;
use crate::codec::now_ms;

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

    /// Merges what this request changed (from `base` to its data) into `theirs`, a record
    /// another request saved meanwhile, and keeps the result as this request's data.
    /// Returns the stored fields the type does not know, as `theirs` has them; `None` when
    /// `theirs` is not a record of this type (this request's data then overwrites it).
    fn merge(&self, sessions: &Sessions, base: &[u8], theirs: &[u8]) -> Option<Map<String, Value>>;
}

impl<T: Serialize + DeserializeOwned + Default + Send + Sync + 'static> Erased for Cell<T> {
    fn encode(
        &self,
        sessions: &Sessions,
        snapshot: &Snapshot,
        now_ms: u64,
    ) -> Result<Vec<u8>, SessionError> {
        self.read(|data| sessions.encode_record(data, &snapshot.extra, snapshot.ttl, now_ms))
    }

    fn merge(&self, sessions: &Sessions, base: &[u8], theirs: &[u8]) -> Option<Map<String, Value>> {
        let format = sessions.config().format;
        let theirs = format.decode::<T>(theirs).ok()?;
        let theirs_v = serde_json::to_value(&theirs.data).ok()?;
        let mine_v = self.read(|d| serde_json::to_value(d)).ok()?;
        let merged = match format
            .decode::<T>(base)
            .ok()
            .and_then(|b| serde_json::to_value(&b.data).ok())
        {
            Some(base_v) => merge3(&base_v, &mine_v, &theirs_v),
            None => mine_v,
        };
        let data: T = serde_json::from_value(merged).ok()?;
        self.write(|d| *d = data);
        Some(theirs.extra)
    }
}

/// How many times a save merges into another request's newer record before giving up.
const MAX_MERGES: u32 = 64;

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
    /// When the stored record's expiry was last known to be refreshed (its save, or this
    /// process's touch), for the touch decision.
    refreshed_ms: Option<u64>,
    extra: Map<String, Value>,
    /// The record as stored when this request read or last wrote it: a save applies only
    /// over it (else merges into the newer one).
    base: Option<Arc<[u8]>>,
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

impl CookieAction {
    /// The cookie for `id`, expiring with a session of `ttl` from now.
    fn set(id: SessionId, ttl: Duration) -> Self {
        CookieAction::Set {
            id,
            expires_ms: expiry(ttl),
        }
    }
}

/// What the layer learns at the end of the request.
#[derive(Default)]
pub(crate) struct Outcome {
    pub(crate) cookie: Option<String>,
    pub(crate) failed: Option<SessionError>,
}

/// What a flush works from: the state as it was when the flush began (handlers may go on
/// changing it while the store is written).
struct Pending {
    erased: Arc<dyn Erased>,
    id: Option<SessionId>,
    generation: u64,
    changed: bool,
    destroy: bool,
    regenerate: bool,
    snapshot: Snapshot,
    refreshed_ms: Option<u64>,
    base: Option<Arc<[u8]>>,
}

struct Snapshot {
    ttl: Duration,
    extra: Map<String, Value>,
}

impl RequestSession {
    pub(crate) fn new(sessions: Sessions, cookie: Option<Verified>) -> Self {
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
                Ok(found) => SessionEvent::found(found).map(|l| (v.id.clone(), l)),
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
                st.refreshed_ms = r.refreshed_ms;
                st.extra = r.extra;
                st.base = Some(r.raw.clone());
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
                st.refreshed_ms = None;
                st.extra = fresh.extra;
                st.base = None;
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

    /// The configuration's session lifetime.
    pub(crate) fn configured_ttl(&self) -> Duration {
        self.sessions.config().ttl
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
                SessionEvent::SaveFailed.count();
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

    /// Decides which step applies. Called with `io` held.
    async fn flush_locked(&self) -> Result<(), SessionError> {
        let Some(p) = self.pending() else {
            return Ok(());
        };
        if p.destroy {
            return self.destroy(p.id.as_ref()).await;
        }
        let id = if p.regenerate {
            self.regenerate(p.id.as_ref()).await?;
            None
        } else {
            p.id.clone()
        };
        match id {
            None if p.changed || p.regenerate => self.create(&p).await,
            None => Ok(()),
            Some(id) if p.changed => self.save(id, &p).await,
            Some(id) => self.touch(id, &p).await,
        }
    }

    /// The state a flush starts from; `None` when no handler loaded the session.
    fn pending(&self) -> Option<Pending> {
        let st = lock(&self.state);
        let loaded = st.loaded.as_ref()?;
        Some(Pending {
            erased: loaded.erased.clone(),
            id: st.id.clone(),
            generation: st.generation,
            changed: st.generation != st.saved_generation,
            destroy: st.destroy,
            regenerate: st.regenerate,
            snapshot: Snapshot {
                ttl: st.ttl,
                extra: st.extra.clone(),
            },
            refreshed_ms: st.refreshed_ms,
            base: st.base.clone(),
        })
    }

    /// Deletes the stored record (if any), forgets the data, and removes the cookie the
    /// client sent or was about to get.
    async fn destroy(&self, id: Option<&SessionId>) -> Result<(), SessionError> {
        let result = match id {
            Some(id) => self.sessions.destroy(id).await.map(|_| ()),
            None => Ok(()),
        };
        let mut st = lock(&self.state);
        st.destroy = false;
        st.regenerate = false;
        st.id = None;
        st.base = None;
        st.saved_generation = st.generation;
        st.loaded = None;
        if self.cookie.is_some() || id.is_some() {
            st.cookie = Some(CookieAction::Remove);
        }
        result
    }

    /// Deletes the record under the old id (if any): the data is stored again under a
    /// fresh id by [`create`](Self::create).
    async fn regenerate(&self, old: Option<&SessionId>) -> Result<(), SessionError> {
        if let Some(old) = old {
            self.sessions.destroy(old).await?;
        }
        SessionEvent::Regenerated.count();
        let mut st = lock(&self.state);
        st.id = None;
        st.regenerate = false;
        Ok(())
    }

    /// Stores the session under a fresh id, and sets the cookie for it.
    async fn create(&self, p: &Pending) -> Result<(), SessionError> {
        let now = now_ms();
        let record = p.erased.encode(&self.sessions, &p.snapshot, now)?;
        let base: Arc<[u8]> = record.as_slice().into();
        let id = self
            .sessions
            .create_raw(record, p.snapshot.ttl, now)
            .await?;
        let mut st = lock(&self.state);
        st.id = Some(id.clone());
        st.base = Some(base);
        st.saved_generation = p.generation;
        st.cookie = Some(CookieAction::set(id, p.snapshot.ttl));
        Ok(())
    }

    /// Replaces the stored record, and refreshes the cookie. A session destroyed meanwhile
    /// (a logout in another request) stays gone and loses its cookie.
    ///
    /// The write applies only over the record this request read (or last wrote): when
    /// another request saved meanwhile, this request's changes are merged into that newer
    /// record (see `merge.rs`) and the write is tried again over it, so concurrent
    /// requests never lose each other's changes. Without a conflict this costs one store
    /// command, as a plain save; each conflict costs one more.
    async fn save(&self, id: SessionId, p: &Pending) -> Result<(), SessionError> {
        let Some(mut expected) = p.base.clone() else {
            return self.overwrite(id, p).await;
        };
        let ttl = p.snapshot.ttl;
        let mut extra = p.snapshot.extra.clone();
        for _ in 0..MAX_MERGES {
            let now = now_ms();
            let snapshot = Snapshot {
                ttl,
                extra: extra.clone(),
            };
            let record = p.erased.encode(&self.sessions, &snapshot, now)?;
            let written: Arc<[u8]> = record.as_slice().into();
            let outcome = self
                .sessions
                .save_if_raw(&id, &expected, record, ttl, now)
                .await?;
            match outcome {
                SaveIf::Saved => {
                    let mut st = lock(&self.state);
                    st.saved_generation = p.generation;
                    st.base = Some(written);
                    st.extra = extra;
                    st.cookie = Some(CookieAction::set(id, ttl));
                    return Ok(());
                }
                SaveIf::Changed(theirs) => {
                    match p.erased.merge(&self.sessions, &expected, &theirs) {
                        Some(e) => extra = e,
                        None => tracing::warn!(
                            "session saved meanwhile as a record this type cannot read; overwriting it"
                        ),
                    }
                    expected = theirs.into();
                }
                _ => {
                    let mut st = lock(&self.state);
                    st.saved_generation = p.generation;
                    st.id = None;
                    st.base = None;
                    st.cookie = Some(CookieAction::Remove);
                    return Err(SessionError::Gone);
                }
            }
        }
        Err(SessionError::Contended(MAX_MERGES))
    }

    /// Replaces the stored record whatever it holds (a session this request did not read).
    async fn overwrite(&self, id: SessionId, p: &Pending) -> Result<(), SessionError> {
        let now = now_ms();
        let record = p.erased.encode(&self.sessions, &p.snapshot, now)?;
        let result = self
            .sessions
            .save_raw(&id, record, p.snapshot.ttl, now)
            .await;
        let mut st = lock(&self.state);
        match result {
            Ok(()) => {
                st.saved_generation = p.generation;
                st.cookie = Some(CookieAction::set(id, p.snapshot.ttl));
                Ok(())
            }
            Err(SessionError::Gone) => {
                st.saved_generation = p.generation;
                st.id = None;
                st.cookie = Some(CookieAction::Remove);
                Err(SessionError::Gone)
            }
            Err(e) => Err(e),
        }
    }

    /// A session that was only read: extends its expiry when the touch interval says so
    /// (removing the cookie when it is gone), else re-signs a cookie signed with a previous
    /// secret.
    async fn touch(&self, id: SessionId, p: &Pending) -> Result<(), SessionError> {
        let ttl = p.snapshot.ttl;
        if self.sessions.needs_touch(&id, p.refreshed_ms) {
            let found = self.sessions.touch(&id, ttl).await?;
            let mut st = lock(&self.state);
            if found {
                st.cookie = Some(CookieAction::set(id, ttl));
            } else {
                st.id = None;
                st.cookie = Some(CookieAction::Remove);
            }
        } else if self.cookie.as_ref().is_some_and(|c| c.rotated) {
            let mut st = lock(&self.state);
            if st.cookie.is_none() {
                st.cookie = Some(CookieAction::set(id, ttl));
            }
        }
        Ok(())
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
    pub(crate) fn is_new(&self) -> bool {
        self.0.id.is_none()
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
    /// Marks the session for a new id and starts its record clean: fields the session type
    /// does not know (an express record's `csrfSecret`, `passport`, …, possibly planted
    /// before a login) are dropped, and the lifetime goes back to `ttl` (the configured
    /// one); a later [`set_ttl`](Self::set_ttl) in the same request still applies.
    pub(crate) fn regenerate(&mut self, ttl: Duration) {
        self.0.regenerate = true;
        self.0.extra.clear();
        self.0.ttl = ttl;
        self.0.generation += 1;
    }
    pub(crate) fn ttl(&self) -> Duration {
        self.0.ttl
    }
    pub(crate) fn set_ttl(&mut self, ttl: Duration) {
        self.0.ttl = ttl;
        self.0.generation += 1;
    }
}
