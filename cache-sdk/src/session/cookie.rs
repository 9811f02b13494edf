//! The session cookie: signing and verifying its value, reading it from a `Cookie` header,
//! and writing `Set-Cookie`.
//!
//! The value is the one express-session (cookie-signature 1.0) writes, in both formats:
//! `s:{id}.{sig}`, where `sig` is HMAC-SHA256 of the id under the secret, in standard base64
//! (`+` and `/` kept) without `=` padding, and the whole value URL-encoded the way
//! JavaScript's `encodeURIComponent` does (`s%3A…`, `%2B`, `%2F`).
//!
//! Owns the cookie's value, attributes and secrets. May import: the session id, the date
//! helpers, the crypto crates. Must not: touch a store, a cache or a record format.

use std::fmt;

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use rand::TryRngCore as _;
use sha2::Sha256;

use super::date::http_date;
use super::id::SessionId;
use crate::error::ConfigError;

type HmacSha256 = Hmac<Sha256>;

/// Length of an HMAC-SHA256 signature in unpadded base64.
const SIG_LEN: usize = 43;

/// The longest cookie value considered; longer ones are ignored unread.
pub const MAX_COOKIE_VALUE_LEN: usize = 4096;

/// What `encodeURIComponent` leaves alone: `A-Z a-z 0-9 - _ . ! ~ * ' ( )`.
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// The secrets that sign session cookies: the first signs, every one verifies (so a secret
/// can be rotated without logging anyone out: put the new one first and keep the old one
/// until the cookies it signed have expired).
///
/// `Debug` shows only how many secrets there are.
///
/// ```
/// use cache_sdk::session::SessionSecrets;
/// let secrets = SessionSecrets::new(["new-secret", "old-secret"]).unwrap();
/// assert_eq!(format!("{secrets:?}"), "SessionSecrets { count: 2, .. }");
/// assert!(SessionSecrets::new(Vec::<String>::new()).is_err());
/// ```
#[derive(Clone)]
pub struct SessionSecrets {
    /// One keyed MAC per secret, current first (cloned for each use).
    keys: Vec<HmacSha256>,
}

impl fmt::Debug for SessionSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionSecrets")
            .field("count", &self.keys.len())
            .finish_non_exhaustive()
    }
}

/// A cookie value whose signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The session id it carries.
    pub id: SessionId,
    /// Signed with a previous secret: the cookie should be signed again with the current one.
    pub rotated: bool,
}

impl SessionSecrets {
    /// The secrets, current first; each is used as its UTF-8 bytes (as Node does).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming `SESSION_SECRET` when there is no secret or one is
    /// empty.
    ///
    /// ```
    /// let s = cache_sdk::session::SessionSecrets::new(["keyboard cat"]).unwrap();
    /// # let _ = s;
    /// ```
    pub fn new<S: AsRef<str>>(secrets: impl IntoIterator<Item = S>) -> Result<Self, ConfigError> {
        let invalid = |reason: &str| ConfigError::Invalid {
            name: "SESSION_SECRET",
            value: "<redacted>".into(),
            reason: reason.into(),
        };
        let mut keys = Vec::new();
        for secret in secrets {
            let secret = secret.as_ref().as_bytes();
            if secret.is_empty() {
                return Err(invalid("a session secret must not be empty"));
            }
            keys.push(
                HmacSha256::new_from_slice(secret)
                    .map_err(|_| invalid("not usable as an HMAC key"))?,
            );
        }
        if keys.is_empty() {
            return Err(invalid("at least one session secret is needed"));
        }
        Ok(Self { keys })
    }

