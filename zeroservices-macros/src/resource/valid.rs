//! Checks of `#[resource]` that need both the attribute and the struct, and resolution of the
//! attribute into the values the expansion uses (with placeholders where a value was bad, so
//! that the expansion can still be emitted).

use std::collections::HashSet;

use syn::Path;
use syn::ext::IdentExt;

use super::ast::Input;
use super::attr::ResourceAttrs;
use crate::attr::default_crate_path;
use crate::ctxt::Ctxt;
use crate::derives;
use crate::symbol::is_valid_name;

/// A checked resource: everything `expand.rs` needs.
pub(crate) struct Resource<'a> {
    pub(crate) input: &'a Input<'a>,
    pub(crate) collection: String,
    pub(crate) text_index: Vec<String>,
    pub(crate) krate: Path,
}

pub(crate) fn validate<'a>(cx: &Ctxt, attrs: ResourceAttrs, input: &'a Input<'a>) -> Resource<'a> {
    // `#[derive(Serialize)]` next to `#[resource]` would implement the trait twice.
    derives::check_not_listed(cx, "#[resource]", &input.derives);
    let collection = collection(cx, &attrs, input);
    let text_index = text_index(cx, &attrs, input);
    Resource {
        input,
        collection,
        text_index,
        krate: attrs.krate.unwrap_or_else(default_crate_path),
    }
}

fn collection(cx: &Ctxt, attrs: &ResourceAttrs, input: &Input<'_>) -> String {
    let suggestion = snake_case(&input.original.ident.unraw().to_string());
    match &attrs.collection {
        Some(lit) => {
            let name = lit.value();
            if name.is_empty() {
                cx.error_spanned_by(
                    lit,
                    format_args!("the collection name is empty; name it, like `\"{suggestion}\"`"),
                );
            } else if !is_valid_name(&name) {
                cx.error_spanned_by(
                    lit,
                    format_args!(
                        "invalid collection name `{name}`: use only lowercase ascii letters, \
                         digits, `_` and `-`, like `\"{suggestion}\"`"
                    ),
                );
            } else {
                return name;
            }
        }
        // Already reported by attr.rs (no value, or not a string literal).
        None if attrs.collection_written => {}
        None => {
            let msg = format!(
                "#[resource] needs a collection name, like `#[resource(collection = \"{suggestion}\")]`"
            );
            if attrs.args.is_empty() {
                cx.error_spanned_by(&input.original.ident, msg);
            } else {
                cx.error_spanned_by(&attrs.args, msg);
            }
        }
    }
    // Placeholder so the expansion still compiles.
    suggestion
}

fn text_index(cx: &Ctxt, attrs: &ResourceAttrs, input: &Input<'_>) -> Vec<String> {
    let fields: Vec<String> = input.fields.iter().map(|f| f.unraw().to_string()).collect();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for ident in &attrs.text_index {
        let name = ident.unraw().to_string();
        if !fields.contains(&name) {
            cx.error_spanned_by(
                ident,
                format_args!(
                    "`{name}` is not a field of `{}`; `text_index` lists fields of the struct ({})",
                    input.original.ident,
                    fields
                        .iter()
                        .map(|f| format!("`{f}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
            );
        } else if !seen.insert(name.clone()) {
            cx.error_spanned_by(
                ident,
                format_args!("`{name}` is listed twice in `text_index`"),
            );
        } else {
            out.push(name);
        }
    }
    out
}

/// `TodoItem` -> `todo_item`: the suggested collection name.
fn snake_case(ident: &str) -> String {
    let mut out = String::new();
    for (i, c) in ident.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
            out.push(c);
        }
    }
    if out.is_empty() {
        out.push_str("resource");
    }
    out
}
