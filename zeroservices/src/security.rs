//! The cluster key: with `ZS_CLUSTER_KEY` set, every wire envelope and discovery announcement
//! carries an HMAC-SHA256 of its bytes; unsigned or forged ones are dropped, counted, and logged
//! once per sender.

#[cfg(feature = "zeromq")]
use std::collections::HashSet;
#[cfg(feature = "zeromq")]
use std::sync::Mutex;
#[cfg(feature = "zeromq")]
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// A shared secret of the cluster. Nodes with different keys never see each other.
#[derive(Clone)]
pub struct ClusterKey(Vec<u8>);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(<redacted>)")
    }
}

impl ClusterKey {
    /// A key from any bytes (the UTF-8 of `ZS_CLUSTER_KEY`).
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        Self(secret.as_ref().to_vec())
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length.
        match HmacSha256::new_from_slice(&self.0) {
            Ok(mac) => mac,
            Err(_) => HmacSha256::new_from_slice(b"").expect("an empty HMAC key is valid"),
        }
    }

    /// The HMAC-SHA256 of the concatenation of `parts`, as 64 lowercase hex digits. Each part
    /// is prefixed with its length, so `["ab", "c"]` and `["a", "bc"]` sign differently.
    pub fn sign(&self, parts: &[&[u8]]) -> String {
        let mut mac = self.mac();
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        hex::encode(mac.finalize().into_bytes())
    }

    /// Whether `signature` (hex) is the HMAC of `parts`, compared in constant time.
    pub fn verify(&self, parts: &[&[u8]], signature: &[u8]) -> bool {
        let Ok(raw) = hex::decode(signature) else {
            return false;
        };
        let mut mac = self.mac();
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.verify_slice(&raw).is_ok()
    }
}

#[cfg(feature = "zeromq")]
/// Counts what was dropped and logs the first drop of each sender only, so a flood of forged
/// messages cannot flood the logs.
#[derive(Debug, Default)]
pub(crate) struct DropLog {
    dropped: AtomicU64,
    logged: Mutex<HashSet<String>>,
}

#[cfg(feature = "zeromq")]
impl DropLog {
    /// A new, empty log.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Counts one drop; logs it when `sender` was not logged before for `what`.
    pub(crate) fn drop_from(&self, sender: &str, what: &str, reason: &str) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        let key = format!("{what}\u{0}{sender}");
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        // Bound the memory a flood of spoofed senders can take.
        if logged.len() < 10_000 && logged.insert(key) {
            tracing::warn!(%sender, %what, %reason, "dropped (logged once per sender)");
        }
    }

    /// How many were dropped.
    pub(crate) fn count(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_forgeries_do_not() {
        let key = ClusterKey::new("secret");
        let sig = key.sign(&[b"hello", b"world"]);
        assert_eq!(sig.len(), 64);
        assert!(key.verify(&[b"hello", b"world"], sig.as_bytes()));
        assert!(!key.verify(&[b"hello", b"worle"], sig.as_bytes()));
        assert!(!key.verify(&[b"hellow", b"orld"], sig.as_bytes()));
        assert!(!ClusterKey::new("other").verify(&[b"hello", b"world"], sig.as_bytes()));
        assert!(!key.verify(&[b"hello", b"world"], b"zz"));
        assert!(!key.verify(&[b"hello", b"world"], b""));
    }

    #[test]
    fn drops_are_counted() {
        let log = DropLog::new();
        log.drop_from("a", "request", "bad mac");
        log.drop_from("a", "request", "bad mac");
        log.drop_from("b", "request", "bad mac");
        assert_eq!(log.count(), 3);
        assert_eq!(log.logged.lock().unwrap().len(), 2);
    }
}
