//! Live updates over WebSockets: `GET /api/ws` and `GET /api/ws/stats`.
//!
//! - Only a logged-in session may open a socket (401 otherwise), and a browser's `Origin`
//!   must be one of the allowed origins (403 otherwise): `CORS_ORIGINS`, the list CORS uses
//!   too (`cors.rs`); without it, the server's own `Host` and, in development mode,
//!   `http://localhost:*` and `http://127.0.0.1:*`. A request without `Origin` (not a
//!   browser) is not checked: it has no victim's cookies to abuse.
//! - Product changes made on **any** instance reach every socket as JSON
//!   (`{"type":"product.updated","id":3}`, `{"type":"product.deleted","id":3}`): handlers
//!   call [`Realtime::publish`], which goes through the SDK's typed pub/sub
//!   ([`cache_sdk::Cache::publish`]) on the channel [`CHANNEL`].
//! - A logout on any instance publishes `SessionDestroyed` with an opaque hash of the
//!   session id (never the id itself), and every instance closes that session's sockets at
//!   once. "Log out everywhere" (`POST /api/auth/logout-all`) publishes `UserSessionsEnded`
//!   with hashes of the user id and of the session kept, and every instance closes that
//!   user's other sockets. A check every [`SESSION_CHECK`] closes them too when the event
//!   was missed (a Redis outage: pub/sub keeps no history) or the session expired.
//! - Heartbeats: a ping every `WS_PING_SECS` (20 s); a socket silent for two intervals is
//!   closed. At most `WS_MAX_PER_SESSION` (5) sockets per session and `WS_MAX_CONNECTIONS`
//!   (1000) per instance.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cache_sdk::session::{Session, SessionId, Sessions};
use cache_sdk::Cache;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;

use crate::app::AppState;
use crate::auth::UserSession;
use crate::cors::AllowedOrigins;
use crate::error::ApiError;

/// The SDK pub/sub channel the instances share.
pub const CHANNEL: &str = "erp:events";

/// How often each socket checks that its session still exists.
pub const SESSION_CHECK: Duration = Duration::from_secs(5);

/// An event between instances (bincode on the wire, like every cached value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A product was written.
    ProductUpdated(u64),
    /// A product was deleted.
    ProductDeleted(u64),
    /// A session was destroyed: its [`session_hash`].
    SessionDestroyed(String),
    /// Every session of a user but one was destroyed ("log out everywhere").
    UserSessionsEnded {
        /// The user's [`user_hash`].
        user: String,
        /// The [`session_hash`] of the session that stays.
        keep: String,
    },
}

