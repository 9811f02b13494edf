//! The annotated function as data: its arguments, receiver and the shape of its return type.

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{FnArg, GenericArgument, Ident, ItemFn, Pat, PathArguments, ReturnType, Type};

/// A named argument.
pub(crate) struct Arg {
    pub(crate) ident: Ident,
    pub(crate) ty: Type,
}

/// What the function returns, which decides what is cached.
pub(crate) enum Ret {
    /// No return value (`-> ()` or nothing).
    Unit(Span),
    /// `Result<T, E>` (by the last path segment's name): only `Ok` is cached.
    Result,
    /// `Option<T>`: only `Some` is cached, unless `cache_none`.
    Option,
    /// Anything else: always cached.
    Plain,
    /// `impl Trait`, or a type that cannot be named in a `let`.
    Unsupported(Span),
}

/// The function, parsed.
pub(crate) struct Func {
    pub(crate) item: ItemFn,
    pub(crate) args: Vec<Arg>,
    /// The first argument pattern that is not a plain name, if any.
    pub(crate) pattern_arg: Option<Span>,
    pub(crate) has_receiver: bool,
    /// The receiver is `&self` (not `&mut self`, `self`, or a typed `self: ...`).
    pub(crate) shared_receiver: bool,
    pub(crate) ret: Ret,
}

impl Func {
    pub(crate) fn new(item: ItemFn) -> Self {
        let mut args = Vec::new();
        let mut pattern_arg = None;
        let mut has_receiver = false;
        let mut shared_receiver = false;
        for input in &item.sig.inputs {
            match input {
                FnArg::Receiver(r) => {
                    has_receiver = true;
                    shared_receiver =
                        r.colon_token.is_none() && r.reference.is_some() && r.mutability.is_none();
                }
                FnArg::Typed(pt) => match &*pt.pat {
                    Pat::Ident(pi) if pi.subpat.is_none() => args.push(Arg {
                        ident: pi.ident.clone(),
                        ty: (*pt.ty).clone(),
                    }),
                    other => {
                        pattern_arg.get_or_insert(other.span());
                    }
                },
            }
        }
        let ret = match &item.sig.output {
            ReturnType::Default => Ret::Unit(item.sig.ident.span()),
            ReturnType::Type(_, ty) => classify(ty),
        };
        Func {
            item,
            args,
            pattern_arg,
            has_receiver,
            shared_receiver,
            ret,
        }
    }

    pub(crate) fn is_async(&self) -> bool {
        self.item.sig.asyncness.is_some()
    }

    pub(crate) fn arg(&self, name: &str) -> Option<&Arg> {
        self.args.iter().find(|a| a.ident == name)
    }

    /// `` `id`, `user` `` (and `self`), for error messages.
    pub(crate) fn arg_list(&self) -> String {
        let mut names: Vec<String> = Vec::new();
        if self.has_receiver {
            names.push("`self`".into());
        }
        names.extend(self.args.iter().map(|a| format!("`{}`", a.ident)));
        if names.is_empty() {
            "the function has no arguments".into()
        } else {
            format!("its arguments are {}", names.join(", "))
        }
    }
}

fn classify(ty: &Type) -> Ret {
    match ty {
        Type::Tuple(t) if t.elems.is_empty() => Ret::Unit(t.span()),
        Type::ImplTrait(t) => Ret::Unsupported(t.span()),
        Type::Infer(t) => Ret::Unsupported(t.span()),
        Type::Never(t) => Ret::Unit(t.span()),
        Type::Paren(p) => classify(&p.elem),
        Type::Group(g) => classify(&g.elem),
        Type::Path(p) if p.qself.is_none() => {
            let Some(last) = p.path.segments.last() else {
                return Ret::Plain;
            };
            let has_type_arg = match &last.arguments {
                PathArguments::AngleBracketed(a) => {
                    a.args.iter().any(|g| matches!(g, GenericArgument::Type(_)))
                }
                _ => false,
            };
            if !has_type_arg {
                Ret::Plain
            } else if last.ident == "Result" {
                Ret::Result
            } else if last.ident == "Option" {
                Ret::Option
            } else {
                Ret::Plain
            }
        }
        _ => Ret::Plain,
    }
}
