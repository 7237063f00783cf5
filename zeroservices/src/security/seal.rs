//! Sealing: AES-256-GCM under per-sender message keys, derived from per-purpose keys that are
//! derived from the cluster key by HKDF-SHA256; a timestamp and a counter per message; and the
//! replay guard that drops a message outside the window or seen before.
//!
//! A sealed message is a 33-byte header in the clear and the ciphertext with its 16-byte tag:
//!
//! ```text
//! header = version (1 byte) | key id (4) | session (12) | timestamp, ms since the epoch (8, big-endian) | counter (8, big-endian)
//! ```
//!
//! The associated data is `kind (1 byte) | header | context` (the topic frame of an event), so
//! none of them can be changed or swapped. The key id (the first 4 bytes of an HKDF output of
//! the secret) picks the key of the ring to open with. The session is 12 random bytes drawn by
//! each sender when it starts; the message key of a session is
//! `AES-256(K, 0u32 | session) | AES-256(K, 1u32 | session)` with `K` the purpose's
//! key-generating key (the key derivation of AES-GCM-SIV, RFC 8452 §4), and the GCM nonce is the
//! counter then four zero bytes: a (key, nonce) pair is never used twice as long as sessions do
//! not collide (96 random bits), without a random draw or a system call per message. The
//! session also scopes the replay memory.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aes::Aes256;
use aes::cipher::{BlockCipherEncrypt, KeyInit};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use sha2::Sha256;

use super::{ClusterKey, Ring};

/// The length of the random session of a sender.
const SESSION_LEN: usize = 12;
/// The length of the clear header.
pub(crate) const HEADER_LEN: usize = 1 + 4 + SESSION_LEN + 8 + 8;
/// The length of the tag after the ciphertext.
pub(crate) const TAG_LEN: usize = 16;
/// What sealing adds to a message.
pub(crate) const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// Senders (sessions) remembered by one replay guard at most; a message of a new one beyond it
/// is dropped (counted) until some expire.
const MAX_SESSIONS: usize = 4096;
/// The replay memory is split in this many shards (by session), each with its own lock.
const SHARDS: usize = 8;
/// Counters remembered per session at most: past it, the oldest are forgotten and the session's
/// floor raised above them (messages of that sender older than the floor are then dropped).
const MAX_NONCES_PER_SESSION: usize = 65_536;

type Session = [u8; SESSION_LEN];

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
    /// The key-generating keys of the message keys, per purpose.
    wire: Aes256,
    discovery: Aes256,
    /// Keys the topic tags of events.
    topics: Hmac<Sha256>,
    /// The tags of the leading segments of topics seen lately (collections and actions: a
    /// topic's last segment, a resource id, is not kept), so an event costs one keyed hash
    /// instead of one per segment. At most [`TAG_CACHE`] entries; emptied when full.
    tag_cache: Mutex<HashMap<String, String>>,
}

/// At most this many leading segments keep their tags ([`Derived::tags`]).
const TAG_CACHE: usize = 1024;

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
        let kgk = |info: &[u8]| Aes256::new_from_slice(&expand(info)).expect("a 32-byte key");
        Self {
            id,
            wire: kgk(b"zeroservices wire v3"),
            discovery: kgk(b"zeroservices discovery v2"),
            topics: <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&expand(
                b"zeroservices topics v1",
            ))
            .expect("HMAC takes any key length"),
            tag_cache: Mutex::new(HashMap::new()),
        }
    }

    /// The message key of a sender's session for `purpose`.
    fn message_key(&self, purpose: Purpose, session: &Session) -> Cipher {
        let kgk = match purpose {
            Purpose::Wire => &self.wire,
            Purpose::Discovery => &self.discovery,
        };
        let mut key = [0u8; 32];
        for (n, half) in key.chunks_exact_mut(16).enumerate() {
            half[..4].copy_from_slice(&(n as u32).to_le_bytes());
            half[4..].copy_from_slice(session);
            kgk.encrypt_block(half.try_into().expect("a 16-byte block"));
        }
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).expect("a 32-byte key"))
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
        let (leading, last) = match topic.rsplit_once('.') {
            Some((leading, last)) => (Some(leading), last),
            None => (None, topic),
        };
        if let Some(leading) = leading {
            let mut cache = self.tag_cache.lock().unwrap_or_else(|e| e.into_inner());
            for segment in leading.split('.') {
                match cache.get(segment) {
                    Some(tag) => out.push_str(tag),
                    None => {
                        let tag = self.tag(segment);
                        out.push_str(&tag);
                        if cache.len() >= TAG_CACHE {
                            cache.clear();
                        }
                        cache.insert(segment.to_owned(), tag);
                    }
                }
                out.push('.');
            }
        }
        out.push_str(&self.tag(last));
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

