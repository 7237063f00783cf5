//! Following the change logs: a stream of events that resumes from a cursor and loses none.
//!
//! A [`Follower`] merges two sources: the live events of the node's bus, and reads of the
//! change logs: this node's store, the durable copy its medium keeps (NATS JetStream:
//! [`Medium::read_log`](crate::medium::Medium::read_log), which is how a log whose owner is
//! gone is still read), then the owners (`zeroservices.changes` requests). For every log it knows the sequence
//! number of the last entry it queued; a live entry is queued only if it is the next one. An
//! entry that arrives early (the one before it is still on its way: the owner's tasks publish
//! concurrently) waits up to [`REORDER_WAIT`] for it, then the gap is read from the log; an
//! older or repeated one is dropped. When the bus drops events (the stream fell behind), every
//! log is read from its position. So, per log: in order, no gap, no duplicate.
//!
//! A log the follower has not seen yet (an owner that had published nothing since the stream
//! started, or one that joined later) is read from the cursor's start time when its first
//! event arrives, and when resuming (every owner that announces a log for a followed
//! collection).
//!
//! The topics can change while a follower runs (a websocket client subscribes and
//! unsubscribes). A collection that becomes followed again, or for the first time, after the
//! start is restarted ([`Restarts`]): its old positions are forgotten and its logs are read
//! from the time given (the moment of the new subscription), not from the stream's start.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures::Stream;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::pages::{self, PageEntry};
use super::serve::{CHANGES, ChangesArgs, ChangesReply, MAX_PAGE};
use super::{Cursor, LogAfter, event_collection, log_key, position_of, split_key};
use crate::event::{Shared, topic_matches};
use crate::medium::Request;
use crate::store::now_ms;
use crate::{Error, Event, EventStream, Node, Result};

/// How long an entry that arrived before the one preceding it waits for it before the gap is
/// read from the log.
pub(crate) const REORDER_WAIT: Duration = Duration::from_millis(50);

/// Entries held for a gap, per log, at most; past it the gap is read at once.
const MAX_HELD: usize = 4096;

/// The topic prefixes a follower delivers (a websocket client changes them while it runs).
pub(crate) type Topics = Arc<RwLock<Vec<String>>>;

/// Collections to follow anew from a time (ms since the epoch, this node's clock): whoever
/// changes the [`Topics`] pushes here, before the change, each collection it starts following
/// again or for the first time; the follower applies them before it looks at the next event.
pub(crate) type Restarts = Arc<Mutex<Vec<(String, u64)>>>;

enum Item {
    /// A logged event, at its position (the log's key); whether it was read from the log (not
    /// live).
    Entry(Arc<str>, u64, Arc<Shared>, bool),
    /// An entry passed over (not a followed topic): the position moves on.
    Advance(Arc<str>, u64),
    /// An event without a position (a user event, or a store without a log).
    Plain(Arc<Shared>),
}

/// See the [module docs](self).
pub(crate) struct Follower {
    node: Node,
    topics: Topics,
    live: EventStream,
    /// The position of the last item handed out.
    cursor: Cursor,
    /// The last sequence number queued, per log.
    queued: HashMap<String, u64>,
    pending: VecDeque<Item>,
    /// Entries that arrived early, per log.
    held: BTreeMap<String, BTreeMap<u64, Arc<Shared>>>,
    held_since: Option<Instant>,
    /// Logs to read, and from where.
    to_read: BTreeMap<String, LogAfter>,
    done: bool,
    /// Entries the follower could not read back (no owner of their log answered), counted.
    lost: u64,
    restarts: Restarts,
    /// Where logs not seen yet start, per restarted collection (else the cursor's start).
    starts: HashMap<String, u64>,
    /// Whether entries accepted now come from a log read.
    reading: bool,
    /// The most entries the stream may fall behind a log's newest one, past the closest it
    /// has been to it (0: no bound); see [`Follower::with_max_lag`].
    max_lag: u64,
    /// Per log, the fewest entries the stream has been behind its newest one (first noted at
    /// its first read of the log, or its first live entry of it).
    closest: HashMap<String, u64>,
}

