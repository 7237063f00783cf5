//! The subjects of a cluster on NATS: names, tags with a cluster key, wildcards for topic
//! prefixes, and the check that a topic can be a subject at all. Pure: no connection.

use crate::config::is_subject_token;
use crate::medium::wire::Wire;
use crate::{Error, Result};

/// The subjects of one cluster (its prefix, `ZS_CLUSTER`), as one node names them: with a
/// cluster key every name token (a collection, a node id, a topic's segments) is its keyed tag
/// (16 hex digits), so names do not show on the wire and nodes under another key use other
/// subjects.
pub(crate) struct Subjects {
    prefix: String,
}

impl Subjects {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// `<prefix>.req.<collection>`: requests to any owner of a collection (a queue group).
    pub(crate) fn request(&self, wire: &Wire, collection: &str) -> Result<String> {
        check_name("collection", collection)?;
        Ok(format!("{}.req.{}", self.prefix, tag(wire, collection)))
    }

    /// The subjects an owner of `collection` listens on: one per key of the ring.
    pub(crate) fn request_filters(&self, wire: &Wire, collection: &str) -> Result<Vec<String>> {
        check_name("collection", collection)?;
        Ok(wire
            .topic_filters(collection)
            .into_iter()
            .map(|t| format!("{}.req.{t}", self.prefix))
            .collect())
    }

    /// `<prefix>.node.<node id>`: requests to one node.
    pub(crate) fn node(&self, wire: &Wire, node_id: &str) -> Result<String> {
        check_name("node id", node_id)?;
        Ok(format!("{}.node.{}", self.prefix, tag(wire, node_id)))
    }

    /// The subjects a node listens on for requests to itself: one per key of the ring.
    pub(crate) fn node_filters(&self, wire: &Wire, node_id: &str) -> Result<Vec<String>> {
        check_name("node id", node_id)?;
        Ok(wire
            .topic_filters(node_id)
            .into_iter()
            .map(|t| format!("{}.node.{t}", self.prefix))
            .collect())
    }

    /// The start of every event subject: `<prefix>.evt.`.
    pub(crate) fn event_base(&self) -> String {
        format!("{}.evt.", self.prefix)
    }

    /// `<prefix>.evt.<topic>` (each dot segment a token, tagged with a key) and the topic frame
    /// (the part after `<prefix>.evt.`, which the seal binds).
    pub(crate) fn event(&self, wire: &Wire, topic: &str) -> Result<(String, Vec<u8>)> {
        check_topic(topic)?;
        let frame = wire.topic_frame(topic);
        let subject = format!("{}{}", self.event_base(), String::from_utf8_lossy(&frame));
        Ok((subject, frame))
    }

    /// The subscriptions for a topic prefix (`""` every event): `<prefix>.evt.>` for
    /// everything, else `<prefix>.evt.<p>` and `<prefix>.evt.<p>.>` under every key of the
    /// ring. `None` for a prefix that no subject can match (a segment that is not a token).
    pub(crate) fn event_filters(&self, wire: &Wire, prefix: &str) -> Option<Vec<String>> {
        if prefix.is_empty() || prefix == "*" {
            return Some(vec![format!("{}>", self.event_base())]);
        }
        if check_topic(prefix).is_err() {
            return None;
        }
        let base = self.event_base();
        Some(
            wire.topic_filters(prefix)
                .into_iter()
                .flat_map(|p| [format!("{base}{p}"), format!("{base}{p}.>")])
                .collect(),
        )
    }

    /// The start of every change log entry's subject: `<prefix>.log.`.
    pub(crate) fn log_base(&self) -> String {
        format!("{}.log.", self.prefix)
    }

    /// The subjects of a JetStream change-log stream: `<prefix>.log.>`.
    pub(crate) fn log_all(&self) -> String {
        format!("{}.log.>", self.prefix)
    }

    /// `<collection token>.<log token>`: the part of a log's entry subjects after
    /// `<prefix>.log.` and before the sequence number. The collection token is the one of
    /// `<prefix>.evt.<collection>`; the log token is the lowercase hex of the log id's bytes,
    /// or with a key its keyed tag (so neither shows a name).
    pub(crate) fn log_frame(&self, wire: &Wire, collection: &str, log: &str) -> Result<String> {
        check_name("collection", collection)?;
        if log.is_empty() || log.len() > 512 {
            return Err(Error::bad_request("a change log id is 1 to 512 bytes"));
        }
        Ok(format!(
            "{}.{}",
            tag(wire, collection),
            tag(wire, &hex::encode(log.as_bytes()))
        ))
    }

