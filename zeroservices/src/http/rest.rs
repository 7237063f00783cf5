//! The REST routes: every call becomes a [`Request`] to [`crate::Node::request`], which routes
//! it to the collection's owner.
//!
//! # Versions and conditional requests
//!
//! A reply about one resource (GET, PATCH, POST create, a resource action) has an `ETag`, the
//! resource's version as a strong validator: `"3"`. `If-Match: "3"` on PATCH, DELETE and a
//! resource action (`add_link` too) makes it conditional: the owner changes nothing and answers
//! 412 when the resource is at another version (the condition travels in the request, so it holds
//! whichever node the owner is). `If-Match: *` is no condition (the resource must exist, as
//! always). Any other `If-Match` (a weak `W/"3"`, a tag that is not a version, a list of several)
//! is refused with 400: it names no version this server could ever match. `If-None-Match` on GET
//! answers 304 (no body, the `ETag`) when one of its tags (weak comparison) or `*` matches.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Extension, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::auth::{Operation, allowed, authorize};
use super::error::ApiError;
use super::{AppState, AuthUser};
use crate::medium::Request;
use crate::protocol::{ActionReply, AddLinkArgs, BuiltIn, Call, CreateArgs, ListArgs, PatchArgs};
use crate::{Error, Patch};

type ApiResult<T = Response> = Result<T, ApiError>;

/// Whether `action` is a built-in with a route of its own (so never reachable as an action
/// route); the link actions are reached as actions (`POST /power/42/add_link`).
fn has_own_route(action: &str) -> bool {
    matches!(
        BuiltIn::from_name(action),
        Some(BuiltIn::Create | BuiltIn::Get | BuiltIn::Patch | BuiltIn::Delete | BuiltIn::List)
    )
}

fn user(ext: Option<Extension<AuthUser>>) -> AuthUser {
    ext.map(|Extension(u)| u).unwrap_or_default()
}

/// The request headers the REST handlers read (`Content-Type`, `Idempotency-Key`, `If-Match`,
/// `If-None-Match`), copied out of the request: the `HeaderMap` extractor clones every header of
/// every request (its table and each value), where a GET without conditions needs none.
pub(crate) struct Sent(HeaderMap);

/// The headers [`Sent`] keeps.
const SENT: [HeaderName; 4] = [
    header::CONTENT_TYPE,
    HeaderName::from_static("idempotency-key"),
    header::IF_MATCH,
    header::IF_NONE_MATCH,
];

impl<S: Send + Sync> FromRequestParts<S> for Sent {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let mut headers = HeaderMap::new();
        for name in &SENT {
            for value in parts.headers.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        Ok(Self(headers))
    }
}

/// The longest `Idempotency-Key` accepted, in bytes.
pub(crate) const MAX_IDEMPOTENCY_KEY_BYTES: usize = 200;

/// Sets `request`'s idempotency key from an `Idempotency-Key` header (as in the IETF httpapi
/// draft: a string, quoted or not, of 1 to 200 visible ASCII characters), prefixed with the
/// calling user so two users' keys never meet.
fn with_idempotency_key(
    headers: &HeaderMap,
    user: &AuthUser,
    mut request: Request,
) -> ApiResult<Request> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(request);
    };
    let bad = || {
        ApiError::bad_request(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} visible ASCII characters but `\"`, quoted or not"
        ))
    };
    let text = value.to_str().map_err(|_| bad())?;
    let key = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY_BYTES
        || !key.bytes().all(|b| b.is_ascii_graphic() && b != b'"')
    {
        return Err(bad());
    }
    let who = user.0.as_ref().map_or("", |u| u.name.as_str());
    request.idempotency_key = Some(format!("{}:{who}:{key}", who.len()));
    Ok(request)
}

/// The body as bytes, with 413 for a body over the limit and 400 for anything else unreadable.
fn body_bytes(body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(status, "request body is too large")
        } else {
            ApiError::bad_request(format!("cannot read the request body: {rejection}"))
        }
    })
}

