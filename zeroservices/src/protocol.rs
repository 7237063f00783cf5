//! The built-in protocol: the actions every collection answers, typed once.
//!
//! A [`Request`] on the wire names its action as a string and carries its arguments as JSON
//! (the contract other implementations speak). Inside the crate, the built-in actions are a
//! [`Call`]: the typed client ([`crate::Collection`]) and the REST layer build one and turn it
//! into a [`Request`]; the owner's service turns a [`Request`] back into one
//! ([`Call::from_request`]) and matches on it. A request whose action is not built in is a
//! custom action (`#[action]`).
//!
//! | action | id | arguments | reply |
//! |---|---|---|---|
//! | `create` | optional (chosen id) | [`CreateArgs`] `{"resource_data"}` | [`Created`] `{"resource_id", "version"}` |
//! | `get` | required | none | [`Document`] `{"resource_id", "resource_data", "version"}` |
//! | `patch` | required | [`PatchArgs`] `{"patch"}` | [`Document`] |
//! | `delete` | required | none | `null` |
//! | `list` | none | [`ListArgs`] `{"where", "sort", "limit", "skip", "text", "paged"}` | `[Document]`, or [`Page`] when `paged` |
//! | `add_link` | required | [`AddLinkArgs`] `{"relation", "target_id", "title"}` | `null` |
//! | `follow_links` | required | [`FollowLinksArgs`] `{"relation"}` | `[`[`LinkedResource`]`]` |
//! | `incoming_links` | none | [`IncomingLinksArgs`] `{"relation", "target_id"}` | `[Document]` |
//!
//! Every document has a version (1 at create, one more at each change), in the replies'
//! `"version"`. A request's [`Request::if_version`] makes `patch`, `delete`, `add_link` and a
//! resource action conditional on it; [`Request::with_version`] makes a resource action answer
//! [`ActionReply`] `{"result", "version"}`.
//!
//! ```
//! use zeroservices::protocol::{BuiltIn, Call};
//!
//! let request = Call::Get { id: "42".into() }.into_request("power");
//! assert_eq!(request.action, "get");
//! assert_eq!(BuiltIn::from_name(&request.action), Some(BuiltIn::Get));
//! assert_eq!(Call::from_request(request).unwrap().unwrap(), Call::Get { id: "42".into() });
//! ```

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::json::from_value;
use crate::medium::Request;
use crate::query::SortKey;
use crate::{Error, Patch, Result};

pub use crate::links::LinkedResource;
pub use crate::resource::Document;

/// The actions every collection has built in. Custom actions cannot take these names (the
/// `#[action]` macro refuses them at compile time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuiltIn {
    /// Creates a resource.
    Create,
    /// Reads one resource.
    Get,
    /// Applies an update document to one resource.
    Patch,
    /// Deletes one resource.
    Delete,
    /// Lists the resources matching a filter.
    List,
    /// Links one resource to another.
    AddLink,
    /// Reads the targets of one resource's relation.
    FollowLinks,
    /// Finds the resources linking to a target.
    IncomingLinks,
}

impl BuiltIn {
    /// Every built-in action.
    pub const ALL: [BuiltIn; 8] = [
        Self::Create,
        Self::Get,
        Self::Patch,
        Self::Delete,
        Self::List,
        Self::AddLink,
        Self::FollowLinks,
        Self::IncomingLinks,
    ];

    /// The action's name on the wire.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Get => "get",
            Self::Patch => "patch",
            Self::Delete => "delete",
            Self::List => "list",
            Self::AddLink => "add_link",
            Self::FollowLinks => "follow_links",
            Self::IncomingLinks => "incoming_links",
        }
    }

    /// The built-in action of that name, if it is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.name() == name)
    }

    /// Whether `name` is a built-in action's (usable in a `const`: the generated code checks
    /// custom action names with it).
    pub const fn is_built_in(name: &str) -> bool {
        let mut i = 0;
        while i < Self::ALL.len() {
            if const_str_eq(Self::ALL[i].name(), name) {
                return true;
            }
            i += 1;
        }
        false
    }

    /// Whether the action works on one resource (so needs its id).
    pub const fn needs_id(self) -> bool {
        matches!(
            self,
            Self::Get | Self::Patch | Self::Delete | Self::AddLink | Self::FollowLinks
        )
    }

    /// Whether the action does so little before its store call that a medium may poll it on
    /// the task that reads its socket ([`crate::medium::Inbound::serve_inline`]).
    pub const fn is_cheap(self) -> bool {
        matches!(self, Self::Get | Self::Create | Self::Delete)
    }

    /// Whether the action changes what is stored (so authorisation treats it as a write).
    pub const fn writes(self) -> bool {
        matches!(
            self,
            Self::Create | Self::Patch | Self::Delete | Self::AddLink
        )
    }
}

