//! `GET /metrics`: the SDK's metrics and this server's HTTP metrics in the Prometheus text
//! format (always on, no setting needed).
//!
//! The Prometheus recorder is installed before the cache is built (the cache registers its
//! metrics with the recorder installed then). Durations are real Prometheus histograms
//! with buckets (`cache_sdk::metrics::DURATION_BUCKETS`; outages have longer ones), so they
//! add up across instances. Each request is counted and timed by [`track`] as
//! `http.server.request.duration` (OpenTelemetry's name) by method, route and status; the
//! route is the matched pattern (`/api/products/{id}`), never the raw path, so that the
//! number of series stays bounded.
//!
//! `docs/grafana/cache-sdk.json` is a dashboard over these names.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics::Label;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::app::AppState;

/// The HTTP request histogram's name.
const HTTP_DURATION: &str = "http.server.request.duration";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder as the process's recorder, with the SDK's buckets and
/// descriptions, and starts its upkeep. Call before building the cache.
pub fn install() -> Result<(), String> {
    let handle = PrometheusBuilder::new()
        .set_buckets(cache_sdk::metrics::DURATION_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(prometheus_name(cache_sdk::metrics::L2_OUTAGE_DURATION)),
                cache_sdk::metrics::OUTAGE_BUCKETS,
            )
        })
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    cache_sdk::metrics::describe();
    let upkeep = handle.clone();
    // Keeps the recorder's memory bounded (see the exporter's "Upkeep" docs).
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    // Only the first install counts; `install` runs once per process.
    let _ = HANDLE.set(handle);
    Ok(())
}

/// A metric's name as Prometheus shows it (the exporter turns dots into underscores).
fn prometheus_name(name: &str) -> String {
    name.replace('.', "_")
}

/// `GET /metrics`: the Prometheus text exposition format.
pub async fn render(State(state): State<AppState>) -> Response {
    // Gauges (entries, bytes, pending replay, availability) as of now.
    state.cache.record_metrics();
    let body = HANDLE
        .get()
        .map(PrometheusHandle::render)
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Counts and times every request by method, matched route and status.
pub async fn track(req: Request, next: Next) -> Response {
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let start = Instant::now();
    let res = next.run(req).await;
    let labels = vec![
        Label::new("http.request.method", method),
        Label::new("http.route", route),
        Label::new(
            "http.response.status_code",
            res.status().as_u16().to_string(),
        ),
    ];
    metrics::histogram!(HTTP_DURATION, labels).record(start.elapsed().as_secs_f64());
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_names_use_underscores() {
        assert_eq!(
            prometheus_name(cache_sdk::metrics::L2_OUTAGE_DURATION),
            "cache_l2_outage_duration"
        );
    }
}
