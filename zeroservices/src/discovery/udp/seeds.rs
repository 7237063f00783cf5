//! The seed peers given by DNS name (`ZS_PEERS=seeds.zs.svc:4000`, a Kubernetes headless
//! service): looking them up ([`Resolve`], the system resolver by default), one round of lookups
//! bounded in time ([`round`]), and what each round changes ([`Seeds`]): the addresses that
//! appeared (contacted at once) and those gone (no longer seeds; peers found through them time
//! out as any other).
//!
//! A lookup that fails or takes longer than its timeout keeps the name's last addresses until
//! one succeeds: a resolver hiccup does not drop a running cluster's seeds. A lookup that
//! succeeds with no IPv4 address (discovery speaks IPv4 only; `localhost`'s `::1` is skipped)
//! leaves the name with none. A name going wrong is warned about once, when its state changes,
//! and its recovery logged once. At most `cap` addresses are taken per name and in all
//! ([`NetworkConfig::max_peers`](crate::config::NetworkConfig::max_peers)), the lowest first,
//! so the set does not churn when a resolver rotates its answers.

use std::collections::BTreeSet;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::config::PeerName;

/// One lookup in flight.
pub(crate) type Lookup = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;

/// Looks up a seed's name: [`SystemResolver`], or a fake in tests.
pub(crate) trait Resolve: Send + Sync + 'static {
    /// The addresses `name` resolves to now (its port on each).
    fn lookup(&self, name: &PeerName) -> Lookup;
}

/// The system's resolver through [`tokio::net::lookup_host`] (`/etc/hosts`, then DNS, as the
/// system is configured), off the runtime's threads.
pub(crate) struct SystemResolver;

impl Resolve for SystemResolver {
    fn lookup(&self, name: &PeerName) -> Lookup {
        let (host, port) = (name.host.clone(), name.port);
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect())
        })
    }
}

/// What one lookup gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The addresses it resolves to (any family; any number).
    Found(Vec<SocketAddr>),
    /// The resolver said no (the reason).
    Failed(String),
    /// No answer within the timeout.
    TimedOut,
}

/// One round: every name looked up at once, each within `timeout`; the outcomes in the order
/// of `names`. Owns what it needs, so it can run beside the discovery's sockets.
pub(crate) async fn round(
    resolver: Arc<dyn Resolve>,
    names: Vec<PeerName>,
    timeout: Duration,
) -> Vec<Outcome> {
    let lookups = names.iter().map(|name| {
        let lookup = resolver.lookup(name);
        async move {
            match tokio::time::timeout(timeout, lookup).await {
                Ok(Ok(addrs)) => Outcome::Found(addrs),
                Ok(Err(e)) => Outcome::Failed(e.to_string()),
                Err(_) => Outcome::TimedOut,
            }
        }
    });
    futures::future::join_all(lookups).await
}

/// What is wrong with a name, as far as warnings go: one warning per change of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trouble {
    Failed,
    TimedOut,
    NoIpv4,
}

#[derive(Debug, Default)]
struct NameState {
    addrs: Vec<SocketAddr>,
    trouble: Option<Trouble>,
    over_cap: bool,
}

/// What a round changed: addresses that became seeds, and those that stopped being seeds.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Change {
    pub(crate) appeared: Vec<SocketAddr>,
    pub(crate) gone: Vec<SocketAddr>,
}

/// The names and what they resolve to now.
#[derive(Debug)]
pub(crate) struct Seeds {
    names: Vec<PeerName>,
    state: Vec<NameState>,
    /// The most addresses per name and in all.
    cap: usize,
    /// The addresses now: every name's, sorted, each once, at most `cap`.
    current: Vec<SocketAddr>,
    over_cap: bool,
    /// Warnings logged, for tests: one per change of a name's state.
    warnings: u64,
    /// How long between rounds, for the warnings.
    period: Duration,
}

impl Seeds {
    pub(crate) fn new(names: Vec<PeerName>, cap: usize, period: Duration) -> Self {
        let state = names.iter().map(|_| NameState::default()).collect();
        Self {
            names,
            state,
            cap: cap.max(1),
            current: Vec::new(),
            over_cap: false,
            warnings: 0,
            period,
        }
    }

    pub(crate) fn names(&self) -> &[PeerName] {
        &self.names
    }

    /// The seed addresses the names give now.
    pub(crate) fn addrs(&self) -> &[SocketAddr] {
        &self.current
    }

    #[cfg(test)]
    pub(crate) fn warnings(&self) -> u64 {
        self.warnings
    }

