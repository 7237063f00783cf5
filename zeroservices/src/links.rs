//! Links between resources, as the original framework had them: `add_link(relation, target,
//! title)` pushes `{"target_id": [collection, id], "title"}` onto the document's
//! `_links.<relation>` and sets `_links.latest.<collection>` to the target; `follow_links`
//! reads the targets; `incoming_links` finds the resources that link to a target.
//!
//! All three are built-in actions of every resource, so they work over the wire and REST too:
//! `POST /power/42/add_link {"relation": "source", "target_id": ["user", "7"], "title": "..."}`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::protocol::{AddLinkArgs, BuiltIn, FollowLinksArgs, IncomingLinksArgs};
use crate::resource::{ActionInfo, ActionKind, schema_value};
use crate::{Error, Result};

/// The field of a document that holds its links.
pub(crate) const LINKS: &str = "_links";

/// Whether a patch path touches `_links` (which only the link actions change).
pub(crate) fn is_links_path(path: &str) -> bool {
    path == LINKS
        || path
            .strip_prefix(LINKS)
            .is_some_and(|rest| rest.starts_with('.'))
}

/// One followed link: the target resource with where it lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LinkedResource {
    /// The target's collection.
    pub resource_name: String,
    /// The target's id.
    pub resource_id: String,
    /// The target document.
    pub resource_data: Value,
    /// The target's version.
    #[serde(default)]
    pub version: u64,
    /// The link's title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

/// Checks a relation name: it becomes a field path segment. The same rule is on the argument
/// types' schemas (`pattern` `^[A-Za-z0-9_-]+$`, not `latest`), so the OpenAPI document says it.
pub(crate) fn check_relation(relation: &str) -> Result<()> {
    let valid = !relation.is_empty()
        && relation != "latest"
        && relation
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if valid {
        Ok(())
    } else {
        Err(Error::validation(
            "relation",
            format!(
                "invalid relation {relation:?}: use letters, digits, `_` or `-` (not `latest`)"
            ),
        ))
    }
}

/// The update document `add_link` applies.
pub(crate) fn add_link_patch(link: &AddLinkArgs) -> Value {
    let (collection, id) = &link.target_id;
    let mut entry = json!({ "target_id": [collection, id] });
    if let Some(title) = &link.title {
        entry["title"] = Value::from(title.as_str());
    }
    json!({
        "$push": { format!("_links.{}", link.relation): entry },
        "$set": { format!("_links.latest.{collection}"): [collection, id] },
    })
}

/// The filter `incoming_links` lists with.
pub(crate) fn incoming_filter(args: &IncomingLinksArgs) -> Value {
    let (collection, id) = &args.target_id;
    json!({ format!("_links.{}.target_id", args.relation): [collection, id] })
}

/// The targets `(collection, id, title)` of `relation` in a stored document.
pub(crate) fn targets(doc: &Value, relation: &str) -> Vec<(String, String, Option<String>)> {
    let Some(links) = doc
        .get("_links")
        .and_then(|l| l.get(relation))
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    links
        .iter()
        .filter_map(|link| {
            let target = link.get("target_id")?.as_array()?;
            let collection = target.first()?.as_str()?.to_owned();
            let id = target.get(1)?.as_str()?.to_owned();
            let title = link.get("title").and_then(Value::as_str).map(str::to_owned);
            Some((collection, id, title))
        })
        .collect()
}

/// The announced description of the built-in link actions.
pub(crate) fn action_infos() -> Vec<ActionInfo> {
    vec![
        ActionInfo {
            name: BuiltIn::AddLink.name().into(),
            kind: ActionKind::Mutate,
            doc: Some(
                "Links this resource to another: pushes {target_id, title} onto _links.<relation>."
                    .into(),
            ),
            args_schema: Some(schema_value::<AddLinkArgs>()),
            result_schema: schema_value::<()>(),
        },
        ActionInfo {
            name: BuiltIn::FollowLinks.name().into(),
            kind: ActionKind::Read,
            doc: Some("The resources this one links to under a relation.".into()),
            args_schema: Some(schema_value::<FollowLinksArgs>()),
            result_schema: schema_value::<Vec<LinkedResource>>(),
        },
        ActionInfo {
            name: BuiltIn::IncomingLinks.name().into(),
            kind: ActionKind::Collection,
            doc: Some(
                "The resources of this collection that link to a target under a relation.".into(),
            ),
            args_schema: Some(schema_value::<IncomingLinksArgs>()),
            result_schema: schema_value::<Vec<Value>>(),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Patch;

    #[test]
    fn add_link_stores_as_the_original() {
        let link = AddLinkArgs {
            relation: "source".into(),
            target_id: ("user".into(), "7".into()),
            title: Some("Ann".into()),
        };
        let mut doc = json!({"value": 1});
        Patch::new(add_link_patch(&link)).apply(&mut doc).unwrap();
        Patch::new(add_link_patch(&link)).apply(&mut doc).unwrap();
        assert_eq!(
            doc["_links"]["source"],
            json!([{"target_id": ["user", "7"], "title": "Ann"}, {"target_id": ["user", "7"], "title": "Ann"}])
        );
        assert_eq!(doc["_links"]["latest"]["user"], json!(["user", "7"]));
        assert_eq!(targets(&doc, "source").len(), 2);
        let q = crate::Query::new(incoming_filter(&IncomingLinksArgs {
            relation: "source".into(),
            target_id: ("user".into(), "7".into()),
        }));
        assert!(q.filter().unwrap().matches(&doc));
    }

    #[test]
    fn relations_are_checked() {
        assert!(check_relation("source").is_ok());
        assert!(check_relation("latest").is_err());
        assert!(check_relation("a.b").is_err());
        assert!(check_relation("").is_err());
    }
}