    /// `<prefix>.log.<collection token>.<log token>.<seq>`: the subject of entry `seq` of a log.
    pub(crate) fn log_entry(&self, frame: &str, seq: u64) -> String {
        format!("{}{frame}.{seq}", self.log_base())
    }

    /// `<prefix>.log.<collection token>.<log token>.>`: every entry of a log.
    pub(crate) fn log_filter(&self, frame: &str) -> String {
        format!("{}{frame}.>", self.log_base())
    }

    /// `<prefix>.log.<collection token>.>`: every entry of every log of a collection (a
    /// worker's consumer filter), one per key of the ring.
    #[allow(dead_code)]
    pub(crate) fn log_collection_filters(
        &self,
        wire: &Wire,
        collection: &str,
    ) -> Result<Vec<String>> {
        check_name("collection", collection)?;
        Ok(wire
            .topic_filters(collection)
            .into_iter()
            .map(|t| format!("{}{t}.>", self.log_base()))
            .collect())
    }

    /// `<prefix>.disc`: announcements, heartbeats and goodbyes.
    pub(crate) fn discovery(&self) -> String {
        format!("{}.disc", self.prefix)
    }

    /// `<prefix>.disc.hello`: a newcomer's request for announcements.
    pub(crate) fn hello(&self) -> String {
        format!("{}.disc.hello", self.prefix)
    }

