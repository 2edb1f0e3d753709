//! Parsing `key = value` attribute arguments into typed values with spans.

use proc_macro2::{Span, TokenStream};
use syn::parse::Parser;
use syn::spanned::Spanned;
use syn::{Expr, ExprArray, ExprLit, Lit, LitStr, Path};

/// One attribute value.
pub enum Value {
    /// A string (may hold placeholders).
    Str(LitStr),
    /// A list of strings.
    List(Vec<LitStr>),
    /// A bare word, e.g. `orderly`.
    Word(syn::Ident),
    /// An integer or boolean, kept as its text.
    Literal(String, Span),
}

impl Value {
    pub fn span(&self) -> Span {
        match self {
            Value::Str(s) => s.span(),
            Value::List(l) => l.first().map_or_else(Span::call_site, LitStr::span),
            Value::Word(w) => w.span(),
            Value::Literal(_, s) => *s,
        }
    }

    /// The value as a string: a string's content, a word, a number or a boolean.
    pub fn text(&self) -> Option<String> {
        match self {
            Value::Str(s) => Some(s.value()),
            Value::Word(w) => Some(w.to_string()),
            Value::Literal(t, _) => Some(t.clone()),
            Value::List(_) => None,
        }
    }
}

/// The parsed arguments, in order, with the key's path for errors.
pub struct Args(pub Vec<(Path, String, Value)>);

impl Args {
    /// Parses `a = 1, b = "x", c = [..]`, rejecting keys outside `allowed`.
    pub fn parse(tokens: TokenStream, allowed: &[&str]) -> syn::Result<Self> {
        let mut out: Vec<(Path, String, Value)> = Vec::new();
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
            if out.iter().any(|(_, k, _)| *k == key) {
                return Err(syn::Error::new_spanned(
                    &meta.path,
                    format!("`{key}` is given twice"),
                ));
            }
            let expr: Expr = meta.value()?.parse()?;
            let value = to_value(&expr)?;
            out.push((meta.path.clone(), key, value));
            Ok(())
        });
        parser.parse2(tokens)?;
        Ok(Args(out))
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(_, k, _)| k == key).map(|(_, _, v)| v)
    }
}

fn path_text(path: &Path) -> String {
    path.segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect::<Vec<_>>()
        .join("::")
}

fn to_value(expr: &Expr) -> syn::Result<Value> {
    match expr {
        Expr::Lit(ExprLit { lit, .. }) => match lit {
            Lit::Str(s) => Ok(Value::Str(s.clone())),
            Lit::Int(i) => Ok(Value::Literal(i.base10_digits().to_owned(), i.span())),
            Lit::Bool(b) => Ok(Value::Literal(b.value.to_string(), b.span())),
            other => Err(syn::Error::new_spanned(
                other,
                "expected a string, an integer or a boolean",
            )),
        },
        Expr::Path(p) => match p.path.get_ident() {
            Some(ident) => Ok(Value::Word(ident.clone())),
            None => Err(syn::Error::new_spanned(p, "expected a single word")),
        },
        Expr::Array(ExprArray { elems, .. }) => {
            let mut list = Vec::new();
            for e in elems {
                match e {
                    Expr::Lit(ExprLit {
                        lit: Lit::Str(s), ..
                    }) => list.push(s.clone()),
                    other => {
                        return Err(syn::Error::new_spanned(other, "expected a string"));
                    }
                }
            }
            if list.is_empty() {
                return Err(syn::Error::new(expr.span(), "the list is empty"));
            }
            Ok(Value::List(list))
        }
        other => Err(syn::Error::new_spanned(
            other,
            "expected a string, a list of strings, a number, a boolean or a word",
        )),
    }
}