impl Event {
    /// The JSON a browser receives, or `None` for an internal event.
    fn to_client(&self) -> Option<String> {
        let (kind, id) = match self {
            Event::ProductUpdated(id) => ("product.updated", id),
            Event::ProductDeleted(id) => ("product.deleted", id),
            Event::SessionDestroyed(_) | Event::UserSessionsEnded { .. } => return None,
        };
        Some(format!(r#"{{"type":"{kind}","id":{id}}}"#))
    }
}

/// An opaque name for a session in events and logs: a hash of its id, which cannot be used
/// as a cookie.
pub fn session_hash(id: &SessionId) -> String {
    let digest = Sha256::digest(format!("erp-ws-session:{}", id.as_str()).as_bytes());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// An opaque name for a user in events: a hash of the user id.
pub fn user_hash(user_id: &str) -> String {
    let digest = Sha256::digest(format!("erp-ws-user:{user_id}").as_bytes());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// WebSocket settings (environment variables).
#[derive(Debug, Clone)]
pub struct WsConfig {
    /// `CORS_ORIGINS`; empty: the server's own host (and localhost in development).
    pub allowed_origins: AllowedOrigins,
    /// Development mode: `http://localhost:*` and `http://127.0.0.1:*` are allowed too.
    pub development: bool,
    /// `WS_PING_SECS`.
    pub ping_interval: Duration,
    /// `WS_MAX_PER_SESSION`.
    pub max_per_session: usize,
    /// `WS_MAX_CONNECTIONS`.
    pub max_connections: usize,
}

impl WsConfig {
    /// Reads the settings from the environment's variables; `allowed_origins` is the list
    /// CORS uses (`CORS_ORIGINS`).
    ///
    /// # Errors
    /// A message naming the variable that is not a positive number.
    pub fn from_vars(
        vars: &HashMap<String, String>,
        development: bool,
        allowed_origins: AllowedOrigins,
    ) -> Result<Self, String> {
        let number = |name: &str, default: u64| -> Result<u64, String> {
            match vars.get(name).map(|v| v.trim()) {
                None | Some("") => Ok(default),
                Some(v) => v
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("{name}={v:?}: expected a positive whole number")),
            }
        };
        Ok(Self {
            allowed_origins,
            development,
            ping_interval: Duration::from_secs(number("WS_PING_SECS", 20)?),
            max_per_session: usize::try_from(number("WS_MAX_PER_SESSION", 5)?)
                .unwrap_or(usize::MAX),
            max_connections: usize::try_from(number("WS_MAX_CONNECTIONS", 1000)?)
                .unwrap_or(usize::MAX),
        })
    }

    /// Whether a browser on `origin` may open a socket on a server reached as `host`.
    fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        if !self.allowed_origins.is_empty() {
            return self.allowed_origins.contains(&origin);
        }
        let Some((scheme, authority)) = origin.split_once("://") else {
            return false;
        };
        if !matches!(scheme, "http" | "https") {
            return false;
        }
        if host.is_some_and(|h| h.eq_ignore_ascii_case(authority)) {
            return true;
        }
        let hostname = authority.rsplit_once(':').map_or(authority, |(h, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                authority
            }
        });
        self.development && matches!(hostname, "localhost" | "127.0.0.1" | "[::1]")
    }
}

/// This instance's sockets, counters, and the fan-out of events to them. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Realtime {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cache: Cache,
    config: WsConfig,
    /// Events from the SDK subscription, to every socket task.
    fanout: broadcast::Sender<Event>,
    per_session: Mutex<HashMap<String, usize>>,
    connections: AtomicUsize,
    sent: AtomicU64,
    received: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Realtime {
    /// Subscribes to [`CHANNEL`] and starts forwarding its events to the sockets.
    ///
    /// # Errors
    /// When the subscription is refused (a bad channel name: not with [`CHANNEL`]).
    pub async fn start(cache: Cache, config: WsConfig) -> Result<Self, String> {
        let mut events = cache
            .subscribe::<Event>(CHANNEL)
            .await
            .map_err(|e| format!("cannot subscribe to {CHANNEL}: {e}"))?;
        let (fanout, _) = broadcast::channel(256);
        let realtime = Self {
            inner: Arc::new(Inner {
                cache,
                config,
                fanout: fanout.clone(),
                per_session: Mutex::new(HashMap::new()),
                connections: AtomicUsize::new(0),
                sent: AtomicU64::new(0),
                received: AtomicU64::new(0),
            }),
        };
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                match event {
                    // No socket connected: nobody to tell.
                    Ok(event) => {
                        let _ = fanout.send(event);
                    }
                    Err(lagged) => tracing::warn!(%lagged, "live events lost"),
                }
            }
        });
        Ok(realtime)
    }

    /// Tells every instance's sockets about `event`. Failures are logged: a live update is
    /// a notification, the change itself is already saved.
    pub async fn publish(&self, event: Event) {
        if let Err(e) = self.inner.cache.publish(CHANNEL, &event).await {
            tracing::warn!(error = %e, "live event not published");
        }
    }

    /// Counts a socket of `session` in, or says why not.
    fn admit(&self, session: &str) -> Result<SocketGuard, ApiError> {
        let cfg = &self.inner.config;
        let mut per = lock(&self.inner.per_session);
        if self.inner.connections.load(Ordering::SeqCst) >= cfg.max_connections {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Too many live connections",
            ));
        }
        let mine = per.entry(session.to_owned()).or_insert(0);
        if *mine >= cfg.max_per_session {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many live connections for this session",
            ));
        }
        *mine += 1;
        self.inner.connections.fetch_add(1, Ordering::SeqCst);
        Ok(SocketGuard {
            realtime: self.clone(),
            session: session.to_owned(),
        })
    }
}

/// Counts a socket out when it ends, however it ends.
struct SocketGuard {
    realtime: Realtime,
    session: String,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let inner = &self.realtime.inner;
        let mut per = lock(&inner.per_session);
        if let Some(n) = per.get_mut(&self.session) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per.remove(&self.session);
            }
        }
        inner.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `GET /api/ws`: upgrades a logged-in session's request from an allowed origin.
