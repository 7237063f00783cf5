//! `GET /openapi.json`: an OpenAPI 3.1 document built, at request time, from the schemas and
//! actions of every collection known in the cluster.
//!
//! Each resource's JSON Schema (and each action's argument and result schema) becomes a
//! component schema; their `$defs` are hoisted into the components too and every `$ref` is
//! rewritten to point there, so the document stands on its own.

use std::collections::{BTreeMap, HashMap, HashSet};

use axum::Json;
use axum::extract::{Extension, State};
use serde_json::{Map, Value, json};

use super::auth::allowed;
use super::{AppState, AuthUser};
use crate::access::Operation;
use crate::resource::ResourceInfo;

/// `GET /openapi.json`: the collections the user may list (as `GET /` shows them).
pub(crate) async fn handler(
    State(state): State<AppState>,
    user: Option<Extension<AuthUser>>,
) -> Json<Value> {
    let user = user.map(|Extension(u)| u).unwrap_or_default();
    let mut infos = state.node.resource_infos();
    infos.retain(|info| allowed(&state, &user, &info.name, &Operation::List));
    let mut doc = document(
        &infos,
        state.config.basic_auth.is_some() || state.config.users.is_some(),
    );
    if state.config.jwt.is_some() {
        // Bearer tokens: a second scheme, either one will do.
        doc["components"]["securitySchemes"]["bearerAuth"] =
            json!({"type": "http", "scheme": "bearer", "bearerFormat": "JWT"});
        let security = doc["security"].as_array_mut().map(std::mem::take);
        let mut security = security.unwrap_or_default();
        security.push(json!({"bearerAuth": []}));
        doc["security"] = Value::Array(security);
    }
    // The probes need a user like every other route with ZS_HEALTH_AUTH=on, the metrics unless
    // ZS_METRICS_AUTH=off.
    let probes = super::health::PROBES
        .iter()
        .filter(|_| state.config.health_auth);
    let metrics = [super::health::METRICS]
        .into_iter()
        .filter(|_| state.config.metrics_auth);
    for path in probes.copied().chain(metrics) {
        if let Some(op) = doc["paths"][path]["get"].as_object_mut() {
            op.remove("security");
            op["responses"]["401"] = error_ref("401");
            op["responses"]["403"] = error_ref("403");
        }
    }
    Json(doc)
}

/// The error responses every operation may answer, as `(status, component name, description)`.
const ERRORS: [(&str, &str, &str); 12] = [
    (
        "400",
        "BadRequest",
        "Malformed JSON, bad query or refused action",
    ),
    ("401", "Unauthorized", "Authentication required"),
    (
        "403",
        "Forbidden",
        "Invalid credentials or operation not allowed",
    ),
    ("404", "NotFound", "Unknown collection, resource or action"),
    (
        "409",
        "Conflict",
        "A resource with this id already exists, or a change kept losing to concurrent changes",
    ),
    (
        "412",
        "PreconditionFailed",
        "If-Match names another version than the resource's",
    ),
    ("413", "PayloadTooLarge", "Request body too large"),
    (
        "415",
        "UnsupportedMediaType",
        "A body sent without Content-Type: application/json",
    ),
    ("422", "UnprocessableEntity", "The body breaks the schema"),
    ("500", "InternalError", "Internal error"),
    (
        "503",
        "ServiceUnavailable",
        "No node owns the collection any more",
    ),
    ("504", "GatewayTimeout", "The owner did not answer in time"),
];