/// Whether a `Content-Type` value names JSON: `application/json` or `application/*+json`, any
/// parameters (`; charset=utf-8`) allowed, in any case.
pub(crate) fn is_json_media_type(value: &str) -> bool {
    let essence = value.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    let subtype = subtype.to_ascii_lowercase();
    kind.eq_ignore_ascii_case("application")
        && (subtype == "json" || (subtype.len() > 5 && subtype.ends_with("+json")))
}

/// A request body must say it is JSON: a form or `text/plain` post, which a page of another
/// site can make a browser send without asking, gets a 415 and is not read as JSON.
fn require_json(headers: &HeaderMap) -> ApiResult<()> {
    let given = headers.get(header::CONTENT_TYPE);
    if given
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_json_media_type)
    {
        return Ok(());
    }
    let got = match given {
        Some(v) => format!("got {:?}", String::from_utf8_lossy(v.as_bytes())),
        None => "got none".to_owned(),
    };
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        format!("the request body must be JSON sent with `Content-Type: application/json` ({got})"),
    ))
}

/// The body as JSON, which its `Content-Type` must say it is (415 otherwise); `None` when it is
/// empty (or only whitespace).
fn json_body(headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> ApiResult<Option<Value>> {
    let bytes = body_bytes(body)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    require_json(headers)?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))
}

/// The body as a JSON object, required.
fn object_body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    shape: &str,
) -> ApiResult<Map<String, Value>> {
    match json_body(headers, body)? {
        Some(Value::Object(map)) => Ok(map),
        Some(_) => Err(ApiError::bad_request(format!(
            "the request body must be a JSON object {shape}"
        ))),
        None => Err(ApiError::bad_request(format!(
            "a JSON request body is required: {shape}"
        ))),
    }
}

/// The `ETag` of a resource at `version`: a strong validator, `"<version>"`.
fn etag(version: u64) -> HeaderValue {
    // One allocation: the text becomes the value's bytes (`from_str` would copy it).
    HeaderValue::from_maybe_shared(Bytes::from(format!("\"{version}\"")))
        .unwrap_or(HeaderValue::from_static("\"0\""))
}

/// Adds the `ETag` of `version` to a response.
fn with_etag(mut response: Response, version: Option<u64>) -> Response {
    if let Some(version) = version {
        response.headers_mut().insert(header::ETAG, etag(version));
    }
    response
}

/// The version an `If-Match` header asks for: `None` without the header or with `*`; 400 for
/// anything but one strong entity tag holding a version (`"3"`), which no resource could match.
fn if_match(headers: &HeaderMap) -> ApiResult<Option<u64>> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::bad_request(format!(
            "If-Match must be `*` or one ETag of this API (a version in quotes, \"3\"), got {:?}",
            String::from_utf8_lossy(value.as_bytes())
        ))
    };
    let text = value.to_str().map_err(|_| bad())?.trim();
    // An empty header is no header (no condition).
    if text == "*" || text.is_empty() {
        return Ok(None);
    }
    let digits = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .ok_or_else(bad)?;
    // At most 19 digits: the pattern of the OpenAPI document.
    if digits.is_empty() || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    digits.parse().map(Some).map_err(|_| bad())
}

/// Whether an `If-None-Match` header matches a resource at `version` (`*`, or one of its tags
/// with the weak comparison: `W/"3"` matches `"3"`).
fn none_match(headers: &HeaderMap, version: u64) -> bool {
    let Some(text) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let ours = format!("\"{version}\"");
    text.split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == ours)
}

/// The `"version"` of a reply (a document, `{"resource_id", "version"}` of a create).
///
/// The services write it last (`...,"version":3}`): read from the end when the text ends so,
/// else parsed. Valid JSON ending `,"version":<digits>}` can only be an object whose last member
/// is `"version"`: a `"` inside a string is escaped, so an unescaped one after a `,` opens a
/// key, and the final `}` after a number closes the outermost object.
fn version_in(raw: &str) -> Option<u64> {
    const KEY: &[u8] = b",\"version\":";
    if let Some(bytes) = raw.as_bytes().strip_suffix(b"}") {
        let digits = bytes
            .iter()
            .rev()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let (head, number) = bytes.split_at(bytes.len() - digits);
        if digits > 0 && head.ends_with(KEY) {
            // Digits only: `parse` fails only past u64, which the parse below refuses too.
            return std::str::from_utf8(number).ok()?.parse().ok();
        }
    }
    #[derive(serde::Deserialize)]
    struct Versioned {
        version: Option<u64>,
    }
    serde_json::from_str::<Versioned>(raw).ok()?.version
}

