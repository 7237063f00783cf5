//! `zeroservices call|get|list|watch`: requests and change streams from the command line.
//!
//! The command joins the cluster as a node that owns nothing (the way `nodes` does: discovery,
//! `--transport`, the cluster key when one is set), waits at most `--wait-ms` for an owner of
//! the collection to be announced, sends the request, and prints the reply as one line of
//! JSON on stdout. `watch` prints one line of JSON per event, `{"topic", "data"}`, each with the
//! event's `cursor` when its change is logged (give it to `--since` to resume there).
//!
//! Errors go to stderr as `error: <message>`, with an exit code by kind:
//!
//! | code | when |
//! |---|---|
//! | 0 | the reply was printed (`watch`: `--count` events were, or Ctrl-C) |
//! | 1 | the owner refused the request (400 a refused action, 409, 412, 422 a body that breaks the schema, 500, ...) |
//! | 2 | usage: a bad flag, `--args`/`--where` that is not JSON, a malformed cursor or filter |
//! | 3 | not found (404): no owner of the collection was announced within `--wait-ms`, or an unknown id or action |
//! | 4 | unavailable (503, 504): the owner is gone, did not answer in time, or its store is down |

use std::io::Write;
use std::time::Duration;

use clap::{Args, Subcommand};
use futures::StreamExt;
use serde_json::{Value, json};
use zeroservices::medium::Request;
use zeroservices::settings::Settings;
use zeroservices::signal::Signals;
use zeroservices::{Error, Node, Query};

/// How long the commands wait for the collection's owner by default, in milliseconds.
pub(crate) const DEFAULT_WAIT_MS: u64 = 3000;

/// The exit codes; see the module docs.
pub(crate) const EXIT_REFUSED: u8 = 1;
pub(crate) const EXIT_USAGE: u8 = 2;
pub(crate) const EXIT_NOT_FOUND: u8 = 3;
pub(crate) const EXIT_UNAVAILABLE: u8 = 4;

/// What every calling command takes.
#[derive(Args, Clone, Copy)]
pub(crate) struct Wait {
    /// How long to wait for an owner of the collection to be announced, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_WAIT_MS)]
    pub(crate) wait_ms: u64,
}

/// The calling commands.
#[derive(Subcommand)]
pub(crate) enum CallCommand {
    /// Run an action (built-in or custom) on a collection, or on one resource with --id, and
    /// print its reply as JSON.
    Call {
        /// The collection (`power`).
        collection: String,
        /// The action (`square`, or a built-in: `create`, `get`, `patch`, `delete`, `list`).
        action: String,
        /// The resource to run it on.
        #[arg(long)]
        id: Option<String>,
        /// The action's arguments, as JSON (`'{"value": 3}'`).
        #[arg(long, value_name = "JSON")]
        args: Option<String>,
        #[command(flatten)]
        wait: Wait,
    },
    /// Print one resource as JSON: `{"resource_id", "resource_data", "version"}`.
    Get {
        /// The collection.
        collection: String,
        /// The resource id.
        id: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Print the resources of a collection as a JSON array, filtered and sorted.
    List {
        /// The collection.
        collection: String,
        /// A filter, as JSON (`'{"value": {"$gt": 2}}'`).
        #[arg(long = "where", value_name = "JSON")]
        filter: Option<String>,
        /// Sort keys: `value,-status` (`-`: descending) or a JSON object.
        #[arg(long, value_name = "KEYS", allow_hyphen_values = true)]
        sort: Option<String>,
        /// At most this many (the owner caps it at its largest page).
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
        /// Skip this many first.
        #[arg(long, value_name = "N")]
        skip: Option<u64>,
        #[command(flatten)]
        wait: Wait,
    },
    /// Print the events under a topic prefix (`power`, `power.patch`, `*`), one JSON line each,
    /// until Ctrl-C; with --since, first the logged changes after that cursor.
    Watch {
        /// The topic prefix.
        prefix: String,
        /// Resume after this cursor (an event's `cursor`).
        #[arg(long, value_name = "CURSOR")]
        since: Option<String>,
        /// Exit after this many events.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        #[command(flatten)]
        wait: Wait,
    },
}

/// A failure, with its exit code.
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::UnknownCollection { .. }
            | Error::UnknownAction { .. }
            | Error::NotFound { .. } => EXIT_NOT_FOUND,
            Error::OwnerGone { .. } | Error::Unavailable { .. } | Error::Timeout { .. } => {
                EXIT_UNAVAILABLE
            }
            Error::BadRequest { .. } => EXIT_USAGE,
            _ => EXIT_REFUSED,
        };
        Self {
            code,
            message: e.to_string(),
        }
    }
}

/// A JSON argument of a flag, or a usage error naming the flag.
fn json_arg(flag: &str, text: &str) -> Result<Value, Failure> {
    serde_json::from_str(text).map_err(|e| Failure::usage(format!("{flag} is not JSON: {e}")))
}