/// The OpenAPI 3.1 document of these resources; with `basic_auth`, every operation requires
/// HTTP Basic auth.
pub fn document(infos: &[ResourceInfo], basic_auth: bool) -> Value {
    let mut components = Components::default();
    components.reserve_fixed(
        "Error",
        json!({
            "type": "object",
            "description": "Every error: {\"error\": message}.",
            "properties": {"error": {"type": "string"}},
            "required": ["error"],
        }),
    );
    components.reserve_fixed(
        "ResourceId",
        json!({
            "type": "object",
            "properties": {
                "resource_id": {"type": "string"},
                "version": {"type": "integer", "minimum": 0, "description": "The new resource's version (1)."},
            },
            "required": ["resource_id"],
        }),
    );
    let mut operation_ids = HashSet::new();
    let mut paths = Map::new();
    paths.insert(
        "/".into(),
        json!({"get": {
            "operationId": unique_id(&mut operation_ids, "index"),
            "summary": "The collections known in the cluster",
            "responses": {
                "200": json_response("Collection names", json!({
                    "type": "object",
                    "properties": {"resources": {"type": "array", "items": {"type": "string"}}},
                    "required": ["resources"],
                })),
                "401": error_ref("401"),
                "403": error_ref("403"),
            },
        }}),
    );
    add_probes(&mut paths, &mut operation_ids);
    let mut tags = Vec::new();
    for info in infos {
        add_resource(
            info,
            &mut components,
            &mut paths,
            &mut operation_ids,
            &mut tags,
        );
    }
    let responses: Map<String, Value> = ERRORS
        .iter()
        .map(|(_, name, description)| {
            (
                (*name).to_owned(),
                json!({
                    "description": description,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                }),
            )
        })
        .collect();
    let mut components_value = json!({
        "schemas": Value::Object(components.schemas.into_iter().collect()),
        "responses": responses,
    });
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "zeroservices",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "REST API of every resource known in the cluster. Change events \
                stream on the websocket GET /realtime: send {\"type\": \"subscribe\", \"topics\": \
                [\"power\"]} and receive {\"type\": \"event\", \"topic\", \"data\"}.",
        },
        "tags": tags,
        "paths": paths,
    });
    if basic_auth {
        components_value["securitySchemes"] =
            json!({"basicAuth": {"type": "http", "scheme": "basic"}});
        doc["security"] = json!([{"basicAuth": []}]);
    }
    doc["components"] = components_value;
    doc
}

/// `GET /healthz` and `GET /readyz`, open to anyone (`security: []`; the handler takes that
/// away when `ZS_HEALTH_AUTH` is on).
fn add_probes(paths: &mut Map<String, Value>, operation_ids: &mut HashSet<String>) {
    let checks = json!({
        "type": "object",
        "description": "Each check (node, discovery, medium, store): \"ok\", or why not.",
        "additionalProperties": {"type": "string"},
    });
    let readiness = json!({
        "type": "object",
        "properties": {
            "status": {"type": "string", "enum": ["ready", "not_ready"]},
            "error": {"type": "string", "description": "The failed checks, when not ready."},
            "checks": checks,
            "request_id": {"type": "string"},
        },
        "required": ["status", "checks"],
    });
    paths.insert(
        "/healthz".into(),
        json!({"get": {
            "operationId": unique_id(operation_ids, "healthz"),
            "summary": "Liveness: the process answers",
            "security": [],
            "responses": {
                "200": json_response("Alive", json!({
                    "type": "object",
                    "properties": {"status": {"type": "string", "enum": ["ok"]}},
                    "required": ["status"],
                })),
            },
        }}),
    );
    paths.insert(
        super::health::METRICS.into(),
        json!({"get": {
            "operationId": unique_id(operation_ids, "metrics"),
            "summary": "The node's counters, for Prometheus (the text format 0.0.4; OpenMetrics when Accept asks for it)",
            "security": [],
            "responses": {
                "200": {
                    "description": "The counters",
                    "content": {
                        "text/plain": {"schema": {"type": "string"}},
                        "application/openmetrics-text": {"schema": {"type": "string"}},
                    },
                },
            },
        }}),
    );
    paths.insert(
        "/readyz".into(),
        json!({"get": {
            "operationId": unique_id(operation_ids, "readyz"),
            "summary": "Readiness: the node runs, its discovery and medium are up, its stores answer",
            "security": [],
            "responses": {
                "200": json_response("Ready", readiness.clone()),
                "503": json_response("Not ready: `error` says why", readiness),
            },
        }}),
    );
}

fn error_ref(status: &str) -> Value {
    let name = ERRORS
        .iter()
        .find(|(s, _, _)| *s == status)
        .map(|(_, name, _)| *name)
        .unwrap_or("InternalError");
    json!({ "$ref": format!("#/components/responses/{name}") })
}

