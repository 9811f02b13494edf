//! L1: typed values in the process. A hit is a hash lookup, one atomic load and an `Arc`
//! clone: nothing is decoded.
//!
//! Owns the moka map, the epoch and per-key tickets, and the *reserve* (what L1 held when it
//! was last active). May import only the tier's shared `DeadlineExpiry`; it knows nothing of
//! Redis, of key patterns, or of what the values mean.
//!
//! # Staying coherent
//!
//! Every entry carries the *epoch* it was read under. A hit counts only when the entry's
//! epoch is the current one, so bumping the epoch makes the whole of L1 invisible at once
//! (a flush, or losing the invalidation link). An odd epoch means "suspended": nothing is
//! served and nothing is inserted until the link is back.
//!
//! Per-key invalidations race with reads that are filling L1 (read from L2, then insert).
//! A reader takes a [`Ticket`] before reading L2: the epoch and the generation of the key's
//! slot. Invalidating a key bumps its slot, then removes it. The insert is skipped when the
//! slot moved meanwhile, and undone when the slot moved during the insert, so a value read
//! before an invalidation never outlives it.
//!
//! # Raw-backed entries
//!
//! A value that implements [`RawBacked`] keeps the exact bytes L2 stores for it, and until
//! when L2 surely keeps them. Such entries ([`Local::insert_backed`]) are served like any
//! other, and in addition can be listed with their bytes ([`Local::backed_entries`],
//! [`Local::reserve_backed`]) so that the outage code can hand them to the fallback store
//! when Redis is lost, whatever their key. L1 does not know who puts them there.

use std::any::Any;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache as MokaCache;

use super::{DeadlineExpiry, HasDeadline};

pub(crate) type AnyValue = Arc<dyn Any + Send + Sync>;

/// An L1 value that keeps the bytes it was decoded from, exactly as L2 stores them, so
/// that it can be handed to the fallback store when Redis is lost.
#[cfg_attr(not(feature = "sessions"), allow(dead_code))]
pub(crate) trait RawBacked: Send + Sync + 'static {
    /// The bytes as stored in L2.
    fn raw(&self) -> &Arc<[u8]>;
    /// Until when the bytes surely live in L2 (a lower bound of their expiry).
    fn stored_until(&self) -> Instant;
}

/// The stored bytes of a raw-backed entry (see [`RawBacked`]).
#[derive(Debug, Clone)]
pub(crate) struct Backing {
    /// The bytes as stored in L2.
    pub(crate) raw: Arc<[u8]>,
    /// Until when they surely live in L2.
    pub(crate) stored_until: Instant,
}

/// What an L1 read of a raw-backed entry found.
#[cfg_attr(not(feature = "sessions"), allow(dead_code))]
pub(crate) enum Held<T> {
    /// The value, as the type asked for.
    Value(Arc<T>),
    /// A value of another type: only its stored bytes.
    Raw(Arc<[u8]>),
}

#[cfg_attr(not(feature = "sessions"), allow(dead_code))]
impl<T: Send + Sync + 'static> Held<T> {
    /// `value` as `T`, or else the stored bytes of a raw-backed value.
    fn of(value: AnyValue, backing: Option<BackingOf>) -> Option<Self> {
        match value.downcast::<T>() {
            Ok(v) => Some(Held::Value(v)),
            Err(value) => Some(Held::Raw(backing?(&value)?.raw)),
        }
    }
}

/// Finds the [`Backing`] of a type-erased raw-backed value: a plain function pointer, so an
/// entry carries it at no cost on the hit path.
type BackingOf = fn(&AnyValue) -> Option<Backing>;

#[cfg_attr(not(feature = "sessions"), allow(dead_code))]
fn backing_of<R: RawBacked>(value: &AnyValue) -> Option<Backing> {
    let r = value.downcast_ref::<R>()?;
    Some(Backing {
        raw: r.raw().clone(),
        stored_until: r.stored_until(),
    })
}

/// What a tagged entry depends on (see [`Local::insert_depending`]): it is served only
/// while each of these keys holds, in L1, a [`Stamp`] older than the entry's write time.
#[derive(Debug)]
pub(crate) struct Depends {
    /// When the entry was written (ms since the Unix epoch).
    pub(crate) written_at_ms: u64,
    /// The L1 keys of the stamps.
    pub(crate) keys: Box<[String]>,
}

/// A time (ms since the Unix epoch) kept in L1 under a key that entries depend on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stamp(pub(crate) u64);

/// Slots of per-key invalidation generations (a power of two).
const SLOTS: usize = 1024;

