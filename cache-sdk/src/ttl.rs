//! Time-to-live presets.
//!
//! | preset | default | env override |
//! |---|---|---|
//! | [`Ttl::Session`] | 24 h (86 400 s) | `CACHE_TTL_SESSION` (also the web session lifetime; `SESSION_TTL_SECS` is its deprecated alias) |
//! | [`Ttl::Api`] | 10 min (600 s) | `CACHE_TTL_API` |
//! | [`Ttl::UserPreferences`] | 7 days (604 800 s) | `CACHE_TTL_USER_PREFERENCES` |
//! | [`Ttl::Named`] | set with [`TtlPresets::define`] | `CACHE_TTL_<NAME>` |
//! | [`Ttl::Custom`] | the given duration | — |
//!
//! Every TTL must lie between 1 second and 365 days; anything else is an error.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{ConfigError, Error};

/// The longest TTL accepted: 365 days.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// How long an entry lives.
///
/// ```
/// use cache_sdk::{Ttl, TtlPresets};
/// use std::time::Duration;
/// let presets = TtlPresets::default();
/// assert_eq!(presets.resolve(&Ttl::Api).unwrap(), Duration::from_secs(600));
/// assert_eq!(presets.resolve(&Ttl::secs(30)).unwrap(), Duration::from_secs(30));
/// assert!(presets.resolve(&Ttl::secs(0)).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Ttl {
    /// Web sessions: 24 hours by default.
    Session,
    /// API responses: 10 minutes by default (the middle of the usual 5–15 min range).
    Api,
    /// User preferences: 7 days by default.
    UserPreferences,
    /// A preset defined by name with [`TtlPresets::define`] or `CACHE_TTL_<NAME>`.
    Named(Arc<str>),
    /// An explicit duration.
    Custom(Duration),
}

impl Ttl {
    /// A custom TTL of `secs` seconds.
    ///
    /// ```
    /// assert_eq!(cache_sdk::Ttl::secs(5), cache_sdk::Ttl::Custom(std::time::Duration::from_secs(5)));
    /// ```
    #[must_use]
    pub const fn secs(secs: u64) -> Self {
        Ttl::Custom(Duration::from_secs(secs))
    }

    /// A named preset.
    ///
    /// ```
    /// let t = cache_sdk::Ttl::named("reports");
    /// assert!(matches!(t, cache_sdk::Ttl::Named(_)));
    /// ```
    #[must_use]
    pub fn named(name: &str) -> Self {
        match normalize(name).as_str() {
            "session" | "sessions" => Ttl::Session,
            "api" => Ttl::Api,
            "user_preferences" | "preferences" => Ttl::UserPreferences,
            other => Ttl::Named(Arc::from(other)),
        }
    }
}

impl From<Duration> for Ttl {
    fn from(d: Duration) -> Self {
        Ttl::Custom(d)
    }
}

fn normalize(name: &str) -> String {
    name.trim().to_ascii_lowercase().replace('-', "_")
}

/// Checks that a TTL is within 1 s ..= 365 days.
pub(crate) fn check(d: Duration) -> Result<Duration, Error> {
    if d < Duration::from_secs(1) || d > MAX_TTL {
        Err(Error::InvalidTtl(d))
    } else {
        Ok(d)
    }
}

/// The table that turns a [`Ttl`] into a duration, with optional jitter.
///
/// ```
/// use cache_sdk::{Ttl, TtlPresets};
/// use std::time::Duration;
/// let mut p = TtlPresets::default();
/// p.define("reports", Duration::from_secs(3600)).unwrap();
/// assert_eq!(p.resolve(&Ttl::named("reports")).unwrap(), Duration::from_secs(3600));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct TtlPresets {
    session: Duration,
    api: Duration,
    user_preferences: Duration,
    named: HashMap<String, Duration>,
    jitter: f64,
}

impl Default for TtlPresets {
    fn default() -> Self {
        Self {
            session: Duration::from_secs(86_400),
            api: Duration::from_secs(600),
            user_preferences: Duration::from_secs(604_800),
            named: HashMap::new(),
            jitter: 0.0,
        }
    }
}

impl TtlPresets {
    /// Defines (or overrides) a preset by name. `session`, `api` and `user_preferences`
    /// override the built-in presets.
    ///
    /// # Errors
    /// [`Error::InvalidTtl`] when the duration is outside 1 s ..= 365 days, and
    /// [`Error::InvalidKey`] when the name is empty.
    ///
    /// ```
    /// let mut p = cache_sdk::TtlPresets::default();
    /// p.define("api", std::time::Duration::from_secs(900)).unwrap();
    /// assert_eq!(p.resolve(&cache_sdk::Ttl::Api).unwrap().as_secs(), 900);
    /// ```
    pub fn define(&mut self, name: &str, ttl: Duration) -> Result<(), Error> {
        let ttl = check(ttl)?;
        if normalize(name).is_empty() {
            return Err(Error::invalid_key(name, "a preset name must not be empty"));
        }
        self.define_unchecked(name, ttl);
        Ok(())
    }

    /// Sets the jitter: each resolved TTL is spread by a random ±`fraction` (0.0 ..= 0.5),
    /// so entries written together do not all expire together. Default 0 (off).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when `fraction` is outside 0.0 ..= 0.5.
    ///
    /// ```
    /// let mut p = cache_sdk::TtlPresets::default();
    /// p.set_jitter(0.1).unwrap();
    /// let d = p.resolve(&cache_sdk::Ttl::Api).unwrap().as_secs();
    /// assert!((540..=660).contains(&d));
    /// ```
    pub fn set_jitter(&mut self, fraction: f64) -> Result<(), ConfigError> {
        if !(0.0..=0.5).contains(&fraction) {
            return Err(jitter_error(fraction));
        }
        self.jitter = fraction;
        Ok(())
    }

