//! Where a worker resumes: the low watermark of the events it handled, per followed
//! collection, kept in a file.
//!
//! Each event a worker takes from its [`Follower`](crate::changes::follow::Follower) gets a
//! [`Ticket`], in the order they came; the ticket is finished when its event needs no more work
//! here (every rule's handler ran, gave up, skipped it as done elsewhere, or a newer change of
//! the same resource took its place in the queue). The [`Tracker`]'s watermark is the cursor
//! after the longest run of finished tickets from the start: no event at or before it is
//! still running, queued or waiting for a re-check. Once the worker's node is stopping, no
//! ticket finishes any more: what was queued then is not counted as handled.
//!
//! [`StateFile`] keeps the watermarks (`<state dir>/worker-cursor.json`), written atomically
//! (a temporary file, synced, then renamed over the old one).

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::changes::Cursor;

use super::STATE_FILE_NAME as FILE_NAME;

/// A state file larger than this is not read (it cannot be one of ours).
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// The handled events of one followed collection, and the watermark they make.
pub(crate) struct Tracker {
    inner: Mutex<Inner>,
    /// The worker's node is stopping: tickets finish no more.
    stopping: CancellationToken,
}

struct Inner {
    /// Every event at or before this is handled.
    base: Cursor,
    /// Bumped when the follower starts over (an expired cursor): older tickets are ignored.
    generation: u64,
    /// The number of `outstanding[0]`.
    first: u64,
    /// The tickets not yet folded into `base`, in order: the log positions each one moves,
    /// and whether it is finished.
    outstanding: VecDeque<(Vec<(String, u64)>, bool)>,
    changed: bool,
}

impl Tracker {
    pub(crate) fn new(start: Cursor, stopping: CancellationToken) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                base: start,
                generation: 0,
                first: 0,
                outstanding: VecDeque::new(),
                changed: true,
            }),
            stopping,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts over from `start` (a new follower): the tickets handed out so far count no more.
    pub(crate) fn reset(&self, start: Cursor) {
        let mut inner = self.lock();
        inner.base = start;
        inner.generation += 1;
        inner.first = 0;
        inner.outstanding.clear();
        inner.changed = true;
    }

    /// A ticket for the next event, which moved the follower's position from `before` to
    /// `after`.
    pub(crate) fn track(self: &Arc<Self>, before: &Cursor, after: &Cursor) -> Ticket {
        let moves: Vec<(String, u64)> = after
            .positions
            .iter()
            .filter(|(key, seq)| before.positions.get(*key) != Some(seq))
            .map(|(key, seq)| (key.clone(), *seq))
            .collect();
        let mut inner = self.lock();
        let index = inner.first + inner.outstanding.len() as u64;
        inner.outstanding.push_back((moves, false));
        Ticket {
            tracker: self.clone(),
            generation: inner.generation,
            index,
        }
    }

    fn finish(&self, generation: u64, index: u64) {
        if self.stopping.is_cancelled() {
            return;
        }
        let mut inner = self.lock();
        if inner.generation != generation || index < inner.first {
            return;
        }
        let at = (index - inner.first) as usize;
        if let Some(slot) = inner.outstanding.get_mut(at) {
            slot.1 = true;
        }
        while inner.outstanding.front().is_some_and(|(_, done)| *done) {
            if let Some((moves, _)) = inner.outstanding.pop_front() {
                for (key, seq) in moves {
                    inner.base.advance(&key, seq);
                }
                inner.first += 1;
                inner.changed = true;
            }
        }
    }

    /// Tickets not yet folded into the watermark.
    pub(crate) fn outstanding(&self) -> usize {
        self.lock().outstanding.len()
    }

    /// The watermark, and whether it moved since the last call.
    pub(crate) fn watermark(&self) -> (Cursor, bool) {
        let mut inner = self.lock();
        let changed = std::mem::take(&mut inner.changed);
        (inner.base.clone(), changed)
    }
}

/// An event's claim on the watermark: finished when dropped (shared by every rule that handles
/// the event, in an `Arc`).
pub(crate) struct Ticket {
    tracker: Arc<Tracker>,
    generation: u64,
    index: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.tracker.finish(self.generation, self.index);
    }
}

/// What the file holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    worker: String,
    /// The watermark of each followed collection, as cursor text.
    cursors: BTreeMap<String, String>,
}

/// The file a worker keeps its watermarks in.
pub(crate) struct StateFile {
    path: PathBuf,
    worker: String,
}

impl StateFile {
    pub(crate) fn new(dir: &Path, worker: &str) -> Self {
        Self {
            path: dir.join(FILE_NAME),
            worker: worker.to_owned(),
        }
    }