/// An event handed out by [`Follower::next_delivery`].
pub(crate) struct Delivery {
    /// The event (shared with the other followers that read it from the same log page).
    pub(crate) event: Arc<Shared>,
    /// The stream's cursor after it, for its payload's `cursor` (none for an event that is not
    /// logged).
    pub(crate) cursor: Option<String>,
    /// Whether it was read from a change log rather than received live.
    #[cfg_attr(not(feature = "http"), allow(dead_code))] // read by the websocket only
    pub(crate) replayed: bool,
}

/// A page read from a log, wherever it came from.
struct Read {
    entries: Vec<PageEntry>,
    /// The sequence number read up to, matching or not (0: nothing read).
    through: u64,
    head: u64,
    expired: bool,
    more: bool,
}

impl Follower {
    /// Follows the events under `topics` (live ones come from `live`, a subscription of the
    /// node's bus that covers them), from `since` (read from the logs first) or from now.
    pub(crate) fn new(
        node: Node,
        topics: Topics,
        live: EventStream,
        since: Option<Cursor>,
    ) -> Self {
        let resuming = since.is_some();
        let cursor = since.unwrap_or_else(|| Cursor::starting(now_ms()));
        let mut follower = Self {
            node,
            topics,
            live,
            queued: cursor.positions.clone().into_iter().collect(),
            cursor,
            pending: VecDeque::new(),
            held: BTreeMap::new(),
            held_since: None,
            to_read: BTreeMap::new(),
            done: false,
            lost: 0,
            restarts: Restarts::default(),
            starts: HashMap::new(),
            reading: false,
            max_lag: 0,
            closest: HashMap::new(),
        };
        if resuming {
            follower.plan_all();
        }
        follower
    }

    /// The position of the last event handed out.
    pub(crate) fn cursor(&self) -> &Cursor {
        &self.cursor
    }

