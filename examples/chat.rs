//! The original framework's chat: one bare node per user (no resources), users joining and
//! leaving live, broadcast messages, and direct messages to one user, with a small web page.
//!
//! Run one per user, each in its own terminal, from the repository root:
//!
//! ```text
//! cargo run --release --example chat -- ann 5101
//! cargo run --release --example chat -- bob 5102
//! ```
//!
//! then open <http://127.0.0.1:5101/chat> and <http://127.0.0.1:5102/chat>: each page lists
//! who is online, shows `bob joined` / `bob left` as nodes come and go, and sends to everyone or
//! to one user. Nodes find each other by UDP multicast (on loopback: without a cluster key
//! a node stays on this machine); Ctrl-C leaves the chat.

use zeroservices::Node;
use zeroservices::config::NetworkConfig;
use zeroservices::http::HttpConfig;
use zeroservices_examples::chat_node::ChatNode;

#[tokio::main]
async fn main() -> zeroservices::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let user = args
        .next()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "guest".into());
    if user == "--help" || user == "-h" {
        println!("usage: chat [USER] [HTTP_PORT]   (HTTP_PORT 0 or absent: any free port)");
        return Ok(());
    }
    let port: u16 = match args.next() {
        Some(p) => p
            .parse()
            .map_err(|_| zeroservices::Error::bad_request(format!("not a port: {p}")))?,
        None => 0,
    };
    let network = NetworkConfig::from_env()?;
    let chat = ChatNode::start(&user, |name| Node::builder(name).network(network)).await?;
    let server = chat.serve(HttpConfig::new(port)).await?;
    println!(
        "{user} is in the chat: open http://{}/chat",
        server.local_addr()
    );
    zeroservices::signal::shutdown_signal().await;
    server.shutdown().await;
    chat.node().stop().await;
    Ok(())
}