/// The GCM nonce of message `counter` of a session.
fn nonce(counter: &[u8]) -> Nonce {
    let mut nonce = [0u8; 12];
    nonce[..8].copy_from_slice(counter);
    Nonce::assume_unique_for_key(nonce)
}

/// Opens `sealed` (ciphertext, then its tag) of `kind`, `header` and `context` under `cipher`,
/// with the nonce of `counter`: its plaintext, or why not.
fn open_with(
    cipher: &Cipher,
    kind: u8,
    header: &[u8],
    context: &[u8],
    counter: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>, Refusal> {
    let mut plain = sealed.to_vec();
    let len = with_associated(kind, header, context, |aad| {
        cipher
            .open_in_place(nonce(counter), Aad::from(aad), &mut plain)
            .map(|opened| opened.len())
    })
    .map_err(|_| Refusal::Forged("does not open (forged, altered, or another key)"))?;
    plain.truncate(len);
    Ok(plain)
}

/// A message key: AES-256-GCM, ring's (a third of the `aes-gcm` crate's time on the short
/// messages of the wire, whose VAES-512 backend spreads the round keys again for every call).
type Cipher = LessSafeKey;

/// The sending key: the message key of this sender's session under the primary key of the ring
/// it was derived from.
struct SendKey {
    ring: Arc<Ring>,
    cipher: Arc<Cipher>,
}

/// Seals and opens the messages of one purpose for one sender/receiver, with its replay guard.
pub(crate) struct Sealer {
    key: ClusterKey,
    purpose: Purpose,
    version: u8,
    session: Session,
    /// Counts this sender's messages: each has its own nonce.
    counter: AtomicU64,
    send: Mutex<Option<SendKey>>,
    replay: ReplayGuard,
}

/// What opening a message gives: the plaintext.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) plain: Vec<u8>,
}

impl Sealer {
    /// The sealer of discovery messages (format `version`) under the cluster key, if one is set:
    /// what the UDP and the NATS discovery both use.
    pub(crate) fn for_discovery(
        key: Option<&ClusterKey>,
        version: u64,
        window: Duration,
    ) -> Option<Self> {
        key.map(|key| Self::new(key.clone(), Purpose::Discovery, version as u8, window))
    }

    pub(crate) fn new(key: ClusterKey, purpose: Purpose, version: u8, window: Duration) -> Self {
        Self {
            key,
            purpose,
            version,
            session: random(),
            counter: AtomicU64::new(0),
            send: Mutex::new(None),
            replay: ReplayGuard::new(window),
        }
    }

    /// The keyring.
    pub(crate) fn key(&self) -> &ClusterKey {
        &self.key
    }

    /// The primary key's id and this session's message key under it (derived again only when
    /// the ring was reloaded).
    fn sending(&self) -> ([u8; 4], Arc<Cipher>) {
        let ring = self.key.ring();
        let mut send = self.send.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(key) = send.as_ref()
            && Arc::ptr_eq(&key.ring, &ring)
        {
            return (ring.derived[0].id, key.cipher.clone());
        }
        let cipher = Arc::new(ring.derived[0].message_key(self.purpose, &self.session));
        let id = ring.derived[0].id;
        *send = Some(SendKey {
            ring,
            cipher: cipher.clone(),
        });
        (id, cipher)
    }

    /// Seals `plain` in place under the primary key: returns the header; `plain` becomes the
    /// ciphertext and its tag.
    pub(crate) fn seal(&self, kind: u8, context: &[u8], plain: &mut Vec<u8>) -> Vec<u8> {
        let (id, cipher) = self.sending();
        let counter = self.counter.fetch_add(1, Ordering::Relaxed).to_be_bytes();
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.push(self.version);
        header.extend_from_slice(&id);
        header.extend_from_slice(&self.session);
        header.extend_from_slice(&now_ms().to_be_bytes());
        header.extend_from_slice(&counter);
        let tag = with_associated(kind, &header, context, |aad| {
            cipher.seal_in_place_separate_tag(nonce(&counter), Aad::from(aad), plain.as_mut_slice())
        })
        .expect("AES-256-GCM seals messages of any size a node sends");
        plain.extend_from_slice(tag.as_ref());
        header
    }

