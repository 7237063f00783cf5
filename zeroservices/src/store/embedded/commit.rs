//! Group commit: the durable writes of an [`EmbeddedStore`](super::EmbeddedStore) waiting at
//! the same time share one redb write transaction and one `fsync`.
//!
//! * Every create, replace, patch and delete is queued as a job. The first write to find no
//!   committer running starts one (on [`tokio::task::spawn_blocking`]); it takes every job
//!   already queued, at most the batch maximum (`ZS_STORE_BATCH_MAX`), applies them in queue
//!   order inside one write transaction, commits it with [`Durability::Immediate`], then
//!   answers each, and goes on while jobs are queued. There is no timer: a lone write is
//!   committed at once, alone; a batch is what queued up while the previous commit ran.
//! * A job checks before it changes anything (not found, duplicate id, version conflict, a
//!   patch that does not apply): a write refused by its checks leaves the transaction as it
//!   was, and the others of its batch are committed without it. It sees the writes queued
//!   before it, as if they had run alone, one after the other.
//! * Every answer, a refusal included, is sent after the commit of its batch: no caller hears
//!   of a write (or of a refusal that depends on another write of the batch) before it is
//!   durable. A failed commit fails every job of the batch with its error; none is reported as
//!   done.
//! * A job that fails after it began changing the transaction (a storage error, a value redb
//!   refuses) spoils the batch: the transaction is aborted and each job of the batch runs again
//!   in a transaction of its own, as without group commit, so each still gets its own outcome.
//! * The queue holds [`QUEUE_PER_BATCH`] batches at most; a write past it waits (without
//!   blocking its thread) for room.
//! * The committer holds the database only while it works: when a caller has its answer, the
//!   committer no longer keeps the file open for it.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use redb::{Database, Durability, WriteTransaction};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::storage_error;
use crate::changes::{LogNote, Logged};
use crate::{Error, Result};

/// The queue of a committer holds this many batches at most.
pub const QUEUE_PER_BATCH: usize = 4;

/// How a job failed.
pub(super) enum Fail {
    /// Its own checks refused it, before it changed anything.
    Refused(Error),
    /// It failed after it began changing the transaction: the transaction cannot be committed.
    Broken(Error),
}

impl Fail {
    fn into_error(self) -> Error {
        match self {
            Fail::Refused(e) | Fail::Broken(e) => e,
        }
    }
}

/// What a job's write gives: its answer and what it logged, or how it failed.
pub(super) type Applied<T> = std::result::Result<(T, Option<Logged>), Fail>;

/// A queued write, its answer type erased.
trait Pending: Send {
    /// Runs the write in `txn`, keeping its answer for [`Pending::answer`].
    fn apply(&mut self, txn: &WriteTransaction, path: &Path) -> std::result::Result<(), Fail>;
    /// Answers the caller: `Ok` once the transaction that holds the write is committed.
    fn answer(self: Box<Self>, outcome: Result<()>);
}

struct Job<T, F> {
    run: F,
    out: Option<(T, Option<Logged>)>,
    note: Option<Arc<LogNote>>,
    reply: oneshot::Sender<Result<T>>,
    /// Its place in the queue, given back once it is answered.
    _room: OwnedSemaphorePermit,
}

impl<T, F> Pending for Job<T, F>
where
    T: Send,
    F: FnMut(&WriteTransaction, &Path) -> Applied<T> + Send,
{
    fn apply(&mut self, txn: &WriteTransaction, path: &Path) -> std::result::Result<(), Fail> {
        self.out = None;
        self.out = Some((self.run)(txn, path)?);
        Ok(())
    }

    fn answer(self: Box<Self>, outcome: Result<()>) {
        let Job {
            out, note, reply, ..
        } = *self;
        let answer = match (outcome, out) {
            (Ok(()), Some((value, logged))) => {
                // The owner learns what was logged once it is committed.
                if let (Some(note), Some(logged)) = (note, logged) {
                    note.logged(logged);
                }
                Ok(value)
            }
            (Ok(()), None) => Err(Error::internal(
                "embedded store: a write was committed without being applied",
            )),
            (Err(e), _) => Err(e),
        };
        // The caller may have gone (its request cancelled): the write stands all the same.
        let _ = reply.send(answer);
    }
}

/// The queue of one store's durable writes and its committer; see the [module docs](self).
pub(super) struct Committer {
    state: Mutex<State>,
    room: Arc<Semaphore>,
    batch_max: usize,
    db: Weak<Database>,
    path: Arc<PathBuf>,
    /// Durable transactions committed.
    commits: AtomicU64,
    /// Writes committed.
    written: AtomicU64,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Box<dyn Pending>>,
    /// A committer task is running (it empties the queue before it stops).
    running: bool,
}

impl Committer {
    pub(super) fn new(db: &Arc<Database>, path: Arc<PathBuf>, batch_max: usize) -> Arc<Self> {
        let batch_max = batch_max.max(1);
        Arc::new(Self {
            state: Mutex::default(),
            room: Arc::new(Semaphore::new(batch_max.saturating_mul(QUEUE_PER_BATCH))),
            batch_max,
            db: Arc::downgrade(db),
            path,
            commits: AtomicU64::new(0),
            written: AtomicU64::new(0),
        })
    }

