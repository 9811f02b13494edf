//! Signatures #[cached] and its companions must keep compiling, without warnings.
#![deny(warnings)]
// A test program of signatures: its futures are built and never run, its types need no
// `Debug`, and the bounds are where the signatures under test put them.
#![allow(
    missing_debug_implementations,
    clippy::let_underscore_future,
    clippy::multiple_bound_locations
)]

use std::fmt::Display;
use std::sync::LazyLock;

use cache_sdk as sdk;
use sdk::{cache_evict, cache_put, cached, Cache};

static CACHE: LazyLock<Cache> = LazyLock::new(Cache::in_memory);

fn shared() -> &'static Cache {
    &CACHE
}

pub struct User {
    pub id: u64,
}

pub struct Service {
    pub cache: Cache,
    pub tenant: String,
}

impl Service {
    /// Docs and other attributes are kept.
    #[cached(key = "cache:{self.tenant}:user:{user.id}", ttl = "user_preferences", cache = self.cache)]
    #[inline(never)]
    pub async fn name<'a>(&self, user: &'a User, verbose: bool) -> Option<String> {
        verbose.then(|| format!("user {}", user.id))
    }

    #[cached(key = "cache:counter:{id}", ttl = "1h30m", cache = self.cache, jitter = "10%")]
    pub(crate) async fn bump(&mut self, mut id: u64) -> u64 {
        id += 1;
        self.tenant.push('!');
        id
    }

    #[cache_evict(key = ["cache:{self.tenant}:user:{id}", "cache:counter:{id}"], cache = self.cache)]
    pub async fn forget(&self, id: u64) -> Result<(), String> {
        Ok(())
    }
}

/// Generic, with `impl Trait` arguments, `?` in the body and an `io::Result` alias.
#[cached(key = "cache:read:{path}:{id}", ttl = 300, crate = "sdk", cache = shared())]
pub async fn read<T: Display + Send + Sync>(
    path: T,
    id: impl Display + Send + Sync,
) -> std::io::Result<String>
where
    T: Clone,
{
    let text: String = format!("{path}/{id}")
        .parse()
        .map_err(std::io::Error::other)?;
    Ok(text)
}

#[cached(key = "cache:config", ttl = "session", cache = CACHE, cache_none = true)]
pub async fn config() -> Option<Vec<(String, String)>> {
    None
}

#[cached(key = "cache:rows:{{literal}}:{n}", ttl = "reports", cache = CACHE)]
pub async fn rows(n: usize) -> Vec<u32> {
    vec![0; n]
}

#[cache_put(key = "cache:rows:{{literal}}:{n}", ttl = "reports", cache = CACHE)]
pub async fn save_rows(n: usize) -> Result<Vec<u32>, String> {
    Ok(vec![1; n])
}

#[cached(key = "cache:parse:{s}", tier = "l1", ttl = "24h")]
pub fn parse(s: &str) -> Result<u64, std::num::ParseIntError> {
    s.parse()
}

#[cache_evict(key = "cache:parse:{s}", tier = "l1", before = true)]
pub fn reset_parse(s: &str) {}

fn main() {
    // The companions exist with the expected arguments (the futures are never run).
    let service = Service {
        cache: Cache::in_memory(),
        tenant: "acme".into(),
    };
    let user = User { id: 1 };
    let _ = service.name_invalidate(&user);
    let _ = service.name_refresh(&user, true);
    let _ = service.bump_invalidate(1);
    let _ = read_invalidate("a".to_string(), 1);
    let _ = read_refresh("a".to_string(), 1);
    let _ = config_invalidate();
    let _ = rows_refresh(3);
    let _ = save_rows(3);
    parse_invalidate("7");
    let _ = parse_refresh("7");
    reset_parse("7");
}
