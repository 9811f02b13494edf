//! The envelope every value is stored in, in Redis and in the in-memory fallback.
//!
//! ```text
//! byte 0       magic 0xCA
//! byte 1       format version (1)
//! byte 2       codec id (1 = bincode 2, 2 = JSON)
//! bytes 3..7   type tag, little endian: 0 = untagged, else FNV-1a of "name@version"
//! bytes 7..15  written at, milliseconds since the Unix epoch, little endian
//! bytes 15..23 expires at, milliseconds since the Unix epoch (0 = never), little endian
//! bytes 23..   payload
//! ```
//!
//! A value written with [tags](crate::Cache::invalidate_tag) has format version 2: the
//! same 23-byte header, then the tags (a count, one byte, and each tag as a 2-byte little
//! endian length and its UTF-8 bytes), then the payload. Untagged values stay version 1,
//! so a reader that predates tags treats a tagged value as a miss (it could not check
//! the tags), never as a value.
//!
//! A value that is not an envelope, has another version or codec, carries a type tag the
//! reader does not accept, or whose payload does not decode, gives a [`DecodeError`]; the
//! cache treats it as a miss (counted in [`Stats::decode_errors`](crate::Stats::decode_errors))
//! and logs a warning.
//!
//! # Type tags: naming and versioning a cached type
//!
//! The tag says which type, in which shape, a value was written as. It depends only on what
//! the application states, never on the compiler: neither a toolchain upgrade nor moving a
//! type to another module changes it, so neither turns the cache into misses.
//!
//! - **Untagged (the default).** Values are written with tag 0, and a reader of an unnamed
//!   type accepts any tag: the strict decode alone decides (bincode refuses a payload that
//!   is too short or leaves bytes over; JSON refuses malformed text and trailing characters,
//!   and a missing field without `#[serde(default)]`).
//! - **Named.** [`CacheBuilder::value_type`](crate::CacheBuilder::value_type)
//!   `::<T>("product", 2)` makes that cache write `T` with the tag [`TypeTag::named`]
//!   (FNV-1a of `"product@2"`) and read back only values with that tag. A value with another
//!   non-zero tag is a miss. An untagged value counts as version 1: a reader at version 1
//!   accepts it (so naming a type at version 1 keeps what is already cached), a reader at
//!   version 2 or later does not.
//!
//! **Changing a cached type's shape.** Values outlive deploys, and during a rolling deploy
//! old and new code read each other's values. A change every reader decodes correctly
//! needs nothing: with JSON, adding a field with `#[serde(default)]`, removing a field, or
//! renaming the Rust type or its module. With bincode (the default codec), which is not
//! self-describing, only renaming the type or its module is safe: adding, removing,
//! reordering or retyping a field changes the bytes. For any other change, name the type
//! and bump its version: the new code then treats every older value as a miss and reloads
//! it, instead of decoding it as something else. (While both versions run, each side
//! misses on the other's values and overwrites them: a short churn, never a wrong value.)
//! Name a type at version 1 only while its shape is the one already cached; if the shape
//! changes at the same moment, start at version 2.
//!
//! Name the types whose keys could hold another type, too: with bincode, an untagged
//! value may decode as another type whose encoding happens to fit (a `0u64` reads as an
//! empty `String`); two named types never read each other's values.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::any::TypeId;
use std::collections::HashMap;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::ConfigError;

/// Hard cap on what bincode may allocate while decoding one value: corrupt length
/// prefixes cannot make it reserve more than this.
const BINCODE_LIMIT: usize = 64 * 1024 * 1024;
const MAGIC: u8 = 0xCA;
const VERSION: u8 = 1;
/// The format version of a value that carries tags.
const VERSION_TAGGED: u8 = 2;
/// The most tags one value carries.
pub(crate) const MAX_TAGS: usize = 64;
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
    /// Needs the `json` feature (without it, JSON values written by another build read as
    /// [`DecodeError::UnknownCodec`], that is misses).
    #[cfg(feature = "json")]
    #[cfg_attr(docsrs, doc(cfg(feature = "json")))]
    Json,
}

