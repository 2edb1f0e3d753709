//! `#[mq_listener]`.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn};

use crate::attrs::{Args, Value};

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

fn string(args: &Args, key: &str, default: Option<&str>) -> syn::Result<Option<String>> {
    match args.get(key) {
        Some(v) => v
            .text()
            .map(Some)
            .ok_or_else(|| syn::Error::new(v.span(), format!("`{key}` takes one value"))),
        None => Ok(default.map(str::to_owned)),
    }
}

fn one_of(args: &Args, key: &str, allowed: &[&str], default: &str) -> syn::Result<String> {
    match args.get(key) {
        Some(v) => {
            let text = v.text().unwrap_or_default();
            let placeholder = matches!(v, Value::Str(_)) && text.contains("${");
            if allowed.contains(&text.as_str()) || placeholder {
                Ok(text)
            } else {
                Err(syn::Error::new(
                    v.span(),
                    format!("`{key}` must be one of: {}", allowed.join(", ")),
                ))
            }
        }
        None => Ok(default.to_owned()),
    }
}

fn optional(v: Option<String>) -> TokenStream {
    match v {
        Some(s) => quote!(::core::option::Option::Some(#s)),
        None => quote!(::core::option::Option::None),
    }
}

pub fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let func: ItemFn = syn::parse2(item)?;
    let args = Args::parse(attr, KEYS)?;

    if func.sig.asyncness.is_none() {
        return Err(syn::Error::new_spanned(
            func.sig.fn_token,
            "#[mq_listener] needs an `async fn`",
        ));
    }
    if !func.sig.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &func.sig.generics,
            "#[mq_listener] functions cannot be generic",
        ));
    }

    let topics: Vec<String> = match args.get("topic") {
        Some(Value::List(list)) => list.iter().map(|s| s.value()).collect(),
        Some(v) => vec![v
            .text()
            .ok_or_else(|| syn::Error::new(v.span(), "expected a topic"))?],
        None => {
            return Err(syn::Error::new(
                Span::call_site(),
                "#[mq_listener] needs `topic = \"...\"`",
            ))
        }
    };
    let group = string(&args, "group", None)?.ok_or_else(|| {
        syn::Error::new(Span::call_site(), "#[mq_listener] needs `group = \"...\"`")
    })?;
    let tag = string(&args, "tag", Some("*"))?.unwrap_or_default();
    let model = one_of(
        &args,
        "model",
        &["clustering", "broadcasting"],
        "clustering",
    )?;
    let mode = one_of(&args, "mode", &["concurrently", "orderly"], "concurrently")?;
    if model == "broadcasting" && mode == "orderly" {
        let span = args.get("mode").map_or_else(Span::call_site, Value::span);
        return Err(syn::Error::new(
            span,
            "orderly consumption cannot be combined with broadcasting",
        ));
    }
    let concurrency = optional(string(&args, "concurrency", None)?);
    let max_reconsume = optional(string(&args, "max_reconsume_times", None)?);
    let consume_timeout = optional(string(&args, "consume_timeout", None)?);
    let batch_text = string(&args, "batch", None)?;
    let idempotent = match args.get("idempotent") {
        Some(v) => {
            if batch_text.is_some() {
                return Err(syn::Error::new(
                    v.span(),
                    "`idempotent` works on single messages, not with `batch`",
                ));
            }
            match v.text().as_deref() {
                Some("key") => {
                    quote!(::core::option::Option::Some(
                        ::mq_starter::__private::IdempotencyKey::Key
                    ))
                }
                Some("id") => {
                    quote!(::core::option::Option::Some(
                        ::mq_starter::__private::IdempotencyKey::Id
                    ))
                }
                _ => {
                    return Err(syn::Error::new(
                        v.span(),
                        "`idempotent` must be `key` or `id`",
                    ))
                }
            }
        }
        None => quote!(::core::option::Option::None),
    };
    let batch = optional(batch_text);
    let enabled = string(&args, "enabled", Some("true"))?.unwrap_or_default();

    let mut checks = Vec::new();
    for input in &func.sig.inputs {
        match input {
            FnArg::Receiver(r) => {
                return Err(syn::Error::new_spanned(
                    r,
                    "#[mq_listener] functions cannot take `self`",
                ))
            }
            FnArg::Typed(t) => {
                let ty = &t.ty;
                checks.push(quote_spanned! {ty.span()=>
                    ::mq_starter::__private::assert_extractor::<#ty>();
                });
            }
        }
    }

    let ident = &func.sig.ident;
    let name = ident.to_string();
    Ok(quote! {
        #func

        const _: () = {
            #(#checks)*
        };

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
