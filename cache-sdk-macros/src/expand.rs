//! Generates the code. Everything generated reaches the library through
//! `::cache_sdk::__private` (or `<crate>::__private` with `crate = "..."`).

use std::collections::BTreeSet;

use proc_macro2::{TokenStream, TokenTree};
use quote::{format_ident, quote, ToTokens};
use syn::parse::Parser;
use syn::{FnArg, GenericParam, Ident, ItemFn, Member, Pat, ReturnType, WherePredicate};

use crate::ast::{Func, Ret};
use crate::attr::{Options, Tier, TtlSpec, Which};
use crate::fallback;
use crate::pattern::Pattern;
use crate::valid;

/// Entry point of the three attributes.
pub(crate) fn run(which: Which, attr: TokenStream, item: TokenStream) -> TokenStream {
    let parsed = (|input: syn::parse::ParseStream<'_>| Options::parse(which, input)).parse2(attr);
    let result = parsed.and_then(|opts| {
        let fn_item: ItemFn = syn::parse2(item.clone()).map_err(|e| {
            syn::Error::new(
                e.span(),
                format!(
                    "unsupported item: {} applies to a function with a body (a free fn or a method in an impl block)",
                    which.name()
                ),
            )
        })?;
        let func = Func::new(fn_item);
        let patterns = valid::check(&opts, &func)?;
        let tags = crate::tags::check(&opts, &func)?;
        Ok(Gen {
            opts: &opts,
            func: &func,
            patterns: &patterns,
            tags: &tags,
        }
        .expand())
    });
    result.unwrap_or_else(|e| fallback::emit(item, &e))
}

struct Gen<'a> {
    opts: &'a Options,
    func: &'a Func,
    patterns: &'a [Pattern],
    /// The `tags` option's patterns (empty without it).
    tags: &'a [Pattern],
}

