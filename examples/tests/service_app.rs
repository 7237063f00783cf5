//! The `#[service]` runtime as a process: `--help`, the precedence of flags, environment and
//! attribute, exit codes, a clean goodbye on SIGTERM, and the closed-by-default cluster (loopback
//! without a key, a refused open interface, the key from a file).
//!
//! This test binary is its own child: it has no libtest harness (`harness = false`), and when
//! `ZS_TEST_SERVICE_CHILD` is set its `main` is the `#[service]` main of an `api_power`-like
//! service (the `power` resource, HTTP on 5001 in the attribute), run with the arguments the
//! parent gives. Every child gets `ZS_DISCOVERY_INTERFACE=127.0.0.1`, a multicast group on a
//! free port and the memory store; the `ZS_*` variables of the parent are removed first.
//!
//! Run: `cargo test -p zeroservices-examples --test service_app [-- NAME_FILTER]`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use zeroservices::config::NetworkConfig;
use zeroservices::discovery::LeaveReason;
use zeroservices::security::ClusterKey;
use zeroservices::{Node, NodeInfo};

const CHILD: &str = "ZS_TEST_SERVICE_CHILD";
const FAIL_BODY: &str = "ZS_TEST_FAIL_BODY";

/// The child: `api_power` with a body that can be told to fail.
mod api_power {
    use zeroservices::prelude::*;
    use zeroservices_examples::power::Power;

    /// power_service for the tests.
    #[service(
        name = "power_service",
        resources(Power),
        http(port = 5001, allowed_origins = "*")
    )]
    pub async fn main(node: Node) -> Result<()> {
        if std::env::var_os(super::FAIL_BODY).is_some() {
            return Err(Error::failed(format!("{} asked to fail", node.name())));
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    if std::env::var_os(CHILD).is_some() {
        return api_power::main();
    }
    let tests: [(&str, fn()); 10] = [
        (
            "help_lists_every_flag_and_variable",
            help_lists_every_flag_and_variable,
        ),
        ("version_is_the_crate_version", version_is_the_crate_version),
        (
            "env_overrides_the_attribute_port",
            env_overrides_the_attribute_port,
        ),
        ("flag_overrides_the_env", flag_overrides_the_env),
        ("bad_settings_exit_with_2", bad_settings_exit_with_2),
        ("failing_body_exits_with_1", failing_body_exits_with_1),
        (
            "sigterm_says_goodbye_and_exits_0",
            sigterm_says_goodbye_and_exits_0,
        ),
        (
            "without_a_key_it_listens_on_loopback_only",
            without_a_key_it_listens_on_loopback_only,
        ),
        (
            "an_open_interface_without_a_key_exits_2",
            an_open_interface_without_a_key_exits_2,
        ),
        (
            "the_cluster_key_from_a_file_is_not_in_cmdline",
            the_cluster_key_from_a_file_is_not_in_cmdline,
        ),
    ];
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    let mut failed = Vec::new();
    for (name, test) in tests {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let started = Instant::now();
        let ok = std::panic::catch_unwind(test).is_ok();
        let verdict = if ok { "ok" } else { "FAILED" };
        println!("test {name} ... {verdict} ({:.1?})", started.elapsed());
        if !ok {
            failed.push(name);
        }
    }
    if failed.is_empty() {
        println!("service_app: all tests passed");
        ExitCode::SUCCESS
    } else {
        println!("service_app: failed: {failed:?}");
        ExitCode::FAILURE
    }
}

fn free_tcp_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    listener.local_addr().unwrap().port()
}

fn free_udp_port() -> u16 {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    socket.local_addr().unwrap().port()
}

/// A multicast group of the original address on a free port: a cluster of its own.
fn test_group() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(237, 252, 249, 227), free_udp_port())
}

/// The child process, loopback-only, with these extra variables and arguments.
fn child(group: SocketAddrV4, env: &[(&str, String)], args: &[&str]) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    for (name, _) in std::env::vars() {
        if name.starts_with("ZS_") || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    command
        .env(CHILD, "1")
        .env("ZS_DISCOVERY_INTERFACE", "127.0.0.1")
        .env("ZS_MULTICAST_GROUP", group.to_string())
        .env("ZS_STORE", "memory")
        .env("RUST_LOG", "info")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    command
}