    /// The watermarks saved, per collection; none (with a warning) for a file that is not one
    /// of ours or another worker's.
    pub(crate) fn load(&self) -> BTreeMap<String, Cursor> {
        let path = &self.path;
        let read = std::fs::metadata(path).and_then(|meta| {
            if meta.len() > MAX_FILE_BYTES {
                Err(std::io::Error::other(
                    "larger than a worker state file can be",
                ))
            } else {
                std::fs::read(path)
            }
        });
        let bytes = match read {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(worker = %self.worker, path = %path.display(), "no saved cursor: following from now (the poll check catches up)");
                return BTreeMap::new();
            }
            Err(e) => {
                tracing::warn!(worker = %self.worker, path = %path.display(), error = %e, "the saved cursor cannot be read: following from now (the poll check catches up)");
                return BTreeMap::new();
            }
        };
        let saved: Saved = match serde_json::from_slice(&bytes) {
            Ok(saved) => saved,
            Err(e) => {
                tracing::warn!(worker = %self.worker, path = %path.display(), error = %e, "the saved cursor is corrupt: following from now (the poll check catches up)");
                return BTreeMap::new();
            }
        };
        if saved.worker != self.worker {
            tracing::warn!(worker = %self.worker, path = %path.display(), found = %saved.worker, "the saved cursor is another worker's: following from now (the poll check catches up)");
            return BTreeMap::new();
        }
        let mut cursors = BTreeMap::new();
        for (collection, text) in saved.cursors {
            match Cursor::parse(&text) {
                Ok(cursor) => {
                    cursors.insert(collection, cursor);
                }
                Err(e) => {
                    tracing::warn!(worker = %self.worker, collection = %collection, error = %e, "a saved cursor is corrupt: following that collection from now (the poll check catches up)");
                }
            }
        }
        cursors
    }

    /// Writes the watermarks: a temporary file beside the file, synced, renamed over it.
    pub(crate) fn save(&self, cursors: &BTreeMap<String, Cursor>) -> std::io::Result<()> {
        let saved = Saved {
            worker: self.worker.clone(),
            cursors: cursors
                .iter()
                .map(|(c, cursor)| (c.clone(), cursor.encode()))
                .collect(),
        };
        let bytes = serde_json::to_vec_pretty(&saved).map_err(std::io::Error::other)?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // Replicas may share the dir: each writes its own temporary file.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let temp = self
            .path
            .with_extension(format!("{}.{nanos}.tmp", std::process::id()));
        let written = (|| {
            use std::io::Write;
            let mut file = std::fs::File::create(&temp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&temp, &self.path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        written
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(positions: &[(&str, u64)]) -> Cursor {
        let mut c = Cursor::starting(7);
        for (key, seq) in positions {
            // `<collection>@<log>` as a cursor names it.
            let (collection, log) = key.split_once('@').unwrap();
            c.advance(&crate::changes::log_key(collection, log), *seq);
        }
        c
    }

    /// The watermark moves only over a run of finished tickets from the start.
    #[test]
    fn the_watermark_is_the_finished_prefix() {
        let tracker = Tracker::new(cursor(&[]), CancellationToken::new());
        let steps = [
            cursor(&[("c@a", 1)]),
            cursor(&[("c@a", 2)]),
            cursor(&[("c@a", 2), ("c@b", 1)]),
        ];
        let mut before = cursor(&[]);
        let mut tickets = Vec::new();
        for after in &steps {
            tickets.push(Some(tracker.track(&before, after)));
            before = after.clone();
        }
        // The second finishes first: nothing moves yet.
        tickets[1].take();
        assert_eq!(tracker.watermark().0, cursor(&[]));
        tickets[0].take();
        assert_eq!(tracker.watermark().0, cursor(&[("c@a", 2)]));
        assert_eq!(tracker.outstanding(), 1);
        tickets[2].take();
        assert_eq!(tracker.watermark().0, steps[2]);
        assert_eq!(tracker.watermark().0.at_ms, 7);
    }

    /// Once stopping, tickets dropped (a queue abandoned) do not count as handled.
    #[test]
    fn nothing_finishes_once_stopping() {
        let stopping = CancellationToken::new();
        let tracker = Tracker::new(cursor(&[]), stopping.clone());
        let ticket = tracker.track(&cursor(&[]), &cursor(&[("c@a", 1)]));
        stopping.cancel();
        drop(ticket);
        assert_eq!(tracker.watermark().0, cursor(&[]));
    }

    #[test]
    fn files_round_trip_and_garbage_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(&dir.path().join("w"), "w");
        assert!(file.load().is_empty(), "missing: nothing");
        let cursors = BTreeMap::from([("c".to_owned(), cursor(&[("c@a", 3)]))]);
        file.save(&cursors).unwrap();
        assert_eq!(file.load(), cursors);
        // Another worker's file is not ours.
        assert!(StateFile::new(&dir.path().join("w"), "v").load().is_empty());
        for garbage in [
            &b"{not json"[..],
            b"",
            b"\x00\xff",
            br#"{"worker":"w","cursors":{"c":"!!"}}"#,
        ] {
            std::fs::write(file.path(), garbage).unwrap();
            assert!(file.load().is_empty());
        }
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("w"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [FILE_NAME]);
    }
}
