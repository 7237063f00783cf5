//! The `#[service]` runtime as a process: `--help`, the precedence of flags, environment and
//! attribute, exit codes, and a clean goodbye on SIGTERM.
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
    let tests: [(&str, fn()); 7] = [
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