    /// Takes one round's outcomes (in the order of the names).
    pub(crate) fn apply(&mut self, outcomes: Vec<Outcome>) -> Change {
        for ((name, state), outcome) in self.names.iter().zip(&mut self.state).zip(outcomes) {
            let trouble = match outcome {
                Outcome::Found(found) => {
                    let mut v4: Vec<SocketAddr> =
                        found.into_iter().filter(SocketAddr::is_ipv4).collect();
                    v4.sort();
                    v4.dedup();
                    let over = v4.len() > self.cap;
                    if over && !state.over_cap {
                        self.warnings += 1;
                        tracing::warn!(
                            peer = %name,
                            "discovery: ZS_PEERS entry {name} resolves to {} addresses; only \
                             the first {} (ZS_MAX_PEERS) are seeds",
                            v4.len(),
                            self.cap
                        );
                    }
                    state.over_cap = over;
                    v4.truncate(self.cap);
                    state.addrs = v4;
                    state.addrs.is_empty().then_some(Trouble::NoIpv4)
                }
                Outcome::Failed(reason) => Some(warn_once(
                    name,
                    state,
                    Trouble::Failed,
                    &reason,
                    self.period,
                    &mut self.warnings,
                )),
                Outcome::TimedOut => Some(warn_once(
                    name,
                    state,
                    Trouble::TimedOut,
                    "no answer in time",
                    self.period,
                    &mut self.warnings,
                )),
            };
            match (state.trouble, trouble) {
                (prev, Some(Trouble::NoIpv4)) if prev != Some(Trouble::NoIpv4) => {
                    self.warnings += 1;
                    tracing::warn!(
                        peer = %name,
                        "discovery: ZS_PEERS entry {name} resolves to no IPv4 address; no seed \
                         from it until it does (looked up again every {:?})",
                        self.period
                    );
                }
                (Some(_), None) => tracing::info!(
                    peer = %name,
                    addresses = state.addrs.len(),
                    "discovery: ZS_PEERS entry {name} resolves again"
                ),
                _ => {}
            }
            state.trouble = trouble;
        }
        let all: BTreeSet<SocketAddr> = self
            .state
            .iter()
            .flat_map(|s| s.addrs.iter().copied())
            .collect();
        let over = all.len() > self.cap;
        if over && !self.over_cap {
            self.warnings += 1;
            tracing::warn!(
                "discovery: the names of ZS_PEERS resolve to {} addresses; only the first {} \
                 (ZS_MAX_PEERS) are seeds",
                all.len(),
                self.cap
            );
        }
        self.over_cap = over;
        let now: Vec<SocketAddr> = all.into_iter().take(self.cap).collect();
        let change = Change {
            appeared: now
                .iter()
                .filter(|a| self.current.binary_search(a).is_err())
                .copied()
                .collect(),
            gone: self
                .current
                .iter()
                .filter(|a| now.binary_search(a).is_err())
                .copied()
                .collect(),
        };
        if change != Change::default() {
            tracing::info!(
                seeds = now.len(),
                appeared = ?change.appeared,
                gone = ?change.gone,
                "discovery: the seed peers' names resolve to other addresses"
            );
        }
        self.current = now;
        change
    }
}

/// A failed or slow lookup: warned about when the name was fine (or wrong another way) before;
/// the name keeps its last addresses.
fn warn_once(
    name: &PeerName,
    state: &NameState,
    trouble: Trouble,
    reason: &str,
    period: Duration,
    warnings: &mut u64,
) -> Trouble {
    if state.trouble != Some(trouble) {
        *warnings += 1;
        tracing::warn!(
            peer = %name,
            "discovery: ZS_PEERS entry {name} does not resolve ({reason}); it keeps its {} last \
             addresses and is looked up again every {period:?}",
            state.addrs.len()
        );
    }
    trouble
}

/// A resolver whose answer a test changes over time.
#[cfg(test)]
pub(crate) mod fake {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// What the fake resolver answers now.
    #[derive(Clone)]
    pub(crate) enum Answer {
        Addrs(Vec<SocketAddr>),
        Fail,
        Hang,
    }

    pub(crate) struct Fake {
        answer: Mutex<Answer>,
        calls: AtomicUsize,
    }

    impl Fake {
        pub(crate) fn new(answer: Answer) -> Arc<Self> {
            Arc::new(Self {
                answer: Mutex::new(answer),
                calls: AtomicUsize::new(0),
            })
        }

        pub(crate) fn answer(&self, answer: Answer) {
            *self.answer.lock().unwrap() = answer;
        }

