//! Parses the attribute's options: `key = "...", ttl = "api", cache = expr, ...`.

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Expr, Ident, Lit, LitBool, LitStr, Path, Token};

/// Which attribute is being expanded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Which {
    Cached,
    Evict,
    Put,
}

impl Which {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Which::Cached => "#[cached]",
            Which::Evict => "#[cache_evict]",
            Which::Put => "#[cache_put]",
        }
    }

    fn options(self) -> &'static [&'static str] {
        match self {
            Which::Cached => &[
                "key",
                "ttl",
                "cache",
                "tier",
                "jitter",
                "cache_none",
                "fail_safe",
                "soft_timeout",
                "hard_timeout",
                "refresh_ahead",
                "crate",
                "tags",
                "stampede",
                "origin",
            ],
            Which::Evict => &["key", "cache", "tier", "before", "crate", "tags"],
            Which::Put => &["key", "ttl", "cache", "tier", "jitter", "crate", "tags"],
        }
    }
}

/// Where values live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tier {
    /// Only this process's local store.
    L1,
    /// The `Cache`: L1 and L2.
    Both,
}

/// A TTL, checked at compile time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TtlSpec {
    Session,
    Api,
    UserPreferences,
    /// A preset defined at run time (builder or `CACHE_TTL_<NAME>`).
    Named(String),
    Secs(u64),
}

/// The longest TTL the cache accepts: 365 days.
const MAX_TTL_SECS: u64 = 365 * 24 * 3600;

/// Everything the attribute said, with the spans needed for errors.
pub(crate) struct Options {
    pub(crate) which: Which,
    pub(crate) keys: Vec<LitStr>,
    pub(crate) ttl: Option<(TtlSpec, Span)>,
    pub(crate) cache: Option<Expr>,
    pub(crate) tier: Option<(Tier, Span)>,
    pub(crate) jitter: Option<f64>,
    pub(crate) cache_none: Option<LitBool>,
    pub(crate) before: Option<LitBool>,
    pub(crate) krate: Option<Path>,
    /// `fail_safe = "1h"`: the window, in milliseconds.
    pub(crate) fail_safe: Option<(u64, Span)>,
    /// `soft_timeout = "100ms"`, in milliseconds.
    pub(crate) soft_timeout: Option<(u64, Span)>,
    /// `hard_timeout = "2s"`, in milliseconds.
    pub(crate) hard_timeout: Option<(u64, Span)>,
    /// `refresh_ahead = 0.8`.
    pub(crate) refresh_ahead: Option<(f64, Span)>,
    /// `tags = ["product:{id}", "catalog"]`: the tags written (or, for `#[cache_evict]`,
    /// invalidated), with the span of the option.
    pub(crate) tags: Option<(Vec<LitStr>, Span)>,
    /// `stampede = "distributed"`: whether one instance loads across the fleet.
    pub(crate) stampede: Option<(bool, Span)>,
    /// `origin = "products"`: the origin whose circuit breaker guards the body.
    pub(crate) origin: Option<(String, Span)>,
}

impl Options {
    pub(crate) fn tier(&self) -> Tier {
        self.tier.map_or(Tier::Both, |(t, _)| t)
    }

