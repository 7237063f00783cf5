#![doc = include_str!("../docs/lib.md")]
#![warn(missing_docs, unreachable_pub)]

// The macros name `::zeroservices`: the crate's own unit tests may use them too.
#[cfg(test)]
extern crate self as zeroservices;

pub mod access;
#[cfg(feature = "app")]
pub mod app;
pub mod changes;
mod collection;
pub mod config;
mod constraints;
pub mod discovery;
mod error;
pub mod event;
#[cfg(feature = "http")]
pub mod http;
mod json;
mod limits;
mod links;
pub mod medium;
mod metrics;
pub mod node;
pub mod patch;
pub mod protocol;
pub mod query;
pub mod resource;
pub mod security;
mod service;
pub mod settings;
pub mod signal;
pub mod store;
pub mod telemetry;
pub mod worker;

#[cfg(feature = "app")]
pub use app::App;
pub use collection::{ChangeStream, Collection};
pub use error::{Error, Result};
pub use event::{Event, EventStream};
pub use limits::Limits;
pub use node::{Context, Node, NodeBuilder, NodeInfo, NodeKind, StoreInfo};
pub use patch::Patch;
pub use query::{Order, Query};
pub use resource::{ActionInfo, ActionKind, Change, ChangeKind, Document, Resource, ResourceInfo};
pub use settings::{Settings, SettingsError};
pub use zeroservices_macros::service;
pub use zeroservices_macros::{action, actions, model, resource};

/// Everything a service needs, in one `use`.
pub mod prelude {
    #[cfg(feature = "app")]
    pub use crate::App;
    pub use crate::{
        Change, ChangeKind, Collection, Context, Document, Error, Event, Node, NodeKind, Order,
        Patch, Query, Resource, Result, action, actions, model, patch, query, resource,
    };
    pub use zeroservices_macros::service;
}

/// Builds a [`Query`] from a JSON filter: `query!({"status": "pending", "value": {"$gt": 2}})`.
///
/// ```
/// use zeroservices::prelude::*;
/// let q = query!({"value": {"$gte": 2}}).sort("value", Order::Desc).limit(10);
/// assert_eq!(q.limit, Some(10));
/// ```
#[macro_export]
macro_rules! query {
    ($($json:tt)+) => {
        $crate::Query::new($crate::__private::serde_json::json!($($json)+))
    };
}

/// Builds a [`Patch`] (an update document): `patch!({"$set": {"status": "done"}, "$inc": {"n": 1}})`.
///
/// ```
/// use zeroservices::prelude::*;
/// let p = patch!({"$set": {"status": "done"}});
/// assert!(p.compile().is_ok());
/// ```
#[macro_export]
macro_rules! patch {
    ($($json:tt)+) => {
        $crate::Patch::new($crate::__private::serde_json::json!($($json)+))
    };
}

/// Keeps a `#[service]` main (the first group): the runtime has its `app` feature.
#[cfg(feature = "app")]
#[doc(hidden)]
#[macro_export]
macro_rules! __service_main {
    ({ $($main:tt)* } { $($stub:tt)* }) => { $($main)* };
}

/// Without the `app` feature, a `#[service]` main is one clear error (and a stub `main`, so no
/// other error follows).
#[cfg(not(feature = "app"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __service_main {
    ({ $($main:tt)* } { $($stub:tt)* }) => {
        ::core::compile_error!(
            "#[service] needs the `app` feature of zeroservices (a default feature): \
             `zeroservices = { version = \"0.1\", features = [\"app\"] }`"
        );
        $($stub)*
    };
}

/// What the macros' generated code calls: re-exports only. Not a public API: it changes
/// without notice.
#[doc(hidden)]
pub mod __private {
    pub use futures::future::BoxFuture;
    pub use schemars;
    pub use serde;
    pub use serde_json;
    pub use serde_json::Value;

    pub use crate::resource::{
        ActionArgs, ActionCall, ActionDef, ActionKind, ActionOutput, NoActions, Resource,
        args_schema, assert_resource, into_reply, no_args, parse_args, result_schema, schema_value,
    };
    pub use crate::{Context, Error, Result};

    #[cfg(feature = "app")]
    pub use crate::app::{ServiceOutput, service_http, service_output};
}
