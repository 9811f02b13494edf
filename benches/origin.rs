//! A slow and flaky origin behind a hot key set: what callers see, and how often the origin
//! is asked, with cache-sdk's resilient read-through and with amalgam-cache (the Rust port
//! of FusionCache), in the same run, in front of the same `redis-server`.
//!
//! The scenario (the same for both, one after the other):
//!
//! - the origin answers after 50 ms; 10 % of its answers are errors, and during a 2 s outage
//!   in the middle of the run (from 4 s to 6 s) every answer is an error;
//! - 64 tasks read 16 hot keys round robin for 10 s, one read per task per millisecond;
//! - TTL 1 s (so every key expires, or is refreshed, about ten times), fail-safe on with a
//!   1 h window and a 1 s throttle, soft timeout 100 ms, hard timeout 2 s, eager refresh at
//!   0.8 of the TTL (background completion of timed-out loads on, for both);
//! - cache-sdk names the origin (`LoadOptions::origin("products")`), so its circuit breaker
//!   is on: after 5 failed loads in a row (any key) the origin is asked only by one probe
//!   per 250 ms until it answers (the defaults). amalgam-cache has no equivalent (its
//!   fail-safe throttle is per key), so it runs without;
//! - each library is one instance with an in-process L1 and Redis as L2, on its own keys of
//!   the same `redis-server` (started by the benchmark on a loopback port). cache-sdk uses
//!   its default configuration otherwise (bincode envelope, coherence `auto`); amalgam uses
//!   its Redis L2 with its JSON serializer, no backplane or distributed locker (one
//!   instance: neither has anything to coordinate with).
//!
//! Before the clock starts every key is loaded once (not counted). Each value carries the
//! time the origin produced it, so the age of every answer is measured the same way for
//! both libraries, whatever they report about themselves.
//!
//! Reported per library: reads, errors seen by callers (total and during the outage),
//! latency (p50, p99, max), origin calls (and how many failed), and the freshness of what
//! was served: mean and max age, and the share of answers older than the TTL (stale).
//!
//! Run: `cargo bench -p cache-sdk-benches --bench origin`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use amalgam::provider::RedisDistributedCache;
use amalgam::provider::{DistributedCache, DistributedSerializer, JsonSerializer};
use amalgam::{EagerThreshold, EntryOptions, FactoryContext, Timeout};
use cache_sdk::{BreakerSettings, Cache, LoadOptions, Ttl};
use cache_sdk_tests::RedisServer;
use serde::{Deserialize, Serialize};

const TASKS: usize = 64;
const KEYS: u64 = 16;
const RUN: Duration = Duration::from_secs(10);
const OUTAGE_FROM: Duration = Duration::from_secs(4);
const OUTAGE_TO: Duration = Duration::from_secs(6);
const PACE: Duration = Duration::from_millis(1);

const ORIGIN_LATENCY: Duration = Duration::from_millis(50);
/// One answer in this many is an error (outside the outage).
const ERROR_ONE_IN: u64 = 10;

const TTL: Duration = Duration::from_secs(1);
const FAIL_SAFE: Duration = Duration::from_secs(3600);
const THROTTLE: Duration = Duration::from_secs(1);
const SOFT_TIMEOUT: Duration = Duration::from_millis(100);
const HARD_TIMEOUT: Duration = Duration::from_secs(2);
const REFRESH_AHEAD: f64 = 0.8;

/// What the origin returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Product {
    id: u64,
    /// The origin call that produced it.
    version: u64,
    /// When the origin produced it, µs since the Unix epoch.
    produced_at_us: u64,
}

fn epoch_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[derive(Debug)]
struct OriginDown;

impl std::fmt::Display for OriginDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the product database did not answer")
    }
}

impl std::error::Error for OriginDown {}

