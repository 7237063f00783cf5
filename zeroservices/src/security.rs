//! The cluster key: with `ZS_CLUSTER_KEY` set, every wire envelope and discovery datagram is
//! sealed (encrypted and authenticated with AES-256-GCM under keys derived from it), carries a
//! timestamp and a per-sender counter, and is dropped on receipt when it does not open, is
//! outside the replay window, or was seen before; each drop is counted and logged once per
//! sender.
//!
//! A [`ClusterKey`] is a keyring: several keys, the first (the primary) used to seal, all of
//! them accepted when opening. [`ClusterKey::reload`] replaces them at runtime (every clone of
//! the key sees it), which is how a key is rotated without downtime: install the new key
//! everywhere as a secondary, make it the primary everywhere, then remove the old one.

#[cfg(any(feature = "zeromq", feature = "nats"))]
use std::collections::HashSet;
use std::sync::Arc;
#[cfg(any(feature = "zeromq", feature = "nats"))]
use std::sync::Mutex;
#[cfg(any(feature = "zeromq", feature = "nats"))]
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::sync::watch;

#[cfg(any(feature = "zeromq", feature = "nats"))]
pub mod keyfile;
#[cfg(any(feature = "zeromq", feature = "nats"))]
pub(crate) mod seal;

type HmacSha256 = Hmac<Sha256>;

/// The keys of a keyring as of one (re)load.
pub struct Ring {
    /// The secrets, the primary first; never empty.
    secrets: Vec<Vec<u8>>,
    /// The keys derived from each secret, in the same order.
    #[cfg(any(feature = "zeromq", feature = "nats"))]
    pub(crate) derived: Vec<seal::Derived>,
}

impl Ring {
    fn new(secrets: Vec<Vec<u8>>) -> Self {
        Self {
            #[cfg(any(feature = "zeromq", feature = "nats"))]
            derived: secrets.iter().map(|s| seal::Derived::new(s)).collect(),
            secrets,
        }
    }
}

/// The shared secret of the cluster, as a keyring: nodes with no key in common never see each
/// other. Clones share the ring: [`reload`](Self::reload) on one is seen by all.
#[derive(Clone)]
pub struct ClusterKey(Arc<watch::Sender<Arc<Ring>>>);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(<redacted>)")
    }
}

/// Why a keyring was not loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a cluster keyring needs at least one non-empty key")]
pub struct NoKeys;

/// The keys of `text`: separated by commas or newlines, each trimmed; empty ones and lines
/// starting with `#` skipped. The first is the primary.
pub fn parse_keys(text: &str) -> Vec<Vec<u8>> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .flat_map(|line| line.split(','))
        .map(str::trim)
        .filter(|key| !key.is_empty())
        .map(|key| key.as_bytes().to_vec())
        .collect()
}

impl ClusterKey {
    /// A keyring of one key: any bytes, taken whole (no splitting at commas).
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        Self::from_ring(vec![secret.as_ref().to_vec()])
    }

    /// A keyring from text such as `ZS_CLUSTER_KEY` or a key file: keys separated by commas or
    /// newlines (see [`parse_keys`]), the first the primary.
    pub fn parse(text: &str) -> Result<Self, NoKeys> {
        let keys = parse_keys(text);
        if keys.is_empty() {
            return Err(NoKeys);
        }
        Ok(Self::from_ring(keys))
    }

    /// A keyring of these keys, the first the primary.
    pub fn from_keys(keys: Vec<Vec<u8>>) -> Result<Self, NoKeys> {
        if keys.is_empty() || keys.iter().any(Vec::is_empty) {
            return Err(NoKeys);
        }
        Ok(Self::from_ring(keys))
    }

    fn from_ring(secrets: Vec<Vec<u8>>) -> Self {
        Self(Arc::new(watch::Sender::new(Arc::new(Ring::new(secrets)))))
    }

    /// Replaces the keys with those of `text` (as [`parse`](Self::parse)), for this key and
    /// every clone of it (a running node's medium and discovery): from now on the first seals
    /// and all open. Nothing changes when `text` holds no key.
    pub fn reload(&self, text: &str) -> Result<(), NoKeys> {
        self.set_keys(parse_keys(text))
    }

    /// Replaces the keys (see [`reload`](Self::reload)).
    pub fn set_keys(&self, keys: Vec<Vec<u8>>) -> Result<(), NoKeys> {
        if keys.is_empty() || keys.iter().any(Vec::is_empty) {
            return Err(NoKeys);
        }
        self.0.send_replace(Arc::new(Ring::new(keys)));
        Ok(())
    }

    /// How many keys the ring holds.
    pub fn len(&self) -> usize {
        self.0.borrow().secrets.len()
    }

    /// Never: a ring holds at least one key.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The ids of the keys (8 hex digits each, the primary first), as sent in the clear part of
    /// sealed messages: they name a key without revealing it.
    pub fn key_ids(&self) -> Vec<String> {
        #[cfg(any(feature = "zeromq", feature = "nats"))]
        {
            self.ring()
                .derived
                .iter()
                .map(|d| hex::encode(d.id))
                .collect()
        }
        #[cfg(not(any(feature = "zeromq", feature = "nats")))]
        {
            Vec::new()
        }
    }

    /// The ring as of now.
    pub(crate) fn ring(&self) -> Arc<Ring> {
        self.0.borrow().clone()
    }

    /// Told of every reload.
    #[cfg_attr(not(any(feature = "zeromq", feature = "nats")), allow(dead_code))]
    pub(crate) fn watch(&self) -> watch::Receiver<Arc<Ring>> {
        self.0.subscribe()
    }

    fn mac(&self) -> HmacSha256 {
        let ring = self.ring();
        // HMAC takes keys of any length.
        match HmacSha256::new_from_slice(&ring.secrets[0]) {
            Ok(mac) => mac,
            Err(_) => HmacSha256::new_from_slice(b"").expect("an empty HMAC key is valid"),
        }
    }

    /// The HMAC-SHA256 (under the primary key) of the concatenation of `parts`, as 64
    /// lowercase hex digits. Each part is prefixed with its length, so `["ab", "c"]` and
    /// `["a", "bc"]` sign differently.
    pub fn sign(&self, parts: &[&[u8]]) -> String {
        let mut mac = self.mac();
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        hex::encode(mac.finalize().into_bytes())
    }

    /// Whether `signature` (hex) is the HMAC of `parts` under the primary key, compared in
    /// constant time.
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