pub async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    session: Option<Session<UserSession>>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let realtime = &state.realtime;
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let allowed = origin
            .to_str()
            .is_ok_and(|o| realtime.inner.config.origin_allowed(o, host));
        if !allowed {
            tracing::info!("websocket refused: origin not allowed");
            return Err(ApiError::new(StatusCode::FORBIDDEN, "Origin not allowed"));
        }
    }
    let logged_in = session
        .as_ref()
        .and_then(|s| Some((s.read(|u| u.user_id)?, s.id()?)));
    let Some((user_id, id)) = logged_in else {
        return Err(ApiError::unauthorized("Not authenticated"));
    };
    let owner = Owner {
        session: session_hash(&id),
        user: user_hash(&user_id.to_string()),
        id,
    };
    let guard = realtime.admit(&owner.session)?;
    let realtime = realtime.clone();
    let sessions = state.sessions.clone();
    Ok(ws
        .max_message_size(64 * 1024)
        .on_upgrade(move |socket| serve(socket, realtime, sessions, owner, guard))
        .into_response())
}

/// Whose socket it is.
struct Owner {
    /// The session.
    id: SessionId,
    /// Its [`session_hash`].
    session: String,
    /// The [`user_hash`] of its user.
    user: String,
}

impl Owner {
    /// Whether `event` ends this socket's session.
    fn ended_by(&self, event: &Event) -> bool {
        match event {
            Event::SessionDestroyed(h) => *h == self.session,
            Event::UserSessionsEnded { user, keep } => *user == self.user && *keep != self.session,
            Event::ProductUpdated(_) | Event::ProductDeleted(_) => false,
        }
    }
}

/// One socket: forwards events, answers and sends pings, and closes when the session ends,
/// the client goes quiet, or the client leaves.
async fn serve(
    mut socket: WebSocket,
    realtime: Realtime,
    sessions: Sessions,
    owner: Owner,
    _guard: SocketGuard,
) {
    let inner = &realtime.inner;
    let mut events = inner.fanout.subscribe();
    let ping_every = inner.config.ping_interval;
    let mut ping = tokio::time::interval(ping_every);
    ping.tick().await;
    let mut check = tokio::time::interval(SESSION_CHECK);
    check.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    let reason = loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(event) if owner.ended_by(&event) => break "session ended",
                Ok(event) => {
                    if let Some(text) = event.to_client() {
                        if socket.send(Message::Text(text.into())).await.is_err() {
                            break "send failed";
                        }
                        inner.sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(lost = n, "websocket client too slow; events skipped");
                }
                Err(broadcast::error::RecvError::Closed) => break "server stopping",
            },
            message = socket.recv() => match message {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break "client left",
                Some(Ok(Message::Pong(_) | Message::Ping(_))) => last_heard = tokio::time::Instant::now(),
                Some(Ok(_)) => {
                    last_heard = tokio::time::Instant::now();
                    inner.received.fetch_add(1, Ordering::Relaxed);
                }
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > ping_every * 2 {
                    break "no pong";
                }
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                    break "send failed";
                }
            }
            _ = check.tick() => {
                // Gone (logout on an instance whose event was missed, or expiry); an
                // error of the store keeps the socket (the next check decides).
                if let Ok(None) = sessions.load::<UserSession>(&owner.id).await {
                    break "session ended";
                }
            }
        }
    };
    tracing::debug!(reason, "websocket closed");
    // Best effort: the client may already be gone.
    let _ = socket.send(Message::Close(None)).await;
}

/// Runs around `POST /api/auth/logout`: after a successful logout, tells every instance to
/// close that session's sockets.
pub async fn after_logout(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let cookies: Vec<String> = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    let id = state
        .sessions
        .verify_header(cookies.iter().map(String::as_str))
        .map(|v| v.id);
    let res = next.run(req).await;
    if let (Some(id), true) = (id, res.status().is_success()) {
        state
            .realtime
            .publish(Event::SessionDestroyed(session_hash(&id)))
            .await;
    }
    res
}

