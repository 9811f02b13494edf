//! Single-flight: concurrent loads of one key run the loader once.
//!
//! The first caller of a key becomes the leader and holds the key's async mutex while it
//! loads; the others wait on the mutex. A successful leader leaves the value in the flight's
//! slot, so every waiter gets it without touching the cache again. A leader that fails (or
//! is cancelled) leaves the slot empty, and the next waiter takes over as leader: errors are
//! never shared or cached. The leader removes the flight from the map when it is done, so a
//! later caller starts from the cache, never from an old flight's value.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::tier::local::AnyValue;

type Slot = Arc<tokio::sync::Mutex<Option<AnyValue>>>;

#[derive(Debug, Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<String, Slot>>,
}

/// Removes the flight from the map when the last interested caller is done.
pub(crate) struct FlightGuard<'a> {
    flights: &'a Flights,
    key: &'a str,
    slot: Slot,
    leader: bool,
}

impl Flights {
    /// Joins (or starts) the flight for `key`.
    pub(crate) fn join<'a>(&'a self, key: &'a str) -> FlightGuard<'a> {
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let slot = map.entry(key.to_owned()).or_default().clone();
        FlightGuard {
            flights: self,
            key,
            slot,
            leader: false,
        }
    }
}

impl FlightGuard<'_> {
    pub(crate) fn slot(&self) -> Slot {
        self.slot.clone()
    }

    /// Called by the caller that found the slot empty and is about to load.
    pub(crate) fn lead(&mut self) {
        self.leader = true;
    }
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        let mut map = self
            .flights
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.leader
            && map
                .get(self.key)
                .is_some_and(|s| Arc::ptr_eq(s, &self.slot))
        {
            map.remove(self.key);
        }
    }
}
