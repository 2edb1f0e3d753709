//! Parsing `key = value` attribute arguments, and turning each value into typed tokens for the
//! registration, with errors at the offending token.

use proc_macro2::{Literal, Span, TokenStream};
use quote::{quote, quote_spanned, ToTokens};
use syn::parse::Parser;
use syn::spanned::Spanned;
use syn::{Expr, ExprArray, ExprLit, Lit, LitBool, LitInt, LitStr, Path};

/// One attribute value, as written.
pub enum Value {
    /// A string (may hold placeholders).
    Str(LitStr),
    /// A list of strings.
    List(Vec<LitStr>, Span),
    /// A bare word, e.g. `orderly`.
    Word(syn::Ident),
    /// An integer literal.
    Int(LitInt),
    /// A boolean literal.
    Bool(LitBool),
    /// Any other expression: each key says what it takes instead.
    Other(Box<Expr>),
}

impl Value {
    pub fn span(&self) -> Span {
        match self {
            Value::Str(s) => s.span(),
            Value::List(_, s) => *s,
            Value::Word(w) => w.span(),
            Value::Int(i) => i.span(),
            Value::Bool(b) => b.span(),
            Value::Other(e) => e.span(),
        }
    }

    /// The string, when the value is a string holding a `${..}` placeholder: it is resolved
    /// from configuration at start-up, so only then can it be parsed.
    pub fn placeholder(&self) -> Option<&LitStr> {
        match self {
            Value::Str(s) if s.value().contains("${") => Some(s),
            _ => None,
        }
    }

    /// The value as one word: a word, a string that is not a placeholder (as
    /// `model = "orderly"`), or the text of any other single value; `None` for a list or a
    /// placeholder.
    pub fn word(&self) -> Option<String> {
        match self {
            Value::Word(w) => Some(w.to_string()),
            Value::Str(s) if self.placeholder().is_none() => Some(s.value()),
            Value::Str(_) | Value::List(..) => None,
            Value::Int(i) => Some(i.to_string()),
            Value::Bool(b) => Some(b.value.to_string()),
            Value::Other(e) => Some(e.to_token_stream().to_string()),
        }
    }
}

/// The parsed arguments, in order.
pub struct Args(pub Vec<(String, Value)>);

impl Args {
    /// Parses `a = 1, b = "x", c = [..]`, rejecting keys outside `allowed` and keys given twice.
    pub fn parse(tokens: TokenStream, allowed: &[&str]) -> syn::Result<Self> {
        let mut out: Vec<(String, Value)> = Vec::new();
        let parser = syn::meta::parser(|meta| {
            let key = meta
                .path
                .get_ident()
                .map(ToString::to_string)
                .unwrap_or_default();
            if !allowed.contains(&key.as_str()) {
                return Err(syn::Error::new_spanned(
                    &meta.path,
                    format!(
                        "unknown key `{}`; expected one of: {}",
                        path_text(&meta.path),
                        allowed.join(", ")
                    ),
                ));
            }
            if out.iter().any(|(k, _)| *k == key) {
                return Err(syn::Error::new_spanned(
                    &meta.path,
                    format!("`{key}` is given twice"),
                ));
            }
            let expr: Expr = meta.value()?.parse()?;
            let value = to_value(expr)?;
            out.push((key, value));
            Ok(())
        });
        parser.parse2(tokens)?;
        Ok(Args(out))
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

fn path_text(path: &Path) -> String {
    path.segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect::<Vec<_>>()
        .join("::")
}

fn to_value(expr: Expr) -> syn::Result<Value> {
    Ok(match expr {
        Expr::Lit(ExprLit { lit, .. }) => match lit {
            Lit::Str(s) => Value::Str(s),
            Lit::Int(i) => Value::Int(i),
            Lit::Bool(b) => Value::Bool(b),
            other => Value::Other(Box::new(Expr::Lit(ExprLit {
                attrs: Vec::new(),
                lit: other,
            }))),
        },
        Expr::Path(p) => match p.path.get_ident().cloned() {
            Some(ident) if p.qself.is_none() => Value::Word(ident),
            _ => Value::Other(Box::new(Expr::Path(p))),
        },
        Expr::Array(ExprArray { elems, .. }) if !elems.is_empty() => {
            let span = elems.span();
            let mut list = Vec::new();
            for e in elems {
                match e {
                    Expr::Lit(ExprLit {
                        lit: Lit::Str(s), ..
                    }) => list.push(s),
                    other => return Err(syn::Error::new_spanned(other, "expected a string")),
                }
            }
            Value::List(list, span)
        }
        Expr::Array(a) => return Err(syn::Error::new_spanned(a, "the list is empty")),
        other => Value::Other(Box::new(other)),
    })
}

/// Collects every error of an attribute, so that one expansion reports them all.
#[derive(Default)]
pub struct Errors(Option<syn::Error>);

impl Errors {
    /// The value of `r`, or `None` after keeping its error.
    pub fn take<T>(&mut self, r: syn::Result<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.push(e);
                None
            }
        }
    }