#[derive(Clone)]
pub(crate) struct L1Entry {
    value: AnyValue,
    expires_at: Instant,
    epoch: u64,
    /// Set for raw-backed values ([`Local::insert_backed`]).
    backing: Option<BackingOf>,
    /// Set for tagged values ([`Local::insert_depending`]).
    depends: Option<Arc<Depends>>,
}

impl L1Entry {
    fn backing(&self) -> Option<Backing> {
        (self.backing?)(&self.value)
    }
}

impl HasDeadline for L1Entry {
    fn deadline(&self) -> Option<Instant> {
        Some(self.expires_at)
    }
}

/// Epoch and per-key generations, shared by L1 and whatever invalidates it.
struct Guard {
    epoch: AtomicU64,
    slots: Box<[AtomicU64]>,
    /// While suspended: whether the entries of the last active epoch may be served (Redis
    /// itself is lost, so nothing newer can be known).
    reserve: AtomicBool,
}

/// Taken before reading L2; lets the value read be put into L1 only if nothing
/// invalidated it meanwhile.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    epoch: u64,
    slot: usize,
    generation: u64,
}

/// The typed in-process tier.
#[derive(Clone)]
pub(crate) struct Local {
    map: Option<MokaCache<String, L1Entry>>,
    max_ttl: Duration,
    guard: Arc<Guard>,
    /// Callers waiting for a key to change (woken by `invalidate` and `clear`).
    watch: Arc<super::watch::KeyWatch>,
}

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local")
            .field("enabled", &self.map.is_some())
            .field("max_ttl", &self.max_ttl)
            .field("epoch", &self.guard.epoch.load(Ordering::Relaxed))
            .finish()
    }
}

fn slot_of(key: &str) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() as usize) & (SLOTS - 1)
}

impl Local {
    /// `capacity` entries at most (0 disables L1); no entry lives longer than `max_ttl`.
    pub(crate) fn new(capacity: u64, max_ttl: Duration) -> Self {
        let map = (capacity > 0 && !max_ttl.is_zero()).then(|| {
            crate::metrics::on_l1_eviction(MokaCache::builder())
                .max_capacity(capacity)
                .expire_after(DeadlineExpiry)
                .build()
        });
        let guard = Arc::new(Guard {
            epoch: AtomicU64::new(0),
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            reserve: AtomicBool::new(false),
        });
        Self {
            map,
            max_ttl,
            guard,
            watch: Arc::default(),
        }
    }

    /// The waiters for key changes (see [`super::watch`]).
    pub(crate) fn watch(&self) -> &Arc<super::watch::KeyWatch> {
        &self.watch
    }

    /// Whether L1 holds anything at all (capacity and TTL above zero).
    pub(crate) fn enabled(&self) -> bool {
        self.map.is_some()
    }