    /// One random 256-bit secret, for development: cookies it signs stop being valid when
    /// the process restarts.
    ///
    /// ```
    /// let s = cache_sdk::session::SessionSecrets::random();
    /// let id = cache_sdk::session::SessionId::generate();
    /// assert!(s.verify(&s.sign(&id)).is_some());
    /// ```
    #[must_use]
    pub fn random() -> Self {
        let mut bytes = [0u8; 32];
        if rand::rngs::OsRng.try_fill_bytes(&mut bytes).is_err() {
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
        }
        let secret = STANDARD_NO_PAD.encode(bytes);
        Self::new([secret]).unwrap_or_else(|_| Self { keys: Vec::new() })
    }

    /// How many secrets there are (the current one and the previous ones).
    ///
    /// ```
    /// assert_eq!(cache_sdk::session::SessionSecrets::new(["a", "b"]).unwrap().len(), 2);
    /// ```
    #[must_use]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there is no secret (never for secrets built by [`SessionSecrets::new`]).
    ///
    /// ```
    /// assert!(!cache_sdk::session::SessionSecrets::random().is_empty());
    /// ```
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn mac(key: &HmacSha256, id: &str) -> HmacSha256 {
        let mut mac = key.clone();
        mac.update(id.as_bytes());
        mac
    }

    /// The signature of an id under the current secret (unpadded standard base64).
    ///
    /// ```
    /// use cache_sdk::session::{SessionId, SessionSecrets};
    /// let s = SessionSecrets::new(["keyboard cat"]).unwrap();
    /// let id = SessionId::parse("OLNk22Xhb51PmM3cpkVC_jWsveshh3KM").unwrap();
    /// assert_eq!(s.signature(&id), "atD7bENXG/PIsMcTFadNRQBUnndXQA1MRa+8UeDVpBg");
    /// ```
    #[must_use]
    pub fn signature(&self, id: &SessionId) -> String {
        match self.keys.first() {
            Some(key) => {
                STANDARD_NO_PAD.encode(Self::mac(key, id.as_str()).finalize().into_bytes())
            }
            None => String::new(),
        }
    }

    /// The cookie value (before URL encoding): `s:{id}.{signature}`.
    ///
    /// ```
    /// use cache_sdk::session::{SessionId, SessionSecrets};
    /// let s = SessionSecrets::new(["demo-secret"]).unwrap();
    /// let id = SessionId::parse("WOef9FivrmsL5Jm4ZfKIhGODeF-zLMFp").unwrap();
    /// assert_eq!(
    ///     s.sign(&id),
    ///     "s:WOef9FivrmsL5Jm4ZfKIhGODeF-zLMFp.ZF5YvS5w7Qw9sN+fkGxpt2ZVp52MdBEnapIuVT7/6Rg"
    /// );
    /// ```
    #[must_use]
    pub fn sign(&self, id: &SessionId) -> String {
        format!("s:{}.{}", id.as_str(), self.signature(id))
    }

    /// Checks a cookie value (already URL-decoded) against every secret, in constant time
    /// per secret. `None` for anything that is not `s:{id}.{signature}` with a valid id and
    /// a signature by one of the secrets; padded or base64url signatures are refused, as
    /// express-session refuses them.
    ///
    /// ```
    /// use cache_sdk::session::{SessionId, SessionSecrets};
    /// let old = SessionSecrets::new(["old-secret"]).unwrap();
    /// let both = SessionSecrets::new(["new-secret", "old-secret"]).unwrap();
    /// let id = SessionId::generate();
    /// let v = both.verify(&old.sign(&id)).unwrap();
    /// assert!(v.rotated && v.id == id);
    /// assert!(both.verify("s:forged.AAAA").is_none());
    /// ```
    #[must_use]
    pub fn verify(&self, value: &str) -> Option<Verified> {
        if value.len() > MAX_COOKIE_VALUE_LEN {
            return None;
        }
        let rest = value.strip_prefix("s:")?;
        let (id, sig) = rest.rsplit_once('.')?;
        let id = SessionId::parse(id)?;
        if sig.len() != SIG_LEN {
            return None;
        }
        // Strict decoding: no padding, canonical trailing bits, standard alphabet only;
        // into the stack (43 characters are 32 bytes; the buffer has room for the
        // decoder's estimate).
        let mut buf = [0u8; SIG_LEN / 4 * 3 + 3];
        let n = STANDARD_NO_PAD.decode_slice(sig, &mut buf).ok()?;
        let sig = buf.get(..n)?;
        let i = self
            .keys
            .iter()
            .position(|key| Self::mac(key, id.as_str()).verify_slice(sig).is_ok())?;
        Some(Verified { id, rotated: i > 0 })
    }
}