async fn call(state: &AppState, request: Request) -> ApiResult<Value> {
    Ok(state.node.request(request).await?)
}

/// Like [`call`], answering with the reply's JSON text as it came (from a peer: not parsed and
/// serialised again), and the `ETag` of the reply's `"version"`. A GET whose `If-None-Match`
/// matches that version answers 304 instead.
async fn call_raw(
    state: &AppState,
    status: StatusCode,
    request: Request,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let raw = state.node.request_raw(request).await?;
    let body: Box<str> = raw.into();
    let version = version_in(&body);
    if status == StatusCode::OK
        && let Some(version) = version
        && none_match(headers, version)
    {
        return Ok(with_etag(
            StatusCode::NOT_MODIFIED.into_response(),
            Some(version),
        ));
    }
    let response = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        String::from(body),
    )
        .into_response();
    Ok(with_etag(response, version))
}

/// `GET /`: the collections known in the cluster, or the live page for a browser (an `Accept`
/// that prefers `text/html`).
pub(crate) async fn index(
    State(state): State<AppState>,
    user_ext: Option<Extension<AuthUser>>,
    headers: HeaderMap,
) -> Response {
    if super::page::wants_html(&headers) {
        return super::page::response();
    }
    // Only the collections the user may list.
    let user = user(user_ext);
    let mut collections = state.node.collections();
    collections.retain(|c| allowed(&state, &user, c, &Operation::List));
    let mut response = Json(json!({ "resources": collections })).into_response();
    response
        .headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept"));
    response
}

/// Any path no route matches.
pub(crate) async fn no_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route")
}

/// `GET /{collection}?where=&sort=&limit=&skip=&text=`.
pub(crate) async fn list(
    State(state): State<AppState>,
    user_ext: Option<Extension<AuthUser>>,
    Path(collection): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult {
    let user = user(user_ext);
    authorize(&state, &user, &collection, Operation::List)?;
    let Query(params) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let args = ListArgs {
        paged: true,
        ..list_args(&params)?
    };
    let request = Call::List(args)
        .into_request(collection.clone())
        .user(user.0);
    let reply = call(&state, request).await?;
    let (items, more) = match reply {
        Value::Object(mut page) => (
            page.remove("items").unwrap_or(Value::Array(Vec::new())),
            page.get("more").and_then(Value::as_bool).unwrap_or(false),
        ),
        items => (items, false),
    };
    let count = items.as_array().map_or(0, Vec::len);
    let mut response = Json(items).into_response();
    if more
        && count > 0
        && let Some(link) = next_link(&collection, &params, count)
    {
        response.headers_mut().insert(header::LINK, link);
    }
    Ok(response)
}

/// The RFC 8288 `Link: </power?...&skip=N>; rel="next"` of a list page cut short: the same
/// query with `skip` moved past the `count` documents of this page.
fn next_link(collection: &str, params: &[(String, String)], count: usize) -> Option<HeaderValue> {
    let skip: u64 = params
        .iter()
        .rev()
        .find(|(k, _)| k == "skip")
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let mut next: Vec<(&str, String)> = params
        .iter()
        .filter(|(k, _)| k != "skip")
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    next.push(("skip", skip.saturating_add(count as u64).to_string()));
    let query = serde_urlencoded::to_string(&next).ok()?;
    // The collection as one path segment: unreserved bytes as they are, the rest escaped.
    let mut link = String::from("</");
    for b in collection.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            link.push(char::from(b));
        } else {
            link.push_str(&format!("%{b:02X}"));
        }
    }
    link.push_str(&format!("?{query}>; rel=\"next\""));
    HeaderValue::from_str(&link).ok()
}

