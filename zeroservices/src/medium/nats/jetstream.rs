//! The change logs on a NATS JetStream stream: an owner publishes every entry it logs
//! ([`Journal`]'s publisher), and a follower reads the entries after a position from the stream
//! ([`read`]) before it asks the log's owner, so a log can be read back after its owner is gone.
//!
//! # The stream (a contract shared with the worker groups; `<p>` is `ZS_CLUSTER`)
//!
//! * One stream per cluster prefix, [`stream_name`] `ZS_<PREFIX>_CHANGES`, subjects `<p>.log.>`,
//!   file storage, discard old, `max_age` the owner's `ZS_CHANGE_LOG_MS`, duplicate window
//!   2 minutes (at most `max_age`), `ZS_NATS_REPLICAS` replicas; created, or its configuration
//!   updated, by every owner that publishes ([`stream_config`]: one function, so every node
//!   asks for the same).
//! * Entry `seq` of log `log` of `collection`: subject
//!   `<p>.log.<collection token>.<log token>.<seq>` (see `Subjects::log_frame`), header
//!   `Nats-Msg-Id: <collection token>.<log token>.<seq>` (the subject after `<p>.log.`: a retry
//!   or a re-sync within the duplicate window stores it once), and headers `Zs-Seq` and `Zs-At`
//!   (the entry's sequence number and time, for tools; readers take them from the payload).
//! * Payload: the `event` envelope exactly as the NATS medium publishes the event, its
//!   `data.cursor` the entry's one-log cursor `c1.<at ms>.<log key>.<seq>` (which holds the
//!   sequence number and time) and `data.version` the resource's version; with a cluster key,
//!   sealed like an event with its own kind byte (`l`) and the subject after `<p>.log.` as
//!   associated data, so the stream holds ciphertext only, and an entry copied to another
//!   subject does not open.
//!
//! # The publisher
//!
//! [`Medium::logged`](crate::medium::Medium::logged) queues every entry (bounded,
//! `ZS_NATS_LOG_QUEUE`; a full queue drops the entry, counted, and asks for a re-sync): it
//! never blocks or fails the write, and the store's log stays the source of truth. One task
//! per node publishes in log order, at most [`WINDOW`] acknowledgements outstanding, and keeps,
//! per log, the last sequence number stored without a gap before it. A failed publish (no
//! acknowledgement, the connection down) is retried from the store's log after a backoff. On
//! start, after the queue overflowed, after a failure and when the connection comes back, it
//! re-syncs each log: from what it knows is stored, else from the last entry the stream holds
//! (checking the [`WINDOW`] entries before it, which a previous run may have left out), it
//! publishes what follows from [`Store::read_log`](crate::store::Store::read_log). A server
//! without JetStream is warned about once; the node then works as without it.
//!
//! # Reading
//!
//! [`read`] looks up the entry after the position by its subject, then reads forward from it
//! with an ephemeral consumer filtered on the log's subjects, a page at a time
//! ([`MAX_PAGE`] entries), handing out entries that follow on without a gap. An entry that does
//! not open, does not parse, or is not the one its subject names is dropped and counted, never
//! handed out. When the stream lacks the entry, the page is empty and says whether the stream
//! dropped it by age (its first entry of the log is later): the follower then asks the owner,
//! and a log that neither holds is `cursor_expired`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::context::CreateStreamErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, LastRawMessageErrorKind};
use async_nats::jetstream::{self as js, ErrorCode};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use tokio::sync::mpsc;

use super::Inner;
use super::subjects::Subjects;
use crate::changes::serve::MAX_PAGE;
use crate::changes::{LogEntry, LogPage, entry_cursor, event_collection, log_key, position_of};
use crate::medium::wire::{self, Rejection};
use crate::security::seal::HEADER_LEN;
use crate::{Error, Event, Result};

