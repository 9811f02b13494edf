//! Keys: validation, the standard patterns, and glob escaping for pattern listing.
//!
//! | pattern | builder |
//! |---|---|
//! | `cache:{resource}:{id}` | [`Key::cache`] |
//! | `user:{userId}:{field}` | [`Key::user`] |
//! | `user:{userId}:*` (listing) | [`Key::user_pattern`] |
//! | `sess:{sessionId}` | [`Key::session`] |
//!
//! A key is at most [`MAX_KEY_LEN`] bytes, not empty, and holds no control characters. Parts
//! given to the builders are checked the same way; every part but the last must also be free
//! of `:` so that two different (resource, id) pairs can never build the same key.

use std::fmt::Display;

use crate::error::Error;

/// The longest key accepted, in bytes (namespace prefix excluded).
pub const MAX_KEY_LEN: usize = 1024;

/// The one spelling of the session prefix, so that [`SESSION_PREFIX`] and the redacted form
/// of a session key cannot drift apart.
macro_rules! session_prefix {
    () => {
        "sess:"
    };
}

/// The prefix of the keys the cache keeps for itself (inside the namespace): the stamps of
/// tags and of clear (see `cache/tags.rs`). Always tracked by the coherence link.
pub(crate) const RESERVED_PREFIX: &str = "__cache-sdk__:";

/// The clear stamp: hearing that it was written empties L1.
pub(crate) const CLEAR_KEY: &str = "__cache-sdk__:clear";

/// The prefix of every session record's key, `sess:` (connect-redis' default): session
/// ids ([`Key::session`]), the session count (`SCAN MATCH sess:*`) and log redaction all
/// use it.
///
/// ```
/// assert_eq!(cache_sdk::key::SESSION_PREFIX, "sess:");
/// assert!(cache_sdk::Key::session("abc").unwrap().starts_with(cache_sdk::key::SESSION_PREFIX));
/// ```
pub const SESSION_PREFIX: &str = session_prefix!();

/// How a session key appears in logs: session ids are credentials.
pub(crate) const SESSION_KEY_REDACTED: &str = concat!(session_prefix!(), "<redacted>");

/// Checks a whole key.
///
/// # Errors
/// [`Error::InvalidKey`] when the key is empty, longer than [`MAX_KEY_LEN`] or holds a
/// control character.
///
/// ```
/// assert!(cache_sdk::key::validate("cache:product:42").is_ok());
/// assert!(cache_sdk::key::validate("bad\nkey").is_err());
/// assert!(cache_sdk::key::validate("").is_err());
/// ```
pub fn validate(key: &str) -> Result<&str, Error> {
    if key.is_empty() {
        return Err(Error::invalid_key(key, "the key is empty"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(Error::invalid_key(key, "the key is longer than 1024 bytes"));
    }
    if key.chars().any(char::is_control) {
        return Err(Error::invalid_key(key, "the key holds a control character"));
    }
    Ok(key)
}

fn part(value: &dyn Display, last: bool) -> Result<String, Error> {
    let s = value.to_string();
    if s.is_empty() {
        return Err(Error::invalid_key(&s, "a key part is empty"));
    }
    if s.chars().any(char::is_control) {
        return Err(Error::invalid_key(
            &s,
            "a key part holds a control character",
        ));
    }
    if !last && s.contains(':') {
        return Err(Error::invalid_key(
            &s,
            "a key part other than the last must not contain ':'",
        ));
    }
    Ok(s)
}

/// Builders for the standard key patterns.
///
/// ```
/// use cache_sdk::Key;
/// assert_eq!(Key::cache("product", 42).unwrap(), "cache:product:42");
/// assert_eq!(Key::user(7, "theme").unwrap(), "user:7:theme");
/// assert_eq!(Key::session("abc").unwrap(), "sess:abc");
/// assert_eq!(Key::user_pattern("a*b").unwrap(), "user:a\\*b:*");
/// assert!(Key::cache("", 1).is_err());
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Key;

impl Key {
    /// `cache:{resource}:{id}`.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] for an empty part, a control character, a `:` in `resource`,
    /// or a key over [`MAX_KEY_LEN`].
    pub fn cache(resource: impl Display, id: impl Display) -> Result<String, Error> {
        Self::join(&[&"cache", &resource, &id])
    }

    /// `user:{userId}:{field}`.
    ///
    /// # Errors
    /// As [`Key::cache`].
    pub fn user(user_id: impl Display, field: impl Display) -> Result<String, Error> {
        Self::join(&[&"user", &user_id, &field])
    }

    /// `sess:{sessionId}` ([`SESSION_PREFIX`] and the id).
    ///
    /// # Errors
    /// As [`Key::cache`].
    pub fn session(session_id: impl Display) -> Result<String, Error> {
        let key = format!("{SESSION_PREFIX}{}", part(&session_id, true)?);
        validate(&key)?;
        Ok(key)
    }

    /// The listing pattern `user:{userId}:*`, with glob characters in `user_id` escaped so
    /// that it matches that user's keys only.
    ///
    /// # Errors
    /// As [`Key::cache`].
    pub fn user_pattern(user_id: impl Display) -> Result<String, Error> {
        let id = part(&user_id, false)?;
        Ok(format!("user:{}:*", escape_glob(&id)))
    }

    /// Joins parts with `:` after checking each one.
    ///
    /// # Errors
    /// As [`Key::cache`].
    ///
    /// ```
    /// assert_eq!(cache_sdk::Key::join(&[&"report", &2024, &"q1"]).unwrap(), "report:2024:q1");
    /// ```
    pub fn join(parts: &[&dyn Display]) -> Result<String, Error> {
        let mut key = String::new();
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                key.push(':');
            }
            key.push_str(&part(*p, i + 1 == parts.len())?);
        }
        validate(&key)?;
        Ok(key)
    }
}