    pub fn push(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }

    pub fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

/// `AttributeValue::Placeholder("...")`, spanned at the string.
pub fn placeholder(s: &LitStr) -> TokenStream {
    quote_spanned! {s.span()=> ::mq_starter::__private::AttributeValue::Placeholder(#s) }
}

fn literal(span: Span, value: TokenStream) -> TokenStream {
    quote_spanned! {span=> ::mq_starter::__private::AttributeValue::Literal(#value) }
}

/// The unsigned integer types of registrations.
#[derive(Clone, Copy)]
pub enum UInt {
    U32,
    Usize,
}

/// An integer key: an integer literal in `min..=max`, or a placeholder. `max` is at most
/// `u32::MAX`, so a `usize` fits every target.
pub fn integer(value: &Value, key: &str, ty: UInt, min: u32, max: u32) -> syn::Result<TokenStream> {
    if let Some(s) = value.placeholder() {
        return Ok(placeholder(s));
    }
    let type_name = match ty {
        UInt::U32 => "u32",
        UInt::Usize => "usize",
    };
    let range = || format!("`{key}` must be an integer from {min} to {max}");
    let lit = match value {
        Value::Int(lit) => lit,
        // `-1`: a number, but out of range.
        Value::Other(e) if matches!(&**e, Expr::Unary(u) if matches!(u.op, syn::UnOp::Neg(_)) && matches!(&*u.expr, Expr::Lit(ExprLit { lit: Lit::Int(_), .. }))) =>
        {
            return Err(syn::Error::new_spanned(e, range()));
        }
        other => {
            return Err(syn::Error::new(
                other.span(),
                format!(
                    "`{key}` takes an integer, e.g. `{key} = 4`, or a \"${{...}}\" placeholder"
                ),
            ))
        }
    };
    if !lit.suffix().is_empty() && lit.suffix() != type_name {
        return Err(syn::Error::new_spanned(
            lit,
            format!("`{key}` is a {type_name}; write the number without a suffix"),
        ));
    }
    let n = lit
        .base10_parse::<u64>()
        .ok()
        .filter(|n| (u64::from(min)..=u64::from(max)).contains(n))
        .ok_or_else(|| syn::Error::new_spanned(lit, range()))?;
    let mut out = match ty {
        UInt::U32 => Literal::u32_suffixed(n as u32),
        UInt::Usize => Literal::usize_suffixed(n as usize),
    };
    out.set_span(lit.span());
    Ok(literal(lit.span(), quote!(#out)))
}

/// A duration key: a string in the configuration's syntax (humantime: `30s`, `15m`,
/// `1h 30m`), longer than zero, parsed now; or a placeholder.
pub fn duration(value: &Value, key: &str) -> syn::Result<TokenStream> {
    if let Some(s) = value.placeholder() {
        return Ok(placeholder(s));
    }
    let Value::Str(s) = value else {
        return Err(syn::Error::new(
            value.span(),
            format!(
                "`{key}` takes a duration string, e.g. `{key} = \"30s\"`, or a \"${{...}}\" placeholder"
            ),
        ));
    };
    let d = humantime::parse_duration(&s.value()).map_err(|e| {
        syn::Error::new_spanned(
            s,
            format!("invalid duration for `{key}`: {e}; write e.g. \"30s\", \"15m\" or \"1h 30m\""),
        )
    })?;
    if d.is_zero() {
        return Err(syn::Error::new_spanned(
            s,
            format!("`{key}` must be longer than zero"),
        ));
    }
    let (secs, nanos) = (d.as_secs(), d.subsec_nanos());
    Ok(literal(
        s.span(),
        quote_spanned! {s.span()=> ::core::time::Duration::new(#secs, #nanos) },
    ))
}

/// A boolean key: `true`, `false` or a placeholder.
pub fn boolean(value: &Value, key: &str) -> syn::Result<TokenStream> {
    if let Some(s) = value.placeholder() {
        return Ok(placeholder(s));
    }
    match value {
        Value::Bool(b) => Ok(literal(b.span(), quote!(#b))),
        other => Err(syn::Error::new(
            other.span(),
            format!("`{key}` takes `true`, `false` or a \"${{...}}\" placeholder"),
        )),
    }
}

/// A string key (placeholders stay in the string).
pub fn string(value: &Value, key: &str) -> syn::Result<LitStr> {
    match value {
        Value::Str(s) => Ok(s.clone()),
        other => Err(syn::Error::new(
            other.span(),
            format!("`{key}` takes a string, e.g. `{key} = \"...\"`"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(tokens: TokenStream) -> Value {
        let args = Args::parse(tokens, &["k"]).unwrap_or_else(|e| panic!("{e}"));
        args.0
            .into_iter()
            .next()
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no value"))
    }

    fn text(r: syn::Result<TokenStream>) -> String {
        match r {
            Ok(t) => t.to_string().replace(' ', ""),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn integers_are_typed_and_range_checked() {
        let int = |t| text(integer(&value(t), "k", UInt::Usize, 1, u32::MAX));
        assert!(int(quote!(k = 4)).ends_with("Literal(4usize)"));
        assert!(int(quote!(k = "${a.b:4}")).ends_with("Placeholder(\"${a.b:4}\")"));
        assert_eq!(
            int(quote!(k = 0)),
            "error: `k` must be an integer from 1 to 4294967295"
        );
        assert_eq!(
            int(quote!(k = 4294967296)),
            "error: `k` must be an integer from 1 to 4294967295"
        );
        assert_eq!(
            int(quote!(k = -1)),
            "error: `k` must be an integer from 1 to 4294967295"
        );
        assert!(int(quote!(k = "4")).starts_with("error: `k` takes an integer"));
        assert!(int(quote!(k = 4u8)).starts_with("error: `k` is a usize"));
        let u32_ = text(integer(&value(quote!(k = 0)), "k", UInt::U32, 0, u32::MAX));
        assert!(u32_.ends_with("Literal(0u32)"));
    }

    #[test]
    fn durations_are_parsed_with_the_configuration_syntax() {
        let dur = |t| text(duration(&value(t), "k"));
        assert!(dur(quote!(k = "1m 30s")).ends_with("Duration::new(90u64,0u32))"));
        assert!(dur(quote!(k = "250ms")).ends_with("Duration::new(0u64,250000000u32))"));
        assert!(dur(quote!(k = "${a:5s}")).ends_with("Placeholder(\"${a:5s}\")"));
        assert!(dur(quote!(k = "soon")).starts_with("error: invalid duration for `k`"));
        assert_eq!(dur(quote!(k = "0s")), "error: `k` must be longer than zero");
        assert!(dur(quote!(k = 30)).starts_with("error: `k` takes a duration string"));
    }

    #[test]
    fn booleans_and_words() {
        assert!(text(boolean(&value(quote!(k = false)), "k")).ends_with("Literal(false)"));
        assert!(text(boolean(&value(quote!(k = "yes")), "k")).starts_with("error:"));
        assert_eq!(
            value(quote!(k = orderly)).word().as_deref(),
            Some("orderly")
        );
        assert_eq!(
            value(quote!(k = "orderly")).word().as_deref(),
            Some("orderly")
        );
        assert_eq!(value(quote!(k = "${m}")).word(), None);
    }

    #[test]
    fn keys_are_checked() {
        let err = |t| Args::parse(t, &["k"]).err().map(|e| e.to_string());
        assert_eq!(
            err(quote!(j = 1)).as_deref(),
            Some("unknown key `j`; expected one of: k")
        );
        assert_eq!(
            err(quote!(k = 1, k = 2)).as_deref(),
            Some("`k` is given twice")
        );
    }
}
