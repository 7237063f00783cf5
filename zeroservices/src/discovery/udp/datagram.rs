//! The datagram format (see the [module documentation](super)): encoding, sealing, and
//! opening and decoding with every check a datagram from anyone must pass. No sockets.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::DISCOVERY_VERSION;
use crate::security::seal::{HEADER_LEN, Refusal, Sealer};
use crate::{NodeInfo, Result};

/// The kind byte of a discovery datagram in a seal's associated data.
const SEAL_DATAGRAM: u8 = b'd';

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    Announce,
    Reply,
    Goodbye,
}

#[derive(Serialize)]
struct Outgoing<'a> {
    v: u64,
    #[serde(rename = "type")]
    kind: Kind,
    reply_to: SocketAddr,
    node: &'a NodeInfo,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    peers: &'a [SocketAddr],
}

#[derive(Deserialize)]
pub(crate) struct Incoming {
    #[serde(rename = "type")]
    pub(crate) kind: Kind,
    pub(crate) reply_to: SocketAddr,
    pub(crate) node: NodeInfo,
    #[serde(default)]
    pub(crate) peers: Vec<SocketAddr>,
}

/// Why a datagram was dropped.
#[derive(Debug, PartialEq)]
pub(crate) enum Rejection {
    Oversized(usize),
    Malformed(String),
    Unsigned(&'static str),
    Replayed(&'static str),
    Version(String),
}

/// Seals a datagram (its JSON): the clear header, then the ciphertext and its tag.
pub(crate) fn seal(json: &[u8], sealer: &Sealer) -> Vec<u8> {
    let mut body = json.to_vec();
    let mut out = sealer.seal(SEAL_DATAGRAM, b"", &mut body);
    out.extend_from_slice(&body);
    out
}

pub(crate) fn decode(
    bytes: &[u8],
    sealer: Option<&Sealer>,
    limit: usize,
) -> Result<Incoming, Rejection> {
    if bytes.len() > limit {
        return Err(Rejection::Oversized(bytes.len()));
    }
    // A plain datagram is compact JSON (an object); a sealed one starts with its version byte.
    let sealed = bytes.first().is_some_and(|b| *b != b'{');
    let opened;
    let json = match sealer {
        Some(_) if !sealed => return Err(Rejection::Unsigned("not sealed")),
        Some(sealer) => {
            if bytes.len() < HEADER_LEN {
                return Err(Rejection::Unsigned("shorter than a seal"));
            }
            let (header, body) = bytes.split_at(HEADER_LEN);
            opened = match sealer.open(SEAL_DATAGRAM, b"", header, body) {
                Ok(opened) => opened.plain,
                Err(Refusal::Forged(reason)) => return Err(Rejection::Unsigned(reason)),
                Err(Refusal::Replayed(reason)) => return Err(Rejection::Replayed(reason)),
            };
            &opened[..]
        }
        None if sealed && bytes[0] == DISCOVERY_VERSION as u8 => {
            return Err(Rejection::Unsigned(
                "sealed with a cluster key, and this node has none",
            ));
        }
        None => bytes,
    };
    let value: Value =
        serde_json::from_slice(json).map_err(|e| Rejection::Malformed(format!("not JSON: {e}")))?;
    match value.get("v").and_then(Value::as_u64) {
        Some(DISCOVERY_VERSION) => {}
        Some(_) => return Err(Rejection::Version(value["v"].to_string())),
        None if value.get("v").is_some() => return Err(Rejection::Version(value["v"].to_string())),
        None => return Err(Rejection::Malformed("no version field `v`".to_owned())),
    }
    let msg: Incoming = serde_json::from_value(value)
        .map_err(|e| Rejection::Malformed(format!("bad shape: {e}")))?;
    let ip = msg.reply_to.ip();
    if !msg.reply_to.is_ipv4()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip == IpAddr::V4(Ipv4Addr::BROADCAST)
        || msg.reply_to.port() == 0
    {
        return Err(Rejection::Malformed(format!(
            "unusable reply_to {}",
            msg.reply_to
        )));
    }
    if msg.node.id.is_empty() {
        return Err(Rejection::Malformed("empty node id".to_owned()));
    }
    Ok(msg)
}

/// Serialises one datagram (sealed on sending, with a key: [`seal`]).
pub(crate) fn encode(
    kind: Kind,
    node: &NodeInfo,
    reply_to: SocketAddr,
    peers: &[SocketAddr],
) -> io::Result<Vec<u8>> {
    let msg = Outgoing {
        v: DISCOVERY_VERSION,
        kind,
        reply_to,
        node,
        peers,
    };
    Ok(serde_json::to_vec(&msg)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::udp::MAX_DATAGRAM_BYTES;
    use crate::security::ClusterKey;
    use crate::security::seal::Purpose;

    fn info(id: &str) -> NodeInfo {
        serde_json::from_value(serde_json::json!({"id": id, "name": "svc"})).unwrap()
    }

    fn addr() -> SocketAddr {
        "127.0.0.1:4000".parse().unwrap()
    }

    fn sealer(key: &str) -> Sealer {
        Sealer::new(
            ClusterKey::parse(key).unwrap(),
            Purpose::Discovery,
            DISCOVERY_VERSION as u8,
            crate::config::DEFAULT_REPLAY_WINDOW,
        )
    }

    #[test]
    fn round_trips_with_and_without_key() {
        let (a, b) = (sealer("k"), sealer("k"));
        let peers = [addr()];
        let json = encode(Kind::Announce, &info("a"), addr(), &peers).unwrap();
        let msg = decode(&json, None, MAX_DATAGRAM_BYTES).unwrap();
        assert_eq!(
            (msg.kind, msg.node, msg.peers),
            (Kind::Announce, info("a"), peers.to_vec())
        );
        let sealed = seal(&json, &a);
        assert_eq!(sealed[0], DISCOVERY_VERSION as u8);
        assert!(!sealed.windows(7).any(|w| w == b"reply_t"));
        let msg = decode(&sealed, Some(&b), MAX_DATAGRAM_BYTES).unwrap();
        assert_eq!(
            (msg.kind, msg.node, msg.peers),
            (Kind::Announce, info("a"), peers.to_vec())
        );
        // Once only.
        assert!(matches!(
            decode(&sealed, Some(&b), MAX_DATAGRAM_BYTES),
            Err(Rejection::Replayed(_))
        ));
        let plain = encode(Kind::Reply, &info("a"), addr(), &[]).unwrap();
        let text = std::str::from_utf8(&plain).unwrap();
        assert!(text.starts_with(r#"{"v":2,"type":"reply","reply_to":"127.0.0.1:4000","node":{"#));
        assert!(!text.contains("peers"));
    }

    #[test]
    fn keys_must_match() {
        let key = sealer("k");
        let plain = encode(Kind::Goodbye, &info("a"), addr(), &[]).unwrap();
        let sealed = seal(&plain, &key);
        let unsigned = |r| matches!(r, Err(Rejection::Unsigned(_)));
        assert!(unsigned(decode(&plain, Some(&sealer("k")), 70_000)));
        assert!(unsigned(decode(&sealed, Some(&sealer("other")), 70_000)));
        assert!(unsigned(decode(&sealed, None, 70_000)));
        let mut forged = sealed.clone();
        forged[60] ^= 1;
        assert!(unsigned(decode(&forged, Some(&sealer("k")), 70_000)));
        assert!(unsigned(decode(&sealed[..30], Some(&sealer("k")), 70_000)));
        // A keyring with the key among others opens it.
        assert!(decode(&sealed, Some(&sealer("new,k")), 70_000).is_ok());
    }

    #[test]
    fn garbage_is_rejected() {
        let malformed = |b: &[u8]| matches!(decode(b, None, 1000), Err(Rejection::Malformed(_)));
        assert!(malformed(b""));
        assert!(malformed(b"\xff\xfe"));
        assert!(malformed(br#"{"v":2,"type":"announce""#));
        assert!(malformed(br#"{"type":"announce"}"#));
        assert!(malformed(
            br#"{"v":2,"type":"shout","reply_to":"127.0.0.1:1","node":{"id":"a","name":"b"}}"#
        ));
        assert!(malformed(
            br#"{"v":2,"type":"announce","reply_to":"0.0.0.0:1","node":{"id":"a","name":"b"}}"#
        ));
        assert!(malformed(
            br#"{"v":2,"type":"announce","reply_to":"127.0.0.1:1","node":{"id":"","name":"b"}}"#
        ));
        assert!(malformed(b"[1,2]"));
        assert!(matches!(
            decode(br#"{"v":1,"type":"announce"}"#, None, 1000),
            Err(Rejection::Version(_))
        ));
        assert!(matches!(
            decode(br#"{"v":"1"}"#, None, 1000),
            Err(Rejection::Version(_))
        ));
        assert_eq!(
            decode(&[b' '; 1001], None, 1000).err(),
            Some(Rejection::Oversized(1001))
        );
    }
}
