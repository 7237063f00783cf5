//! The calls of one peer's connection waiting for their replies, by request id. Nothing else
//! touches this table: callers register a call (and the entry goes when the call ends, however
//! it ends), the DEALER task completes calls with the replies it reads and fails them all when
//! the connection is lost. It knows no sockets and counts nothing: callers count what it
//! returns.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::value::RawValue;
use tokio::sync::oneshot;

use super::lock;
use crate::{Error, Result};

/// A reply as a waiting call takes it.
pub(crate) type Reply = Result<Box<RawValue>>;

/// Calls waiting for their replies, by request id.
#[derive(Default)]
pub(crate) struct Pending {
    calls: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
}

/// One registered call: its reply arrives on `reply`; dropping it removes the entry (a call
/// dropped by a timeout leaves nothing behind, and its late reply is ignored).
pub(crate) struct Waiting<'a> {
    pending: &'a Pending,
    id: u64,
    pub(crate) reply: oneshot::Receiver<Reply>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(&self.pending.calls).remove(&self.id);
    }
}

impl Pending {
    /// Registers call `id`; an entry already under that id is replaced (its caller sees the
    /// call closed).
    pub(crate) fn insert(&self, id: u64) -> Waiting<'_> {
        let (tx, reply) = oneshot::channel();
        lock(&self.calls).insert(id, tx);
        Waiting {
            pending: self,
            id,
            reply,
        }
    }

    /// Hands `reply` to call `id`; false when no such call waits (it ended: a late reply).
    pub(crate) fn complete(&self, id: u64, reply: Reply) -> bool {
        match lock(&self.calls).remove(&id) {
            Some(tx) => {
                let _ = tx.send(reply);
                true
            }
            None => false,
        }
    }

    /// Fails call `id` with `unavailable`; false when no such call waits.
    pub(crate) fn fail(&self, id: u64, why: &str) -> bool {
        self.complete(id, Err(Error::unavailable(why.to_owned())))
    }

    /// Fails every waiting call with `unavailable`; returns how many.
    pub(crate) fn fail_all(&self, why: &str) -> usize {
        let drained: Vec<_> = lock(&self.calls).drain().collect();
        let n = drained.len();
        for (_, tx) in drained {
            let _ = tx.send(Err(Error::unavailable(why.to_owned())));
        }
        n
    }

    /// How many calls wait.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.calls).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    #[test]
    fn a_reply_completes_its_call_only() {
        let pending = Pending::default();
        let mut one = pending.insert(1);
        let mut two = pending.insert(2);
        assert_eq!(pending.len(), 2);
        assert!(pending.complete(2, Ok(raw("\"two\""))));
        assert_eq!(two.reply.try_recv().unwrap().unwrap().get(), "\"two\"");
        assert!(one.reply.try_recv().is_err(), "call 1 still waits");
        assert_eq!(pending.len(), 1);
        // A second reply under the same id finds nobody.
        assert!(!pending.complete(2, Ok(raw("null"))));
        drop(two);
        assert!(pending.complete(1, Err(Error::bad_request("no"))));
        assert!(matches!(
            one.reply.try_recv().unwrap(),
            Err(Error::BadRequest { .. })
        ));
    }

    #[test]
    fn a_dropped_call_removes_its_entry_and_its_late_reply_is_ignored() {
        let pending = Pending::default();
        let waiting = pending.insert(7);
        assert_eq!(pending.len(), 1);
        drop(waiting);
        assert_eq!(pending.len(), 0);
        assert!(!pending.complete(7, Ok(raw("1"))));
        assert!(!pending.fail(7, "gone"));
    }

    #[test]
    fn a_failed_call_gets_unavailable() {
        let pending = Pending::default();
        let mut waiting = pending.insert(3);
        assert!(pending.fail(3, "node b: send failed"));
        match waiting.reply.try_recv().unwrap() {
            Err(Error::Unavailable { message }) => assert_eq!(message, "node b: send failed"),
            other => panic!("{other:?}"),
        }
        assert_eq!(pending.len(), 0);
    }

    #[test]
    fn fail_all_fails_every_call_and_empties_the_table() {
        let pending = Pending::default();
        let mut calls: Vec<_> = (0..5).map(|id| pending.insert(id)).collect();
        assert_eq!(pending.fail_all("disconnected"), 5);
        assert_eq!(pending.len(), 0);
        for call in &mut calls {
            assert!(matches!(
                call.reply.try_recv().unwrap(),
                Err(Error::Unavailable { .. })
            ));
        }
        assert_eq!(pending.fail_all("again"), 0);
        // The guards of calls already failed remove nothing else.
        let later = pending.insert(9);
        drop(calls);
        assert_eq!(pending.len(), 1);
        drop(later);
        assert_eq!(pending.len(), 0);
    }
}
