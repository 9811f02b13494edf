//! The process-global [`Cache`] that [`#[cached]`](crate::cached) and its companions use
//! when they are not given a `cache = ...` option.
//!
//! Install it once at startup, before the first cached call:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = cache_sdk::Cache::builder().from_env()?.build().await?;
//! cache_sdk::install(cache).expect("installed once, at startup");
//! assert!(cache_sdk::global().is_ready());
//! # Ok(()) }
//! ```
//!
//! Until one is installed, [`global`] answers with an in-memory cache (default settings) and
//! logs one warning; values cached there are not carried over to the cache installed later.

use std::sync::OnceLock;

use crate::cache::Cache;
use crate::ttl::TtlPresets;

static INSTALLED: OnceLock<Cache> = OnceLock::new();
static DEFAULT: OnceLock<Cache> = OnceLock::new();
static DEFAULT_PRESETS: OnceLock<TtlPresets> = OnceLock::new();

/// Installs the process-global cache used by [`#[cached]`](crate::cached),
/// [`#[cache_evict]`](crate::cache_evict) and [`#[cache_put]`](crate::cache_put) when they
/// have no `cache = ...` option. Call it once, at startup.
///
/// # Errors
/// Gives the cache back when one was already installed (the first one stays).
///
/// ```
/// let first = cache_sdk::Cache::in_memory();
/// assert!(cache_sdk::install(first).is_ok());
/// let second = cache_sdk::Cache::in_memory();
/// assert!(cache_sdk::install(second).is_err());
/// ```
pub fn install(cache: Cache) -> Result<(), Cache> {
    let result = INSTALLED.set(cache);
    if result.is_ok() {
        let store = INSTALLED
            .get()
            .map_or(crate::StoreKind::Memory, |c| c.stats().store)
            .as_str();
        tracing::info!(store, "global cache installed");
        if DEFAULT.get().is_some() {
            tracing::warn!(
                "the global cache was installed after cached functions had run: values they \
                 cached before stay in the in-memory default and are not seen any more"
            );
        }
    }
    result
}

/// The process-global cache: the one given to [`install`], or, when none was installed, an
/// in-memory cache with default settings (and one warning in the log).
///
/// ```
/// let cache = cache_sdk::global();
/// # let _ = cache;
/// ```
#[must_use]
#[inline]
pub fn global() -> &'static Cache {
    match INSTALLED.get() {
        Some(cache) => cache,
        None => DEFAULT.get_or_init(|| {
            tracing::warn!(
                "no global cache installed (cache_sdk::install): #[cached] functions use an \
                 in-memory cache local to this process"
            );
            Cache::in_memory()
        }),
    }
}

/// The TTL presets of the installed cache, or the defaults; for the process-local tier.
pub(crate) fn presets() -> &'static TtlPresets {
    match INSTALLED.get() {
        Some(cache) => cache.ttl_presets(),
        None => DEFAULT_PRESETS.get_or_init(TtlPresets::default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ttl::Ttl;

    // One test: the global cache is process-wide state.
    #[tokio::test]
    async fn default_until_installed_then_the_installed_one() {
        assert!(INSTALLED.get().is_none());
        let default = global();
        default.set("cache:g:1", &1u8, Ttl::Api).await.unwrap();
        assert_eq!(presets().base(&Ttl::Api).unwrap().as_secs(), 600);

        let cache = Cache::builder()
            .ttl_preset("reports", std::time::Duration::from_secs(60))
            .build()
            .await
            .unwrap();
        install(cache.clone()).unwrap();
        assert!(install(Cache::in_memory()).is_err());
        global().set("cache:g:2", &2u8, Ttl::Api).await.unwrap();
        assert_eq!(cache.get::<u8>("cache:g:2").await.unwrap(), Some(2));
        // The installed cache does not see what the default held.
        assert_eq!(cache.get::<u8>("cache:g:1").await.unwrap(), None);
        assert_eq!(
            presets().base(&Ttl::named("reports")).unwrap().as_secs(),
            60
        );
    }
}
