//! `zeroservices openapi|asyncapi`: the API documents of a running cluster, for pipelines that
//! generate clients.
//!
//! The command joins the cluster as a node that owns nothing (like `nodes` and `call`:
//! discovery, `--transport`, the cluster key when one is set), waits for the nodes to announce
//! their collections, and prints, as pretty JSON on stdout, the document a node's
//! `GET /openapi.json` or `GET /asyncapi.json` serves for them (every collection: the command is
//! a member of the cluster, no `Authorizer` filters it; no security scheme and no server, which
//! belong to one node's HTTP settings).
//!
//! When is the cluster "found": with `--collection NAME` (repeatable), once each is announced;
//! without, once a node is found and then no new collection was announced for
//! [`SETTLE`]. Nothing found within `--wait-ms` (default 3000) is exit code 3, with a message
//! on stderr saying what was waited for.

use std::time::Duration;

use clap::Args;
use serde_json::Value;
use tokio::time::Instant;
use zeroservices::Node;
use zeroservices::settings::Settings;

use crate::call::{DEFAULT_WAIT_MS, EXIT_NOT_FOUND, Failure};

/// How long the set of announced collections must stay the same before the document is printed
/// (when no `--collection` says what to wait for).
pub(crate) const SETTLE: Duration = Duration::from_millis(300);

/// Which document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Which {
    /// `GET /openapi.json`.
    OpenApi,
    /// `GET /asyncapi.json`.
    AsyncApi,
}

/// The flags of `openapi` and `asyncapi`.
#[derive(Args, Clone)]
pub(crate) struct DocsArgs {
    /// How long to wait for the cluster's nodes (and each --collection), in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_WAIT_MS)]
    wait_ms: u64,
    /// Wait until this collection is announced (repeatable); without it, until a node is found
    /// and the announcements settle.
    #[arg(long = "collection", value_name = "NAME")]
    collections: Vec<String>,
}

/// Joins the cluster, waits for it, prints the document.
pub(crate) async fn run(settings: &Settings, which: Which, args: DocsArgs) -> Result<(), Failure> {
    let node = Node::builder("zeroservices-docs")
        .settings(settings)
        .network(settings.network())
        .start()
        .await?;
    let found = wait(&node, &args).await;
    let infos = node.resource_infos();
    node.stop().await;
    found?;
    let doc = match which {
        Which::OpenApi => zeroservices::http::openapi_document(&infos, false),
        Which::AsyncApi => zeroservices::http::asyncapi_document(&infos),
    };
    print(&doc)
}

fn print(doc: &Value) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(doc).map_err(|e| Failure {
        code: 1,
        message: format!("cannot write the document: {e}"),
    })?;
    println!("{text}");
    Ok(())
}

async fn wait(node: &Node, args: &DocsArgs) -> Result<(), Failure> {
    let within = Duration::from_millis(args.wait_ms);
    let deadline = Instant::now() + within;
    let not_found = |what: String| Failure {
        code: EXIT_NOT_FOUND,
        message: format!(
            "{what} within {} ms (--wait-ms): is the cluster running, on this network \
             (--interface, --multicast-group, --peers, --transport) and with this cluster key?",
            args.wait_ms
        ),
    };
    if !args.collections.is_empty() {
        for collection in &args.collections {
            let left = deadline.saturating_duration_since(Instant::now());
            node.wait_for_collection(collection, left)
                .await
                .map_err(|_| {
                    not_found(format!(
                        "no node of the cluster announced the collection {collection:?}"
                    ))
                })?;
        }
        return Ok(());
    }
    loop {
        if !node.peers().is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(not_found("no node of the cluster was found".to_owned()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The other nodes answer the same announcement: wait until what they announce settles,
    // at most the time left plus one settle period.
    let last = deadline.max(Instant::now()) + SETTLE;
    let mut known = node.collections();
    let mut since = Instant::now();
    while Instant::now() < last && since.elapsed() < SETTLE {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = node.collections();
        if now != known {
            known = now;
            since = Instant::now();
        }
    }
    Ok(())
}
