//! The datagram format (see the [module documentation](super)): encoding, signing, and
//! decoding with every check a datagram from anyone must pass. Pure: no sockets.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{DISCOVERY_VERSION, MAC_CONTEXT};
use crate::security::ClusterKey;
use crate::{NodeInfo, Result};

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
    Version(String),
}

/// Splits `<json>\n<64 hex>` into the JSON and the MAC; anything else is all JSON.
fn split_mac(bytes: &[u8]) -> (&[u8], Option<&[u8]>) {
    let n = bytes.len();
    if n > 65 && bytes[n - 65] == b'\n' {
        (&bytes[..n - 65], Some(&bytes[n - 64..]))
    } else {
        (bytes, None)
    }
}

pub(crate) fn decode(
    bytes: &[u8],
    key: Option<&ClusterKey>,
    limit: usize,
) -> Result<Incoming, Rejection> {
    if bytes.len() > limit {
        return Err(Rejection::Oversized(bytes.len()));
    }
    let (json, mac) = split_mac(bytes);
    let json = match (key, mac) {
        (Some(_), None) => return Err(Rejection::Unsigned("unsigned")),
        (Some(key), Some(mac)) => {
            if !key.verify(&[MAC_CONTEXT, json], mac) {
                return Err(Rejection::Unsigned(
                    "bad signature (forged, or another cluster key)",
                ));
            }
            json
        }
        (None, Some(mac)) if mac.iter().all(u8::is_ascii_hexdigit) => {
            return Err(Rejection::Unsigned(
                "signed with a cluster key, and this node has none",
            ));
        }
        (None, _) => bytes,
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

/// Serialises and signs one datagram.
pub(crate) fn encode(
    kind: Kind,
    node: &NodeInfo,
    reply_to: SocketAddr,
    peers: &[SocketAddr],
    key: Option<&ClusterKey>,
) -> io::Result<Vec<u8>> {
    let msg = Outgoing {
        v: DISCOVERY_VERSION,
        kind,
        reply_to,
        node,
        peers,
    };
    let mut bytes = serde_json::to_vec(&msg)?;
    if let Some(key) = key {
        let mac = key.sign(&[MAC_CONTEXT, &bytes]);
        bytes.push(b'\n');
        bytes.extend_from_slice(mac.as_bytes());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::udp::MAX_DATAGRAM_BYTES;

    fn info(id: &str) -> NodeInfo {
        serde_json::from_value(serde_json::json!({"id": id, "name": "svc"})).unwrap()
    }

    fn addr() -> SocketAddr {
        "127.0.0.1:4000".parse().unwrap()
    }

    #[test]
    fn round_trips_with_and_without_key() {
        let key = ClusterKey::new("k");
        let peers = [addr()];
        for k in [None, Some(&key)] {
            let bytes = encode(Kind::Announce, &info("a"), addr(), &peers, k).unwrap();
            let msg = decode(&bytes, k, MAX_DATAGRAM_BYTES).unwrap();
            assert_eq!(msg.kind, Kind::Announce);
            assert_eq!(msg.node, info("a"));
            assert_eq!(msg.peers, peers);
        }
        let plain = encode(Kind::Reply, &info("a"), addr(), &[], None).unwrap();
        let text = std::str::from_utf8(&plain).unwrap();
        assert!(text.starts_with(r#"{"v":1,"type":"reply","reply_to":"127.0.0.1:4000","node":{"#));
        assert!(!text.contains("peers"));
    }

    #[test]
    fn keys_must_match() {
        let key = ClusterKey::new("k");
        let signed = encode(Kind::Announce, &info("a"), addr(), &[], Some(&key)).unwrap();
        let plain = encode(Kind::Announce, &info("a"), addr(), &[], None).unwrap();
        let other = ClusterKey::new("other");
        let unsigned = |r| matches!(r, Err(Rejection::Unsigned(_)));
        assert!(unsigned(decode(&plain, Some(&key), 70_000)));
        assert!(unsigned(decode(&signed, Some(&other), 70_000)));
        assert!(unsigned(decode(&signed, None, 70_000)));
        let mut forged = signed.clone();
        forged[10] ^= 1;
        assert!(unsigned(decode(&forged, Some(&key), 70_000)));
    }

    #[test]
    fn garbage_is_rejected() {
        let malformed = |b: &[u8]| matches!(decode(b, None, 1000), Err(Rejection::Malformed(_)));
        assert!(malformed(b""));
        assert!(malformed(b"\xff\xfe"));
        assert!(malformed(br#"{"v":1,"type":"announce""#));
        assert!(malformed(br#"{"type":"announce"}"#));
        assert!(malformed(
            br#"{"v":1,"type":"shout","reply_to":"127.0.0.1:1","node":{"id":"a","name":"b"}}"#
        ));
        assert!(malformed(
            br#"{"v":1,"type":"announce","reply_to":"0.0.0.0:1","node":{"id":"a","name":"b"}}"#
        ));
        assert!(malformed(
            br#"{"v":1,"type":"announce","reply_to":"127.0.0.1:1","node":{"id":"","name":"b"}}"#
        ));
        assert!(malformed(b"[1,2]"));
        assert!(matches!(
            decode(br#"{"v":2,"type":"announce"}"#, None, 1000),
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