/// The simulated product database: fixed latency, pseudo-random errors, an outage window.
#[derive(Debug)]
struct Origin {
    /// The start of the timed run; `None` during the warm-up (no errors then).
    started: std::sync::OnceLock<Instant>,
    calls: AtomicU64,
    failed: AtomicU64,
    calls_in_outage: AtomicU64,
}

impl Origin {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            started: std::sync::OnceLock::new(),
            calls: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            calls_in_outage: AtomicU64::new(0),
        })
    }

    fn start(&self, at: Instant) {
        let _ = self.started.set(at);
    }

    async fn load(&self, id: u64) -> Result<Product, OriginDown> {
        tokio::time::sleep(ORIGIN_LATENCY).await;
        let Some(started) = self.started.get() else {
            // Warm-up: always answers, not counted.
            return Ok(Product {
                id,
                version: 0,
                produced_at_us: epoch_us(),
            });
        };
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        // The answer is decided when it is given: an answer given during the outage fails.
        let at = started.elapsed();
        let outage = (OUTAGE_FROM..OUTAGE_TO).contains(&at);
        if outage {
            self.calls_in_outage.fetch_add(1, Ordering::Relaxed);
        }
        if outage || splitmix(n).is_multiple_of(ERROR_ONE_IN) {
            self.failed.fetch_add(1, Ordering::Relaxed);
            return Err(OriginDown);
        }
        Ok(Product {
            id,
            version: n,
            produced_at_us: epoch_us(),
        })
    }
}

/// A fixed pseudo-random sequence (SplitMix64), so both libraries face the same error rate.
fn splitmix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One read as a caller saw it.
#[derive(Debug, Clone, Copy)]
struct Read {
    /// When it started, µs since the start of the run.
    at_us: u64,
    latency_us: u64,
    /// Age of the value served, µs; `None` for an error.
    age_us: Option<u64>,
}

/// The two contenders behind one interface.
#[derive(Clone)]
enum Contender {
    CacheSdk(Cache, LoadOptions),
    Amalgam(amalgam::Cache<Product>),
}

impl Contender {
    fn name(&self) -> &'static str {
        match self {
            Contender::CacheSdk(..) => "cache-sdk",
            Contender::Amalgam(_) => "amalgam-cache 0.4.2",
        }
    }

    async fn read(&self, origin: &Arc<Origin>, id: u64) -> Option<Product> {
        match self {
            Contender::CacheSdk(cache, opts) => {
                let origin = origin.clone();
                cache
                    .get_or_load_entry_with(
                        &format!("cache:product:{id}"),
                        Ttl::from(TTL),
                        opts,
                        move || async move { origin.load(id).await },
                    )
                    .await
                    .ok()
                    .map(|e| (**e.value()).clone())
            }
            Contender::Amalgam(cache) => {
                let origin = origin.clone();
                cache
                    .get_or_set(
                        format!("amalgam:product:{id}"),
                        amalgam::source::factory(move |ctx: FactoryContext<Product>| async move {
                            match origin.load(id).await {
                                Ok(p) => Ok(ctx.value(p)),
                                Err(e) => Err(ctx.fail(e.to_string())),
                            }
                        }),
                    )
                    .await
                    .ok()
            }
        }
    }
}

async fn cache_sdk(server: &RedisServer) -> Contender {
    let opts = LoadOptions::new()
        .fail_safe(FAIL_SAFE)
        .fail_safe_throttle(THROTTLE)
        .soft_timeout(SOFT_TIMEOUT)
        .hard_timeout(HARD_TIMEOUT)
        .refresh_ahead(REFRESH_AHEAD);
    // `ORIGIN_BREAKER=off` runs cache-sdk without it, for comparison.
    let opts = if std::env::var("ORIGIN_BREAKER").as_deref() == Ok("off") {
        opts
    } else {
        opts.origin("products")
    };
    let cache = Cache::builder()
        .redis_url(server.url())
        .breaker(BreakerSettings::new())
        .load_options(opts.clone())
        .build()
        .await
        .expect("cache-sdk cache");
    Contender::CacheSdk(cache, opts)
}

