use std::collections::HashMap;

use super::*;

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |name| map.get(name).cloned()
}

fn from(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
    Settings::from_lookup(&env(pairs))
}

/// One good value of every variable, and what it sets.
#[test]
fn every_variable_is_read() {
    let s = from(&[
        ("ZS_HTTP_PORT", "6001"),
        ("ZS_HTTP_HOST", "0.0.0.0"),
        ("ZS_ALLOWED_ORIGINS", "http://a.example, http://b.example,"),
        ("ZS_BASIC_AUTH", "ann:pw"),
        ("ZS_MAX_BODY_BYTES", "2048"),
        ("ZS_HTTP_HEADER_TIMEOUT_MS", "1500"),
        ("ZS_HTTP_IDLE_TIMEOUT_MS", " 2500 "),
        ("ZS_HTTP_MAX_CONNECTIONS", "10"),
        ("ZS_WS_MAX_MESSAGE_BYTES", "4096"),
        ("ZS_WS_MAX_TOPICS", "3"),
        ("ZS_WS_MAX_CLIENTS", "2"),
        ("ZS_WS_MAX_LAG", "700"),
        ("ZS_STORE", "embedded:/tmp/zs"),
        ("ZS_STORE_BATCH_MAX", "16"),
        ("ZS_DISCOVERY_INTERFACE", "127.0.0.1"),
        ("ZS_MULTICAST_GROUP", "239.1.2.3:4000"),
        ("ZS_MULTICAST", "off"),
        (
            "ZS_PEERS",
            "127.0.0.1:4001,127.0.0.1:4002,seeds.zs.svc:4003",
        ),
        ("ZS_PEERS_RESOLVE_MS", "1500"),
        ("ZS_DISCOVERY_PORT", "4100"),
        ("ZS_CLUSTER_KEY", "k"),
        ("ZS_REQUEST_TIMEOUT_MS", "250"),
        ("ZS_HEARTBEAT_MS", "100"),
        ("ZS_PEER_TIMEOUT_MS", "700"),
        ("ZS_MAX_MESSAGE_BYTES", "65536"),
        ("ZS_MAX_PEERS", "8"),
        ("ZS_MAX_SUBSCRIBER_QUEUE", "500"),
        ("ZS_MAX_DEPTH", "8"),
        ("ZS_MAX_DOCUMENT_BYTES", "4096"),
        ("ZS_MAX_PATCH_PATHS", "4"),
        ("ZS_MAX_PATH_SEGMENTS", "5"),
        ("ZS_MAX_FILTER_DEPTH", "6"),
        ("ZS_MAX_FILTER_CLAUSES", "7"),
        ("ZS_MAX_ID_BYTES", "9"),
        ("ZS_MAX_PAGE", " 50 "),
        ("ZS_REQUEST_MEMORY_MS", "30000"),
        ("ZS_IDEMPOTENCY_KEY_TTL_MS", "60000"),
        ("ZS_WORKER_POLL_MS", "2000"),
        ("ZS_WORKER_LEASE_MS", "1500"),
        ("ZS_WORKER_STATE_DIR", "/tmp/zs-worker"),
        ("ZS_SHUTDOWN_TIMEOUT_MS", "300"),
    ])
    .unwrap();
    let ms = Duration::from_millis;
    let http = s.http(None).expect("a port turns HTTP on");
    assert_eq!(http.port, 6001);
    assert_eq!(http.host, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    assert_eq!(
        http.allowed_origins,
        ["http://a.example", "http://b.example"]
    );
    assert_eq!(http.basic_auth, Some(BasicAuth::new("ann", "pw")));
    assert_eq!(http.max_body_bytes, 2048);
    assert_eq!(http.header_timeout, ms(1500));
    assert_eq!(http.idle_timeout, ms(2500));
    assert_eq!(http.max_connections, 10);
    assert_eq!(http.ws_max_message_bytes, 4096);
    assert_eq!(http.ws_max_topics, 3);
    assert_eq!(http.ws_max_clients, 2);
    assert_eq!(http.ws_max_lag, 700);
    // 0: no bound; unset: the default.
    let off = from(&[("ZS_HTTP_PORT", "6001"), ("ZS_WS_MAX_LAG", "0")]).unwrap();
    assert_eq!(off.http(None).unwrap().ws_max_lag, 0);
    let default = from(&[("ZS_HTTP_PORT", "6001")]).unwrap();
    assert_eq!(
        default.http(None).unwrap().ws_max_lag,
        crate::http::DEFAULT_WS_MAX_LAG
    );
    assert_eq!(http.shutdown_timeout, ms(300));
    assert_eq!(s.store("x", true), StoreConfig::Embedded("/tmp/zs".into()));
    assert_eq!(s.store_options().batch_max, 16);
    let n = s.network();
    assert_eq!(n.interface, Ipv4Addr::LOCALHOST);
    assert_eq!(n.multicast_group.to_string(), "239.1.2.3:4000");
    assert!(!n.multicast);
    assert_eq!(n.peers.len(), 2);
    assert_eq!(n.peer_names.len(), 1);
    assert_eq!(n.peer_names[0].to_string(), "seeds.zs.svc:4003");
    assert_eq!(n.peers_resolve, ms(1500));
    assert_eq!(n.discovery_port, Some(4100));
    assert!(n.cluster_key.is_some());
    assert_eq!(n.request_timeout, ms(250));
    assert_eq!(n.heartbeat, ms(100));
    assert_eq!(n.peer_timeout, ms(700));
    assert_eq!(n.max_message_bytes, 65536);
    assert_eq!(n.max_peers, 8);
    assert_eq!(n.max_subscriber_queue, 500);
    let l = s.limits();
    assert_eq!(
        [
            l.max_depth,
            l.max_document_bytes,
            l.max_patch_paths,
            l.max_path_segments,
            l.max_filter_depth,
            l.max_filter_clauses,
            l.max_id_bytes,
            l.max_page
        ],
        [8, 4096, 4, 5, 6, 7, 9, 50]
    );
    assert_eq!(
        (l.request_memory, l.idempotency_key_ttl),
        (ms(30000), ms(60000))
    );
    assert_eq!(s.worker_poll_interval(), ms(2000));
    assert_eq!(s.worker_lease(), ms(1500));
    assert_eq!(
        s.worker_state_dir("w"),
        Some(std::path::PathBuf::from("/tmp/zs-worker"))
    );
    assert_eq!(s.shutdown_timeout(), ms(300));
}

#[test]
fn defaults_and_empty_variables() {
    let s = from(&[("ZS_HTTP_PORT", " "), ("ZS_WORKER_POLL_MS", "")]).unwrap();
    assert!(s.http(None).is_none(), "an empty port is no port");
    assert_eq!(s.worker_poll_interval(), DEFAULT_POLL_INTERVAL);
    assert_eq!(s.worker_lease(), super::DEFAULT_WORKER_LEASE);
    assert_eq!(
        s.worker_state_dir("w"),
        Some(std::path::Path::new("data").join("w"))
    );
    assert_eq!(
        from(&[("ZS_WORKER_STATE_DIR", "off")])
            .unwrap()
            .worker_state_dir("w"),
        None
    );
    assert_eq!(s.shutdown_timeout(), DEFAULT_SHUTDOWN_TIMEOUT);
    assert_eq!(s.request_timeout(), crate::config::DEFAULT_REQUEST_TIMEOUT);
    assert_eq!(s.limits(), Limits::default());
    assert_eq!(s.store("power", true), StoreConfig::default_for("power"));
    assert_eq!(s.store("gateway", false), StoreConfig::Memory);
    assert_eq!(s.store_options(), crate::store::StoreOptions::default());
    assert_eq!(s.store_options().batch_max, crate::store::DEFAULT_BATCH_MAX);
    let n = s.network();
    let d = NetworkConfig::default();
    assert_eq!(
        (n.interface, n.multicast_group, n.multicast, n.max_peers),
        (d.interface, d.multicast_group, d.multicast, d.max_peers)
    );
    assert_eq!(n.peers_resolve, crate::config::DEFAULT_PEERS_RESOLVE);
    assert!(n.peers.is_empty() && n.peer_names.is_empty());
    let embedded = from(&[("ZS_STORE", "embedded")]).unwrap();
    assert_eq!(embedded.store("a", true), StoreConfig::default_for("a"));
}

/// A bad value of every kind is an error naming its variable and the value.
#[test]
fn a_bad_value_names_its_variable() {
    for (var, value) in [
        ("ZS_HTTP_PORT", "70000"),
        ("ZS_HTTP_HOST", "localhost"),
        ("ZS_BASIC_AUTH", "nocolon"),
        ("ZS_MAX_BODY_BYTES", "1MB"),
        ("ZS_HTTP_HEADER_TIMEOUT_MS", "0"),
        ("ZS_HTTP_IDLE_TIMEOUT_MS", "-5"),
        ("ZS_HTTP_MAX_CONNECTIONS", "many"),
        ("ZS_WS_MAX_MESSAGE_BYTES", "0"),
        ("ZS_WS_MAX_TOPICS", "1.5"),
        ("ZS_WS_MAX_CLIENTS", "x"),
        ("ZS_WS_MAX_LAG", "-1"),
        ("ZS_STORE", "redis://x"),
        ("ZS_STORE_BATCH_MAX", "0"),
        ("ZS_STORE_BATCH_MAX", "65537"),
        ("ZS_STORE_BATCH_MAX", "many"),
        ("ZS_DISCOVERY_INTERFACE", "::1"),
        ("ZS_MULTICAST_GROUP", "127.0.0.1:4000"),
        ("ZS_MULTICAST", "maybe"),
        ("ZS_PEERS", "nonsense"),
        ("ZS_PEERS", "seeds.zs.svc:0"),
        ("ZS_PEERS_RESOLVE_MS", "0"),
        ("ZS_DISCOVERY_PORT", "port"),
        ("ZS_REQUEST_TIMEOUT_MS", "0"),
        ("ZS_HEARTBEAT_MS", "1s"),
        ("ZS_PEER_TIMEOUT_MS", "x"),
        ("ZS_MAX_MESSAGE_BYTES", "10"),
        ("ZS_MAX_PEERS", "0"),
        ("ZS_MAX_SUBSCRIBER_QUEUE", "0"),
        ("ZS_MAX_DEPTH", "101"),
        ("ZS_MAX_DOCUMENT_BYTES", "63"),
        ("ZS_MAX_PATCH_PATHS", "0"),
        ("ZS_MAX_PATH_SEGMENTS", "x"),
        ("ZS_MAX_FILTER_DEPTH", "0"),
        ("ZS_MAX_FILTER_CLAUSES", "-1"),
        ("ZS_MAX_ID_BYTES", "2000"),
        ("ZS_MAX_PAGE", "0"),
        ("ZS_WORKER_POLL_MS", "soon"),
        ("ZS_SHUTDOWN_TIMEOUT_MS", "0"),
    ] {
        let err = from(&[(var, value)]).unwrap_err();
        let SettingsError::Invalid {
            name,
            value: given,
            expected,
        } = &err
        else {
            panic!("{var}={value}: {err:?}");
        };
        assert!(name.starts_with(var), "{var}: {name}");
        assert_eq!(given, value);
        assert!(!expected.is_empty());
        let text = err.to_string();
        assert!(text.contains(var) && text.contains(value), "{text}");
        // The library error says the same.
        let err = Error::from(err).to_string();
        assert!(err.contains(var), "{err}");
    }
}

#[test]
fn flags_override_variables() {
    let s = Settings::from_args_with(
        [
            "zeroservices",
            "--http-port",
            "7001",
            "--max-peers",
            "3",
            "--worker-poll-ms",
            "40",
            "--interface",
            "127.0.0.1",
        ],
        &env(&[
            ("ZS_HTTP_PORT", "6001"),
            ("ZS_MAX_PEERS", "8"),
            ("ZS_WORKER_POLL_MS", "2000"),
            ("ZS_DISCOVERY_INTERFACE", "0.0.0.0"),
            ("ZS_MAX_PAGE", "50"),
        ]),
    )
    .unwrap();
    assert_eq!(s.http.http_port, Some(7001));
    assert_eq!(s.network().max_peers, 3);
    assert_eq!(s.worker_poll_interval(), Duration::from_millis(40));
    assert_eq!(s.network().interface, Ipv4Addr::LOCALHOST);
    // Not given as a flag: the variable.
    assert_eq!(s.limits().max_page, 50);
    // A bad flag names itself too.
    let err = Settings::from_args_with(["zeroservices", "--max-page", "x"], &env(&[])).unwrap_err();
    assert!(err.to_string().contains("--max-page"), "{err}");
    // A good flag does not hide a bad variable it overrides: the flag wins, nothing is read.
    let s = Settings::from_args_with(
        ["zeroservices", "--max-page", "5"],
        &env(&[("ZS_MAX_PAGE", "x")]),
    );
    assert_eq!(s.unwrap().limits().max_page, 5);
}

/// `ZS_DISCOVERY_WARMUP_MS`: one heartbeat unless set; 0 is allowed (no wait).
#[test]
fn the_discovery_warmup_defaults_to_a_heartbeat() {
    let s =
        Settings::from_args_with(["zeroservices"], &env(&[("ZS_HEARTBEAT_MS", "250")])).unwrap();
    assert_eq!(s.network().discovery_warmup(), Duration::from_millis(250));
    for (value, expected) in [("0", 0), ("40", 40)] {
        let s =
            Settings::from_args_with(["zeroservices"], &env(&[("ZS_DISCOVERY_WARMUP_MS", value)]))
                .unwrap();
        assert_eq!(
            s.network().discovery_warmup(),
            Duration::from_millis(expected)
        );
    }
    let err = Settings::from_args_with(["zeroservices"], &env(&[("ZS_DISCOVERY_WARMUP_MS", "-1")]))
        .unwrap_err();
    assert!(err.to_string().contains("ZS_DISCOVERY_WARMUP_MS"), "{err}");
}

/// Every argument's variable is `ZS_` and its id, which is what errors name.
#[test]
fn variables_follow_the_ids() {
    let command = Settings::command();
    let mut vars = 0;
    for arg in command.get_arguments() {
        let Some(env) = arg.get_env() else { continue };
        vars += 1;
        assert_eq!(
            env.to_string_lossy(),
            parse::env_name(arg.get_id().as_str()),
            "{arg:?}"
        );
    }

    assert_eq!(vars, 63);
    let help = with_env(Settings::command(), &env(&[]))
        .render_long_help()
        .to_string();
    for var in Limits::variables().chain([
        "ZS_WORKER_POLL_MS",
        "ZS_WORKER_LEASE_MS",
        "ZS_WORKER_STATE_DIR",
        "ZS_SHUTDOWN_TIMEOUT_MS",
        "ZS_LOG_FORMAT",
        "ZS_METRICS_AUTH",
        "ZS_REQUEST_MEMORY_MS",
        "ZS_IDEMPOTENCY_KEY_TTL_MS",
        "ZS_CHANGE_LOG_MAX",
        "ZS_CHANGE_LOG_MS",
    ]) {
        assert!(help.contains(var), "{var} missing from --help");
    }
}

/// Without a key a node stays on loopback; with one it listens on every interface.
#[test]
fn the_default_interface_follows_the_key() {
    let none = from(&[]).unwrap().network();
    assert_eq!(none.interface, Ipv4Addr::LOCALHOST);
    assert!(none.cluster_key.is_none() && !none.is_insecure());
    assert!(none.check_exposure().is_ok());
    assert_eq!(NetworkConfig::default().interface, Ipv4Addr::LOCALHOST);
    let keyed = from(&[("ZS_CLUSTER_KEY", "k")]).unwrap().network();
    assert_eq!(keyed.interface, Ipv4Addr::UNSPECIFIED);
    assert!(keyed.cluster_key.is_some() && !keyed.is_insecure());
    assert!(keyed.check_exposure().is_ok());
    let given = from(&[
        ("ZS_CLUSTER_KEY", "k"),
        ("ZS_DISCOVERY_INTERFACE", "10.1.2.3"),
    ]);
    assert_eq!(
        given.unwrap().network().interface,
        Ipv4Addr::new(10, 1, 2, 3)
    );
    // Any loopback address is loopback.
    let lo = from(&[("ZS_DISCOVERY_INTERFACE", "127.0.0.2")]).unwrap();
    assert_eq!(lo.network().interface, Ipv4Addr::new(127, 0, 0, 2));
}

/// Another interface without a key is refused, naming the key and the way around it; allowed
/// with `ZS_INSECURE` (or `--insecure`), which the configuration carries.
#[test]
fn an_open_interface_needs_a_key_or_insecure() {
    for interface in ["0.0.0.0", "10.1.2.3", "192.168.0.7"] {
        let err = from(&[("ZS_DISCOVERY_INTERFACE", interface)]).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, SettingsError::Invalid { .. })
                && text.contains("ZS_DISCOVERY_INTERFACE")
                && text.contains(interface)
                && text.contains("ZS_CLUSTER_KEY")
                && text.contains("ZS_INSECURE"),
            "{text}"
        );
        let flag = Settings::from_args_with(["zeroservices", "--interface", interface], &env(&[]));
        assert!(flag.unwrap_err().to_string().contains("ZS_INSECURE"));
        for insecure in [
            Settings::from_lookup(&env(&[
                ("ZS_DISCOVERY_INTERFACE", interface),
                ("ZS_INSECURE", "1"),
            ])),
            Settings::from_args_with(
                ["zeroservices", "--interface", interface, "--insecure"],
                &env(&[]),
            ),
        ] {
            let network = insecure.unwrap().network();
            assert!(network.insecure && network.is_insecure());
            assert!(network.check_exposure().is_ok());
        }
        // Explicitly off is off.
        let off = from(&[
            ("ZS_DISCOVERY_INTERFACE", interface),
            ("ZS_INSECURE", "off"),
        ]);
        assert!(off.is_err());
    }
    // `--insecure` takes no separate value: what follows is not eaten.
    let s = Settings::from_args_with(
        ["zeroservices", "--insecure", "--max-peers", "3"],
        &env(&[]),
    )
    .unwrap();
    assert_eq!(s.network.insecure, Some(true));
    assert_eq!(s.network().max_peers, 3);
    // A configuration built in code is held to the same rule where it binds.
    let open = NetworkConfig {
        interface: Ipv4Addr::UNSPECIFIED,
        ..NetworkConfig::default()
    };
    let err = open.check_exposure().unwrap_err().to_string();
    assert!(
        err.contains("ZS_CLUSTER_KEY") && err.contains("ZS_INSECURE"),
        "{err}"
    );
    let allowed = NetworkConfig {
        insecure: true,
        ..open
    };
    assert!(allowed.check_exposure().is_ok());
}

