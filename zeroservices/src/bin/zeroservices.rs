//! The `zeroservices` command: look at a running cluster.
//!
//! ```text
//! zeroservices sniff [TOPIC_PREFIX]   print every event of the cluster, one line each
//! zeroservices nodes                  print the directory: nodes, kinds, resources, the store
//!                                     behind each (its fingerprint), endpoints, and which are
//!                                     insecure (ZS_INSECURE)
//! zeroservices hash-password          read a password on stdin, print its Argon2id PHC hash
//! zeroservices call COLLECTION ACTION [--id ID] [--args JSON]
//!                                     run an action, print its reply as JSON
//! zeroservices get COLLECTION ID      print one resource as JSON
//! zeroservices list COLLECTION [--where JSON] [--sort KEYS] [--limit N] [--skip N]
//!                                     print the resources as a JSON array
//! zeroservices watch PREFIX [--since CURSOR] [--count N]
//!                                     print the events under a topic prefix, one JSON line each
//! zeroservices openapi [--collection NAME]...
//!                                     print the cluster's OpenAPI document (pretty JSON)
//! zeroservices asyncapi [--collection NAME]...
//!                                     print the cluster's AsyncAPI document (pretty JSON)
//! ```
//!
//! `call`, `get`, `list` and `watch` wait at most `--wait-ms` (default 3000) for an owner of the
//! collection to be announced; their exit codes (3 not found, 4 unavailable, 2 usage) are in
//! `call.rs`. `openapi` and `asyncapi` wait at most `--wait-ms` for the cluster (`docs.rs`;
//! exit 3 when no node is found).
//!
//! They all find the cluster the way a node does (UDP multicast, or `ZS_PEERS`) and read the same
//! network settings ([`zeroservices::settings::NetworkSettings`]: each `ZS_*` variable and its
//! flag). A cluster with a key seals its traffic: given the key (`ZS_CLUSTER_KEY`, any key of
//! its ring), the sniffer opens and prints the events in clear; without it, it sees nothing.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use futures::StreamExt;
use zeroservices::settings::{self, NetworkSettings, Settings};
use zeroservices::signal::Signals;
use zeroservices::{Node, NodeKind};

#[path = "zeroservices/call.rs"]
mod call;
#[path = "zeroservices/docs.rs"]
mod docs;

