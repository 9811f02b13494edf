//! Several `SET`s, each with its own TTL, in one pipelined round trip (one pipeline per
//! hash slot on a cluster): the write step of `get_many_or_load`, where loaded values and
//! "absent" markers expire at different times. On the fallback each write is also recorded
//! for replay, as `mset` does.
//!
//! May import: its parent's write path and replay helpers. Must not: know what the bytes
//! mean.

use std::sync::Arc;
use std::time::Duration;

use super::{pending_set, set_cmd, Remote, SetIf};
use crate::error::Error;
use crate::tier::redis::classify;

impl Remote {
    /// Writes every `(key, bytes, ttl)` (not atomically).
    pub(crate) async fn mset_each(
        &self,
        items: Vec<(String, Vec<u8>, Duration)>,
    ) -> Result<(), Error> {
        if items.is_empty() {
            return Ok(());
        }
        let cmds: Vec<(String, redis::Cmd)> = items
            .iter()
            .map(|(k, v, ttl)| {
                let rkey = self.rkey(k).into_owned();
                let cmd = set_cmd(&rkey, v, Some(*ttl), SetIf::Always);
                (rkey, cmd)
            })
            .collect();
        let names: Vec<String> = items.iter().map(|(k, _, _)| k.clone()).collect();
        let keys: Vec<&str> = names.iter().map(String::as_str).collect();
        self.write(
            &keys,
            |l| {
                let cmds = cmds.clone();
                async move {
                    match l.batch::<()>(cmds).await?.into_iter().find_map(Result::err) {
                        Some(e) => Err(classify(&e)),
                        None => Ok(()),
                    }
                }
            },
            |m, mut log| {
                for (k, v, ttl) in items {
                    let bytes: Arc<[u8]> = v.into();
                    if let Some(log) = log.as_deref_mut() {
                        log.record(&k, pending_set(&bytes, Some(ttl)));
                    }
                    m.set(&k, bytes, Some(ttl));
                }
            },
        )
        .await
    }
}
