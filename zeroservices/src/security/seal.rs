//! Sealing: XChaCha20-Poly1305 under keys derived from the cluster key by HKDF-SHA256 (one per
//! purpose), a timestamp and a random nonce per message, and the replay guard that drops a
//! message outside the window or seen before.
//!
//! A sealed message is a 45-byte header in the clear and the ciphertext with its 16-byte tag:
//!
//! ```text
//! header = version (1 byte) | key id (4) | session (8) | timestamp, ms since the epoch (8, big-endian) | nonce (24)
//! ```
//!
//! The associated data is `kind (1 byte) | header | context` (the topic frame of an event), so
//! none of them can be changed or swapped. The key id (the first 4 bytes of an HKDF output of
//! the secret) picks the key of the ring to open with; the session (random per sender, per
//! start) scopes the replay memory. A nonce is a per-sender counter (8 bytes) then 16 random
//! bytes drawn once per sender: unique per message under a key.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::ClusterKey;

/// The length of the clear header.
pub(crate) const HEADER_LEN: usize = 1 + 4 + 8 + 8 + 24;
/// The length of the tag after the ciphertext.
pub(crate) const TAG_LEN: usize = 16;
/// What sealing adds to a message.
pub(crate) const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// Senders (sessions) remembered by one replay guard at most; a message of a new one beyond it
/// is dropped (counted) until some expire.
const MAX_SESSIONS: usize = 4096;
/// Nonces remembered per session at most: past it, the oldest are forgotten and the session's
/// floor raised above them (messages of that sender older than the floor are then dropped).
const MAX_NONCES_PER_SESSION: usize = 65_536;

/// What a sealed message is for: each purpose has its own key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// ZeroMQ envelopes (wire protocol 3).
    Wire,
    /// Discovery datagrams (discovery protocol 2).
    Discovery,
}

/// The keys derived from one secret of the ring.
pub(crate) struct Derived {
    /// Names the secret in headers.
    pub(crate) id: [u8; 4],
    wire: XChaCha20Poly1305,
    discovery: XChaCha20Poly1305,
    /// Keys the topic tags of events.
    topics: Hmac<Sha256>,
}

impl Derived {
    pub(crate) fn new(secret: &[u8]) -> Self {
        let hkdf = Hkdf::<Sha256>::new(Some(b"zeroservices cluster key"), secret);
        let expand = |info: &[u8]| {
            let mut out = [0u8; 32];
            hkdf.expand(info, &mut out)
                .expect("32 bytes is a valid HKDF-SHA256 length");
            out
        };
        let mut id = [0u8; 4];
        id.copy_from_slice(&expand(b"zeroservices key id v1")[..4]);
        let cipher =
            |info: &[u8]| XChaCha20Poly1305::new_from_slice(&expand(info)).expect("a 32-byte key");
        Self {
            id,
            wire: cipher(b"zeroservices wire v3"),
            discovery: cipher(b"zeroservices discovery v2"),
            topics: <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&expand(
                b"zeroservices topics v1",
            ))
            .expect("HMAC takes any key length"),
        }
    }

    fn cipher(&self, purpose: Purpose) -> &XChaCha20Poly1305 {
        match purpose {
            Purpose::Wire => &self.wire,
            Purpose::Discovery => &self.discovery,
        }
    }

    /// The tag of one topic segment: 16 hex digits of a keyed hash.
    fn tag(&self, segment: &str) -> String {
        let mut mac = self.topics.clone();
        mac.update(segment.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..8])
    }

    /// `topic` with each dot segment replaced by its tag.
    fn tags(&self, topic: &str) -> String {
        let mut out = String::with_capacity(topic.len() * 2 + 16);
        for (n, segment) in topic.split('.').enumerate() {
            if n > 0 {
                out.push('.');
            }
            out.push_str(&self.tag(segment));
        }
        out
    }
}

/// Why a sealed message was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// It does not open: not sealed, sealed under a key not in the ring, or altered.
    Forged(&'static str),
    /// Outside the replay window, or seen before.
    Replayed(&'static str),
}

/// Milliseconds since the epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // No randomness from the OS is not something a node can run without.
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    bytes
}

/// Seals and opens the messages of one purpose for one sender/receiver, with its replay guard.
pub(crate) struct Sealer {
    key: ClusterKey,
    purpose: Purpose,
    version: u8,
    session: [u8; 8],
    /// The random part of this sender's nonces (drawn once); a counter makes each unique.
    nonce_base: [u8; 16],
    counter: std::sync::atomic::AtomicU64,
    replay: ReplayGuard,
}