impl std::fmt::Display for BuiltIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

const fn const_str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The arguments of `create`: `{"resource_data": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateArgs<T = Value> {
    /// The new resource.
    pub resource_data: T,
}

/// The reply of `create`: `{"resource_id": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    /// The id of the new resource (chosen by the caller or generated).
    pub resource_id: String,
    /// Its version: always 1 (0 from an owner that predates versions).
    #[serde(default)]
    pub version: u64,
}

/// The reply of a resource action asked [`Request::with_version`]: its result and the
/// resource's version after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionReply<T = Value> {
    /// What the action returned.
    pub result: T,
    /// The resource's version after the action (the one it read, for a `&self` action or a
    /// `&mut self` action that changed nothing).
    pub version: u64,
}

/// The arguments of `patch`: `{"patch": {"$set": {...}, ...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchArgs {
    /// The update document.
    pub patch: Patch,
}

/// The arguments of `list`: `{"where", "sort", "limit", "skip", "text", "paged"}`, each
/// optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListArgs {
    /// The filter (MongoDB subset); everything when absent.
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub filter: Option<Value>,
    /// The sort keys, most significant first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sort: Option<Vec<SortKey>>,
    /// At most this many (and never more than the owner's page limit, `ZS_MAX_PAGE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Skip this many first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip: Option<u64>,
    /// A full-text search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Answer a [`Page`] (`{"items", "more"}`) instead of a bare array, so the caller knows
    /// whether the page was cut short by the limit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paged: bool,
}

/// The reply of a `paged` `list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T = Document<Value>> {
    /// The documents of this page.
    pub items: Vec<T>,
    /// Whether more follow (the page was cut short by the limit).
    pub more: bool,
}

/// The arguments of `add_link`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "AddLink")]
pub struct AddLinkArgs {
    /// The relation name (`source`, `children`): letters, digits, `_`, `-`; not `latest`.
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]+$"), extend("not" = {"const": "latest"}))]
    pub relation: String,
    /// The target as `[collection, id]`.
    #[schemars(extend("prefixItems" = [
        {"type": "string", "minLength": 1},
        {"type": "string", "minLength": 1, "maxLength": 256, "pattern": crate::limits::ID_PATTERN},
    ]))]
    pub target_id: (String, String),
    /// A human title for the link.
    #[serde(default)]
    pub title: Option<String>,
}

/// The arguments of `follow_links`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "FollowLinks")]
pub struct FollowLinksArgs {
    /// The relation to follow.
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]+$"), extend("not" = {"const": "latest"}))]
    pub relation: String,
}

/// The arguments of `incoming_links`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "IncomingLinks")]
pub struct IncomingLinksArgs {
    /// The relation to look for.
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]+$"), extend("not" = {"const": "latest"}))]
    pub relation: String,
    /// The target as `[collection, id]`.
    #[schemars(extend("prefixItems" = [
        {"type": "string", "minLength": 1},
        {"type": "string", "minLength": 1, "maxLength": 256, "pattern": crate::limits::ID_PATTERN},
    ]))]
    pub target_id: (String, String),
}

/// A call of a built-in action, with its typed arguments.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// `create`, with the id the caller chose (if any).
    Create {
        /// The chosen id; generated when absent.
        id: Option<String>,
        /// The new resource.
        args: CreateArgs,
    },
    /// `get`.
    Get {
        /// The resource.
        id: String,
    },
    /// `patch`.
    Patch {
        /// The resource.
        id: String,
        /// The update.
        args: PatchArgs,
    },
    /// `delete`.
    Delete {
        /// The resource.
        id: String,
    },
    /// `list`.
    List(ListArgs),
    /// `add_link`.
    AddLink {
        /// The resource the link starts from.
        id: String,
        /// The link.
        args: AddLinkArgs,
    },
    /// `follow_links`.
    FollowLinks {
        /// The resource whose links are followed.
        id: String,
        /// The relation.
        args: FollowLinksArgs,
    },
    /// `incoming_links`.
    IncomingLinks(IncomingLinksArgs),
}

impl Call {
    /// Which built-in action this is.
    pub fn action(&self) -> BuiltIn {
        match self {
            Self::Create { .. } => BuiltIn::Create,
            Self::Get { .. } => BuiltIn::Get,
            Self::Patch { .. } => BuiltIn::Patch,
            Self::Delete { .. } => BuiltIn::Delete,
            Self::List(_) => BuiltIn::List,
            Self::AddLink { .. } => BuiltIn::AddLink,
            Self::FollowLinks { .. } => BuiltIn::FollowLinks,
            Self::IncomingLinks(_) => BuiltIn::IncomingLinks,
        }
    }

