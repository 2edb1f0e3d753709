//! `#[transaction_listener]`.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::ItemImpl;

use crate::attrs::Args;

pub fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let args = Args::parse(attr, &["name", "enabled"])?;
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
    if trait_path
        .segments
        .last()
        .is_none_or(|s| s.ident != "TransactionListener")
    {
        return Err(syn::Error::new_spanned(
            trait_path,
            "#[transaction_listener] goes on an impl of `TransactionListener`",
        ));
    }
    if !item.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &item.generics,
            "#[transaction_listener] impls cannot be generic",
        ));
    }
    let name = match args.get("name") {
        Some(v) => v
            .text()
            .ok_or_else(|| syn::Error::new(v.span(), "`name` takes a string"))?,
        None => {
            return Err(syn::Error::new(
                Span::call_site(),
                "#[transaction_listener] needs `name = \"...\"`",
            ))
        }
    };
    let enabled = match args.get("enabled") {
        Some(v) => v
            .text()
            .ok_or_else(|| syn::Error::new(v.span(), "`enabled` takes a boolean or a string"))?,
        None => "true".to_owned(),
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