#[derive(Parser)]
#[command(
    name = "zeroservices",
    version,
    about = "Look at a running zeroservices cluster, and call it"
)]
struct Cli {
    /// The network settings of a node; each also reads its `ZS_*` variable.
    #[command(flatten, next_help_heading = "Cluster")]
    net: NetworkSettings,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print every event of the cluster as it happens: `<topic> <json>`, one line each.
    Sniff {
        /// Only events whose topic falls under this dot-segment prefix (`power`, `power.patch`).
        #[arg(default_value = "*")]
        prefix: String,
        /// Exit after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Print the nodes of the cluster: id, name, kind, resources, endpoints, last seen.
    Nodes {
        /// How long to listen for announcements before printing, in milliseconds.
        #[arg(long, default_value_t = 1500)]
        wait_ms: u64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Read a password from stdin (its first line) and print its Argon2id PHC hash, for a
    /// users file (`ZS_BASIC_AUTH_FILE`: `user:<hash>[:role,...]` per line).
    HashPassword,
    #[command(flatten)]
    Call(call::CallCommand),
    /// Print the OpenAPI 3.1 document of the running cluster (what a node's /openapi.json
    /// serves), as pretty JSON: for pipelines that generate clients.
    Openapi(docs::DocsArgs),
    /// Print the AsyncAPI 3.0 document of the running cluster's /realtime websocket (what a
    /// node's /asyncapi.json serves), as pretty JSON.
    Asyncapi(docs::DocsArgs),
}

fn main() -> ExitCode {
    // The variables through the one settings reader; the network flags work after the
    // subcommand too.
    let mut command =
        settings::with_env(Cli::command(), &settings::process_env).mut_args(|arg| arg.global(true));
    let (cli, warnings) = match command
        .try_get_matches_from_mut(std::env::args_os())
        .and_then(|matches| Ok((Cli::from_arg_matches(&matches)?, matches)))
    {
        Ok((cli, matches)) => (cli, settings::command_line_warnings(&matches)),
        Err(err) => err.exit(),
    };
    if let Command::HashPassword = cli.command {
        return hash_password();
    }
    // What the settings say together (a key given twice, an interface beyond loopback
    // without a key): a usage error, exit 2, like a bad value.
    let settings = Settings {
        network: cli.net,
        ..Settings::default()
    };
    if let Err(err) = settings.check() {
        eprintln!("error: {err}");
        return ExitCode::from(2);
    }
    let log_format = match zeroservices::settings::LogFormat::from_env() {
        Ok(format) => format,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    zeroservices::app::init_logging(log_format, "warn");
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let command = match cli.command {
        Command::Openapi(args) => {
            return exit(runtime.block_on(docs::run(&settings, docs::Which::OpenApi, args)));
        }
        Command::Asyncapi(args) => {
            return exit(runtime.block_on(docs::run(&settings, docs::Which::AsyncApi, args)));
        }
        Command::Call(command) => return exit(runtime.block_on(call::run(&settings, command))),
        command => command,
    };
    match runtime.block_on(run(&settings, command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: &Settings, command: Command) -> zeroservices::Result<()> {
    match command {
        Command::Sniff { prefix, count } => sniff(settings, prefix, count).await,
        Command::Nodes { wait_ms, json } => {
            nodes(settings, Duration::from_millis(wait_ms), json).await
        }
        Command::HashPassword | Command::Call(_) | Command::Openapi(_) | Command::Asyncapi(_) => {
            Ok(())
        }
    }
}

/// The exit of a command that fails with a [`call::Failure`]: its message on stderr, its code.
fn exit(result: Result<(), call::Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// `hash-password`: the password from stdin, never from the command line (`ps` shows that).
fn hash_password() -> ExitCode {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut line) {
        eprintln!("error: cannot read the password from stdin: {e}");
        return ExitCode::FAILURE;
    }
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        eprintln!(
            "error: no password on stdin (usage: `printf %s \"$PW\" | zeroservices hash-password`)"
        );
        return ExitCode::from(2);
    }
    match zeroservices::http::hash_password(password) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn sniff(
    settings: &Settings,
    prefix: String,
    count: Option<u64>,
) -> zeroservices::Result<()> {
    let subscriptions = if prefix == "*" {
        vec![String::new()]
    } else {
        vec![prefix.clone()]
    };
    let node = Node::builder("zeroservices-sniff")
        .settings(settings)
        .network_with(settings.network(), subscriptions)
        .start()
        .await?;
    let mut events = node.subscribe(prefix);
    let mut signals = Signals::new();
    let mut seen = 0u64;
    let stdout = std::io::stdout();
    loop {
        tokio::select! {
            event = events.next() => {
                let Some(event) = event else { break };
                let mut out = stdout.lock();
                // A closed stdout (piped into `head`) ends the sniffer quietly.
                if writeln!(out, "{} {}", event.topic, event.data).and_then(|()| out.flush()).is_err() {
                    break;
                }
                seen += 1;
                if count.is_some_and(|c| seen >= c) {
                    break;
                }
            }
            _ = signals.recv() => break,
        }
    }
    node.stop().await;
    Ok(())
}

async fn nodes(settings: &Settings, wait: Duration, json: bool) -> zeroservices::Result<()> {
    let node = Node::builder("zeroservices-nodes")
        .settings(settings)
        .network(settings.network())
        .start()
        .await?;
    tokio::time::sleep(wait).await; // listening for announcements is the point of this wait
    let peers = node.peers();
    node.stop().await;
    if json {
        let list: Vec<_> = peers
            .iter()
            .map(|p| {
                serde_json::json!({
                    "id": p.info.id,
                    "name": p.info.name,
                    "kind": p.info.kind,
                    "resources": p.info.resources.iter().map(|r| &r.name).collect::<Vec<_>>(),
                    "watches": p.info.watches,
                    "insecure": p.info.insecure,
                    "stores": p.info.stores,
                    "endpoints": p.info.endpoints,
                    "last_seen_ms_ago": age(p.last_seen).as_millis() as u64,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    println!(
        "{:<36} {:<20} {:<7} {:<24} {:<50} {:<8} {:<40} LAST SEEN",
        "ID", "NAME", "KIND", "RESOURCES", "ENDPOINTS", "INSECURE", "STORES"
    );
    for p in &peers {
        let kind = match p.info.kind {
            NodeKind::Node => "node",
            NodeKind::Worker => "worker",
        };
        let mut resources: Vec<String> = p.info.resources.iter().map(|r| r.name.clone()).collect();
        resources.extend(p.info.watches.iter().map(|w| format!("watches:{w}")));
        let endpoints: Vec<String> = p
            .info
            .endpoints
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        // `power=embedded:data/power/zeroservices.redb#embedded:1f2e...`: owners of one
        // collection must show the same fingerprint (after the `#`).
        let stores: Vec<String> = p
            .info
            .stores
            .iter()
            .map(|(c, s)| format!("{c}={}#{}", s.store, s.fingerprint))
            .collect();
        println!(
            "{:<36} {:<20} {:<7} {:<24} {:<50} {:<8} {:<40} {} ms ago",
            p.info.id,
            p.info.name,
            kind,
            if resources.is_empty() {
                "-".to_owned()
            } else {
                resources.join(",")
            },
            endpoints.join(" "),
            if p.info.insecure { "yes" } else { "-" },
            if stores.is_empty() {
                "-".to_owned()
            } else {
                stores.join(" ")
            },
            age(p.last_seen).as_millis()
        );
    }
    if peers.is_empty() {
        eprintln!("no node answered within {} ms", wait.as_millis());
    }
    Ok(())
}

fn age(t: SystemTime) -> Duration {
    SystemTime::now().duration_since(t).unwrap_or_default()
}
