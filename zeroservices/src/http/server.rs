//! The accept loop of [`serve`](super::serve): HTTP/1.1 connections with a header-read timeout,
//! an idle keep-alive timeout and a cap on open connections, so that slow or idle clients never
//! stall the others.
//!
//! Every connection is in one of three phases, and a watchdog next to it closes it when its
//! phase lasts too long. The watchdog is a timer on the connection's own task; requests never
//! wake it (a wake-up and a fresh timer per request cost a sixth of the GET throughput): it
//! checks the phase when its timer fires, and sleeps at most half the smaller timeout at a time,
//! so a phase that began while it slept (an idle connection after a response, the next request's
//! head) is timed from its real start and closed at most that late (5 s with the defaults).
//!
//! | phase | from | closed after |
//! |---|---|---|
//! | head | accept, or the first byte of the next request | `header_timeout` |
//! | busy | headers complete, until the response body is written | never (handlers and websockets take their time), but a request body that stops arriving for `header_timeout` while it is read |
//! | idle | the last response written (keep-alive) | `idle_timeout` |
//!
//! At the connection cap the loop stops accepting: new connections wait in the listen backlog
//! (the kernel completes their handshake) and are served as soon as an open one closes. Each
//! time the cap is reached it is logged (warn), with how many times that happened so far.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::http::{Request, Response};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::Service as HyperService;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The connection limits of a server, from [`HttpConfig`](super::HttpConfig).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) header_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_connections: usize,
}

