//! `GET /metrics`: the Prometheus / OpenMetrics text of a node, parsed by a real parser
//! (the `prometheus-parse` crate; and Python's strict OpenMetrics parser,
//! `prometheus_client.openmetrics.parser`, when a Python with `prometheus_client` is found:
//! `$ZS_TEST_PROM_PYTHON`, set by `scripts/test.sh`, else `python3`), after known traffic; on
//! the operations port of a node without HTTP over real ZeroMQ and UDP; behind authentication
//! unless `ZS_METRICS_AUTH=off`. And `ZS_LOG_FORMAT=json`: a service process (this test binary
//! run again as an `App`) whose every stderr line is a JSON object.

mod http_common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use http_common::{Power, basic, client, gateway, json, owner, start};
use prometheus_parse::{Sample, Scrape, Value as PromValue};
use serde_json::{Value, json};
use zeroservices::http::{BasicAuth, HttpConfig, serve_ops};
use zeroservices::medium::MemoryCluster;
use zeroservices::prelude::*;
use zeroservices::worker::Worker;

/// What Prometheus sends in `Accept` (2.x and 3.x with the default scrape protocols).
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,\
    application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// The text of `GET {base}/metrics` asked as OpenMetrics (as Prometheus asks), checked to be
/// OpenMetrics text, and its samples.
async fn scrape(base: &str) -> (String, Scrape) {
    let response = client()
        .get(format!("{base}/metrics"))
        .header("accept", PROMETHEUS_ACCEPT)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let kind = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    let text = response.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    strict_parse(&text);
    let parsed = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    (text, parsed)
}

