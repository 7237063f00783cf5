//! Trace export as processes: a gateway (HTTP, no resources) and an owner (`power`), each the
//! test binary re-executed as an [`App`] (`ZS_OTEL_CHILD` names the role), on ZeroMQ and UDP
//! discovery on 127.0.0.1, export their spans over OTLP/HTTP to a receiver inside the test (an
//! axum server decoding OTLP protobuf with the `opentelemetry-proto` types, and OTLP JSON by
//! hand). One HTTP request with a known `traceparent` gives spans on both processes in that one
//! trace: the gateway's `http.request` is the child of the given span, the owner's `zs.serve`
//! the child of the gateway's `zs.call`. The batch delay is a minute, so what arrives was
//! flushed at shutdown (SIGTERM). Hostile `traceparent` headers are ignored; without an
//! endpoint no exporter thread runs.

use std::collections::HashMap;
use std::net::{TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use futures::StreamExt;
use prost::Message;
use serde_json::{Value, json};
use zeroservices::app::App;
use zeroservices::prelude::*;
use zeroservices::worker::Worker;

mod nats_common;

/// A power reading.
#[resource(collection = "power")]
#[derive(Debug, Clone, PartialEq)]
pub struct Power {
    /// Watts.
    pub value: i64,
}

#[actions]
impl Power {
    /// Logs a warning inside the request it serves: with `ZS_LOG_FORMAT=json` and export on,
    /// that line carries the request's trace id.
    #[action(collection)]
    async fn mark() -> Result<String> {
        tracing::warn!(marked = true, "a log line inside a served request");
        Ok("marked".to_owned())
    }
}

const CHILD: &str = "ZS_OTEL_CHILD";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";

/// The child: a gateway or an owner until SIGTERM. A no-op in the test run itself.
#[test]
fn child() {
    let Ok(role) = std::env::var(CHILD) else {
        return;
    };
    let exit = match role.as_str() {
        // The gateway listens to power events: their deliveries link to the owner's publish.
        "gateway" => App::new("otel_gateway").run_with_args(["otel_gateway"], |node| async move {
            let mut events = node.subscribe("power");
            tokio::spawn(async move {
                while let Some(event) = events.next().await {
                    println!("event {}", event.topic);
                }
            });
        }),
        // A worker process (its node apart from the app's, which carries the export): its
        // handler runs for each power change, in a span linked to the span that made it.
        "worker" => {
            App::new("otel_worker").run_with_args(["otel_worker", "--no-http"], |_| async {
                let worker = Worker::new("otel_worker")
                    .without_state()
                    .poll_interval(Duration::from_secs(3600))
                    .on::<Power, _, _>(query!({}), |_, change: Change<Power>| async move {
                        println!("handled {}", change.resource_id);
                        Ok(())
                    })
                    .start(Node::builder("otel_worker").network_from_env()?)
                    .await?;
                println!("worker started");
                // Runs until the app's signal ends this body.
                std::future::pending::<()>().await;
                drop(worker);
                Ok::<(), Error>(())
            })
        }
        _ => App::new("otel_owner")
            .resource::<Power>()
            .run_with_args(["otel_owner", "--no-http"], |_| async {}),
    };
    assert_eq!(exit.code(), 0);
}

/// A span as the receiver got it.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    start: u64,
    end: u64,
    links: Vec<(String, String)>,
}

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Got>>>,
    bodies: Arc<Mutex<HashMap<String, usize>>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn service_of_proto(
    resource: Option<&opentelemetry_proto::tonic::resource::v1::Resource>,
) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    resource
        .into_iter()
        .flat_map(|r| &r.attributes)
        .find(|kv| kv.key == "service.name")
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Any::StringValue(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

fn from_proto(body: &[u8]) -> Vec<Got> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
    let mut out = Vec::new();
    for rs in request.resource_spans {
        let service = service_of_proto(rs.resource.as_ref());
        for ss in rs.scope_spans {
            for span in ss.spans {
                out.push(Got {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    start: span.start_time_unix_nano,
                    end: span.end_time_unix_nano,
                    links: span
                        .links
                        .iter()
                        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                        .collect(),
                });
            }
        }
    }
    out
}

