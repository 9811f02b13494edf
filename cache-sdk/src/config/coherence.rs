//! [`Coherence`]: the setting that says how the L1 of several app instances is kept in step.
//! The mechanism itself (the invalidation link) lives in the storage tier; this is only the
//! choice, so that the configuration imports nothing from the tiers.

/// How the L1 of several app instances is kept in step (see
/// [`CacheConfig::coherence`](crate::CacheConfig::coherence)).
///
/// ```
/// use cache_sdk::Coherence;
/// assert_eq!("tracking".parse::<Coherence>(), Ok(Coherence::Tracking));
/// assert_eq!("pubsub".parse::<Coherence>(), Ok(Coherence::PubSub));
/// assert_eq!(Coherence::default(), Coherence::Auto);
/// assert!("sometimes".parse::<Coherence>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Coherence {
    /// Tracking when Redis accepts it, else pub/sub; pub/sub on Redis Cluster. Nothing
    /// without Redis.
    #[default]
    Auto,
    /// Redis server-assisted client-side caching (`CLIENT TRACKING … BCAST`): writes by any
    /// client evict L1. Needs Redis 6 or later.
    Tracking,
    /// A pub/sub channel the SDK publishes its writes on: only writes made through the SDK
    /// evict L1.
    PubSub,
    /// None: an entry may be served for up to
    /// [`CacheConfig::l1_ttl`](crate::CacheConfig::l1_ttl) after another instance changed it.
    Off,
}

impl std::str::FromStr for Coherence {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Coherence::Auto),
            "tracking" => Ok(Coherence::Tracking),
            "pubsub" | "pub/sub" | "pub-sub" => Ok(Coherence::PubSub),
            "off" | "none" | "false" => Ok(Coherence::Off),
            _ => Err("expected `auto`, `tracking`, `pubsub` or `off`".into()),
        }
    }
}