/// A python with `prometheus_client`, if any.
fn prom_python() -> Option<String> {
    if let Ok(python) = std::env::var("ZS_TEST_PROM_PYTHON")
        && !python.trim().is_empty()
    {
        return Some(python);
    }
    Command::new("python3")
        .args(["-c", "import prometheus_client.openmetrics.parser"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        .then(|| "python3".to_owned())
}

/// Parses `text` with Python's strict OpenMetrics parser (every family, every sample); skipped
/// with a message without one (a failure under `CI=true`).
fn strict_parse(text: &str) {
    let script = "import sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
        n = sum(len(f.samples) for f in text_string_to_metric_families(sys.stdin.read()))\n\
        print(n)\n";
    python_parse(script, text);
}

/// Runs the Python `script` on `text` (its stdin) and returns its stdout; `None` (with a
/// message, or a failure under `CI=true`) without a Python that has `prometheus_client`.
fn python_parse(script: &str, text: &str) -> Option<String> {
    let Some(python) = prom_python() else {
        let why = "no python with prometheus_client (set ZS_TEST_PROM_PYTHON, which \
                   scripts/test.sh sets, or `pip install prometheus-client==0.26.0`)";
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the Prometheus parsers are missing under CI: {why}"
        );
        eprintln!("SKIPPED: the Python Prometheus parse: {why}");
        return None;
    };
    let mut child = Command::new(&python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the parser refused the text: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(String::from_utf8(output.stdout).unwrap())
}

/// `GET {base}/metrics` with `accept` (none: no header): its content type and text.
async fn scrape_as(base: &str, accept: Option<&str>) -> (String, String) {
    let mut request = client().get(format!("{base}/metrics"));
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let kind = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (kind, response.text().await.unwrap())
}

/// Parses classic Prometheus text with Python's `prometheus_client.parser` (the 0.0.4 parser
/// Prometheus' own follows): each family's name, type and number of samples.
fn classic_parse(text: &str) -> Option<Vec<(String, String, usize)>> {
    let script = "import sys, json\n\
        from prometheus_client.parser import text_string_to_metric_families\n\
        fams = [[f.name, f.type, len(f.samples)] for f in text_string_to_metric_families(sys.stdin.read())]\n\
        print(json.dumps(fams))\n";
    let out = python_parse(script, text)?;
    Some(serde_json::from_str(&out).unwrap())
}

/// With no `Accept` (or one that prefers it), `/metrics` is the classic Prometheus text
/// (0.0.4): counters named `<name>_total` in `# TYPE`, no `# UNIT`, no `# EOF`, and the
/// Python 0.0.4 parser reads every family typed; asked as Prometheus asks, it is OpenMetrics.
/// The same samples either way. Hostile `Accept` headers get the classic text.
#[tokio::test]
async fn metrics_are_classic_text_unless_openmetrics_is_asked_for() {
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let (server, base) = start(&node, HttpConfig::new(0).metrics_auth(false)).await;
    for i in 0..3 {
        let (status, body) = json(
            client()
                .post(format!("{base}/power"))
                .json(&json!({"resource_data": {"value": i}}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }

    let (kind, classic) = scrape_as(&base, None).await;
    assert_eq!(kind, "text/plain; version=0.0.4; charset=utf-8");
    assert!(
        !classic.contains("# EOF") && !classic.contains("# UNIT"),
        "{classic}"
    );
    assert!(
        classic.contains("# TYPE zs_requests_total counter\n"),
        "{classic}"
    );
    let (kind, open) = scrape_as(&base, Some(PROMETHEUS_ACCEPT)).await;
    assert!(
        kind.starts_with("application/openmetrics-text; version=1.0.0"),
        "{kind}"
    );
    assert!(open.ends_with("# EOF\n") && open.contains("# TYPE zs_requests counter\n"));
    strict_parse(&open);

    // The same samples (the counters moved by nothing between the two scrapes but the
    // scrapes themselves, which are not requests to a collection).
    let samples = |text: &str| -> Vec<String> {
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with('#') && l.starts_with("zs_requests_total"))
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    };
    assert!(!samples(&classic).is_empty());
    assert_eq!(samples(&classic), samples(&open));

    if let Some(families) = classic_parse(&classic) {
        let untyped: Vec<_> = families
            .iter()
            .filter(|f| f.1 == "unknown" || f.1 == "untyped")
            .collect();
        assert!(
            untyped.is_empty(),
            "read as untyped: {untyped:?}\n{classic}"
        );
        let requests = families
            .iter()
            .find(|f| f.0 == "zs_requests")
            .unwrap_or_else(|| panic!("no zs_requests family: {families:?}"));
        assert_eq!(requests.1, "counter");
        assert!(requests.2 > 0);
        assert!(families.iter().any(|f| f.1 == "histogram"), "{families:?}");
        assert!(families.iter().any(|f| f.1 == "gauge"), "{families:?}");
        // The OpenMetrics text read by the classic parser would leave its counters untyped:
        // what the rewrite is for.
        let misread = classic_parse(open.trim_end_matches("# EOF\n")).unwrap();
        assert!(misread.iter().any(|f| f.1 == "untyped" || f.1 == "unknown"));
    }

    // Hostile or unusual Accept headers: the classic text, never an error.
    let huge = format!("{}application/openmetrics-text", "x,".repeat(4000));
    for accept in [
        "garbage",
        ";;;,,,",
        "application/openmetrics-text;q=0",
        "text/plain;q=1, application/openmetrics-text;q=0.2",
        huge.as_str(),
    ] {
        let (kind, text) = scrape_as(&base, Some(accept)).await;
        assert!(
            kind.starts_with("text/plain; version=0.0.4"),
            "{accept:.60}: {kind}"
        );
        assert!(!text.contains("# EOF"));
    }
    server.shutdown().await;
}

/// The value of the sample `name` whose labels include `labels` (a histogram: its count).
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    find(scrape, name, labels).map(|s| match &s.value {
        PromValue::Counter(v) | PromValue::Gauge(v) | PromValue::Untyped(v) => *v,
        PromValue::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
        PromValue::Summary(_) => f64::NAN,
    })
}

fn find<'a>(scrape: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    scrape.samples.iter().find(|s| {
        s.metric == name
            && labels
                .iter()
                .all(|(k, v)| s.labels.get(k).is_some_and(|have| have == *v))
    })
}

