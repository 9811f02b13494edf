//! Arbitrary cookie headers: finding the session cookie, verifying its signature (native
//! and express-session's `s:` form), and parsing session ids never panic, and a forged
//! value is never accepted.
#![no_main]

use cache_sdk::session::cookie::find_cookie;
use cache_sdk::session::{SessionId, SessionSecrets};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let secrets = SessionSecrets::new(["current-secret", "previous-secret"])
        .expect("fixed secrets are valid");
    for name in ["sid", "connect.sid"] {
        if let Some(value) = find_cookie([text], name) {
            if let Some(v) = secrets.verify(&value) {
                // Only a value we signed verifies; the fuzzer cannot forge HMAC-SHA256, so a
                // verified value must be one of ours again when re-signed.
                assert!(value.contains(&secrets.signature(&v.id)));
            }
        }
    }
    if let Some(v) = secrets.verify(text) {
        assert!(text.contains(&secrets.signature(&v.id)));
    }
    let _ = SessionId::parse(text);
});