/// What opening a message gives: the plaintext.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) plain: Vec<u8>,
}

impl Sealer {
    pub(crate) fn new(key: ClusterKey, purpose: Purpose, version: u8, window: Duration) -> Self {
        Self {
            key,
            purpose,
            version,
            session: random(),
            nonce_base: random(),
            counter: std::sync::atomic::AtomicU64::new(0),
            replay: ReplayGuard::new(window),
        }
    }

    /// The keyring.
    pub(crate) fn key(&self) -> &ClusterKey {
        &self.key
    }

    /// Seals `plain` in place under the primary key: returns the header; `plain` becomes the
    /// ciphertext and its tag.
    pub(crate) fn seal(&self, kind: u8, context: &[u8], plain: &mut Vec<u8>) -> Vec<u8> {
        let ring = self.key.ring();
        let key = &ring.derived[0];
        // A nonce is this sender's counter then its 16 random bytes: unique per message
        // without a system call each (XChaCha20's 24 bytes leave room for both).
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut nonce = [0u8; 24];
        nonce[..8].copy_from_slice(&n.to_be_bytes());
        nonce[8..].copy_from_slice(&self.nonce_base);
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.push(self.version);
        header.extend_from_slice(&key.id);
        header.extend_from_slice(&self.session);
        header.extend_from_slice(&now_ms().to_be_bytes());
        header.extend_from_slice(&nonce);
        let aad = associated(kind, &header, context);
        let tag = key
            .cipher(self.purpose)
            .encrypt_inout_detached(&XNonce::from(nonce), &aad, plain.as_mut_slice().into())
            .expect("XChaCha20-Poly1305 seals messages of any size a node sends");
        plain.extend_from_slice(&tag);
        header
    }

    /// Opens a sealed message (its `header` and `sealed` ciphertext with tag) of `kind` and
    /// `context`, then checks it against the replay window and the nonces seen.
    pub(crate) fn open(
        &self,
        kind: u8,
        context: &[u8],
        header: &[u8],
        sealed: &[u8],
    ) -> Result<Opened, Refusal> {
        if header.is_empty() {
            return Err(Refusal::Forged("not sealed (no cluster key?)"));
        }
        if header.len() != HEADER_LEN || header[0] != self.version {
            return Err(Refusal::Forged("not a sealed header of this version"));
        }
        if sealed.len() < TAG_LEN {
            return Err(Refusal::Forged("sealed body shorter than its tag"));
        }
        let mut key_id = [0u8; 4];
        key_id.copy_from_slice(&header[1..5]);
        let ring = self.key.ring();
        let Some(key) = ring.derived.iter().find(|d| d.id == key_id) else {
            return Err(Refusal::Forged(
                "sealed under a key not in this node's keyring",
            ));
        };
        let (body, tag) = sealed.split_at(sealed.len() - TAG_LEN);
        let mut plain = body.to_vec();
        let mut nonce = [0u8; 24];
        nonce.copy_from_slice(&header[21..45]);
        let aad = associated(kind, header, context);
        let tag = Tag::try_from(tag).map_err(|_| Refusal::Forged("bad tag"))?;
        key.cipher(self.purpose)
            .decrypt_inout_detached(
                &XNonce::from(nonce),
                &aad,
                plain.as_mut_slice().into(),
                &tag,
            )
            .map_err(|_| Refusal::Forged("does not open (forged, altered, or another key)"))?;
        let mut session = [0u8; 8];
        session.copy_from_slice(&header[5..13]);
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&header[13..21]);
        let timestamp_ms = u64::from_be_bytes(ts);
        self.replay.check(session, timestamp_ms, &nonce, now_ms())?;
        Ok(Opened { plain })
    }

    /// The wire form of a topic (or a topic prefix) under the primary key: each dot segment
    /// replaced by its tag, so byte-prefix filtering by segments still works and names do not
    /// show.
    pub(crate) fn topic(&self, topic: &str) -> String {
        self.key.ring().derived[0].tags(topic)
    }

    /// The SUB filters for a prefix: its tags under every key of the ring (`""` stays `""`).
    pub(crate) fn topic_filters(&self, prefix: &str) -> Vec<String> {
        if prefix.is_empty() {
            return vec![String::new()];
        }
        self.key
            .ring()
            .derived
            .iter()
            .map(|d| d.tags(prefix))
            .collect()
    }

    /// Whether `frame` is the wire form of `topic` under one key of the ring.
    pub(crate) fn topic_is(&self, frame: &[u8], topic: &str) -> bool {
        self.key
            .ring()
            .derived
            .iter()
            .any(|d| d.tags(topic).as_bytes() == frame)
    }
}