    pub(crate) fn parse(which: Which, input: ParseStream<'_>) -> syn::Result<Self> {
        let mut o = Options {
            which,
            keys: Vec::new(),
            ttl: None,
            cache: None,
            tier: None,
            jitter: None,
            cache_none: None,
            before: None,
            krate: None,
            fail_safe: None,
            soft_timeout: None,
            hard_timeout: None,
            refresh_ahead: None,
            tags: None,
            stampede: None,
            origin: None,
        };
        let mut seen: Vec<String> = Vec::new();
        while !input.is_empty() {
            let name = if input.peek(Token![crate]) {
                let kw: Token![crate] = input.parse()?;
                Ident::new("crate", kw.span)
            } else {
                input.call(Ident::parse_any)?
            };
            let n = name.to_string();
            if !which.options().contains(&n.as_str()) {
                return Err(syn::Error::new(
                    name.span(),
                    format!(
                        "unknown option `{n}` for {}; expected one of: {}",
                        which.name(),
                        which.options().join(", ")
                    ),
                ));
            }
            if seen.contains(&n) {
                return Err(syn::Error::new(
                    name.span(),
                    format!("duplicate option `{n}`: give each option once"),
                ));
            }
            seen.push(n.clone());
            input.parse::<Token![=]>()?;
            match n.as_str() {
                "key" => o.keys = parse_keys(which, input)?,
                "ttl" => o.ttl = Some(parse_ttl(input)?),
                "cache" => o.cache = Some(input.parse()?),
                "tier" => o.tier = Some(parse_tier(input)?),
                "jitter" => o.jitter = Some(parse_jitter(input)?),
                "cache_none" => o.cache_none = Some(input.parse()?),
                "before" => o.before = Some(input.parse()?),
                "fail_safe" | "soft_timeout" | "hard_timeout" => {
                    let d = Some(parse_duration(&n, input)?);
                    match n.as_str() {
                        "fail_safe" => o.fail_safe = d,
                        "soft_timeout" => o.soft_timeout = d,
                        _ => o.hard_timeout = d,
                    }
                }
                "refresh_ahead" => o.refresh_ahead = Some(parse_fraction(input)?),
                "tags" => o.tags = Some(crate::tags::parse(input, name.span())?),
                "stampede" => o.stampede = Some(parse_stampede(input)?),
                "origin" => o.origin = Some(parse_origin(input)?),
                _ => {
                    let s: LitStr = input.parse()?;
                    o.krate = Some(s.parse().map_err(|_| {
                        syn::Error::new(s.span(), "`crate` must name a path, such as \"my_cache\"")
                    })?);
                }
            }
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        // `#[cache_evict(tags = [...])]` may name no key.
        if o.keys.is_empty() && !(which == Which::Evict && o.tags.is_some()) {
            return Err(syn::Error::new(
                Span::call_site(),
                format!(
                    "{} needs a key pattern: add `key = \"cache:product:{{id}}\"`",
                    which.name()
                ),
            ));
        }
        Ok(o)
    }
}

fn parse_keys(which: Which, input: ParseStream<'_>) -> syn::Result<Vec<LitStr>> {
    if input.peek(syn::token::Bracket) {
        let content;
        let bracket = syn::bracketed!(content in input);
        if which != Which::Evict {
            return Err(syn::Error::new(
                bracket.span.join(),
                format!("{} takes one key pattern, not a list", which.name()),
            ));
        }
        let keys: Punctuated<LitStr, Token![,]> =
            content.parse_terminated(<LitStr as Parse>::parse, Token![,])?;
        if keys.is_empty() {
            return Err(syn::Error::new(
                bracket.span.join(),
                "the list of keys is empty",
            ));
        }
        return Ok(keys.into_iter().collect());
    }
    Ok(vec![input.parse()?])
}

/// `origin = "products"`: a name, not empty.
fn parse_origin(input: ParseStream<'_>) -> syn::Result<(String, Span)> {
    let s: LitStr = input.parse()?;
    let name = s.value();
    if name.trim().is_empty() {
        return Err(syn::Error::new(
            s.span(),
            "`origin` names the data source the body reads (such as \"products\"), whose circuit breaker the calls share: it must not be empty",
        ));
    }
    Ok((name, s.span()))
}

/// `stampede = "local"` (the default) or `"distributed"`; `true` for distributed.
fn parse_stampede(input: ParseStream<'_>) -> syn::Result<(bool, Span)> {
    let lit: Lit = input.parse()?;
    let span = lit.span();
    match &lit {
        Lit::Str(s) if s.value() == "distributed" => Ok((true, span)),
        Lit::Str(s) if s.value() == "local" => Ok((false, span)),
        _ => Err(syn::Error::new(
            span,
            "unknown `stampede` mode: expected \"local\" (one load per process, the default) or \"distributed\" (one load across every instance on the same Redis, through a short Redis lock)",
        )),
    }
}

fn parse_tier(input: ParseStream<'_>) -> syn::Result<(Tier, Span)> {
    let s: LitStr = input.parse()?;
    let tier = match s.value().to_ascii_lowercase().as_str() {
        "l1" => Tier::L1,
        "both" => Tier::Both,
        other => {
            return Err(syn::Error::new(
                s.span(),
                format!("unknown tier `{other}`: expected \"l1\" (this process only) or \"both\" (L1 and Redis, the default)"),
            ))
        }
    };
    Ok((tier, s.span()))
}

fn parse_jitter(input: ParseStream<'_>) -> syn::Result<f64> {
    let lit: Lit = input.parse()?;
    let (value, span) = match &lit {
        Lit::Float(f) => (f.base10_parse::<f64>().ok(), f.span()),
        Lit::Str(s) => {
            let v = s.value();
            let pct = v
                .trim()
                .strip_suffix('%')
                .and_then(|p| p.trim().parse::<f64>().ok());
            (pct.map(|p| p / 100.0), s.span())
        }
        other => (None, other.span()),
    };
    match value {
        Some(f) if f > 0.0 && f <= 0.5 => Ok(f),
        _ => Err(syn::Error::new(
            span,
            "`jitter` is a fraction above 0 and at most 0.5, such as `0.1` or \"10%\"",
        )),
    }
}

impl Options {
    /// Whether any resilience option (fail-safe, timeouts, eager refresh) is set.
    pub(crate) fn resilient(&self) -> bool {
        self.fail_safe.is_some()
            || self.soft_timeout.is_some()
            || self.hard_timeout.is_some()
            || self.refresh_ahead.is_some()
            || self.distributed()
            || self.origin.is_some()
    }

