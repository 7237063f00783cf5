//! The randomizer of the original FOSDEM demo: creates 20 powers through the REST API, then
//! keeps patching random ones back to `pending` with new values, so the worker has work and the
//! live page keeps moving.
//!
//! Run it against `api` or `api_power`, from the repository root:
//!
//! ```text
//! cargo run --release --example randomizer
//! cargo run --release --example randomizer -- --url http://127.0.0.1:5001 --interval-ms 500 --rounds 100
//! ```
//!
//! Expect `created 20 powers` and then one line per patch. It stops after `--rounds` patches
//! (default: forever) or on Ctrl-C. It speaks plain HTTP/1.1 to the URL, nothing else.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Args {
    host: String,
    port: u16,
    interval: Duration,
    rounds: Option<u64>,
    count: u64,
}

fn usage() -> ! {
    eprintln!(
        "usage: randomizer [--url http://127.0.0.1:5001] [--interval-ms 1000] [--rounds N] [--count 20]"
    );
    std::process::exit(2)
}

fn args() -> Args {
    let mut out = Args {
        host: "127.0.0.1".into(),
        port: 5001,
        interval: Duration::from_millis(1000),
        rounds: None,
        count: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--url" => {
                let url = value();
                let rest = url.strip_prefix("http://").unwrap_or_else(|| {
                    eprintln!("only http:// URLs are supported: {url}");
                    std::process::exit(2)
                });
                let hostport = rest.split('/').next().unwrap_or(rest);
                let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, "80"));
                out.host = host.to_owned();
                out.port = port.parse().unwrap_or_else(|_| usage());
            }
            "--interval-ms" => {
                out.interval = Duration::from_millis(value().parse().unwrap_or_else(|_| usage()))
            }
            "--rounds" => out.rounds = Some(value().parse().unwrap_or_else(|_| usage())),
            "--count" => out.count = value().parse().unwrap_or_else(|_| usage()),
            "-h" | "--help" => {
                println!(
                    "randomizer: creates powers through the REST API, then patches random ones back to pending.\n\
                     --url URL          the API (default http://127.0.0.1:5001)\n\
                     --interval-ms MS   time between patches (default 1000)\n\
                     --rounds N         stop after N patches (default: never)\n\
                     --count N          powers to create (default 20)"
                );
                std::process::exit(0)
            }
            _ => usage(),
        }
    }
    out
}

/// One HTTP/1.1 request with a JSON body; returns the status and the JSON answer.
async fn call(
    args: &Args,
    method: &str,
    path: &str,
    body: &Value,
) -> std::io::Result<(u16, Value)> {
    let payload = body.to_string();
    let mut stream = tokio::time::timeout(
        Duration::from_secs(5),
        TcpStream::connect((args.host.as_str(), args.port)),
    )
    .await
    .map_err(|_| std::io::Error::other("connect timed out"))??;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
        args.host,
        args.port,
        payload.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .map_err(|_| std::io::Error::other("response timed out"))??;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((
        status,
        serde_json::from_str(body.trim()).unwrap_or(Value::Null),
    ))
}

/// A small xorshift generator: random enough for a demo, no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args = args();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(42)
        | 1;
    let mut rng = Rng(seed);
    let mut ids = Vec::new();
    for i in 0..args.count {
        let value = rng.below(100) as i64;
        let body = json!({"resource_data": {"value": value, "status": "pending", "description": format!("power #{i}")}});
        match call(&args, "POST", "/power", &body).await {
            Ok((201, reply)) => {
                if let Some(id) = reply["resource_id"].as_str() {
                    ids.push(id.to_owned());
                }
            }
            Ok((status, reply)) => {
                eprintln!("create failed: {status} {reply}");
                return std::process::ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("cannot reach http://{}:{}: {e}", args.host, args.port);
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    println!("created {} powers", ids.len());
    let mut round = 0u64;
    while args.rounds.is_none_or(|n| round < n) {
        tokio::select! {
            () = tokio::time::sleep(args.interval) => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let id = &ids[rng.below(ids.len() as u64) as usize];
        let value = rng.below(1000) as i64;
        let patch = json!({"patch": {"$set": {"value": value, "status": "pending"}, "$unset": {"result": ""}}});
        match call(&args, "PATCH", &format!("/power/{id}"), &patch).await {
            Ok((200, _)) => println!("{id}: value = {value}, pending"),
            Ok((status, reply)) => eprintln!("patch {id} failed: {status} {reply}"),
            Err(e) => eprintln!("patch {id} failed: {e}"),
        }
        round += 1;
    }
    std::process::ExitCode::SUCCESS
}