impl Codec {
    fn id(self) -> u8 {
        match self {
            Codec::Bincode => 1,
            #[cfg(feature = "json")]
            Codec::Json => 2,
        }
    }

    fn from_id(id: u8) -> Option<Self> {
        match id {
            1 => Some(Codec::Bincode),
            #[cfg(feature = "json")]
            2 => Some(Codec::Json),
            _ => None,
        }
    }
}

/// Why stored bytes could not be decoded.
///
/// ```
/// use cache_sdk::codec::{decode, DecodeError, TypeTag};
/// assert_eq!(
///     decode::<u32>(b"hello", TypeTag::UNTAGGED, 1024).unwrap_err(),
///     DecodeError::NotAnEnvelope
/// );
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
    /// Written with a type tag the reader does not accept: another named type, or another
    /// version of this one (see [`TypeTag`]).
    #[error("the value was stored as another type or version")]
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
/// use cache_sdk::codec::TypeTag;
/// let bytes = encode(&5u8, Codec::Bincode, TypeTag::UNTAGGED, None).unwrap();
/// let h = Header::parse(&bytes).unwrap();
/// assert_eq!(h.codec, Codec::Bincode);
/// assert_eq!(h.type_tag, 0);
/// assert_eq!(h.expires_at_ms, 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The codec of the payload.
    pub codec: Codec,
    /// The type tag: 0 for an untagged value, else [`TypeTag::value`] of the type's name.
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
        if bytes[1] != VERSION && bytes[1] != VERSION_TAGGED {
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

/// The written-at time of the newest tag or clear stamp this process wrote (see
/// [`written_at`]).
static LAST_STAMP_MS: AtomicU64 = AtomicU64::new(0);

/// The written-at time of a value encoded at `now`: `now`, but always after the newest
/// tag or clear stamp this process wrote. A stamp makes every value written at or before
/// its time a miss, so a value written in the same millisecond as an invalidation that
/// came before it in this process (an evict-then-put on update) would otherwise be
/// dropped with the values it replaces. Runs ahead of the clock by a millisecond or so
/// only while stamps and writes share a millisecond.
fn written_at(now: u64) -> u64 {
    now.max(LAST_STAMP_MS.load(Ordering::SeqCst).saturating_add(1))
}

/// Records a tag or clear stamp this process wrote (its written-at time): values encoded
/// from now on are written after it.
pub(crate) fn stamped(at_ms: u64) {
    LAST_STAMP_MS.fetch_max(at_ms, Ordering::SeqCst);
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Longest accepted type name, in bytes.
const MAX_TYPE_NAME: usize = 128;

/// What a cache writes in the type tag of a value, and which stored tags it accepts when
/// reading one (see [the module docs](self#type-tags-naming-and-versioning-a-cached-type)).
///
/// ```
/// use cache_sdk::codec::TypeTag;
/// let v1 = TypeTag::named("product", 1).unwrap();
/// let v2 = TypeTag::named("product", 2).unwrap();
/// assert!(v2.accepts(v2.value()));
/// assert!(!v2.accepts(v1.value()));
/// // An untagged value counts as version 1.
/// assert!(v1.accepts(0) && !v2.accepts(0));
/// // An untagged reader accepts anything: the decode decides.
/// assert_eq!(TypeTag::UNTAGGED.value(), 0);
/// assert!(TypeTag::UNTAGGED.accepts(v2.value()));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TypeTag {
    /// Written in the envelope; 0 when untagged.
    value: u32,
    /// Whether an untagged stored value is accepted as this type.
    accepts_untagged: bool,
}

impl TypeTag {
    /// No name: writes tag 0 and accepts any stored tag.
    pub const UNTAGGED: TypeTag = TypeTag {
        value: 0,
        accepts_untagged: true,
    };

    /// The tag of a named type at `version`: FNV-1a of `"{name}@{version}"` (0 is reserved
    /// for untagged values, so a hash of 0 is written as 1).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when `name` is empty, longer than 128 bytes, or holds `@`,
    /// whitespace or a control character, or when `version` is 0 (versions start at 1).
    ///
    /// ```
    /// use cache_sdk::codec::TypeTag;
    /// assert_ne!(TypeTag::named("product", 1)?, TypeTag::named("product", 2)?);
    /// assert!(TypeTag::named("product", 0).is_err());
    /// assert!(TypeTag::named("", 1).is_err());
    /// # Ok::<(), cache_sdk::ConfigError>(())
    /// ```
    pub fn named(name: &str, version: u32) -> Result<TypeTag, ConfigError> {
        let invalid = |reason: &str| ConfigError::Invalid {
            name: "value_type",
            value: format!("{name}@{version}"),
            reason: reason.to_owned(),
        };
        if name.is_empty() || name.len() > MAX_TYPE_NAME {
            return Err(invalid("a type name has 1 to 128 bytes"));
        }
        if name
            .chars()
            .any(|c| c == '@' || c.is_whitespace() || c.is_control())
        {
            return Err(invalid(
                "a type name holds no `@`, whitespace or control character",
            ));
        }
        if version == 0 {
            return Err(invalid("versions start at 1"));
        }
        let hash = fnv1a(format!("{name}@{version}").as_bytes());
        Ok(TypeTag {
            value: hash.max(1),
            accepts_untagged: version == 1,
        })
    }

    /// The tag written in the envelope (0 when untagged).
    ///
    /// ```
    /// assert_eq!(cache_sdk::codec::TypeTag::UNTAGGED.value(), 0);
    /// ```
    #[must_use]
    pub const fn value(self) -> u32 {
        self.value
    }

    /// Whether a value stored with tag `stored` may be decoded as this type: any tag when
    /// untagged; else the same tag, or 0 at version 1.
    ///
    /// ```
    /// use cache_sdk::codec::TypeTag;
    /// let tag = TypeTag::named("order", 3)?;
    /// assert!(tag.accepts(tag.value()) && !tag.accepts(0));
    /// # Ok::<(), cache_sdk::ConfigError>(())
    /// ```
    #[must_use]
    pub const fn accepts(self, stored: u32) -> bool {
        self.value == 0 || stored == self.value || (stored == 0 && self.accepts_untagged)
    }
}

impl Default for TypeTag {
    /// [`TypeTag::UNTAGGED`].
    fn default() -> Self {
        TypeTag::UNTAGGED
    }
}

/// 32-bit FNV-1a.
fn fnv1a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The types a cache names, by [`TypeId`]: consulted only when a value is encoded for L2 or
/// decoded from it (never on an L1 hit). Unnamed types are untagged.
#[derive(Debug, Clone, Default)]
pub(crate) struct TypeTags {
    by_type: HashMap<TypeId, (&'static str, TypeTag)>,
}

impl TypeTags {
    /// Names `T` with `tag`.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when `T` is named already, or another type has the same tag
    /// (the same name and version).
    pub(crate) fn register<T: 'static>(&mut self, tag: TypeTag) -> Result<(), ConfigError> {
        let rust_name = std::any::type_name::<T>();
        let clash = if self.by_type.contains_key(&TypeId::of::<T>()) {
            Some(format!("{rust_name} is named twice"))
        } else {
            self.by_type
                .values()
                .find(|(_, t)| t.value == tag.value)
                .map(|(other, _)| format!("{rust_name} and {other} have the same type tag"))
        };
        if let Some(reason) = clash {
            return Err(ConfigError::Invalid {
                name: "value_type",
                value: rust_name.to_owned(),
                reason: format!("{reason}: give every cached type its own name"),
            });
        }
        self.by_type.insert(TypeId::of::<T>(), (rust_name, tag));
        Ok(())
    }

    /// The tag of `T`: its name's, or [`TypeTag::UNTAGGED`].
    #[inline]
    pub(crate) fn of<T: 'static>(&self) -> TypeTag {
        if self.by_type.is_empty() {
            return TypeTag::UNTAGGED;
        }
        self.by_type
            .get(&TypeId::of::<T>())
            .map_or(TypeTag::UNTAGGED, |(_, tag)| *tag)
    }
}