fn json_response(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// A `responses` object: `ok` plus these error statuses.
fn responses(ok: (&str, Value), errors: &[&str]) -> Value {
    let mut map = Map::new();
    map.insert(ok.0.to_owned(), ok.1);
    for status in ["401", "403"].iter().chain(errors) {
        map.insert((*status).to_owned(), error_ref(status));
    }
    map.insert("503".into(), error_ref("503"));
    map.insert("504".into(), error_ref("504"));
    Value::Object(map)
}

/// Adds the 304 of a GET with `If-None-Match`.
fn with_not_modified(mut responses: Value) -> Value {
    responses["304"] =
        json!({"description": "Not modified: the resource's ETag matches If-None-Match"});
    responses
}

fn unique_id(ids: &mut HashSet<String>, base: &str) -> String {
    let base = sanitize(base);
    let mut id = base.clone();
    let mut n = 2;
    while !ids.insert(id.clone()) {
        id = format!("{base}_{n}");
        n += 1;
    }
    id
}

fn add_resource(
    info: &ResourceInfo,
    components: &mut Components,
    paths: &mut Map<String, Value>,
    ids: &mut HashSet<String>,
    tags: &mut Vec<Value>,
) {
    let c = &info.name;
    let resource = components.add_root(c, &info.schema);
    let document = components.add_fixed(
        &format!("{c}_document"),
        json!({
            "type": "object",
            "properties": {
                "resource_id": {"type": "string"},
                "resource_data": schema_ref(&resource),
                "version": {
                    "type": "integer", "minimum": 0,
                    "description": "1 when created, one more at each change; the ETag, quoted.",
                },
            },
            "required": ["resource_id", "resource_data", "version"],
        }),
    );
    let mut tag = json!({ "name": c });
    if let Some(description) = info.schema.get("description").and_then(Value::as_str) {
        tag["description"] = Value::from(description);
    }
    tags.push(tag);
    let id_param = json!({
        "name": "resource_id", "in": "path", "required": true,
        "description": "The resource id (percent-encoded).",
        "schema": {"type": "string"},
    });
    let if_match = json!({
        "name": "If-Match", "in": "header", "required": false,
        "description": "`\"<version>\"` (an ETag of this API) or `*`: change only that version (412 otherwise). Anything else is a 400.",
        "schema": {"type": "string"},
    });
    let query_param = |name: &str, description: &str, schema: Value| json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema});

    paths.insert(
        format!("/{c}"),
        json!({
            "get": {
                "tags": [c],
                "operationId": unique_id(ids, &format!("list_{c}")),
                "summary": format!("List {c}"),
                "parameters": [
                    query_param("where", "A JSON filter (MongoDB subset), e.g. {\"status\": \"done\"}.", json!({"type": "string"})),
                    query_param("sort", "`value,-status` or a JSON object {\"value\": 1, \"status\": -1}.", json!({"type": "string"})),
                    query_param("limit", "At most this many results.", json!({"type": "integer", "minimum": 0})),
                    query_param("skip", "Skip this many results first.", json!({"type": "integer", "minimum": 0})),
                    query_param("text", "Full-text search.", json!({"type": "string"})),
                ],
                "responses": responses(
                    ("200", json_response("The matching resources", json!({"type": "array", "items": schema_ref(&document)}))),
                    &["400", "404"],
                ),
            },
            "post": {
                "tags": [c],
                "operationId": unique_id(ids, &format!("create_{c}")),
                "summary": format!("Create a {c}"),
                "requestBody": {
                    "required": true,
                    "content": {"application/json": {"schema": {
                        "type": "object",
                        "properties": {
                            "resource_id": {"type": "string", "description": "Chosen id; generated when absent."},
                            "resource_data": schema_ref(&resource),
                        },
                        "required": ["resource_data"],
                    }}},
                },
                "responses": responses(
                    ("201", json_response("Created", schema_ref("ResourceId"))),
                    &["400", "404", "409", "413", "415", "422"],
                ),
            },
        }),
    );

    paths.insert(
        format!("/{c}/{{resource_id}}"),
        json!({
            "parameters": [id_param],
            "get": {
                "tags": [c],
                "operationId": unique_id(ids, &format!("get_{c}")),
                "summary": format!("Read a {c}"),
                "parameters": [{
                    "name": "If-None-Match", "in": "header", "required": false,
                    "description": "ETags (or `*`): 304 without a body when the resource's matches.",
                    "schema": {"type": "string"},
                }],
                "responses": with_not_modified(responses(("200", json_response("The resource", schema_ref(&document))), &["404"])),
            },
            "patch": {
                "tags": [c],
                "operationId": unique_id(ids, &format!("patch_{c}")),
                "summary": format!("Update a {c}"),
                "parameters": [if_match.clone()],
                "requestBody": {
                    "required": true,
                    "content": {"application/json": {"schema": {
                        "type": "object",
                        "properties": {"patch": {
                            "type": "object",
                            "description": "An update document: $set, $unset, $inc, $push, $pull.",
                        }},
                        "required": ["patch"],
                    }}},
                },
                "responses": responses(
                    ("200", json_response("The updated resource", schema_ref(&document))),
                    &["400", "404", "409", "412", "413", "415", "422"],
                ),
            },
            "delete": {
                "tags": [c],
                "operationId": unique_id(ids, &format!("delete_{c}")),
                "summary": format!("Delete a {c}"),
                "parameters": [if_match.clone()],
                "responses": responses(("204", json!({"description": "Deleted"})), &["400", "404", "412"]),
            },
        }),
    );

    for action in &info.actions {
        let a = &action.name;
        let on_resource = action.kind.on_resource();
        let result = components.add_root(&format!("{c}_{a}_result"), &action.result_schema);
        let mut operation = json!({
            "tags": [c],
            "operationId": unique_id(ids, &format!("{c}_{a}")),
            "summary": action.doc.clone().unwrap_or_else(|| format!("Action {a} of {c}")),
            "responses": responses(
                ("200", json_response("The action's result", schema_ref(&result))),
                &["400", "404", "413", "415", "422"],
            ),
        });
        if let Some(doc) = &action.doc {
            operation["description"] = Value::from(doc.as_str());
        }
        if let Some(args) = &action.args_schema {
            let args = components.add_root(&format!("{c}_{a}_args"), args);
            operation["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": schema_ref(&args)}},
            });
        }
        if on_resource {
            operation["parameters"] = json!([if_match.clone()]);
            for status in ["409", "412"] {
                operation["responses"][status] = error_ref(status);
            }
        }
        let (path, item) = if on_resource {
            (
                format!("/{c}/{{resource_id}}/{a}"),
                json!({ "parameters": [id_param.clone()], "post": operation }),
            )
        } else {
            (format!("/{c}/{a}"), json!({ "post": operation }))
        };
        paths.insert(path, item);
    }
}