    pub(super) fn batch_max(&self) -> usize {
        self.batch_max
    }

    /// (durable transactions committed, writes they held) since the store was opened.
    pub(super) fn counts(&self) -> (u64, u64) {
        (
            self.commits.load(Ordering::Relaxed),
            self.written.load(Ordering::Relaxed),
        )
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues the write `run` and waits for the commit that holds it; `note` learns what it
    /// logged once that commit is done.
    ///
    /// `run` may run more than once (each time in a fresh transaction, the previous one
    /// aborted): it must not consume what it captured.
    pub(super) async fn submit<T, F>(
        self: &Arc<Self>,
        note: Option<Arc<LogNote>>,
        run: F,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&WriteTransaction, &Path) -> Applied<T> + Send + 'static,
    {
        let room = self
            .room
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::internal("embedded store: the write queue is closed"))?;
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Job {
            run,
            out: None,
            note,
            reply,
            _room: room,
        });
        let lead = {
            let mut state = self.lock();
            state.queue.push_back(job);
            !std::mem::replace(&mut state.running, true)
        };
        if lead {
            let leader = Leader {
                committer: self.clone(),
                finished: false,
            };
            tokio::task::spawn_blocking(move || leader.run());
        }
        answer.await.unwrap_or_else(|_| {
            Err(Error::internal(
                "embedded store: the committer stopped before this write was committed",
            ))
        })
    }

    /// Applies `batch` in one transaction and answers each job.
    fn commit(&self, mut batch: Vec<Box<dyn Pending>>) {
        let Some(db) = self.db.upgrade() else {
            for job in batch {
                job.answer(Err(Error::unavailable(format!(
                    "embedded store {}: the store is closed",
                    self.path.display()
                ))));
            }
            return;
        };
        let outcomes = run_batch(&db, &self.path, &mut batch, &self.commits);
        let written = outcomes.iter().filter(|o| o.is_ok()).count();
        self.written.fetch_add(written as u64, Ordering::Relaxed);
        // Let go of the file before answering: a caller with its answer may close the store
        // and open it again at once.
        drop(db);
        for (job, outcome) in batch.into_iter().zip(outcomes) {
            job.answer(outcome);
        }
    }
}

/// The running committer: empties the queue, a batch at a time. Dropped without finishing (a
/// panic, or a runtime shutting down before it ran), it fails what is queued and lets the next
/// write start another.
struct Leader {
    committer: Arc<Committer>,
    finished: bool,
}

impl Leader {
    fn run(mut self) {
        loop {
            let batch: Vec<Box<dyn Pending>> = {
                let mut state = self.committer.lock();
                if state.queue.is_empty() {
                    state.running = false;
                    self.finished = true;
                    return;
                }
                let n = state.queue.len().min(self.committer.batch_max);
                state.queue.drain(..n).collect()
            };
            self.committer.commit(batch);
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let dropped = {
            let mut state = self.committer.lock();
            state.running = false;
            std::mem::take(&mut state.queue)
        };
        // Their callers hear that the committer stopped.
        drop(dropped);
    }
}

/// A durable write transaction.
fn begin(db: &Database, path: &Path) -> Result<WriteTransaction> {
    let mut txn = db.begin_write().map_err(|e| storage_error(path, e))?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| Error::internal(format!("embedded store: {e}")))?;
    Ok(txn)
}

/// The outcome of each job of `batch`: applied in one transaction, committed once; or, when
/// one spoils the transaction, each in its own.
fn run_batch(
    db: &Database,
    path: &Path,
    batch: &mut [Box<dyn Pending>],
    commits: &AtomicU64,
) -> Vec<Result<()>> {
    let n = batch.len();
    let txn = match begin(db, path) {
        Ok(txn) => txn,
        Err(e) => return vec![Err(e); n],
    };
    let mut outcomes = Vec::with_capacity(n);
    let mut broken = None;
    for job in batch.iter_mut() {
        match job.apply(&txn, path) {
            Ok(()) => outcomes.push(Ok(())),
            Err(Fail::Refused(e)) => outcomes.push(Err(e)),
            Err(Fail::Broken(e)) => {
                broken = Some(e);
                break;
            }
        }
    }
    if let Some(e) = broken {
        // Aborting reports nothing we could act on; dropping would abort too.
        let _ = txn.abort();
        if n == 1 {
            return vec![Err(e)];
        }
        tracing::debug!(
            error = %e,
            writes = n,
            "embedded store: a write spoiled its batch; the batch's writes are committed one by one"
        );
        return batch
            .iter_mut()
            .map(|job| alone(db, path, job, commits))
            .collect();
    }
    match txn.commit() {
        Ok(()) => {
            commits.fetch_add(1, Ordering::Relaxed);
            outcomes
        }
        Err(e) => vec![Err(storage_error(path, e)); n],
    }
}

/// Runs `job` in a transaction of its own.
fn alone(
    db: &Database,
    path: &Path,
    job: &mut Box<dyn Pending>,
    commits: &AtomicU64,
) -> Result<()> {
    let txn = begin(db, path)?;
    match job.apply(&txn, path) {
        Ok(()) => {
            txn.commit().map_err(|e| storage_error(path, e))?;
            commits.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(fail) => {
            let _ = txn.abort();
            Err(fail.into_error())
        }
    }
}
