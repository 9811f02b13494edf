//! The envelope every value is stored in, in Redis and in the in-memory fallback.
//!
//! ```text
//! byte 0       magic 0xCA
//! byte 1       format version (1)
//! byte 2       codec id (1 = bincode 2, 2 = JSON)
//! bytes 3..7   type tag: FNV-1a of the Rust type name, little endian
//! bytes 7..15  written at, milliseconds since the Unix epoch, little endian
//! bytes 15..23 expires at, milliseconds since the Unix epoch (0 = never), little endian
//! bytes 23..   payload
//! ```
//!
//! A value that is not an envelope, has another version, codec or type tag, or whose payload
//! does not decode, gives a [`DecodeError`]; the cache treats it as a miss and logs a warning.
//! The type tag makes a value written as one type read as a miss (not as garbage) when it is
//! requested as another: bincode is not self-describing, so without it a `u64` could decode as
//! a short `String`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Hard cap on what bincode may allocate while decoding one value: corrupt length
/// prefixes cannot make it reserve more than this.
const BINCODE_LIMIT: usize = 64 * 1024 * 1024;
const MAGIC: u8 = 0xCA;
const VERSION: u8 = 1;
/// Size of the envelope header in bytes.
pub const HEADER_LEN: usize = 23;

/// How values are serialized inside the envelope.
///
/// ```
/// use cache_sdk::Codec;
/// assert_eq!(Codec::default(), Codec::Bincode);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Codec {
    /// bincode 2 (standard configuration): compact and fast. Types must not need
    /// `deserialize_any` (no `#[serde(flatten)]`, untagged enums or `serde_json::Value`).
    #[default]
    Bincode,
    /// JSON: larger and slower, readable with `redis-cli`, accepts every serde type.
    Json,
}

impl Codec {
    fn id(self) -> u8 {
        match self {
            Codec::Bincode => 1,
            Codec::Json => 2,
        }
    }

    fn from_id(id: u8) -> Option<Self> {
        match id {
            1 => Some(Codec::Bincode),
            2 => Some(Codec::Json),
            _ => None,
        }
    }
}

/// Why stored bytes could not be decoded.
///
/// ```
/// use cache_sdk::codec::{decode, DecodeError};
/// assert_eq!(decode::<u32>(b"hello", 1024).unwrap_err(), DecodeError::NotAnEnvelope);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes were not written by this SDK (or are truncated).
    #[error("not a cache-sdk envelope (foreign or truncated value)")]
    NotAnEnvelope,
    /// Written by another format version.
    #[error("envelope format version {0} is not supported")]
    Version(u8),
    /// Written with a codec this version does not know.
    #[error("unknown codec id {0}")]
    UnknownCodec(u8),
    /// Written as another Rust type.
    #[error("the value was stored as another type")]
    TypeMismatch,
    /// Larger than the configured limit.
    #[error("the value is {0} bytes, over the size limit")]
    TooLarge(usize),
    /// The payload does not decode as the requested type.
    #[error("payload does not decode: {0}")]
    Payload(String),
}

/// The parsed header of an envelope.
///
/// ```
/// use cache_sdk::codec::{encode, Header};
/// use cache_sdk::Codec;
/// let bytes = encode(&5u8, Codec::Json, None).unwrap();
/// let h = Header::parse(&bytes).unwrap();
/// assert_eq!(h.codec, Codec::Json);
/// assert_eq!(h.expires_at_ms, 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The codec of the payload.
    pub codec: Codec,
    /// The type tag.
    pub type_tag: u32,
    /// When the value was written (ms since the Unix epoch).
    pub written_at_ms: u64,
    /// When the value expires (ms since the Unix epoch), 0 for never.
    pub expires_at_ms: u64,
}

impl Header {
    /// Parses the header of `bytes`.
    ///
    /// # Errors
    /// [`DecodeError::NotAnEnvelope`], [`DecodeError::Version`] or
    /// [`DecodeError::UnknownCodec`].
    pub fn parse(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() < HEADER_LEN || bytes[0] != MAGIC {
            return Err(DecodeError::NotAnEnvelope);
        }
        if bytes[1] != VERSION {
            return Err(DecodeError::Version(bytes[1]));
        }
        let codec = Codec::from_id(bytes[2]).ok_or(DecodeError::UnknownCodec(bytes[2]))?;
        let u32_at =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let u64_at = |i: usize| (u64::from(u32_at(i + 4)) << 32) | u64::from(u32_at(i));
        Ok(Header {
            codec,
            type_tag: u32_at(3),
            written_at_ms: u64_at(7),
            expires_at_ms: u64_at(15),
        })
    }

