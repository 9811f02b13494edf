//! Key patterns: `cache:product:{id}`, `cache:{self.tenant}:user:{user.id}`.
//!
//! A placeholder names an argument (or `self`) and then, optionally, fields of it. `{{` and
//! `}}` stand for literal braces. Literal text follows the cache's key rules: no control
//! characters, at most 1024 bytes.

use syn::LitStr;

/// The longest key the cache accepts, in bytes.
const MAX_KEY_LEN: usize = 1024;

/// One `{...}`: the root name and the fields reached from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placeholder {
    pub(crate) root: String,
    pub(crate) fields: Vec<String>,
}

impl Placeholder {
    pub(crate) fn display(&self) -> String {
        let mut s = self.root.clone();
        for f in &self.fields {
            s.push('.');
            s.push_str(f);
        }
        s
    }
}

/// A parsed pattern: the literal text as a `format!` string (braces escaped, one `{}` per
/// placeholder) and the placeholders in order.
#[derive(Clone)]
pub(crate) struct Pattern {
    pub(crate) lit: LitStr,
    pub(crate) format: String,
    pub(crate) placeholders: Vec<Placeholder>,
}

impl Pattern {
    pub(crate) fn parse(lit: &LitStr) -> syn::Result<Self> {
        let err = |msg: String| syn::Error::new(lit.span(), msg);
        let text = lit.value();
        let mut format = String::new();
        let mut placeholders = Vec::new();
        let mut literal_len = 0usize;
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    format.push_str("{{");
                    literal_len += 1;
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    format.push_str("}}");
                    literal_len += 1;
                }
                '{' => {
                    let mut inner = String::new();
                    let mut closed = false;
                    for c in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        inner.push(c);
                    }
                    if !closed {
                        return Err(err(format!(
                            "unclosed placeholder `{{{inner}` in the key: close it with `}}` (write `{{{{` for a literal brace)"
                        )));
                    }
                    placeholders.push(placeholder(&inner).map_err(err)?);
                    format.push_str("{}");
                }
                '}' => {
                    return Err(err(
                        "unmatched `}` in the key: write `}}` for a literal brace".into(),
                    ))
                }
                c if c.is_control() => {
                    return Err(err(format!(
                        "the key holds the control character {c:?}: cache keys must not contain control characters"
                    )))
                }
                c => {
                    format.push(c);
                    literal_len += c.len_utf8();
                }
            }
        }
        if text.is_empty() {
            return Err(err("the key pattern is empty".into()));
        }
        if literal_len > MAX_KEY_LEN {
            return Err(err(format!(
                "the key pattern is {literal_len} bytes long: cache keys are at most {MAX_KEY_LEN} bytes"
            )));
        }
        Ok(Pattern {
            lit: lit.clone(),
            format,
            placeholders,
        })
    }
}

fn placeholder(inner: &str) -> Result<Placeholder, String> {
    let bad = || {
        format!(
            "invalid placeholder `{{{inner}}}` in the key: a placeholder names an argument, optionally followed by fields, such as `{{id}}` or `{{user.id}}`"
        )
    };
    let mut parts = inner.trim().split('.');
    let root = parts.next().filter(|r| is_ident(r)).ok_or_else(bad)?;
    let fields = parts
        .map(|f| {
            (is_ident(f) || (!f.is_empty() && f.chars().all(|c| c.is_ascii_digit())))
                .then(|| f.to_owned())
                .ok_or_else(bad)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Placeholder {
        root: root.to_owned(),
        fields,
    })
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || c == '_')
        && s != "_"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> syn::Result<Pattern> {
        Pattern::parse(&LitStr::new(s, proc_macro2::Span::call_site()))
    }

    #[test]
    fn placeholders_and_escapes() {
        let p = parse("cache:{self.tenant}:user:{user.id}:{{x}}:{pair.0}").unwrap();
        assert_eq!(p.format, "cache:{}:user:{}:{{x}}:{}");
        let names: Vec<String> = p.placeholders.iter().map(Placeholder::display).collect();
        assert_eq!(names, ["self.tenant", "user.id", "pair.0"]);
    }

    #[test]
    fn mistakes_are_errors() {
        assert!(parse("").is_err());
        assert!(parse("a:{id").is_err());
        assert!(parse("a:id}").is_err());
        assert!(parse("a:{}").is_err());
        assert!(parse("a:{a b}").is_err());
        assert!(parse("a:{0}").is_err());
        assert!(parse("a:{user.}").is_err());
        assert!(parse("a\n{id}").is_err());
        assert!(parse(&"x".repeat(1025)).is_err());
        assert!(parse(&"x".repeat(1024)).is_ok());
    }
}