/// Sealing and opening as peers do, for tests and tools that speak the wire by hand (a raw
/// DEALER, a forged datagram). Not a stable API.
#[cfg(feature = "zeromq")]
#[doc(hidden)]
pub mod testing {
    use super::ClusterKey;
    use super::seal::{Purpose, Sealer};
    use crate::config::DEFAULT_REPLAY_WINDOW;
    use crate::discovery::udp::DISCOVERY_VERSION;
    use crate::medium::PROTOCOL_VERSION;

    fn wire(key: &ClusterKey) -> Sealer {
        Sealer::new(
            key.clone(),
            Purpose::Wire,
            PROTOCOL_VERSION as u8,
            DEFAULT_REPLAY_WINDOW,
        )
    }

    /// The `[body, seal]` frames of a call (request, interest, sync) with this body.
    pub fn seal_call(key: &ClusterKey, body: &[u8]) -> Vec<Vec<u8>> {
        let mut body = body.to_vec();
        let seal = wire(key).seal(b'c', b"", &mut body);
        vec![body, seal]
    }

    /// The plain body of a response's `[body, seal]` frames, if it opens.
    pub fn open_response(key: &ClusterKey, body: &[u8], seal: &[u8]) -> Option<Vec<u8>> {
        wire(key).open(b'r', b"", seal, body).ok().map(|o| o.plain)
    }

    /// The plain body of an event's `[topic, body, seal]` frames, if it opens.
    pub fn open_event(key: &ClusterKey, topic: &[u8], body: &[u8], seal: &[u8]) -> Option<Vec<u8>> {
        wire(key)
            .open(b'e', topic, seal, body)
            .ok()
            .map(|o| o.plain)
    }

    /// The topic frame of an event on `topic` (its segments as keyed tags).
    pub fn topic_frame(key: &ClusterKey, topic: &str) -> String {
        wire(key).topic(topic)
    }

    /// A sealed discovery datagram of this JSON.
    pub fn seal_datagram(key: &ClusterKey, json: &[u8]) -> Vec<u8> {
        let sealer = Sealer::new(
            key.clone(),
            Purpose::Discovery,
            DISCOVERY_VERSION as u8,
            DEFAULT_REPLAY_WINDOW,
        );
        crate::discovery::udp::seal_datagram(json, &sealer)
    }
}

#[cfg(any(feature = "zeromq", feature = "nats"))]
/// Counts what was dropped and logs the first drop of each sender only, so a flood of forged
/// messages cannot flood the logs.
#[derive(Debug, Default)]
pub(crate) struct DropLog {
    dropped: AtomicU64,
    logged: Mutex<HashSet<String>>,
}

#[cfg(any(feature = "zeromq", feature = "nats"))]
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
    fn keyrings_parse_and_reload() {
        assert_eq!(
            parse_keys(" a , b\n# comment, x\n\nc,"),
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        assert_eq!(ClusterKey::parse(" , \n").err(), Some(NoKeys));
        let key = ClusterKey::parse("k1,k2").unwrap();
        assert_eq!(key.len(), 2);
        let clone = key.clone();
        let before = key.sign(&[b"x"]);
        clone.reload("k2\nk1").unwrap();
        assert_eq!(key.len(), 2);
        assert_ne!(key.sign(&[b"x"]), before);
        assert_eq!(key.sign(&[b"x"]), ClusterKey::new("k2").sign(&[b"x"]));
        assert_eq!(key.reload(""), Err(NoKeys));
        assert_eq!(key.len(), 2);
        // A single key is taken whole.
        assert_eq!(ClusterKey::new("a,b").len(), 1);
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
