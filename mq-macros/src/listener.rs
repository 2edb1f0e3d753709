//! `#[mq_listener]`.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, LitStr};

use crate::attrs::{self, Args, Errors, UInt, Value};

const KEYS: &[&str] = &[
    "topic",
    "group",
    "tag",
    "model",
    "mode",
    "concurrency",
    "max_reconsume_times",
    "consume_timeout",
    "batch",
    "idempotent",
    "enabled",
];

fn none() -> TokenStream {
    quote!(::core::option::Option::None)
}

fn some(v: TokenStream) -> TokenStream {
    quote!(::core::option::Option::Some(#v))
}

/// `model` or `mode`: a word (or a string) checked against mq-core's words by rustc, or a
/// placeholder. Returns the registration's value and, for a word, the check.
///
/// The word lists live only in `mq_core::subscription`, which this crate cannot depend on. So
/// the word is passed, spanned at the user's token, to a `const fn` of `mq_starter::__private`
/// in a constant, which rustc evaluates while compiling: an unknown word panics there, and
/// rustc reports the function's message ("`mode` must be one of: ...") at the token. The
/// registration's static takes the value from a twin that does not panic, so that the error
/// is not reported again where the static would use the failed constant.
fn word(value: &Value, key: &str) -> syn::Result<(TokenStream, TokenStream)> {
    if let Some(s) = value.placeholder() {
        return Ok((attrs::placeholder(s), TokenStream::new()));
    }
    // Whatever was written (`sideways`, `3`) goes to the check, whose message lists the words.
    let Some(word) = value.word() else {
        return Err(syn::Error::new(
            value.span(),
            format!("`{key}` takes one word or a \"${{...}}\" placeholder"),
        ));
    };
    let span = value.span();
    let word = LitStr::new(&word, span);
    // `__private::model` / `mode` check; `model_or_default` / `mode_or_default` give the value.
    let checked = syn::Ident::new(key, span);
    let value = syn::Ident::new(&format!("{key}_or_default"), span);
    Ok((
        quote_spanned! {span=>
            ::mq_starter::__private::AttributeValue::Literal(::mq_starter::__private::#value(#word))
        },
        quote_spanned! {span=>
            const _: () = {
                ::mq_starter::__private::#checked(#word);
            };
        },
    ))
}

/// The words of `model` and `mode` for the compile-time check of their combination; `None`
/// when either is a placeholder (then the runtime checks it after resolving) or neither is
/// given (the defaults combine).
fn pair_check(args: &Args) -> Option<TokenStream> {
    let model = args.get("model");
    let mode = args.get("mode");
    let span = mode.or(model)?.span();
    let word = |v: Option<&Value>| -> Option<TokenStream> {
        match v {
            None => Some(quote_spanned!(span=> ::core::option::Option::None)),
            Some(v) => {
                let w = LitStr::new(&v.word()?, span);
                Some(quote_spanned!(span=> ::core::option::Option::Some(#w)))
            }
        }
    };
    let (model, mode) = (word(model)?, word(mode)?);
    Some(quote_spanned! {span=>
        const _: () = ::mq_starter::__private::check_model_and_mode(#model, #mode);
    })
}

/// Expands the attribute; on `Err`, the caller emits the user's function unchanged with the
/// errors, so that nothing else (its call sites) fails with it.
pub fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let func: ItemFn = syn::parse2(item)?;
    let args = Args::parse(attr, KEYS)?;
    let mut errors = Errors::default();

    if func.sig.asyncness.is_none() {
        errors.push(syn::Error::new_spanned(
            func.sig.fn_token,
            "#[mq_listener] needs an `async fn`",
        ));
    }
    if !func.sig.generics.params.is_empty() {
        errors.push(syn::Error::new_spanned(
            &func.sig.generics,
            "#[mq_listener] functions cannot be generic",
        ));
    }

    let topics: Vec<LitStr> = match args.get("topic") {
        Some(Value::List(list, _)) => list.clone(),
        Some(v) => errors
            .take(attrs::string(v, "topic").map(|s| vec![s]))
            .unwrap_or_default(),
        None => {
            errors.push(syn::Error::new(
                Span::call_site(),
                "#[mq_listener] needs `topic = \"...\"`",
            ));
            Vec::new()
        }
    };
    let group = match args.get("group") {
        Some(v) => errors.take(attrs::string(v, "group")),
        None => {
            errors.push(syn::Error::new(
                Span::call_site(),
                "#[mq_listener] needs `group = \"...\"`",
            ));
            None
        }
    };
    let tag = match args.get("tag") {
        Some(v) => errors.take(attrs::string(v, "tag")),
        None => Some(LitStr::new("*", Span::call_site())),
    };
    let mut word_checks = TokenStream::new();
    let mut words = |key: &str| match args.get(key).map(|v| word(v, key)) {
        Some(r) => match errors.take(r) {
            Some((value, check)) => {
                word_checks.extend(check);
                some(value)
            }
            None => none(),
        },
        None => none(),
    };
    let model = words("model");
    let mode = words("mode");
    let mut optional =
        |key: &str, f: &dyn Fn(&Value) -> syn::Result<TokenStream>| match args.get(key) {
            Some(v) => errors.take(f(v)).map(some).unwrap_or_else(none),
            None => none(),
        };
    let concurrency = optional("concurrency", &|v| {
        attrs::integer(v, "concurrency", UInt::Usize, 1, u32::MAX)
    });
    let max_reconsume = optional("max_reconsume_times", &|v| {
        attrs::integer(v, "max_reconsume_times", UInt::U32, 0, u32::MAX)
    });
    let consume_timeout = optional("consume_timeout", &|v| {
        attrs::duration(v, "consume_timeout")
    });
    let batch = optional("batch", &|v| {
        attrs::integer(v, "batch", UInt::Usize, 1, u32::MAX)
    });
    let enabled = match args.get("enabled") {
        Some(v) => errors.take(attrs::boolean(v, "enabled")),
        None => Some(quote!(::mq_starter::__private::AttributeValue::Literal(
            true
        ))),
    };
    let idempotent = match args.get("idempotent") {
        Some(v) if args.get("batch").is_some() => {
            errors.push(syn::Error::new(
                v.span(),
                "`idempotent` works on single messages, not with `batch`",
            ));
            none()
        }
        Some(v) => match v.word().as_deref() {
            Some("key") => some(quote!(::mq_starter::__private::IdempotencyKey::Key)),
            Some("id") => some(quote!(::mq_starter::__private::IdempotencyKey::Id)),
            _ => {
                errors.push(syn::Error::new(
                    v.span(),
                    "`idempotent` must be `key` or `id`",
                ));
                none()
            }
        },
        None => none(),
    };
    let pair = pair_check(&args);

    let mut checks = Vec::new();
    for input in &func.sig.inputs {
        match input {
            FnArg::Receiver(r) => errors.push(syn::Error::new_spanned(
                r,
                "#[mq_listener] functions cannot take `self`",
            )),
            FnArg::Typed(t) => {
                let ty = &t.ty;
                checks.push(quote_spanned! {ty.span()=>
                    ::mq_starter::__private::assert_extractor::<#ty>();
                });
            }
        }
    }
    errors.finish()?;
    let (Some(group), Some(tag), Some(enabled)) = (group, tag, enabled) else {
        // Unreachable: a missing one left an error, returned just above.
        return Err(syn::Error::new(Span::call_site(), "invalid #[mq_listener]"));
    };

    let ident = &func.sig.ident;
    let name = ident.to_string();
    Ok(quote! {
        #func

        const _: () = {
            #(#checks)*
        };

        #word_checks
        #pair

        ::mq_starter::__private::inventory::submit! {
            ::mq_starter::__private::ListenerRegistration {
                name: #name,
                module: ::core::module_path!(),
                topics: &[#(#topics),*],
                group: #group,
                tag: #tag,
                model: #model,
                mode: #mode,
                concurrency: #concurrency,
                max_reconsume_times: #max_reconsume,
                consume_timeout: #consume_timeout,
                batch: #batch,
                idempotent: #idempotent,
                enabled: #enabled,
                handler: || ::mq_starter::__private::BoxedHandler::new(#ident),
            }
        }
    })
}