/// OTLP JSON (ids in hex, times as decimal strings), read by hand.
fn from_json(body: &[u8]) -> Vec<Got> {
    let request: Value = serde_json::from_slice(body).expect("OTLP JSON");
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let nanos = |v: &Value| {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .unwrap_or(0)
    };
    let mut out = Vec::new();
    for rs in request["resourceSpans"].as_array().into_iter().flatten() {
        let service = rs["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|kv| kv["key"] == "service.name")
            .map(|kv| text(&kv["value"]["stringValue"]))
            .unwrap_or_default();
        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
            for span in ss["spans"].as_array().into_iter().flatten() {
                out.push(Got {
                    service: service.clone(),
                    name: text(&span["name"]),
                    trace_id: text(&span["traceId"]).to_lowercase(),
                    span_id: text(&span["spanId"]).to_lowercase(),
                    parent: text(&span["parentSpanId"]).to_lowercase(),
                    start: nanos(&span["startTimeUnixNano"]),
                    end: nanos(&span["endTimeUnixNano"]),
                    links: span["links"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|l| (text(&l["traceId"]), text(&l["spanId"])))
                        .collect(),
                });
            }
        }
    }
    out
}

async fn traces(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> String {
    let kind = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let spans = if kind.contains("json") {
        from_json(&body)
    } else {
        from_proto(&body)
    };
    *receiver.bodies.lock().unwrap().entry(kind).or_default() += 1;
    receiver.spans.lock().unwrap().extend(spans);
    String::new()
}

/// The receiver on a free port: its address and what it got.
async fn receiver() -> (String, Receiver) {
    let state = Receiver::default();
    let app = axum::Router::new()
        .route("/v1/traces", post(traces))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), state)
}

fn free_tcp() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process, killed if still running when dropped; the lines of its stdout.
struct Proc(Child, std::sync::mpsc::Receiver<String>);