/// Accepts connections until `stop` turns `true` (or its sender is dropped), then waits for the
/// open ones: connections without a request in flight (idle, or still sending headers) are
/// closed at once, in-flight requests finish. Aborting the task running this drops every
/// connection.
pub(crate) async fn run(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let addr = listener.local_addr().ok();
    let max = limits.max_connections.max(1);
    let slots = Arc::new(Semaphore::new(max));
    let service = TowerToHyperService::new(app);
    let mut connections = JoinSet::new();
    let mut times_full: u64 = 0;
    let mut slot: Option<OwnedSemaphorePermit> = None;
    loop {
        if slot.is_none() {
            slot = match Arc::clone(&slots).try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    times_full += 1;
                    tracing::warn!(
                        ?addr,
                        max_connections = max,
                        times_full,
                        "http connection cap reached (ZS_HTTP_MAX_CONNECTIONS): new connections \
                         wait until an open one closes"
                    );
                    let since = Instant::now();
                    let permit = loop {
                        tokio::select! {
                            biased;
                            _ = stop.wait_for(|stop| *stop) => break None,
                            Some(_) = connections.join_next() => {}
                            permit = Arc::clone(&slots).acquire_owned() => break permit.ok(),
                        }
                    };
                    let Some(permit) = permit else { break };
                    tracing::info!(
                        ?addr,
                        waited_ms = since.elapsed().as_millis() as u64,
                        "http connections below the cap again; accepting"
                    );
                    Some(permit)
                }
            };
        }
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => break,
            Some(_) = connections.join_next() => continue,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _remote)) => tcp,
            Err(e) => {
                // Out of file descriptors and the like: back off a little, keep serving the
                // open connections.
                tracing::warn!(?addr, error = %e, "http accept failed");
                tokio::select! {
                    _ = stop.wait_for(|stop| *stop) => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let Some(permit) = slot.take() else { continue };
        connections.spawn(serve_connection(
            tcp,
            permit,
            service.clone(),
            limits,
            stop.clone(),
        ));
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// Serves one connection until it ends, times out, or the server stops.
async fn serve_connection(
    tcp: TcpStream,
    permit: OwnedSemaphorePermit,
    service: TowerToHyperService<Router>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let state = Arc::new(ConnState {
        phase: Mutex::new(Phase::Head(Instant::now())),
        body: Mutex::new(None),
    });
    // The longest the watchdog sleeps: a phase it did not see begin is noticed this late.
    let nap = (limits.header_timeout.min(limits.idle_timeout) / 2).max(Duration::from_millis(1));
    // The slot is held by the socket: an upgraded connection (a websocket) keeps it until the
    // websocket closes.
    let io = TokioIo::new(TrackedIo {
        inner: tcp,
        state: Arc::clone(&state),
        _slot: permit,
    });
    let service = Tracked {
        inner: service,
        state: Arc::clone(&state),
    };
    let mut builder = http1::Builder::new();
    // Our own watchdog times the headers (hyper's timer would also cut idle keep-alive).
    builder.header_read_timeout(None);
    let mut conn = pin!(builder.serve_connection(io, service).with_upgrades());
    let mut stopping = false;
    // Made once and polled in place: a connection's task is woken several times per request,
    // and every wake polls every branch.
    let mut stopped = pin!(stop.wait_for(|stop| *stop));
    let mut timer = pin!(tokio::time::sleep(nap));
    loop {
        let next = Instant::now() + nap;
        let wake = match state.deadline(&limits) {
            Some((at, _)) => at.min(next),
            None => next,
        };
        timer.as_mut().reset(wake);
        tokio::select! {
            biased;
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "http connection ended with an error");
                }
                return;
            }
            _ = timer.as_mut() => {
                if let Some((at, why)) = state.deadline(&limits)
                    && Instant::now() >= at
                {
                    tracing::debug!(timeout = why, "closing an http connection");
                    return;
                }
            }
            _ = stopped.as_mut(), if !stopping => {
                stopping = true;
                // No request in flight yet (a fresh or half-sent one): nothing to finish, and
                // hyper's graceful shutdown would wait for that request.
                if matches!(*state.phase(), Phase::Head(_)) {
                    return;
                }
                // Idle: closed once its last response is flushed; busy: after the response.
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Where a connection is; see the module documentation.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Reading a request head since then.
    Head(Instant),
    /// This many requests in flight.
    Busy(usize),
    /// Waiting for the next request since then.
    Idle(Instant),
}

struct ConnState {
    phase: Mutex<Phase>,
    /// While a request body is being read: when its last bytes arrived.
    body: Mutex<Option<Instant>>,
}

impl ConnState {
    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn deadline(&self, limits: &Limits) -> Option<(Instant, &'static str)> {
        let phase = *self.phase();
        match phase {
            Phase::Head(since) => Some((since + limits.header_timeout, "header")),
            Phase::Idle(since) => Some((since + limits.idle_timeout, "idle")),
            Phase::Busy(_) => {
                let body = *self.body.lock().unwrap_or_else(|e| e.into_inner());
                body.map(|last| (last + limits.header_timeout, "request body"))
            }
        }
    }

    /// A request body is being read and bytes arrived now (`true`), or it is done (`false`).
    fn body_progress(&self, reading: bool) {
        let mut body = self.body.lock().unwrap_or_else(|e| e.into_inner());
        *body = reading.then(Instant::now);
    }

    /// Bytes arrived: an idle connection starts reading a request head.
    fn read(&self) {
        let mut phase = self.phase();
        if let Phase::Idle(_) = *phase {
            *phase = Phase::Head(Instant::now());
        }
    }

    fn begin(self: &Arc<Self>) -> BusyGuard {
        let mut phase = self.phase();
        *phase = match *phase {
            Phase::Busy(n) => Phase::Busy(n + 1),
            _ => Phase::Busy(1),
        };
        BusyGuard(Arc::clone(self))
    }
}

/// A request in flight: from its headers to the end of its response body.
struct BusyGuard(Arc<ConnState>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let mut phase = self.0.phase();
        match *phase {
            Phase::Busy(n) if n > 1 => *phase = Phase::Busy(n - 1),
            _ => *phase = Phase::Idle(Instant::now()),
        }
    }
}

/// The socket, telling the watchdog when bytes arrive.
struct TrackedIo {
    inner: TcpStream,
    state: Arc<ConnState>,
    _slot: OwnedSemaphorePermit,
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.state.read();
        }
        polled
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The router, marking the connection busy from a request's headers to its response's end.
#[derive(Clone)]
struct Tracked {
    inner: TowerToHyperService<Router>,
    state: Arc<ConnState>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl HyperService<Request<Incoming>> for Tracked {
    type Response = Response<GuardedBody>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let guard = self.state.begin();
        let state = Arc::clone(&self.state);
        let request = request.map(|inner| TrackedBody {
            inner,
            state,
            reading: false,
        });
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|inner| GuardedBody {
                inner,
                _guard: guard,
            }))
        })
    }
}

/// A request body telling the watchdog how its reading goes: from its first poll until its end
/// (or until it is dropped), a pause of `header_timeout` closes the connection.
struct TrackedBody {
    inner: Incoming,
    state: Arc<ConnState>,
    reading: bool,
}

impl TrackedBody {
    fn set_reading(&mut self, reading: bool) {
        if reading || self.reading {
            self.state.body_progress(reading);
        }
        self.reading = reading;
    }
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) => {
                let more = !this.inner.is_end_stream();
                this.set_reading(more);
            }
            Poll::Ready(None | Some(Err(_))) => this.set_reading(false),
            Poll::Pending if !this.reading => this.set_reading(true),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        self.set_reading(false);
    }
}

/// A response body that keeps its request in flight until it is written (or dropped).
struct GuardedBody {
    inner: Body,
    _guard: BusyGuard,
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