    /// Opens a sealed message (its `header` and `sealed` ciphertext with tag) of `kind` and
    /// `context`, then checks it against the replay window and the counters seen.
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
        let key_id: [u8; 4] = header[1..5].try_into().expect("4 bytes");
        let session: Session = header[5..17].try_into().expect("12 bytes");
        let timestamp_ms = u64::from_be_bytes(header[17..25].try_into().expect("8 bytes"));
        let counter = &header[25..33];
        let now = now_ms();
        // Stale or future messages are dropped before any work on them.
        self.replay.in_window(timestamp_ms, now)?;
        let ring = self.key.ring();
        let (cipher, derived) = match self.replay.cipher(&session, &ring, key_id) {
            Some(cipher) => (cipher, false),
            None => {
                let Some(key) = ring.derived.iter().find(|d| d.id == key_id) else {
                    return Err(Refusal::Forged(
                        "sealed under a key not in this node's keyring",
                    ));
                };
                (Arc::new(key.message_key(self.purpose, &session)), true)
            }
        };
        let plain = open_with(&cipher, kind, header, context, counter, sealed)?;
        let counter = u64::from_be_bytes(counter.try_into().expect("8 bytes"));
        let learned = derived.then_some((ring, key_id, cipher));
        self.replay
            .check(session, timestamp_ms, counter, now, learned)?;
        Ok(Opened { plain })
    }

    /// Opens a stored message (a change log entry read back from a NATS JetStream stream):
    /// like [`Sealer::open`], without the replay window or the counters seen, since a stored
    /// entry is read again and again, long after it was sealed. What binds it is its `context`
    /// (the entry's subject: collection, log and sequence number), so a copy of it elsewhere
    /// does not open and a copy in place is the same entry.
    pub(crate) fn open_stored(
        &self,
        kind: u8,
        context: &[u8],
        header: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>, Refusal> {
        if header.len() != HEADER_LEN || header[0] != self.version {
            return Err(Refusal::Forged("not a sealed header of this version"));
        }
        if sealed.len() < TAG_LEN {
            return Err(Refusal::Forged("sealed body shorter than its tag"));
        }
        let key_id: [u8; 4] = header[1..5].try_into().expect("4 bytes");
        let session: Session = header[5..17].try_into().expect("12 bytes");
        let counter = &header[25..33];
        let ring = self.key.ring();
        let Some(key) = ring.derived.iter().find(|d| d.id == key_id) else {
            return Err(Refusal::Forged(
                "sealed under a key not in this node's keyring",
            ));
        };
        let cipher = key.message_key(self.purpose, &session);
        open_with(&cipher, kind, header, context, counter, sealed)
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

/// Calls `f` with the associated data `kind | header | context`, built on the stack when it is
/// small (it always is, but for a long topic).
fn with_associated<T>(kind: u8, header: &[u8], context: &[u8], f: impl FnOnce(&[u8]) -> T) -> T {
    let len = 1 + header.len() + context.len();
    let mut small = [0u8; 256];
    let mut large = Vec::new();
    let aad: &mut [u8] = if len <= small.len() {
        &mut small[..len]
    } else {
        large.resize(len, 0);
        &mut large
    };
    aad[0] = kind;
    aad[1..1 + header.len()].copy_from_slice(header);
    aad[1 + header.len()..].copy_from_slice(context);
    f(aad)
}

/// Hashes a session by its bytes folded into one word: sessions are random, and only those of
/// messages that opened (sent by key holders) are stored, so no one can choose colliding ones.
#[derive(Default)]
struct SessionHasher(u64);

impl Hasher for SessionHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(23) ^ u64::from_le_bytes(word);
        }
    }
}

/// A session's message key, with the ring and the key id it was derived under.
type Learned = (Arc<Ring>, [u8; 4], Arc<Cipher>);

type Sessions = HashMap<Session, SessionMemory, BuildHasherDefault<SessionHasher>>;

/// Drops messages outside the window or seen before, in bounded memory.
///
/// Per sender session: the counters seen (with their timestamps) until they leave the window,
/// at most [`MAX_NONCES_PER_SESSION`]; past it the oldest are forgotten and the session's floor
/// is raised past them (older messages of that session are dropped: a replay of a forgotten
/// counter is older than the floor). At most [`MAX_SESSIONS`] sessions; a session whose newest
/// message left the window is forgotten. Each session also keeps its message key, so it is
/// derived once per sender, not per message. The sessions are sharded, each shard under its own
/// lock.
pub(crate) struct ReplayGuard {
    window_ms: u64,
    shards: [Mutex<Sessions>; SHARDS],
}

