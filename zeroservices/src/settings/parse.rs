//! How each kind of setting value is read: a clap value parser per kind, whose error names the
//! variable and the flag (`ZS_MAX_PEERS / --max-peers`), the bad value and what was expected.

use std::ffi::OsStr;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use clap::builder::{StyledStr, TypedValueParser};
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Arg, Command};

#[cfg(feature = "http")]
use crate::http::{BasicAuth, JwtAuth, Users};
use crate::limits;
use crate::store::StoreConfig;

use super::{KeyFile, SettingsError, StoreSpec};

/// A value parser: `parse` gets the trimmed value and says what it expected when it is wrong.
#[derive(Clone, Copy)]
pub(crate) struct Check<T>(pub(crate) fn(&str) -> Result<T, String>);

impl<T: Clone + Send + Sync + 'static> TypedValueParser for Check<T> {
    type Value = T;

    fn parse_ref(&self, cmd: &Command, arg: Option<&Arg>, value: &OsStr) -> Result<T, clap::Error> {
        let text = value.to_string_lossy();
        (self.0)(text.trim()).map_err(|expected| {
            let name = arg.map_or_else(|| "a setting".to_owned(), setting_name);
            invalid(cmd, name, text.into_owned(), expected)
        })
    }
}

/// `ZS_MAX_PEERS / --max-peers`: every setting's variable is `ZS_` and its id in capitals, its
/// flag the id with dashes (a test holds every argument to it).
pub(crate) fn setting_name(arg: &Arg) -> String {
    let id = arg.get_id().as_str();
    let long = arg
        .get_long()
        .map_or_else(|| id.replace('_', "-"), str::to_owned);
    format!("{} / --{long}", env_name(id))
}

/// The variable of the setting with this id.
pub(crate) fn env_name(id: &str) -> String {
    format!("ZS_{}", id.to_ascii_uppercase())
}

/// A clap "invalid value" error that [`SettingsError::from`] turns back into
/// [`SettingsError::Invalid`].
pub(crate) fn invalid(cmd: &Command, name: String, value: String, expected: String) -> clap::Error {
    let mut err = clap::Error::new(ErrorKind::ValueValidation).with_cmd(cmd);
    err.insert(
        ContextKind::Suggested,
        ContextValue::StyledStrs(vec![StyledStr::from(format!("expected {expected}"))]),
    );
    err.insert(ContextKind::InvalidArg, ContextValue::String(name));
    err.insert(ContextKind::InvalidValue, ContextValue::String(value));
    err.insert(ContextKind::Custom, ContextValue::String(expected));
    err
}

impl From<clap::Error> for SettingsError {
    fn from(err: clap::Error) -> Self {
        let text = |kind| match err.get(kind) {
            Some(ContextValue::String(s)) => Some(s.clone()),
            _ => None,
        };
        match (
            text(ContextKind::InvalidArg),
            text(ContextKind::InvalidValue),
            text(ContextKind::Custom),
        ) {
            (Some(name), Some(value), Some(expected)) => SettingsError::Invalid {
                name,
                value,
                expected,
            },
            _ => SettingsError::Command(err),
        }
    }
}

pub(crate) fn millis(v: &str) -> Result<Duration, String> {
    match v.parse::<u64>() {
        Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
        _ => Err("a positive number of milliseconds".into()),
    }
}

/// Milliseconds, 0 included.
pub(crate) fn millis_or_zero(v: &str) -> Result<Duration, String> {
    match v.parse::<u64>() {
        Ok(ms) => Ok(Duration::from_millis(ms)),
        _ => Err("a number of milliseconds (0 or more)".into()),
    }
}

pub(crate) fn count_or_zero(v: &str) -> Result<u64, String> {
    v.parse::<u64>()
        .map_err(|_| "a whole number (0 or more)".into())
}

#[cfg(feature = "http")]
pub(crate) fn count(v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("a positive whole number".into()),
    }
}

/// The most writes one commit of the embedded store holds at most.
pub(crate) const MAX_STORE_BATCH: usize = 65_536;

pub(crate) fn store_batch_max(v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if (1..=MAX_STORE_BATCH).contains(&n) => Ok(n),
        _ => Err(format!("a number of writes from 1 to {MAX_STORE_BATCH}")),
    }
}

pub(crate) fn port(v: &str) -> Result<u16, String> {
    v.parse().map_err(|_| "a port number (0 to 65535)".into())
}

pub(crate) fn ipv4(v: &str) -> Result<Ipv4Addr, String> {
    v.parse()
        .map_err(|_| "an IPv4 address like 127.0.0.1".into())
}

#[cfg(feature = "http")]
pub(crate) fn ip(v: &str) -> Result<std::net::IpAddr, String> {
    v.parse().map_err(|_| "an IP address like 127.0.0.1".into())
}

pub(crate) fn text(v: &str) -> Result<String, String> {
    if v.is_empty() {
        Err("a non-empty value".into())
    } else {
        Ok(v.to_owned())
    }
}

pub(crate) fn key_file(v: &str) -> Result<KeyFile, String> {
    if v.is_empty() {
        return Err("the path of a file holding the cluster key".into());
    }
    KeyFile::read(v)
}

pub(crate) fn log_format(v: &str) -> Result<super::LogFormat, String> {
    match v {
        "text" => Ok(super::LogFormat::Text),
        "json" => Ok(super::LogFormat::Json),
        _ => Err("text or json".into()),
    }
}

pub(crate) fn on_off(v: &str) -> Result<bool, String> {
    match v {
        "on" | "1" | "true" => Ok(true),
        "off" | "0" | "false" => Ok(false),
        _ => Err("on or off".into()),
    }
}