/// Encodes `value` into an envelope with type tag `tag`. `ttl` sets the expiry recorded in
/// the header.
///
/// # Errors
/// A message when the codec cannot serialize the value.
///
/// ```
/// use cache_sdk::codec::{decode, encode, TypeTag};
/// let bytes = encode(&vec![1u16, 2, 3], cache_sdk::Codec::Bincode, TypeTag::UNTAGGED, None).unwrap();
/// assert_eq!(decode::<Vec<u16>>(&bytes, TypeTag::UNTAGGED, 1 << 20).unwrap(), vec![1, 2, 3]);
/// ```
pub fn encode<T: Serialize + ?Sized>(
    value: &T,
    codec: Codec,
    tag: TypeTag,
    ttl: Option<Duration>,
) -> Result<Vec<u8>, String> {
    encode_tagged(value, codec, tag, ttl, &[])
}

/// As [`encode`], for a value that carries `tags` (format version 2 when there are any).
///
/// # Errors
/// A message when the codec cannot serialize the value, or when there are more than 64
/// tags or a tag is longer than 65,535 bytes.
///
/// ```
/// use cache_sdk::codec::{decode, encode_tagged, tags_of, TypeTag};
/// let tags = ["catalog".to_string()];
/// let bytes = encode_tagged(&7u8, cache_sdk::Codec::Bincode, TypeTag::UNTAGGED, None, &tags).unwrap();
/// assert_eq!(tags_of(&bytes).unwrap(), vec!["catalog"]);
/// assert_eq!(decode::<u8>(&bytes, TypeTag::UNTAGGED, 1024).unwrap(), 7);
/// ```
pub fn encode_tagged<T: Serialize + ?Sized>(
    value: &T,
    codec: Codec,
    tag: TypeTag,
    ttl: Option<Duration>,
    tags: &[String],
) -> Result<Vec<u8>, String> {
    if tags.len() > MAX_TAGS {
        return Err(format!("{} tags, at most {MAX_TAGS} allowed", tags.len()));
    }
    let now = now_ms();
    let expires = ttl.map_or(0, |t| {
        now.saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX))
    });
    let mut out = Vec::with_capacity(HEADER_LEN + 32);
    let version = if tags.is_empty() {
        VERSION
    } else {
        VERSION_TAGGED
    };
    out.extend_from_slice(&[MAGIC, version, codec.id()]);
    out.extend_from_slice(&tag.value.to_le_bytes());
    out.extend_from_slice(&written_at(now).to_le_bytes());
    out.extend_from_slice(&expires.to_le_bytes());
    if !tags.is_empty() {
        // At most MAX_TAGS (64): fits a byte.
        out.push(tags.len() as u8);
        for t in tags {
            let len = u16::try_from(t.len()).map_err(|_| "a tag is over 65,535 bytes")?;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(t.as_bytes());
        }
    }
    match codec {
        Codec::Bincode => {
            let payload = bincode::serde::encode_to_vec(value, bincode::config::standard())
                .map_err(|e| e.to_string())?;
            out.extend_from_slice(&payload);
        }
        #[cfg(feature = "json")]
        Codec::Json => serde_json::to_writer(&mut out, value).map_err(|e| e.to_string())?,
    }
    Ok(out)
}

