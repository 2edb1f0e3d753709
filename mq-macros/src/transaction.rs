//! `#[transaction_listener]`.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::ItemImpl;

use crate::attrs::{self, Args, Errors};

/// Expands the attribute; on `Err`, the caller emits the user's impl unchanged with the errors.
pub fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let item: ItemImpl = syn::parse2(item).map_err(|e| {
        syn::Error::new(
            e.span(),
            "#[transaction_listener] goes on `impl TransactionListener for YourType`",
        )
    })?;
    let Some((_, trait_path, _)) = &item.trait_ else {
        return Err(syn::Error::new_spanned(
            &item.self_ty,
            "#[transaction_listener] goes on `impl TransactionListener for YourType`",
        ));
    };
    let args = Args::parse(attr, &["name", "enabled"])?;
    let mut errors = Errors::default();
    if trait_path
        .segments
        .last()
        .is_none_or(|s| s.ident != "TransactionListener")
    {
        errors.push(syn::Error::new_spanned(
            trait_path,
            "#[transaction_listener] goes on an impl of `TransactionListener`",
        ));
    }
    if !item.generics.params.is_empty() {
        errors.push(syn::Error::new_spanned(
            &item.generics,
            "#[transaction_listener] impls cannot be generic",
        ));
    }
    let name = match args.get("name") {
        Some(v) => errors.take(attrs::string(v, "name")),
        None => {
            errors.push(syn::Error::new(
                Span::call_site(),
                "#[transaction_listener] needs `name = \"...\"`",
            ));
            None
        }
    };
    let enabled = match args.get("enabled") {
        Some(v) => errors.take(attrs::boolean(v, "enabled")),
        None => Some(quote!(::mq_starter::__private::AttributeValue::Literal(
            true
        ))),
    };
    errors.finish()?;
    let (Some(name), Some(enabled)) = (name, enabled) else {
        // Unreachable: a missing one left an error, returned just above.
        return Err(syn::Error::new(
            Span::call_site(),
            "invalid #[transaction_listener]",
        ));
    };
    let ty = &item.self_ty;
    Ok(quote! {
        #item

        ::mq_starter::__private::inventory::submit! {
            ::mq_starter::__private::TransactionRegistration {
                name: #name,
                enabled: #enabled,
                make: ::mq_starter::__private::make_listener::<#ty>,
            }
        }
    })
}
