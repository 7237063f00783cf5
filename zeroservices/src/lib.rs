#![doc = include_str!("../docs/lib.md")]
#![warn(missing_docs, unreachable_pub)]

pub mod app;
pub mod collection;
pub mod config;
pub mod discovery;
mod error;
pub mod event;
pub mod http;
pub mod limits;
pub mod links;
pub mod medium;
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
pub mod worker;

pub use app::App;
pub use collection::Collection;
pub use error::{Error, Result};
pub use event::{Event, EventStream};
pub use limits::Limits;
pub use node::{Context, Node, NodeBuilder, NodeInfo, NodeKind};
pub use patch::Patch;
pub use query::{Order, Query};
pub use resource::{ActionInfo, ActionKind, Change, ChangeKind, Document, Resource, ResourceInfo};
pub use settings::{Settings, SettingsError};
pub use zeroservices_macros::service;
pub use zeroservices_macros::{action, actions, model, resource};

/// Everything a service needs, in one `use`.
pub mod prelude {
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

/// What the macros' generated code calls. Not a public API: it changes without notice.
#[doc(hidden)]
pub mod __private {
    pub use futures::future::BoxFuture;
    pub use schemars;
    pub use serde;
    pub use serde_json;
    pub use serde_json::Value;

    pub use crate::resource::{
        ActionArgs, ActionCall, ActionDef, ActionKind, ActionOutput, NoActions, Resource,
        schema_value,
    };
    pub use crate::{Context, Error, Result};

    /// Deserialises `value` into `T`, naming the offending field on failure.
    pub fn from_value<T: serde::de::DeserializeOwned>(value: Value) -> Result<T> {
        // The plain deserialiser first (from a reference: no path bookkeeping per field); only
        // a value that fails goes through the path-tracking one, for the error's field path.
        match T::deserialize(&value) {
            Ok(typed) => Ok(typed),
            Err(_) => serde_path_to_error::deserialize(value).map_err(Error::from),
        }
    }

    /// Serialises `value` to JSON text (a reply sent on as is).
    pub fn to_raw<T: serde::Serialize + ?Sized>(
        value: &T,
    ) -> Result<Box<serde_json::value::RawValue>> {
        serde_json::value::to_raw_value(value).map_err(|e| Error::internal(e.to_string()))
    }

    /// Deserialises JSON text into `T`, naming the offending field on failure.
    pub fn from_raw<T: serde::de::DeserializeOwned>(
        raw: &serde_json::value::RawValue,
    ) -> Result<T> {
        match serde_json::from_str(raw.get()) {
            Ok(typed) => Ok(typed),
            Err(_) => {
                let mut de = serde_json::Deserializer::from_str(raw.get());
                serde_path_to_error::deserialize(&mut de).map_err(Error::from)
            }
        }
    }

    /// Parses the argument of an action.
    pub fn parse_args<T: ActionArgs>(args: Value) -> Result<T> {
        from_value(args)
    }

    /// Checks that an action that takes no argument got none (`null` or `{}`).
    pub fn no_args(args: Value) -> Result<()> {
        match &args {
            Value::Null => Ok(()),
            Value::Object(map) if map.is_empty() => Ok(()),
            _ => Err(Error::validation("", "this action takes no arguments")),
        }
    }

    /// The schema of an action's argument type.
    pub fn args_schema<T: ActionArgs>() -> Value {
        schema_value::<T>()
    }

    /// The schema of an action's success type.
    pub fn result_schema<O: ActionOutput>() -> Value {
        schema_value::<O::Ok>()
    }

    /// Converts an action's return value into its JSON reply.
    pub fn into_reply<O: ActionOutput>(output: O) -> Result<Value> {
        output.into_reply()
    }

    /// Compile-time check that `T` is a `#[resource]`.
    pub const fn assert_resource<T: Resource>() {}

    pub use crate::app::ServiceOutput;

    /// Checks that a `#[service]` main returns `()` or `Result<()>` (the error lands on the
    /// user's return type), and converts what it returned.
    pub fn service_output<O: ServiceOutput>(output: O) -> ::core::result::Result<(), String> {
        output.into_result()
    }

    /// The HTTP defaults written in `#[service(http(...))]` (the host was checked by the
    /// macro; a bad one falls back to loopback).
    pub fn service_http(
        port: Option<u16>,
        host: Option<&str>,
        allowed_origins: Option<&str>,
    ) -> crate::http::HttpConfig {
        let port = port.unwrap_or(crate::app::DEFAULT_HTTP_PORT);
        let mut config = crate::http::HttpConfig::new(port);
        if let Some(host) = host.and_then(|host| host.parse().ok()) {
            config.host = host;
        }
        if let Some(origins) = allowed_origins {
            config = config.allowed_origins(origins);
        }
        config
    }
}