fn associated(kind: u8, header: &[u8], context: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(1 + header.len() + context.len());
    aad.push(kind);
    aad.extend_from_slice(header);
    aad.extend_from_slice(context);
    aad
}

/// Drops messages outside the window or seen before, in bounded memory.
///
/// Per sender session: the nonces seen (with their timestamps) until they leave the window, at
/// most [`MAX_NONCES_PER_SESSION`]; past it the oldest are forgotten and the session's floor is
/// raised past them (older messages of that session are dropped: a replay of a forgotten nonce
/// is older than the floor). At most [`MAX_SESSIONS`] sessions; a session whose newest message
/// left the window is forgotten.
pub(crate) struct ReplayGuard {
    window_ms: u64,
    sessions: Mutex<HashMap<[u8; 8], Session>>,
}

#[derive(Default)]
struct Session {
    floor: u64,
    newest: u64,
    seen: BTreeSet<(u64, u128)>,
}

impl ReplayGuard {
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            window_ms: window.as_millis() as u64,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn check(
        &self,
        session: [u8; 8],
        ts: u64,
        nonce: &[u8; 24],
        now: u64,
    ) -> Result<(), Refusal> {
        let oldest = now.saturating_sub(self.window_ms);
        if ts < oldest || ts > now.saturating_add(self.window_ms) {
            return Err(Refusal::Replayed("timestamp outside the replay window"));
        }
        // The first 16 bytes (a sender's counter and 8 random bytes) tell its nonces apart.
        let mut short = [0u8; 16];
        short.copy_from_slice(&nonce[..16]);
        let nonce = u128::from_be_bytes(short);
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if !sessions.contains_key(&session) && sessions.len() >= MAX_SESSIONS {
            sessions.retain(|_, s| s.newest >= oldest);
            if sessions.len() >= MAX_SESSIONS {
                return Err(Refusal::Replayed("replay memory full (too many senders)"));
            }
        }
        let entry = sessions.entry(session).or_default();
        if ts < entry.floor {
            return Err(Refusal::Replayed("older than the sender's replay floor"));
        }
        if !entry.seen.insert((ts, nonce)) {
            return Err(Refusal::Replayed("nonce seen before (a replay)"));
        }
        entry.newest = entry.newest.max(ts);
        while let Some(&(first, _)) = entry.seen.first() {
            if first >= oldest && entry.seen.len() <= MAX_NONCES_PER_SESSION {
                break;
            }
            entry.seen.pop_first();
            if first >= oldest {
                // Over the cap: forget the oldest, and refuse anything not newer.
                entry.floor = entry.floor.max(first + 1);
                while entry.seen.len() > MAX_NONCES_PER_SESSION * 3 / 4 {
                    if let Some((ts, _)) = entry.seen.pop_first() {
                        entry.floor = entry.floor.max(ts + 1);
                    }
                }
            }
        }
        Ok(())
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        let sessions = self.sessions.lock().unwrap();
        sessions.values().map(|s| s.seen.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(key: &str) -> Sealer {
        Sealer::new(
            ClusterKey::parse(key).unwrap(),
            Purpose::Wire,
            3,
            crate::config::DEFAULT_REPLAY_WINDOW,
        )
    }

    #[test]
    fn sealed_messages_open_once_and_only_as_sealed() {
        let (a, b) = (sealer("k"), sealer("k"));
        let mut body = b"{\"secret\":1}".to_vec();
        let header = a.seal(b'c', b"ctx", &mut body);
        assert_eq!(header.len(), HEADER_LEN);
        assert_eq!(body.len(), 12 + TAG_LEN);
        assert!(!body.windows(6).any(|w| w == b"secret"));
        let opened = b.open(b'c', b"ctx", &header, &body).unwrap();
        assert_eq!(opened.plain, b"{\"secret\":1}");
        // Once only.
        assert_eq!(
            b.open(b'c', b"ctx", &header, &body).err(),
            Some(Refusal::Replayed("nonce seen before (a replay)"))
        );
        // Another kind, context, header or body does not open.
        let c = sealer("k");
        assert!(matches!(
            c.open(b'r', b"ctx", &header, &body),
            Err(Refusal::Forged(_))
        ));
        assert!(matches!(
            c.open(b'c', b"ctz", &header, &body),
            Err(Refusal::Forged(_))
        ));
        let mut h = header.clone();
        h[20] ^= 1;
        assert!(matches!(
            c.open(b'c', b"ctx", &h, &body),
            Err(Refusal::Forged(_))
        ));
        let mut x = body.clone();
        x[0] ^= 1;
        assert!(matches!(
            c.open(b'c', b"ctx", &header, &x),
            Err(Refusal::Forged(_))
        ));
        assert!(matches!(
            c.open(b'c', b"ctx", b"", &body),
            Err(Refusal::Forged(_))
        ));
        assert!(matches!(
            sealer("other").open(b'c', b"ctx", &header, &body),
            Err(Refusal::Forged(_))
        ));
        // The untouched one still opens for a fresh receiver.
        assert!(c.open(b'c', b"ctx", &header, &body).is_ok());
    }

    #[test]
    fn a_keyring_opens_with_any_key_and_seals_with_the_first() {
        let old = sealer("k1");
        let both = sealer("k2,k1");
        let mut body = b"x".to_vec();
        let header = old.seal(b'e', b"", &mut body);
        assert!(both.open(b'e', b"", &header, &body).is_ok());
        let mut body = b"y".to_vec();
        let header = both.seal(b'e', b"", &mut body);
        assert!(old.open(b'e', b"", &header, &body).is_err());
        both.key().reload("k1").unwrap();
        let mut body = b"z".to_vec();
        let header = both.seal(b'e', b"", &mut body);
        assert!(old.open(b'e', b"", &header, &body).is_ok());
        assert_eq!(both.key().key_ids(), old.key().key_ids());
    }

    #[test]
    fn topics_become_tags_by_segment() {
        let s = sealer("k2,k1");
        let topic = s.topic("power.create.42");
        assert!(!topic.contains("power"));
        let parts: Vec<_> = topic.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p.len() == 16));
        let filters = s.topic_filters("power");
        assert_eq!(filters.len(), 2);
        assert!(topic.starts_with(&filters[0]));
        assert!(
            !s.topic("powers.create")
                .starts_with(&format!("{}.", filters[0]))
        );
        assert_eq!(s.topic_filters(""), vec![String::new()]);
        assert!(s.topic_is(topic.as_bytes(), "power.create.42"));
        assert!(!s.topic_is(topic.as_bytes(), "power.create.43"));
        assert!(!sealer("k3").topic_is(topic.as_bytes(), "power.create.42"));
    }