/// The duplicate window of the stream (at most its `max_age`).
pub(crate) const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Publish acknowledgements a publisher waits for at once, at most.
pub(crate) const WINDOW: usize = 64;
/// Entries read from the store per page of a re-sync.
const RESYNC_PAGE: usize = 512;
/// The first and the longest wait before a failed publish is tried again.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A reader that found no stream looks again after this long.
const LOOKUP_AGAIN: Duration = Duration::from_secs(2);

/// The stream of a cluster prefix: `ZS_<PREFIX>_CHANGES`, the prefix upper-cased and every
/// character outside `[A-Za-z0-9_-]` replaced by `_`.
pub(crate) fn stream_name(prefix: &str) -> String {
    let prefix: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("ZS_{prefix}_CHANGES")
}

/// The configuration every node asks for (see the [module docs](self)).
pub(crate) fn stream_config(
    subjects: &Subjects,
    max_age: Duration,
    replicas: usize,
) -> stream::Config {
    let max_age = max_age.max(Duration::from_secs(1));
    stream::Config {
        name: stream_name(subjects.prefix()),
        subjects: vec![subjects.log_all()],
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::Old,
        retention: stream::RetentionPolicy::Limits,
        max_age,
        duplicate_window: DUPLICATE_WINDOW.min(max_age),
        num_replicas: replicas.clamp(1, 5),
        ..Default::default()
    }
}

/// Counters of the change-log stream (part of [`NatsStats`](super::NatsStats)).
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) published: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) resynced: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) read: AtomicU64,
    pub(crate) rejected: AtomicU64,
}

/// A log: its collection and id.
type LogId = (String, String);

/// The change-log stream of one medium: the publisher's queue and state, the stream handle,
/// the counters.
#[derive(Default)]
pub(crate) struct Journal {
    queue: Mutex<Option<mpsc::Sender<Arc<Event>>>>,
    /// Entries queued and not yet handled by the publisher.
    pending: AtomicU64,
    /// The queue overflowed: every log is re-synced.
    overflowed: AtomicBool,
    /// A re-sync is due or running.
    syncing: AtomicBool,
    /// The server has no JetStream (warned once).
    disabled: AtomicBool,
    warned: AtomicBool,
    /// The stream, once found or created, and when a reader last looked for it in vain.
    stream: tokio::sync::Mutex<(Option<stream::Stream>, Option<Instant>)>,
    /// The JetStream context on the medium's connection, made once.
    context: std::sync::OnceLock<js::Context>,
    pub(crate) counters: Counters,
}

impl Journal {
    /// Queues a logged entry for the publisher (never waits).
    pub(crate) fn logged(&self, entry: &Arc<Event>) {
        if self.disabled.load(Ordering::Relaxed) {
            return;
        }
        let queue = super::lock(&self.queue);
        let Some(tx) = queue.as_ref() else { return };
        self.pending.fetch_add(1, Ordering::SeqCst);
        if tx.try_send(entry.clone()).is_err() {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            self.overflowed.store(true, Ordering::SeqCst);
        }
    }

    /// Whether the publisher has nothing left to do (its queue empty, no re-sync due).
    fn idle(&self) -> bool {
        self.pending.load(Ordering::SeqCst) == 0
            && !self.syncing.load(Ordering::SeqCst)
            && !self.overflowed.load(Ordering::SeqCst)
    }