fn key_file(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.key");
    std::fs::write(&path, text).unwrap();
    let path = path.to_str().unwrap().to_owned();
    (dir, path)
}

/// `ZS_CLUSTER_KEY_FILE`: the file's content, trimmed, is the key; a missing or empty file and
/// a key given twice are errors naming the variable.
#[test]
fn the_cluster_key_from_a_file() {
    let (_dir, path) = key_file("  s3cret-from-a-file \n");
    for s in [
        from(&[("ZS_CLUSTER_KEY_FILE", path.as_str())]).unwrap(),
        Settings::from_args_with(["zeroservices", "--cluster-key-file", &path], &env(&[])).unwrap(),
    ] {
        assert_eq!(s.cluster_key(), Some("s3cret-from-a-file"));
        let debug = format!("{s:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        let n = s.network();
        assert!(n.cluster_key.is_some());
        // With a key the node may listen beyond loopback, and does by default.
        assert_eq!(n.interface, Ipv4Addr::UNSPECIFIED);
    }
    let open = from(&[
        ("ZS_CLUSTER_KEY_FILE", path.as_str()),
        ("ZS_DISCOVERY_INTERFACE", "10.1.2.3"),
    ]);
    assert!(open.is_ok());

    let (_empty_dir, empty) = key_file(" \n\t");
    let missing = format!("{path}.missing");
    for bad in [empty.as_str(), missing.as_str()] {
        let err = from(&[("ZS_CLUSTER_KEY_FILE", bad)]).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, SettingsError::Invalid { .. })
                && text.contains("ZS_CLUSTER_KEY_FILE")
                && text.contains(bad),
            "{text}"
        );
    }
    let both = from(&[
        ("ZS_CLUSTER_KEY_FILE", path.as_str()),
        ("ZS_CLUSTER_KEY", "k"),
    ]);
    let text = both.unwrap_err().to_string();
    assert!(
        text.contains("ZS_CLUSTER_KEY_FILE") && text.contains("ZS_CLUSTER_KEY /"),
        "{text}"
    );
}