    /// `<prefix>.>`: everything of the cluster (the sniffing test).
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// A name as one subject token: itself, or its keyed tag.
fn tag(wire: &Wire, name: &str) -> String {
    String::from_utf8_lossy(&wire.topic_frame(name)).into_owned()
}

fn check_name(what: &str, name: &str) -> Result<()> {
    if is_subject_token(name) {
        Ok(())
    } else {
        Err(Error::bad_request(format!(
            "{what} {name:?} cannot be a NATS subject token (it needs at least one character \
             and no `.`, `*`, `>`, spaces or control characters)"
        )))
    }
}

/// Whether a topic can travel over NATS: dot-separated segments, each a subject token
/// (`chat.room-1.message`, not `chat..x`, `a b` or `power.*`).
pub(crate) fn check_topic(topic: &str) -> Result<()> {
    if topic.len() <= 1024 && topic.split('.').all(is_subject_token) {
        Ok(())
    } else {
        Err(Error::bad_request(format!(
            "event topic {topic:?} cannot travel over NATS: it needs dot-separated segments, \
             each at least one character without `*`, `>`, spaces or control characters \
             (at most 1024 bytes)"
        )))
    }
}

/// The smallest set of prefixes that covers `prefixes` (`"*"` read as `""`, everything): a
/// prefix under another is left out, so no event arrives twice.
pub(crate) fn covering(prefixes: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut all: Vec<String> = prefixes
        .into_iter()
        .map(|p| if p == "*" { String::new() } else { p })
        .collect();
    all.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
    all.dedup();
    let mut kept: Vec<String> = Vec::new();
    for p in all {
        let covered = kept
            .iter()
            .any(|k| k.is_empty() || crate::event::topic_matches(k, &p));
        if !covered {
            kept.push(p);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::ClusterKey;

    fn plain() -> Wire {
        Wire::with_window(None, 1 << 20, crate::config::DEFAULT_REPLAY_WINDOW)
    }

    fn keyed(key: &str) -> Wire {
        Wire::with_window(
            Some(ClusterKey::parse(key).unwrap()),
            1 << 20,
            crate::config::DEFAULT_REPLAY_WINDOW,
        )
    }

    #[test]
    fn subjects_without_a_key_name_things() {
        let s = Subjects::new("zs");
        let w = plain();
        assert_eq!(s.request(&w, "power").unwrap(), "zs.req.power");
        assert_eq!(s.node(&w, "api-1").unwrap(), "zs.node.api-1");
        let (subject, frame) = s.event(&w, "power.create.42").unwrap();
        assert_eq!(subject, "zs.evt.power.create.42");
        assert_eq!(frame, b"power.create.42");
        assert_eq!(
            s.event(&w, "chat.room.message").unwrap().0,
            "zs.evt.chat.room.message"
        );
        assert_eq!(s.event_filters(&w, "").unwrap(), ["zs.evt.>"]);
        assert_eq!(s.event_filters(&w, "*").unwrap(), ["zs.evt.>"]);
        assert_eq!(
            s.event_filters(&w, "power").unwrap(),
            ["zs.evt.power", "zs.evt.power.>"]
        );
        assert_eq!(s.discovery(), "zs.disc");
        assert_eq!(s.hello(), "zs.disc.hello");
    }

    #[test]
    fn log_subjects_name_entries_and_hide_names_with_a_key() {
        let s = Subjects::new("zs");
        let w = plain();
        let frame = s.log_frame(&w, "power", "memory:a.b").unwrap();
        assert_eq!(frame, format!("power.{}", hex::encode("memory:a.b")));
        assert_eq!(
            s.log_entry(&frame, 7),
            format!("zs.log.power.{}.7", hex::encode("memory:a.b"))
        );
        assert_eq!(s.log_filter(&frame), format!("zs.log.{frame}.>"));
        assert_eq!(
            s.log_collection_filters(&w, "power").unwrap(),
            ["zs.log.power.>"]
        );
        assert!(s.log_frame(&w, "po.wer", "x").is_err());
        assert!(s.log_frame(&w, "power", "").is_err());
        let k = keyed("k");
        let frame = s.log_frame(&k, "power", "memory:a.b").unwrap();
        assert!(
            !frame.contains("power") && !frame.contains("memory"),
            "{frame}"
        );
        assert_eq!(frame.split('.').count(), 2, "{frame}");
        assert!(
            s.log_entry(&frame, 1)
                .starts_with(&s.log_collection_filters(&k, "power").unwrap()[0][..23])
        );
    }

    #[test]
    fn bad_names_and_topics_are_refused() {
        let s = Subjects::new("zs");
        let w = plain();
        for topic in [
            "",
            "a..b",
            "a b",
            "power.*",
            "power.>",
            ".a",
            "a.",
            "tab\there",
        ] {
            assert!(s.event(&w, topic).is_err(), "{topic:?}");
        }
        assert!(s.event_filters(&w, "a b").is_none());
        assert!(s.request(&w, "po.wer").is_err());
        assert!(s.node(&w, "a>").is_err());
        let error = s.event(&w, "a b").unwrap_err().to_string();
        assert!(error.contains("cannot travel over NATS"), "{error}");
    }

    #[test]
    fn with_a_key_names_are_tags() {
        let s = Subjects::new("zs");
        let w = keyed("k");
        let request = s.request(&w, "power").unwrap();
        assert!(
            request.starts_with("zs.req.") && !request.contains("power"),
            "{request}"
        );
        // (Names that are not hex: a tag is.)
        let (subject, _) = s.event(&w, "power.create.xyz").unwrap();
        assert!(
            !subject.contains("power") && !subject.contains("xyz"),
            "{subject}"
        );
        let filters = s.event_filters(&w, "power").unwrap();
        assert!(
            subject.starts_with(&format!("{}.", filters[0])),
            "{subject} {filters:?}"
        );
        // Another key: other subjects.
        assert_ne!(s.request(&keyed("other"), "power").unwrap(), request);
        // A keyring listens under each key.
        assert_eq!(
            s.request_filters(&keyed("new,k"), "power").unwrap().len(),
            2
        );
        assert!(
            s.request_filters(&keyed("new,k"), "power")
                .unwrap()
                .contains(&request)
        );
    }

    #[test]
    fn covering_prefixes_leave_out_what_is_covered() {
        let v = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            covering(v(&["power.patch", "power", "powers", "chat.x"])),
            v(&["power", "chat.x", "powers"])
        );
        assert_eq!(covering(v(&["power", "*"])), v(&[""]));
        assert_eq!(covering(v(&["a", "a"])), v(&["a"]));
        assert!(covering(Vec::new()).is_empty());
    }
}