/// Escapes the Redis glob characters `* ? [ ] \` so that `s` matches only itself inside a
/// `SCAN ... MATCH` pattern.
///
/// ```
/// assert_eq!(cache_sdk::key::escape_glob("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
/// ```
#[must_use]
pub fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Matches `text` against a Redis glob pattern (`*`, `?`, `[abc]`, `[^a]`, `[a-z]`, `\x`),
/// the way `SCAN ... MATCH` does. Used by the in-memory store.
///
/// ```
/// use cache_sdk::key::glob_match;
/// assert!(glob_match("user:7:*", "user:7:theme"));
/// assert!(!glob_match("user:7:*", "user:70:theme"));
/// assert!(glob_match("a\\*", "a*"));
/// assert!(!glob_match("a\\*", "ab"));
/// ```
#[must_use]
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    glob_at(&p, &t)
}

fn glob_at(p: &[char], t: &[char]) -> bool {
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ti));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                '[' => match class(p, pi, t[ti]) {
                    Some((true, next)) => {
                        pi = next;
                        ti += 1;
                        continue;
                    }
                    Some((false, _)) => {}
                    // An unclosed `[` is a literal character.
                    None => {
                        if t[ti] == '[' {
                            pi += 1;
                            ti += 1;
                            continue;
                        }
                    }
                },
                '\\' if pi + 1 < p.len() => {
                    if p[pi + 1] == t[ti] {
                        pi += 2;
                        ti += 1;
                        continue;
                    }
                }
                c => {
                    if c == t[ti] {
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, st)) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Parses the class starting at `p[start] == '['`; returns whether `c` matches and the index
/// after the class, or `None` when the class is not closed (then `[` is a literal).
fn class(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = i < p.len() && p[i] == '^';
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() && (p[i] != ']' || first) {
        first = false;
        if p[i] == '\\' && i + 1 < p.len() {
            matched |= p[i + 1] == c;
            i += 2;
        } else if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            let (lo, hi) = if p[i] <= p[i + 2] {
                (p[i], p[i + 2])
            } else {
                (p[i + 2], p[i])
            };
            matched |= (lo..=hi).contains(&c);
            i += 3;
        } else {
            matched |= p[i] == c;
            i += 1;
        }
    }
    if i >= p.len() {
        return None;
    }
    Some((matched != negate, i + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn session_keys_share_one_prefix_with_their_redacted_form() {
        assert!(SESSION_KEY_REDACTED.starts_with(SESSION_PREFIX));
        let key = Key::session("abc").expect("valid");
        assert_eq!(crate::cache::log_key(&key), SESSION_KEY_REDACTED);
        assert_eq!(crate::cache::log_key("cache:a:1"), "cache:a:1");
    }

    #[test]
    fn builders_reject_bad_parts() {
        assert!(Key::cache("pro:duct", 1).is_err());
        assert!(Key::cache("product", "a:b").is_ok());
        assert!(Key::cache("product", "a\u{7}").is_err());
        assert!(Key::session("x".repeat(2000)).is_err());
    }

    #[test]
    fn glob_classes_and_escapes() {
        assert!(glob_match("h[ae]llo", "hello"));
        assert!(glob_match("h[^e]llo", "hallo"));
        assert!(!glob_match("h[^e]llo", "hello"));
        assert!(glob_match("h[a-b]llo", "hbllo"));
        assert!(glob_match("h?llo", "hxllo"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(glob_match("[", "["));
    }

    proptest! {
        #[test]
        fn escaped_text_matches_only_itself(s in "\\PC{0,20}", other in "\\PC{0,20}") {
            let pat = escape_glob(&s);
            prop_assert!(glob_match(&pat, &s));
            if other != s {
                prop_assert!(!glob_match(&pat, &other));
            }
        }

        #[test]
        fn built_keys_are_valid_and_keep_their_parts(r in "[a-z]{1,10}", id in "[^\\p{Cc}]{1,40}") {
            let k = Key::cache(&r, &id).unwrap();
            prop_assert!(validate(&k).is_ok());
            prop_assert_eq!(k, format!("cache:{r}:{id}"));
        }

        #[test]
        fn glob_match_never_panics(p in "\\PC{0,12}", t in "\\PC{0,12}") {
            let _ = glob_match(&p, &t);
        }
    }
}