/// A secret given as a flag shows in `ps`: a warning. Its variable does not.
#[test]
fn a_key_on_the_command_line_is_warned_about() {
    let warnings = |args: &[&str], vars: &[(&str, &str)]| {
        let matches = with_env(Settings::command(), &env(vars))
            .try_get_matches_from(args)
            .unwrap();
        command_line_warnings(&matches)
    };
    let flag = warnings(&["zeroservices", "--cluster-key", "k"], &[]);
    assert_eq!(flag.len(), 1, "{flag:?}");
    assert!(
        flag[0].contains("--cluster-key")
            && flag[0].contains("ps")
            && flag[0].contains("ZS_CLUSTER_KEY_FILE"),
        "{flag:?}"
    );
    assert!(warnings(&["zeroservices"], &[("ZS_CLUSTER_KEY", "k")]).is_empty());
    let (_dir, path) = key_file("k");
    assert!(warnings(&["zeroservices", "--cluster-key-file", &path], &[]).is_empty());
    // The HTTP secrets too: a Basic password, a JWT secret.
    let http = warnings(
        &[
            "zeroservices",
            "--basic-auth",
            "ann:pw",
            "--jwt-secret",
            "a jwt secret of at least thirty-two bytes",
        ],
        &[],
    );
    assert_eq!(http.len(), 2, "{http:?}");
    assert!(
        http[0].contains("--basic-auth") && http[0].contains("ZS_BASIC_AUTH_FILE"),
        "{http:?}"
    );
    assert!(
        http[1].contains("--jwt-secret") && http[1].contains("ZS_JWT_SECRET_FILE"),
        "{http:?}"
    );
    assert!(warnings(&["zeroservices"], &[("ZS_BASIC_AUTH", "ann:pw")]).is_empty());
}