/// `encodeURIComponent` of a cookie value.
///
/// ```
/// assert_eq!(
///     cache_sdk::session::cookie::encode_value("s:abc.d+e/f"),
///     "s%3Aabc.d%2Be%2Ff"
/// );
/// ```
#[must_use]
pub fn encode_value(value: &str) -> String {
    utf8_percent_encode(value, URI_COMPONENT).to_string()
}

/// `decodeURIComponent` as express-session applies it: only when the value holds a `%`,
/// and the raw value is kept when decoding fails.
fn decode_value(raw: &str) -> String {
    if !raw.contains('%') {
        return raw.to_owned();
    }
    let b = raw.as_bytes();
    let well_formed = b.iter().enumerate().all(|(i, &c)| {
        c != b'%'
            || (i + 2 < b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit())
    });
    if !well_formed {
        return raw.to_owned();
    }
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_or_else(|_| raw.to_owned(), |s| s.into_owned())
}

/// The value of the first cookie called `name` in one or more `Cookie` header values,
/// URL-decoded; values over [`MAX_COOKIE_VALUE_LEN`] are skipped.
///
/// ```
/// use cache_sdk::session::cookie::find_cookie;
/// let headers = ["a=1; connect.sid=s%3Aabc.x; connect.sid=second"];
/// assert_eq!(find_cookie(headers, "connect.sid").as_deref(), Some("s:abc.x"));
/// assert_eq!(find_cookie(["a=1"], "connect.sid"), None);
/// ```
pub fn find_cookie<'a>(headers: impl IntoIterator<Item = &'a str>, name: &str) -> Option<String> {
    for header in headers {
        for pair in header.split(';') {
            let Some((k, v)) = pair.split_once('=') else {
                continue;
            };
            if k.trim() != name {
                continue;
            }
            let mut v = v.trim();
            if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
                v = &v[1..v.len() - 1];
            }
            // The first occurrence wins, as in express-session, even when it is unusable.
            if v.len() > MAX_COOKIE_VALUE_LEN * 3 {
                return None;
            }
            let decoded = decode_value(v);
            return (decoded.len() <= MAX_COOKIE_VALUE_LEN).then_some(decoded);
        }
    }
    None
}

/// The `SameSite` attribute.
///
/// ```
/// assert_eq!(cache_sdk::session::SameSite::Lax.as_str(), "Lax");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SameSite {
    /// Sent on same-site requests only.
    Strict,
    /// Sent on same-site requests and top-level navigations (the default).
    #[default]
    Lax,
    /// Sent everywhere; browsers require `Secure` with it.
    None,
}

impl SameSite {
    /// As written in `Set-Cookie`.
    ///
    /// ```
    /// assert_eq!(cache_sdk::session::SameSite::None.as_str(), "None");
    /// ```
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Strict => "Strict",
            SameSite::Lax => "Lax",
            SameSite::None => "None",
        }
    }
}

/// The attributes of the session cookie.
///
/// ```
/// use cache_sdk::session::cookie::CookieAttributes;
/// let a = CookieAttributes::new("sid");
/// assert_eq!(
///     a.set_cookie("s:abc.d+e", 0),
///     "sid=s%3Aabc.d%2Be; Path=/; Expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly; Secure; SameSite=Lax"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CookieAttributes {
    /// The cookie name.
    pub name: String,
    /// `Path` (default `/`).
    pub path: String,
    /// `Domain` (default none: the host only).
    pub domain: Option<String>,
    /// `Secure` (default on).
    pub secure: bool,
    /// `HttpOnly` (default on).
    pub http_only: bool,
    /// `SameSite` (default `Lax`).
    pub same_site: SameSite,
}

