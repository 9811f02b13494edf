//! Arbitrary bytes under `sess:{id}`: loading them as a typed session, in the native and
//! the express-session format, is an error or a session, never a panic.
#![no_main]

use std::sync::OnceLock;

use cache_sdk::session::{CacheSessionStore, SessionConfig, SessionFormat, SessionId, Sessions};
use cache_sdk::{Cache, Ttl};
use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
struct User {
    #[serde(rename = "userId")]
    user_id: Option<u64>,
    username: Option<String>,
}

struct World {
    rt: tokio::runtime::Runtime,
    native: Sessions,
    express: Sessions,
    cache: Cache,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let cache = rt.block_on(async { Cache::in_memory() });
        let native = Sessions::new(
            CacheSessionStore::new(cache.clone()),
            SessionConfig::development(),
        )
        .expect("sessions");
        let express = Sessions::new(
            CacheSessionStore::new(cache.clone()),
            SessionConfig::development().format(SessionFormat::Express),
        )
        .expect("sessions");
        World {
            rt,
            native,
            express,
            cache,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    w.rt.block_on(async {
        let id = SessionId::generate();
        if w.cache
            .set_raw(&id.key(), data.to_vec(), Ttl::secs(60))
            .await
            .is_err()
        {
            return;
        }
        let _ = w.native.load::<User>(&id).await;
        let _ = w.express.load::<User>(&id).await;
        let _ = w.express.load::<serde_json::Value>(&id).await;
        let _ = w.cache.delete(&id.key()).await;
    });
});
