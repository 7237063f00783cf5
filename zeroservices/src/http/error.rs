//! The one error shape of the HTTP layer, `{"error": "<message>"}`, and the status of every
//! [`Error`] variant.
//!
//! A 4xx tells the client what is wrong with its request. A 5xx never carries our internals
//! (file paths, hosts, driver messages): `Internal` and `Unavailable` errors, whose messages come
//! from the code, the store or its driver, answer with a generic message, and every 5xx body has
//! the `"request_id"` of the `X-Request-Id` header, under which the full detail is logged.

use axum::body::{Body, to_bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::Error;

/// The HTTP status of an [`Error`]:
///
/// | variant | status |
/// |---|---|
/// | `BadRequest` | 400 |
/// | `Failed` (an action refused, with its own message) | 400 |
/// | `UnknownCollection`, `UnknownAction`, `NotFound` | 404 |
/// | `Forbidden` | 403 |
/// | `DuplicateId`, `RequestInProgress`, `Conflict` (a change that kept losing to concurrent ones) | 409 |
/// | `PreconditionFailed` (`If-Match` not the stored version) | 412 |
/// | `Validation`, `IdempotencyKeyReused` | 422 |
/// | `OwnerGone`, `Unavailable` | 503 |
/// | `Timeout` | 504 |
/// | `CursorExpired` | 410 |
/// | `Internal` and anything else | 500 |
pub fn status_for(error: &Error) -> StatusCode {
    match error {
        Error::BadRequest { .. } | Error::Failed { .. } => StatusCode::BAD_REQUEST,
        Error::UnknownCollection { .. } | Error::UnknownAction { .. } | Error::NotFound { .. } => {
            StatusCode::NOT_FOUND
        }
        Error::Forbidden { .. } => StatusCode::FORBIDDEN,
        Error::DuplicateId { .. } | Error::RequestInProgress { .. } | Error::Conflict { .. } => {
            StatusCode::CONFLICT
        }
        Error::IdempotencyKeyReused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        Error::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
        Error::Limit { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        Error::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        Error::OwnerGone { .. } | Error::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        Error::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        Error::CursorExpired { .. } => StatusCode::GONE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The message of an error response, kept in the response's extensions for the access log:
/// the full detail, also when the client only got a generic message.
#[derive(Clone, Debug)]
pub(crate) struct ErrorMessage(pub(crate) String);

/// The client-facing message of an `Internal` error.
pub(crate) const INTERNAL_MESSAGE: &str = "internal server error";
/// The client-facing message of an `Unavailable` error.
pub(crate) const UNAVAILABLE_MESSAGE: &str = "the service is unavailable for now; try again later";

/// An error response.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    /// What only the log sees (the client gets `message`).
    detail: Option<String>,
    challenge: bool,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            detail: None,
            challenge: false,
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub(crate) fn validation(path: &str, message: &str) -> Self {
        Error::validation(path, message).into()
    }

    /// A 401 with `WWW-Authenticate: Basic realm="zeroservices"`.
    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            message: message.into(),
            detail: None,
            challenge: true,
        }
    }

    /// The HTTP layer's own 403s (the Authorizer's refusals come as `Error::Forbidden`).
    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = status_for(&e);
        // Messages from our code, the store or its driver: paths, hosts, driver errors.
        let public = match &e {
            Error::Internal { .. } => Some(INTERNAL_MESSAGE),
            Error::Unavailable { .. } => Some(UNAVAILABLE_MESSAGE),
            _ if status.is_server_error()
                && !matches!(e, Error::Timeout { .. } | Error::OwnerGone { .. }) =>
            {
                Some(INTERNAL_MESSAGE)
            }
            _ => None,
        };
        match public {
            Some(public) => Self {
                detail: Some(e.to_string()),
                ..Self::new(status, public)
            },
            None => Self::new(status, e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.message }).to_string();
        let mut response = (self.status, [super::JSON], body).into_response();
        if self.challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"zeroservices\""),
            );
        }
        response
            .extensions_mut()
            .insert(ErrorMessage(self.detail.unwrap_or(self.message)));
        response
    }
}

/// The safety net: any error response that is not JSON yet (axum's own rejections, 405 from the
/// router, ...) is rewritten as `{"error": "<its text>"}` with the same status and headers.
pub(crate) async fn json_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim();
    let reason = status.canonical_reason().unwrap_or("error");
    let message = if text.is_empty() {
        reason.to_owned()
    } else {
        text.to_owned()
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // A 5xx text of unknown origin stays in the log.
    let public = if status.is_server_error() {
        reason.to_ascii_lowercase()
    } else {
        message.clone()
    };
    parts.extensions.insert(ErrorMessage(message));
    let body = json!({ "error": public }).to_string();
    Response::from_parts(parts, Body::from(body))
}

/// The last touches on an error response, once its body is JSON: a 413 names the body limit,
/// and a 5xx body gets `"request_id"` (the id its log line carries).
pub(crate) async fn finish(
    response: Response,
    request_id: &str,
    max_body_bytes: usize,
) -> Response {
    let status = response.status();
    // A request over one of the node's own limits (`Error::Limit`) already names it.
    let names_its_limit = response
        .extensions()
        .get::<ErrorMessage>()
        .is_some_and(|m| m.0.contains("(limit: "));
    if status == StatusCode::PAYLOAD_TOO_LARGE && !names_its_limit {
        let message = format!(
            "request body is too large: the limit is {max_body_bytes} bytes (ZS_MAX_BODY_BYTES)"
        );
        let (mut parts, _) = response.into_parts();
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.extensions.insert(ErrorMessage(message.clone()));
        let body = json!({ "error": message }).to_string();
        return Response::from_parts(parts, Body::from(body));
    }
    if !status.is_server_error() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let mut value = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(map)) => serde_json::Value::Object(map),
        _ => json!({ "error": INTERNAL_MESSAGE }),
    };
    value["request_id"] = json!(request_id);
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_its_status() {
        let cases = [
            (Error::unknown_collection("power"), 404),
            (
                Error::UnknownAction {
                    collection: "power".into(),
                    action: "x".into(),
                },
                404,
            ),
            (Error::not_found("power", "1"), 404),
            (Error::validation("value", "bad"), 422),
            (
                Error::DuplicateId {
                    collection: "power".into(),
                    id: "1".into(),
                },
                409,
            ),
            (Error::bad_request("x"), 400),
            (Error::conflict("x"), 409),
            (
                Error::PreconditionFailed {
                    collection: "power".into(),
                    id: "1".into(),
                    expected: 1,
                    actual: 2,
                },
                412,
            ),
            (
                Error::Forbidden {
                    collection: "power".into(),
                    operation: "get".into(),
                },
                403,
            ),
            (
                Error::Timeout {
                    collection: "power".into(),
                    after_ms: 1,
                },
                504,
            ),
            (
                Error::OwnerGone {
                    collection: "power".into(),
                },
                503,
            ),
            (Error::unavailable("x"), 503),
            (Error::failed("x"), 400),
            (Error::internal("x"), 500),
        ];
        for (error, status) in cases {
            assert_eq!(status_for(&error).as_u16(), status, "{error:?}");
        }
    }
}