/// After a successful "log out everywhere" (`POST /api/auth/logout-all`) by `user_id` from
/// the session `kept`: tells every instance to close the user's other sockets.
pub async fn user_sessions_ended(state: &AppState, user_id: &str, kept: &SessionId) {
    state
        .realtime
        .publish(Event::UserSessionsEnded {
            user: user_hash(user_id),
            keep: session_hash(kept),
        })
        .await;
}

/// `GET /api/ws/stats`: `{"connections","subscribers","messagesSent","messagesReceived"}`
/// for this instance.
pub async fn stats(State(state): State<AppState>) -> Json<serde_json::Value> {
    let inner = &state.realtime.inner;
    let pubsub = inner.cache.pubsub_stats();
    Json(json!({
        "connections": inner.connections.load(Ordering::Relaxed),
        "subscribers": pubsub.subscribers,
        "messagesSent": inner.sent.load(Ordering::Relaxed),
        "messagesReceived": inner.received.load(Ordering::Relaxed),
        "pubsub": {
            "connected": pubsub.connected,
            "sharded": pubsub.sharded,
            "received": pubsub.received,
            "localOnly": pubsub.local_only,
            "resubscribes": pubsub.resubscribes,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(origins: &[&str], development: bool) -> WsConfig {
        let mut vars = HashMap::new();
        if !origins.is_empty() {
            vars.insert("CORS_ORIGINS".to_owned(), origins.join(","));
        }
        let allowed = AllowedOrigins::from_vars(&vars).expect("origins");
        WsConfig::from_vars(&vars, development, allowed).expect("config")
    }

    #[test]
    fn origins_are_checked() {
        let listed = config(&["https://erp.example.com/"], false);
        assert!(listed.origin_allowed("https://erp.example.com", Some("api.example.com")));
        assert!(!listed.origin_allowed("https://evil.example.com", Some("api.example.com")));
        let dev = config(&[], true);
        assert!(dev.origin_allowed("http://localhost:5173", Some("127.0.0.1:3000")));
        assert!(dev.origin_allowed("http://127.0.0.1:3000", Some("127.0.0.1:3000")));
        assert!(!dev.origin_allowed("https://evil.example", Some("127.0.0.1:3000")));
        let prod = config(&[], false);
        assert!(prod.origin_allowed("https://erp.example.com", Some("erp.example.com")));
        assert!(!prod.origin_allowed("http://localhost:5173", Some("erp.example.com")));
        assert!(!prod.origin_allowed("null", Some("erp.example.com")));
    }

    #[test]
    fn events_become_client_json_and_session_hashes_are_opaque() {
        assert_eq!(
            Event::ProductUpdated(3).to_client().as_deref(),
            Some(r#"{"type":"product.updated","id":3}"#)
        );
        assert!(Event::SessionDestroyed("x".into()).to_client().is_none());
        let id = SessionId::generate();
        let hash = session_hash(&id);
        assert_eq!(hash.len(), 32);
        assert!(!hash.contains(id.as_str()));
    }

    #[test]
    fn events_end_the_right_sockets() {
        let mine = SessionId::generate();
        let other = SessionId::generate();
        let owner = Owner {
            session: session_hash(&mine),
            user: user_hash("1"),
            id: mine.clone(),
        };
        assert!(owner.ended_by(&Event::SessionDestroyed(session_hash(&mine))));
        assert!(!owner.ended_by(&Event::SessionDestroyed(session_hash(&other))));
        let everywhere = |user: &str, keep: &SessionId| Event::UserSessionsEnded {
            user: user_hash(user),
            keep: session_hash(keep),
        };
        assert!(owner.ended_by(&everywhere("1", &other)));
        assert!(!owner.ended_by(&everywhere("1", &mine)), "the kept session");
        assert!(!owner.ended_by(&everywhere("2", &other)), "another user");
        assert!(!owner.ended_by(&Event::ProductUpdated(1)));
        assert!(Event::UserSessionsEnded {
            user: String::new(),
            keep: String::new()
        }
        .to_client()
        .is_none());
    }

    #[test]
    fn bad_numbers_are_refused() {
        let mut vars = HashMap::new();
        vars.insert("WS_PING_SECS".to_owned(), "0".to_owned());
        assert!(WsConfig::from_vars(&vars, false, AllowedOrigins::default()).is_err());
    }
}
