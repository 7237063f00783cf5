//! The embedded store under abuse: `kill -9` in the middle of a stream of writes loses no
//! acknowledged write and leaves a file that opens cleanly; a data dir held by another process,
//! a corrupted file and an unwritable dir give clear errors at open, never a panic.
//!
//! The child processes are this test binary, re-executed with `ZS_CRASH_CHILD` set to the role
//! (`writer`, `writers64`, `logger` or `holder`) and `ZS_CRASH_DIR` to the data dir; a child
//! exits when its stdin closes.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use zeroservices::store::{EmbeddedStore, Store};
use zeroservices::{Error, Patch, Query};

const COLLECTION: &str = "crash";
/// The writers in flight at once in `writers64`.
const WRITERS: usize = 64;

/// The entry point of the child processes; a no-op in a normal test run.
#[test]
fn crash_child() {
    let Ok(role) = std::env::var("ZS_CRASH_CHILD") else {
        return;
    };
    let dir = std::env::var("ZS_CRASH_DIR").expect("ZS_CRASH_DIR");
    // Exit as soon as the parent closes our stdin (or dies).
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        std::process::exit(0);
    });
    let store = EmbeddedStore::open(&dir).expect("child opens the store");
    let mut out = std::io::stdout().lock();
    // libtest's "test crash_child ... " has no newline yet: start our lines on a fresh one.
    writeln!(out).unwrap();
    match role.as_str() {
        "holder" => {
            writeln!(out, "OPEN").unwrap();
            out.flush().unwrap();
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        "writer" => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let start: u64 = std::env::var("ZS_CRASH_START").unwrap().parse().unwrap();
                for i in start.. {
                    let id = format!("r{i:08}");
                    store
                        .insert(
                            COLLECTION,
                            Some(&id),
                            json!({"n": i, "pad": "x".repeat(200)}),
                        )
                        .await
                        .unwrap();
                    writeln!(out, "ACK insert {id}").unwrap();
                    let counter = store
                        .patch(
                            COLLECTION,
                            "counter",
                            &Patch::new(json!({"$inc": {"n": 1}})),
                            None,
                        )
                        .await
                        .unwrap();
                    writeln!(out, "ACK counter {}", counter["n"]).unwrap();
                    out.flush().unwrap();
                }
            });
        }
        "writers64" => {
            // 64 writers in flight at once: their writes share commits (group commit).
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            drop(out);
            rt.block_on(async {
                let start: u64 = std::env::var("ZS_CRASH_START").unwrap().parse().unwrap();
                let writers: Vec<_> = (0..WRITERS)
                    .map(|w| {
                        let store = store.clone();
                        tokio::spawn(async move {
                            for i in 0.. {
                                let id = format!("s{start:04}-w{w:02}-{i:08}");
                                store
                                    .insert(
                                        COLLECTION,
                                        Some(&id),
                                        json!({"n": i, "pad": "x".repeat(200)}),
                                    )
                                    .await
                                    .unwrap();
                                let counter = store
                                    .patch(
                                        COLLECTION,
                                        "counter",
                                        &Patch::new(json!({"$inc": {"n": 1}})),
                                        None,
                                    )
                                    .await
                                    .unwrap();
                                let mut out = std::io::stdout().lock();
                                writeln!(out, "ACK insert {id}").unwrap();
                                writeln!(out, "ACK counter {}", counter["n"]).unwrap();
                                out.flush().unwrap();
                            }
                        })
                    })
                    .collect();
                for w in writers {
                    w.await.unwrap();
                }
            });
        }
        "logger" => {
            // An owner over this store: every create goes through its service, so its change
            // is logged in the same transaction.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let cluster = zeroservices::medium::MemoryCluster::new();
                let node = zeroservices::Node::builder("crash_service")
                    .memory(&cluster)
                    .store(store)
                    .resource::<Crash>()
                    .start()
                    .await
                    .unwrap();
                let crashes = node.collection::<Crash>();
                for n in 0.. {
                    let id = crashes.create(Crash { n }).await.unwrap();
                    writeln!(out, "ACK create {id}").unwrap();
                    out.flush().unwrap();
                }
            });
        }
        other => panic!("unknown child role {other}"),
    }
}