impl CookieAttributes {
    /// The secure defaults: `Path=/; HttpOnly; Secure; SameSite=Lax`.
    ///
    /// ```
    /// let a = cache_sdk::session::cookie::CookieAttributes::new("sid");
    /// assert!(a.secure && a.http_only);
    /// ```
    #[must_use]
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            path: "/".into(),
            domain: None,
            secure: true,
            http_only: true,
            same_site: SameSite::Lax,
        }
    }

    /// A `Set-Cookie` value for a signed value (not yet URL-encoded) expiring at
    /// `expires_ms` (Unix milliseconds). Attributes in express-session's order.
    ///
    /// ```
    /// let a = cache_sdk::session::cookie::CookieAttributes::new("sid");
    /// assert!(a.set_cookie("v", 1_795_719_056_263).contains("Expires=Thu, 26 Nov 2026 18:50:56 GMT"));
    /// ```
    #[must_use]
    pub fn set_cookie(&self, value: &str, expires_ms: u64) -> String {
        let mut out = format!("{}={}", self.name, encode_value(value));
        if let Some(d) = &self.domain {
            out.push_str("; Domain=");
            out.push_str(d);
        }
        out.push_str("; Path=");
        out.push_str(&self.path);
        out.push_str("; Expires=");
        out.push_str(&http_date(expires_ms));
        if self.http_only {
            out.push_str("; HttpOnly");
        }
        if self.secure {
            out.push_str("; Secure");
        }
        out.push_str("; SameSite=");
        out.push_str(self.same_site.as_str());
        out
    }

    /// A `Set-Cookie` value that makes the browser drop the cookie.
    ///
    /// ```
    /// let a = cache_sdk::session::cookie::CookieAttributes::new("sid");
    /// assert!(a.removal().starts_with("sid=; Path=/; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0"));
    /// ```
    #[must_use]
    pub fn removal(&self) -> String {
        let full = self.set_cookie("", 0);
        let expires = "; Expires=Thu, 01 Jan 1970 00:00:00 GMT";
        full.replacen(expires, &format!("{expires}; Max-Age=0"), 1)
    }
}