/// The users file and the JWT keys: read at start-up, an error naming the variable, the file
/// and the line; the keys of several variables all accepted.
#[test]
fn users_file_and_jwt_keys() {
    let dir = tempfile::tempdir().unwrap();
    let hash = crate::http::hash_password("pw").unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, format!("# users\nann:{hash}:admin\n")).unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a secret of at least thirty-two bytes\n").unwrap();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let s = from(&[
        ("ZS_HTTP_PORT", "6001"),
        ("ZS_BASIC_AUTH_FILE", &path(&users)),
        ("ZS_JWT_SECRET_FILE", &path(&secret)),
        ("ZS_JWT_SECRET", "another secret of at least 32 bytes"),
    ])
    .unwrap();
    let http = s.http(None).unwrap();
    assert!(http.users.as_ref().unwrap().contains("ann"));
    assert!(http.requires_auth());
    assert!(format!("{:?}", http.jwt).contains("HS256, HS256"));

    let bad = dir.path().join("bad");
    std::fs::write(&bad, format!("ann:{hash}\n\nbob:secret\n")).unwrap();
    let err = from(&[("ZS_BASIC_AUTH_FILE", &path(&bad))])
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("ZS_BASIC_AUTH_FILE / --basic-auth-file="),
        "{err}"
    );
    assert!(err.contains("bad line 3: not an Argon2 PHC hash"), "{err}");
    let err = from(&[("ZS_JWT_PUBLIC_KEY", "-----BEGIN PUBLIC KEY-----\nnope")])
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("ZS_JWT_PUBLIC_KEY / --jwt-public-key="),
        "{err}"
    );
    let err = from(&[("ZS_JWT_SECRET_FILE", "/nonexistent/secret")])
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("ZS_JWT_SECRET_FILE"), "{err}");
}