async fn amalgam(server: &RedisServer) -> Contender {
    let l2 = RedisDistributedCache::connect(server.url())
        .await
        .expect("amalgam Redis L2");
    #[allow(clippy::cast_possible_truncation)]
    let eager = EagerThreshold::new(REFRESH_AHEAD as f32);
    let options = EntryOptions::new(TTL)
        .with_fail_safe(true, Some(FAIL_SAFE), Some(THROTTLE))
        .with_factory_timeouts(
            Timeout::After(SOFT_TIMEOUT),
            Timeout::After(HARD_TIMEOUT),
            true,
        )
        .with_eager_refresh(eager);
    let cache = amalgam::Cache::<Product>::builder()
        .distributed(Arc::new(l2) as Arc<dyn DistributedCache>)
        .serializer(Arc::new(JsonSerializer) as Arc<dyn DistributedSerializer<Product>>)
        .default_options(options)
        .instance_id("origin-bench")
        .try_build()
        .expect("amalgam cache");
    Contender::Amalgam(cache)
}

/// What one library's run came to.
#[derive(Debug)]
struct Outcome {
    name: &'static str,
    reads: usize,
    errors: usize,
    errors_in_outage: usize,
    reads_in_outage: usize,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
    origin_calls: u64,
    origin_failed: u64,
    origin_calls_in_outage: u64,
    mean_age_us: u64,
    max_age_us: u64,
    /// Answers older than the TTL, and the same outside the outage.
    stale: usize,
    stale_outside_outage: usize,
    mean_age_outside_outage_us: u64,
    max_age_outside_outage_us: u64,
}