    /// Waits (at most `within`) until the publisher has published what was queued.
    pub(crate) async fn flush(&self, within: Duration) {
        if super::lock(&self.queue).is_none() || self.disabled.load(Ordering::Relaxed) {
            return;
        }
        let deadline = tokio::time::Instant::now() + within;
        while !self.idle() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Closes the queue: the publisher ends.
    pub(crate) fn close(&self) {
        super::lock(&self.queue).take();
    }

    fn warn_disabled(&self, why: &str) {
        self.disabled.store(true, Ordering::SeqCst);
        self.syncing.store(false, Ordering::SeqCst);
        if !self.warned.swap(true, Ordering::SeqCst) {
            tracing::warn!(
                "nats: the server has no JetStream ({why}): change logs are not kept on a \
                 stream; followers read them from their owners only"
            );
        }
    }
}

/// Starts the publisher of a medium whose node owns collections with change logs; returns its
/// task (aborted when the medium stops).
pub(crate) fn start_publisher(inner: &Arc<Inner>) -> Option<tokio::task::JoinHandle<()>> {
    let journal = &inner.journal;
    let mut queue = super::lock(&journal.queue);
    if queue.is_some() || journal.disabled.load(Ordering::Relaxed) {
        return None;
    }
    let (tx, rx) = mpsc::channel(inner.config.nats_log_queue.max(1));
    *queue = Some(tx);
    journal.syncing.store(true, Ordering::SeqCst);
    Some(tokio::spawn(publish_loop(Arc::downgrade(inner), rx)))
}

/// One entry, ready to publish.
struct Outgoing {
    log: LogId,
    seq: u64,
    subject: String,
    id: String,
    headers: HeaderMap,
    payload: Vec<u8>,
}

/// What the publisher knows: per log, the last sequence number stored without a gap before
/// it, and the logs to re-sync.
#[derive(Default)]
struct Progress {
    stored: BTreeMap<LogId, u64>,
    resync: BTreeSet<LogId>,
    resync_all: bool,
}

async fn publish_loop(weak: Weak<Inner>, mut rx: mpsc::Receiver<Arc<Event>>) {
    let mut progress = Progress {
        resync_all: true,
        ..Progress::default()
    };
    let mut backoff = BACKOFF_MIN;
    let mut connected = match weak.upgrade() {
        Some(inner) => inner.link.watch(),
        None => return,
    };
    let mut ready = false;
    loop {
        // The stream, then the re-syncs due, before anything new.
        let due = {
            let Some(inner) = weak.upgrade() else { return };
            if inner.journal.overflowed.swap(false, Ordering::SeqCst) {
                progress.resync_all = true;
            }
            if progress.resync_all || !progress.resync.is_empty() {
                inner.journal.syncing.store(true, Ordering::SeqCst);
            }
            let step = async {
                if !ready {
                    ready = ensure_stream(&inner).await?;
                    if !ready {
                        return Ok(false);
                    }
                }
                resync(&inner, &mut progress).await?;
                Ok::<bool, Error>(true)
            };
            match step.await {
                Ok(true) => {
                    backoff = BACKOFF_MIN;
                    inner.journal.syncing.store(false, Ordering::SeqCst);
                    None
                }
                Ok(false) => {
                    // No JetStream: drop what comes, as long as the node runs.
                    drop(inner);
                    while rx.recv().await.is_some() {
                        if let Some(inner) = weak.upgrade() {
                            inner.journal.pending.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "nats: change-log stream not in sync; retrying");
                    Some(backoff)
                }
            }
        };
        if let Some(wait) = due {
            backoff = (backoff * 2).min(BACKOFF_MAX);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = connected.wait_for(|up| *up) => {}
            }
            continue;
        }
        // The next entries, or the connection coming back.
        let first = tokio::select! {
            entry = rx.recv() => match entry {
                Some(entry) => entry,
                None => return,
            },
            changed = connected.changed() => {
                if changed.is_err() {
                    return;
                }
                if *connected.borrow_and_update() {
                    progress.resync_all = true;
                }
                continue;
            }
        };
        let mut batch = vec![first];
        while batch.len() < WINDOW * 4 {
            match rx.try_recv() {
                Ok(entry) => batch.push(entry),
                Err(_) => break,
            }
        }
        let Some(inner) = weak.upgrade() else { return };
        let count = batch.len() as u64;
        publish_live(&inner, &mut progress, batch).await;
        inner.journal.pending.fetch_sub(count, Ordering::SeqCst);
    }
}

/// Creates the stream (or updates its configuration); `Ok(false)`: the server has no JetStream.
async fn ensure_stream(inner: &Inner) -> Result<bool> {
    let context = inner.jetstream()?;
    let max_age = inner.retention().max_age;
    let config = stream_config(&inner.subjects, max_age, inner.config.nats_replicas);
    match context.create_or_update_stream(config).await {
        Ok(_) => {}
        Err(e) => {
            let no_jetstream = match e.kind() {
                CreateStreamErrorKind::JetStreamUnavailable => inner.link.is_connected(),
                CreateStreamErrorKind::JetStream(err) => matches!(
                    err.error_code(),
                    ErrorCode::JETSTREAM_NOT_ENABLED | ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT
                ),
                _ => false,
            };
            if no_jetstream {
                inner.journal.warn_disabled(&e.to_string());
                return Ok(false);
            }
            return Err(Error::unavailable(format!(
                "cannot create the change-log stream: {e}"
            )));
        }
    }
    let stream = context
        .get_stream(stream_name(inner.subjects.prefix()))
        .await
        .map_err(|e| Error::unavailable(format!("change-log stream: {e}")))?;
    *inner.journal.stream.lock().await = (Some(stream), None);
    Ok(true)
}

/// Re-syncs the logs due (every log of the node after an overflow, a failure or a reconnect).
async fn resync(inner: &Inner, progress: &mut Progress) -> Result<()> {
    let Some(inbound) = inner.inbound.get() else {
        return Ok(());
    };
    let logs: Vec<LogId> = if progress.resync_all {
        inbound.change_logs()
    } else {
        progress.resync.iter().cloned().collect()
    };
    for log in logs {
        resync_log(inner, progress, &log).await?;
        progress.resync.remove(&log);
    }
    progress.resync_all = false;
    Ok(())
}

async fn resync_log(inner: &Inner, progress: &mut Progress, log: &LogId) -> Result<()> {
    let Some(inbound) = inner.inbound.get() else {
        return Ok(());
    };
    let (collection, id) = log;
    let mut missing = Vec::new();
    let mut after = match progress.stored.get(log) {
        Some(seq) => *seq,
        None => {
            let (last, holes) = stream_tail(inner, collection, id).await?;
            missing = holes;
            last
        }
    };
    // Entries a previous run left out just before the last one stored.
    if let Some(&first) = missing.first() {
        let page = inbound
            .read_change_log(collection, id, first - 1, (after - first + 1) as usize)
            .await?
            .unwrap_or_default();
        let entries: Vec<Outgoing> = page
            .entries
            .iter()
            .filter(|e| missing.contains(&e.seq))
            .filter_map(|e| encode_entry(inner, collection, id, e).ok())
            .collect();
        let n = entries.len() as u64;
        if publish_window(inner, entries).await.iter().any(|ok| !ok) {
            return Err(Error::unavailable("a re-published entry was not stored"));
        }
        inner
            .journal
            .counters
            .resynced
            .fetch_add(n, Ordering::Relaxed);
    }
    loop {
        let Some(page) = inbound
            .read_change_log(collection, id, after, RESYNC_PAGE)
            .await?
        else {
            break;
        };
        let entries: Vec<Outgoing> = page
            .entries
            .iter()
            .filter_map(|e| encode_entry(inner, collection, id, e).ok())
            .collect();
        let Some(last) = page.entries.last().map(|e| e.seq) else {
            break;
        };
        let n = entries.len() as u64;
        let acks = publish_window(inner, entries).await;
        if let Some(failed) = acks.iter().position(|ok| !ok) {
            inner
                .journal
                .counters
                .retried
                .fetch_add((acks.len() - failed) as u64, Ordering::Relaxed);
            if let Some(e) = page.entries.get(failed)
                && failed > 0
            {
                progress.stored.insert(log.clone(), e.seq - 1);
            }
            return Err(Error::unavailable("re-synced entries were not stored"));
        }
        inner
            .journal
            .counters
            .resynced
            .fetch_add(n, Ordering::Relaxed);
        after = last;
        progress.stored.insert(log.clone(), after);
        if page.entries.len() < RESYNC_PAGE {
            break;
        }
    }
    progress.stored.insert(log.clone(), after);
    Ok(())
}

/// The last sequence number the stream holds for a log (0: none) and, among the [`WINDOW`]
/// before it, those it lacks.
async fn stream_tail(inner: &Inner, collection: &str, log: &str) -> Result<(u64, Vec<u64>)> {
    let Some(stream) = inner.journal.stream.lock().await.0.clone() else {
        return Err(Error::unavailable("no change-log stream"));
    };
    let frame = inner.subjects.log_frame(&inner.wire, collection, log)?;
    let last = match stream
        .get_last_raw_message_by_subject(&inner.subjects.log_filter(&frame))
        .await
    {
        Ok(message) => seq_of(&message.subject, &frame, &inner.subjects).unwrap_or(0),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => 0,
        Err(e) => return Err(Error::unavailable(format!("change-log stream: {e}"))),
    };
    let mut holes = Vec::new();
    for seq in last.saturating_sub(WINDOW as u64).max(1)..last {
        match stream
            .get_first_raw_message_by_subject(inner.subjects.log_entry(&frame, seq), 1)
            .await
        {
            Ok(_) => {}
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => holes.push(seq),
            Err(e) => return Err(Error::unavailable(format!("change-log stream: {e}"))),
        }
    }
    Ok((last, holes))
}

/// Publishes live entries (in log order per log), skipping what is stored already; a log with
/// a gap or a failure is re-synced next.
async fn publish_live(inner: &Inner, progress: &mut Progress, batch: Vec<Arc<Event>>) {
    let mut next: BTreeMap<LogId, u64> = BTreeMap::new();
    let mut out = Vec::with_capacity(batch.len());
    for event in batch {
        let Some((log, entry)) = entry_of(&event) else {
            continue;
        };
        if progress.resync.contains(&log) {
            continue;
        }
        let stored = progress.stored.get(&log).copied();
        let expected = next.get(&log).copied().or(stored.map(|s| s + 1));
        match expected {
            Some(e) if entry.seq < e => continue,
            Some(e) if entry.seq == e => {}
            // A gap (an entry dropped from the queue), or a log not synced yet.
            _ => {
                progress.resync.insert(log);
                continue;
            }
        }
        next.insert(log.clone(), entry.seq + 1);
        match encode_entry(inner, &log.0, &log.1, &entry) {
            Ok(outgoing) => out.push(outgoing),
            Err(e) => {
                tracing::warn!(error = %e, "nats: a change-log entry cannot be published");
                progress.resync.insert(log);
            }
        }
    }
    let logs: Vec<(LogId, u64)> = out.iter().map(|o| (o.log.clone(), o.seq)).collect();
    let acks = publish_window(inner, out).await;
    for ((log, seq), ok) in logs.into_iter().zip(acks) {
        if ok && progress.stored.get(&log).is_some_and(|s| *s + 1 == seq) {
            progress.stored.insert(log, seq);
        } else if !ok {
            inner
                .journal
                .counters
                .retried
                .fetch_add(1, Ordering::Relaxed);
            progress.resync.insert(log);
        }
    }
}

/// The log and entry of a logged event (from its one-log cursor).
fn entry_of(event: &Event) -> Option<(LogId, LogEntry)> {
    let (key, seq) = position_of(event)?;
    let (collection, log) = crate::changes::split_key(&key)?;
    let at_ms = cursor_time(event)?;
    Some((
        (collection, log),
        LogEntry {
            seq,
            at_ms,
            topic: event.topic.clone(),
            data: event.data.clone(),
        },
    ))
}

/// The time in an event's one-log cursor (`c1.<at ms>.<key>.<seq>`).
fn cursor_time(event: &Event) -> Option<u64> {
    let text = event.data.get("cursor")?.as_str()?;
    text.split('.').nth(1)?.parse().ok()
}

/// An entry as the stream stores it (see the [module docs](self)).
fn encode_entry(inner: &Inner, collection: &str, log: &str, entry: &LogEntry) -> Result<Outgoing> {
    let frame = inner.subjects.log_frame(&inner.wire, collection, log)?;
    let context = format!("{frame}.{}", entry.seq);
    let mut data = entry.data.clone();
    if let serde_json::Value::Object(map) = &mut data {
        map.insert(
            "cursor".to_owned(),
            entry_cursor(&log_key(collection, log), entry.seq, entry.at_ms).into(),
        );
    }
    let body = inner
        .wire
        .encode_event(inner.node_id(), &entry.topic, &data)?;
    let payload = inner.seal(wire::SEAL_LOG, context.as_bytes(), body);
    let mut headers = HeaderMap::new();
    headers.insert("Zs-Seq", entry.seq.to_string().as_str());
    headers.insert("Zs-At", entry.at_ms.to_string().as_str());
    Ok(Outgoing {
        log: (collection.to_owned(), log.to_owned()),
        seq: entry.seq,
        subject: inner.subjects.log_entry(&frame, entry.seq),
        id: context,
        headers,
        payload,
    })
}

/// Publishes entries in order, at most [`WINDOW`] acknowledgements outstanding; whether each
/// was stored.
async fn publish_window(inner: &Inner, entries: Vec<Outgoing>) -> Vec<bool> {
    let Ok(context) = inner.jetstream() else {
        return vec![false; entries.len()];
    };
    let mut results = Vec::with_capacity(entries.len());
    let mut inflight: FuturesOrdered<BoxFuture<'static, bool>> = FuturesOrdered::new();
    let counters = &inner.journal.counters;
    for entry in entries {
        if inflight.len() >= WINDOW
            && let Some(ok) = inflight.next().await
        {
            results.push(ok);
        }
        let message = PublishMessage::build()
            .payload(entry.payload.into())
            .headers(entry.headers)
            .message_id(entry.id);
        match context.send_publish(entry.subject, message).await {
            Ok(ack) => inflight.push_back(Box::pin(async move { ack.await.is_ok() })),
            Err(_) => inflight.push_back(Box::pin(async { false })),
        }
    }
    while let Some(ok) = inflight.next().await {
        results.push(ok);
    }
    let stored = results.iter().filter(|ok| **ok).count() as u64;
    counters.published.fetch_add(stored, Ordering::Relaxed);
    results
}

/// The sequence number at the end of an entry subject of log `frame`.
fn seq_of(subject: &str, frame: &str, subjects: &Subjects) -> Option<u64> {
    subject
        .strip_prefix(subjects.log_base().as_str())?
        .strip_prefix(frame)?
        .strip_prefix('.')?
        .parse()
        .ok()
}

/// The stream, if there is one (looked up again at most every [`LOOKUP_AGAIN`]).
async fn find_stream(inner: &Inner) -> Option<stream::Stream> {
    if !inner.config.nats_jetstream || inner.journal.disabled.load(Ordering::Relaxed) {
        return None;
    }
    let mut cached = inner.journal.stream.lock().await;
    if let Some(stream) = &cached.0 {
        return Some(stream.clone());
    }
    if cached.1.is_some_and(|at| at.elapsed() < LOOKUP_AGAIN) {
        return None;
    }
    let context = inner.jetstream().ok()?;
    match context
        .get_stream(stream_name(inner.subjects.prefix()))
        .await
    {
        Ok(stream) => {
            cached.0 = Some(stream.clone());
            Some(stream)
        }
        Err(e) => {
            tracing::debug!(error = %e, "nats: no change-log stream (reading logs from owners)");
            cached.1 = Some(Instant::now());
            None
        }
    }
}

/// Up to `limit` entries of a log after `after`, from the stream (see the
/// [module docs](self)); `None` without a stream or when it cannot be read now.
pub(crate) async fn read(
    inner: &Inner,
    collection: &str,
    log: &str,
    after: u64,
    limit: usize,
) -> Option<LogPage> {
    let stream = find_stream(inner).await?;
    let frame = inner
        .subjects
        .log_frame(&inner.wire, collection, log)
        .ok()?;
    let limit = limit.clamp(1, MAX_PAGE);
    let next = inner.subjects.log_entry(&frame, after.saturating_add(1));
    let start = match stream.get_first_raw_message_by_subject(&next, 1).await {
        Ok(message) => message.sequence,
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
            return Some(missing(inner, &stream, &frame, collection, log, after).await);
        }
        Err(e) => {
            tracing::debug!(error = %e, "nats: change-log stream not readable now");
            // A stream deleted since: look it up again later.
            if matches!(e.kind(), LastRawMessageErrorKind::JetStream(_)) {
                *inner.journal.stream.lock().await = (None, Some(Instant::now()));
            }
            return None;
        }
    };
    let config = pull::Config {
        filter_subject: inner.subjects.log_filter(&frame),
        deliver_policy: DeliverPolicy::ByStartSequence {
            start_sequence: start,
        },
        ack_policy: AckPolicy::None,
        inactive_threshold: Duration::from_secs(10),
        memory_storage: true,
        ..Default::default()
    };
    let consumer = match stream.create_consumer(config).await {
        Ok(consumer) => consumer,
        Err(e) => {
            tracing::debug!(error = %e, "nats: no consumer on the change-log stream");
            return None;
        }
    };
    let mut entries: Vec<LogEntry> = Vec::new();
    let mut expected = after + 1;
    let max_scan = limit * 4 + 64;
    let mut scanned = 0;
    'pages: while entries.len() < limit && scanned < max_scan {
        let want = (limit - entries.len() + 16).min(max_scan - scanned);
        let Ok(mut batch) = consumer
            .fetch()
            .max_messages(want)
            .max_bytes(inner.config.max_message_bytes.saturating_mul(4))
            .messages()
            .await
        else {
            break;
        };
        let mut got = 0;
        while let Some(message) = batch.next().await {
            let Ok(message) = message else { break };
            got += 1;
            scanned += 1;
            match decode(
                inner,
                &frame,
                collection,
                log,
                &message.subject,
                &message.payload,
            ) {
                Ok(entry) if entry.seq == expected => {
                    expected += 1;
                    entries.push(entry);
                    if entries.len() >= limit {
                        break 'pages;
                    }
                }
                // A copy of an entry already read.
                Ok(entry) if entry.seq < expected => {}
                // A gap: the next read starts there.
                Ok(_) => break 'pages,
                Err(rejection) => inner.reject(&rejection),
            }
        }
        if got == 0 {
            break;
        }
    }
    let name = consumer.cached_info().name.clone();
    tokio::spawn(async move {
        let _ = stream.delete_consumer(&name).await;
    });
    inner
        .journal
        .counters
        .read
        .fetch_add(entries.len() as u64, Ordering::Relaxed);
    Some(LogPage {
        head: expected - 1,
        entries,
        expired: false,
    })
}

