//! The live page in a real browser: headless Chromium driven over WebDriver (`chromedriver`,
//! started by the test on a free loopback port) opens `/` on a node's HTTP server, and the table
//! follows creates, patches, a custom action and a delete made through REST, without reloading;
//! then the server goes away while the collection changes, comes back, and the page reconnects
//! and resumes from its cursor: the changes it missed show, and it did not list the collection
//! again. Away for longer than the change log keeps, it gets `cursor_expired` and lists the
//! collection again. A screenshot goes to `target/test-output/live-page.png`.
//!
//! Needs the Debian packages `chromium` and `chromium-driver` (`scripts/test.sh` installs them);
//! `ZS_TEST_CHROMEDRIVER` and `ZS_TEST_CHROMIUM` override their paths. The browser test is
//! `#[ignore]`d (`scripts/test.sh` runs it); asked to run without chromedriver, it fails.
//!
//! Also: `GET /` answers JSON to API clients and the page to browsers.

mod http_common;

use std::net::TcpListener;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use futures::FutureExt;
use http_common::*;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use zeroservices::Limits;
use zeroservices::Node;
use zeroservices::changes::Retention;
use zeroservices::http::HttpConfig;
use zeroservices::medium::MemoryCluster;

/// How long the page may take to show a change.
const DEADLINE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn root_answers_json_to_api_clients_and_the_page_to_browsers() {
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let (server, base) = start(&node, HttpConfig::new(0)).await;
    let http = client();

    for accept in [Some("application/json"), Some("*/*"), None] {
        let mut request = http.get(format!("{base}/"));
        if let Some(accept) = accept {
            request = request.header("accept", accept);
        }
        let response = request.send().await.unwrap();
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(content_type.starts_with("application/json"), "{accept:?}");
        let (status, body) = json(response).await;
        assert_eq!(
            (status, body),
            (200, json!({"resources": ["chat", "power"]})),
            "{accept:?}"
        );
    }

    let browser_accept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    for (path, accept) in [
        ("/", Some("text/html")),
        ("/", Some(browser_accept)),
        ("/live", Some("application/json")),
        ("/live", None),
        ("/live?collection=chat", None),
    ] {
        let mut request = http.get(format!("{base}{path}"));
        if let Some(accept) = accept {
            request = request.header("accept", accept);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{path} {accept:?}");
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], "text/html; charset=utf-8");
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'sha256-") && csp.contains("connect-src 'self'"),
            "{csp}"
        );
        let html = response.text().await.unwrap();
        assert!(html.starts_with("<!doctype html>"), "{path} {accept:?}");
        assert!(html.contains("/realtime") || html.contains("\"realtime\""));
    }
    server.shutdown().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium and ChromeDriver: run by scripts/test.sh"]
async fn the_live_page_follows_changes_in_headless_chromium() {
    let driver_path = chromedriver().unwrap_or_else(|| {
        panic!(
            "the browser test needs chromedriver: none at /usr/bin/chromedriver and \
             ZS_TEST_CHROMEDRIVER is not set (install the Debian packages chromium and \
             chromium-driver; scripts/test.sh does it)"
        )
    });

    let cluster = MemoryCluster::new();
    // A short change log: the page's second absence outlasts it.
    let limits = Limits {
        change_log: Retention {
            max_entries: 8,
            max_age: Duration::from_secs(3600),
        },
        ..Limits::default()
    };
    let node = Node::builder("power_service")
        .memory(&cluster)
        .limits(limits)
        .resource::<Power>()
        .start()
        .await
        .unwrap();
    let driver = ChromeDriver::start(&driver_path);
    let browser = driver.session().await;
    // The session is closed (and Chromium with it) whether the checks pass or panic.
    let checks = AssertUnwindSafe(follow_changes(&browser, &node)).catch_unwind();
    let outcome = checks.await;
    let closed = browser.close().await;
    drop(driver);
    node.stop().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    closed.unwrap();
}

