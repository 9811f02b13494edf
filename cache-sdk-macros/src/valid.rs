//! Checks that the options fit the function, before anything is generated.

use quote::ToTokens;
use syn::spanned::Spanned;

use crate::ast::{Func, Ret};
use crate::attr::{Options, Tier, Which};
use crate::pattern::Pattern;

/// Collects every mistake, so that the user sees them all at once.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }
}

/// Checks `opts` against `func`; returns the parsed key patterns.
pub(crate) fn check(opts: &Options, func: &Func) -> syn::Result<Vec<Pattern>> {
    let mut errors = Errors::default();
    let name = opts.which.name();
    let sig = &func.item.sig;

    if let Some(span) = func.pattern_arg {
        errors.push(syn::Error::new(
            span,
            format!("unsupported signature: {name} needs every argument to be a plain name (`id: u64`), not a pattern"),
        ));
    }
    if !func.is_async() && opts.tier() == Tier::Both {
        let what = match opts.which {
            Which::Cached => "cache the values of",
            Which::Evict => "evict keys for",
            Which::Put => "write the values of",
        };
        errors.push(syn::Error::new(
            sig.fn_token.span,
            format!(
                "unsupported signature: {name} can {what} a sync fn only in this process's local store, \
                 because Redis is reached asynchronously: add `tier = \"l1\"`, or make the fn `async`"
            ),
        ));
    }
    if let (Some(cache), Tier::L1) = (&opts.cache, opts.tier()) {
        errors.push(syn::Error::new(
            cache.span(),
            "`cache` does not apply with `tier = \"l1\"`: such values live in the process's local store, \
             not in a `Cache`; remove one of the two options",
        ));
    }
    match (&func.ret, opts.which) {
        (Ret::Unit(span), Which::Cached | Which::Put) => errors.push(syn::Error::new(
            *span,
            format!("unsupported signature: {name} needs a function that returns a value; there is nothing to cache"),
        )),
        (Ret::Unsupported(span), _) => errors.push(syn::Error::new(
            *span,
            format!("unsupported signature: {name} needs a return type that can be named, such as `Product` or `Result<Product, AppError>`, not `impl Trait`"),
        )),
        _ => {}
    }
    if let Some(flag) = &opts.cache_none {
        if !matches!(func.ret, Ret::Option) {
            errors.push(syn::Error::new(
                flag.span(),
                "`cache_none` applies only to functions that return `Option<T>`",
            ));
        }
    }

    if let Some(span) = opts.resilient_span() {
        check_resilience(opts, func, span, &mut errors);
    }

    let mut patterns = Vec::new();
    for lit in &opts.keys {
        let pattern = match Pattern::parse(lit) {
            Ok(p) => p,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        for ph in &pattern.placeholders {
            let known = if ph.root == "self" {
                func.has_receiver
            } else {
                func.arg(&ph.root).is_some()
            };
            if !known {
                errors.push(syn::Error::new(
                    lit.span(),
                    format!(
                        "unknown placeholder `{{{}}}` in the key: the function has no argument `{}`; {}",
                        ph.display(),
                        ph.root,
                        func.arg_list()
                    ),
                ));
            }
        }
        patterns.push(pattern);
    }
    match errors.0 {
        Some(e) => Err(e),
        None => Ok(patterns),
    }
}

/// `fail_safe`, `soft_timeout`, `hard_timeout`, `refresh_ahead`: the body runs as a task of
/// the cache (it may finish after the caller stopped waiting), so it needs the cache, an
/// async fn, owned arguments, and for `hard_timeout` a return type that can say "timed out".
fn check_resilience(opts: &Options, func: &Func, span: proc_macro2::Span, errors: &mut Errors) {
    if opts.tier() == Tier::L1 {
        errors.push(syn::Error::new(
            span,
            "`fail_safe`, `soft_timeout`, `hard_timeout` and `refresh_ahead` need the `Cache` (L1 and Redis): remove `tier = \"l1\"`",
        ));
        return;
    }
    if let (Some((soft, s)), None) = (opts.soft_timeout, opts.fail_safe) {
        let _ = soft;
        errors.push(syn::Error::new(
            s,
            "`soft_timeout` answers with the stale value while the body finishes in the background: it needs `fail_safe = \"...\"` too",
        ));
    }
    if let (Some((soft, s)), Some((hard, _))) = (opts.soft_timeout, opts.hard_timeout) {
        if soft >= hard {
            errors.push(syn::Error::new(
                s,
                "`soft_timeout` must be shorter than `hard_timeout`",
            ));
        }
    }
    if let Some((_, s)) = opts.hard_timeout {
        let none_too = opts.cache_none.as_ref().is_some_and(|b| b.value);
        let fits =
            matches!(func.ret, Ret::Result) || (matches!(func.ret, Ret::Option) && !none_too);
        if !fits {
            errors.push(syn::Error::new(
                s,
                "`hard_timeout` needs a function returning `Result<T, E>` (with `E: From<cache_sdk::LoadTimeout>`) or `Option<T>`: past the timeout, with no stale value, there is no value to return",
            ));
        }
    }
    if let Some((_, s)) = &opts.origin {
        let none_too = opts.cache_none.as_ref().is_some_and(|b| b.value);
        let fits =
            matches!(func.ret, Ret::Result) || (matches!(func.ret, Ret::Option) && !none_too);
        if !fits {
            errors.push(syn::Error::new(
                *s,
                "`origin` needs a function returning `Result<T, E>` (with `E: From<cache_sdk::OriginUnavailable>`) or `Option<T>`: while the origin's circuit breaker is open, with no stale value, there is no value to return",
            ));
        }
    }
    if let Some(recv) = func.item.sig.receiver() {
        if recv.reference.is_some() {
            errors.push(syn::Error::new(
                recv.span(),
                "unsupported signature: with `fail_safe`, timeouts or `refresh_ahead` the body runs as a background task, so it cannot borrow `self`: take owned arguments",
            ));
        }
    }
    for arg in &func.item.sig.inputs {
        if let syn::FnArg::Typed(t) = arg {
            if borrows(&t.ty) {
                errors.push(syn::Error::new(
                    t.ty.span(),
                    "unsupported signature: with `fail_safe`, timeouts or `refresh_ahead` the body runs as a background task, so arguments must be owned (`'static`), not borrowed: pass an owned value, such as an `Arc` or a clone",
                ));
            }
        }
    }
}

/// Whether a type holds a reference.
fn borrows(ty: &syn::Type) -> bool {
    match ty {
        syn::Type::Reference(_) => true,
        other => other
            .to_token_stream()
            .into_iter()
            .any(|t| matches!(&t, proc_macro2::TokenTree::Punct(p) if p.as_char() == '&' || p.as_char() == '\'')),
    }
}