/// What the `logger` child creates.
#[zeroservices::resource(collection = "crash")]
pub struct Crash {
    /// Its number.
    pub n: i64,
}

/// `kill -9` of an owner in the middle of a stream of creates: the change log, written in each
/// change's transaction, holds every acknowledged create, in the order they were made, and
/// nothing that is not stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_change_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, mut out) = spawn_child("logger", dir.path(), 0);
    let mut acked = Vec::new();
    read_until(&mut out, |line| {
        if let Some(id) = line.strip_prefix("ACK create ") {
            acked.push(id.to_owned());
        }
        acked.len() >= 50
    });
    child.kill().unwrap();
    child.wait().unwrap();
    // Acknowledgements printed before the kill and not read yet.
    let mut rest = String::new();
    let _ = out.read_to_string(&mut rest);
    acked.extend(
        rest.lines()
            .filter_map(|l| l.strip_prefix("ACK create ").map(str::to_owned)),
    );
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let log = store.log_id().unwrap();
    let mut logged = Vec::new();
    let mut after = 0;
    loop {
        let page = store
            .read_log(
                COLLECTION,
                &log,
                zeroservices::changes::LogAfter::Seq(after),
                100,
            )
            .await
            .unwrap()
            .unwrap();
        assert!(!page.expired);
        let Some(last) = page.entries.last() else {
            break;
        };
        after = last.seq;
        logged.extend(page.entries);
    }
    let seqs: Vec<u64> = logged.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=logged.len() as u64).collect::<Vec<_>>(),
        "no gap"
    );
    let ids: Vec<&str> = logged
        .iter()
        .map(|e| e.data["resource_id"].as_str().unwrap())
        .collect();
    assert!(
        ids.len() >= acked.len() && ids[..acked.len()] == acked[..],
        "every acknowledged create is logged, in order: {} logged, {} acknowledged",
        ids.len(),
        acked.len()
    );
    // At most the create in flight is logged without an acknowledgement, and it is stored.
    assert!(ids.len() <= acked.len() + 1);
    for id in &ids {
        assert!(
            store.get(COLLECTION, id).await.unwrap().is_some(),
            "{id} logged, not stored"
        );
    }
}

