//! Authentication (Basic credentials, a users file, JWT bearer tokens) and the
//! [`Authorizer`] hook.

use std::fmt;

use axum::http::{HeaderMap, header};
use base64::Engine;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::{AppState, AuthUser, HttpConfig};
pub(crate) use crate::access::Operation;
use crate::access::{self, Authorizer, User};
use crate::{Error, Result};

/// One Basic auth user (`ZS_BASIC_AUTH=user:password`), without roles; several users, with
/// hashed passwords and roles, come from a users file ([`Users`](super::Users)).
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

/// The authorizer the HTTP layer asks: its [`HttpConfig`]'s, else the node's
/// ([`NodeBuilder::authorizer`](crate::NodeBuilder::authorizer)).
pub(crate) fn authorizer(state: &AppState) -> Option<&dyn Authorizer> {
    match &state.config.authorizer {
        Some(a) => Some(&**a),
        None => state.node.authorizer().map(|a| &**a),
    }
}

/// Asks the authorizer, if any: `Err(403)` when refused.
pub(crate) fn authorize(
    state: &AppState,
    user: &AuthUser,
    collection: &str,
    operation: Operation,
) -> Result<(), ApiError> {
    access::check(authorizer(state), user.0.as_ref(), collection, &operation).map_err(Into::into)
}

/// Whether the authorizer, if any, lets `user` do `operation` on `collection`.
pub(crate) fn allowed(
    state: &AppState,
    user: &AuthUser,
    collection: &str,
    operation: &Operation,
) -> bool {
    authorizer(state).is_none_or(|a| a.authorize(user.0.as_ref(), collection, operation))
}

/// Authenticates the request when the server requires it (Basic credentials, a users file, JWT
/// bearer tokens): the user to record for the handlers, or a 401 (with `WWW-Authenticate`)
/// without credentials or with wrong ones. A users file's password is checked off the async
/// runtime (Argon2 is slow by design) unless it was verified before.
pub(crate) async fn authenticate(
    config: &HttpConfig,
    headers: &HeaderMap,
) -> Result<AuthUser, ApiError> {
    if !config.requires_auth() {
        return Ok(AuthUser(None));
    }
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or("");
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("bearer") {
        let Some(jwt) = &config.jwt else {
            return Err(ApiError::unauthorized(
                "bearer tokens are not accepted here",
            ));
        };
        return match jwt.verify(rest.trim()) {
            Ok(user) => Ok(AuthUser(Some(user))),
            Err(Error::BadRequest { message }) => Err(ApiError::unauthorized(message)),
            Err(e) => Err(ApiError::unauthorized(e.to_string())),
        };
    }
    let Some((user, password)) = credentials(headers.get(header::AUTHORIZATION)) else {
        return Err(ApiError::unauthorized("authentication required"));
    };
    if let Some(expected) = &config.basic_auth
        && expected.check(&user, &password)
    {
        return Ok(AuthUser(Some(User::new(user))));
    }
    if let Some(users) = &config.users
        && let Some(found) = users.verify_async(user, password).await?
    {
        return Ok(AuthUser(Some(found)));
    }
    Err(ApiError::unauthorized("invalid credentials"))
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