#[derive(Default)]
struct SessionMemory {
    floor: u64,
    newest: u64,
    seen: BTreeSet<(u64, u64)>,
    /// The message key of this session, the ring and the key id it is under.
    cipher: Option<Learned>,
}

impl ReplayGuard {
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            window_ms: window.as_millis() as u64,
            shards: std::array::from_fn(|_| Mutex::new(Sessions::default())),
        }
    }

    fn shard(&self, session: &Session) -> std::sync::MutexGuard<'_, Sessions> {
        self.shards[usize::from(session[0]) % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn in_window(&self, ts: u64, now: u64) -> Result<(), Refusal> {
        if ts < now.saturating_sub(self.window_ms) || ts > now.saturating_add(self.window_ms) {
            return Err(Refusal::Replayed("timestamp outside the replay window"));
        }
        Ok(())
    }

    /// The message key remembered for `session` under key `key_id` of `ring`, if any (none
    /// once the ring was reloaded: a key removed from it no longer opens anything).
    fn cipher(&self, session: &Session, ring: &Arc<Ring>, key_id: [u8; 4]) -> Option<Arc<Cipher>> {
        let shard = self.shard(session);
        let (of, id, cipher) = shard.get(session)?.cipher.as_ref()?;
        (Arc::ptr_eq(of, ring) && *id == key_id).then(|| cipher.clone())
    }

    /// Records message `counter` of `session`, stamped `ts`, received at `now`; refuses it if it
    /// is outside the window or was seen before. `learned` is the session's message key when it
    /// was just derived (the message opened with it), to remember.
    fn check(
        &self,
        session: Session,
        ts: u64,
        counter: u64,
        now: u64,
        learned: Option<Learned>,
    ) -> Result<(), Refusal> {
        self.in_window(ts, now)?;
        let oldest = now.saturating_sub(self.window_ms);
        let mut sessions = self.shard(&session);
        if !sessions.contains_key(&session) && sessions.len() >= MAX_SESSIONS / SHARDS {
            sessions.retain(|_, s| s.newest >= oldest);
            if sessions.len() >= MAX_SESSIONS / SHARDS {
                return Err(Refusal::Replayed("replay memory full (too many senders)"));
            }
        }
        let entry = sessions.entry(session).or_default();
        if ts < entry.floor {
            return Err(Refusal::Replayed("older than the sender's replay floor"));
        }
        if !entry.seen.insert((ts, counter)) {
            return Err(Refusal::Replayed("nonce seen before (a replay)"));
        }
        if learned.is_some() {
            entry.cipher = learned;
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
        self.shards
            .iter()
            .map(|shard| {
                shard
                    .lock()
                    .unwrap()
                    .values()
                    .map(|s| s.seen.len())
                    .sum::<usize>()
            })
            .sum()
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
    fn cached_tags_are_the_tags_and_the_cache_stays_bounded() {
        let derived = Derived::new(b"a secret");
        let plain = |topic: &str| {
            topic
                .split('.')
                .map(|s| derived.tag(s))
                .collect::<Vec<_>>()
                .join(".")
        };
        for topic in [
            "",
            "power",
            "power.create.1",
            "power.create.2",
            "a..b",
            "power.",
        ] {
            assert_eq!(derived.tags(topic), plain(topic), "{topic}");
            assert_eq!(derived.tags(topic), plain(topic), "{topic} (cached)");
        }
        for n in 0..(TAG_CACHE + 10) {
            let topic = format!("c{n}.create.x");
            assert_eq!(derived.tags(&topic), plain(&topic));
        }
        assert!(derived.tag_cache.lock().unwrap().len() <= TAG_CACHE);
    }
    /// The wire did not change when the message cipher moved from the `aes-gcm` crate to
    /// ring's: a message sealed now is what `aes-gcm` sealed, byte for byte, and opens with it
    /// (and one sealed by `aes-gcm`, as nodes before did, opens here), so older and newer nodes
    /// of a cluster still talk.
    #[test]
    fn the_message_cipher_is_the_aes_gcm_of_nodes_before() {
        use aes_gcm::aead::AeadInOut;
        let a = sealer("k");
        let session = a.session;
        let ring = a.key.ring();
        let old = aes_gcm::Aes256Gcm::new_from_slice(&{
            let mut key = [0u8; 32];
            for (n, half) in key.chunks_exact_mut(16).enumerate() {
                half[..4].copy_from_slice(&(n as u32).to_le_bytes());
                half[4..].copy_from_slice(&session);
                ring.derived[0]
                    .wire
                    .encrypt_block(half.try_into().expect("a 16-byte block"));
            }
            key
        })
        .unwrap();
        for size in [0usize, 1, 15, 16, 17, 150, 4096] {
            let text: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            let mut body = text.clone();
            let header = a.seal(b'c', b"ctx", &mut body);
            let counter: [u8; 8] = header[25..33].try_into().unwrap();
            let mut nonce = [0u8; 12];
            nonce[..8].copy_from_slice(&counter);
            let (cipher, tag) = body.split_at(size);
            let mut plain = cipher.to_vec();
            with_associated(b'c', &header, b"ctx", |aad| {
                old.decrypt_inout_detached(
                    &nonce.into(),
                    aad,
                    plain.as_mut_slice().into(),
                    tag.try_into().unwrap(),
                )
            })
            .expect("aes-gcm opens what ring sealed");
            assert_eq!(plain, text, "{size} bytes");
            // And the other way: aes-gcm's seal opens here.
            let mut theirs = text.clone();
            let tag = with_associated(b'c', &header, b"ctx", |aad| {
                old.encrypt_inout_detached(&nonce.into(), aad, theirs.as_mut_slice().into())
            })
            .unwrap();
            theirs.extend_from_slice(&tag);
            assert_eq!(theirs, body, "{size} bytes: the same ciphertext and tag");
            let opened = open_with(
                &ring.derived[0].message_key(Purpose::Wire, &session),
                b'c',
                &header,
                b"ctx",
                &counter,
                &theirs,
            )
            .unwrap();
            assert_eq!(opened, text);
        }
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
        h[30] ^= 1;
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
    fn a_key_removed_from_the_ring_no_longer_opens_a_known_sender() {
        let sender = sealer("k1");
        let receiver = sealer("k1");
        let mut first = b"one".to_vec();
        let header = sender.seal(b'e', b"", &mut first);
        // The receiver now knows the sender's session and keeps its message key.
        assert!(receiver.open(b'e', b"", &header, &first).is_ok());
        let mut second = b"two".to_vec();
        let header = sender.seal(b'e', b"", &mut second);
        receiver.key().reload("k2").unwrap();
        assert_eq!(
            receiver.open(b'e', b"", &header, &second).err(),
            Some(Refusal::Forged(
                "sealed under a key not in this node's keyring"
            ))
        );
        // Each sender has its own session, so its own message key: the same counter of two
        // senders is two different (key, nonce) pairs.
        let other = sealer("k1");
        let (mut a, mut b) = (b"same".to_vec(), b"same".to_vec());
        let (ha, hb) = (
            sealer("k1").seal(b'e', b"", &mut a),
            other.seal(b'e', b"", &mut b),
        );
        assert_eq!(ha[25..], hb[25..]);
        assert_ne!(a, b);
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
        let n = u64::from;
        assert!(guard.check([1; 12], now - 61_000, n(0), now, None).is_err());
        assert!(guard.check([1; 12], now + 61_000, n(0), now, None).is_err());
        assert!(guard.check([1; 12], now - 59_000, n(0), now, None).is_ok());
        assert!(guard.check([1; 12], now - 59_000, n(0), now, None).is_err());
        // The same nonce from another session is another message.
        assert!(guard.check([2; 12], now - 59_000, n(0), now, None).is_ok());
        // Expired nonces are forgotten (and would be refused by the window anyway).
        let later = now + 2_000;
        assert!(guard.check([1; 12], later, n(1), later, None).is_ok());
        assert!(
            guard
                .check([1; 12], now - 59_000, n(0), later, None)
                .is_err()
        );
        // Past the cap, the oldest go and the floor rises above them.
        let count = MAX_NONCES_PER_SESSION as u32 + 10;
        for i in 0..count {
            let ts = later + u64::from(i) / 100;
            assert!(guard.check([3; 12], ts, n(i), later, None).is_ok());
        }
        assert!(guard.remembered() <= MAX_NONCES_PER_SESSION + 10);
        assert!(guard.check([3; 12], later, n(0), later, None).is_err());
        assert!(
            guard
                .check([3; 12], later, n(u32::MAX), later, None)
                .is_err()
        );
    }
}