    /// Whether `stampede = "distributed"` was given.
    pub(crate) fn distributed(&self) -> bool {
        self.stampede.is_some_and(|(d, _)| d)
    }

    /// The span of the first resilience option, for errors about them all.
    pub(crate) fn resilient_span(&self) -> Option<Span> {
        self.fail_safe
            .map(|(_, s)| s)
            .or(self.soft_timeout.map(|(_, s)| s))
            .or(self.hard_timeout.map(|(_, s)| s))
            .or(self.refresh_ahead.map(|(_, s)| s))
            .or(self.stampede.filter(|(d, _)| *d).map(|(_, s)| s))
            .or(self.origin.as_ref().map(|(_, s)| *s))
    }
}

const DURATION_HELP: &str =
    "expected a duration such as \"100ms\", \"2s\", \"15m\", \"1h\" or \"1h30m\" (units ms, s, m, h, d)";

/// The longest fail-safe window or timeout: 365 days, in milliseconds.
const MAX_DURATION_MS: u64 = MAX_TTL_SECS * 1000;

fn parse_duration(name: &str, input: ParseStream<'_>) -> syn::Result<(u64, Span)> {
    let lit: Lit = input.parse()?;
    let span = lit.span();
    let Lit::Str(s) = &lit else {
        return Err(syn::Error::new(
            span,
            format!("`{name}` is a duration in quotes: {DURATION_HELP}"),
        ));
    };
    let ms = duration_ms(&s.value()).ok_or_else(|| {
        syn::Error::new(
            span,
            format!("invalid `{name}` {:?}: {DURATION_HELP}", s.value()),
        )
    })?;
    if ms == 0 || ms > MAX_DURATION_MS {
        return Err(syn::Error::new(
            span,
            format!(
                "`{name}` of {:?} is out of range: it must be above zero and at most 365 days",
                s.value()
            ),
        ));
    }
    Ok((ms, span))
}

/// `"100ms"`, `"2s"`, `"1h30m"` in milliseconds; `None` for anything else (a bare number
/// has no unit, so it is refused too).
fn duration_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    let mut chars = s.chars().peekable();
    while chars.peek().is_some() {
        let mut number = String::new();
        while let Some(c) = chars.peek().filter(|c| c.is_ascii_digit()) {
            number.push(*c);
            chars.next();
        }
        let n: u64 = number.parse().ok()?;
        let unit: u64 = match chars.next()? {
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                1
            }
            's' => 1000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    Some(total)
}

fn parse_fraction(input: ParseStream<'_>) -> syn::Result<(f64, Span)> {
    let lit: Lit = input.parse()?;
    let span = lit.span();
    let value = match &lit {
        Lit::Float(f) => f.base10_parse::<f64>().ok(),
        _ => None,
    };
    match value {
        Some(f) if f > 0.0 && f < 1.0 => Ok((f, span)),
        _ => Err(syn::Error::new(
            span,
            "`refresh_ahead` is the fraction of the TTL after which a hit refreshes the value in the background: a number between 0 and 1, such as `0.8`",
        )),
    }
}

const TTL_HELP: &str = "expected a preset name (\"session\", \"api\", \"user_preferences\", or one defined in the configuration), whole seconds (300), or a duration such as \"90s\", \"15m\", \"24h\", \"7d\", \"1h30m\"";

fn parse_ttl(input: ParseStream<'_>) -> syn::Result<(TtlSpec, Span)> {
    let lit: Lit = input.parse()?;
    let span = lit.span();
    let spec = match &lit {
        Lit::Int(i) => {
            let secs = i
                .base10_parse::<u64>()
                .map_err(|_| syn::Error::new(span, format!("invalid ttl: {TTL_HELP}")))?;
            TtlSpec::Secs(secs)
        }
        Lit::Str(s) => ttl_from_str(&s.value()).ok_or_else(|| {
            syn::Error::new(span, format!("invalid ttl {:?}: {TTL_HELP}", s.value()))
        })?,
        _ => return Err(syn::Error::new(span, format!("invalid ttl: {TTL_HELP}"))),
    };
    if let TtlSpec::Secs(secs) = spec {
        if secs == 0 || secs > MAX_TTL_SECS {
            return Err(syn::Error::new(
                span,
                format!("ttl of {secs} seconds is out of range: a TTL must be between 1 second and 365 days"),
            ));
        }
    }
    Ok((spec, span))
}

/// `"api"`, `"300"`, `"15m"`, `"1h30m"`, `"reports"`; `None` for anything else.
fn ttl_from_str(s: &str) -> Option<TtlSpec> {
    let s = s.trim();
    let first = s.chars().next()?;
    if first.is_ascii_digit() {
        return duration_secs(s).map(TtlSpec::Secs);
    }
    if !first.is_ascii_alphabetic()
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return None;
    }
    let name = s.to_ascii_lowercase().replace('-', "_");
    Some(match name.as_str() {
        "session" | "sessions" => TtlSpec::Session,
        "api" => TtlSpec::Api,
        "user_preferences" | "preferences" => TtlSpec::UserPreferences,
        _ => TtlSpec::Named(name),
    })
}