fn spawn_child(role: &str, dir: &Path, start: u64) -> (Child, BufReader<ChildStdout>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env("ZS_CRASH_CHILD", role)
        .env("ZS_CRASH_DIR", dir)
        .env("ZS_CRASH_START", start.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    (child, stdout)
}

/// Reads the child's lines until `want` returns true (or the child ends).
fn read_until(out: &mut BufReader<ChildStdout>, mut want: impl FnMut(&str) -> bool) {
    let mut line = String::new();
    loop {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            panic!("the child ended early");
        }
        if want(line.trim_end()) {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store
            .insert(COLLECTION, Some("counter"), json!({"n": 0}))
            .await
            .unwrap();
    }
    let mut acked: Vec<String> = Vec::new();
    let mut counter_acked = 0_i64;
    // Several rounds, killed after a different number of acknowledgements each time.
    for (round, kill_after) in [40_usize, 150, 7, 300].into_iter().enumerate() {
        let start = acked.len() as u64;
        let (mut child, mut out) = spawn_child("writer", dir.path(), start);
        let mut seen = 0;
        read_until(&mut out, |line| {
            if let Some(id) = line.strip_prefix("ACK insert ") {
                acked.push(id.to_owned());
                seen += 1;
            } else if let Some(n) = line.strip_prefix("ACK counter ") {
                counter_acked = n.parse().unwrap();
            }
            seen >= kill_after
        });
        // SIGKILL, mid-stream: the child is writing as fast as it can.
        child.kill().unwrap();
        child.wait().unwrap();
        // Acknowledgements already in the pipe count too.
        let mut rest = String::new();
        let _ = out.read_to_string(&mut rest);
        for line in rest.lines() {
            if let Some(id) = line.strip_prefix("ACK insert ") {
                acked.push(id.to_owned());
            } else if let Some(n) = line.strip_prefix("ACK counter ") {
                counter_acked = n.parse().unwrap();
            }
        }

        let store = EmbeddedStore::open(dir.path())
            .unwrap_or_else(|e| panic!("round {round}: the file must open cleanly: {e}"));
        let listed = store.list(COLLECTION, &Query::all()).await.unwrap();
        let ids: std::collections::HashSet<&str> =
            listed.iter().map(|(id, _)| id.as_str()).collect();
        for id in &acked {
            assert!(
                ids.contains(id.as_str()),
                "round {round}: acknowledged {id} is lost"
            );
        }
        for (id, doc) in &listed {
            if id != "counter" {
                assert_eq!(doc["pad"].as_str().map(str::len), Some(200), "{id} intact");
            }
        }
        let counter = store.get(COLLECTION, "counter").await.unwrap().unwrap();
        let n = counter["n"].as_i64().unwrap();
        assert!(
            n >= counter_acked,
            "round {round}: counter {n} < acknowledged {counter_acked}"
        );
        // Unacknowledged writes may or may not be there, but at most the one in flight.
        assert!(ids.len() - 1 <= acked.len() + 1, "round {round}");
        // Every id written before the kill is there; restart the next round after them.
        acked = listed
            .iter()
            .map(|(id, _)| id.clone())
            .filter(|id| id != "counter")
            .collect();
        acked.sort();
        eprintln!(
            "round {round}: killed after {} acknowledged writes; {} documents, counter {n}",
            kill_after,
            acked.len()
        );
        // The reopened store takes writes.
        store
            .insert(
                COLLECTION,
                Some(&format!("after{round}")),
                json!({"ok": true}),
            )
            .await
            .unwrap();
        store
            .delete(COLLECTION, &format!("after{round}"), None)
            .await
            .unwrap();
    }
}

/// `kill -9` with 64 writers in flight, their writes sharing commits: every acknowledged create
/// and counter increment survives the restart, and the file opens cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_64_writers_in_flight_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store
            .insert(COLLECTION, Some("counter"), json!({"n": 0}))
            .await
            .unwrap();
    }
    let mut acked: Vec<String> = Vec::new();
    let mut counter_acked = 0_i64;
    for (round, kill_after) in [500_usize, 64, 2000].into_iter().enumerate() {
        let (mut child, mut out) = spawn_child("writers64", dir.path(), round as u64);
        let mut seen = 0;
        let mut note = |line: &str| {
            if let Some(id) = line.strip_prefix("ACK insert ") {
                acked.push(id.to_owned());
                return 1;
            } else if let Some(n) = line.strip_prefix("ACK counter ") {
                counter_acked = counter_acked.max(n.parse().unwrap());
            }
            0
        };
        read_until(&mut out, |line| {
            seen += note(line);
            seen >= kill_after
        });
        child.kill().unwrap();
        child.wait().unwrap();
        let mut rest = String::new();
        let _ = out.read_to_string(&mut rest);
        for line in rest.lines() {
            note(line);
        }

        let store = EmbeddedStore::open(dir.path())
            .unwrap_or_else(|e| panic!("round {round}: the file must open cleanly: {e}"));
        let listed = store.list(COLLECTION, &Query::all()).await.unwrap();
        let ids: std::collections::HashSet<&str> =
            listed.iter().map(|(id, _)| id.as_str()).collect();
        for id in &acked {
            assert!(
                ids.contains(id.as_str()),
                "round {round}: acknowledged {id} is lost"
            );
        }
        for (id, doc) in &listed {
            if id != "counter" {
                assert_eq!(doc["pad"].as_str().map(str::len), Some(200), "{id} intact");
            }
        }
        let n = store.get(COLLECTION, "counter").await.unwrap().unwrap()["n"]
            .as_i64()
            .unwrap();
        assert!(
            n >= counter_acked,
            "round {round}: counter {n} < acknowledged {counter_acked}"
        );
        // Unacknowledged creates may be there too: at most one per writer and round (the one
        // in flight at the kill).
        assert!(
            ids.len() - 1 <= acked.len() + WRITERS * (round + 1),
            "round {round}"
        );
        eprintln!(
            "round {round}: killed after {} acknowledged creates; {} documents, counter {n}",
            acked.len(),
            ids.len() - 1
        );
    }
}