/// Turns the query string of a list into the `list` arguments; unknown parameters are ignored.
fn list_args(params: &[(String, String)]) -> ApiResult<ListArgs> {
    let mut args = ListArgs::default();
    for (key, value) in params {
        match key.as_str() {
            "where" => {
                let filter: Value = serde_json::from_str(value).map_err(|e| {
                    ApiError::bad_request(format!("`where` is not valid JSON: {e}"))
                })?;
                if !filter.is_object() {
                    return Err(ApiError::bad_request("`where` must be a JSON object"));
                }
                args.filter = Some(filter);
            }
            "sort" => {
                if !value.trim_start().starts_with('{')
                    && !crate::query::sort_matches_pattern(value)
                {
                    return Err(ApiError::bad_request(format!(
                        "`sort` must be fields separated by commas, each with an optional `-` \
                         (`value,-status`), or a JSON object; got {value:?}"
                    )));
                }
                args.sort = Some(crate::Query::parse_sort(value)?);
            }
            "limit" | "skip" => {
                let n: u64 = value.trim().parse().map_err(|_| {
                    ApiError::bad_request(format!(
                        "`{key}` must be a non-negative integer, got {value:?}"
                    ))
                })?;
                if key == "limit" {
                    args.limit = Some(n);
                } else {
                    args.skip = Some(n);
                }
            }
            "text" => {
                args.text = Some(value.clone());
            }
            _ => {}
        }
    }
    Ok(args)
}

/// `POST /{collection}` with `{"resource_id"?: str, "resource_data": {...}}`: 201
/// `{"resource_id"}`.
pub(crate) async fn create(
    State(state): State<AppState>,
    user_ext: Option<Extension<AuthUser>>,
    Path(collection): Path<String>,
    Sent(headers): Sent,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let user = user(user_ext);
    authorize(&state, &user, &collection, Operation::Create)?;
    let shape = "{\"resource_id\"?: string, \"resource_data\": {...}}";
    let mut body = object_body(&headers, body, shape)?;
    let id = match body.remove("resource_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(id),
        Some(_) => {
            return Err(ApiError::validation(
                "resource_id",
                "resource_id must be a string",
            ));
        }
    };
    if !body.contains_key("resource_data") {
        return Err(ApiError::validation(
            "resource_data",
            "missing field `resource_data`",
        ));
    }
    // The request's arguments are `{"resource_data"}`: the body's own map when that is all it
    // holds now (no new map); keys create does not know are left out, as they always were (an
    // `Idempotency-Key`'s fingerprint covers the arguments).
    let request = if body.len() == 1 {
        let mut request = Request::new(collection, BuiltIn::Create.name());
        request.resource_id = id;
        request.args = Value::Object(body);
        request
    } else {
        let resource_data = body.remove("resource_data").unwrap_or_default();
        Call::Create {
            id,
            args: CreateArgs { resource_data },
        }
        .into_request(collection)
    }
    .user(user.0.clone());
    let request = with_idempotency_key(&headers, &user, request)?;
    call_raw(&state, StatusCode::CREATED, request, &headers).await
}

/// `GET /{collection}/{id}`: 200 with the `ETag`, 304 when `If-None-Match` matches it.
pub(crate) async fn get(
    State(state): State<AppState>,
    user_ext: Option<Extension<AuthUser>>,
    Path((collection, id)): Path<(String, String)>,
    Sent(headers): Sent,
) -> ApiResult {
    let user = user(user_ext);
    authorize(&state, &user, &collection, Operation::Get)?;
    let request = Call::Get { id }.into_request(collection).user(user.0);
    call_raw(&state, StatusCode::OK, request, &headers).await
}

/// `PATCH /{collection}/{id}` with `{"patch": {...}}`: 200 the updated document.
pub(crate) async fn patch(
    State(state): State<AppState>,
    user_ext: Option<Extension<AuthUser>>,
    Path((collection, id)): Path<(String, String)>,
    Sent(headers): Sent,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let user = user(user_ext);
    authorize(&state, &user, &collection, Operation::Patch)?;
    let expect = if_match(&headers)?;
    let shape = "{\"patch\": {\"$set\": {...}, ...}}";
    let mut body = object_body(&headers, body, shape)?;
    let Some(patch) = body.remove("patch") else {
        return Err(ApiError::bad_request(format!(
            "the request body must be {shape}"
        )));
    };
    let request = Call::Patch {
        id,
        args: PatchArgs {
            patch: Patch::new(patch),
        },
    }
    .into_request(collection)
    .user(user.0.clone())
    .if_version(expect);
    let request = with_idempotency_key(&headers, &user, request)?;
    let doc = call(&state, request).await?;
    let version = doc.get("version").and_then(Value::as_u64);
    Ok(with_etag(Json(doc).into_response(), version))
}

