//! Basic auth and the [`Authorizer`] hook.

use std::fmt;

use axum::http::{HeaderMap, header};
use base64::Engine;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::{AppState, AuthUser, HttpConfig};
use crate::protocol::BuiltIn;
use crate::{Error, Result};

/// Credentials every client must send with Basic auth (`ZS_BASIC_AUTH=user:password`).
#[derive(Clone, PartialEq, Eq)]
pub struct BasicAuth {
    /// The user name.
    pub user: String,
    /// The password.
    pub password: String,
}

impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicAuth")
            .field("user", &self.user)
            .field("password", &"***")
            .finish()
    }
}

impl BasicAuth {
    /// Credentials from their parts.
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            user: user.into(),
            password: password.into(),
        }
    }

    /// Parses `user:password` (the password may contain `:`; the user may not be empty).
    pub fn parse(spec: &str) -> Result<Self> {
        match spec.split_once(':') {
            Some((user, password)) if !user.is_empty() => Ok(Self::new(user, password)),
            _ => Err(Error::bad_request(
                "basic auth must be `user:password` with a non-empty user",
            )),
        }
    }

    /// Whether `user` and `password` are these credentials, compared in constant time.
    pub fn check(&self, user: &str, password: &str) -> bool {
        // Hashing first gives equal lengths, so the comparison time tells nothing, not even
        // the length of the secret.
        let user_ok = constant_time_eq(&sha(user), &sha(&self.user));
        let password_ok = constant_time_eq(&sha(password), &sha(&self.password));
        user_ok & password_ok
    }
}

fn sha(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// What a client asks to do, for an [`Authorizer`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `GET /{collection}`.
    List,
    /// `POST /{collection}`.
    Create,
    /// `GET /{collection}/{id}`.
    Get,
    /// `PATCH /{collection}/{id}`.
    Patch,
    /// `DELETE /{collection}/{id}`.
    Delete,
    /// `POST /{collection}/{action}` or `POST /{collection}/{id}/{action}`.
    Action(String),
    /// Receiving the collection's events on the realtime websocket.
    Subscribe,
}

/// Per-collection, per-operation authorization, asked before every REST operation and for every
/// websocket event.
///
/// `user` is the Basic auth user when Basic auth is configured, else `None`. A `false` answers a
/// REST call with 403 `{"error": ...}`; for the websocket, events of the collections for which
/// [`Operation::Subscribe`] is refused are not sent.
///
/// ```
/// use zeroservices::http::{Authorizer, Operation};
///
/// /// Nobody deletes payments.
/// struct NoPaymentDeletes;
///
/// impl Authorizer for NoPaymentDeletes {
///     fn authorize(&self, _user: Option<&str>, collection: &str, op: &Operation) -> bool {
///         !(collection == "payment" && *op == Operation::Delete)
///     }
/// }
/// ```
pub trait Authorizer: Send + Sync + 'static {
    /// Whether `user` may do `operation` on `collection`.
    fn authorize(&self, user: Option<&str>, collection: &str, operation: &Operation) -> bool;
}

impl<F> Authorizer for F
where
    F: Fn(Option<&str>, &str, &Operation) -> bool + Send + Sync + 'static,
{
    fn authorize(&self, user: Option<&str>, collection: &str, operation: &Operation) -> bool {
        self(user, collection, operation)
    }
}

/// Asks the configured [`Authorizer`], if any: `Err(403)` when refused.
pub(crate) fn authorize(
    state: &AppState,
    user: &AuthUser,
    collection: &str,
    operation: Operation,
) -> Result<(), ApiError> {
    match &state.config.authorizer {
        Some(authorizer) if !authorizer.authorize(user.0.as_deref(), collection, &operation) => {
            Err(ApiError::forbidden(format!(
                "forbidden: {} on {collection}",
                operation_name(&operation)
            )))
        }
        _ => Ok(()),
    }
}

fn operation_name(op: &Operation) -> &str {
    match op {
        Operation::List => BuiltIn::List.name(),
        Operation::Create => BuiltIn::Create.name(),
        Operation::Get => BuiltIn::Get.name(),
        Operation::Patch => BuiltIn::Patch.name(),
        Operation::Delete => BuiltIn::Delete.name(),
        Operation::Action(name) => name,
        Operation::Subscribe => "subscribe",
    }
}

/// Checks Basic auth when configured: the user to record for the handlers, or the error that
/// refuses the request (401 with `WWW-Authenticate` without valid-looking credentials, 403 for
/// wrong ones).
pub(crate) fn authenticate(config: &HttpConfig, headers: &HeaderMap) -> Result<AuthUser, ApiError> {
    let Some(expected) = &config.basic_auth else {
        return Ok(AuthUser(None));
    };
    match credentials(headers.get(header::AUTHORIZATION)) {
        None => Err(ApiError::unauthorized(
            "authentication required (HTTP Basic)",
        )),
        Some((user, password)) => {
            if !expected.check(&user, &password) {
                return Err(ApiError::forbidden("invalid credentials"));
            }
            Ok(AuthUser(Some(user)))
        }
    }
}

/// `Authorization: Basic base64(user:password)`, or `None` when missing or malformed.
fn credentials(value: Option<&header::HeaderValue>) -> Option<(String, String)> {
    let value = value?.to_str().ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_user_and_password() {
        let auth = BasicAuth::parse("admin:s3:cret").unwrap();
        assert_eq!(auth.user, "admin");
        assert_eq!(auth.password, "s3:cret");
        assert!(BasicAuth::parse("nopassword").is_err());
        assert!(BasicAuth::parse(":x").is_err());
        assert!(!format!("{auth:?}").contains("s3:cret"));
    }

    #[test]
    fn checks_credentials() {
        let auth = BasicAuth::new("admin", "secret");
        assert!(auth.check("admin", "secret"));
        assert!(!auth.check("admin", "secreT"));
        assert!(!auth.check("admin", "secret2"));
        assert!(!auth.check("root", "secret"));
    }

    #[test]
    fn reads_the_authorization_header() {
        let ok = header::HeaderValue::from_static("Basic YWRtaW46c2VjcmV0");
        assert_eq!(
            credentials(Some(&ok)),
            Some(("admin".into(), "secret".into()))
        );
        for bad in ["Bearer abc", "Basic !!!", "Basic", "Basic YWRtaW4="] {
            let v = header::HeaderValue::from_static(bad);
            assert_eq!(credentials(Some(&v)), None, "{bad}");
        }
        assert_eq!(credentials(None), None);
    }
}
