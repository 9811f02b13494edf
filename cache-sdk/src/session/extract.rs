//! [`Session<T>`]: the typed session a handler extracts, and its rejection.
//!
//! A thin handle: reads the request session from the request's extensions and forwards
//! each call to it. May import: axum-core, http and the request session. Must not: write
//! the store (the request session's steps do).

use std::sync::Arc;
use std::time::Duration;

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;
use http::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::SessionError;
use super::id::SessionId;
use super::request::{Cell, RequestSession, SessionHandle};

/// What a session type must be: serde both ways, a default for new sessions, and
/// shareable across threads. Implemented for every such type.
///
/// ```
/// #[derive(Default, serde::Serialize, serde::Deserialize)]
/// struct Cart { items: Vec<u64> }
/// fn assert_data<T: cache_sdk::session::SessionData>() {}
/// assert_data::<Cart>();
/// ```
pub trait SessionData: Serialize + DeserializeOwned + Default + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Default + Send + Sync + 'static> SessionData for T {}

/// The request's session, typed. Extract it in a handler; it is read from the store only
/// then, and written after the handler only if it changed.
///
/// Every method works on this request's copy; changes reach the store when the response
/// leaves the [`SessionLayer`](super::SessionLayer) (or at [`Session::save`]). Several
/// extractions of one type in one request share the copy. Keep the handle inside the
/// request: changes made after the response was sent are not saved.
///
/// `Option<Session<T>>` extracts only an existing session: `None` for a request without a
/// valid cookie for a stored session (and nothing is stored for it).
///
/// ```
/// use axum::{routing::post, Json, Router};
/// use cache_sdk::session::Session;
///
/// #[derive(Default, serde::Serialize, serde::Deserialize)]
/// #[serde(rename_all = "camelCase")]
/// struct UserSession { user_id: Option<u64>, username: String }
///
/// async fn login(session: Session<UserSession>) -> &'static str {
///     // New id against session fixation, same data, then the login itself.
///     session.regenerate();
///     session.update(|s| { s.user_id = Some(1); s.username = "alice".into(); });
///     "welcome"
/// }
///
/// async fn profile(session: Option<Session<UserSession>>) -> Result<Json<UserSession>, axum::http::StatusCode> {
///     let session = session.ok_or(axum::http::StatusCode::UNAUTHORIZED)?;
///     Ok(Json(session.read(|s| UserSession { user_id: s.user_id, username: s.username.clone() })))
/// }
///
/// async fn logout(session: Session<UserSession>) { session.destroy(); }
///
/// let app: Router<()> = Router::new()
///     .route("/login", post(login))
///     .route("/profile", axum::routing::get(profile))
///     .route("/logout", post(logout));
/// # let _ = app;
/// ```
pub struct Session<T> {
    request: Arc<RequestSession>,
    cell: Arc<Cell<T>>,
}

impl<T> Clone for Session<T> {
    fn clone(&self) -> Self {
        Self {
            request: self.request.clone(),
            cell: self.cell.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Session<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("type", &std::any::type_name::<T>())
            .finish_non_exhaustive()
    }
}

impl<T: SessionData> Session<T> {
    /// The stored id; `None` while the session is new (it gets one when first saved).
    /// A credential: do not log it.
    ///
    /// ```
    /// # use cache_sdk::session::Session;
    /// async fn handler(session: Session<Vec<u64>>) -> bool {
    ///     session.id().is_some()
    /// }
    /// ```
    pub fn id(&self) -> Option<SessionId> {
        self.request.with_state(|s| s.id())
    }

    /// Whether the session is new (not stored yet).
    ///
    /// ```
    /// # use cache_sdk::session::Session;
    /// async fn handler(session: Session<Vec<u64>>) -> &'static str {
    ///     if session.is_new() { "welcome" } else { "welcome back" }
    /// }
    /// ```
    pub fn is_new(&self) -> bool {
        self.request.with_state(|s| s.is_new())
    }

    /// Whether there are changes not yet written.
    ///
    /// ```
    /// # use cache_sdk::session::Session;
    /// async fn handler(session: Session<Vec<u64>>) {
    ///     session.update(|cart| cart.push(1));
    ///     assert!(session.is_modified());
    /// }
    /// ```
    pub fn is_modified(&self) -> bool {
        self.request.with_state(|s| s.is_changed())
    }

    /// Reads the data through a closure.
    ///
    /// ```
    /// # use cache_sdk::session::Session;
    /// async fn handler(session: Session<Vec<u64>>) -> String {
    ///     session.read(|cart| format!("{} items", cart.len()))
    /// }
    /// ```
    pub fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        self.cell.read(f)
    }

    /// A copy of the data.
    ///
    /// ```
    /// # use cache_sdk::session::Session;
    /// async fn handler(session: Session<Vec<u64>>) -> axum::Json<Vec<u64>> {
    ///     axum::Json(session.get())
    /// }
    /// ```
    pub fn get(&self) -> T
    where
        T: Clone,
    {
        self.cell.read(T::clone)
    }

