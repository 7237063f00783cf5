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
use crate::limits::Limits;
use crate::resource::ResourceInfo;

/// What the schemas of one document take from the serving node.
struct Context<'a> {
    limits: &'a Limits,
    max_body_bytes: usize,
}

/// The methods the document lists for `path` (for `Allow`): a concrete action path wins over
/// `/{collection}/{resource_id}`, as in OpenAPI. `None` for a path it does not describe.
pub(crate) fn allowed_methods(infos: &[ResourceInfo], path: &str) -> Option<&'static str> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let info = |c: &str| infos.iter().find(|i| i.name == c);
    match segments.as_slice() {
        [""] | ["healthz" | "readyz" | "metrics" | "openapi.json"] => Some("GET, HEAD"),
        [c] => info(c).map(|_| "GET, HEAD, POST"),
        [c, x] => info(c).map(|i| {
            let action = i
                .actions
                .iter()
                .any(|a| a.name == *x && !a.kind.on_resource());
            if action {
                "POST"
            } else {
                "GET, HEAD, PATCH, DELETE"
            }
        }),
        [c, _, a] => info(c)
            .filter(|i| {
                i.actions
                    .iter()
                    .any(|x| x.name == *a && x.kind.on_resource())
            })
            .map(|_| "POST"),
        _ => None,
    }
}

