//! Checks that the options fit the function, before anything is generated.

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