pub(crate) fn group(v: &str) -> Result<SocketAddrV4, String> {
    crate::config::parse_group(v)
        .map_err(|_| "a multicast address like 237.252.249.227:32000".into())
}

pub(crate) fn peers(v: &str) -> Result<super::PeerList, String> {
    crate::config::parse_peers(v)
}

pub(crate) fn transport(v: &str) -> Result<crate::config::Transport, String> {
    crate::config::parse_transport(v)
}

pub(crate) fn cluster(v: &str) -> Result<String, String> {
    crate::config::parse_cluster(v).map_err(str::to_owned)
}

/// A NATS credentials file: a path to a readable file (its content is read when connecting).
pub(crate) fn nats_creds(v: &str) -> Result<std::path::PathBuf, String> {
    if v.is_empty() {
        return Err("the path of a NATS credentials (.creds) file".into());
    }
    match std::fs::metadata(v) {
        Ok(meta) if meta.is_file() => Ok(std::path::PathBuf::from(v)),
        Ok(_) => Err("the path of a NATS credentials (.creds) file (this is not a file)".into()),
        Err(e) => Err(format!(
            "the path of a readable NATS credentials (.creds) file ({e})"
        )),
    }
}

pub(crate) fn max_message_bytes(v: &str) -> Result<usize, String> {
    crate::config::parse_max_message_bytes(v).map_err(str::to_owned)
}

pub(crate) fn nats_replicas(v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n @ 1..=5) => Ok(n),
        _ => Err("a number of replicas from 1 to 5".into()),
    }
}

pub(crate) fn nats_log_queue(v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n @ 1..=16_777_216) => Ok(n),
        _ => Err("a number of entries from 1 to 16777216".into()),
    }
}

pub(crate) fn max_peers(v: &str) -> Result<usize, String> {
    crate::config::parse_max_peers(v).map_err(str::to_owned)
}

pub(crate) fn max_subscriber_queue(v: &str) -> Result<usize, String> {
    crate::config::parse_max_subscriber_queue(v).map_err(str::to_owned)
}

#[cfg(feature = "http")]
pub(crate) fn basic_auth(v: &str) -> Result<BasicAuth, String> {
    BasicAuth::parse(v).map_err(|_| "`user:password` with a non-empty user".into())
}

/// A users file, read and checked now: its errors name the file and the line.
#[cfg(feature = "http")]
pub(crate) fn users_file(v: &str) -> Result<std::sync::Arc<Users>, String> {
    Users::load(v).map(std::sync::Arc::new).map_err(|e| {
        format!(
            "a users file of `user:$argon2id$...[:roles]` lines: {}",
            message(e)
        )
    })
}

/// An HS256 secret. Never refused here: the error would print it. A short one is refused by
/// [`JwtAuth::hs256`] when given in code; from a setting, it is warned about.
#[cfg(feature = "http")]
pub(crate) fn jwt_secret(v: &str) -> Result<JwtAuth, String> {
    JwtAuth::hs256(v.as_bytes())
        .or_else(|_| {
            tracing::warn!("ZS_JWT_SECRET is shorter than 32 bytes: easy to guess");
            JwtAuth::hs256_unchecked(v.as_bytes())
        })
        .map_err(|_| "a non-empty secret".into())
}

/// An HS256 secret read from a file.
#[cfg(feature = "http")]
pub(crate) fn jwt_secret_file(v: &str) -> Result<JwtAuth, String> {
    let text = std::fs::read(v).map_err(|e| format!("a readable file with the secret: {e}"))?;
    let secret = text.strip_suffix(b"\n").unwrap_or(&text);
    let secret = secret.strip_suffix(b"\r").unwrap_or(secret);
    JwtAuth::hs256(secret).map_err(message)
}

/// A PEM public key, as text or in a file.
#[cfg(feature = "http")]
pub(crate) fn jwt_public_key(v: &str) -> Result<JwtAuth, String> {
    let pem = if v.starts_with("-----BEGIN") {
        v.as_bytes().to_vec()
    } else {
        std::fs::read(v).map_err(|e| format!("PEM text or a readable PEM file: {e}"))?
    };
    JwtAuth::public_key_pem(&pem).map_err(message)
}

/// An error's message without its kind's prefix.
#[cfg(feature = "http")]
fn message(e: crate::Error) -> String {
    match e {
        crate::Error::BadRequest { message } => message,
        other => other.to_string(),
    }
}

pub(crate) fn store(v: &str) -> Result<StoreSpec, String> {
    match v {
        "embedded" => Ok(StoreSpec(None)),
        spec => StoreConfig::parse(spec)
            .map(|store| StoreSpec(Some(store)))
            .map_err(|_| "`memory`, `embedded:<dir>` or a `mongodb://` URI".into()),
    }
}

/// One parser per limit, with the limit's range (see [`crate::limits`]).
macro_rules! limit_parsers {
    ($($name:ident => $var:literal),* $(,)?) => {$(
        pub(crate) fn $name(v: &str) -> Result<usize, String> {
            limits::parse_range($var, v)
        }
    )*};
}

limit_parsers! {
    max_depth => "ZS_MAX_DEPTH",
    max_document_bytes => "ZS_MAX_DOCUMENT_BYTES",
    max_patch_paths => "ZS_MAX_PATCH_PATHS",
    max_path_segments => "ZS_MAX_PATH_SEGMENTS",
    max_filter_depth => "ZS_MAX_FILTER_DEPTH",
    max_filter_clauses => "ZS_MAX_FILTER_CLAUSES",
    max_id_bytes => "ZS_MAX_ID_BYTES",
    max_page => "ZS_MAX_PAGE",
}