/// Component names are `[A-Za-z0-9._-]+`.
fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() { "_".to_owned() } else { s }
}

/// The component schemas being built, with unique names.
#[derive(Default)]
struct Components {
    schemas: BTreeMap<String, Value>,
    /// For shared `$defs`: the original (un-rewritten) schema of each hoisted definition.
    originals: HashMap<String, Value>,
}

impl Components {
    fn unique(&self, preferred: &str) -> String {
        let base = sanitize(preferred);
        let mut name = base.clone();
        let mut n = 2;
        while self.schemas.contains_key(&name) {
            name = format!("{base}_{n}");
            n += 1;
        }
        name
    }

    fn reserve_fixed(&mut self, name: &str, schema: Value) {
        self.schemas.insert(name.to_owned(), schema);
    }

    fn add_fixed(&mut self, preferred: &str, schema: Value) -> String {
        let name = self.unique(preferred);
        self.schemas.insert(name.clone(), schema);
        name
    }

    /// Adds a root JSON Schema (with its `$defs`) under a name close to `preferred`; returns
    /// the name.
    fn add_root(&mut self, preferred: &str, schema: &Value) -> String {
        let mut root = schema.clone();
        let mut defs = Map::new();
        if let Value::Object(map) = &mut root {
            map.remove("$schema");
            for key in ["$defs", "definitions"] {
                if let Some(Value::Object(d)) = map.remove(key) {
                    defs.extend(d);
                }
            }
        }
        let root_name = self.unique(preferred);
        // Reserve the root name before naming the definitions.
        self.schemas.insert(root_name.clone(), Value::Bool(true));
        let mut renames: HashMap<String, String> = HashMap::new();
        let mut fresh = Vec::new();
        for (def, def_schema) in defs {
            let preferred = sanitize(&def);
            // A definition with no references of its own, identical to one already hoisted
            // under the same name (the same Rust type used by two resources), is shared.
            let shared =
                !contains_ref(&def_schema) && self.originals.get(&preferred) == Some(&def_schema);
            if shared {
                renames.insert(def, preferred);
                continue;
            }
            let name = self.unique(&preferred);
            self.schemas.insert(name.clone(), Value::Bool(true));
            if !contains_ref(&def_schema) {
                self.originals.insert(name.clone(), def_schema.clone());
            }
            renames.insert(def, name.clone());
            fresh.push((name, def_schema));
        }
        rewrite_refs(&mut root, &root_name, &renames);
        self.schemas.insert(root_name.clone(), root);
        for (name, mut def_schema) in fresh {
            rewrite_refs(&mut def_schema, &root_name, &renames);
            self.schemas.insert(name, def_schema);
        }
        root_name
    }
}