/// Whole seconds (`"300"`) or a sequence of `<number><unit>` with units `s m h d`.
fn duration_secs(s: &str) -> Option<u64> {
    if s.chars().all(|c| c.is_ascii_digit()) {
        return s.parse().ok();
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return None,
        };
        let n: u64 = number.parse().ok()?;
        total = total.checked_add(n.checked_mul(unit)?)?;
        number.clear();
    }
    number.is_empty().then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(which: Which, tokens: proc_macro2::TokenStream) -> syn::Result<Options> {
        use syn::parse::Parser;
        (|input: ParseStream<'_>| Options::parse(which, input)).parse2(tokens)
    }

    fn error(which: Which, tokens: proc_macro2::TokenStream) -> String {
        match options(which, tokens) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn options_parse_and_mistakes_are_named() {
        let o = options(
            Which::Cached,
            quote::quote!(
                key = "k:{id}",
                ttl = 90,
                tier = "l1",
                jitter = "10%",
                cache_none = true,
                crate = "sdk"
            ),
        )
        .unwrap();
        assert_eq!(o.ttl.as_ref().map(|(t, _)| t), Some(&TtlSpec::Secs(90)));
        assert_eq!(o.tier(), Tier::L1);
        assert_eq!(o.jitter, Some(0.1));
        assert!(o.krate.is_some());
        let evict = options(Which::Evict, quote::quote!(key = ["a", "b"], before = true)).unwrap();
        assert_eq!(evict.keys.len(), 2);

        assert!(error(Which::Cached, quote::quote!(ttl = "api")).contains("needs a key pattern"));
        assert!(error(Which::Cached, quote::quote!(key = ["a", "b"])).contains("one key pattern"));
        assert!(error(Which::Put, quote::quote!(key = "a", before = true))
            .contains("unknown option `before`"));
        assert!(error(Which::Cached, quote::quote!(key = "a", key = "b"))
            .contains("duplicate option `key`"));
        assert!(error(Which::Cached, quote::quote!(key = "a", ttl = 0)).contains("out of range"));
        assert!(
            error(Which::Cached, quote::quote!(key = "a", ttl = "366d")).contains("out of range")
        );
        assert!(error(Which::Cached, quote::quote!(key = "a", jitter = 0.9)).contains("jitter"));
        assert!(
            error(Which::Cached, quote::quote!(key = "a", tier = "l2")).contains("unknown tier")
        );
    }

    #[test]
    fn origin_names() {
        let o = options(Which::Cached, quote::quote!(key = "a", origin = "products")).unwrap();
        assert_eq!(o.origin.map(|(n, _)| n).as_deref(), Some("products"));
        assert!(error(Which::Cached, quote::quote!(key = "a", origin = ""))
            .contains("must not be empty"));
        assert!(error(Which::Put, quote::quote!(key = "a", origin = "db"))
            .contains("unknown option `origin`"));
    }

    #[test]
    fn stampede_modes() {
        let o = options(
            Which::Cached,
            quote::quote!(key = "a", stampede = "distributed"),
        )
        .unwrap();
        assert!(o.distributed() && o.resilient());
        let o = options(Which::Cached, quote::quote!(key = "a", stampede = "local")).unwrap();
        assert!(!o.distributed() && !o.resilient());
        assert!(
            error(Which::Cached, quote::quote!(key = "a", stampede = "global"))
                .contains("unknown `stampede` mode")
        );
        assert!(
            error(Which::Put, quote::quote!(key = "a", stampede = "local"))
                .contains("unknown option `stampede`")
        );
    }

    #[test]
    fn durations() {
        assert_eq!(duration_ms("100ms"), Some(100));
        assert_eq!(duration_ms("2s"), Some(2000));
        assert_eq!(duration_ms("1h30m"), Some(5_400_000));
        assert_eq!(duration_ms("1m30s"), Some(90_000));
        assert_eq!(duration_ms("1d"), Some(86_400_000));
        assert_eq!(duration_ms("100"), None);
        assert_eq!(duration_ms("1 hour"), None);
        assert_eq!(duration_ms("1.5s"), None);
        assert_eq!(duration_ms(""), None);
        let o = options(
            Which::Cached,
            quote::quote!(
                key = "k",
                fail_safe = "1h",
                soft_timeout = "100ms",
                hard_timeout = "2s",
                refresh_ahead = 0.8
            ),
        )
        .unwrap();
        assert_eq!(o.fail_safe.map(|d| d.0), Some(3_600_000));
        assert_eq!(o.soft_timeout.map(|d| d.0), Some(100));
        assert_eq!(o.hard_timeout.map(|d| d.0), Some(2000));
        assert_eq!(o.refresh_ahead.map(|d| d.0), Some(0.8));
        assert!(
            error(Which::Cached, quote::quote!(key = "k", refresh_ahead = 1.0))
                .contains("between 0 and 1")
        );
        assert!(
            error(Which::Cached, quote::quote!(key = "k", fail_safe = 60)).contains("in quotes")
        );
        assert!(
            error(Which::Cached, quote::quote!(key = "k", fail_safe = "0s"))
                .contains("out of range")
        );
        assert!(
            error(Which::Put, quote::quote!(key = "k", fail_safe = "1h"))
                .contains("unknown option")
        );
    }

    #[test]
    fn ttl_strings() {
        assert_eq!(ttl_from_str("api"), Some(TtlSpec::Api));
        assert_eq!(ttl_from_str("Session"), Some(TtlSpec::Session));
        assert_eq!(
            ttl_from_str("user-preferences"),
            Some(TtlSpec::UserPreferences)
        );
        assert_eq!(
            ttl_from_str("reports"),
            Some(TtlSpec::Named("reports".into()))
        );
        assert_eq!(ttl_from_str("300"), Some(TtlSpec::Secs(300)));
        assert_eq!(ttl_from_str("15m"), Some(TtlSpec::Secs(900)));
        assert_eq!(ttl_from_str("1h30m"), Some(TtlSpec::Secs(5400)));
        assert_eq!(ttl_from_str("7d"), Some(TtlSpec::Secs(604_800)));
        assert_eq!(ttl_from_str("5 minutes"), None);
        assert_eq!(ttl_from_str("15"), Some(TtlSpec::Secs(15)));
        assert_eq!(ttl_from_str("15x"), None);
        assert_eq!(ttl_from_str("1h30"), None);
        assert_eq!(ttl_from_str("1.5h"), None);
        assert_eq!(ttl_from_str(""), None);
        assert_eq!(ttl_from_str("-3"), None);
    }
}