/// The page of a read whose next entry the stream lacks: whether it dropped it by age (its
/// first entry of the log is later), and the last sequence number it holds.
async fn missing(
    inner: &Inner,
    stream: &stream::Stream,
    frame: &str,
    collection: &str,
    log: &str,
    after: u64,
) -> LogPage {
    let filter = inner.subjects.log_filter(frame);
    let expired = match stream.get_first_raw_message_by_subject(&filter, 1).await {
        Ok(message) => {
            match decode(
                inner,
                frame,
                collection,
                log,
                &message.subject,
                &message.payload,
            ) {
                Ok(first) => first.seq > after + 1,
                Err(rejection) => {
                    inner.reject(&rejection);
                    false
                }
            }
        }
        Err(_) => false,
    };
    let head = match stream.get_last_raw_message_by_subject(&filter).await {
        Ok(message) => seq_of(&message.subject, frame, &inner.subjects).unwrap_or(0),
        Err(_) => 0,
    };
    LogPage {
        entries: Vec::new(),
        head,
        expired,
    }
}

/// An entry read from the stream, checked: its subject is one of the log's, its payload opens
/// (bound to its subject), parses as an event envelope of the log's collection, and names, in
/// its cursor, the log and sequence number its subject names.
fn decode(
    inner: &Inner,
    frame: &str,
    collection: &str,
    log: &str,
    subject: &str,
    payload: &[u8],
) -> std::result::Result<LogEntry, Rejection> {
    let malformed = |why: &str| Rejection::Malformed(why.to_owned());
    let seq = seq_of(subject, frame, &inner.subjects)
        .ok_or_else(|| malformed("not the subject of an entry of this log"))?;
    let context = &subject[inner.subjects.log_base().len()..];
    let body = inner.open_stored(wire::SEAL_LOG, context.as_bytes(), payload)?;
    let (topic, data) = wire::decode_event(&body)?;
    if event_collection(&topic) != collection {
        return Err(malformed("an entry of another collection"));
    }
    let event = Event { topic, data };
    if position_of(&event) != Some((log_key(collection, log), seq)) {
        return Err(malformed("an entry whose cursor is not its subject's"));
    }
    let at_ms = cursor_time(&event).ok_or_else(|| malformed("an entry without its time"))?;
    Ok(LogEntry {
        seq,
        at_ms,
        topic: event.topic,
        data: event.data,
    })
}