    /// The request that carries this call to the owner of `collection`.
    pub fn into_request(self, collection: impl Into<String>) -> Request {
        let action = self.action();
        let (id, args) = match self {
            Self::Create { id, args } => (
                id,
                Value::Object(Map::from_iter([(
                    "resource_data".to_owned(),
                    args.resource_data,
                )])),
            ),
            Self::Get { id } | Self::Delete { id } => (Some(id), Value::Null),
            Self::Patch { id, args } => (
                Some(id),
                Value::Object(Map::from_iter([("patch".to_owned(), args.patch.0)])),
            ),
            Self::List(args) => (None, to_args(&args)),
            Self::AddLink { id, args } => (Some(id), to_args(&args)),
            Self::FollowLinks { id, args } => (Some(id), to_args(&args)),
            Self::IncomingLinks(args) => (None, to_args(&args)),
        };
        Request {
            collection: collection.into(),
            action: action.name().to_owned(),
            resource_id: id,
            args,
            user: None,
            request_id: None,
            idempotency_key: None,
            if_version: None,
            with_version: false,
            trace: None,
        }
    }

    /// Whether `action` is a built-in read (get, list, follow_links, incoming_links): it
    /// changes nothing, so a copy of it may run again. A custom action is not known to be one.
    pub fn is_read(action: &str) -> bool {
        BuiltIn::from_name(action).is_some_and(|a| !a.writes())
    }

    /// The built-in call a request makes: `None` when its action is not built in (a custom
    /// action), an error when its arguments or id do not fit the action.
    ///
    /// The errors are the owner's answers: a missing id or a malformed `patch` or `list` is a
    /// bad request (400); a `create` without `resource_data` or link arguments that do not
    /// fit are a validation error naming the field (422). Keys `create` and `patch` do not know
    /// are ignored (as the original did); `list` and the link actions refuse them.
    pub fn from_request(request: Request) -> Option<Result<Self>> {
        let action = BuiltIn::from_name(&request.action)?;
        Some(Self::parse(action, request))
    }

    /// The call `request` makes of the built-in `action` (its action name is not looked at
    /// again); an error when its arguments or id do not fit.
    pub fn parse(action: BuiltIn, request: Request) -> Result<Self> {
        let Request {
            collection,
            resource_id,
            args,
            ..
        } = request;
        let id = || {
            resource_id.clone().ok_or_else(|| {
                Error::bad_request(format!("{action} on {collection} needs a resource id"))
            })
        };
        Ok(match action {
            BuiltIn::Create => {
                let mut args = match args {
                    Value::Object(map) => map,
                    Value::Null => Map::new(),
                    _ => {
                        return Err(Error::bad_request(
                            "create takes {\"resource_data\": {...}}",
                        ));
                    }
                };
                let resource_data = args.remove("resource_data").ok_or_else(|| {
                    Error::validation("resource_data", "missing field `resource_data`")
                })?;
                Self::Create {
                    id: resource_id,
                    args: CreateArgs { resource_data },
                }
            }
            BuiltIn::Get => Self::Get { id: id()? },
            BuiltIn::Delete => Self::Delete { id: id()? },
            BuiltIn::Patch => {
                let id = id()?;
                let shape = || Error::bad_request("patch takes {\"patch\": {...}}");
                let patch = match args {
                    Value::Object(mut map) => map.remove("patch").ok_or_else(shape)?,
                    _ => return Err(shape()),
                };
                Self::Patch {
                    id,
                    args: PatchArgs {
                        patch: Patch::new(patch),
                    },
                }
            }
            BuiltIn::List => Self::List(match args {
                Value::Null => ListArgs::default(),
                args => from_value(args).map_err(|e| Error::bad_request(e.to_string()))?,
            }),
            BuiltIn::AddLink => Self::AddLink {
                id: id()?,
                args: from_value(args)?,
            },
            BuiltIn::FollowLinks => Self::FollowLinks {
                id: id()?,
                args: from_value(args)?,
            },
            BuiltIn::IncomingLinks => Self::IncomingLinks(from_value(args)?),
        })
    }
}

impl Document<Value> {
    /// The document as the JSON object `{"resource_id", "resource_data", "version"}`, without
    /// copying it.
    pub fn into_value(self) -> Value {
        Value::Object(Map::from_iter([
            ("resource_id".to_owned(), Value::String(self.resource_id)),
            ("resource_data".to_owned(), self.resource_data),
            ("version".to_owned(), Value::from(self.version)),
        ]))
    }
}

impl Page<Document<Value>> {
    /// The page as the JSON object `{"items", "more"}`, without copying its documents.
    pub fn into_value(self) -> Value {
        Value::Object(Map::from_iter([
            (
                "items".to_owned(),
                Value::Array(self.items.into_iter().map(Document::into_value).collect()),
            ),
            ("more".to_owned(), Value::Bool(self.more)),
        ]))
    }
}