    /// Takes its restarts from `restarts` (see [`Restarts`]).
    // Used by the websocket (`http::realtime`).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn with_restarts(mut self, restarts: Restarts) -> Self {
        self.restarts = restarts;
        self
    }

    /// Bounds how far behind the stream may fall: more than `entries` behind a change log's
    /// newest entry, counted from the closest it has been to it (a resume starts where its
    /// cursor is; a live stream, at the head), ends it with an [`Error::Limit`] naming
    /// `ZS_WS_MAX_LAG`. Checked at each read of a log and by [`Follower::check_lag`]; 0: no
    /// bound.
    // Used by the websocket (`http::realtime`).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn with_max_lag(mut self, entries: u64) -> Self {
        self.max_lag = entries;
        self
    }

    /// Reads what is planned before the first event is asked for (when resuming: every log from
    /// the cursor), so that a cursor past retention fails here, and the logs' positions are
    /// known before anything else happens. What was read waits for [`Follower::next`].
    // Used by the websocket (`http::realtime`).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) async fn prime(&mut self) -> Result<()> {
        self.apply_restarts();
        if self.to_read.is_empty() {
            return Ok(());
        }
        let read = self.catch_up().await;
        if read.is_err() {
            self.done = true;
        }
        read
    }

    /// Gives back the live stream (after a failed [`Follower::prime`], to start another).
    // Used by the websocket (`http::realtime`).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn into_live(self) -> EventStream {
        self.live
    }

    /// Entries lost because no owner of their log could be read.
    #[allow(dead_code)]
    pub(crate) fn lost(&self) -> u64 {
        self.lost
    }

    /// The next event, with `cursor` in its payload set to the position after it; an error
    /// ([`Error::CursorExpired`], or [`Error::Limit`] past [`Follower::with_max_lag`]) ends
    /// the stream; `None` when the node stops.
    pub(crate) async fn next(&mut self) -> Option<Result<Event>> {
        let delivery = match self.next_delivery().await? {
            Ok(delivery) => delivery,
            Err(e) => return Some(Err(e)),
        };
        let mut event = delivery.event.into_event();
        if let Some(cursor) = delivery.cursor
            && let Value::Object(map) = &mut event.data
        {
            map.insert("cursor".to_owned(), Value::from(cursor));
        }
        Some(Ok(event))
    }

    /// [`Follower::next`] without making the event's payload: the event as read (shared with
    /// the other followers of the same log page) and the stream's cursor after it.
    pub(crate) async fn next_delivery(&mut self) -> Option<Result<Delivery>> {
        loop {
            if self.done {
                return None;
            }
            self.apply_restarts();
            if let Some(item) = self.pending.pop_front() {
                match item {
                    Item::Entry(key, seq, event, replayed) => {
                        self.cursor.advance(&key, seq);
                        return Some(Ok(Delivery {
                            event,
                            cursor: Some(self.cursor.encode()),
                            replayed,
                        }));
                    }
                    Item::Advance(key, seq) => {
                        self.cursor.advance(&key, seq);
                        continue;
                    }
                    Item::Plain(event) => {
                        return Some(Ok(Delivery {
                            event,
                            cursor: None,
                            replayed: false,
                        }));
                    }
                }
            }
            if !self.to_read.is_empty() {
                if let Err(e) = self.catch_up().await {
                    self.done = true;
                    return Some(Err(e));
                }
                continue;
            }
            if let Some(since) = self.held_since
                && since.elapsed() >= REORDER_WAIT
            {
                self.read_gaps();
                continue;
            }
            let deadline = self.held_since.map(|s| s + REORDER_WAIT);
            let event = tokio::select! {
                event = self.live.next_shared() => event,
                () = sleep_until(deadline) => continue,
            };
            let lagged = self.live.take_lagged();
            if lagged > 0 {
                tracing::debug!(lagged, "event stream fell behind: reading the change logs");
                self.plan_all();
            }
            match event {
                Some(event) => self.on_live(event),
                None => {
                    self.done = true;
                    return None;
                }
            }
        }
    }

    /// Whether an event's collection is one the topics follow (its log positions are kept,
    /// even for entries not handed out).
    fn followed_collection(&self, collection: &str) -> bool {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        topics
            .iter()
            .any(|t| t == "*" || t.is_empty() || t.split('.').next() == Some(collection))
    }

    fn wanted(&self, topic: &str) -> bool {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        topics.iter().any(|t| topic_matches(t, topic))
    }

    /// Where a log not seen yet is read from: its collection's restart, else the cursor's start.
    fn start_of(&self, key: &str) -> LogAfter {
        let collection = split_key(key).map(|(c, _)| c).unwrap_or_default();
        LogAfter::Time(
            self.starts
                .get(collection.as_str())
                .copied()
                .unwrap_or(self.cursor.at_ms),
        )
    }

    /// Forgets what is known of the restarted collections' logs and reads them from the
    /// restart's time (see [`Restarts`]).
    fn apply_restarts(&mut self) {
        let restarts = {
            let mut list = self.restarts.lock().unwrap_or_else(|e| e.into_inner());
            if list.is_empty() {
                return;
            }
            std::mem::take(&mut *list)
        };
        for (collection, at_ms) in restarts {
            let of = |key: &String| split_key(key).is_some_and(|(c, _)| c == collection);
            self.queued.retain(|k, _| !of(k));
            self.held.retain(|k, _| !of(k));
            self.to_read.retain(|k, _| !of(k));
            self.pending.retain(|item| match item {
                Item::Entry(k, ..) | Item::Advance(k, _) => {
                    split_key(k).is_none_or(|(c, _)| c != collection)
                }
                Item::Plain(_) => true,
            });
            self.closest.retain(|k, _| !of(k));
            self.starts.insert(collection.clone(), at_ms);
            for log in self.logs_of(&collection) {
                self.to_read
                    .insert(log_key(&collection, &log), LogAfter::Time(at_ms));
            }
        }
        if self.held.is_empty() {
            self.held_since = None;
        }
    }

    fn on_live(&mut self, event: Arc<Shared>) {
        self.apply_restarts();
        let Some((key, seq)) = position_of(&event.event) else {
            if self.wanted(&event.event.topic) {
                self.pending.push_back(Item::Plain(event));
            }
            return;
        };
        if !self.followed_collection(&event_collection(&event.event.topic)) {
            return;
        }
        match self.queued.get(&key).copied() {
            // A log not seen yet: read it from the cursor's start (this entry included).
            None => {
                self.hold(key.clone(), seq, event);
                let start = self.start_of(&key);
                self.to_read.entry(key).or_insert(start);
            }
            Some(last) if seq <= last => {}
            Some(last) if seq == last + 1 => {
                if self.max_lag > 0 && !self.closest.contains_key(&key) {
                    // Live and in order: at the log's head (the bound counts from here).
                    self.closest.insert(key.clone(), 1);
                }
                self.accept(key.clone(), seq, event);
                self.release_held(&key);
            }
            Some(_) => self.hold(key, seq, event),
        }
    }

    fn hold(&mut self, key: String, seq: u64, event: Arc<Shared>) {
        let held = self.held.entry(key.clone()).or_default();
        held.insert(seq, event);
        self.held_since.get_or_insert_with(Instant::now);
        if held.len() > MAX_HELD {
            self.read_gaps();
        }
    }

    /// Queues an entry that is the next of its log.
    fn accept(&mut self, key: String, seq: u64, event: Arc<Shared>) {
        let wanted = self.wanted(&event.event.topic);
        self.accept_shared(&Arc::from(key.as_str()), seq, event, wanted);
    }

    /// Queues an entry that is the next of its log (`key`), handed out or passed over.
    fn accept_shared(&mut self, key: &Arc<str>, seq: u64, event: Arc<Shared>, wanted: bool) {
        match self.queued.get_mut(&**key) {
            Some(queued) => *queued = seq,
            None => {
                self.queued.insert(key.to_string(), seq);
            }
        }
        if wanted {
            self.pending
                .push_back(Item::Entry(key.clone(), seq, event, self.reading));
        } else {
            self.pending.push_back(Item::Advance(key.clone(), seq));
        }
    }

    /// Queues the held entries of a log that now follow on.
    fn release_held(&mut self, key: &str) {
        let Some(held) = self.held.get_mut(key) else {
            return;
        };
        let mut ready = Vec::new();
        let mut last = self.queued.get(key).copied().unwrap_or(0);
        while let Some(entry) = held.first_entry() {
            let seq = *entry.key();
            if seq <= last {
                entry.remove();
            } else if seq == last + 1 {
                ready.push((seq, entry.remove()));
                last = seq;
            } else {
                break;
            }
        }
        if held.is_empty() {
            self.held.remove(key);
        }
        for (seq, event) in ready {
            self.accept(key.to_owned(), seq, event);
        }
        if self.held.is_empty() {
            self.held_since = None;
        }
    }

    /// Reads every log with held entries from its position.
    fn read_gaps(&mut self) {
        for key in self.held.keys() {
            let after = match self.queued.get(key) {
                Some(seq) => LogAfter::Seq(*seq),
                None => self.start_of(key),
            };
            self.to_read.entry(key.clone()).or_insert(after);
        }
        self.held_since = None;
    }

    /// Plans a read of every log known: the ones with a position from it, and the logs the
    /// owners of the followed collections announce that have none from the cursor's start.
    fn plan_all(&mut self) {
        for (key, seq) in &self.queued {
            self.to_read.insert(key.clone(), LogAfter::Seq(*seq));
        }
        let mut collections: Vec<String> = self
            .node
            .collections()
            .into_iter()
            .filter(|c| self.followed_collection(c))
            .collect();
        collections.dedup();
        for collection in collections {
            for log in self.logs_of(&collection) {
                let key = log_key(&collection, &log);
                if !self.queued.contains_key(&key) {
                    let start = self.start_of(&key);
                    self.to_read.insert(key, start);
                }
            }
        }
    }

    /// The logs the owners of `collection` (this node and its peers) announce.
    fn logs_of(&self, collection: &str) -> Vec<String> {
        let mut logs: Vec<String> = self
            .node
            .owners_of(collection)
            .into_iter()
            .filter_map(|owner| owner.stores.get(collection).and_then(|s| s.log.clone()))
            .collect();
        if let Some(store) = self.node.local_store_of(collection)
            && let Some(log) = store.log_id()
        {
            logs.push(log);
        }
        logs.sort();
        logs.dedup();
        logs
    }

    /// Reads the planned logs, queueing what follows on from each position.
    async fn catch_up(&mut self) -> Result<()> {
        self.reading = true;
        let read = self.read_planned().await;
        self.reading = false;
        read
    }

    async fn read_planned(&mut self) -> Result<()> {
        let plan = std::mem::take(&mut self.to_read);
        for (key, after) in plan {
            let Some((collection, log)) = split_key(&key) else {
                continue;
            };
            let read = match self.read_page(&key, &collection, &log, after).await {
                Ok(read) => read,
                Err(e) => {
                    // Nobody can read it back: what is held goes out with its gap.
                    tracing::warn!(log = %key, error = %e, "a change log cannot be read; events may be missing");
                    self.give_up(&key);
                    continue;
                }
            };
            if read.expired {
                return Err(Error::CursorExpired {
                    message: format!(
                        "the change log of {collection} ({log}) no longer holds the \
                         changes after this cursor (ZS_CHANGE_LOG_MAX, ZS_CHANGE_LOG_MS); \
                         reload and subscribe without a cursor"
                    ),
                });
            }
            // Where the stream is in the log: its position, or (read from a time) just before
            // the first entry read.
            let at = match after {
                LogAfter::Seq(at) => at,
                LogAfter::Time(_) => read
                    .entries
                    .first()
                    .map_or(read.head, |e| e.0.saturating_sub(1)),
            };
            self.note_head(&key, &collection, at, read.head)?;
            // The topics once per page, not once per entry.
            let topics = self
                .topics
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let shared_key: Arc<str> = Arc::from(key.as_str());
            for (seq, event) in read.entries {
                if self.queued.get(&key).is_some_and(|q| seq <= *q) {
                    continue;
                }
                let wanted = topics.iter().any(|t| topic_matches(t, &event.event.topic));
                self.accept_shared(&shared_key, seq, event, wanted);
            }
            // Entries passed over, or none after a time: the position moves to what was
            // read (to the head when nothing was).
            let through = if read.through > 0 {
                read.through
            } else if matches!(after, LogAfter::Time(_)) && !read.more {
                read.head
            } else {
                0
            };
            if self.queued.get(&key).is_none_or(|q| through > *q) {
                self.queued.insert(key.clone(), through);
                self.pending
                    .push_back(Item::Advance(shared_key.clone(), through));
            }
            if read.more {
                // The next page once this one is handed out: a far-behind cursor holds
                // one page per log in memory, not the whole backlog.
                let at = self.queued.get(&key).copied().unwrap_or(0);
                self.to_read.insert(key.clone(), LogAfter::Seq(at));
            }
            if self.to_read.contains_key(&key) {
                continue;
            }
            self.release_held(&key);
            if self.held.contains_key(&key) {
                // Entries past what the log held when read: read again after a wait.
                self.held_since.get_or_insert_with(Instant::now);
            }
        }
        Ok(())
    }

    /// Reads a page of a log after `after`: this node's store through the shared pages
    /// ([`pages`]) when it holds the log, else as [`Follower::read`] does.
    async fn read_page(
        &self,
        key: &str,
        collection: &str,
        log: &str,
        after: LogAfter,
    ) -> Result<Read> {
        if let Some(store) = self.node.local_store_of(collection) {
            match pages::read(&store, key, collection, log, after).await {
                Ok(Some(page)) => {
                    return Ok(Read {
                        through: page.entries.last().map_or(0, |e| e.0),
                        entries: page.entries,
                        head: page.head,
                        expired: page.expired,
                        more: page.more,
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(log = %key, error = %e, "this node's change log cannot be read; asking the others");
                }
            }
        }
        let prefixes = self
            .topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let args = ChangesArgs {
            collection: collection.to_owned(),
            log: log.to_owned(),
            after,
            prefixes,
            limit: MAX_PAGE,
        };
        let reply = self.read(&args).await?;
        Ok(Read {
            entries: super::pages::shared(reply.entries),
            through: reply.through,
            head: reply.head,
            expired: reply.expired,
            more: reply.more,
        })
    }

    /// Notes that `key`'s newest entry is `head` while the stream is at `at`: past the bound
    /// ([`Follower::with_max_lag`]), the error that ends the stream.
    fn note_head(&mut self, key: &str, collection: &str, at: u64, head: u64) -> Result<()> {
        if self.max_lag == 0 {
            return Ok(());
        }
        let behind = head.saturating_sub(at);
        let closest = self.closest.entry(key.to_owned()).or_insert(behind);
        *closest = (*closest).min(behind);
        if behind > closest.saturating_add(self.max_lag) {
            let max = self.max_lag;
            return Err(Error::limit(
                "ZS_WS_MAX_LAG",
                max,
                format!(
                    "{behind} changes of {collection} behind the newest, more than {max} \
                     (ZS_WS_MAX_LAG)"
                ),
            ));
        }
        Ok(())
    }

    /// Asks every log the stream is at where its head is now, and ends the stream (the error)
    /// when it fell too far behind ([`Follower::with_max_lag`]): for a stream that cannot hand
    /// out what it read (its client reads nothing), which reads no log meanwhile.
    // Used by the websocket (`http::realtime`).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) async fn check_lag(&mut self) -> Result<()> {
        if self.max_lag == 0 {
            return Ok(());
        }
        let positions: Vec<(String, u64)> = self
            .cursor
            .positions
            .iter()
            .map(|(k, s)| (k.clone(), *s))
            .collect();
        for (key, at) in positions {
            let Some((collection, log)) = split_key(&key) else {
                continue;
            };
            if !self.followed_collection(&collection) {
                // Not followed now: its position stays where it was.
                continue;
            }
            let head = match self.node.local_store_of(&collection) {
                Some(store) => match store
                    .read_log(&collection, &log, LogAfter::Seq(at), 1)
                    .await
                {
                    Ok(Some(page)) => Some(page.head),
                    _ => None,
                },
                None => None,
            };
            let head = match head {
                Some(head) => head,
                None => {
                    let args = ChangesArgs {
                        collection: collection.clone(),
                        log,
                        after: LogAfter::Seq(at),
                        prefixes: Vec::new(),
                        limit: 1,
                    };
                    match self.read(&args).await {
                        Ok(reply) => reply.head,
                        Err(_) => continue,
                    }
                }
            };
            self.note_head(&key, &collection, at, head)?;
        }
        Ok(())
    }

    /// Hands out the held entries of a log that cannot be read, in order, gaps and all.
    fn give_up(&mut self, key: &str) {
        let Some(held) = self.held.remove(key) else {
            return;
        };
        let last = self.queued.get(key).copied().unwrap_or(0);
        let mut expected = last + 1;
        for (seq, event) in held {
            if seq <= last {
                continue;
            }
            self.lost += seq - expected;
            expected = seq + 1;
            self.accept(key.to_owned(), seq, event);
        }
        if self.held.is_empty() {
            self.held_since = None;
        }
    }

    /// Reads a page of a log: from this node's store when it holds the log; else from the
    /// durable copy the medium keeps (NATS JetStream), when that holds the entry after the
    /// position; else from the owners that announce it, then the other owners of the
    /// collection (a shared database holds every owner's log). When no owner answers and the
    /// durable copy dropped the entries by age, the read is expired.
    async fn read(&self, args: &ChangesArgs) -> Result<ChangesReply> {
        let value = serde_json::to_value(args).map_err(|e| Error::internal(e.to_string()))?;
        let mut last = None;
        if self.node.local_store_of(&args.collection).is_some() {
            match super::serve::serve(&self.node, value.clone()).await {
                Ok(reply) => return crate::json::from_value(reply),
                Err(e) => last = Some(e),
            }
        }
        let mut dropped_by_age = false;
        if let LogAfter::Seq(after) = args.after {
            let limit = args.limit.clamp(1, MAX_PAGE);
            match self
                .node
                .medium()
                .read_log(&args.collection, &args.log, after, limit)
                .await
            {
                Some(page) if !page.entries.is_empty() => {
                    return Ok(super::serve::reply_of(page, limit, &args.prefixes));
                }
                Some(page) => dropped_by_age = page.expired,
                None => {}
            }
        }
        match self.read_from_owners(args, value, last).await {
            Ok(reply) => Ok(reply),
            Err(_) if dropped_by_age => Ok(ChangesReply {
                expired: true,
                ..ChangesReply::default()
            }),
            Err(e) => Err(e),
        }
    }

    /// Reads a page of a log from the owners that announce it, then the other owners of the
    /// collection; `last` is the error of a read tried before.
    async fn read_from_owners(
        &self,
        args: &ChangesArgs,
        value: Value,
        mut last: Option<Error>,
    ) -> Result<ChangesReply> {
        let mut owners = self.node.owners_of(&args.collection);
        owners.sort_by_key(|o| {
            o.stores
                .get(&args.collection)
                .and_then(|s| s.log.as_deref())
                != Some(args.log.as_str())
        });
        for owner in owners {
            let request = Request::new(CHANGES, "read").args(value.clone());
            match self.node.call_node(&owner, request).await {
                Ok(reply) => return crate::json::from_value(reply),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::unknown_collection(args.collection.clone())))
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The events of [`Node::subscribe_since`]: each carries in its payload's `cursor` the
/// position after it ([`ResumableStream::cursor`] is the last one handed out). An
/// [`Error::CursorExpired`] item ends the stream.
pub struct ResumableStream {
    rx: mpsc::Receiver<Result<Event>>,
    cursor: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ResumableStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ResumableStream {
    /// Where to resume from: the cursor after the last event this stream handed out (or the
    /// one it started from).
    pub fn cursor(&self) -> &str {
        &self.cursor
    }
}

impl Stream for ResumableStream {
    type Item = Result<Event>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(Ok(event))) = &polled
            && let Some(cursor) = event.data.get("cursor").and_then(Value::as_str)
        {
            self.cursor = cursor.to_owned();
        }
        polled
    }
}

/// The bus subscription that covers a topic prefix whole collections at a time (a follower
/// needs every entry of a log to see its gaps).
pub(crate) fn live_prefix(prefix: &str) -> String {
    match prefix.split('.').next() {
        None | Some("") | Some("*") => "*".to_owned(),
        Some(collection) => collection.to_owned(),
    }
}

impl Node {
    /// Events whose topic falls under `prefix` (as [`Node::subscribe`]), resumable: with
    /// `since` (a cursor from an event's payload or [`ResumableStream::cursor`]), first the
    /// logged changes after it, in order per owner, then live, with no gap and no duplicate
    /// across the switch; without, from now. A subscriber that falls behind reads what it
    /// missed from the change logs instead of losing it.
    ///
    /// # Errors
    /// [`Error::BadRequest`] for a malformed cursor. A cursor older than the logs keep gives a
    /// stream whose first item is [`Error::CursorExpired`].
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> zeroservices::Result<()> {
    /// use futures::StreamExt;
    /// use zeroservices::prelude::*;
    /// use zeroservices::medium::MemoryCluster;
    ///
    /// #[resource(collection = "power")]
    /// pub struct Power { pub value: i64 }
    ///
    /// let cluster = MemoryCluster::new();
    /// let node = Node::builder("power").memory(&cluster).resource::<Power>().start().await?;
    /// let mut events = node.subscribe_since("power", None).await?;
    /// node.collection::<Power>().create(Power { value: 1 }).await?;
    /// let first = events.next().await.unwrap()?;
    /// let cursor = events.cursor().to_owned();
    /// drop(events);
    /// // Changes while nobody listens...
    /// node.collection::<Power>().create(Power { value: 2 }).await?;
    /// // ... are read back from the cursor.
    /// let mut again = node.subscribe_since("power", Some(&cursor)).await?;
    /// let second = again.next().await.unwrap()?;
    /// assert_eq!(second.data["resource_data"]["value"], 2);
    /// # let _ = first; Ok(()) }
    /// ```
    pub async fn subscribe_since(
        &self,
        prefix: impl Into<String>,
        since: Option<&str>,
    ) -> Result<ResumableStream> {
        let prefix = prefix.into();
        let since = since.map(Cursor::parse).transpose()?;
        let live = self.subscribe(live_prefix(&prefix));
        if since.is_none() {
            self.sync_subscriptions().await;
        }
        let topics: Topics = Arc::new(RwLock::new(vec![prefix]));
        let mut follower = Follower::new(self.clone(), topics, live, since);
        let start = follower.cursor().encode();
        let (tx, rx) = mpsc::channel(1024);
        let task = tokio::spawn(async move {
            while let Some(item) = follower.next().await {
                if tx.send(item).await.is_err() {
                    break;
                }
            }
        });
        Ok(ResumableStream {
            rx,
            cursor: start,
            task,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, RwLock};

    use super::{Follower, Topics};
    use crate::medium::MemoryCluster;

    #[crate::resource(collection = "dial")]
    struct Dial {
        n: i64,
    }

    /// Live events reach every follower (every websocket client) as the one event the bus
    /// carries: not copied per follower, its message text made once, each adding its own cursor.
    #[tokio::test]
    async fn followers_share_each_live_event() {
        let cluster = MemoryCluster::new();
        let node = crate::Node::builder("dial_service")
            .memory(&cluster)
            .resource::<Dial>()
            .start()
            .await
            .unwrap();
        let follower = || {
            let topics: Topics = Arc::new(RwLock::new(vec!["dial".to_owned()]));
            Follower::new(node.clone(), topics, node.subscribe("dial"), None)
        };
        let (mut a, mut b) = (follower(), follower());
        let dials = node.collection::<Dial>();
        dials.create(Dial { n: 1 }).await.unwrap();
        // The first event of a log not seen yet is read from the log (each its own read).
        let first_a = a.next_delivery().await.unwrap().unwrap();
        let first_b = b.next_delivery().await.unwrap().unwrap();
        assert_eq!(first_a.event.event.data["resource_data"]["n"], 1);
        assert_eq!(first_b.event.event.data["resource_data"]["n"], 1);
        // The next one comes live: the same shared event for both.
        dials.create(Dial { n: 2 }).await.unwrap();
        let second_a = a.next_delivery().await.unwrap().unwrap();
        let second_b = b.next_delivery().await.unwrap().unwrap();
        assert_eq!(second_a.event.event.data["resource_data"]["n"], 2);
        assert!(Arc::ptr_eq(&second_a.event, &second_b.event));
        // Each message carries its own stream's cursor, after the shared text.
        let (cursor_a, cursor_b) = (second_a.cursor.unwrap(), second_b.cursor.unwrap());
        let text_a = second_a.event.message(Some(&cursor_a));
        let text_b = second_b.event.message(Some(&cursor_b));
        let a_json: serde_json::Value = serde_json::from_str(&text_a).unwrap();
        let b_json: serde_json::Value = serde_json::from_str(&text_b).unwrap();
        assert_eq!(a_json["data"]["cursor"], cursor_a.as_str());
        assert_eq!(b_json["data"]["cursor"], cursor_b.as_str());
        assert_eq!(a_json["data"]["resource_data"]["n"], 2);
        node.stop().await;
    }
}