impl Inner {
    /// The JetStream context on this medium's connection.
    fn jetstream(&self) -> Result<js::Context> {
        let client = self.client()?;
        Ok(self
            .journal
            .context
            .get_or_init(|| {
                js::ContextBuilder::new()
                    .timeout(self.config.request_timeout)
                    .build(client.clone())
            })
            .clone())
    }

    /// How long the node's change logs keep entries (the stream keeps them as long).
    fn retention(&self) -> crate::changes::Retention {
        self.inbound
            .get()
            .map_or_else(Default::default, |i| i.change_log_retention())
    }

    /// Opens a stored payload: `header | sealed` with a key, the JSON itself without.
    fn open_stored<'a>(
        &self,
        kind: u8,
        context: &[u8],
        payload: &'a [u8],
    ) -> std::result::Result<std::borrow::Cow<'a, [u8]>, Rejection> {
        if payload.len() > self.config.max_message_bytes {
            return Err(Rejection::Oversized(payload.len()));
        }
        if self.wire.key().is_some() {
            if payload.len() < HEADER_LEN {
                return Err(Rejection::Unsigned("shorter than a seal"));
            }
            let (header, body) = payload.split_at(HEADER_LEN);
            return self.wire.open_stored(kind, context, body, header);
        }
        match payload.first() {
            Some(b'{') => self.wire.open_stored(kind, context, payload, b""),
            Some(&b) if u32::from(b) == crate::medium::PROTOCOL_VERSION => Err(
                Rejection::Unsigned("sealed with a cluster key, and this node has none"),
            ),
            _ => Err(Rejection::Malformed("not a JSON envelope".to_owned())),
        }
    }

    /// Counts and logs (once per kind) an entry of the stream that was not handed out.
    fn reject(&self, rejection: &Rejection) {
        self.journal
            .counters
            .rejected
            .fetch_add(1, Ordering::Relaxed);
        self.drops.count("change-log entry", rejection);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_and_config_follow_the_contract() {
        assert_eq!(stream_name("zs"), "ZS_ZS_CHANGES");
        assert_eq!(stream_name("my.app-1"), "ZS_MY_APP-1_CHANGES");
        let config = stream_config(&Subjects::new("zs"), Duration::from_secs(3600), 9);
        assert_eq!(config.subjects, ["zs.log.>"]);
        assert_eq!(config.num_replicas, 5);
        assert_eq!(config.duplicate_window, DUPLICATE_WINDOW);
        assert_eq!(config.storage, stream::StorageType::File);
        assert_eq!(config.discard, stream::DiscardPolicy::Old);
        let short = stream_config(&Subjects::new("zs"), Duration::from_secs(30), 1);
        assert_eq!(short.duplicate_window, Duration::from_secs(30));
    }
}