fn labels_of(scrape: &Scrape) -> Vec<HashMap<String, String>> {
    scrape
        .samples
        .iter()
        .map(|s| {
            // `Labels` derefs to its map.
            let map: &HashMap<String, String> = &s.labels;
            map.clone()
        })
        .collect()
}

fn power(value: i64) -> Power {
    Power {
        value,
        status: Default::default(),
        result: None,
        description: None,
    }
}

/// N creates through a gateway, an unknown collection, a made-up action: counted on the calling
/// side (the gateway) and the owning side, under bounded labels, never an id.
#[tokio::test]
async fn metrics_count_known_traffic_under_bounded_labels() {
    const N: usize = 7;
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let api = gateway(&cluster, Duration::from_secs(2)).await;
    let (api_server, api_base) = start(&api, HttpConfig::new(0).metrics_auth(false)).await;
    let (owner_server, owner_base) = start(&node, HttpConfig::new(0).metrics_auth(false)).await;
    let mut ids = Vec::new();
    for i in 0..N {
        let (status, body) = json(
            client()
                .post(format!("{api_base}/power"))
                .json(&json!({"resource_data": {"value": i}}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        ids.push(body["resource_id"].as_str().unwrap().to_owned());
    }
    let (status, _) = json(
        client()
            .get(format!("{api_base}/power/{}", ids[0]))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    // Hostile: a collection nobody declared, an id that does not exist, an action nobody
    // declared (its name is made up per request).
    let (status, _) = json(
        client()
            .get(format!("{api_base}/nosuch_collection_4711"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = json(
        client()
            .get(format!("{api_base}/power/missing-id-0815"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    let (status, body) = json(
        client()
            .post(format!("{api_base}/power/{}/made_up_action_99", ids[1]))
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(status >= 400, "{status} {body}");
    // A typed client on the gateway counts too.
    api.collection::<Power>().create(power(100)).await.unwrap();

    let (text, api_metrics) = scrape(&api_base).await;
    let caller_create = [
        ("side", "caller"),
        ("collection", "power"),
        ("action", "create"),
    ];
    let ok = value(
        &api_metrics,
        "zs_requests_total",
        &[caller_create.as_slice(), &[("outcome", "ok")]].concat(),
    )
    .unwrap_or_else(|| panic!("no caller create counter in\n{text}"));
    assert_eq!(ok, (N + 1) as f64, "{text}");
    let count = value(
        &api_metrics,
        "zs_request_duration_seconds_count",
        &caller_create,
    )
    .unwrap_or_else(|| panic!("no histogram count in\n{text}"));
    assert_eq!(count, (N + 1) as f64);
    let inf = find(&api_metrics, "zs_request_duration_seconds", &caller_create)
        .expect("the histogram's buckets");
    let PromValue::Histogram(buckets) = &inf.value else {
        panic!("not a histogram: {inf:?}")
    };
    assert!(buckets.windows(2).all(|w| w[0].count <= w[1].count));
    assert_eq!(buckets.last().unwrap().count, (N + 1) as f64);
    let sum = value(
        &api_metrics,
        "zs_request_duration_seconds_sum",
        &caller_create,
    )
    .unwrap();
    assert!(sum > 0.0 && sum < 60.0, "{sum}");
    assert_eq!(
        value(
            &api_metrics,
            "zs_requests_total",
            &[
                ("side", "caller"),
                ("collection", "other"),
                ("action", "list"),
                ("outcome", "unknown_collection"),
            ],
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &api_metrics,
            "zs_requests_total",
            &[
                ("side", "caller"),
                ("collection", "power"),
                ("action", "get"),
                ("outcome", "not_found"),
            ],
        ),
        Some(1.0),
        "{text}"
    );
    let made_up = api_metrics.samples.iter().any(|s| {
        s.metric == "zs_requests_total"
            && s.labels.get("collection") == Some("power")
            && s.labels.get("action") == Some("other")
            && s.labels.get("outcome") != Some("ok")
    });
    assert!(made_up, "the made-up action under `other`:\n{text}");
    // The gateway's own side: no owner-side series (it owns nothing).
    assert!(find(&api_metrics, "zs_requests_total", &[("side", "owner")]).is_none());
    assert!(value(&api_metrics, "zs_peers", &[]).unwrap() >= 1.0);
    assert!(value(&api_metrics, "zs_peer_joins_total", &[]).unwrap() >= 1.0);

    // No id, no made-up name in any label; only the bounded label names.
    for labels in labels_of(&api_metrics) {
        for (k, v) in &labels {
            assert!(
                [
                    "side",
                    "collection",
                    "action",
                    "outcome",
                    "le",
                    "reason",
                    "transport",
                    "operation"
                ]
                .contains(&k.as_str()),
                "label {k}"
            );
            for bad in ids.iter().map(String::as_str).chain([
                "nosuch_collection_4711",
                "missing-id-0815",
                "made_up_action_99",
            ]) {
                assert!(!v.contains(bad), "{k}={v} carries {bad}");
            }
        }
    }
    for id in &ids {
        assert!(!text.contains(id.as_str()), "{id} in the metrics");
    }

    // The owner: the owning side, the store, the events.
    let (text, owner_metrics) = scrape(&owner_base).await;
    let owner_create = [
        ("side", "owner"),
        ("collection", "power"),
        ("action", "create"),
        ("outcome", "ok"),
    ];
    assert_eq!(
        value(&owner_metrics, "zs_requests_total", &owner_create),
        Some((N + 1) as f64),
        "{text}"
    );
    assert_eq!(
        value(
            &owner_metrics,
            "zs_store_operation_duration_seconds_count",
            &[("operation", "insert")]
        ),
        Some((N + 1) as f64),
        "{text}"
    );
    assert!(value(&owner_metrics, "zs_events_published_total", &[]).unwrap() >= (N + 1) as f64);
    assert!(value(&owner_metrics, "zs_events_delivered_total", &[]).unwrap() >= (N + 1) as f64);
    for family in [
        "zs_websocket_clients",
        "zs_websocket_queued_messages",
        "zs_peer_leaves_total",
        "zs_worker_changes_handled_total",
        "zs_worker_changes_retried_total",
        "zs_worker_changes_failed_total",
        "zs_node_requests_served_total",
        "zs_node_requests_timed_out_total",
    ] {
        assert!(
            value(&owner_metrics, family, &[]).is_some(),
            "{family} in\n{text}"
        );
    }
    assert!(text.contains("# TYPE zs_events_dropped counter"), "{text}");

    api_server.shutdown().await;
    owner_server.shutdown().await;
    api.stop().await;
    node.stop().await;
}

/// A websocket client shows in the gauges while connected, and leaves them when it goes.
#[tokio::test]
async fn websocket_clients_are_a_gauge() {
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let (server, base) = start(&node, HttpConfig::new(0).metrics_auth(false)).await;
    let ws_url = format!("{}/realtime", base.replacen("http", "ws", 1));
    let (socket, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, m) = scrape(&base).await;
        if value(&m, "zs_websocket_clients", &[]) == Some(1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "the client never counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(socket);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, m) = scrape(&base).await;
        if value(&m, "zs_websocket_clients", &[]) == Some(0.0) {
            assert_eq!(value(&m, "zs_websocket_queued_messages", &[]), Some(0.0));
            break;
        }
        assert!(Instant::now() < deadline, "the client never left the gauge");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.shutdown().await;
    node.stop().await;
}

/// With authentication configured, `/metrics` asks for a user (default, `ZS_METRICS_AUTH=on`)
/// while the probes stay open; `metrics_auth(false)` opens it.
#[tokio::test]
async fn metrics_ask_for_a_user_unless_metrics_auth_is_off() {
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let auth = || HttpConfig::new(0).basic_auth(BasicAuth::new("ann", "pw"));
    let (server, base) = start(&node, auth()).await;
    let response = client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let response = client()
        .get(format!("{base}/metrics"))
        .header("authorization", basic("ann", "nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let response = client()
        .get(format!("{base}/metrics"))
        .header("authorization", basic("ann", "pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let response = client()
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    server.shutdown().await;

    let (server, base) = start(&node, auth().metrics_auth(false)).await;
    let (_, m) = scrape(&base).await;
    assert!(value(&m, "zs_peers", &[]).is_some());
    // Other methods are not the metrics.
    let response = client()
        .post(format!("{base}/metrics"))
        .header("authorization", basic("ann", "pw"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    server.shutdown().await;

    // The operations port serves them too.
    let ops = serve_ops(node.clone(), HttpConfig::new(0)).await.unwrap();
    let (_, m) = scrape(&ops.url()).await;
    assert!(
        value(&m, "zs_requests_total", &[]).is_none(),
        "no traffic yet"
    );
    assert!(value(&m, "zs_peers", &[]).is_some());
    ops.shutdown().await;
    node.stop().await;
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An app without HTTP, over real ZeroMQ and UDP discovery, serves `/metrics` on
/// `ZS_METRICS_PORT`, with its medium's and discovery's counters; garbage sent to its
/// discovery port shows as dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_without_http_serves_metrics_on_the_metrics_port() {
    let port = free_udp_port();
    let group = format!("237.252.249.227:{port}");
    let vars = [
        ("ZS_DISCOVERY_INTERFACE", "127.0.0.1".to_owned()),
        ("ZS_MULTICAST_GROUP", group),
        ("ZS_STORE", "memory".to_owned()),
        ("ZS_METRICS_PORT", "0".to_owned()),
        ("ZS_METRICS_AUTH", "off".to_owned()),
        ("ZS_HEARTBEAT_MS", "200".to_owned()),
    ];
    let lookup = move |name: &str| {
        vars.iter()
            .find(|(var, _)| *var == name)
            .map(|(_, v)| v.clone())
    };
    let configured = App::new("metrics_test")
        .resource::<Power>()
        .configure_with(["metrics_test", "--no-http"], &lookup)
        .unwrap();
    let running = configured.start().await.unwrap();
    let base = format!("http://{}", running.ops_addr().expect("ops port"));
    running
        .node()
        .collection::<Power>()
        .create(power(2))
        .await
        .unwrap();
    // Garbage to the discovery's multicast group, on loopback.
    let garbage = {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .unwrap();
        let loopback = std::net::Ipv4Addr::LOCALHOST;
        socket.set_multicast_if_v4(&loopback).unwrap();
        socket.set_multicast_ttl_v4(1).unwrap();
        socket.set_multicast_loop_v4(true).unwrap();
        socket
            .bind(&std::net::SocketAddr::from((loopback, 0)).into())
            .unwrap();
        UdpSocket::from(socket)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let m = loop {
        garbage
            .send_to(b"\x00not an announcement", ("237.252.249.227", port))
            .unwrap();
        let (_, m) = scrape(&base).await;
        let dropped = value(
            &m,
            "zs_discovery_dropped_total",
            &[("transport", "udp"), ("reason", "malformed")],
        );
        if dropped.is_some_and(|d| d >= 1.0) {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "the garbage never counted: {dropped:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(value(&m, "zs_discovery_received_total", &[("transport", "udp")]).unwrap() >= 1.0);
    for reason in ["malformed", "unsigned", "replayed", "oversized", "version"] {
        assert!(
            value(
                &m,
                "zs_medium_dropped_total",
                &[("transport", "zeromq"), ("reason", reason)]
            )
            .is_some(),
            "{reason}"
        );
    }
    assert!(value(&m, "zs_zmq_events_published_total", &[]).is_some());
    assert_eq!(
        value(
            &m,
            "zs_requests_total",
            &[
                ("side", "owner"),
                ("collection", "power"),
                ("action", "create"),
                ("outcome", "ok")
            ]
        ),
        Some(1.0)
    );
    running.shutdown().await;
}

/// The child of `a_bare_worker_opens_the_metrics_port`: an owner and a bare
/// [`Worker::start`] on an in-process cluster, with this process's environment (its
/// `ZS_METRICS_PORT`). Prints `ops <addr>` (or `ops none`), or `worker failed: <error>` and
/// exits 3; creates one resource the worker handles; stops when its stdin closes. Does nothing
/// in a normal run.
#[test]
fn worker_ops_child() {
    if std::env::var("ZS_TEST_WORKER_OPS_CHILD").is_err() {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let cluster = MemoryCluster::new();
        // The worker first: the owner's node reads the environment too.
        let started = Worker::new("ops_worker")
            .without_state()
            .poll_interval(Duration::from_secs(3600))
            .on::<Power, _, _>(query!({}), |_, _: Change<Power>| async { Ok(()) })
            .start(Node::builder("ops_worker").memory(&cluster))
            .await;
        let worker = match started {
            Ok(worker) => worker,
            Err(e) => {
                println!("worker failed: {e}");
                std::process::exit(3);
            }
        };
        let node = owner(&cluster).await;
        match worker.ops_addr() {
            Some(addr) => println!("ops {addr}"),
            None => println!("ops none"),
        }
        node.collection::<Power>().create(power(3)).await.unwrap();
        // Until the parent closes stdin.
        let _ = tokio::task::spawn_blocking(|| std::io::stdin().read_to_end(&mut Vec::new())).await;
        worker.stop().await;
        node.stop().await;
    });
}

/// Runs `worker_ops_child` with `vars`; the child and its first `ops`/`worker failed` line.
fn worker_child(vars: &[(&str, &str)]) -> (std::process::Child, String) {
    let mut command = Command::new(std::env::current_exe().unwrap());
    for (var, _) in std::env::vars() {
        if var.starts_with("ZS_") {
            command.env_remove(var);
        }
    }
    let mut child = command
        .args([
            "--exact",
            "worker_ops_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("ZS_TEST_WORKER_OPS_CHILD", "1")
        .envs(vars.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("ops ") || line.contains("worker failed") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the worker child said nothing in 20 s");
    (child, line)
}

/// Waits (at most 20 s) for `child` to exit; its exit code.
fn exit_of(mut child: std::process::Child) -> i32 {
    drop(child.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the worker child did not exit in 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A bare `Worker::start` (a worker process without HTTP) serves `/healthz`, `/readyz` and
/// `/metrics` on `ZS_METRICS_PORT`, like an `App`, and its handled changes are counted there;
/// without the variable it opens nothing; a malformed port or one in use fails the start with
/// an error naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_worker_opens_the_metrics_port() {
    let port = free_tcp_port().to_string();
    let (child, line) = worker_child(&[("ZS_METRICS_PORT", &port), ("ZS_METRICS_AUTH", "off")]);
    let addr = line
        .split("ops ")
        .nth(1)
        .unwrap_or_else(|| panic!("{line}"))
        .trim()
        .to_owned();
    assert_eq!(addr, format!("127.0.0.1:{port}"));
    let base = format!("http://{addr}");
    for probe in ["healthz", "readyz"] {
        let reply = client()
            .get(format!("{base}/{probe}"))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status().as_u16(), 200, "{probe}");
    }
    // Operations routes only.
    let reply = client().get(format!("{base}/power")).send().await.unwrap();
    assert_eq!(reply.status().as_u16(), 404);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, m) = scrape(&base).await;
        if value(&m, "zs_worker_changes_handled_total", &[]).is_some_and(|v| v >= 1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the handled change was never counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(exit_of(child), 0);

    // No variable: no port.
    let (child, line) = worker_child(&[]);
    assert!(line.contains("ops none"), "{line}");
    assert_eq!(exit_of(child), 0);

    // Hostile: not a port; a port another listener holds.
    let (child, line) = worker_child(&[("ZS_METRICS_PORT", "not-a-port")]);
    assert!(
        line.contains("worker failed") && line.contains("ZS_METRICS_PORT"),
        "{line}"
    );
    assert_eq!(exit_of(child), 3);
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (child, line) = worker_child(&[("ZS_METRICS_PORT", &port)]);
    assert!(
        line.contains("worker failed") && line.contains(&port),
        "{line}"
    );
    assert_eq!(exit_of(child), 3);
}

/// Over a real NATS server: an app without HTTP exports `NatsStats` and `NatsDiscoveryStats` on
/// its metrics port; garbage published on its request and discovery subjects is counted there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a NATS server: ZS_TEST_NATS_URL (scripts/test.sh starts one)"]
async fn over_nats_the_medium_and_discovery_counters_are_exported() {
    let url = std::env::var("ZS_TEST_NATS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .expect("ZS_TEST_NATS_URL: a NATS server (scripts/test.sh starts one)");
    let cluster = format!("zsmetrics{}", free_udp_port());
    let vars = [
        ("ZS_TRANSPORT", url.clone()),
        ("ZS_CLUSTER", cluster.clone()),
        ("ZS_STORE", "memory".to_owned()),
        ("ZS_METRICS_PORT", "0".to_owned()),
        ("ZS_METRICS_AUTH", "off".to_owned()),
        ("ZS_HEARTBEAT_MS", "200".to_owned()),
    ];
    let lookup = move |name: &str| {
        vars.iter()
            .find(|(var, _)| *var == name)
            .map(|(_, v)| v.clone())
    };
    let running = App::new("metrics_nats")
        .resource::<Power>()
        .configure_with(["metrics_nats", "--no-http"], &lookup)
        .unwrap()
        .start()
        .await
        .unwrap();
    let base = format!("http://{}", running.ops_addr().expect("ops port"));
    running
        .node()
        .collection::<Power>()
        .create(power(5))
        .await
        .unwrap();
    let raw = async_nats::connect(url.as_str()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let m = loop {
        for subject in [format!("{cluster}.req.power"), format!("{cluster}.disc")] {
            raw.publish(subject, b"{".to_vec().into()).await.unwrap();
        }
        raw.flush().await.unwrap();
        let (_, m) = scrape(&base).await;
        let medium = value(
            &m,
            "zs_medium_dropped_total",
            &[("transport", "nats"), ("reason", "malformed")],
        );
        let discovery = value(
            &m,
            "zs_discovery_dropped_total",
            &[("transport", "nats"), ("reason", "malformed")],
        );
        if medium.is_some_and(|n| n >= 1.0) && discovery.is_some_and(|n| n >= 1.0) {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "garbage not counted: medium {medium:?}, discovery {discovery:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(value(&m, "zs_nats_log_published_total", &[]).is_some());
    assert!(value(&m, "zs_discovery_received_total", &[("transport", "nats")]).unwrap() >= 1.0);
    assert!(find(&m, "zs_medium_dropped_total", &[("transport", "zeromq")]).is_none());
    assert_eq!(
        value(
            &m,
            "zs_requests_total",
            &[
                ("side", "owner"),
                ("collection", "power"),
                ("action", "create"),
                ("outcome", "ok")
            ]
        ),
        Some(1.0)
    );
    running.shutdown().await;
}

/// The child of `json_logs_are_one_object_a_line`: a service (`App::run`) with HTTP, which
/// logs inside a span of its own and serves until SIGTERM. Does nothing in a normal run.
#[test]
fn json_log_child() {
    let Ok(port) = std::env::var("ZS_TEST_JSON_LOG_CHILD") else {
        return;
    };
    let exit = App::new("json_logs")
        .resource::<Power>()
        .http(HttpConfig::new(0))
        .run_with_args(["json_logs", "--http-port", &port], |_node| async {
            let span = tracing::info_span!("setup", answer = 42, who = "json_log_child");
            span.in_scope(|| tracing::info!(detail = "inside", "set up"));
            Ok::<(), Error>(())
        });
    std::process::exit(exit.code().into());
}

/// `ZS_LOG_FORMAT=json`: every line a service writes on stderr is a JSON object with a level,
/// a timestamp and a message; a line inside a span carries the span's fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_a_line() {
    let port = free_tcp_port();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "json_log_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("ZS_TEST_JSON_LOG_CHILD", port.to_string())
        .env("ZS_LOG_FORMAT", "json")
        .env("RUST_LOG", "debug")
        .env("ZS_DISCOVERY_INTERFACE", "127.0.0.1")
        .env(
            "ZS_MULTICAST_GROUP",
            format!("237.252.249.227:{}", free_udp_port()),
        )
        .env("ZS_STORE", "memory")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines() {
            match line {
                Ok(line) => lines.push(line),
                Err(_) => break,
            }
        }
        lines
    });
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client().get(format!("{base}/readyz")).send().await
            && r.status().as_u16() == 200
        {
            break;
        }
        if Instant::now() > deadline {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("the service never became ready");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Some traffic: request log lines (debug), a failure (warn is for 5xx; a 404 at debug).
    let response = client()
        .post(format!("{base}/power"))
        .json(&json!({"resource_data": {"value": 3}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let _ = client().get(format!("{base}/nosuch")).send().await.unwrap();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the service did not stop at SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    let lines = reader.join().unwrap();
    assert!(lines.len() >= 3, "{lines:?}");
    let mut in_span = false;
    for line in &lines {
        let object: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}\nall: {lines:#?}"));
        assert!(object.is_object(), "{line}");
        for field in ["timestamp", "level", "target"] {
            assert!(object.get(field).is_some(), "{field} missing: {line}");
        }
        if object["message"] == "set up" {
            assert_eq!(object["detail"], "inside", "{line}");
            assert_eq!(object["span"]["name"], "setup", "{line}");
            assert_eq!(object["span"]["answer"], 42, "{line}");
            assert_eq!(object["spans"][0]["who"], "json_log_child", "{line}");
            in_span = true;
        }
    }
    assert!(in_span, "no line from inside the span: {lines:#?}");
    assert!(
        lines.iter().any(|l| l.contains("received SIGTERM")),
        "{lines:#?}"
    );
}

/// A bad `ZS_LOG_FORMAT` is a usage error naming the variable; `json` and `text` are taken.
#[test]
fn log_format_is_checked() {
    let with = |v: &'static str| move |name: &str| (name == "ZS_LOG_FORMAT").then(|| v.to_owned());
    let json_app = App::new("x").configure_with(["x"], &with("json")).unwrap();
    assert_eq!(json_app.log_format, zeroservices::settings::LogFormat::Json);
    let text_app = App::new("x").configure_with(["x"], &with("text")).unwrap();
    assert_eq!(text_app.log_format, zeroservices::settings::LogFormat::Text);
    let err = App::new("x")
        .configure_with(["x"], &with("xml"))
        .unwrap_err();
    assert_eq!(err.exit(), zeroservices::app::Exit::Usage);
    let text = err.to_string();
    assert!(text.contains("ZS_LOG_FORMAT"), "{text}");
    // The command checks it too, before doing anything.
    let mut child = Command::new(env!("CARGO_BIN_EXE_zeroservices"))
        .args(["nodes"])
        .env("ZS_LOG_FORMAT", "xml")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("ZS_LOG_FORMAT"), "{stderr}");
}