        /// Lookups started so far.
        pub(crate) fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    impl Resolve for Fake {
        fn lookup(&self, _: &PeerName) -> Lookup {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let answer = self.answer.lock().unwrap().clone();
            Box::pin(async move {
                match answer {
                    Answer::Addrs(a) => Ok(a),
                    Answer::Fail => Err(io::Error::other("no such host")),
                    Answer::Hang => std::future::pending().await,
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{Answer, Fake};
    use super::*;

    fn name(host: &str) -> PeerName {
        PeerName {
            host: host.into(),
            port: 4000,
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn found(addrs: &[&str]) -> Outcome {
        Outcome::Found(addrs.iter().map(|a| addr(a)).collect())
    }

    #[test]
    fn addresses_appear_and_disappear() {
        let mut seeds = Seeds::new(vec![name("a"), name("b")], 16, Duration::from_secs(1));
        let change = seeds.apply(vec![
            found(&["127.0.0.2:4000", "127.0.0.1:4000", "127.0.0.2:4000"]),
            found(&["127.0.0.1:4000", "[::1]:4000"]),
        ]);
        assert_eq!(
            change.appeared,
            [addr("127.0.0.1:4000"), addr("127.0.0.2:4000")]
        );
        assert!(change.gone.is_empty());
        assert_eq!(seeds.warnings(), 0);
        // The same answer again changes nothing.
        let same = seeds.apply(vec![
            found(&["127.0.0.1:4000", "127.0.0.2:4000"]),
            found(&["127.0.0.1:4000"]),
        ]);
        assert_eq!(same, Change::default());
        // One pod goes, another comes; 127.0.0.1 stays while b still gives it.
        let change = seeds.apply(vec![found(&["127.0.0.3:4000"]), found(&["127.0.0.1:4000"])]);
        assert_eq!(change.appeared, [addr("127.0.0.3:4000")]);
        assert_eq!(change.gone, [addr("127.0.0.2:4000")]);
        assert_eq!(
            seeds.addrs(),
            [addr("127.0.0.1:4000"), addr("127.0.0.3:4000")]
        );
    }

    #[test]
    fn a_failing_name_keeps_its_addresses_and_warns_once_per_change() {
        let mut seeds = Seeds::new(vec![name("a")], 16, Duration::from_secs(1));
        seeds.apply(vec![found(&["127.0.0.1:4000"])]);
        for _ in 0..3 {
            let change = seeds.apply(vec![Outcome::Failed("no such host".into())]);
            assert_eq!(change, Change::default(), "kept through a failure");
        }
        assert_eq!(seeds.warnings(), 1, "one warning for three failures");
        seeds.apply(vec![Outcome::TimedOut]);
        seeds.apply(vec![Outcome::TimedOut]);
        assert_eq!(seeds.warnings(), 2, "timing out is another state");
        assert_eq!(seeds.addrs(), [addr("127.0.0.1:4000")]);
        // Back: no warning; failing again warns again.
        seeds.apply(vec![found(&["127.0.0.1:4000"])]);
        seeds.apply(vec![Outcome::Failed("no such host".into())]);
        assert_eq!(seeds.warnings(), 3);
        // Only IPv6 (or nothing): no seed from it, warned once.
        let change = seeds.apply(vec![found(&["[::1]:4000"])]);
        assert_eq!(change.gone, [addr("127.0.0.1:4000")]);
        seeds.apply(vec![found(&[])]);
        assert_eq!(seeds.warnings(), 4);
        assert!(seeds.addrs().is_empty());
        // A name that never resolved has nothing to keep.
        let mut fresh = Seeds::new(vec![name("b")], 16, Duration::from_secs(1));
        assert_eq!(fresh.apply(vec![Outcome::TimedOut]), Change::default());
        assert!(fresh.addrs().is_empty());
    }

    #[test]
    fn addresses_are_capped_per_name_and_in_all() {
        let many: Vec<String> = (1..=10).map(|i| format!("127.0.0.{i}:4000")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let mut seeds = Seeds::new(vec![name("a"), name("b")], 4, Duration::from_secs(1));
        let change = seeds.apply(vec![found(&many), found(&many[6..])]);
        // a gives its lowest four, b its lowest four; together the lowest four of those.
        assert_eq!(seeds.addrs().len(), 4);
        assert_eq!(change.appeared, seeds.addrs());
        assert_eq!(seeds.addrs()[0], addr("127.0.0.1:4000"));
        // a over its own cap, and the 8 of both over the cap in all.
        assert_eq!(seeds.warnings(), 2);
        seeds.apply(vec![found(&many), found(&many[6..])]);
        assert_eq!(seeds.warnings(), 2, "not again while nothing changes");
    }

    #[tokio::test]
    async fn a_round_bounds_each_lookup_in_time() {
        let fake = Fake::new(Answer::Hang);
        let started = tokio::time::Instant::now();
        let outcomes = round(
            fake.clone(),
            vec![name("a"), name("b")],
            Duration::from_millis(50),
        )
        .await;
        assert_eq!(outcomes, [Outcome::TimedOut, Outcome::TimedOut]);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "lookups run at once"
        );
        fake.answer(Answer::Fail);
        let outcomes = round(fake.clone(), vec![name("a")], Duration::from_secs(1)).await;
        assert!(matches!(&outcomes[0], Outcome::Failed(r) if r.contains("no such host")));
        fake.answer(Answer::Addrs(vec![addr("127.0.0.1:4000")]));
        let outcomes = round(fake.clone(), vec![name("a")], Duration::from_secs(1)).await;
        assert_eq!(outcomes, [found(&["127.0.0.1:4000"])]);
        assert_eq!(fake.calls(), 4);
    }

    #[tokio::test]
    async fn the_system_resolver_finds_localhost_on_loopback() {
        // `localhost` comes from /etc/hosts (or the resolver's own rule): no query leaves the
        // machine. It may also give ::1; discovery keeps only the IPv4 ones.
        let addrs = SystemResolver.lookup(&name("localhost")).await.unwrap();
        assert!(
            addrs
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 4000)
        );
        let mut seeds = Seeds::new(vec![name("localhost")], 16, Duration::from_secs(1));
        seeds.apply(vec![Outcome::Found(addrs)]);
        assert_eq!(seeds.addrs(), [addr("127.0.0.1:4000")]);
    }
}