/// The checks of the browser test, on a fresh WebDriver session.
async fn follow_changes(browser: &Client, node: &zeroservices::Node) {
    let (server, base) = start(node, HttpConfig::new(0)).await;
    let addr = server.local_addr();
    let http = client();
    let create = async |id: &str, data: Value| {
        let response = http
            .post(format!("{base}/power"))
            .json(&json!({"resource_id": id, "resource_data": data}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
    };
    create("alpha", json!({"value": 2, "description": "the first"})).await;
    // Markup in data must show as text, never be parsed.
    create(
        "beta",
        json!({"value": 3, "description": "<img src=x onerror=\"window.__pwned=1\"><b>bold</b>"}),
    )
    .await;

    browser.set_window_size(1100, 560).await.unwrap();
    browser.goto(&format!("{base}/")).await.unwrap();

    // The two powers show, and the websocket is live. The page lists the collection when it
    // loads and again once subscribed (to catch up); a resource timing entry appears when a list
    // has completed, so wait for both before counting lists.
    let first = wait_for(
        browser,
        "the two powers, a live socket, both lists done",
        |s| {
            s.ids() == ["alpha", "beta"]
                && s.state == "live"
                && s.raw["lists"].as_u64().is_some_and(|n| n >= 2)
        },
    )
    .await;
    assert_eq!(first.cell("alpha", "value"), "2");
    assert_eq!(first.cell("alpha", "status"), "pending");
    assert_eq!(first.cell("alpha", "result"), "—");
    assert_eq!(
        first.cell("beta", "description"),
        "<img src=x onerror=\"window.__pwned=1\"><b>bold</b>"
    );
    assert_eq!(
        first.columns,
        ["id", "value", "status", "result", "description"]
    );
    assert_eq!(first.raw["injected"], 0, "data was parsed as markup");
    let loaded_at = first.raw["loadedAt"].clone();
    assert!(loaded_at.is_string());
    let lists_before = first.raw["lists"].as_u64().unwrap();
    // The WebDriver element API sees the same rows.
    let rows = browser
        .find_all(Locator::Css("#rows tr[data-id]"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);

    // Create, patch, a custom action, delete: all through REST.
    create("gamma", json!({"value": 4, "description": "added later"})).await;
    let patched = http
        .patch(format!("{base}/power/alpha"))
        .json(&json!({"patch": {"$set": {"value": 12}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status().as_u16(), 200);
    let squared = http
        .post(format!("{base}/power/gamma/square"))
        .send()
        .await
        .unwrap();
    assert_eq!(squared.status().as_u16(), 200);
    let deleted = http
        .delete(format!("{base}/power/beta"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 204);

    let after = wait_for(browser, "the new row, the new value, beta gone", |s| {
        s.ids() == ["alpha", "gamma"]
            && s.raw["present"] == json!(["alpha", "gamma"])
            && s.cell("alpha", "value") == "12"
            && s.cell("gamma", "result") == "16"
            && s.cell("gamma", "status") == "done"
    })
    .await;
    assert_eq!(after.cell("gamma", "value"), "4");
    assert_eq!(after.cell("gamma", "description"), "added later");
    assert_eq!(after.raw["loadedAt"], loaded_at, "the page was reloaded");
    assert_eq!(
        after.raw["lists"].as_u64().unwrap(),
        lists_before,
        "the page listed the collection again instead of applying the events"
    );
    assert_eq!(after.raw["count"], "2 resources");

    // The screenshot, with the changed rows.
    let png = browser.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let out = output_dir();
    std::fs::create_dir_all(&out).unwrap();
    let shot = out.join("live-page.png");
    std::fs::write(&shot, &png).unwrap();
    println!("screenshot: {}", shot.display());

    // The server goes away: the page says so. The collection changes meanwhile (the log now
    // holds 9 changes, the 8 last kept: the page's cursor, at the 6th, is still covered). The
    // server comes back: the page resumes from its cursor and shows the changes without
    // listing the collection again.
    server.shutdown().await;
    wait_for(browser, "the page to notice the server left", |s| {
        s.state == "reconnecting"
    })
    .await;
    let powers = node.collection::<Power>();
    powers
        .patch("alpha", zeroservices::patch!({"$set": {"value": 5}}))
        .await
        .unwrap();
    powers
        .create_with_id(
            "epsilon",
            Power {
                value: 8,
                status: Status::Pending,
                result: None,
                description: Some("made while away".into()),
            },
        )
        .await
        .unwrap();
    powers.delete("gamma").await.unwrap();
    let server = restart(node, addr).await;
    let resumed = wait_for(
        browser,
        "the page to reconnect and show what it missed",
        |s| s.state == "live" && s.ids() == ["alpha", "epsilon"] && s.cell("alpha", "value") == "5",
    )
    .await;
    assert_eq!(resumed.raw["loadedAt"], loaded_at, "the page was reloaded");
    assert_eq!(resumed.cell("epsilon", "description"), "made while away");
    assert_eq!(resumed.raw["count"], "2 resources");
    assert_eq!(
        resumed.raw["lists"].as_u64().unwrap(),
        lists_before,
        "the page listed the collection again instead of resuming from its cursor"
    );
    create("delta", json!({"value": 7})).await;
    let live_again = wait_for(browser, "events after the reconnection", |s| {
        s.ids() == ["alpha", "epsilon", "delta"]
    })
    .await;
    assert_eq!(live_again.raw["lists"].as_u64().unwrap(), lists_before);
    assert_eq!(live_again.cell("delta", "description"), "—");

    // Away longer than the log keeps (12 changes, 8 kept): the page is told its cursor expired,
    // starts a new stream and lists the collection once more.
    server.shutdown().await;
    wait_for(browser, "the page to notice the server left again", |s| {
        s.state == "reconnecting"
    })
    .await;
    for value in 100..112 {
        powers
            .patch("epsilon", zeroservices::patch!({"$set": {"value": value}}))
            .await
            .unwrap();
    }
    let server = restart(node, addr).await;
    let reloaded = wait_for(browser, "the page to list the collection again", |s| {
        s.state == "live"
            && s.cell("epsilon", "value") == "111"
            && s.raw["lists"].as_u64() == Some(lists_before + 1)
    })
    .await;
    assert_eq!(reloaded.raw["loadedAt"], loaded_at, "the page was reloaded");
    assert_eq!(reloaded.ids(), ["alpha", "epsilon", "delta"]);
    create("zeta", json!({"value": 1})).await;
    wait_for(browser, "events on the new stream", |s| {
        s.ids() == ["alpha", "epsilon", "delta", "zeta"]
    })
    .await;

    server.shutdown().await;
}

/// Serves `node` again on `addr`, retrying while the port is still being released.
async fn restart(
    node: &zeroservices::Node,
    addr: std::net::SocketAddr,
) -> zeroservices::http::HttpServer {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let config = HttpConfig::new(addr.port()).host(addr.ip());
        match zeroservices::http::serve(node.clone(), config).await {
            Ok(server) => return server,
            Err(e) if Instant::now() < deadline => {
                eprintln!("rebinding {addr}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot serve on {addr} again: {e}"),
        }
    }
}

/// `chromedriver`: `ZS_TEST_CHROMEDRIVER`, else `/usr/bin/chromedriver`, if it exists.
fn chromedriver() -> Option<PathBuf> {
    let path = std::env::var_os("ZS_TEST_CHROMEDRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromedriver"));
    path.is_file().then_some(path)
}

/// `target/test-output` (next to the `tmp` dir cargo gives integration tests).
fn output_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("test-output")
}

/// A chromedriver child process on a free loopback port, killed on drop, with a fresh Chromium
/// profile directory.
struct ChromeDriver {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl ChromeDriver {
    fn start(path: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let child = Command::new(path)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .arg(format!(
                "--log-path={}",
                dir.path().join("chromedriver.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", path.display()));
        Self { child, port, dir }
    }

    /// Waits until chromedriver listens, then opens a headless Chromium session.
    async fn session(&self) -> Client {
        let url = format!("http://127.0.0.1:{}", self.port);
        let profile = self.dir.path().join("profile");
        let mut args = vec![
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-extensions".to_owned(),
            "--no-proxy-server".to_owned(),
            // Nothing but loopback resolves: the browser cannot reach out.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1".to_owned(),
            "--window-size=1100,560".to_owned(),
            format!("--user-data-dir={}", profile.display()),
        ];
        if let Some(extra) = std::env::var_os("ZS_TEST_CHROMIUM_ARGS") {
            args.extend(
                extra
                    .to_string_lossy()
                    .split_whitespace()
                    .map(str::to_owned),
            );
        }
        let mut options = json!({ "args": args });
        let binary = std::env::var_os("ZS_TEST_CHROMIUM")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
        if binary.is_file() {
            options["binary"] = json!(binary.display().to_string());
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert("goog:chromeOptions".into(), options);

        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let attempt = ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&url)
                .await;
            match attempt {
                Ok(client) => return client,
                Err(e) if Instant::now() < deadline => {
                    // chromedriver not listening yet: poll.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let _ = e;
                }
                Err(e) => panic!(
                    "no WebDriver session from {url}: {e}\nchromedriver log:\n{}",
                    self.log()
                ),
            }
        }
    }

    fn log(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the page shows, read in one script.
#[derive(Debug)]
struct Shown {
    /// `data-state` of the connection pill.
    state: String,
    /// Header cells.
    columns: Vec<String>,
    /// Rows not leaving: id and `(field, text)` of each cell.
    rows: Vec<(String, Vec<(String, String)>)>,
    /// The whole answer of the script.
    raw: Value,
}

impl Shown {
    fn ids(&self) -> Vec<&str> {
        self.rows.iter().map(|(id, _)| id.as_str()).collect()
    }

    /// The text of a cell, `"<missing>"` when there is no such row or cell.
    fn cell(&self, id: &str, field: &str) -> String {
        self.rows
            .iter()
            .find(|(row, _)| row == id)
            .and_then(|(_, cells)| cells.iter().find(|(f, _)| f == field))
            .map_or_else(|| "<missing>".to_owned(), |(_, text)| text.clone())
    }
}

const READ_PAGE: &str = r##"
const rows = Array.from(document.querySelectorAll("#rows tr[data-id]"))
  .filter(tr => !tr.classList.contains("leaving"))
  .map(tr => [tr.dataset.id, Array.from(tr.querySelectorAll("td[data-field]"))
    .map(td => [td.dataset.field, td.textContent])]);
const lists = performance.getEntriesByType("resource")
  .filter(e => new URL(e.name).pathname === "/power").length;
return {
  loadedAt: window.__loadedAt || null,
  present: Array.from(document.querySelectorAll("#rows tr[data-id]")).map(tr => tr.dataset.id),
  state: document.getElementById("status").dataset.state,
  columns: Array.from(document.querySelectorAll("#head th")).map(th => th.textContent),
  count: document.getElementById("count").textContent,
  injected: document.querySelectorAll("#rows img, #rows b").length + (window.__pwned ? 1 : 0),
  lists,
  rows,
};
"##;

async fn read(browser: &Client) -> Shown {
    let raw = browser.execute(READ_PAGE, vec![]).await.unwrap();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|s| s.as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let rows = raw["rows"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|row| {
            let id = row[0].as_str().unwrap_or_default().to_owned();
            let cells = row[1]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|cell| {
                    let pair = strings(cell);
                    (pair[0].clone(), pair[1].clone())
                })
                .collect();
            (id, cells)
        })
        .collect();
    Shown {
        state: raw["state"].as_str().unwrap_or_default().to_owned(),
        columns: strings(&raw["columns"]),
        rows,
        raw,
    }
}

/// Reads the page until `done` holds, failing with the last reading after [`DEADLINE`].
async fn wait_for(browser: &Client, what: &str, done: impl Fn(&Shown) -> bool) -> Shown {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let shown = read(browser).await;
        if done(&shown) {
            return shown;
        }
        assert!(
            Instant::now() < deadline,
            "the page did not show {what} within {DEADLINE:?}; it shows {shown:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