impl Gen<'_> {
    fn private(&self) -> TokenStream {
        match &self.opts.krate {
            Some(path) => quote!(#path::__private),
            None => quote!(::cache_sdk::__private),
        }
    }

    /// `&Cache`: the `cache` option, or the process-global cache.
    fn cache_ref(&self) -> TokenStream {
        let p = self.private();
        match &self.opts.cache {
            Some(expr) => quote!(&(#expr)),
            None => quote!(#p::global()),
        }
    }

    /// The key as a `String` expression.
    fn key(&self, pattern: &Pattern) -> TokenStream {
        let p = self.private();
        let span = pattern.lit.span();
        let fmt = syn::LitStr::new(&pattern.format, span);
        let parts = pattern.placeholders.iter().map(|ph| {
            let root = Ident::new(&ph.root, span);
            let fields = ph.fields.iter().map(|f| match f.parse::<u32>() {
                Ok(i) => Member::Unnamed(syn::Index { index: i, span }),
                Err(_) => Member::Named(Ident::new(f, span)),
            });
            quote::quote_spanned!(span=> #p::part(&(#root #(.#fields)*)))
        });
        quote!(::std::format!(#fmt #(, #parts)*))
    }

    /// The tags as a `Vec<String>` expression, when there are any.
    fn tag_list(&self) -> Option<TokenStream> {
        (!self.tags.is_empty()).then(|| crate::tags::list(self.tags, |p| self.key(p)))
    }

    fn ttl_spec(&self) -> TokenStream {
        let p = self.private();
        match self.opts.ttl.as_ref().map(|(t, _)| t) {
            None | Some(TtlSpec::Api) => quote!(#p::TtlSpec::Api),
            Some(TtlSpec::Session) => quote!(#p::TtlSpec::Session),
            Some(TtlSpec::UserPreferences) => quote!(#p::TtlSpec::UserPreferences),
            Some(TtlSpec::Named(name)) => quote!(#p::TtlSpec::Named(#name)),
            Some(TtlSpec::Secs(s)) => quote!(#p::TtlSpec::Secs(#s)),
        }
    }

    fn jitter(&self) -> TokenStream {
        let j = self.opts.jitter.unwrap_or(0.0);
        quote!(#j)
    }

    /// How the return value maps onto "cache it or not".
    fn mode(&self) -> TokenStream {
        let p = self.private();
        let none_too = self.opts.cache_none.as_ref().is_some_and(|b| b.value);
        match self.func.ret {
            Ret::Result => quote!(#p::ResultMode),
            Ret::Option if !none_too => quote!(#p::OptionMode),
            _ => quote!(#p::ValueMode),
        }
    }

    fn ret_type(&self) -> TokenStream {
        match &self.func.item.sig.output {
            ReturnType::Default => quote!(()),
            ReturnType::Type(_, ty) => ty.to_token_stream(),
        }
    }

    /// The original body as a value of the return type: an awaited async block, or a
    /// called closure for a sync fn.
    fn run_body(&self) -> TokenStream {
        let block = &self.func.item.block;
        let ret = self.ret_type();
        if self.func.is_async() {
            quote!(async move {
                let __cache_sdk_value: #ret = #block;
                __cache_sdk_value
            }
            .await)
        } else {
            quote!((move || -> #ret #block)())
        }
    }

    fn expand(&self) -> TokenStream {
        match self.opts.which {
            Which::Cached => self.cached(),
            Which::Evict => self.evict(),
            Which::Put => self.put(),
        }
    }

    fn cached(&self) -> TokenStream {
        let p = self.private();
        let block = &self.func.item.block;
        let ret = self.ret_type();
        let key = self.key(&self.patterns[0]);
        let (spec, jitter, mode) = (self.ttl_spec(), self.jitter(), self.mode());
        let body = match (self.opts.tier(), self.func.is_async()) {
            (Tier::Both, _) => {
                let cache = self.cache_ref();
                // The body takes `self` for the whole call; a cache reached through a
                // `&mut self` or `self` receiver is cloned (an `Arc` clone) first.
                let mut uses_self = BTreeSet::new();
                idents(cache.clone(), &mut uses_self);
                let cache = if self.func.has_receiver
                    && !self.func.shared_receiver
                    && uses_self.contains("self")
                {
                    quote!(&#p::Cache::clone(#cache))
                } else {
                    cache
                };
                if self.opts.resilient() {
                    let opts = self.load_options();
                    let opts = match self.tag_list() {
                        Some(list) => quote!(#opts.tags(#list)),
                        None => opts,
                    };
                    let call = match (self.opts.hard_timeout.is_some(), self.opts.origin.is_some())
                    {
                        (true, true) => quote!(#p::cached_guarded_deadline),
                        (false, true) => quote!(#p::cached_guarded),
                        (true, false) => quote!(#p::cached_deadline),
                        (false, false) => quote!(#p::cached_resilient),
                    };
                    // Owned: the body, moved into a task, may own what the cache was read from.
                    return self.wrap(quote! {
                        let __cache_sdk_owned: #p::Cache = #p::Cache::clone(#cache);
                        let __cache_sdk_cache: &#p::Cache = &__cache_sdk_owned;
                        let __cache_sdk_key: ::std::string::String = #key;
                        #call::<#mode, _, _, _>(
                            __cache_sdk_cache,
                            &__cache_sdk_key,
                            #p::ttl(__cache_sdk_cache, #spec, #jitter),
                            #opts,
                            move || async move {
                                let __cache_sdk_value: #ret = #block;
                                __cache_sdk_value
                            },
                        )
                        .await
                    });
                }
                if let Some(list) = self.tag_list() {
                    return self.wrap(quote! {
                        let __cache_sdk_cache: &#p::Cache = #cache;
                        let __cache_sdk_key: ::std::string::String = #key;
                        let __cache_sdk_tags: ::std::vec::Vec<::std::string::String> = #list;
                        #p::cached_tagged::<#mode, _, _, _>(
                            __cache_sdk_cache,
                            &__cache_sdk_key,
                            #p::ttl(__cache_sdk_cache, #spec, #jitter),
                            &__cache_sdk_tags,
                            move || async move {
                                let __cache_sdk_value: #ret = #block;
                                __cache_sdk_value
                            },
                        )
                        .await
                    });
                }
                quote! {
                    let __cache_sdk_cache: &#p::Cache = #cache;
                    let __cache_sdk_key: ::std::string::String = #key;
                    #p::cached::<#mode, _, _, _>(
                        __cache_sdk_cache,
                        &__cache_sdk_key,
                        #p::ttl(__cache_sdk_cache, #spec, #jitter),
                        move || async move {
                            let __cache_sdk_value: #ret = #block;
                            __cache_sdk_value
                        },
                    )
                    .await
                }
            }
            (Tier::L1, true) => quote! {
                let __cache_sdk_key: ::std::string::String = #key;
                #p::local()
                    .cached::<#mode, _, _, _>(&__cache_sdk_key, #spec, #jitter, move || async move {
                        let __cache_sdk_value: #ret = #block;
                        __cache_sdk_value
                    })
                    .await
            },
            (Tier::L1, false) => quote! {
                let __cache_sdk_key: ::std::string::String = #key;
                #p::local().cached_sync::<#mode, _, _>(&__cache_sdk_key, #spec, #jitter, move || -> #ret #block)
            },
        };
        self.wrap(body)
    }

    /// The function with `body`, and its companions.
    fn wrap(&self, body: TokenStream) -> TokenStream {
        let ItemFn {
            attrs, vis, sig, ..
        } = &self.func.item;
        let invalidate = self.invalidate_companion();
        let refresh = self.refresh_companion();
        let invalidate_tags = self.tag_list().map(|list| {
            crate::tags::companion(
                self.func,
                self.tags,
                &self.private(),
                self.cache_ref(),
                list,
                &self.cfg_attrs(),
                |used| filter_generics(&self.func.item.sig.generics, used),
            )
        });
        quote! {
            #(#attrs)*
            #vis #sig {
                #body
            }
            #invalidate
            #refresh
            #invalidate_tags
        }
    }

    /// The `LoadOptions` the resilience options ask for (nothing else: the cache's
    /// defaults do not apply to a `#[cached]` function).
    fn load_options(&self) -> TokenStream {
        let p = self.private();
        let ms = |d: Option<(u64, proc_macro2::Span)>, setter: &str| {
            d.map(|(ms, _)| {
                let setter = Ident::new(setter, proc_macro2::Span::call_site());
                quote!(.#setter(::std::time::Duration::from_millis(#ms)))
            })
        };
        let fail_safe = ms(self.opts.fail_safe, "fail_safe");
        let soft = ms(self.opts.soft_timeout, "soft_timeout");
        let hard = ms(self.opts.hard_timeout, "hard_timeout");
        let refresh = self
            .opts
            .refresh_ahead
            .map(|(f, _)| quote!(.refresh_ahead(#f)));
        let stampede = self
            .opts
            .distributed()
            .then(|| quote!(.stampede(#p::Stampede::Distributed)));
        let origin = self
            .opts
            .origin
            .as_ref()
            .map(|(name, _)| quote!(.origin(#name)));
        quote!(#p::LoadOptions::new() #fail_safe #soft #hard #refresh #stampede #origin)
    }

    /// `<name>_invalidate(<key arguments>)`: drops the cached value for those arguments.
    fn invalidate_companion(&self) -> TokenStream {
        let p = self.private();
        let sig = &self.func.item.sig;
        let vis = &self.func.item.vis;
        let name = format_ident!("{}_invalidate", sig.ident);
        let cfgs = self.cfg_attrs();
        let doc = format!(
            "Removes the value that `{}` cached under `{}` for these arguments. Generated by `#[cached]`.",
            sig.ident,
            self.patterns[0].lit.value()
        );
        let key = self.key(&self.patterns[0]);
        let roots: BTreeSet<&str> = self.patterns[0]
            .placeholders
            .iter()
            .map(|ph| ph.root.as_str())
            .collect();
        let args: Vec<_> = self
            .func
            .args
            .iter()
            .filter(|a| roots.contains(a.ident.to_string().as_str()))
            .collect();
        let receiver = self.func.has_receiver.then(|| quote!(&self,));
        let params = args.iter().map(|a| {
            let (ident, ty) = (&a.ident, &a.ty);
            quote!(#ident: #ty)
        });
        let mut used = BTreeSet::new();
        for a in &args {
            idents(a.ty.to_token_stream(), &mut used);
        }
        let (generics, where_clause) = filter_generics(&sig.generics, used);
        let body_and_ret = match (self.opts.tier(), self.func.is_async()) {
            (Tier::Both, _) => {
                let cache = self.cache_ref();
                quote! {
                    async fn #name #generics(#receiver #(#params),*) -> #p::Result<()> #where_clause {
                        let __cache_sdk_cache: &#p::Cache = #cache;
                        let __cache_sdk_key: ::std::string::String = #key;
                        #p::invalidate(__cache_sdk_cache, &__cache_sdk_key).await
                    }
                }
            }
            (Tier::L1, true) => quote! {
                async fn #name #generics(#receiver #(#params),*) -> #p::Result<()> #where_clause {
                    let __cache_sdk_key: ::std::string::String = #key;
                    #p::local().invalidate(&__cache_sdk_key);
                    ::core::result::Result::Ok(())
                }
            },
            (Tier::L1, false) => quote! {
                fn #name #generics(#receiver #(#params),*) #where_clause {
                    let __cache_sdk_key: ::std::string::String = #key;
                    #p::local().invalidate(&__cache_sdk_key);
                }
            },
        };
        quote! {
            #[doc = #doc]
            #[allow(dead_code)]
            #(#cfgs)*
            #vis #body_and_ret
        }
    }

    /// `<name>_refresh(<arguments>)`: drops the cached value, then calls the function, so
    /// the body runs and its value is cached afresh.
    fn refresh_companion(&self) -> TokenStream {
        let p = self.private();
        let item = &self.func.item;
        let mut sig = item.sig.clone();
        let name = sig.ident.clone();
        sig.ident = format_ident!("{}_refresh", name);
        for input in &mut sig.inputs {
            if let FnArg::Typed(pt) = input {
                pt.attrs.clear();
                if let Pat::Ident(pi) = &mut *pt.pat {
                    pi.mutability = None;
                    pi.by_ref = None;
                }
            }
        }
        let vis = &item.vis;
        let cfgs = self.cfg_attrs();
        let doc = format!(
            "Calls `{name}` without reading the cache: drops the value cached for these arguments, \
             then runs `{name}`, which caches its fresh value. Generated by `#[cached]`."
        );
        let key = self.key(&self.patterns[0]);
        let forget = match self.opts.tier() {
            Tier::Both => {
                let cache = self.cache_ref();
                quote! {
                    let __cache_sdk_cache: &#p::Cache = #cache;
                    let __cache_sdk_key: ::std::string::String = #key;
                    #p::forget(__cache_sdk_cache, &__cache_sdk_key).await;
                }
            }
            Tier::L1 => quote! {
                let __cache_sdk_key: ::std::string::String = #key;
                #p::local().invalidate(&__cache_sdk_key);
            },
        };
        let args = self.func.args.iter().map(|a| &a.ident);
        let call = if self.func.has_receiver {
            quote!(Self::#name(self, #(#args),*))
        } else {
            quote!(#name(#(#args),*))
        };
        let call = if self.func.is_async() {
            quote!(#call.await)
        } else {
            call
        };
        quote! {
            #[doc = #doc]
            #[allow(dead_code)]
            #(#cfgs)*
            #vis #sig {
                {
                    #forget
                }
                #call
            }
        }
    }

    fn cfg_attrs(&self) -> Vec<&syn::Attribute> {
        self.func
            .item
            .attrs
            .iter()
            .filter(|a| a.path().is_ident("cfg"))
            .collect()
    }

    fn evict(&self) -> TokenStream {
        let p = self.private();
        let ItemFn {
            attrs, vis, sig, ..
        } = &self.func.item;
        let ret = self.ret_type();
        let keys: Vec<TokenStream> = self.patterns.iter().map(|pat| self.key(pat)).collect();
        let n = keys.len();
        let mode = self.mode();
        let tags = self.tag_list().map(
            |list| quote!(let __cache_sdk_tags: ::std::vec::Vec<::std::string::String> = #list;),
        );
        let evict_tags = tags
            .as_ref()
            .map(|_| quote!(#p::evict_tags(&__cache_sdk_cache, &__cache_sdk_tags).await;));
        let (setup, evict) = match self.opts.tier() {
            Tier::Both => {
                let cache = self.cache_ref();
                (
                    quote!(let __cache_sdk_cache: #p::Cache = #p::Cache::clone(#cache); #tags),
                    quote!(#p::evict(&__cache_sdk_cache, &__cache_sdk_keys).await; #evict_tags),
                )
            }
            Tier::L1 => (quote!(), quote!(#p::evict_local(&__cache_sdk_keys);)),
        };
        let before = self.opts.before.as_ref().is_some_and(|b| b.value);
        let body = self.run_body();
        let run = if before {
            quote! {
                #evict
                #body
            }
        } else {
            quote! {
                let __cache_sdk_ret: #ret = #body;
                if #p::succeeded::<#mode, _>(&__cache_sdk_ret) {
                    #evict
                }
                __cache_sdk_ret
            }
        };
        quote! {
            #(#attrs)*
            #vis #sig {
                let __cache_sdk_keys: [::std::string::String; #n] = [#(#keys),*];
                #setup
                #run
            }
        }
    }

    fn put(&self) -> TokenStream {
        let p = self.private();
        let ItemFn {
            attrs, vis, sig, ..
        } = &self.func.item;
        let ret = self.ret_type();
        let key = self.key(&self.patterns[0]);
        let (spec, jitter, mode) = (self.ttl_spec(), self.jitter(), self.mode());
        let (setup, write) = match self.opts.tier() {
            Tier::Both => {
                let cache = self.cache_ref();
                let (tags, put) = match self.tag_list() {
                    Some(list) => (
                        quote!(let __cache_sdk_tags: ::std::vec::Vec<::std::string::String> = #list;),
                        quote!(#p::put_tagged(
                            &__cache_sdk_cache,
                            &__cache_sdk_key,
                            __cache_sdk_value,
                            #p::ttl(&__cache_sdk_cache, #spec, #jitter),
                            &__cache_sdk_tags,
                        )
                        .await;),
                    ),
                    None => (
                        quote!(),
                        quote!(#p::put(
                            &__cache_sdk_cache,
                            &__cache_sdk_key,
                            __cache_sdk_value,
                            #p::ttl(&__cache_sdk_cache, #spec, #jitter),
                        )
                        .await;),
                    ),
                };
                (
                    quote!(let __cache_sdk_cache: #p::Cache = #p::Cache::clone(#cache); #tags),
                    put,
                )
            }
            Tier::L1 => (
                quote!(),
                quote!(#p::local().put(&__cache_sdk_key, __cache_sdk_value, #spec, #jitter);),
            ),
        };
        let body = self.run_body();
        quote! {
            #(#attrs)*
            #vis #sig {
                let __cache_sdk_key: ::std::string::String = #key;
                #setup
                let __cache_sdk_ret: #ret = #body;
                if let ::core::option::Option::Some(__cache_sdk_value) =
                    #p::success::<#mode, _>(&__cache_sdk_ret)
                {
                    #write
                }
                __cache_sdk_ret
            }
        }
    }
}

/// Every identifier (and lifetime name) in `tokens`.
pub(crate) fn idents(tokens: TokenStream, out: &mut BTreeSet<String>) {
    for tt in tokens {
        match tt {
            TokenTree::Ident(i) => {
                out.insert(i.to_string());
            }
            TokenTree::Group(g) => idents(g.stream(), out),
            _ => {}
        }
    }
}

fn param_name(p: &GenericParam) -> String {
    match p {
        GenericParam::Lifetime(l) => l.lifetime.ident.to_string(),
        GenericParam::Type(t) => t.ident.to_string(),
        GenericParam::Const(c) => c.ident.to_string(),
    }
}

/// The generics of the invalidate companion: the parameters its argument types use (and
/// those their bounds use), and the where-predicates that mention only those.
fn filter_generics(
    generics: &syn::Generics,
    mut used: BTreeSet<String>,
) -> (TokenStream, TokenStream) {
    let all: BTreeSet<String> = generics.params.iter().map(param_name).collect();
    let predicates: Vec<&WherePredicate> = generics
        .where_clause
        .iter()
        .flat_map(|w| w.predicates.iter())
        .collect();
    loop {
        let before = used.len();
        for param in &generics.params {
            if used.contains(&param_name(param)) {
                idents(param.to_token_stream(), &mut used);
            }
        }
        for pred in &predicates {
            let mut mentioned = BTreeSet::new();
            let bounded = match pred {
                WherePredicate::Type(t) => t.bounded_ty.to_token_stream(),
                WherePredicate::Lifetime(l) => l.lifetime.to_token_stream(),
                _ => TokenStream::new(),
            };
            idents(bounded, &mut mentioned);
            if mentioned
                .iter()
                .any(|m| all.contains(m) && used.contains(m))
            {
                idents(pred.to_token_stream(), &mut used);
            }
        }
        if used.len() == before {
            break;
        }
    }
    let kept: Vec<&GenericParam> = generics
        .params
        .iter()
        .filter(|p| used.contains(&param_name(p)))
        .collect();
    let kept_preds: Vec<&&WherePredicate> = predicates
        .iter()
        .filter(|pred| {
            let mut mentioned = BTreeSet::new();
            idents(pred.to_token_stream(), &mut mentioned);
            mentioned
                .iter()
                .all(|m| !all.contains(m) || used.contains(m))
        })
        .collect();
    let params = if kept.is_empty() {
        TokenStream::new()
    } else {
        quote!(<#(#kept),*>)
    };
    let where_clause = if kept_preds.is_empty() {
        TokenStream::new()
    } else {
        quote!(where #(#kept_preds),*)
    };
    (params, where_clause)
}
