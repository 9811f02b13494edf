//! Cold keys under load, counted rather than timed by criterion:
//!
//! - `stampede`: 8 `Cache` instances (each with its own connections, as 8 app servers
//!   would have) × 128 concurrent callers read the same cold key, whose loader takes
//!   20 ms; repeated over 20 keys. Reported per key: origin (loader) calls, Redis commands
//!   (from `INFO commandstats` of the bench's own `redis-server`, less the bench's own
//!   `INFO`/`CONFIG` calls) and the time until all 1,024 callers have the value. Once
//!   with the in-process single-flight only (`Stampede::Local`), once with the distributed
//!   lock (`Stampede::Distributed`).
//! - `bulk`: 100 cold keys read through one `get_many_or_load` vs 100 `get_or_load` calls
//!   one after the other (an instant loader), then the same 100 keys again from Redis with
//!   L1 cleared. Reported: Redis commands, round trips (by construction: a call waits for
//!   each answer; a pipeline is one round trip) and time, as the mean of 20 rounds.
//!
//! Run: `cargo bench -p cache-sdk-benches --bench stampede`

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_sdk::{Cache, LoadOptions, Stampede, Ttl};
use cache_sdk_tests::RedisServer;

const INSTANCES: usize = 8;
const CALLERS: usize = 128;
const COLD_KEYS: usize = 20;
const LOAD_TIME: Duration = Duration::from_millis(20);
const BULK: u64 = 100;
const ROUNDS: usize = 20;

/// Commands Redis ran since the last reset, without the bench's own bookkeeping.
fn commands(server: &RedisServer) -> u64 {
    server
        .cli(&["INFO", "commandstats"])
        .lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter(|l| !l.starts_with("info:") && !l.starts_with("config|"))
        .filter_map(|l| {
            l.split_once(":calls=")?
                .1
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

fn reset(server: &RedisServer) {
    server.cli(&["CONFIG", "RESETSTAT"]);
}

async fn caches(server: &RedisServer, n: usize, opts: LoadOptions) -> Vec<Cache> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(
            Cache::builder()
                .redis_url(server.url())
                .require_redis(true)
                .load_options(opts.clone())
                .build()
                .await
                .expect("build"),
        );
    }
    out
}

async fn stampede(server: &RedisServer, mode: Stampede) -> (f64, f64, Duration) {
    let opts = LoadOptions::new()
        .stampede(mode)
        .hard_timeout(Duration::from_secs(5));
    let caches = caches(server, INSTANCES, opts).await;
    let origin = Arc::new(AtomicU64::new(0));
    let mut time = Duration::ZERO;
    reset(server);
    for k in 0..COLD_KEYS {
        let key = format!("cache:bench:{}:{k}", mode.as_str());
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(INSTANCES * CALLERS);
        for cache in &caches {
            for _ in 0..CALLERS {
                let (cache, origin, key) = (cache.clone(), origin.clone(), key.clone());
                tasks.push(tokio::spawn(async move {
                    cache
                        .get_or_load_entry(&key, Ttl::Api, move || async move {
                            origin.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(LOAD_TIME).await;
                            Ok::<_, String>(k as u64)
                        })
                        .await
                        .expect("a value")
                }));
            }
        }
        for t in tasks {
            t.await.expect("task");
        }
        time += start.elapsed();
    }
    let cmds = commands(server);
    let keys = COLD_KEYS as f64;
    (
        origin.load(Ordering::Relaxed) as f64 / keys,
        cmds as f64 / keys,
        time / COLD_KEYS as u32,
    )
}

fn load_all(ids: Vec<u64>) -> std::future::Ready<Result<HashMap<u64, u64>, String>> {
    std::future::ready(Ok(ids.into_iter().map(|i| (i, i)).collect()))
}

/// The keys of `ids` through one `get_many_or_load`.
async fn read_bulk(cache: &Cache, ids: &[u64]) {
    cache
        .get_many_or_load(
            ids,
            |id: &u64| format!("cache:bulk-bench:{id}"),
            Ttl::Api,
            load_all,
        )
        .await
        .expect("bulk");
}

/// The keys of `ids` through one `get_or_load` each, one after the other.
async fn read_single(cache: &Cache, ids: &[u64]) {
    for id in ids {
        let id = *id;
        cache
            .get_or_load(
                &format!("cache:single-bench:{id}"),
                Ttl::Api,
                || async move { Ok::<_, String>(id) },
            )
            .await
            .expect("single");
    }
}

/// (commands, time) per round for: bulk cold, single cold, bulk warm, single warm.
async fn bulk(server: &RedisServer) -> [(f64, Duration); 4] {
    let cache = caches(server, 1, LoadOptions::new()).await.remove(0);
    let mut sums = [(0u64, Duration::ZERO); 4];
    for round in 0..ROUNDS {
        let ids: Vec<u64> = (0..BULK).map(|i| round as u64 * 1_000 + i).collect();
        // Cold: nothing cached anywhere. Warm: in Redis, with L1 cleared.
        for (i, (through_bulk, warm)) in
            [(true, false), (false, false), (true, true), (false, true)]
                .into_iter()
                .enumerate()
        {
            if warm {
                cache.clear_local();
            }
            reset(server);
            let start = Instant::now();
            if through_bulk {
                read_bulk(&cache, &ids).await;
            } else {
                read_single(&cache, &ids).await;
            }
            sums[i].1 += start.elapsed();
            sums[i].0 += commands(server);
        }
    }
    sums.map(|(c, t)| (c as f64 / ROUNDS as f64, t / ROUNDS as u32))
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is ignored (two fixed scenarios).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let server = RedisServer::start();
        println!(
            "stampede: {INSTANCES} instances x {CALLERS} callers, {COLD_KEYS} cold keys, loader {LOAD_TIME:?}"
        );
        println!("| mode | origin calls / key | Redis commands / key | time / key |");
        println!("|---|---|---|---|");
        for mode in [Stampede::Local, Stampede::Distributed] {
            let (origin, cmds, time) = stampede(&server, mode).await;
            println!(
                "| {} | {origin:.2} | {cmds:.1} | {:.1} ms |",
                mode.as_str(),
                time.as_secs_f64() * 1e3
            );
        }
        println!();
        println!("bulk: {BULK} keys, mean of {ROUNDS} rounds, instant loader");
        println!("| case | Redis commands | round trips | time |");
        println!("|---|---|---|---|");
        let r = bulk(&server).await;
        let rows = [
            ("cold, get_many_or_load", "2 (MGET, one pipeline of SETs)"),
            ("cold, 100 x get_or_load", "200 (GET, SET per key)"),
            ("warm (L1 cleared), get_many_or_load", "1 (MGET)"),
            ("warm (L1 cleared), 100 x get_or_load", "100 (GET per key)"),
        ];
        for ((name, trips), (cmds, time)) in rows.iter().zip(r) {
            println!(
                "| {name} | {cmds:.0} | {trips} | {:.2} ms |",
                time.as_secs_f64() * 1e3
            );
        }
    });
}