/// Decodes an envelope as `T`, when `tag` accepts its type tag, refusing anything over
/// `limit` bytes. The payload must decode exactly: bytes left over are an error.
///
/// # Errors
/// A [`DecodeError`] saying why the bytes are not a `T`.
///
/// ```
/// use cache_sdk::codec::{decode, encode, DecodeError, TypeTag};
/// use cache_sdk::Codec;
/// let v1 = TypeTag::named("price", 1)?;
/// let v2 = TypeTag::named("price", 2)?;
/// let bytes = encode(&1999u64, Codec::Bincode, v1, None).unwrap();
/// assert_eq!(decode::<u64>(&bytes, v1, 1024), Ok(1999));
/// assert_eq!(decode::<u64>(&bytes, v2, 1024), Err(DecodeError::TypeMismatch));
/// # Ok::<(), cache_sdk::ConfigError>(())
/// ```
pub fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    tag: TypeTag,
    limit: usize,
) -> Result<T, DecodeError> {
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    let header = Header::parse(bytes)?;
    if !tag.accepts(header.type_tag) {
        return Err(DecodeError::TypeMismatch);
    }
    let payload = &bytes[payload_start(bytes)?..];
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
        #[cfg(feature = "json")]
        Codec::Json => {
            serde_json::from_slice(payload).map_err(|e| DecodeError::Payload(e.to_string()))
        }
    }
}

