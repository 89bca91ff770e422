//! Metrics: the process's `metrics` recorder, which renders everything in the Prometheus
//! text format for `GET /metrics` and also feeds the status page's last-minute
//! [`Window`] from the few series it charts.
//!
//! The names are the libraries' own (`larder_cache_*` from the `Instrumented` layer the app
//! puts around its cache, `larder_session_*` from the write-through session store); the app
//! adds the two only it can see, [`DB_OP_SECONDS`] and [`REQUESTS`], in the same scheme.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics::{
    Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::window::{Latency, Lookup, Window};

/// Session loads the cache answered (counted by the write-through session store).
pub const SESSION_CACHE_HITS: &str = "larder_session_cache_hits_total";
/// Session loads that went to the database (counted by the write-through session store).
pub const SESSION_CACHE_MISSES: &str = "larder_session_cache_misses_total";
/// Latency of one operation on the cache backend, labels `backend` and `op` (recorded by
/// the `Instrumented` layer).
pub const CACHE_OP_SECONDS: &str = "larder_cache_op_seconds";
/// Latency of one call to the session database, label `op` (recorded by the app).
pub const DB_OP_SECONDS: &str = "larder_session_db_op_seconds";
/// HTTP requests answered, labels `route` (the route's pattern) and `status` (recorded by
/// the app).
pub const REQUESTS: &str = "larder_webapp_requests_total";

/// Histogram buckets in seconds, 0.5 ms to 5 s: rendered as Prometheus histograms (not
/// summaries) so a Prometheus server can add up the instances before taking percentiles.
const BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The recorder's two outputs.
#[derive(Debug)]
pub struct Telemetry {
    prometheus: PrometheusHandle,
    window: Arc<Window>,
}

impl Telemetry {
    /// Everything recorded so far, in the Prometheus text format.
    pub fn render(&self) -> String {
        self.prometheus.render()
    }

    /// The last minute of the charted series.
    pub fn window(&self) -> &Window {
        &self.window
    }
}

static GLOBAL: OnceLock<Telemetry> = OnceLock::new();

/// The process's telemetry, installing the global `metrics` recorder on first use. If
/// something else installed a recorder first, `/metrics` and the chart stay empty (and a
/// warning says so): the facade has one recorder per process.
pub fn global() -> &'static Telemetry {
    GLOBAL.get_or_init(|| {
        let prometheus = PrometheusBuilder::new()
            .set_buckets(&BUCKETS)
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = prometheus.handle();
        let window = Arc::new(Window::new());
        let recorder = AppRecorder {
            prometheus,
            window: window.clone(),
        };
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed: /metrics stays empty");
        }
        // Without the exporter's own HTTP listener nothing drains histogram samples between
        // scrapes: do it on a thread of our own, which outlives any one tokio runtime.
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_secs(5));
                upkeep.run_upkeep();
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no metrics upkeep thread; histograms drain at scrapes only");
        }
        Telemetry {
            prometheus: handle,
            window,
        }
    })
}

/// The Prometheus recorder, with the charted series also going to the window.
#[derive(Debug)]
struct AppRecorder {
    prometheus: PrometheusRecorder,
    window: Arc<Window>,
}

/// A counter or histogram handle for both outputs.
#[derive(Debug)]
struct Both<H, W> {
    prometheus: H,
    window: Arc<Window>,
    into: W,
}

impl CounterFn for Both<Counter, Lookup> {
    fn increment(&self, value: u64) {
        self.prometheus.increment(value);
        self.window.count(self.into, value);
    }

    fn absolute(&self, value: u64) {
        // The libraries only increment these; an absolute value has no per-second delta.
        self.prometheus.absolute(value);
    }
}

impl HistogramFn for Both<Histogram, Latency> {
    fn record(&self, value: f64) {
        self.prometheus.record(value);
        self.window.record(self.into, value);
    }
}

impl Recorder for AppRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.prometheus.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.prometheus.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.prometheus.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        let prometheus = self.prometheus.register_counter(key, metadata);
        let into = match key.name() {
            SESSION_CACHE_HITS => Lookup::Hit,
            SESSION_CACHE_MISSES => Lookup::Miss,
            _ => return prometheus,
        };
        Counter::from_arc(Arc::new(Both {
            prometheus,
            window: self.window.clone(),
            into,
        }))
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.prometheus.register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        let prometheus = self.prometheus.register_histogram(key, metadata);
        let into = match key.name() {
            CACHE_OP_SECONDS => Latency::Cache,
            DB_OP_SECONDS => Latency::Database,
            _ => return prometheus,
        };
        Histogram::from_arc(Arc::new(Both {
            prometheus,
            window: self.window.clone(),
            into,
        }))
    }
}

/// `GET /metrics`: the Prometheus text format.
pub async fn metrics_text() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        global().render(),
    )
        .into_response()
}

/// Middleware (a route layer: it sees only matched routes) counting each answered request
/// under its route pattern and status.
pub async fn count_request(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(req).await;
    metrics::counter!(REQUESTS, "route" => route, "status" => response.status().as_str().to_owned())
        .increment(1);
    response
}