    #[test]
    fn the_replay_window_and_memory_are_bounded() {
        let guard = ReplayGuard::new(Duration::from_secs(60));
        let now = 1_000_000_000;
        let n = |i: u32| {
            let mut nonce = [0u8; 24];
            nonce[..4].copy_from_slice(&i.to_be_bytes());
            nonce
        };
        assert!(guard.check([1; 8], now - 61_000, &n(0), now).is_err());
        assert!(guard.check([1; 8], now + 61_000, &n(0), now).is_err());
        assert!(guard.check([1; 8], now - 59_000, &n(0), now).is_ok());
        assert!(guard.check([1; 8], now - 59_000, &n(0), now).is_err());
        // The same nonce from another session is another message.
        assert!(guard.check([2; 8], now - 59_000, &n(0), now).is_ok());
        // Expired nonces are forgotten (and would be refused by the window anyway).
        let later = now + 2_000;
        assert!(guard.check([1; 8], later, &n(1), later).is_ok());
        assert!(guard.check([1; 8], now - 59_000, &n(0), later).is_err());
        // Past the cap, the oldest go and the floor rises above them.
        let count = MAX_NONCES_PER_SESSION as u32 + 10;
        for i in 0..count {
            let ts = later + u64::from(i) / 100;
            assert!(guard.check([3; 8], ts, &n(i), later).is_ok());
        }
        assert!(guard.remembered() <= MAX_NONCES_PER_SESSION + 10);
        assert!(guard.check([3; 8], later, &n(0), later).is_err());
        assert!(guard.check([3; 8], later, &n(u32::MAX), later).is_err());
    }
}
