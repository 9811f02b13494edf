//! The environment reader shared by [`CacheConfig`](crate::CacheConfig) and
//! [`SessionConfig`](crate::session::SessionConfig): typed getters over a map of variables,
//! each naming its variable in the error it returns.
//!
//! What it owns: the rules every variable follows (a value is trimmed, an empty value counts
//! as unset, a bad value is a [`ConfigError::Invalid`] naming the variable), the reading of
//! the process environment and, only when asked, of a `.env` file. It imports nothing from
//! the rest of the crate but the error type.

use std::collections::HashMap;
use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::error::ConfigError;

/// A set of variables (the process environment, a `.env` file, or a test's map) read with
/// typed getters. Every getter returns `Ok(None)` when the variable is unset or empty.
pub(crate) struct EnvReader {
    vars: HashMap<String, String>,
}

impl EnvReader {
    /// Reads these variables.
    pub(crate) fn new(vars: HashMap<String, String>) -> Self {
        Self { vars }
    }

    /// The variables given as pairs.
    pub(crate) fn from_pairs<K: Into<String>, V: Into<String>>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self::new(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// The process environment (variables that are not UTF-8 are left out).
    pub(crate) fn process() -> Self {
        Self::new(process_vars())
    }

    /// The process environment over the variables of a `.env` file in the current directory
    /// or a parent (a variable already set in the process wins, as with `dotenv` in Node).
    #[cfg(feature = "dotenv")]
    pub(crate) fn process_and_dotenv() -> Result<Self, ConfigError> {
        let mut vars = read_dotenv()?;
        vars.extend(process_vars());
        Ok(Self::new(vars))
    }

    /// The value, trimmed; `None` when unset or blank.
    pub(crate) fn str(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// The value exactly as given (secrets may start or end with spaces); `None` when unset
    /// or empty.
    pub(crate) fn raw(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// Whether the variable is set to something other than blanks.
    pub(crate) fn is_set(&self, name: &str) -> bool {
        self.str(name).is_some()
    }

    /// `true/false`, `1/0`, `yes/no`, `on/off`, in any case.
    pub(crate) fn bool(&self, name: &'static str) -> Result<Option<bool>, ConfigError> {
        self.str(name)
            .map(|v| match v.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(invalid(name, v, "expected true or false")),
            })
            .transpose()
    }

    /// A whole number within `range`; `what` names the quantity in the error ("not
    /// `what` (min-max)").
    pub(crate) fn number<N>(
        &self,
        name: &'static str,
        range: RangeInclusive<N>,
        what: &str,
    ) -> Result<Option<N>, ConfigError>
    where
        N: FromStr + PartialOrd + fmt::Display,
    {
        self.str(name)
            .map(|v| match v.parse::<N>() {
                Ok(n) if range.contains(&n) => Ok(n),
                _ => Err(invalid(
                    name,
                    v,
                    &format!("not {what} ({}-{})", range.start(), range.end()),
                )),
            })
            .transpose()
    }

    /// A number of seconds within `range` (in seconds).
    pub(crate) fn secs(
        &self,
        name: &'static str,
        range: RangeInclusive<u64>,
    ) -> Result<Option<Duration>, ConfigError> {
        Ok(self
            .number(name, range, "a number of seconds")?
            .map(Duration::from_secs))
    }

    /// A number of milliseconds within `range` (in milliseconds).
    pub(crate) fn millis(
        &self,
        name: &'static str,
        range: RangeInclusive<u64>,
    ) -> Result<Option<Duration>, ConfigError> {
        Ok(self
            .number(name, range, "a number of milliseconds")?
            .map(Duration::from_millis))
    }

    /// A comma-separated list, each item trimmed, empty items dropped; a list with no item
    /// is an error whose reason is `expected`.
    pub(crate) fn list(
        &self,
        name: &'static str,
        expected: &str,
    ) -> Result<Option<Vec<String>>, ConfigError> {
        let Some(v) = self.str(name) else {
            return Ok(None);
        };
        let items: Vec<String> = v
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if items.is_empty() {
            return Err(invalid(name, v, expected));
        }
        Ok(Some(items))
    }

    /// A value read with its `FromStr` (enums such as `Coherence`); the parser's error
    /// becomes the reason.
    pub(crate) fn parse<T>(&self, name: &'static str) -> Result<Option<T>, ConfigError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        self.str(name)
            .map(|v| v.parse::<T>().map_err(|e| invalid(name, v, &e.to_string())))
            .transpose()
    }

    /// One of a fixed set of words (case-insensitive), for types without `FromStr`.
    pub(crate) fn choice<T: Copy>(
        &self,
        name: &'static str,
        choices: &[(&str, T)],
    ) -> Result<Option<T>, ConfigError> {
        let Some(v) = self.str(name) else {
            return Ok(None);
        };
        let lower = v.to_ascii_lowercase();
        if let Some((_, t)) = choices.iter().find(|(word, _)| *word == lower) {
            return Ok(Some(*t));
        }
        let words: Vec<String> = choices.iter().map(|(w, _)| format!("`{w}`")).collect();
        Err(invalid(name, v, &format!("expected {}", join_or(&words))))
    }

    /// The variables whose name starts with `prefix`, with their values as given.
    pub(crate) fn with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.vars
            .iter()
            .filter(move |(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The lifetime of web sessions: `CACHE_TTL_SESSION`, the `Session` TTL preset, or its
    /// deprecated alias `SESSION_TTL_SECS` (a warning, once per process). Both set to
    /// different values is an error naming both.
    pub(crate) fn session_ttl(&self) -> Result<Option<Duration>, ConfigError> {
        let range = 1..=MAX_TTL_SECS;
        let preset = self.secs(SESSION_TTL, range.clone())?;
        let alias = self.secs(SESSION_TTL_ALIAS, range)?;
        if alias.is_some() {
            static WARNED: AtomicBool = AtomicBool::new(false);
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "SESSION_TTL_SECS is deprecated: set CACHE_TTL_SESSION instead (the session \
                     TTL preset, which the session lifetime follows)"
                );
            }
        }
        match (preset, alias) {
            (Some(p), Some(a)) if p != a => Err(ConfigError::Invalid {
                name: SESSION_TTL_ALIAS,
                value: a.as_secs().to_string(),
                reason: format!(
                    "disagrees with CACHE_TTL_SESSION={}: SESSION_TTL_SECS is a deprecated \
                     alias of CACHE_TTL_SESSION; remove it",
                    p.as_secs()
                ),
            }),
            (p, a) => Ok(p.or(a)),
        }
    }
}

/// The variable that sets the session lifetime and the `Session` TTL preset.
pub(crate) const SESSION_TTL: &str = "CACHE_TTL_SESSION";
/// Its deprecated alias.
pub(crate) const SESSION_TTL_ALIAS: &str = "SESSION_TTL_SECS";
/// The longest TTL, in seconds (365 days).
const MAX_TTL_SECS: u64 = 365 * 24 * 3600;

/// The process environment as UTF-8 pairs.
fn process_vars() -> HashMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// The variables of the `.env` file in the current directory or a parent; none when there
/// is no such file.
#[cfg(feature = "dotenv")]
fn read_dotenv() -> Result<HashMap<String, String>, ConfigError> {
    let mut vars = HashMap::new();
    match dotenvy::dotenv_iter() {
        Ok(iter) => {
            for item in iter {
                let (k, v) = item.map_err(|e| ConfigError::DotEnv(e.to_string()))?;
                vars.insert(k, v);
            }
        }
        Err(e) if e.not_found() => {}
        Err(e) => return Err(ConfigError::DotEnv(e.to_string())),
    }
    Ok(vars)
}

/// `a`, `a or b`, `a, b or c`.
fn join_or(words: &[String]) -> String {
    match words {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// The error for a variable with a value that cannot be used.
pub(crate) fn invalid(name: &'static str, value: &str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        name,
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(pairs: &[(&str, &str)]) -> EnvReader {
        EnvReader::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn blank_is_unset_and_values_are_trimmed_except_raw_ones() {
        let r = reader(&[("A", "  x "), ("B", "   "), ("C", "")]);
        assert_eq!(r.str("A"), Some("x"));
        assert_eq!(r.raw("A"), Some("  x "));
        assert!(!r.is_set("B") && !r.is_set("C") && !r.is_set("D"));
        assert_eq!(r.raw("C"), None);
        assert_eq!(r.bool("B").unwrap(), None);
    }

    #[test]
    fn every_getter_names_its_variable() {
        let r = reader(&[
            ("FLAG", "maybe"),
            ("PORT", "70000"),
            ("WAIT_MS", "soon"),
            ("WAIT_SECS", "-1"),
            ("LIST", " , ,"),
            ("MODE", "sometimes"),
            ("CODEC", "xml"),
        ]);
        let errors = [
            ("FLAG", r.bool("FLAG").unwrap_err()),
            (
                "PORT",
                r.number::<u16>("PORT", 1..=65535, "a port number")
                    .unwrap_err(),
            ),
            ("WAIT_MS", r.millis("WAIT_MS", 1..=10).unwrap_err()),
            ("WAIT_SECS", r.secs("WAIT_SECS", 0..=10).unwrap_err()),
            ("LIST", r.list("LIST", "expected a list").unwrap_err()),
            ("MODE", r.parse::<crate::Coherence>("MODE").unwrap_err()),
            (
                "CODEC",
                r.choice("CODEC", &[("bincode", 1), ("json", 2)])
                    .unwrap_err(),
            ),
        ];
        for (name, err) in errors {
            let text = err.to_string();
            assert!(text.starts_with(&format!("{name}=")), "{text}");
        }
        assert_eq!(
            r.number::<u16>("PORT", 1..=65535, "a port number")
                .unwrap_err()
                .to_string(),
            "PORT=\"70000\" is invalid: not a port number (1-65535)"
        );
        assert_eq!(
            r.choice("CODEC", &[("bincode", 1), ("json", 2)])
                .unwrap_err()
                .to_string(),
            "CODEC=\"xml\" is invalid: expected `bincode` or `json`"
        );
    }

    #[test]
    fn getters_read_good_values() {
        let r = reader(&[
            ("FLAG", "On"),
            ("N", "42"),
            ("MS", "250"),
            ("LIST", "a, b,,c"),
            ("MODE", "PubSub"),
            ("CODEC", "JSON"),
            ("P_X", "1"),
            ("P_Y", "2"),
        ]);
        assert_eq!(r.bool("FLAG").unwrap(), Some(true));
        assert_eq!(r.number::<u8>("N", 0..=50, "n").unwrap(), Some(42));
        assert_eq!(
            r.millis("MS", 1..=1000).unwrap(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            r.list("LIST", "").unwrap().unwrap(),
            ["a", "b", "c"].map(String::from)
        );
        assert_eq!(
            r.parse::<crate::Coherence>("MODE").unwrap(),
            Some(crate::Coherence::PubSub)
        );
        assert_eq!(
            r.choice("CODEC", &[("bincode", 1), ("json", 2)]).unwrap(),
            Some(2)
        );
        let mut prefixed: Vec<_> = r.with_prefix("P_").collect();
        prefixed.sort_unstable();
        assert_eq!(prefixed, [("P_X", "1"), ("P_Y", "2")]);
    }

    #[test]
    fn the_session_ttl_alias_agrees_or_fails() {
        let day = Some(Duration::from_secs(86_400));
        assert_eq!(reader(&[]).session_ttl().unwrap(), None);
        assert_eq!(
            reader(&[("CACHE_TTL_SESSION", "86400")])
                .session_ttl()
                .unwrap(),
            day
        );
        assert_eq!(
            reader(&[("SESSION_TTL_SECS", "86400")])
                .session_ttl()
                .unwrap(),
            day
        );
        assert_eq!(
            reader(&[
                ("SESSION_TTL_SECS", "86400"),
                ("CACHE_TTL_SESSION", "86400")
            ])
            .session_ttl()
            .unwrap(),
            day
        );
        let err = reader(&[("SESSION_TTL_SECS", "60"), ("CACHE_TTL_SESSION", "86400")])
            .session_ttl()
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("SESSION_TTL_SECS=\"60\"") && err.contains("CACHE_TTL_SESSION=86400"),
            "{err}"
        );
        let err = reader(&[("CACHE_TTL_SESSION", "0")])
            .session_ttl()
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("CACHE_TTL_SESSION=\"0\""), "{err}");
    }
}