fn unavailable_message(result: zeroservices::Result<EmbeddedStore>) -> String {
    match result {
        Err(Error::Unavailable { message }) => message,
        Err(other) => panic!("expected Unavailable, got {other:?}"),
        Ok(_) => panic!("expected an error, the store opened"),
    }
}

#[test]
fn a_dir_open_in_another_process_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, mut out) = spawn_child("holder", dir.path(), 0);
    read_until(&mut out, |line| line == "OPEN");
    let message = unavailable_message(EmbeddedStore::open(dir.path()));
    eprintln!("{message}");
    assert!(message.contains("already open"), "{message}");
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );
    assert!(message.contains("ZS_STORE=embedded:"), "{message}");
    // Once the other process is gone, the dir opens.
    drop(child.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the holder did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    EmbeddedStore::open(dir.path()).unwrap();
}

#[test]
fn a_dir_open_in_this_process_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let first = EmbeddedStore::open(dir.path()).unwrap();
    let message = unavailable_message(EmbeddedStore::open(dir.path()));
    assert!(message.contains("already open"), "{message}");
    drop(first);
    EmbeddedStore::open(dir.path()).unwrap();
}

#[tokio::test]
async fn a_corrupted_file_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        for i in 0..200 {
            store
                .insert(
                    COLLECTION,
                    Some(&format!("d{i}")),
                    json!({"i": i, "text": "y".repeat(300)}),
                )
                .await
                .unwrap();
        }
    }
    let file = dir.path().join(zeroservices::store::embedded::FILE_NAME);
    let original = std::fs::read(&file).unwrap();

    // Garbage over the data pages (the header intact).
    let mut bytes = original.clone();
    let len = bytes.len();
    for (i, b) in bytes[4096..len].iter_mut().enumerate() {
        *b = (i * 31 % 251) as u8;
    }
    std::fs::write(&file, &bytes).unwrap();
    let message = unavailable_message(EmbeddedStore::open(dir.path()));
    eprintln!("damaged pages: {message}");
    assert!(message.contains(&file.display().to_string()), "{message}");
    assert!(
        message.contains("corrupted") || message.contains("cannot open"),
        "{message}"
    );

    // Not a redb file at all.
    std::fs::write(
        &file,
        b"this is not a database, just some text that is long enough".repeat(100),
    )
    .unwrap();
    let message = unavailable_message(EmbeddedStore::open(dir.path()));
    eprintln!("not a redb file: {message}");
    assert!(message.contains(&file.display().to_string()), "{message}");
    assert!(message.contains("move it aside"), "{message}");

    // Truncated.
    std::fs::write(&file, &original[..original.len() / 3]).unwrap();
    let message = unavailable_message(EmbeddedStore::open(dir.path()));
    eprintln!("truncated: {message}");
    assert!(message.contains(&file.display().to_string()), "{message}");
}

#[test]
fn an_unusable_dir_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    // A data dir under a regular file cannot be created.
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let bad = file.join("data");
    let message = unavailable_message(EmbeddedStore::open(&bad));
    eprintln!("{message}");
    assert!(message.contains(&bad.display().to_string()), "{message}");
    assert!(message.contains("ZS_STORE=embedded:"), "{message}");
}

/// A read-only data dir is refused clearly. Root writes to a read-only dir anyway, so this needs
/// a non-root user: `scripts/test.sh` runs it unless it runs as root.
#[cfg(unix)]
#[test]
#[ignore = "needs a non-root user: run by scripts/test.sh"]
fn a_read_only_dir_is_refused_clearly() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let ro = dir.path().join("read-only");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o500)).unwrap();
    let writable = std::fs::write(ro.join("probe"), b"x").is_ok();
    let message = (!writable).then(|| unavailable_message(EmbeddedStore::open(&ro)));
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert!(
        !writable,
        "this test needs a non-root user: the read-only dir {} was writable (running as root? \
         scripts/test.sh leaves this test out when it runs as root)",
        ro.display()
    );
    let message = message.unwrap();
    eprintln!("{message}");
    assert!(message.contains(&ro.display().to_string()), "{message}");
    assert!(message.contains("writable"), "{message}");
}
