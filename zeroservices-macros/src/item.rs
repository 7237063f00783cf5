//! Describing an item the macros do not accept: its keyword (to span the error on) and what it
//! is (for the message).

use proc_macro2::TokenStream;
use quote::{ToTokens, quote};
use syn::Item;

/// The keyword that introduces `item` (`enum`, `fn`, `impl`, ...), or the whole item when it
/// has none.
pub(crate) fn keyword(item: &Item) -> TokenStream {
    match item {
        Item::Const(item) => item.const_token.into_token_stream(),
        Item::Enum(item) => item.enum_token.into_token_stream(),
        Item::ExternCrate(item) => item.extern_token.into_token_stream(),
        Item::Fn(item) => item.sig.fn_token.into_token_stream(),
        Item::ForeignMod(item) => item.abi.to_token_stream(),
        Item::Impl(item) => item.impl_token.into_token_stream(),
        Item::Mod(item) => item.mod_token.into_token_stream(),
        Item::Static(item) => item.static_token.into_token_stream(),
        Item::Struct(item) => item.struct_token.into_token_stream(),
        Item::Trait(item) => item.trait_token.into_token_stream(),
        Item::TraitAlias(item) => item.trait_token.into_token_stream(),
        Item::Type(item) => item.type_token.into_token_stream(),
        Item::Union(item) => item.union_token.into_token_stream(),
        Item::Use(item) => item.use_token.into_token_stream(),
        other => quote!(#other),
    }
}

/// What `item` is, with its article: "an enum", "a function".
pub(crate) fn kind(item: &Item) -> &'static str {
    match item {
        Item::Const(_) => "a const",
        Item::Enum(_) => "an enum",
        Item::ExternCrate(_) => "an extern crate",
        Item::Fn(_) => "a function",
        Item::ForeignMod(_) => "an extern block",
        Item::Impl(_) => "an impl block",
        Item::Macro(_) => "a macro invocation",
        Item::Mod(_) => "a module",
        Item::Static(_) => "a static",
        Item::Struct(_) => "a struct",
        Item::Trait(_) | Item::TraitAlias(_) => "a trait",
        Item::Type(_) => "a type alias",
        Item::Union(_) => "a union",
        Item::Use(_) => "a use declaration",
        _ => "this item",
    }
}