/// Arguments as JSON (these types always serialise).
fn to_args<T: Serialize>(args: &T) -> Value {
    serde_json::to_value(args).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn names_round_trip_and_the_const_check_agrees() {
        for action in BuiltIn::ALL {
            assert_eq!(BuiltIn::from_name(action.name()), Some(action));
            assert!(BuiltIn::is_built_in(action.name()));
        }
        assert_eq!(BuiltIn::from_name("square"), None);
        assert!(!BuiltIn::is_built_in("square"));
        assert!(!BuiltIn::is_built_in("gets"));
        assert!(!BuiltIn::is_built_in("ge"));
        const { assert!(BuiltIn::is_built_in("list")) };
    }

    #[test]
    fn every_call_survives_the_wire() {
        let calls = [
            Call::Create {
                id: None,
                args: CreateArgs {
                    resource_data: json!({"value": 1}),
                },
            },
            Call::Create {
                id: Some("7".into()),
                args: CreateArgs {
                    resource_data: json!({"value": 2}),
                },
            },
            Call::Get { id: "7".into() },
            Call::Patch {
                id: "7".into(),
                args: PatchArgs {
                    patch: Patch::new(json!({"$inc": {"value": 1}})),
                },
            },
            Call::Delete { id: "7".into() },
            Call::List(ListArgs::default()),
            Call::List(ListArgs {
                filter: Some(json!({"value": {"$gt": 1}})),
                sort: Some(vec![SortKey {
                    field: "value".into(),
                    order: crate::Order::Desc,
                }]),
                limit: Some(3),
                skip: Some(1),
                text: Some("x".into()),
                paged: true,
            }),
            Call::AddLink {
                id: "7".into(),
                args: AddLinkArgs {
                    relation: "source".into(),
                    target_id: ("user".into(), "1".into()),
                    title: Some("Ann".into()),
                },
            },
            Call::FollowLinks {
                id: "7".into(),
                args: FollowLinksArgs {
                    relation: "source".into(),
                },
            },
            Call::IncomingLinks(IncomingLinksArgs {
                relation: "source".into(),
                target_id: ("user".into(), "1".into()),
            }),
        ];
        for call in calls {
            let request = call.clone().into_request("power");
            // Through JSON text, as a peer would get it.
            let text = serde_json::to_string(&request).unwrap();
            let back: Request = serde_json::from_str(&text).unwrap();
            assert_eq!(Call::from_request(back).unwrap().unwrap(), call);
        }
    }

    #[test]
    fn the_wire_shapes_are_the_contract() {
        let request = Call::Create {
            id: None,
            args: CreateArgs {
                resource_data: json!({"value": 1}),
            },
        }
        .into_request("power");
        assert_eq!(request.args, json!({"resource_data": {"value": 1}}));
        let request = Call::List(ListArgs {
            limit: Some(2),
            ..ListArgs::default()
        })
        .into_request("power");
        assert_eq!(request.args, json!({"limit": 2}));
        let request = Call::Patch {
            id: "1".into(),
            args: PatchArgs {
                patch: Patch::new(json!({"$set": {"a": 1}})),
            },
        }
        .into_request("power");
        assert_eq!(request.args, json!({"patch": {"$set": {"a": 1}}}));
        assert_eq!(request.resource_id.as_deref(), Some("1"));
    }

    #[test]
    fn custom_actions_are_not_calls() {
        assert!(Call::from_request(Request::new("power", "square")).is_none());
    }

    #[test]
    fn malformed_calls_get_the_owners_errors() {
        let status = |request: Request| match Call::from_request(request) {
            Some(Err(e)) => e.kind(),
            other => panic!("expected an error, got {other:?}"),
        };
        // A missing id: 400, for every action that needs one.
        for action in BuiltIn::ALL.into_iter().filter(|a| a.needs_id()) {
            assert_eq!(
                status(Request::new("power", action.name())),
                "bad_request",
                "{action}"
            );
        }
        assert_eq!(status(Request::new("power", "create")), "validation");
        assert_eq!(
            status(Request::new("power", "create").args(json!([1]))),
            "bad_request"
        );
        assert_eq!(
            status(Request::new("power", "patch").id("1").args(json!({}))),
            "bad_request"
        );
        assert_eq!(
            status(Request::new("power", "list").args(json!({"nope": 1}))),
            "bad_request"
        );
        assert_eq!(
            status(Request::new("power", "list").args(json!({"limit": -1}))),
            "bad_request"
        );
        assert_eq!(
            status(
                Request::new("power", "add_link")
                    .id("1")
                    .args(json!({"relation": "x"}))
            ),
            "validation"
        );
        // Keys `create` does not know are ignored, as the original did.
        let call = Call::from_request(
            Request::new("power", "create").args(json!({"resource_data": {}, "other": 1})),
        );
        assert!(matches!(call, Some(Ok(Call::Create { .. }))));
    }
}