/// `GET /openapi.json`: the collections the user may list (as `GET /` shows them).
pub(crate) async fn handler(
    State(state): State<AppState>,
    user: Option<Extension<AuthUser>>,
) -> Json<Value> {
    let user = user.map(|Extension(u)| u).unwrap_or_default();
    let mut infos = state.node.resource_infos();
    infos.retain(|info| allowed(&state, &user, &info.name, &Operation::List));
    let mut doc = document_with(
        &infos,
        state.config.basic_auth.is_some() || state.config.users.is_some(),
        state.node.limits(),
        state.config.max_body_bytes,
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
/// HTTP Basic auth. The limits are the defaults ([`document_with`] takes a node's).
pub fn document(infos: &[ResourceInfo], basic_auth: bool) -> Value {
    document_with(
        infos,
        basic_auth,
        &Limits::default(),
        super::DEFAULT_MAX_BODY_BYTES,
    )
}

use crate::limits::ID_PATTERN;

/// The pattern of an `If-Match` header the server accepts: `*` or one version in quotes, or
/// empty (no condition, like `*`).
const IF_MATCH_PATTERN: &str = "^(\\*|\"[0-9]{1,19}\")?$";

/// The pattern of an `Idempotency-Key` (1 to 200 visible ASCII characters but `"`, quoted or
/// not).
const IDEMPOTENCY_KEY_PATTERN: &str = "^(\"[!#-~]{1,200}\"|[!#-~]{1,200})$";

/// The schema of a resource id under `limits`.
fn id_schema(limits: &Limits) -> Value {
    json!({
        "type": "string",
        "minLength": 1,
        "maxLength": limits.max_id_bytes,
        "pattern": ID_PATTERN,
        "description": "1 to ZS_MAX_ID_BYTES bytes of UTF-8 (`maxLength` counts characters, so an id of multibyte characters is refused sooner, with 413), without `.`, `*`, `>`, whitespace or control characters.",
    })
}

/// [`document`] with a node's limits and body limit: the ids' length, the page size and the
/// largest body are in the schemas.
pub fn document_with(
    infos: &[ResourceInfo],
    basic_auth: bool,
    limits: &Limits,
    max_body_bytes: usize,
) -> Value {
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
            "required": ["resource_id", "version"],
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
    let context = Context {
        limits,
        max_body_bytes,
    };
    for info in infos {
        add_resource(
            &context,
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
                    "headers": {"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}},
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                }),
            )
        })
        .collect();
    // Declared once (every POST, PATCH and DELETE takes it), not on each operation: a fuzzer
    // that sends one key with two different requests gets the 422 the header's draft asks for.
    let idempotency_key = json!({
        "name": "Idempotency-Key", "in": "header", "required": false,
        "description": "Taken by every POST, PATCH and DELETE: the same request again with the same key (within ZS_IDEMPOTENCY_KEY_TTL_MS) gets the first reply instead of running again; another request with it is a 422.",
        "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
    });
    let mut components_value = json!({
        "parameters": {"Idempotency-Key": idempotency_key},
        "schemas": Value::Object(components.schemas.into_iter().collect()),
        "responses": responses,
        "headers": {
            "X-Request-Id": {
                "description": "The request's id: the client's own `X-Request-Id` (1 to 64 of `A-Z a-z 0-9 - _ . :`) echoed, or a new one on a failure; the log line of the request carries it.",
                "schema": {"type": "string"},
            },
            "ETag": {
                "description": "The resource's version as a strong validator, `\"3\"`: send it back in If-Match.",
                "schema": {"type": "string", "pattern": "^\"[0-9]+\"$"},
            },
            "Link": {
                "description": "RFC 8288 `</collection?...&skip=N>; rel=\"next\"` when the page was cut short (ZS_MAX_PAGE or `limit`).",
                "schema": {"type": "string"},
            },
        },
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
    context: &Context<'_>,
    info: &ResourceInfo,
    components: &mut Components,
    paths: &mut Map<String, Value>,
    ids: &mut HashSet<String>,
    tags: &mut Vec<Value>,
) {
    let c = &info.name;
    let limits = context.limits;
    // The server refuses a field the resource does not declare (422): so does the schema of
    // what a client sends. A stored document may also carry `_links` (the link actions').
    let resource = components.add_root(c, &closed(&info.schema));
    let mut stored_schema = info.schema.clone();
    if let Some(properties) = stored_schema
        .get_mut("properties")
        .and_then(Value::as_object_mut)
    {
        properties.insert(
            "_links".into(),
            json!({"type": "object", "description": "The links of the resource (add_link)."}),
        );
    }
    // Its own title: client generators name a model after the title, and two models of one
    // name (the resource's and this) make them drop both.
    if let Some(title) = stored_schema.get("title").and_then(Value::as_str) {
        stored_schema["title"] = Value::from(format!("{title}Stored"));
    }
    let stored = components.add_root(&format!("{c}_stored"), &stored_schema);
    let document = components.add_fixed(
        &format!("{c}_document"),
        json!({
            "type": "object",
            "properties": {
                "resource_id": {"type": "string"},
                "resource_data": schema_ref(&stored),
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
        "schema": id_schema(limits),
    });
    let if_match = json!({
        "name": "If-Match", "in": "header", "required": false,
        "description": "`\"<version>\"` (an ETag of this API) or `*`: change only that version (412 otherwise). Empty is no condition, like `*`. Anything else is a 400.",
        "schema": {"type": "string", "pattern": IF_MATCH_PATTERN},
    });
    let etag_header = json!({"ETag": {"$ref": "#/components/headers/ETag"}});
    let patch = components.add_root(&format!("{c}_patch"), &patch_schema(&info.schema));
    let body_limit = format!(
        "At most {} bytes (ZS_MAX_BODY_BYTES).",
        context.max_body_bytes
    );
    let query_param = |name: &str, description: &str, schema: Value| json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema});

    paths.insert(
        format!("/{c}"),
        json!({
            "get": {
                "tags": [c],
                "operationId": unique_id(ids, &format!("list_{c}")),
                "summary": format!("List {c}"),
                "parameters": [
                    {
                        "name": "where", "in": "query", "required": false,
                        "description": format!("A JSON filter (MongoDB subset), e.g. {{\"status\": \"done\"}}: field names, and the operators $eq $ne $gt $gte $lt $lte $in $nin $exists $and $or $nor $not $regex $text (an unknown one is a 400); at most ZS_MAX_FILTER_DEPTH ({}) levels and ZS_MAX_FILTER_CLAUSES ({}) keys (413).", limits.max_filter_depth, limits.max_filter_clauses),
                        "content": {"application/json": {"schema": filter_schema(limits)}},
                    },
                    query_param("sort", "`value,-status` (fields, `-` for descending), or a JSON object {\"value\": 1, \"status\": -1}.", json!({"type": "string", "pattern": crate::query::SORT_PATTERN})),
                    query_param("limit", &format!("At most this many results; 0 or absent: a page of ZS_MAX_PAGE ({}), which a larger limit is cut to (a `Link` to the next page then).", limits.max_page), json!({"type": "integer", "minimum": 0, "maximum": u64::MAX})),
                    query_param("skip", "Skip this many results first.", json!({"type": "integer", "minimum": 0, "maximum": u64::MAX})),
                    query_param("text", "Full-text search.", json!({"type": "string"})),
                ],
                "responses": responses(
                    ("200", {
                        let mut ok = json_response("The matching resources", json!({"type": "array", "items": schema_ref(&document), "maxItems": limits.max_page}));
                        ok["headers"] = json!({"Link": {"$ref": "#/components/headers/Link"}});
                        ok
                    }),
                    &["400", "404", "413"],
                ),
            },
            "post": {
                "tags": [c],
                "operationId": unique_id(ids, &format!("create_{c}")),
                "summary": format!("Create a {c}"),
                "requestBody": {
                    "required": true,
                    "description": body_limit,
                    "content": {"application/json": {"schema": {
                        "type": "object",
                        "properties": {
                            "resource_id": {
                                "anyOf": [id_schema(limits), {"type": "null"}],
                                "description": "Chosen id; generated when absent or null.",
                            },
                            "resource_data": schema_ref(&resource),
                        },
                        "required": ["resource_data"],
                    }}},
                },
                "responses": responses(
                    ("201", with_headers(json_response("Created", schema_ref("ResourceId")), &etag_header)),
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
                "responses": with_not_modified(responses(("200", with_headers(json_response("The resource", schema_ref(&document)), &etag_header)), &["400", "404", "413"])),
            },
            "patch": {
                "tags": [c],
                "operationId": unique_id(ids, &format!("patch_{c}")),
                "summary": format!("Update a {c}"),
                "parameters": [if_match.clone()],
                "requestBody": {
                    "required": true,
                    "description": body_limit,
                    "content": {"application/json": {"schema": {
                        "type": "object",
                        "properties": {"patch": schema_ref(&patch)},
                        "required": ["patch"],
                    }}},
                },
                "responses": responses(
                    ("200", with_headers(json_response("The updated resource", schema_ref(&document)), &etag_header)),
                    &["400", "404", "409", "412", "413", "415", "422"],
                ),
            },
            "delete": {
                "tags": [c],
                "operationId": unique_id(ids, &format!("delete_{c}")),
                "summary": format!("Delete a {c}"),
                "parameters": [if_match.clone()],
                "responses": responses(("204", json!({"description": "Deleted"})), &["400", "404", "409", "412", "413", "422"]),
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
                &["400", "404", "409", "413", "415", "422"],
            ),
        });
        if let Some(doc) = &action.doc {
            operation["description"] = Value::from(doc.as_str());
        }
        if let Some(args) = &action.args_schema {
            let args = components.add_root(&format!("{c}_{a}_args"), args);
            operation["requestBody"] = json!({
                "required": true,
                "description": body_limit,
                "content": {"application/json": {"schema": schema_ref(&args)}},
            });
        }
        if on_resource {
            operation["parameters"] = json!([if_match.clone()]);
            operation["responses"]["412"] = error_ref("412");
            if action.name.starts_with(|ch: char| ch.is_ascii_lowercase()) {
                let ok = operation["responses"]["200"].take();
                operation["responses"]["200"] = with_headers(ok, &etag_header);
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

/// A response with these headers.
fn with_headers(mut response: Value, headers: &Value) -> Value {
    response["headers"] = headers.clone();
    response
}

/// A resource's schema as what a client may send: `additionalProperties: false` on the root
/// object when it says nothing (the server refuses undeclared fields).
fn closed(schema: &Value) -> Value {
    let mut schema = schema.clone();
    if let Some(map) = schema.as_object_mut()
        && map.contains_key("properties")
        && !map.contains_key("additionalProperties")
    {
        map.insert("additionalProperties".into(), Value::Bool(false));
    }
    schema
}

/// The schema of a `where` filter, as the server reads it: a JSON object.
fn filter_schema(limits: &Limits) -> Value {
    // Fields equal to values; the operators (keys that start with `$`) are left out: the
    // description lists them.
    let field = json!({"pattern": "^[^$]"});
    json!({
        "type": "object",
        "maxProperties": limits.max_filter_clauses,
        "propertyNames": field,
        "additionalProperties": {"anyOf": [
            {"type": ["string", "number", "boolean", "null"]},
            {"type": "array", "items": {"type": ["string", "number", "boolean", "null"]}},
        ]},
    })
}

/// The schema of a patch of a resource of `schema`: `$set` (top-level fields, with their
/// schemas) and `$unset` (the optional ones), at least one operator. The server also takes
/// dotted paths, `$inc`, `$push` and `$pull` (see docs/http.md); the schema keeps to what it
/// can say exactly.
fn patch_schema(schema: &Value) -> Value {
    let properties = schema
        .get("properties")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let required: HashSet<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let unset_names: Vec<String> = properties
        .keys()
        .filter(|k| !required.contains(k.as_str()))
        .cloned()
        .collect();
    let unset: Map<String, Value> = properties
        .keys()
        .filter(|k| !required.contains(k.as_str()))
        .map(|k| {
            (
                k.clone(),
                json!({"description": "Any value: the field is removed."}),
            )
        })
        .collect();
    let mut patch = json!({
        "type": "object",
        "description": "An update document: $set, $unset (also $inc, $push, $pull and dotted paths: see the guide).",
        "properties": {
            "$set": {"type": "object", "properties": properties, "additionalProperties": false, "minProperties": 1},
            "$unset": {"type": "object", "properties": unset, "additionalProperties": false, "minProperties": 1},
        },
        "additionalProperties": false,
        "minProperties": 1,
    });
    // A field both set and unset is a conflict (400).
    let both: Vec<Value> = unset_names
        .iter()
        .map(|f| {
            json!({"not": {
                "required": ["$set", "$unset"],
                "properties": {"$set": {"required": [f]}, "$unset": {"required": [f]}},
            }})
        })
        .collect();
    if !both.is_empty() {
        patch["allOf"] = Value::Array(both);
    }
    // The field schemas' references stay the resource's definitions'.
    for key in ["$defs", "definitions"] {
        if let Some(defs) = schema.get(key) {
            patch[key] = defs.clone();
        }
    }
    patch
}

/// Component names are `[A-Za-z0-9._-]+`.
pub(super) fn sanitize(name: &str) -> String {
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
pub(super) struct Components {
    pub(super) schemas: BTreeMap<String, Value>,
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
    pub(super) fn add_root(&mut self, preferred: &str, schema: &Value) -> String {
        let mut root = schema.clone();
        for_generators(&mut root);
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

/// Rewrites, wherever a schema stands (the root included), what client generators
/// (openapi-python-client) refuse or mis-read into an equivalent schema:
///
/// - the boolean schema `true` (anything: what schemars makes of a `serde_json::Value`) becomes
///   `{}`; `false` is left as it is (`additionalProperties: false` is understood everywhere);
/// - a `oneOf` of distinct scalar `const`s (what schemars makes of an enum whose variants have
///   doc comments) becomes an `enum` of them, the variants' descriptions appended to the
///   schema's own.
fn for_generators(schema: &mut Value) {
    const ONE: [&str; 10] = [
        "items",
        "additionalProperties",
        "unevaluatedProperties",
        "unevaluatedItems",
        "not",
        "contains",
        "if",
        "then",
        "else",
        "propertyNames",
    ];
    const MANY: [&str; 4] = ["allOf", "anyOf", "oneOf", "prefixItems"];
    const NAMED: [&str; 5] = [
        "properties",
        "patternProperties",
        "$defs",
        "definitions",
        "dependentSchemas",
    ];
    if *schema == Value::Bool(true) {
        *schema = Value::Object(Map::new());
        return;
    }
    let Value::Object(map) = schema else {
        return;
    };
    consts_as_enum(map);
    for (key, value) in map.iter_mut() {
        let key = key.as_str();
        if ONE.contains(&key) {
            for_generators(value);
        } else if MANY.contains(&key)
            && let Value::Array(items) = value
        {
            items.iter_mut().for_each(for_generators);
        } else if NAMED.contains(&key)
            && let Value::Object(named) = value
        {
            named.values_mut().for_each(for_generators);
        }
    }
    // `items: [...]` (tuples of older drafts): a list of schemas.
    if let Some(Value::Array(items)) = map.get_mut("items") {
        items.iter_mut().for_each(for_generators);
    }
}

/// `{"oneOf": [{"const": "a", "description": "A"}, {"const": "b"}]}` ->
/// `{"type": "string", "enum": ["a", "b"], "description": "`a`: A"}`, when every branch is a
/// distinct scalar `const` with at most a `type`, `title` and `description`.
fn consts_as_enum(map: &mut Map<String, Value>) {
    let Some(Value::Array(branches)) = map.get("oneOf") else {
        return;
    };
    let mut consts: Vec<Value> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    for branch in branches {
        let Value::Object(branch) = branch else {
            return;
        };
        let plain = branch
            .keys()
            .all(|k| matches!(k.as_str(), "const" | "type" | "description" | "title"));
        let value = match branch.get("const") {
            Some(v @ (Value::String(_) | Value::Number(_) | Value::Bool(_))) => v.clone(),
            _ => return,
        };
        if !plain || consts.contains(&value) {
            return;
        }
        if let Some(Value::String(description)) = branch.get("description") {
            let name = value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned);
            notes.push(format!("`{name}`: {description}"));
        }
        consts.push(value);
    }
    if consts.is_empty() {
        return;
    }
    map.remove("oneOf");
    if !map.contains_key("type") && consts.iter().all(Value::is_string) {
        map.insert("type".into(), Value::from("string"));
    }
    map.insert("enum".into(), Value::Array(consts));
    if !notes.is_empty() {
        let own = map.get("description").and_then(Value::as_str);
        let text = match own {
            Some(own) => format!("{own} {}", notes.join("; ")),
            None => notes.join("; "),
        };
        map.insert("description".into(), Value::from(text));
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
    fn true_schemas_become_empty_objects_where_a_schema_stands() {
        let mut schema = json!({
            "type": "object",
            "properties": {"any": true, "list": {"type": "array", "items": true}},
            "additionalProperties": false,
            "anyOf": [true, {"const": true}],
            "default": true,
            "enum": [true],
        });
        for_generators(&mut schema);
        assert_eq!(
            schema,
            json!({
                "type": "object",
                "properties": {"any": {}, "list": {"type": "array", "items": {}}},
                "additionalProperties": false,
                "anyOf": [{}, {"const": true}],
                "default": true,
                "enum": [true],
            })
        );
        let mut root = json!(true);
        for_generators(&mut root);
        assert_eq!(root, json!({}));
    }

    #[test]
    fn a_one_of_of_consts_becomes_an_enum() {
        let mut schema = json!({
            "description": "Where it is.",
            "oneOf": [
                {"type": "string", "const": "pending", "description": "Waiting."},
                {"type": "string", "const": "done"},
            ],
        });
        for_generators(&mut schema);
        assert_eq!(
            schema,
            json!({
                "description": "Where it is. `pending`: Waiting.",
                "type": "string",
                "enum": ["pending", "done"],
            })
        );
        // Anything else in a branch, or a repeated const: left as it is.
        for kept in [
            json!({"oneOf": [{"const": "a", "minLength": 1}, {"const": "b"}]}),
            json!({"oneOf": [{"const": "a"}, {"const": "a"}]}),
            json!({"oneOf": [{"const": "a"}, {"type": "object"}]}),
        ] {
            let mut schema = kept.clone();
            for_generators(&mut schema);
            assert_eq!(schema, kept);
        }
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize("my collection/x"), "my_collection_x");
        assert_eq!(decode_segment("a~1b%20c~0"), "a/b c~");
    }
}
