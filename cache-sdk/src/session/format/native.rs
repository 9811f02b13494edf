//! The native record: compact JSON in the SDK's small envelope,
//! `{"v":1,"ttl":86400,"savedAt":1764183056263,"data":{…}}` (described on
//! [`SessionFormat::Native`](super::SessionFormat::Native)).
//!
//! May import: serde and its parent's shared types. Must not: import the express format.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Map;

use super::{Decoded, FormatError};
use crate::ttl::MAX_TTL;

/// The envelope version.
const VERSION: u8 = 1;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EnvelopeOut<'a, T> {
    v: u8,
    ttl: u64,
    saved_at: u64,
    data: &'a T,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvelopeIn<T> {
    ttl: u64,
    saved_at: u64,
    data: T,
}

/// Decodes an envelope of [`VERSION`] whose data fits `T`.
pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<Decoded<T>, FormatError> {
    // Check the version before the data, so an unknown envelope is named as such.
    #[derive(Deserialize)]
    struct Version {
        v: u8,
    }
    let version: Version = serde_json::from_slice(bytes)
        .map_err(|e| FormatError(format!("not a session envelope: {e}")))?;
    if version.v != VERSION {
        return Err(FormatError(format!("envelope version {}", version.v)));
    }
    let env: EnvelopeIn<T> = serde_json::from_slice(bytes)
        .map_err(|e| FormatError(format!("does not fit the session type: {e}")))?;
    Ok(Decoded {
        data: env.data,
        // Out of range: ignored (configured TTL), never written back as is.
        ttl: (env.ttl > 0 && env.ttl <= MAX_TTL.as_secs()).then(|| Duration::from_secs(env.ttl)),
        saved_at_ms: Some(env.saved_at),
        extra: Map::new(),
    })
}

/// Encodes `data` in an envelope saved at `now_ms` with this session's `ttl`.
pub(super) fn encode<T: Serialize>(
    data: &T,
    ttl: Duration,
    now_ms: u64,
) -> Result<Vec<u8>, FormatError> {
    serde_json::to_vec(&EnvelopeOut {
        v: VERSION,
        ttl: ttl.as_secs(),
        saved_at: now_ms,
        data,
    })
    .map_err(|e| FormatError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
    struct S {
        n: u32,
    }

    #[test]
    fn round_trip_and_shape() {
        let out = encode(&S { n: 7 }, Duration::from_secs(60), 1000).expect("encodes");
        assert_eq!(out, br#"{"v":1,"ttl":60,"savedAt":1000,"data":{"n":7}}"#);
        let d = decode::<S>(&out).expect("decodes");
        assert_eq!(d.data, S { n: 7 });
        assert_eq!(d.ttl, Some(Duration::from_secs(60)));
        assert_eq!(d.saved_at_ms, Some(1000));
    }

    #[test]
    fn ignores_a_lifetime_out_of_range() {
        let out = br#"{"v":1,"ttl":31536001,"savedAt":1,"data":{"n":1}}"#;
        assert_eq!(decode::<S>(out).expect("decodes").ttl, None);
        let out = br#"{"v":1,"ttl":31536000,"savedAt":1,"data":{"n":1}}"#;
        assert_eq!(decode::<S>(out).expect("decodes").ttl, Some(MAX_TTL));
    }

    #[test]
    fn refuses_other_versions_and_garbage() {
        for bad in [
            &br#"{"v":2,"ttl":60,"savedAt":1,"data":{"n":1}}"#[..],
            br#"{"v":1,"ttl":60,"savedAt":1,"data":{"n":"x"}}"#,
            br#"{"cookie":{},"n":1}"#,
            b"\x00\x01garbage",
            b"",
        ] {
            assert!(decode::<S>(bad).is_err());
        }
    }
}