/// Runs a child to its end: (exit code, stdout, stderr).
fn output(mut command: Command) -> (i32, String, String) {
    let out = command.output().unwrap();
    (
        out.status.code().expect("exited by a signal"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running child whose stderr (the log) is read line by line.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Running {
    fn spawn(mut command: Command) -> Self {
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// Waits for a log line containing `needle`.
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        self.kill();
        panic!(
            "no log line with {needle:?}; the log:\n{}",
            self.log.join("\n")
        );
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the exit, at most 20 s; its code.
    fn wait(&mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().expect("exited by a signal");
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "the service did not exit; the log:\n{}",
                    self.log.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and the exit code.
    fn stop(&mut self) -> i32 {
        self.signal("-TERM");
        self.wait()
    }
}

/// `GET path` over HTTP/1.0 on loopback: the whole response.
fn http_get(port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

fn help_lists_every_flag_and_variable() {
    let (code, stdout, _) = output(child(test_group(), &[], &["--help"]));
    assert_eq!(code, 0);
    assert!(stdout.contains("power_service for the tests."), "{stdout}");
    for (flag, var) in [
        ("--http-port", Some("ZS_HTTP_PORT")),
        ("--http-host", Some("ZS_HTTP_HOST")),
        ("--allowed-origins", Some("ZS_ALLOWED_ORIGINS")),
        ("--basic-auth", Some("ZS_BASIC_AUTH")),
        ("--no-http", None),
        ("--store", Some("ZS_STORE")),
        ("--discovery-interface", Some("ZS_DISCOVERY_INTERFACE")),
        ("--multicast-group", Some("ZS_MULTICAST_GROUP")),
        ("--peers", Some("ZS_PEERS")),
        ("--cluster-key", Some("ZS_CLUSTER_KEY")),
        ("--cluster-key-file", Some("ZS_CLUSTER_KEY_FILE")),
        ("--insecure", Some("ZS_INSECURE")),
        ("--request-timeout-ms", Some("ZS_REQUEST_TIMEOUT_MS")),
        ("--version", None),
    ] {
        let line = stdout
            .lines()
            .find(|line| line.trim_start().starts_with(flag) || line.contains(&format!(" {flag}")))
            .unwrap_or_else(|| panic!("{flag} missing from --help:\n{stdout}"));
        if let Some(var) = var {
            assert!(
                line.contains(&format!("[env: {var}")),
                "{flag} does not name {var}: {line}"
            );
        }
    }
    assert!(stdout.contains("RUST_LOG"), "{stdout}");
}

fn version_is_the_crate_version() {
    let (code, stdout, _) = output(child(test_group(), &[], &["--version"]));
    assert_eq!(code, 0);
    assert_eq!(
        stdout.trim(),
        format!("power_service {}", env!("CARGO_PKG_VERSION"))
    );
}

/// `ZS_HTTP_PORT` moves the service off the attribute's 5001.
fn env_overrides_the_attribute_port() {
    let port = free_tcp_port();
    let mut service = Running::spawn(child(
        test_group(),
        &[("ZS_HTTP_PORT", port.to_string())],
        &[],
    ));
    service.wait_for(&format!("HTTP on http://127.0.0.1:{port}/"));
    service.wait_for("serving");
    let response = http_get(port, "/");
    assert!(
        response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"),
        "{response}"
    );
    assert!(response.contains("power"), "{response}");
    assert_eq!(service.stop(), 0);
}

/// `--http-port` wins over `ZS_HTTP_PORT`.
fn flag_overrides_the_env() {
    let (env_port, flag_port) = (free_tcp_port(), free_tcp_port());
    let mut service = Running::spawn(child(
        test_group(),
        &[("ZS_HTTP_PORT", env_port.to_string())],
        &["--http-port", &flag_port.to_string()],
    ));
    service.wait_for(&format!("HTTP on http://127.0.0.1:{flag_port}/"));
    service.wait_for("serving");
    assert_eq!(service.stop(), 0);
}

fn bad_settings_exit_with_2() {
    let (code, _, stderr) = output(child(test_group(), &[], &["--http-port", "http"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--http-port"), "{stderr}");

    let (code, _, stderr) = output(child(
        test_group(),
        &[("ZS_MULTICAST_GROUP", "127.0.0.1:4000".into())],
        &[],
    ));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("multicast"), "{stderr}");

    let (code, _, stderr) = output(child(
        test_group(),
        &[("ZS_BASIC_AUTH", "no-colon".into())],
        &[],
    ));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("ZS_BASIC_AUTH"), "{stderr}");

    let (code, _, stderr) = output(child(test_group(), &[], &["--unknown"]));
    assert_eq!(code, 2, "{stderr}");
}

fn failing_body_exits_with_1() {
    let mut command = child(
        test_group(),
        &[(FAIL_BODY, "1".into())],
        &["--http-port", "0"],
    );
    command.stdout(Stdio::null());
    let (code, _, stderr) = output(command);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("power_service asked to fail"), "{stderr}");
    assert!(stderr.contains("said goodbye"), "{stderr}");
}

/// SIGTERM: exit code 0, and a peer on the same group hears the goodbye (not a timeout).
fn sigterm_says_goodbye_and_exits_0() {
    let group = test_group();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (joined_tx, joined) = mpsc::channel::<NodeInfo>();
    let (left_tx, left) = mpsc::channel::<(NodeInfo, LeaveReason)>();
    let observer: Node = runtime
        .block_on(
            Node::builder("observer")
                .network(NetworkConfig {
                    interface: Ipv4Addr::LOCALHOST,
                    multicast_group: group,
                    ..NetworkConfig::default()
                })
                .on_peer_join(move |info| {
                    let _ = joined_tx.send(info.clone());
                })
                .on_peer_leave(move |info, reason| {
                    let _ = left_tx.send((info.clone(), reason));
                })
                .start(),
        )
        .unwrap();

    let mut service = Running::spawn(child(group, &[], &["--http-port", "0"]));
    service.wait_for("serving");
    let peer = loop {
        let info = joined
            .recv_timeout(Duration::from_secs(10))
            .expect("the observer never saw power_service join");
        if info.name == "power_service" {
            break info;
        }
    };
    assert_eq!(service.stop(), 0, "the log:\n{}", service.log.join("\n"));
    let (info, reason) = left
        .recv_timeout(Duration::from_secs(3))
        .expect("the observer did not hear power_service leave");
    assert_eq!(info.id, peer.id);
    assert_eq!(reason, LeaveReason::Goodbye);
    runtime.block_on(observer.stop());
}

/// An observer node on `group` (loopback) with this key: the peers it sees join, by channel.
fn observer(
    runtime: &tokio::runtime::Runtime,
    group: SocketAddrV4,
    key: Option<&str>,
) -> (Node, mpsc::Receiver<NodeInfo>) {
    let (joined_tx, joined) = mpsc::channel::<NodeInfo>();
    let node = runtime
        .block_on(
            Node::builder("observer")
                .network(NetworkConfig {
                    interface: Ipv4Addr::LOCALHOST,
                    multicast_group: group,
                    cluster_key: key.map(ClusterKey::new),
                    ..NetworkConfig::default()
                })
                .on_peer_join(move |info| {
                    let _ = joined_tx.send(info.clone());
                })
                .start(),
        )
        .unwrap();
    (node, joined)
}

/// Waits (10 s at most) for `power_service` to join.
fn wait_for_service(joined: &mpsc::Receiver<NodeInfo>, log: &[String]) -> NodeInfo {
    loop {
        let info = joined
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| {
                panic!(
                    "the observer never saw power_service join; its log:\n{}",
                    log.join("\n")
                )
            });
        if info.name == "power_service" {
            return info;
        }
    }
}

/// The local addresses (`/proc/net/{tcp,udp}` hex, `0100007F:1F91`) of the sockets the
/// process `pid` holds: TCP listening ones and UDP ones.
fn listening_sockets(pid: u32) -> Vec<(String, String)> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
                .map(str::to_owned)
        })
        .collect();
    let mut found = Vec::new();
    for (table, listen_only) in [("tcp", true), ("udp", false)] {
        let text = std::fs::read_to_string(format!("/proc/net/{table}")).unwrap();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            let (local, state, inode) = (cols[1], cols[3], cols[9]);
            if inodes.iter().any(|i| i == inode) && (!listen_only || state == "0A") {
                found.push((table.to_owned(), local.to_owned()));
            }
        }
    }
    found
}

/// `/proc/net` hex of an IPv4 address (little-endian on the machines this runs on).
fn proc_hex(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("{d:02X}{c:02X}{b:02X}{a:02X}")
}

/// No key and no interface: the ROUTER, PUB, HTTP and discovery sockets are all on 127.0.0.1
/// (the group socket is bound to the group address, joined on loopback), nothing on 0.0.0.0;
/// a peer on loopback sees it.
fn without_a_key_it_listens_on_loopback_only() {
    let group = test_group();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (observer, joined) = observer(&runtime, group, None);
    let mut command = child(group, &[], &["--http-port", "0"]);
    command.env_remove("ZS_DISCOVERY_INTERFACE");
    let mut service = Running::spawn(command);
    service.wait_for("serving");
    let info = wait_for_service(&joined, &service.log);
    assert!(!info.insecure);
    for (name, endpoint) in &info.endpoints {
        assert!(
            endpoint.starts_with("tcp://127.0.0.1:"),
            "{name} announced at {endpoint}"
        );
    }
    let sockets = listening_sockets(service.child.id());
    let loopback = proc_hex(Ipv4Addr::LOCALHOST);
    let group_ip = proc_hex(*group.ip());
    let tcp = sockets.iter().filter(|(t, _)| t == "tcp").count();
    let udp = sockets.iter().filter(|(t, _)| t == "udp").count();
    // ROUTER, PUB and HTTP; the unicast and the group socket.
    assert!(tcp >= 3 && udp >= 2, "{sockets:?}");
    for (table, local) in &sockets {
        let ip = local.split(':').next().unwrap();
        assert!(
            ip == loopback || (table == "udp" && ip == group_ip),
            "a {table} socket on {local} (not loopback): {sockets:?}"
        );
    }
    assert_eq!(service.stop(), 0);
    runtime.block_on(observer.stop());
}

/// Another interface without a key: exit 2 before anything is bound, the message naming the
/// key and the way around it. A key file that cannot be read, or a key given twice: exit 2 too.
fn an_open_interface_without_a_key_exits_2() {
    // A documentation address (TEST-NET-1): refused before any socket exists.
    for (env, args) in [
        (
            vec![("ZS_DISCOVERY_INTERFACE", "192.0.2.1".to_owned())],
            vec![],
        ),
        (vec![], vec!["--discovery-interface", "0.0.0.0"]),
    ] {
        let (code, _, stderr) = output(child(test_group(), &env, &args));
        assert_eq!(code, 2, "{stderr}");
        for name in ["ZS_DISCOVERY_INTERFACE", "ZS_CLUSTER_KEY", "ZS_INSECURE"] {
            assert!(stderr.contains(name), "{name} missing from: {stderr}");
        }
        assert!(!stderr.contains("node started"), "{stderr}");
    }
    let missing = std::env::temp_dir().join(format!("zs-no-such-key-{}", std::process::id()));
    let missing = missing.to_str().unwrap();
    let (code, _, stderr) = output(child(test_group(), &[], &["--cluster-key-file", missing]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("ZS_CLUSTER_KEY_FILE"), "{stderr}");
    let key = KeyFile::new("twice");
    let (code, _, stderr) = output(child(
        test_group(),
        &[("ZS_CLUSTER_KEY", "other".into())],
        &["--cluster-key-file", key.path()],
    ));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("ZS_CLUSTER_KEY_FILE"), "{stderr}");
}

/// A key file that is removed when dropped.
struct KeyFile(std::path::PathBuf);

impl KeyFile {
    fn new(key: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "zs-cluster-key-{}-{}",
            std::process::id(),
            free_udp_port()
        ));
        std::fs::write(&path, format!("{key}\n")).unwrap();
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `--cluster-key-file`: the node holds the key (a peer with the same key sees it, one without
/// does not) and the key is nowhere in `/proc/<pid>/cmdline`; `--cluster-key` is warned about.
fn the_cluster_key_from_a_file_is_not_in_cmdline() {
    let secret = format!("zs-secret-{}", free_udp_port());
    let key = KeyFile::new(&secret);
    let group = test_group();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (keyed, joined) = observer(&runtime, group, Some(&secret));
    let (keyless, keyless_joined) = observer(&runtime, group, None);
    let mut service = Running::spawn(child(
        group,
        &[],
        &["--http-port", "0", "--cluster-key-file", key.path()],
    ));
    service.wait_for("serving");
    let info = wait_for_service(&joined, &service.log);
    assert!(!info.insecure);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", service.child.id())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(cmdline.contains("--cluster-key-file"), "{cmdline}");
    assert!(!cmdline.contains(&secret), "the key shows in {cmdline:?}");
    assert!(
        !service.log.iter().any(|l| l.contains("`ps`")),
        "{:?}",
        service.log
    );
    // The keyless observer heard nothing it accepted from the keyed service.
    assert!(
        keyless_joined
            .try_iter()
            .all(|peer| peer.name != "power_service"),
        "a node without the key saw the keyed service"
    );
    assert_eq!(service.stop(), 0);

    // The plain flag works, and says it shows in `ps`.
    let mut flagged = Running::spawn(child(
        group,
        &[],
        &["--http-port", "0", "--cluster-key", &secret],
    ));
    flagged.wait_for("shows in `ps`");
    flagged.wait_for("serving");
    assert_eq!(flagged.stop(), 0);
    runtime.block_on(async {
        keyed.stop().await;
        keyless.stop().await;
    });
}