/// `DELETE /{collection}/{id}`: 204 (412 when `If-Match` names another version).
pub(crate) async fn delete(
    State(state): State<AppState>,
    user_ext: Option<Extension<AuthUser>>,
    Path((collection, id)): Path<(String, String)>,
    Sent(headers): Sent,
) -> ApiResult {
    let user = user(user_ext);
    authorize(&state, &user, &collection, Operation::Delete)?;
    let expect = if_match(&headers)?;
    let request = Call::Delete { id }
        .into_request(collection)
        .user(user.0.clone())
        .if_version(expect);
    let request = with_idempotency_key(&headers, &user, request)?;
    call(&state, request).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /{collection}/{action}`: a collection action; the body is its argument.
pub(crate) async fn collection_action(
    State(state): State<AppState>,
    user_ext: Option<Extension<AuthUser>>,
    Path((collection, action)): Path<(String, String)>,
    Sent(headers): Sent,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let target = (collection, None, action);
    run_action(&state, user(user_ext), target, &headers, body).await
}

/// `POST /{collection}/{id}/{action}`: a resource action; the body is its argument.
pub(crate) async fn resource_action(
    State(state): State<AppState>,
    user_ext: Option<Extension<AuthUser>>,
    Path((collection, id, action)): Path<(String, String, String)>,
    Sent(headers): Sent,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let target = (collection, Some(id), action);
    run_action(&state, user(user_ext), target, &headers, body).await
}

/// An action on a collection (`id` none) or a resource: `(collection, id, action)`.
type ActionTarget = (String, Option<String>, String);

async fn run_action(
    state: &AppState,
    user: AuthUser,
    (collection, id, action): ActionTarget,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let built_in = BuiltIn::from_name(&action);
    // The link actions are asked as what they do (see `Operation`).
    let operation = match built_in {
        Some(BuiltIn::AddLink) => Operation::Patch,
        Some(BuiltIn::FollowLinks) => Operation::Get,
        Some(BuiltIn::IncomingLinks) => Operation::List,
        _ => Operation::Action(action.clone()),
    };
    authorize(state, &user, &collection, operation)?;
    if has_own_route(&action) {
        return Err(Error::UnknownAction { collection, action }.into());
    }
    let expect = if_match(headers)?;
    // A custom action on one resource answers with the resource's version, for the `ETag`.
    let versioned = built_in.is_none() && id.is_some();
    let args = json_body(headers, body)?.unwrap_or(Value::Null);
    if built_in == Some(BuiltIn::AddLink)
        && let Ok(link) = serde_json::from_value::<AddLinkArgs>(args.clone())
    {
        // A read of the target's collection too.
        authorize(state, &user, &link.target_id.0, Operation::Get)?;
    }
    let mut request = Request::new(collection, action)
        .args(args)
        .user(user.0.clone())
        .if_version(expect);
    request.resource_id = id;
    request.with_version = versioned;
    let request = with_idempotency_key(headers, &user, request)?;
    let reply = call(state, request).await?;
    let (mut result, version) = if versioned {
        let reply: ActionReply = serde_json::from_value(reply).map_err(|e| {
            Error::internal(format!("a versioned action reply does not decode: {e}"))
        })?;
        (reply.result, Some(reply.version))
    } else {
        (reply, None)
    };
    if built_in == Some(BuiltIn::FollowLinks)
        && let Value::Array(targets) = &mut result
    {
        // The targets the user may not read are left out (the owner leaves them out too when
        // it has the authorizer; this one may be the HTTP node's only).
        targets.retain(|t| {
            t.get("resource_name")
                .and_then(Value::as_str)
                .is_none_or(|c| allowed(state, &user, c, &Operation::Get))
        });
    }
    Ok(with_etag(Json(result).into_response(), version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_of_a_reply_read_from_its_end_or_parsed() {
        let cases: [(&str, Option<u64>); 13] = [
            (
                r#"{"resource_id":"a","resource_data":{"n":1},"version":7}"#,
                Some(7),
            ),
            // Not at the very end (white space after it): parsed.
            ("{\"resource_id\":\"a\",\"version\":2}\n", Some(2)),
            (r#"{"resource_id":"a","version":1}"#, Some(1)),
            (r#"{"version":18446744073709551615}"#, Some(u64::MAX)),
            // Not last: parsed.
            (r#"{"version":3,"resource_id":"a"}"#, Some(3)),
            (r#"{ "resource_id": "a", "version": 4 }"#, Some(4)),
            // A `version` inside the document is not the reply's.
            (r#"{"resource_id":"a","resource_data":{"version":5}}"#, None),
            (r#"{"resource_data":{"x":1,"version":5}}"#, None),
            (r#"{"note":"\",\"version\":5"}"#, None),
            // Not a version: refused by both readings.
            (r#"{"resource_id":"a","version":-1}"#, None),
            (r#"{"resource_id":"a","version":1.5}"#, None),
            (
                r#"{"resource_id":"a","version":18446744073709551616}"#,
                None,
            ),
            (r#"[1,2]"#, None),
        ];
        for (raw, expected) in cases {
            assert_eq!(version_in(raw), expected, "{raw}");
        }
    }

    /// Texts no service writes (a peer's, a broken one): huge, deep, truncated or empty, each
    /// gives no version (so no `ETag`), at once and without a panic.
    #[test]
    fn hostile_reply_texts_give_no_version() {
        let digits = "9".repeat(1 << 20);
        let huge_number = format!(r#"{{"resource_id":"a","version":{digits}}}"#);
        let only_digits = format!("{digits}}}");
        let deep = format!("{}{}", r#"{"a":"#.repeat(10_000), "1}".repeat(10_000));
        let deep_last =
            format!("{}{}", r#"{"a":"#.repeat(10_000), r#"{"version":1}"#) + &"}".repeat(10_000);
        let cases = [
            huge_number.as_str(),
            only_digits.as_str(),
            deep.as_str(),
            deep_last.as_str(),
            "",
            "}",
            r#","version":}"#,
            r#"{"resource_id":"a","version":7"#,
        ];
        for raw in cases {
            assert_eq!(version_in(raw), None, "{}", &raw[..raw.len().min(60)]);
        }
    }

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn list_arguments_from_the_query_string() {
        let args = list_args(&params(&[
            ("where", r#"{"status": "done"}"#),
            ("sort", "value,-status"),
            ("limit", "10"),
            ("skip", "2"),
            ("text", "hello"),
            ("unknown", "ignored"),
        ]))
        .unwrap();
        assert_eq!(
            serde_json::to_value(args).unwrap(),
            json!({
                "where": {"status": "done"},
                "sort": [{"field": "value", "order": "asc"}, {"field": "status", "order": "desc"}],
                "limit": 10, "skip": 2, "text": "hello"
            })
        );
        let json_sort = list_args(&params(&[("sort", r#"{"value": -1}"#)])).unwrap();
        assert_eq!(
            serde_json::to_value(json_sort.sort).unwrap(),
            json!([{"field": "value", "order": "desc"}])
        );
    }

    #[test]
    fn json_media_types() {
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=UTF-8",
            "application/merge-patch+json",
            " application/json ",
        ] {
            assert!(is_json_media_type(ok), "{ok}");
        }
        for bad in [
            "",
            "text/plain",
            "text/json",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonx",
            "application/+json",
            "application",
            "json",
        ] {
            assert!(!is_json_media_type(bad), "{bad}");
        }
    }

    #[test]
    fn bad_list_arguments_are_refused() {
        for bad in [
            ("where", "{not json"),
            ("where", "[1]"),
            ("limit", "-1"),
            ("skip", "x"),
            ("sort", r#"{"value": 3}"#),
        ] {
            assert!(list_args(&params(&[bad])).is_err(), "{bad:?}");
        }
    }
}