/// Whether a cookie name is an RFC 6265 token.
pub(crate) fn valid_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(s: &str) -> SessionId {
        SessionId::parse(s).expect("test id")
    }

    #[test]
    fn express_test_vectors() {
        let cases = [
            (
                "keyboard cat",
                "OLNk22Xhb51PmM3cpkVC_jWsveshh3KM",
                "atD7bENXG/PIsMcTFadNRQBUnndXQA1MRa+8UeDVpBg",
            ),
            (
                "demo-secret",
                "WOef9FivrmsL5Jm4ZfKIhGODeF-zLMFp",
                "ZF5YvS5w7Qw9sN+fkGxpt2ZVp52MdBEnapIuVT7/6Rg",
            ),
            (
                "pässwörd-✓",
                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                "wndKITGMhZyUKtiy7r55FxtHEhB6KNS4mEMcq0l44Zo",
            ),
            (
                "old-secret",
                "rvWfOEkxVb2A_Tmjoz2DHzgTtg2p2BaU",
                "J8rwnd8wqav2+c0NHdJDHV6IVXJit0Sfm1inQChsCaw",
            ),
            (
                "new-secret",
                "rvWfOEkxVb2A_Tmjoz2DHzgTtg2p2BaU",
                "vRYAhGdRYiyRZWMjV4nvNICIwiZY1tiN+BIMarQL7IQ",
            ),
        ];
        for (secret, id, sig) in cases {
            let s = SessionSecrets::new([secret]).expect("secret");
            assert_eq!(s.signature(&sid(id)), sig, "{secret}");
            let value = format!("s:{id}.{sig}");
            assert_eq!(s.verify(&value).map(|v| v.id), Some(sid(id)));
        }
    }

    #[test]
    fn wire_value_matches_the_capture() {
        let s = SessionSecrets::new(["demo-secret"]).expect("secret");
        let id = sid("WOef9FivrmsL5Jm4ZfKIhGODeF-zLMFp");
        assert_eq!(
            encode_value(&s.sign(&id)),
            "s%3AWOef9FivrmsL5Jm4ZfKIhGODeF-zLMFp.ZF5YvS5w7Qw9sN%2BfkGxpt2ZVp52MdBEnapIuVT7%2F6Rg"
        );
        let header = "connect.sid=s%3AWOef9FivrmsL5Jm4ZfKIhGODeF-zLMFp.ZF5YvS5w7Qw9sN%2BfkGxpt2ZVp52MdBEnapIuVT7%2F6Rg";
        let value = find_cookie([header], "connect.sid").expect("cookie");
        assert_eq!(s.verify(&value).map(|v| v.id), Some(id));
    }

    #[test]
    fn rejects_padding_base64url_tampering_and_other_secrets() {
        let s = SessionSecrets::new(["demo-secret"]).expect("secret");
        let id = "WOef9FivrmsL5Jm4ZfKIhGODeF-zLMFp";
        let good = "ZF5YvS5w7Qw9sN+fkGxpt2ZVp52MdBEnapIuVT7/6Rg";
        assert!(s.verify(&format!("s:{id}.{good}")).is_some());
        assert!(s.verify(&format!("s:{id}.{good}=")).is_none());
        assert!(s
            .verify(&format!(
                "s:{id}.{}",
                good.replace('+', "-").replace('/', "_")
            ))
            .is_none());
        assert!(s.verify(&format!("{id}.{good}")).is_none());
        assert!(s
            .verify(&format!("s:{}.{good}", id.replace('W', "X")))
            .is_none());
        // Last character differs only in bits base64 drops: not canonical, refused.
        assert!(s
            .verify(&format!("s:{id}.{}", good.replace("6Rg", "6Rh")))
            .is_none());
        let other = SessionSecrets::new(["another"]).expect("secret");
        assert!(other.verify(&format!("s:{id}.{good}")).is_none());
        assert!(s
            .verify(&format!("s:{id}.{good}{}", "A".repeat(5000)))
            .is_none());
    }

    #[test]
    fn cookie_header_parsing_follows_express() {
        assert_eq!(find_cookie(["x=\"s:a.b\""], "x").as_deref(), Some("s:a.b"));
        // Literal + and / are accepted unencoded; bad escapes keep the raw value.
        assert_eq!(
            find_cookie(["x=s:a.b+c/d"], "x").as_deref(),
            Some("s:a.b+c/d")
        );
        assert_eq!(
            find_cookie(["x=s%3Aa%ZZ"], "x").as_deref(),
            Some("s%3Aa%ZZ")
        );
        assert_eq!(find_cookie(["x=%FF%FE"], "x").as_deref(), Some("%FF%FE"));
        assert_eq!(find_cookie(["y=1", "x=2; x=3"], "x").as_deref(), Some("2"));
        assert_eq!(find_cookie([" x = 4 "], "x").as_deref(), Some("4"));
        assert_eq!(
            find_cookie([&*format!("x={}", "a".repeat(5000))], "x"),
            None
        );
    }

    #[test]
    fn cookie_names() {
        assert!(valid_cookie_name("connect.sid"));
        assert!(valid_cookie_name("__Host-sid"));
        assert!(!valid_cookie_name("a b"));
        assert!(!valid_cookie_name("a;b"));
        assert!(!valid_cookie_name(""));
    }
}
