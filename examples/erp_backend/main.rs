//! `erp_backend`: the reference session and cache server.
//!
//! A small ERP-style JSON API that uses the whole SDK the way an application would:
//!
//! - one [`cache_sdk::Cache`] built from the environment (Redis when configured and
//!   reachable, the in-memory fallback otherwise), installed as the global cache;
//! - `#[cached]`, `#[cache_put]` and `#[cache_evict]` on the product catalog
//!   (`products.rs`);
//! - typed sessions through [`cache_sdk::session::SessionLayer`] and the
//!   `Session<UserSession>` extractor, optionally in express-session's format (`auth.rs`);
//! - the stats and health endpoints operators look at (`ops.rs`);
//! - a product database in a SQLite file shared by every instance given the same file
//!   (`db.rs`), and in development mode an origin control to slow it down or make it fail
//!   (`admin.rs`);
//! - what a server on the open internet needs: header-read and idle timeouts and a
//!   connection limit (`server.rs`), CORS for listed origins (`cors.rs`), failed logins
//!   limited across instances (`ratelimit.rs`), logs through a non-blocking writer.
//!
//! Run it with `cargo run --example erp_backend` (no configuration needed) and see
//! `examples/README.md` for the endpoints, the environment variables and a curl walkthrough.

mod admin;
mod app;
mod auth;
mod catalog;
mod cors;
mod db;
mod error;
mod metrics;
mod ops;
mod products;
mod products_bulk;
mod ratelimit;
mod server;
mod session_api;
mod settings;
mod ws;

use std::process::ExitCode;
use std::time::Duration;

use cache_sdk::session::{CacheSessionStore, Environment, Sessions};
use cache_sdk::Cache;
use tokio::net::TcpListener;

use crate::app::AppState;
use crate::db::{Database, DbConfig};
use crate::settings::Settings;

/// How long in-flight requests may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> ExitCode {
    let vars = settings::read_environment();
    // Kept until `main` returns: dropping it flushes the lines still queued.
    let _log_writer = init_tracing(vars.as_ref().ok().and_then(|v| v.get("RUST_LOG")));
    tracing::info!("starting erp_backend");
    let configured = vars.and_then(|v| Ok((Settings::from_vars(&v)?, DbConfig::from_vars(&v)?, v)));
    let (settings, database, vars) = match configured {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("configuration error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match run(settings, database, &vars).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `RUST_LOG` (from the environment or `.env`) filters the logs; the default is `info`.
///
/// Lines go to stdout through a background writer thread ([`tracing_appender::non_blocking`]):
/// a request formats its line and queues it, and never waits for the terminal or the log
/// collector. When the queue is full (128k lines behind) new lines are dropped rather than
/// slowing requests down. The returned guard flushes the queue when dropped: keep it alive
/// for as long as the server runs.
fn init_tracing(filter: Option<&String>) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = filter
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let colors = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .thread_name("erp-log-writer")
        .finish(std::io::stdout());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colors)
        .with_writer(writer)
        .init();
    guard
}

async fn run(
    settings: Settings,
    database: DbConfig,
    vars: &std::collections::HashMap<String, String>,
) -> Result<(), String> {
    // The product database first: a file that cannot be used stops the server at once.
    let db = Database::open(database).await?;
    // `GET /metrics`: the recorder must be in place before the cache registers its metrics.
    metrics::install()?;

    // One cache for everything: product reads (#[cached]) and session records. Building it
    // never fails because Redis is away: it starts on the in-memory fallback and switches
    // to Redis by itself when Redis answers.
    let cache = Cache::builder()
        .config(settings.cache.clone())
        .build()
        .await
        .map_err(|e| format!("cannot build the cache: {e}"))?;
    settings.log_store_choice(&cache);
    if cache_sdk::install(cache.clone()).is_err() {
        tracing::warn!("a global cache was already installed; #[cached] functions use that one");
    }

    let sessions = Sessions::new(
        CacheSessionStore::new(cache.clone()),
        settings.session.clone(),
    )
    .map_err(|e| format!("session configuration error: {e}"))?;

    let development = settings.session.environment == Environment::Development;
    if development {
        tracing::info!(
            "origin control at /api/admin/origin (development mode): slow down or fail this instance's product database"
        );
    }
    // Live updates: one SDK subscription per instance, fanned out to the WebSockets.
    let origins = cors::AllowedOrigins::from_vars(vars)?;
    let ws_config = ws::WsConfig::from_vars(vars, development, origins.clone())?;
    let realtime = ws::Realtime::start(cache.clone(), ws_config).await?;
    let state = AppState::new(cache.clone(), sessions, db, development, realtime);
    let limiter =
        ratelimit::LoginLimiter::new(cache.clone(), ratelimit::LimitConfig::from_vars(vars)?);
    let mut router = app::router(state).layer(axum::Extension(limiter));
    // Outermost: a preflight is answered before any session work.
    if let Some(cors) = origins.layer() {
        router = router.layer(cors);
    }

    let (host, port) = &settings.addr;
    let listener = TcpListener::bind((host.as_str(), *port))
        .await
        .map_err(|e| format!("cannot listen on {host}:{port} (HOST, PORT): {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    let limits = &settings.server;
    tracing::info!(
        header_timeout_secs = limits.header_timeout.as_secs(),
        idle_timeout_secs = limits.idle_timeout.as_secs(),
        max_connections = limits.max_connections,
        "listening on http://{local}"
    );

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let serving = server::serve(listener, router, settings.server.clone(), async move {
        // Resolves when the sender says stop (or is dropped).
        let _ = stop_rx.wait_for(|stop| *stop).await;
    });
    let mut server = tokio::spawn(serving);

    tokio::select! {
        signal = shutdown_signal() => {
            tracing::info!(signal, "shutting down: no new connections, finishing in-flight requests");
            let _ = stop_tx.send(true);
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(format!("server task failed: {e}")),
                Err(_) => {
                    tracing::warn!(
                        grace_secs = SHUTDOWN_GRACE.as_secs(),
                        "requests still running after the grace period; exiting anyway"
                    );
                    server.abort();
                }
            }
        }
        result = &mut server => {
            if let Err(e) = result {
                return Err(format!("server task failed: {e}"));
            }
        }
    }

    let pending = cache.stats().replay_pending;
    if pending > 0 {
        tracing::warn!(
            pending,
            "exiting while Redis is away: writes made during the outage were kept in memory only and are lost"
        );
    }
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM, with the signal's name.
async fn shutdown_signal() -> &'static str {
    let ctrl_c = async {
        match tokio::signal::ctrl_c().await {
            Ok(()) => "SIGINT",
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for Ctrl-C");
                std::future::pending().await
            }
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
                "SIGTERM"
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending().await
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<&'static str>();

    tokio::select! {
        s = ctrl_c => s,
        s = terminate => s,
    }
}