/// Debug output (logs, panics) never shows a secret given by value.
#[test]
fn secrets_are_not_in_debug_output() {
    let s = from(&[
        ("ZS_CLUSTER_KEY", "cluster-s3cret"),
        ("ZS_BASIC_AUTH", "ann:basic-s3cret"),
        ("ZS_JWT_SECRET", "a jwt s3cret of at least thirty-two bytes"),
        ("ZS_HTTP_PORT", "6001"),
    ])
    .unwrap();
    let debug = format!("{s:?} {:?} {:?}", s.network(), s.http(None));
    assert!(!debug.contains("s3cret"), "{debug}");
}

/// `ZS_TRANSPORT`, `ZS_CLUSTER` and `ZS_NATS_CREDS`: NATS URLs, a subject prefix, a file; bad
/// values named; a NATS server beyond loopback needs a key or `ZS_INSECURE`, like an interface.
#[test]
fn the_nats_transport_is_a_setting() {
    use crate::config::{DEFAULT_CLUSTER, Transport};
    let default = from(&[]).unwrap().network();
    assert_eq!(default.transport, Transport::ZeroMq);
    assert_eq!(default.cluster, DEFAULT_CLUSTER);
    let zmq = from(&[("ZS_TRANSPORT", "zeromq")]).unwrap().network();
    assert_eq!(zmq.transport, Transport::ZeroMq);
    let nats = from(&[
        (
            "ZS_TRANSPORT",
            "nats://127.0.0.1:4222, nats://user:pw@localhost:4223",
        ),
        ("ZS_CLUSTER", "prod.eu-1"),
    ])
    .unwrap()
    .network();
    let Transport::Nats(servers) = &nats.transport else {
        panic!("{:?}", nats.transport)
    };
    assert_eq!(servers.len(), 2);
    assert!(servers.iter().all(|s| s.is_loopback()));
    assert_eq!(servers[1].url(), "nats://user:pw@localhost:4223");
    // Passwords stay out of logs.
    assert_eq!(servers[1].redacted(), "nats://user:***@localhost:4223");
    assert!(!format!("{nats:?}").contains("pw"));
    assert_eq!(nats.cluster, "prod.eu-1");
    assert_eq!(nats.nats_connect, crate::config::DEFAULT_NATS_CONNECT);
    let patient = from(&[("ZS_NATS_CONNECT_MS", "120000")]).unwrap().network();
    assert_eq!(patient.nats_connect, Duration::from_secs(120));
    assert!(!nats.is_insecure() && nats.check_exposure().is_ok());
    for (var, value, named) in [
        ("ZS_TRANSPORT", "udp", "ZS_TRANSPORT"),
        ("ZS_TRANSPORT", "nats://", "ZS_TRANSPORT"),
        ("ZS_TRANSPORT", "nats://host:port", "ZS_TRANSPORT"),
        ("ZS_TRANSPORT", "http://127.0.0.1:4222", "ZS_TRANSPORT"),
        ("ZS_CLUSTER", "a b", "ZS_CLUSTER"),
        ("ZS_CLUSTER", "zs.>", "ZS_CLUSTER"),
        ("ZS_CLUSTER", "zs..x", "ZS_CLUSTER"),
        ("ZS_NATS_CREDS", "/nonexistent/user.creds", "ZS_NATS_CREDS"),
        ("ZS_NATS_CONNECT_MS", "0", "ZS_NATS_CONNECT_MS"),
        ("ZS_NATS_CONNECT_MS", "soon", "ZS_NATS_CONNECT_MS"),
    ] {
        let err = from(&[(var, value)]).unwrap_err().to_string();
        assert!(err.contains(named), "{value}: {err}");
    }
    // Closed by default: a NATS server beyond loopback needs a key, or ZS_INSECURE.
    let err = from(&[("ZS_TRANSPORT", "nats://a:secret@nats.example:4222")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ZS_TRANSPORT")
            && err.contains("ZS_CLUSTER_KEY")
            && err.contains("ZS_INSECURE")
            && !err.contains("secret"),
        "{err}"
    );
    let keyed = from(&[
        ("ZS_TRANSPORT", "tls://nats.example:4222"),
        ("ZS_CLUSTER_KEY", "k"),
    ])
    .unwrap()
    .network();
    assert!(!keyed.is_insecure() && keyed.check_exposure().is_ok());
    let open = from(&[
        ("ZS_TRANSPORT", "nats://10.0.0.5:4222"),
        ("ZS_INSECURE", "1"),
    ])
    .unwrap()
    .network();
    assert!(open.is_insecure() && open.check_exposure().is_ok());
    let refused = NetworkConfig {
        insecure: false,
        ..open
    };
    let err = refused.check_exposure().unwrap_err().to_string();
    assert!(err.contains("ZS_TRANSPORT=nats://10.0.0.5:4222"), "{err}");
}