impl Proc {
    fn spawn(role: &str, group: u16, http: u16, otel: &[(&str, &str)]) -> Proc {
        let mut command = Command::new(std::env::current_exe().unwrap());
        for (var, _) in std::env::vars() {
            if var.starts_with("ZS_") || var.starts_with("OTEL_") {
                command.env_remove(var);
            }
        }
        command
            .args(["--exact", "child", "--nocapture", "--test-threads=1"])
            .env(CHILD, role)
            .env("ZS_DISCOVERY_INTERFACE", "127.0.0.1")
            .env("ZS_MULTICAST_GROUP", format!("237.252.249.229:{group}"))
            .env("ZS_HEARTBEAT_MS", "200")
            .env("ZS_PEER_TIMEOUT_MS", "3000")
            .env("ZS_HTTP_HOST", "127.0.0.1")
            .env("ZS_HTTP_PORT", http.to_string())
            .env("ZS_STORE", "memory")
            .env("RUST_LOG", "warn")
            .envs(otel.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
        let stderr: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
        // Both streams' lines, stderr echoed so a failing run still shows the child's logs.
        for (stream, echo) in [(stdout, false), (stderr, true)] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stream)
                    .lines()
                    .map_while(Result::ok)
                {
                    if echo {
                        eprintln!("{line}");
                    }
                    let _ = tx.send(line);
                }
            });
        }
        Proc(child, rx)
    }

    /// Waits (at most 10 s) for a line that `wanted` accepts.
    fn until(&self, what: &str, wanted: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.1.recv_timeout(left) {
                Ok(line) if wanted(&line) => return,
                Ok(_) => {}
                Err(_) => panic!("no line from the child in 10 s: {what}"),
            }
        }
    }

    /// Waits (at most 10 s) for a line of stdout with `prefix`.
    fn until_line(&self, prefix: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.1.recv_timeout(left) {
                // The harness's "test child ... " may start the line.
                Ok(line) if line.contains(prefix) => return,
                Ok(_) => {}
                Err(_) => panic!("no line {prefix:?} from the child in 10 s"),
            }
        }
    }

    /// The names of the process's threads.
    fn threads(&self) -> Vec<String> {
        let dir = format!("/proc/{}/task", self.0.id());
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
                    .map(|s| s.trim().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// SIGTERM, then waits (at most 20 s) for a clean exit.
    fn stop(&mut self) {
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                assert!(status.success(), "{pid} exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "{pid} did not stop in 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `GET <base>/power` until the gateway reaches the owner (200), at most 30 s.
async fn until_routed(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(reply) = http.get(format!("{base}/power")).send().await
            && reply.status() == 200
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not reach the owner in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The spans of one trace as an indented tree with durations (children under their parent,
/// in start order).
fn render(all: &[Got], trace_id: &str) -> String {
    let mut spans: Vec<&Got> = all.iter().filter(|s| s.trace_id == trace_id).collect();
    spans.sort_by_key(|s| s.start);
    let ids: Vec<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut out = format!("trace {trace_id}\n");
    fn walk(out: &mut String, spans: &[&Got], parent: &str, ids: &[&str], depth: usize) {
        for span in spans.iter().filter(|s| {
            if parent.is_empty() {
                !ids.contains(&s.parent.as_str())
            } else {
                s.parent == parent
            }
        }) {
            let micros = span.end.saturating_sub(span.start) / 1000;
            out.push_str(&format!(
                "{:indent$}{} [{}] {:.3} ms  span {}{}\n",
                "",
                span.name,
                span.service,
                micros as f64 / 1000.0,
                span.span_id,
                if depth == 0 && !span.parent.is_empty() {
                    format!(" (parent {} from traceparent)", span.parent)
                } else {
                    String::new()
                },
                indent = depth * 2
            ));
            walk(out, spans, &span.span_id, ids, depth + 1);
        }
    }
    walk(&mut out, &spans, "", &ids, 0);
    for linked in all
        .iter()
        .filter(|s| s.links.iter().any(|(t, _)| t == trace_id))
    {
        let to = &linked.links[0].1;
        let to_name = spans
            .iter()
            .find(|s| &s.span_id == to)
            .map_or("?", |s| s.name.as_str());
        out.push_str(&format!(
            "linked: {} [{}] {:.3} ms  trace {}, links to {to_name} span {to}\n",
            linked.name,
            linked.service,
            linked.end.saturating_sub(linked.start) as f64 / 1e6,
            linked.trace_id,
        ));
    }
    out
}

/// One HTTP request with a `traceparent` through a gateway, an owner and a worker process
/// (`transport`: extra settings, ZeroMQ without any): one trace on the gateway and the owner,
/// linked spans on the gateway's subscriber and on the worker.
///
/// `protocol` `None` leaves `OTEL_EXPORTER_OTLP_PROTOCOL` unset: the default is protobuf.
async fn one_trace_across_processes(protocol: Option<&str>, transport: &[(&str, &str)]) {
    let (endpoint, got) = receiver().await;
    let group = free_udp();
    let port = free_tcp();
    let otel: Vec<(&str, &str)> = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        // A minute: what arrives was flushed when the process stopped.
        ("OTEL_BSP_SCHEDULE_DELAY", "60000"),
    ]
    .into_iter()
    .chain(protocol.map(|p| ("OTEL_EXPORTER_OTLP_PROTOCOL", p)))
    .chain(transport.iter().copied())
    .collect();
    // The owner logs JSON: its lines inside a traced request carry the trace id.
    let owner_env: Vec<(&str, &str)> = otel
        .iter()
        .copied()
        .chain([("ZS_LOG_FORMAT", "json")])
        .collect();
    let mut owner = Proc::spawn("owner", group, free_tcp(), &owner_env);
    let mut gateway = Proc::spawn("gateway", group, port, &otel);
    let mut worker = Proc::spawn("worker", group, free_tcp(), &otel);
    // Started (its first poll check, of an empty collection, runs now): the create below is
    // handled as a change.
    worker.until_line("worker started");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    until_routed(&http, &base).await;
    for proc in [&owner, &gateway, &worker] {
        assert!(
            proc.threads()
                .iter()
                .any(|t| t.starts_with("OpenTelemetry")),
            "an exporter thread runs: {:?}",
            proc.threads()
        );
    }

    // Hostile trace contexts first: garbage, a huge one, a zero trace id. Each is served.
    let huge = "0".repeat(6000);
    for garbage in [
        "garbage",
        huge.as_str(),
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
    ] {
        let reply = http
            .get(format!("{base}/power"))
            .header("traceparent", garbage)
            .header("tracestate", "x".repeat(3000))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 200, "{garbage:.40}");
    }

    let traceparent = format!("00-{TRACE_ID}-{PARENT_SPAN}-01");
    let reply = http
        .post(format!("{base}/power"))
        .header("traceparent", &traceparent)
        .header("tracestate", "vendor=abc")
        .json(&json!({"resource_data": {"value": 7}}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 201, "{:?}", reply.text().await);
    let created: Value = reply.json().await.unwrap();
    let id = created["resource_id"]
        .as_str()
        .or_else(|| created["_id"].as_str())
        .unwrap_or_else(|| panic!("no id in {created}"))
        .to_owned();
    // The gateway's subscriber got the create's event (delivered in a span linked to the
    // publish), and the worker handled the change.
    gateway.until_line("event power.create.");
    worker.until_line(&format!("handled {id}"));
    // A log line inside a served request carries the request's trace id (JSON logs).
    let reply = http
        .post(format!("{base}/power/mark"))
        .header("traceparent", &traceparent)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200, "{:?}", reply.text().await);
    owner.until("a JSON log line with the trace id", |line| {
        serde_json::from_str::<Value>(line)
            .is_ok_and(|v| v["marked"] == json!(true) && v["trace_id"] == json!(TRACE_ID))
    });

    worker.stop();
    gateway.stop();
    owner.stop();

    let spans = got.spans.lock().unwrap().clone();
    let bodies = got.bodies.lock().unwrap().clone();
    let want_type = if protocol == Some("http/json") {
        "application/json"
    } else {
        "application/x-protobuf"
    };
    assert!(
        bodies.keys().all(|k| k == want_type) && !bodies.is_empty(),
        "{bodies:?}"
    );
    let in_trace: Vec<&Got> = spans.iter().filter(|s| s.trace_id == TRACE_ID).collect();
    let find = |service: &str, name: &str| {
        in_trace
            .iter()
            .find(|s| s.service == service && s.name == name)
            .unwrap_or_else(|| panic!("no {name} of {service} in {in_trace:#?}"))
    };
    let request = find("otel_gateway", "http.request");
    assert_eq!(request.parent, PARENT_SPAN, "continues the traceparent");
    let call = find("otel_gateway", "zs.call");
    assert_eq!(call.parent, request.span_id);
    let serve = find("otel_owner", "zs.serve");
    assert_eq!(serve.parent, call.span_id, "the owner continues the call");
    let store = find("otel_owner", "zs.store");
    assert_eq!(store.parent, serve.span_id);
    assert!(request.start <= call.start && call.end <= request.end);
    // The create's event: published on the owner in the trace, delivered on the gateway in a
    // trace of its own that links to the publish.
    let publish = find("otel_owner", "zs.publish");
    let deliver = spans
        .iter()
        .find(|s| s.service == "otel_gateway" && s.name == "zs.deliver" && !s.links.is_empty())
        .unwrap_or_else(|| panic!("no linked zs.deliver on the gateway: {spans:#?}"));
    assert_eq!(
        deliver.links,
        vec![(TRACE_ID.to_owned(), publish.span_id.clone())]
    );
    assert_ne!(deliver.trace_id, TRACE_ID, "a link, not a parent");
    // The worker's handler ran in a trace of its own, linked to the owner's span that made the
    // change (its context kept with the change-log entry).
    let handled = spans
        .iter()
        .find(|s| s.service == "otel_worker" && s.name == "zs.worker")
        .unwrap_or_else(|| panic!("no zs.worker span of the worker: {spans:#?}"));
    assert_ne!(handled.trace_id, TRACE_ID, "a link, not a parent");
    let [(linked_trace, linked_span)] = handled.links.as_slice() else {
        panic!("the worker's span has one link: {handled:#?}");
    };
    assert_eq!(linked_trace, TRACE_ID, "linked to the request's trace");
    let maker = in_trace
        .iter()
        .find(|s| &s.span_id == linked_span)
        .unwrap_or_else(|| panic!("the link names no span of the trace: {handled:#?}"));
    assert_eq!(maker.service, "otel_owner", "{maker:#?}");
    assert!(
        ["zs.serve", "zs.store"].contains(&maker.name.as_str()),
        "{maker:#?}"
    );
    // The garbage contexts were not continued: every other span is in a trace of its own.
    for span in &spans {
        assert!(
            span.trace_id != "00000000000000000000000000000000"
                && span.trace_id != TRACE_ID.to_uppercase(),
            "{span:?}"
        );
    }
    let others: Vec<&Got> = spans
        .iter()
        .filter(|s| s.name == "http.request" && s.trace_id != TRACE_ID)
        .collect();
    assert!(others.len() >= 4, "the garbage requests were traced anew");
    assert!(others.iter().all(|s| s.parent.is_empty()), "{others:#?}");
    println!(
        "{}:\n{}",
        protocol.unwrap_or("default (protobuf)"),
        render(&spans, TRACE_ID)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_across_two_processes_over_otlp_protobuf() {
    // No protocol variable: protobuf is the default.
    one_trace_across_processes(None, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_across_two_processes_over_otlp_json() {
    one_trace_across_processes(Some("http/json"), &[]).await;
}

/// The same over NATS (a `nats-server` of the test's own, with JetStream): the context crosses
/// in the NATS payloads' envelopes, and the worker consumes the JetStream change-log stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server (ZS_TEST_NATS_SERVER); scripts/test.sh installs it"]
async fn one_trace_across_processes_over_nats() {
    let bin = nats_common::nats_server_bin("one_trace_across_processes_over_nats");
    let server = nats_common::OwnServer::start(&bin, true);
    let url = server.url();
    let cluster = nats_common::fresh_cluster();
    one_trace_across_processes(
        Some("http/protobuf"),
        &[("ZS_TRANSPORT", &url), ("ZS_CLUSTER", &cluster)],
    )
    .await;
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_nothing_is_exported_and_no_exporter_runs() {
    let (_endpoint, got) = receiver().await;
    let group = free_udp();
    let port = free_tcp();
    let mut owner = Proc::spawn("owner", group, free_tcp(), &[]);
    let mut gateway = Proc::spawn("gateway", group, port, &[("OTEL_SERVICE_NAME", "x")]);
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    until_routed(&http, &base).await;
    let reply = http
        .post(format!("{base}/power"))
        .header("traceparent", format!("00-{TRACE_ID}-{PARENT_SPAN}-01"))
        .json(&json!({"resource_data": {"value": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 201);
    for proc in [&owner, &gateway] {
        let threads = proc.threads();
        assert!(!threads.is_empty());
        assert!(
            !threads.iter().any(|t| t.starts_with("OpenTelemetry")),
            "{threads:?}"
        );
    }
    gateway.stop();
    owner.stop();
    assert!(got.spans.lock().unwrap().is_empty());
}