impl CallCommand {
    /// What the command will send, checked before joining the cluster: bad JSON is a usage
    /// error at once.
    fn plan(&self) -> Result<Plan, Failure> {
        Ok(match self {
            CallCommand::Call {
                collection,
                action,
                id,
                args,
                wait,
            } => {
                let mut request = Request::new(collection, action);
                if let Some(id) = id {
                    request = request.id(id);
                }
                if let Some(args) = args {
                    request = request.args(json_arg("--args", args)?);
                }
                Plan::Request(request, *wait)
            }
            CallCommand::Get {
                collection,
                id,
                wait,
            } => Plan::Request(Request::new(collection, "get").id(id), *wait),
            CallCommand::List {
                collection,
                filter,
                sort,
                limit,
                skip,
                wait,
            } => {
                let mut args = serde_json::Map::new();
                if let Some(filter) = filter {
                    let filter = json_arg("--where", filter)?;
                    if !filter.is_object() {
                        return Err(Failure::usage("--where must be a JSON object"));
                    }
                    args.insert("where".into(), filter);
                }
                if let Some(sort) = sort {
                    let keys = Query::parse_sort(sort)
                        .map_err(|e| Failure::usage(format!("--sort: {e}")))?;
                    let keys = serde_json::to_value(keys)
                        .map_err(|e| Failure::usage(format!("--sort: {e}")))?;
                    args.insert("sort".into(), keys);
                }
                if let Some(limit) = limit {
                    args.insert("limit".into(), json!(limit));
                }
                if let Some(skip) = skip {
                    args.insert("skip".into(), json!(skip));
                }
                Plan::Request(
                    Request::new(collection, "list").args(Value::Object(args)),
                    *wait,
                )
            }
            CallCommand::Watch {
                prefix,
                since,
                count,
                wait,
            } => Plan::Watch {
                prefix: prefix.clone(),
                since: since.clone(),
                count: *count,
                wait: *wait,
            },
        })
    }
}

// One per run of the command: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Plan {
    Request(Request, Wait),
    Watch {
        prefix: String,
        since: Option<String>,
        count: Option<u64>,
        wait: Wait,
    },
}

/// The collection a topic prefix is under (`power.patch` -> `power`), `None` for every event.
fn collection_of(prefix: &str) -> Option<&str> {
    match prefix.split('.').next() {
        None | Some("") | Some("*") => None,
        Some(collection) => Some(collection),
    }
}

/// Runs a calling command: joins the cluster, waits for the owner, prints the reply.
pub(crate) async fn run(settings: &Settings, command: CallCommand) -> Result<(), Failure> {
    let plan = command.plan()?;
    let subscriptions = match &plan {
        Plan::Watch { prefix, .. } => vec![collection_of(prefix).unwrap_or("").to_owned()],
        Plan::Request(..) => Vec::new(),
    };
    let node = Node::builder("zeroservices-cli")
        .settings(settings)
        .network_with(settings.network(), subscriptions)
        .start()
        .await?;
    let result = match plan {
        Plan::Request(request, wait) => request_and_print(&node, request, wait).await,
        Plan::Watch {
            prefix,
            since,
            count,
            wait,
        } => watch(&node, prefix, since.as_deref(), count, wait).await,
    };
    node.stop().await;
    result
}

async fn wait_for_owner(node: &Node, collection: &str, wait: Wait) -> Result<(), Failure> {
    let within = Duration::from_millis(wait.wait_ms);
    node.wait_for_collection(collection, within)
        .await
        .map_err(|_| Failure {
            code: EXIT_NOT_FOUND,
            message: format!(
                "Unknown service {collection}: no node of the cluster announced it within {} ms \
                 (--wait-ms)",
                wait.wait_ms
            ),
        })
}

async fn request_and_print(node: &Node, request: Request, wait: Wait) -> Result<(), Failure> {
    wait_for_owner(node, &request.collection, wait).await?;
    let reply = node.request_raw(request).await?;
    println!("{}", reply.get());
    Ok(())
}

async fn watch(
    node: &Node,
    prefix: String,
    since: Option<&str>,
    count: Option<u64>,
    wait: Wait,
) -> Result<(), Failure> {
    if let Some(collection) = collection_of(&prefix) {
        wait_for_owner(node, collection, wait).await?;
    }
    let mut events = node.subscribe_since(prefix, since).await?;
    let mut signals = Signals::new();
    let mut seen = 0u64;
    let stdout = std::io::stdout();
    if count == Some(0) {
        return Ok(());
    }
    loop {
        tokio::select! {
            event = events.next() => {
                let Some(event) = event else { return Ok(()) };
                let event = event?;
                let line = json!({"topic": event.topic, "data": event.data});
                let mut out = stdout.lock();
                // A closed stdout (piped into `head`) ends the watch quietly.
                if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                    return Ok(());
                }
                seen += 1;
                if count.is_some_and(|c| seen >= c) {
                    return Ok(());
                }
            }
            _ = signals.recv() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_json_is_a_usage_error_before_anything_is_sent() {
        let call = CallCommand::Call {
            collection: "power".into(),
            action: "square".into(),
            id: None,
            args: Some("{not json".into()),
            wait: Wait { wait_ms: 1 },
        };
        let Err(failure) = call.plan() else {
            panic!("bad JSON was accepted")
        };
        assert_eq!(failure.code, EXIT_USAGE);
        assert!(failure.message.contains("--args is not JSON"));
        let list = CallCommand::List {
            collection: "power".into(),
            filter: Some("[1]".into()),
            sort: None,
            limit: None,
            skip: None,
            wait: Wait { wait_ms: 1 },
        };
        assert!(matches!(
            list.plan(),
            Err(Failure {
                code: EXIT_USAGE,
                ..
            })
        ));
    }

    #[test]
    fn errors_map_to_exit_codes() {
        let code = |e: Error| Failure::from(e).code;
        assert_eq!(code(Error::unknown_collection("x")), EXIT_NOT_FOUND);
        assert_eq!(code(Error::unavailable("down")), EXIT_UNAVAILABLE);
        assert_eq!(code(Error::bad_request("bad filter")), EXIT_USAGE);
        assert_eq!(code(Error::internal("oops")), EXIT_REFUSED);
        assert_eq!(collection_of("power.patch.1"), Some("power"));
        assert_eq!(collection_of("*"), None);
    }
}