    /// The duration of a TTL before jitter.
    ///
    /// # Errors
    /// [`Error::InvalidTtl`] for a custom duration outside 1 s ..= 365 days, and
    /// [`Error::InvalidKey`] for an unknown preset name.
    ///
    /// ```
    /// let p = cache_sdk::TtlPresets::default();
    /// assert_eq!(p.base(&cache_sdk::Ttl::Session).unwrap().as_secs(), 86_400);
    /// ```
    pub fn base(&self, ttl: &Ttl) -> Result<Duration, Error> {
        match ttl {
            Ttl::Session => Ok(self.session),
            Ttl::Api => Ok(self.api),
            Ttl::UserPreferences => Ok(self.user_preferences),
            Ttl::Named(name) => self
                .named
                .get(&**name)
                .copied()
                .ok_or_else(|| Error::invalid_key(name, "unknown TTL preset name")),
            Ttl::Custom(d) => check(*d),
        }
    }

    /// The duration of a TTL, with jitter applied when configured.
    ///
    /// # Errors
    /// As [`TtlPresets::base`].
    ///
    /// ```
    /// let p = cache_sdk::TtlPresets::default();
    /// assert_eq!(p.resolve(&cache_sdk::Ttl::UserPreferences).unwrap().as_secs(), 604_800);
    /// ```
    pub fn resolve(&self, ttl: &Ttl) -> Result<Duration, Error> {
        let base = self.base(ttl)?;
        if self.jitter == 0.0 {
            return Ok(base);
        }
        let factor = 1.0 + rand::random_range(-self.jitter..=self.jitter);
        let jittered = Duration::from_secs_f64(base.as_secs_f64() * factor);
        Ok(jittered.clamp(Duration::from_secs(1), MAX_TTL))
    }

    /// Stores a preset without checking it; [`TtlPresets::check`] reports it at build time.
    /// The builder's setters use this so that every setting is checked in one place.
    pub(crate) fn define_unchecked(&mut self, name: &str, ttl: Duration) {
        let name = normalize(name);
        match Ttl::named(&name) {
            Ttl::Session => self.session = ttl,
            Ttl::Api => self.api = ttl,
            Ttl::UserPreferences => self.user_preferences = ttl,
            _ => {
                self.named.insert(name, ttl);
            }
        }
    }

    /// Stores the jitter without checking it (see [`TtlPresets::define_unchecked`]).
    pub(crate) fn set_jitter_unchecked(&mut self, fraction: f64) {
        self.jitter = fraction;
    }

    /// Checks every preset (1 s ..= 365 days, a name) and the jitter (0 ..= 0.5).
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        let builtin = [
            ("session", self.session),
            ("api", self.api),
            ("user_preferences", self.user_preferences),
        ];
        let named = self.named.iter().map(|(n, d)| (n.as_str(), *d));
        for (name, ttl) in builtin.into_iter().chain(named) {
            let reason = if name.is_empty() {
                "a preset name must not be empty"
            } else if check(ttl).is_err() {
                "a TTL must be between 1 and 31536000 seconds"
            } else {
                continue;
            };
            return Err(ConfigError::Invalid {
                name: "CACHE_TTL_<NAME>",
                value: format!("{name}={ttl:?}"),
                reason: reason.into(),
            });
        }
        if !(0.0..=0.5).contains(&self.jitter) {
            return Err(jitter_error(self.jitter));
        }
        Ok(())
    }
}

fn jitter_error(fraction: f64) -> ConfigError {
    ConfigError::Invalid {
        name: "CACHE_TTL_JITTER",
        value: fraction.to_string(),
        reason: "jitter must be a fraction between 0 and 0.5".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_documented_defaults() {
        let p = TtlPresets::default();
        assert_eq!(p.base(&Ttl::Session).unwrap(), Duration::from_secs(86_400));
        assert_eq!(p.base(&Ttl::Api).unwrap(), Duration::from_secs(600));
        assert_eq!(
            p.base(&Ttl::UserPreferences).unwrap(),
            Duration::from_secs(604_800)
        );
    }

    #[test]
    fn zero_and_over_a_year_are_errors() {
        let p = TtlPresets::default();
        assert!(p.resolve(&Ttl::secs(0)).is_err());
        assert!(p.resolve(&Ttl::Custom(Duration::from_millis(500))).is_err());
        assert!(p.resolve(&Ttl::secs(366 * 86_400)).is_err());
        assert!(p.resolve(&Ttl::secs(365 * 86_400)).is_ok());
    }

    #[test]
    fn unchecked_values_are_caught_by_check() {
        let mut p = TtlPresets::default();
        assert!(p.check().is_ok());
        p.define_unchecked("reports", Duration::ZERO);
        let err = p.check().unwrap_err().to_string();
        assert!(err.contains("reports=0ns"), "{err}");
        let mut p = TtlPresets::default();
        p.define_unchecked(" ", Duration::from_secs(5));
        assert!(p.check().unwrap_err().to_string().contains("empty"));
        let mut p = TtlPresets::default();
        p.set_jitter_unchecked(f64::NAN);
        assert!(p
            .check()
            .unwrap_err()
            .to_string()
            .starts_with("CACHE_TTL_JITTER"));
    }

    #[test]
    fn unknown_named_preset_is_an_error() {
        let p = TtlPresets::default();
        assert!(p.resolve(&Ttl::named("nope")).is_err());
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let mut p = TtlPresets::default();
        p.set_jitter(0.1).unwrap();
        for _ in 0..1000 {
            let d = p.resolve(&Ttl::Api).unwrap().as_secs_f64();
            assert!((540.0..=660.0).contains(&d), "{d}");
        }
    }
}