/// Where the payload of an envelope starts: after the header, and after the tags of a
/// version 2 envelope. `bytes` must hold a valid header.
fn payload_start(bytes: &[u8]) -> Result<usize, DecodeError> {
    if bytes[1] != VERSION_TAGGED {
        return Ok(HEADER_LEN);
    }
    let mut at = HEADER_LEN;
    let count = *bytes.get(at).ok_or(DecodeError::NotAnEnvelope)?;
    at += 1;
    for _ in 0..count {
        let len = bytes
            .get(at..at + 2)
            .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
            .ok_or(DecodeError::NotAnEnvelope)?;
        at += 2 + len;
        if at > bytes.len() {
            return Err(DecodeError::NotAnEnvelope);
        }
    }
    Ok(at)
}

/// The tags an envelope carries (none for a version 1 envelope).
///
/// # Errors
/// As [`Header::parse`], or [`DecodeError::NotAnEnvelope`] when the tags are truncated or
/// not UTF-8.
///
/// ```
/// use cache_sdk::codec::{encode, tags_of, TypeTag};
/// let bytes = encode(&7u8, cache_sdk::Codec::Bincode, TypeTag::UNTAGGED, None).unwrap();
/// assert!(tags_of(&bytes).unwrap().is_empty());
/// ```
pub fn tags_of(bytes: &[u8]) -> Result<Vec<&str>, DecodeError> {
    Header::parse(bytes)?;
    let end = payload_start(bytes)?;
    let mut tags = Vec::new();
    let mut at = HEADER_LEN + 1;
    while at < end && bytes[1] == VERSION_TAGGED {
        let len = usize::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]));
        let tag = std::str::from_utf8(&bytes[at + 2..at + 2 + len])
            .map_err(|_| DecodeError::NotAnEnvelope)?;
        tags.push(tag);
        at += 2 + len;
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every codec this build has.
    const CODECS: &[Codec] = &[
        Codec::Bincode,
        #[cfg(feature = "json")]
        Codec::Json,
    ];
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Product {
        id: u64,
        name: String,
        tags: Vec<String>,
        price: Option<i64>,
    }

    const U: TypeTag = TypeTag::UNTAGGED;

    fn named(name: &str, version: u32) -> TypeTag {
        TypeTag::named(name, version).unwrap()
    }

    #[test]
    fn tagged_values_keep_their_tags_and_times_in_place() {
        let tags = vec!["product:7".to_string(), "catalog".to_string()];
        for &codec in CODECS {
            let bytes =
                encode_tagged(&product(), codec, U, Some(Duration::from_secs(5)), &tags).unwrap();
            assert_eq!(bytes[1], VERSION_TAGGED);
            assert_eq!(tags_of(&bytes).unwrap(), vec!["product:7", "catalog"]);
            assert_eq!(decode::<Product>(&bytes, U, 1 << 20), Ok(product()));
            let h = Header::parse(&bytes).unwrap();
            assert!(h.written_at_ms > 0 && h.expires_at_ms > h.written_at_ms);
            // Truncated inside the tags: not an envelope, never a panic.
            for cut in HEADER_LEN..HEADER_LEN + 12 {
                assert!(decode::<Product>(&bytes[..cut], U, 1 << 20).is_err());
                let _ = tags_of(&bytes[..cut]);
            }
        }
        let untagged = encode(&1u8, Codec::Bincode, U, None).unwrap();
        assert_eq!(untagged[1], VERSION);
        let many: Vec<String> = (0..=MAX_TAGS).map(|i| i.to_string()).collect();
        assert!(encode_tagged(&1u8, Codec::Bincode, U, None, &many).is_err());
    }

    #[test]
    fn named_types_do_not_read_each_other() {
        let bytes = encode(&42u64, Codec::Bincode, named("count", 1), None).unwrap();
        assert_eq!(
            decode::<String>(&bytes, named("label", 1), 1024),
            Err(DecodeError::TypeMismatch)
        );
        assert_eq!(decode::<u64>(&bytes, named("count", 1), 1024), Ok(42));
    }

    #[test]
    fn a_version_bump_rejects_older_values() {
        let p = product();
        for &codec in CODECS {
            let v1 = encode(&p, codec, named("product", 1), None).unwrap();
            let untagged = encode(&p, codec, U, None).unwrap();
            let v2 = named("product", 2);
            assert_eq!(
                decode::<Product>(&v1, v2, 1 << 20),
                Err(DecodeError::TypeMismatch)
            );
            assert_eq!(
                decode::<Product>(&untagged, v2, 1 << 20),
                Err(DecodeError::TypeMismatch)
            );
            // Untagged values count as version 1; an untagged reader accepts every tag.
            assert_eq!(
                decode::<Product>(&untagged, named("product", 1), 1 << 20).as_ref(),
                Ok(&p)
            );
            assert_eq!(decode::<Product>(&v1, U, 1 << 20).as_ref(), Ok(&p));
        }
    }

    #[test]
    fn the_tag_depends_only_on_name_and_version() {
        let tag = named("product", 2);
        assert_eq!(tag.value(), fnv1a(b"product@2"));
        // Pinned: a stored value's tag must never change between releases.
        assert_eq!(named("product", 1).value(), 0x35a8_9a6f);
        assert_ne!(tag, named("product", 3));
        assert_ne!(tag, named("Product", 2));
        let bytes = encode(&1u8, Codec::Bincode, tag, None).unwrap();
        assert_eq!(Header::parse(&bytes).unwrap().type_tag, tag.value());
        assert_eq!(
            Header::parse(&encode(&1u8, Codec::Bincode, U, None).unwrap())
                .unwrap()
                .type_tag,
            0
        );
    }

    #[test]
    fn bad_names_and_versions_are_refused() {
        for (name, version) in [("", 1), ("a@b", 1), ("a b", 1), ("a\nb", 1), ("x", 0)] {
            assert!(TypeTag::named(name, version).is_err(), "{name:?} {version}");
        }
        assert!(TypeTag::named(&"n".repeat(129), 1).is_err());
        assert!(TypeTag::named("billing.invoice-line_v", u32::MAX).is_ok());
    }

    #[test]
    fn untagged_decoding_is_strict() {
        // Bytes left over, or too few, are errors, so most type confusions still miss.
        let bytes = encode(&42u64, Codec::Bincode, U, None).unwrap();
        assert!(matches!(
            decode::<String>(&bytes, U, 1024),
            Err(DecodeError::Payload(_))
        ));
        let bytes = encode(&(1u8, 2u8), Codec::Bincode, U, None).unwrap();
        assert!(matches!(
            decode::<u8>(&bytes, U, 1024),
            Err(DecodeError::Payload(_))
        ));
        #[cfg(feature = "json")]
        {
            let mut bytes = encode(&7u32, Codec::Json, U, None).unwrap();
            bytes.extend_from_slice(b" 8");
            assert!(matches!(
                decode::<u32>(&bytes, U, 1024),
                Err(DecodeError::Payload(_))
            ));
            let bytes = encode(&"text", Codec::Json, U, None).unwrap();
            assert!(decode::<Product>(&bytes, U, 1024).is_err());
        }
    }

    #[test]
    fn json_values_need_the_json_feature_to_be_read() {
        // A JSON envelope (codec id 2), as a build with the `json` feature writes it.
        let mut bytes = encode(&7u32, Codec::Bincode, U, None).unwrap();
        bytes.truncate(HEADER_LEN);
        bytes[2] = 2;
        bytes.push(b'7');
        let read = decode::<u32>(&bytes, U, 1024);
        #[cfg(feature = "json")]
        assert_eq!(read, Ok(7));
        #[cfg(not(feature = "json"))]
        assert_eq!(read, Err(DecodeError::UnknownCodec(2)));
    }

    #[test]
    fn the_registry_names_types_once() {
        let mut tags = TypeTags::default();
        assert_eq!(TypeTag::default(), U);
        assert_eq!(tags.of::<Product>(), U);
        tags.register::<Product>(named("product", 2)).unwrap();
        assert_eq!(tags.of::<Product>(), named("product", 2));
        assert_eq!(tags.of::<u64>(), U);
        assert!(tags.register::<Product>(named("product", 3)).is_err());
        assert!(tags.register::<u64>(named("product", 2)).is_err());
        tags.register::<u64>(named("count", 1)).unwrap();
        assert_eq!(tags.of::<u64>(), named("count", 1));
    }

    fn product() -> Product {
        Product {
            id: 1,
            name: "x".repeat(100),
            tags: vec!["a".into()],
            price: None,
        }
    }

    #[test]
    fn truncated_and_oversized_values_fail_cleanly() {
        let p = product();
        let bytes = encode(&p, Codec::Bincode, U, None).unwrap();
        for cut in 0..bytes.len() {
            assert!(decode::<Product>(&bytes[..cut], U, 1 << 20).is_err());
        }
        assert_eq!(
            decode::<Product>(&bytes, U, 10),
            Err(DecodeError::TooLarge(bytes.len()))
        );
    }

    #[test]
    fn huge_length_prefix_does_not_allocate() {
        let mut bytes = encode(&Vec::<u64>::new(), Codec::Bincode, U, None).unwrap();
        bytes.truncate(HEADER_LEN);
        bytes.extend_from_slice(&[0xFD, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F]);
        assert!(decode::<Vec<u64>>(&bytes, U, 1 << 20).is_err());
    }

    #[test]
    fn header_records_expiry() {
        let bytes = encode(&1u8, Codec::Bincode, U, Some(Duration::from_secs(60))).unwrap();
        let h = Header::parse(&bytes).unwrap();
        let rem = h.remaining().unwrap();
        assert!(rem <= Duration::from_secs(60) && rem > Duration::from_secs(58));
    }

    proptest! {
        #[test]
        fn round_trip(id: u64, name in "\\PC{0,40}", tags in proptest::collection::vec("\\PC{0,8}", 0..5), price: Option<i64>, json: bool) {
            let p = Product { id, name, tags, price };
            let codec = CODECS[usize::from(json) % CODECS.len()];
            let tag = if id % 2 == 0 { U } else { named("product", 1) };
            let bytes = encode(&p, codec, tag, None).unwrap();
            prop_assert_eq!(decode::<Product>(&bytes, tag, 1 << 20).unwrap(), p);
        }

        #[test]
        fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..200), fix_header: bool) {
            if fix_header && bytes.len() >= HEADER_LEN {
                bytes[0] = MAGIC;
                bytes[1] = VERSION;
                bytes[2] = 1;
                bytes[3..7].copy_from_slice(&named("product", 1).value().to_le_bytes());
            }
            let _ = decode::<Product>(&bytes, U, 1 << 20);
            let _ = decode::<String>(&bytes, U, 1 << 20);
            let _ = decode::<Product>(&bytes, named("product", 1), 1 << 20);
        }
    }
}