async fn run(contender: Contender) -> Outcome {
    let origin = Origin::new();
    for id in 0..KEYS {
        contender
            .read(&origin, id)
            .await
            .expect("warm-up load succeeds");
    }
    let started = Instant::now();
    origin.start(started);
    // When cache-sdk's breaker for the origin was open (sampled every 5 ms).
    let watch = match &contender {
        Contender::CacheSdk(cache, _) => {
            let breaker = cache.origin_breaker("products");
            Some(tokio::spawn(async move {
                let mut spans: Vec<(Duration, Duration)> = Vec::new();
                let mut open_since = None;
                while started.elapsed() < RUN {
                    let open = breaker.state() != cache_sdk::BreakerState::Closed;
                    match (open, open_since) {
                        (true, None) => open_since = Some(started.elapsed()),
                        (false, Some(from)) => {
                            spans.push((from, started.elapsed()));
                            open_since = None;
                        }
                        _ => {}
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                if let Some(from) = open_since {
                    spans.push((from, RUN));
                }
                spans
            }))
        }
        Contender::Amalgam(_) => None,
    };
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let contender = contender.clone();
        let origin = origin.clone();
        tasks.spawn(async move {
            let mut reads = Vec::with_capacity(RUN.as_millis() as usize);
            let mut i = task as u64;
            while started.elapsed() < RUN {
                let id = i % KEYS;
                i += 1;
                let t0 = Instant::now();
                let got = contender.read(&origin, id).await;
                let latency = t0.elapsed();
                let age_us = got.map(|p| epoch_us().saturating_sub(p.produced_at_us));
                reads.push(Read {
                    at_us: micros(t0 - started),
                    latency_us: micros(latency),
                    age_us,
                });
                tokio::time::sleep(PACE).await;
            }
            reads
        });
    }
    let mut reads = Vec::new();
    while let Some(done) = tasks.join_next().await {
        reads.extend(done.expect("reader task"));
    }
    if let Some(watch) = watch {
        let spans = watch.await.expect("breaker watch");
        let spans: Vec<String> = spans
            .iter()
            .map(|(a, b)| format!("{:.2}s..{:.2}s", a.as_secs_f64(), b.as_secs_f64()))
            .collect();
        println!("  cache-sdk breaker open: {}", spans.join(", "));
    }
    if let Contender::CacheSdk(cache, _) = &contender {
        let s = cache.stats();
        println!(
            "  cache-sdk stats: loads {}, load errors {}, stale served {}, soft timeouts {}, \
             hard timeouts {}, background completions {}, refreshes started/completed/failed \
             {}/{}/{}; breaker: opened {}, probes {}, rejections {}",
            s.loads,
            s.load_errors,
            s.stale_served,
            s.soft_timeouts,
            s.hard_timeouts,
            s.background_completions,
            s.refreshes_started,
            s.refreshes_completed,
            s.refreshes_failed,
            s.breakers_opened,
            s.breaker_probes,
            s.breaker_rejections
        );
    }
    summarize(contender.name(), &origin, &reads)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn in_outage(at_us: u64) -> bool {
    (micros(OUTAGE_FROM)..micros(OUTAGE_TO)).contains(&at_us)
}

/// The mean age of the answers in each second of the run, their share older than the TTL
/// and their number: where the staleness is (shares weigh each read, so a second in which
/// one library answered more reads counts those reads more).
fn by_second(name: &str, reads: &[Read]) {
    let secs = usize::try_from(RUN.as_secs()).unwrap_or(0) + 1;
    let mut sum = vec![(0u64, 0u64, 0u64, 0u64); secs];
    for r in reads {
        let Some(age) = r.age_us else { continue };
        let s = usize::try_from(r.at_us / 1_000_000)
            .unwrap_or(usize::MAX)
            .min(secs - 1);
        sum[s].0 += age;
        sum[s].1 += 1;
        sum[s].2 += u64::from(age > micros(TTL));
        sum[s].3 += r.latency_us;
    }
    let cells: Vec<String> = sum
        .iter()
        .enumerate()
        .filter(|(_, (_, n, _, _))| *n > 0)
        .map(|(s, (total, n, old, lat))| {
            format!(
                "{s}s: {} ({}% >TTL of {n}, mean latency {})",
                ms(total / n),
                old * 100 / n,
                ms(lat / n)
            )
        })
        .collect();
    println!("  {name}, mean age by second: {}", cells.join(", "));
}

/// After the outage: how many reads were answered with a value the origin produced before
/// it ended, and when the last one was (every key recovered by then).
fn recovery(name: &str, reads: &[Read]) {
    let end = micros(OUTAGE_TO);
    let mut late = 0;
    let mut last = None;
    for r in reads.iter().filter(|r| r.at_us >= end) {
        let Some(age) = r.age_us else { continue };
        let produced = (r.at_us + r.latency_us).saturating_sub(age);
        if produced < end {
            late += 1;
            last = last.max(Some(r.at_us + r.latency_us));
        }
    }
    let last = last.map_or_else(|| "-".to_owned(), |l| format!("{:.2}s", l as f64 / 1e6));
    println!(
        "  {name}, after the outage: {late} reads answered with a value from before its end, \
         the last at {last}"
    );
}

fn summarize(name: &'static str, origin: &Origin, reads: &[Read]) -> Outcome {
    by_second(name, reads);
    recovery(name, reads);
    let mut latencies: Vec<u64> = reads.iter().map(|r| r.latency_us).collect();
    latencies.sort_unstable();
    let pct = |p: f64| -> u64 {
        if latencies.is_empty() {
            return 0;
        }
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i]
    };
    let ttl_us = micros(TTL);
    let ages = |outside_only: bool| {
        let ages: Vec<u64> = reads
            .iter()
            .filter(|r| !(outside_only && in_outage(r.at_us)))
            .filter_map(|r| r.age_us)
            .collect();
        let mean = if ages.is_empty() {
            0
        } else {
            ages.iter().sum::<u64>() / ages.len() as u64
        };
        let max = ages.iter().copied().max().unwrap_or(0);
        let stale = ages.iter().filter(|&&a| a > ttl_us).count();
        (mean, max, stale)
    };
    let (mean_age_us, max_age_us, stale) = ages(false);
    let (mean_age_outside_outage_us, max_age_outside_outage_us, stale_outside_outage) = ages(true);
    Outcome {
        name,
        reads: reads.len(),
        errors: reads.iter().filter(|r| r.age_us.is_none()).count(),
        errors_in_outage: reads
            .iter()
            .filter(|r| r.age_us.is_none() && in_outage(r.at_us))
            .count(),
        reads_in_outage: reads.iter().filter(|r| in_outage(r.at_us)).count(),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        max_us: latencies.last().copied().unwrap_or(0),
        origin_calls: origin.calls.load(Ordering::Relaxed),
        origin_failed: origin.failed.load(Ordering::Relaxed),
        origin_calls_in_outage: origin.calls_in_outage.load(Ordering::Relaxed),
        mean_age_us,
        max_age_us,
        stale,
        stale_outside_outage,
        mean_age_outside_outage_us,
        max_age_outside_outage_us,
    }
}

fn ms(us: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let ms = us as f64 / 1000.0;
    if ms < 1.0 {
        format!("{us} µs")
    } else {
        format!("{ms:.1} ms")
    }
}

#[allow(clippy::cast_precision_loss)]
fn share(part: usize, whole: usize) -> String {
    if whole == 0 {
        return "0 %".to_owned();
    }
    format!("{:.2} %", part as f64 * 100.0 / whole as f64)
}

fn print(outcomes: &[Outcome]) {
    println!();
    println!(
        "| library | reads | caller errors (total / in outage) | p50 | p99 | max | origin calls \
         (failed; in outage) | mean / max age | answers older than the TTL | outside the outage: \
         mean / max age, older than the TTL |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for o in outcomes {
        println!(
            "| {} | {} | {} / {} (of {}) | {} | {} | {} | {} ({}; {}) | {} / {} | {} | {} / {}, {} |",
            o.name,
            o.reads,
            o.errors,
            o.errors_in_outage,
            o.reads_in_outage,
            ms(o.p50_us),
            ms(o.p99_us),
            ms(o.max_us),
            o.origin_calls,
            o.origin_failed,
            o.origin_calls_in_outage,
            ms(o.mean_age_us),
            ms(o.max_age_us),
            share(o.stale, o.reads - o.errors),
            ms(o.mean_age_outside_outage_us),
            ms(o.max_age_outside_outage_us),
            o.stale_outside_outage,
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; there is nothing to filter.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let server = RedisServer::start();
    println!(
        "slow and flaky origin: {TASKS} tasks, {KEYS} keys, {}s; origin {}ms, 1 error in \
         {ERROR_ONE_IN}, outage {}s..{}s; TTL {}s, fail-safe {}s (throttle {}s), soft {}ms, \
         hard {}s, eager refresh {REFRESH_AHEAD}; cache-sdk: origin breaker (5 failures, probe \
         every 250 ms)",
        RUN.as_secs(),
        ORIGIN_LATENCY.as_millis(),
        OUTAGE_FROM.as_secs(),
        OUTAGE_TO.as_secs(),
        TTL.as_secs(),
        FAIL_SAFE.as_secs(),
        THROTTLE.as_secs(),
        SOFT_TIMEOUT.as_millis(),
        HARD_TIMEOUT.as_secs(),
    );
    let outcomes = rt.block_on(async {
        let mut outcomes = Vec::new();
        let sdk = cache_sdk(&server).await;
        println!("running {} ...", sdk.name());
        outcomes.push(run(sdk).await);
        let am = amalgam(&server).await;
        println!("running {} ...", am.name());
        outcomes.push(run(am).await);
        outcomes
    });
    print(&outcomes);
}