    /// How long until the value expires, `None` for never; zero when already expired.
    #[must_use]
    pub fn remaining(&self) -> Option<Duration> {
        (self.expires_at_ms != 0)
            .then(|| Duration::from_millis(self.expires_at_ms.saturating_sub(now_ms())))
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The type tag of `T`: FNV-1a over its type name.
#[must_use]
pub fn type_tag<T: ?Sized>() -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in std::any::type_name::<T>().bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Encodes `value` into an envelope. `ttl` sets the expiry recorded in the header.
///
/// # Errors
/// A message when the codec cannot serialize the value.
///
/// ```
/// use cache_sdk::codec::{decode, encode};
/// let bytes = encode(&vec![1u16, 2, 3], cache_sdk::Codec::Bincode, None).unwrap();
/// assert_eq!(decode::<Vec<u16>>(&bytes, 1 << 20).unwrap(), vec![1, 2, 3]);
/// ```
pub fn encode<T: Serialize + ?Sized + 'static>(
    value: &T,
    codec: Codec,
    ttl: Option<Duration>,
) -> Result<Vec<u8>, String> {
    let now = now_ms();
    let expires = ttl.map_or(0, |t| {
        now.saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX))
    });
    let mut out = Vec::with_capacity(HEADER_LEN + 32);
    out.extend_from_slice(&[MAGIC, VERSION, codec.id()]);
    out.extend_from_slice(&type_tag::<T>().to_le_bytes());
    out.extend_from_slice(&now.to_le_bytes());
    out.extend_from_slice(&expires.to_le_bytes());
    match codec {
        Codec::Bincode => {
            let payload = bincode::serde::encode_to_vec(value, bincode::config::standard())
                .map_err(|e| e.to_string())?;
            out.extend_from_slice(&payload);
        }
        Codec::Json => serde_json::to_writer(&mut out, value).map_err(|e| e.to_string())?,
    }
    Ok(out)
}

/// Decodes an envelope as `T`, refusing anything over `limit` bytes.
///
/// # Errors
/// A [`DecodeError`] saying why the bytes are not a `T`.
pub fn decode<T: DeserializeOwned + 'static>(bytes: &[u8], limit: usize) -> Result<T, DecodeError> {
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    let header = Header::parse(bytes)?;
    if header.type_tag != type_tag::<T>() {
        return Err(DecodeError::TypeMismatch);
    }
    let payload = &bytes[HEADER_LEN..];
    match header.codec {
        Codec::Bincode => {
            let config = bincode::config::standard().with_limit::<BINCODE_LIMIT>();
            let (value, read) = bincode::serde::decode_from_slice::<T, _>(payload, config)
                .map_err(|e| DecodeError::Payload(e.to_string()))?;
            if read != payload.len() {
                return Err(DecodeError::Payload(format!(
                    "{} trailing bytes",
                    payload.len() - read
                )));
            }
            Ok(value)
        }
        Codec::Json => {
            serde_json::from_slice(payload).map_err(|e| DecodeError::Payload(e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Product {
        id: u64,
        name: String,
        tags: Vec<String>,
        price: Option<i64>,
    }

    #[test]
    fn type_mismatch_is_detected() {
        let bytes = encode(&42u64, Codec::Bincode, None).unwrap();
        assert_eq!(
            decode::<String>(&bytes, 1024),
            Err(DecodeError::TypeMismatch)
        );
    }

    #[test]
    fn truncated_and_oversized_values_fail_cleanly() {
        let p = Product {
            id: 1,
            name: "x".repeat(100),
            tags: vec!["a".into()],
            price: None,
        };
        let bytes = encode(&p, Codec::Bincode, None).unwrap();
        for cut in 0..bytes.len() {
            assert!(decode::<Product>(&bytes[..cut], 1 << 20).is_err());
        }
        assert_eq!(
            decode::<Product>(&bytes, 10),
            Err(DecodeError::TooLarge(bytes.len()))
        );
    }

    #[test]
    fn huge_length_prefix_does_not_allocate() {
        let mut bytes = encode(&Vec::<u64>::new(), Codec::Bincode, None).unwrap();
        bytes.truncate(HEADER_LEN);
        bytes.extend_from_slice(&[0xFD, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F]);
        assert!(decode::<Vec<u64>>(&bytes, 1 << 20).is_err());
    }

    #[test]
    fn header_records_expiry() {
        let bytes = encode(&1u8, Codec::Json, Some(Duration::from_secs(60))).unwrap();
        let h = Header::parse(&bytes).unwrap();
        let rem = h.remaining().unwrap();
        assert!(rem <= Duration::from_secs(60) && rem > Duration::from_secs(58));
    }

    proptest! {
        #[test]
        fn round_trip(id: u64, name in "\\PC{0,40}", tags in proptest::collection::vec("\\PC{0,8}", 0..5), price: Option<i64>, json: bool) {
            let p = Product { id, name, tags, price };
            let codec = if json { Codec::Json } else { Codec::Bincode };
            let bytes = encode(&p, codec, None).unwrap();
            prop_assert_eq!(decode::<Product>(&bytes, 1 << 20).unwrap(), p);
        }

        #[test]
        fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..200), fix_header: bool) {
            if fix_header && bytes.len() >= HEADER_LEN {
                bytes[0] = MAGIC;
                bytes[1] = VERSION;
                bytes[2] = 1;
                bytes[3..7].copy_from_slice(&type_tag::<Product>().to_le_bytes());
            }
            let _ = decode::<Product>(&bytes, 1 << 20);
            let _ = decode::<String>(&bytes, 1 << 20);
        }
    }
}