    /// Changes the data through a closure; the session will be saved.
    ///
    /// ```
    /// # use cache_sdk::session::Session;
    /// async fn add(session: Session<Vec<u64>>) -> String {
    ///     session.update(|cart| { cart.push(42); cart.len() }).to_string()
    /// }
    /// ```
    pub fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let r = self.cell.write(f);
        self.request.with_state(|s| s.changed());
        r
    }

    /// Replaces the data; returns the previous data. The session will be saved.
    ///
    /// ```
    /// # use cache_sdk::session::Session;
    /// async fn reset(session: Session<Vec<u64>>) {
    ///     let _old = session.replace(vec![1, 2, 3]);
    /// }
    /// ```
    pub fn replace(&self, value: T) -> T {
        self.update(|d| std::mem::replace(d, value))
    }

    /// Takes the data out, leaving `T::default()` (and dropping fields another application
    /// stored in an express-format record). The session stays, empty, and will be saved.
    ///
    /// ```
    /// # use cache_sdk::session::Session;
    /// async fn checkout(session: Session<Vec<u64>>) -> String {
    ///     let cart = session.remove();
    ///     format!("ordered {} items", cart.len())
    /// }
    /// ```
    pub fn remove(&self) -> T {
        let old = self.update(std::mem::take);
        self.request.with_state(|s| s.clear_extra());
        old
    }

    /// Ends the session: the record is deleted after the handler, and the cookie removed.
    ///
    /// ```
    /// # use cache_sdk::session::Session;
    /// async fn logout(session: Session<Vec<u64>>) { session.destroy(); }
    /// ```
    pub fn destroy(&self) {
        self.request.with_state(|s| s.destroy());
    }

    /// Moves the data to a new id and deletes the old record: call it when the user's
    /// privileges change (login, logout to a lower role) so that an id planted or seen
    /// before cannot be used afterwards (session fixation). The new cookie is sent with
    /// the response.
    ///
    /// The new record starts clean: only what the session type holds moves to it. Fields
    /// of a stored express record that the type does not know (`csrfSecret`, `passport`,
    /// `role`, … perhaps planted by an attacker before the login) are dropped, and the
    /// lifetime is the configured one again ([`Session::set_ttl`] after `regenerate`
    /// still chooses another).
    ///
    /// ```
    /// # use cache_sdk::session::Session;
    /// async fn login(session: Session<Option<u64>>) {
    ///     session.regenerate();
    ///     session.replace(Some(7)); // the user id
    /// }
    /// ```
    pub fn regenerate(&self) {
        let ttl = self.request.configured_ttl();
        self.request.with_state(|s| s.regenerate(ttl));
    }

    /// This session's lifetime: the configured one, or what [`Session::set_ttl`] chose.
    ///
    /// ```
    /// # use cache_sdk::session::Session;
    /// async fn handler(session: Session<Vec<u64>>) -> String {
    ///     format!("{} s", session.ttl().as_secs())
    /// }
    /// ```
    pub fn ttl(&self) -> Duration {
        self.request.with_state(|s| s.ttl())
    }

    /// Gives this session its own lifetime (a "remember me" login, say), from now on and
    /// on every later touch. The session will be saved.
    ///
    /// # Errors
    /// [`SessionError::Store`] with [`crate::Error::InvalidTtl`] outside 1 s ..= 365 days.
    ///
    /// ```
    /// # use cache_sdk::session::Session;
    /// async fn remember_me(session: Session<Option<u64>>) {
    ///     let thirty_days = std::time::Duration::from_secs(30 * 86_400);
    ///     session.set_ttl(thirty_days).expect("within the limits");
    /// }
    /// ```
    pub fn set_ttl(&self, ttl: Duration) -> Result<(), SessionError> {
        crate::ttl::check(ttl)?;
        self.request.with_state(|s| s.set_ttl(ttl));
        Ok(())
    }

    /// Writes the changes now instead of after the handler, so the handler can act on a
    /// failure. Afterwards the layer writes only later changes.
    ///
    /// # Errors
    /// As [`Sessions::save`](super::Sessions::save) and
    /// [`Sessions::create`](super::Sessions::create).
    ///
    /// ```
    /// # use cache_sdk::session::Session;
    /// use axum::http::StatusCode;
    /// async fn login(session: Session<Option<u64>>) -> StatusCode {
    ///     session.regenerate();
    ///     session.replace(Some(7));
    ///     match session.save().await {
    ///         Ok(()) => StatusCode::OK,
    ///         Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    ///     }
    /// }
    /// ```
    pub async fn save(&self) -> Result<(), SessionError> {
        self.request.flush().await
    }
}

/// Why [`Session<T>`] could not be extracted: a setup mistake, answered with a 500 whose
/// body names the fix.
///
/// ```
/// let r = cache_sdk::session::SessionRejection::MissingLayer;
/// assert!(r.to_string().contains("Is the SessionLayer installed?"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionRejection {
    /// The request did not pass through a [`SessionLayer`](super::SessionLayer).
    #[error("no session in the request extensions: no SessionLayer handled this request. Is the SessionLayer installed?")]
    MissingLayer,
    /// The session was already extracted as another type in this request.
    #[error("{0}: extract one session type per request")]
    TypeMismatch(&'static str),
}

impl IntoResponse for SessionRejection {
    fn into_response(self) -> Response {
        tracing::error!(rejection = %self, "session extractor rejected the request");
        (StatusCode::INTERNAL_SERVER_ERROR, self.to_string()).into_response()
    }
}

async fn extract<T: SessionData>(parts: &Parts) -> Result<Session<T>, SessionRejection> {
    let handle = parts
        .extensions
        .get::<SessionHandle>()
        .ok_or(SessionRejection::MissingLayer)?;
    let request = handle.0.clone();
    let cell = request
        .load::<T>()
        .await
        .map_err(SessionRejection::TypeMismatch)?;
    Ok(Session { request, cell })
}

impl<S: Send + Sync, T: SessionData> FromRequestParts<S> for Session<T> {
    type Rejection = SessionRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        extract(parts).await
    }
}

impl<S: Send + Sync, T: SessionData> OptionalFromRequestParts<S> for Session<T> {
    type Rejection = SessionRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        let session = extract::<T>(parts).await?;
        Ok((!session.is_new()).then_some(session))
    }
}