fn contains_ref(value: &Value) -> bool {
    match value {
        Value::Object(map) => map
            .iter()
            .any(|(k, v)| k == "$ref" || k == "$dynamicRef" || contains_ref(v)),
        Value::Array(items) => items.iter().any(contains_ref),
        _ => false,
    }
}

/// Decodes one JSON pointer segment of a URI fragment (`%25` and `~1`, `~0`).
fn decode_segment(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit()
            && let Ok(b) = u8::from_str_radix(&segment[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out)
        .replace("~1", "/")
        .replace("~0", "~")
}

/// Points the local `$ref`s of a hoisted schema at the components: `#/$defs/X...` to the
/// definition's component, `#` and `#/...` to the root's component.
fn rewrite_refs(value: &mut Value, root: &str, renames: &HashMap<String, String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if key == "$ref"
                    && let Value::String(target) = v
                    && let Some(new) = rewrite_ref(target, root, renames)
                {
                    *target = new;
                } else {
                    rewrite_refs(v, root, renames);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                rewrite_refs(item, root, renames);
            }
        }
        _ => {}
    }
}

fn rewrite_ref(target: &str, root: &str, renames: &HashMap<String, String>) -> Option<String> {
    let pointer = target.strip_prefix('#')?;
    for prefix in ["/$defs/", "/definitions/"] {
        if let Some(rest) = pointer.strip_prefix(prefix) {
            let (segment, tail) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, ""),
            };
            let name = renames.get(&decode_segment(segment))?;
            return Some(format!("#/components/schemas/{name}{tail}"));
        }
    }
    if pointer.is_empty() || pointer.starts_with('/') {
        return Some(format!("#/components/schemas/{root}{pointer}"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hoists_defs_and_rewrites_refs() {
        let mut c = Components::default();
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "Power",
            "type": "object",
            "properties": {
                "status": {"$ref": "#/$defs/Status"},
                "meta": {"$ref": "#/$defs/Meta"},
                "next": {"anyOf": [{"$ref": "#"}, {"type": "null"}]},
            },
            "$defs": {
                "Status": {"type": "string", "enum": ["pending", "done"]},
                "Meta": {"type": "object", "properties": {"s": {"$ref": "#/$defs/Status"}}},
            },
        });
        let name = c.add_root("power", &schema);
        assert_eq!(name, "power");
        let root = &c.schemas["power"];
        assert!(root.get("$defs").is_none() && root.get("$schema").is_none());
        assert_eq!(
            root["properties"]["status"]["$ref"],
            "#/components/schemas/Status"
        );
        assert_eq!(
            root["properties"]["next"]["anyOf"][0]["$ref"],
            "#/components/schemas/power"
        );
        assert_eq!(
            c.schemas["Meta"]["properties"]["s"]["$ref"],
            "#/components/schemas/Status"
        );

        // The same Status elsewhere is shared; a different one gets its own name.
        let other = json!({
            "type": "object",
            "properties": {"status": {"$ref": "#/$defs/Status"}, "meta": {"$ref": "#/$defs/Meta"}},
            "$defs": {
                "Status": {"type": "string", "enum": ["pending", "done"]},
                "Meta": {"type": "integer"},
            },
        });
        let name = c.add_root("job", &other);
        assert_eq!(name, "job");
        let job = &c.schemas["job"];
        assert_eq!(
            job["properties"]["status"]["$ref"],
            "#/components/schemas/Status"
        );
        assert_eq!(
            job["properties"]["meta"]["$ref"],
            "#/components/schemas/Meta_2"
        );
        assert_eq!(c.schemas["Meta_2"], json!({"type": "integer"}));
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize("my collection/x"), "my_collection_x");
        assert_eq!(decode_segment("a~1b%20c~0"), "a/b c~");
    }
}
