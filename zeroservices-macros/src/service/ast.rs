//! The function `#[service]` is applied to, borrowed from the syn tree. Only a free function
//! is accepted here; its signature is checked in `valid.rs`.

use syn::{Item, ItemFn};

use crate::ctxt::Ctxt;
use crate::item;

/// A free function (its signature not yet checked).
pub(crate) struct Input<'a> {
    pub(crate) original: &'a ItemFn,
}

impl<'a> Input<'a> {
    /// `None` (with the error recorded) when the item is not a function.
    pub(crate) fn from_item(cx: &Ctxt, item: &'a Item) -> Option<Self> {
        let Item::Fn(original) = item else {
            cx.error_spanned_by(
                item::keyword(item),
                format_args!(
                    "#[service] goes on the binary's `async fn main()` or \
                     `async fn main(node: Node) -> Result<()>`; this is {}",
                    item::kind(item)
                ),
            );
            return None;
        };
        Some(Input { original })
    }
}