    #[inline]
    pub(crate) fn get<T: Send + Sync + 'static>(&self, key: &str) -> Option<Arc<T>> {
        let e = self.map.as_ref()?.get(key)?;
        let current = self.guard.epoch.load(Ordering::Acquire);
        if e.epoch != current && !self.in_reserve(e.epoch, current) {
            return None;
        }
        if let Some(d) = &e.depends {
            if !self.stamps_allow(d, current) {
                return None;
            }
        }
        e.value.downcast::<T>().ok()
    }

    /// Whether every stamp a tagged entry depends on is in L1 and older than the entry.
    #[cold]
    fn stamps_allow(&self, d: &Depends, current: u64) -> bool {
        let Some(map) = &self.map else { return false };
        d.keys.iter().all(|k| {
            map.get(k).is_some_and(|s| {
                (s.epoch == current || self.in_reserve(s.epoch, current))
                    && s.value
                        .downcast_ref::<Stamp>()
                        .is_some_and(|stamp| stamp.0 < d.written_at_ms)
            })
        })
    }

    /// One lookup for a raw-backed value: as `T`, or only its stored bytes when L1 holds a
    /// value of another type under `key`.
    #[inline]
    #[cfg_attr(not(feature = "sessions"), allow(dead_code))]
    pub(crate) fn get_held<T: Send + Sync + 'static>(&self, key: &str) -> Option<Held<T>> {
        let e = self.map.as_ref()?.get(key)?;
        let current = self.guard.epoch.load(Ordering::Acquire);
        if e.epoch != current && !self.in_reserve(e.epoch, current) {
            return None;
        }
        if let Some(d) = &e.depends {
            if !self.stamps_allow(d, current) {
                return None;
            }
        }
        Held::of(e.value, e.backing)
    }

    /// Whether an entry of `epoch` is in a reserve that may be served now.
    #[cold]
    fn in_reserve(&self, epoch: u64, current: u64) -> bool {
        current & 1 == 1 && epoch == current - 1 && self.guard.reserve.load(Ordering::Acquire)
    }

    /// Lets a suspended L1 serve (not fill) what it held when it was last active: for
    /// when Redis itself is lost. Off again when L1 resumes or is cleared.
    pub(crate) fn serve_reserve(&self, on: bool) {
        self.guard.reserve.store(on, Ordering::SeqCst);
    }

    /// The ticket for a read of `key` from L2 that may fill L1 afterwards.
    pub(crate) fn ticket(&self, key: &str) -> Ticket {
        let slot = slot_of(key);
        // The epoch first: a suspension after this load makes the entry invisible anyway.
        let epoch = self.guard.epoch.load(Ordering::SeqCst);
        Ticket {
            epoch,
            slot,
            generation: self.guard.slots[slot].load(Ordering::SeqCst),
        }
    }

    /// Stores `value` for at most `ttl` (capped by the L1 maximum), unless `key` was
    /// invalidated since `ticket` was taken, or L1 is suspended.
    pub(crate) fn insert(&self, key: &str, value: AnyValue, ttl: Option<Duration>, ticket: Ticket) {
        self.insert_depending(key, value, ttl, None, ticket);
    }

    /// As [`Local::insert`], for a tagged value: it is served only while the stamps it
    /// `depends` on are in L1 and older than it (else a read misses and checks L2).
    pub(crate) fn insert_depending(
        &self,
        key: &str,
        value: AnyValue,
        ttl: Option<Duration>,
        depends: Option<Arc<Depends>>,
        ticket: Ticket,
    ) {
        if self.map.is_none() || ticket.epoch & 1 == 1 {
            return;
        }
        let slot = &self.guard.slots[ticket.slot];
        if slot.load(Ordering::SeqCst) != ticket.generation {
            return;
        }
        self.put(key, value, ttl, None, depends, ticket);
    }

    /// As [`Local::insert`], for a value that keeps its stored bytes: it stays no longer
    /// than L2 surely keeps them, and the outage code can find it (see the module docs).
    #[cfg_attr(not(feature = "sessions"), allow(dead_code))]
    pub(crate) fn insert_backed<R: RawBacked>(&self, key: &str, value: Arc<R>, ticket: Ticket) {
        if self.map.is_none() || ticket.epoch & 1 == 1 {
            return;
        }
        let left = value
            .stored_until()
            .saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        if self.guard.slots[ticket.slot].load(Ordering::SeqCst) != ticket.generation {
            return;
        }
        let backing: BackingOf = backing_of::<R>;
        self.put(key, value, Some(left), Some(backing), None, ticket);
    }

    /// Puts the entry for at most `ttl` (capped by the L1 maximum), then takes it out again
    /// if the key's slot left the ticket's generation meanwhile: the invalidation may have
    /// run before the entry was in the map.
    fn put(
        &self,
        key: &str,
        value: AnyValue,
        ttl: Option<Duration>,
        backing: Option<BackingOf>,
        depends: Option<Arc<Depends>>,
        ticket: Ticket,
    ) {
        let Ticket {
            epoch,
            slot,
            generation,
        } = ticket;
        let slot = &self.guard.slots[slot];
        let Some(map) = &self.map else { return };
        let ttl = ttl.map_or(self.max_ttl, |t| t.min(self.max_ttl));
        if ttl.is_zero() {
            map.invalidate(key);
            return;
        }
        map.insert(
            key.to_owned(),
            L1Entry {
                value,
                expires_at: Instant::now() + ttl,
                epoch,
                backing,
                depends,
            },
        );
        if slot.load(Ordering::SeqCst) != generation {
            map.invalidate(key);
        }
    }

    /// Stores a value this instance has just written; `ticket` was taken before the write.
    /// Reads that started before the write cannot put what they read over it afterwards,
    /// and when two writes of this instance overlap, L1 ends up empty rather than holding
    /// the one Redis did not keep.
    pub(crate) fn insert_own(
        &self,
        key: &str,
        value: AnyValue,
        ttl: Option<Duration>,
        ticket: Ticket,
    ) {
        self.insert_own_depending(key, value, ttl, None, ticket);
    }

    /// As [`Local::insert_own`], for a tagged value (see [`Local::insert_depending`]).
    pub(crate) fn insert_own_depending(
        &self,
        key: &str,
        value: AnyValue,
        ttl: Option<Duration>,
        depends: Option<Arc<Depends>>,
        ticket: Ticket,
    ) {
        if self.map.is_none() {
            return;
        }
        let slot = &self.guard.slots[ticket.slot];
        let next = ticket.generation.wrapping_add(1);
        if ticket.epoch & 1 == 1
            || slot
                .compare_exchange(ticket.generation, next, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
        {
            self.invalidate(key);
            return;
        }
        self.put(
            key,
            value,
            ttl,
            None,
            depends,
            Ticket {
                generation: next,
                ..ticket
            },
        );
    }

    /// Drops `key`, and makes reads of it that are in flight not fill L1 with what they read.
    pub(crate) fn invalidate(&self, key: &str) {
        self.watch.wake(key);
        if let Some(map) = &self.map {
            self.guard.slots[slot_of(key)].fetch_add(1, Ordering::SeqCst);
            map.invalidate(key);
        }
    }

    /// Drops everything, including what reads in flight are about to insert.
    pub(crate) fn clear(&self) {
        self.watch.wake_all();
        if let Some(map) = &self.map {
            self.guard.reserve.store(false, Ordering::SeqCst);
            self.guard.epoch.fetch_add(2, Ordering::SeqCst);
            map.invalidate_all();
        }
    }

    /// Stops serving and filling L1 (the invalidation link is down). Entries stay, invisible,
    /// as the [`reserve`](Self::reserve). Returns whether L1 was active before.
    pub(crate) fn suspend(&self) -> bool {
        self.guard
            .epoch
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |e| {
                (e & 1 == 0).then_some(e + 1)
            })
            .is_ok()
    }

    /// Serves L1 again, starting empty. Returns whether it was suspended.
    pub(crate) fn resume(&self) -> bool {
        self.guard.reserve.store(false, Ordering::SeqCst);
        let resumed = self
            .guard
            .epoch
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |e| {
                (e & 1 == 1).then_some(e + 1)
            })
            .is_ok();
        if let Some(map) = &self.map {
            map.invalidate_all();
        }
        resumed
    }

    /// Whether L1 is suspended.
    pub(crate) fn is_suspended(&self) -> bool {
        self.guard.epoch.load(Ordering::Acquire) & 1 == 1
    }

    /// While suspended and [serving the reserve](Self::serve_reserve): the entry stored
    /// under `key` while L1 was last active.
    pub(crate) fn reserve(&self, key: &str) -> Option<AnyValue> {
        let current = self.guard.epoch.load(Ordering::Acquire);
        let e = self.map.as_ref()?.get(key)?;
        self.in_reserve(e.epoch, current).then_some(e.value)
    }

    /// As [`Local::reserve`], for a raw-backed entry: as `T` or as its stored bytes, with
    /// its [`Backing`].
    #[cfg_attr(not(feature = "sessions"), allow(dead_code))]
    pub(crate) fn reserve_backed<T: Send + Sync + 'static>(
        &self,
        key: &str,
    ) -> Option<(Held<T>, Backing)> {
        let current = self.guard.epoch.load(Ordering::Acquire);
        let e = self.map.as_ref()?.get(key)?;
        if !self.in_reserve(e.epoch, current) {
            return None;
        }
        let backing = e.backing()?;
        Some((Held::of(e.value, e.backing)?, backing))
    }

    /// Every raw-backed entry with its [`Backing`]: those L1 serves now, or, while it is
    /// suspended, those of the reserve (what it held when it was last active).
    pub(crate) fn backed_entries(&self) -> Vec<(Arc<String>, Backing)> {
        let current = self.guard.epoch.load(Ordering::Acquire);
        let Some(map) = &self.map else {
            return Vec::new();
        };
        // Active (even): this epoch; suspended (odd): the last active one.
        let wanted = current & !1;
        map.iter()
            .filter(|(_, e)| e.epoch == wanted)
            .filter_map(|(k, e)| Some((k, e.backing()?)))
            .collect()
    }

    pub(crate) fn len(&self) -> u64 {
        self.map.as_ref().map_or(0, |m| {
            m.run_pending_tasks();
            m.entry_count()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(n: u32) -> AnyValue {
        Arc::new(n)
    }

    #[test]
    fn an_invalidation_during_a_read_keeps_the_read_out_of_l1() {
        let l1 = Local::new(100, Duration::from_secs(60));
        let t = l1.ticket("k");
        l1.invalidate("k");
        l1.insert("k", v(1), None, t);
        assert!(l1.get::<u32>("k").is_none());
        let t = l1.ticket("k");
        l1.insert("k", v(2), None, t);
        assert_eq!(l1.get::<u32>("k").as_deref(), Some(&2));
    }

    struct Rec {
        raw: Arc<[u8]>,
        n: u32,
    }

    impl RawBacked for Rec {
        fn raw(&self) -> &Arc<[u8]> {
            &self.raw
        }
        fn stored_until(&self) -> Instant {
            Instant::now() + Duration::from_secs(60)
        }
    }

    fn rec(n: u32) -> Arc<Rec> {
        Arc::new(Rec {
            raw: n.to_string().into_bytes().into(),
            n,
        })
    }

    #[test]
    fn suspended_l1_serves_nothing_and_keeps_a_reserve() {
        let l1 = Local::new(100, Duration::from_secs(60));
        let t = l1.ticket("a");
        l1.insert_backed("a", rec(1), t);
        let t = l1.ticket("plain");
        l1.insert("plain", v(9), None, t);
        let before = l1.ticket("k");
        assert!(l1.suspend());
        assert!(!l1.suspend());
        assert!(l1.get::<Rec>("a").is_none());
        assert!(l1.reserve_backed::<Rec>("a").is_none());
        l1.serve_reserve(true);
        assert_eq!(l1.get::<Rec>("a").map(|r| r.n), Some(1));
        assert!(l1.reserve_backed::<Rec>("a").is_some());
        assert!(l1.reserve("plain").is_some());
        assert!(
            l1.reserve_backed::<u32>("plain").is_none(),
            "not raw-backed"
        );
        let listed = l1.backed_entries();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].0.as_str(), "a");
        assert_eq!(&*listed[0].1.raw, b"1");
        // Reads that started before the suspension, or during it, do not fill L1.
        l1.insert("k", v(3), None, before);
        let during = l1.ticket("k");
        l1.insert("k", v(3), None, during);
        assert!(l1.resume());
        assert!(l1.get::<u32>("k").is_none());
        assert!(l1.get::<Rec>("a").is_none(), "resume starts empty");
        assert!(l1.reserve_backed::<Rec>("a").is_none());
    }

    #[test]
    fn raw_backed_entries_answer_another_type_with_their_bytes() {
        let l1 = Local::new(100, Duration::from_secs(60));
        let t = l1.ticket("a");
        l1.insert_backed("a", rec(7), t);
        assert!(matches!(l1.get_held::<Rec>("a"), Some(Held::Value(r)) if r.n == 7));
        assert!(matches!(l1.get_held::<u64>("a"), Some(Held::Raw(b)) if &*b == b"7"));
        let t = l1.ticket("p");
        l1.insert("p", v(1), None, t);
        assert!(
            l1.get_held::<u64>("p").is_none(),
            "a plain entry has no bytes"
        );
        assert_eq!(l1.backed_entries().len(), 1);
    }

    #[test]
    fn a_write_keeps_older_reads_out_and_overlapping_writes_leave_l1_empty() {
        let l1 = Local::new(100, Duration::from_secs(60));
        let read = l1.ticket("k");
        let write = l1.ticket("k");
        l1.insert_own("k", v(2), None, write);
        l1.insert("k", v(1), None, read);
        assert_eq!(l1.get::<u32>("k").as_deref(), Some(&2));
        let w1 = l1.ticket("k");
        let w2 = l1.ticket("k");
        l1.insert_own("k", v(3), None, w2);
        l1.insert_own("k", v(4), None, w1);
        assert!(l1.get::<u32>("k").is_none());
    }

    #[test]
    fn a_tagged_entry_is_served_only_while_its_stamps_are_older() {
        let l1 = Local::new(100, Duration::from_secs(60));
        let depends = Arc::new(Depends {
            written_at_ms: 100,
            keys: vec!["~t".to_string()].into_boxed_slice(),
        });
        let t = l1.ticket("k");
        l1.insert_depending("k", v(1), None, Some(depends.clone()), t);
        assert!(l1.get::<u32>("k").is_none(), "stamp unknown: a miss");
        let t = l1.ticket("~t");
        l1.insert("~t", Arc::new(Stamp(99)), None, t);
        assert_eq!(l1.get::<u32>("k").as_deref(), Some(&1));
        l1.invalidate("~t");
        assert!(l1.get::<u32>("k").is_none());
        let t = l1.ticket("~t");
        l1.insert("~t", Arc::new(Stamp(100)), None, t);
        assert!(
            l1.get::<u32>("k").is_none(),
            "invalidated at its write time"
        );
    }

    #[test]
    fn clear_hides_what_reads_in_flight_insert() {
        let l1 = Local::new(100, Duration::from_secs(60));
        let t = l1.ticket("k");
        l1.clear();
        l1.insert("k", v(1), None, t);
        assert!(l1.get::<u32>("k").is_none());
    }
}
