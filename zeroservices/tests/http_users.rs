//! Users and the `Authorizer`: users from a users file (Argon2 hashes, roles) and from JWT
//! bearer tokens, with different rights, through every path the authorizer guards (list, get,
//! create, patch, delete, actions, the link actions, `GET /`, `/openapi.json`, the websocket);
//! wrong credentials and bad tokens; the caller carried to a remote owner, which decides too.

mod http_common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_common::*;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};
use zeroservices::http::{HttpConfig, JwtAuth, Operation, User, Users, hash_password};
use zeroservices::medium::MemoryCluster;
use zeroservices::prelude::*;

/// `power`: readers read, writers do anything. `chat`: only the `secret` role, for anything.
fn rules(user: Option<&User>, collection: &str, op: &Operation) -> bool {
    let Some(user) = user else { return false };
    let read = matches!(op, Operation::List | Operation::Get | Operation::Subscribe);
    match collection {
        "power" => user.has_role("writer") || (read && user.has_role("reader")),
        "chat" => user.has_role("secret"),
        _ => false,
    }
}

/// ann: writer and secret; bob: reader; cid: writer, no secret.
const ROLES: [(&str, &[&str]); 3] = [
    ("ann", &["writer", "secret"]),
    ("bob", &["reader"]),
    ("cid", &["writer"]),
];

fn password(user: &str) -> String {
    format!("{user}-password")
}

/// A users file of ann, bob and cid, with their roles.
fn users_file(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let mut text = String::from("# test users\n\n");
    for (user, roles) in ROLES {
        let hash = hash_password(&password(user)).unwrap();
        text.push_str(&format!("{user}:{hash}:{}\n", roles.join(",")));
    }
    let path = dir.path().join("users");
    std::fs::write(&path, text).unwrap();
    path
}

const SECRET: &[u8] = b"a test secret of more than 32 bytes, for HS256";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token for `user` with its roles, expiring `exp` (seconds since the epoch).
fn token(user: &str, exp: u64, key: &[u8]) -> String {
    let roles = ROLES.iter().find(|(u, _)| *u == user).unwrap().1;
    let claims = json!({"sub": user, "roles": roles, "exp": exp});
    let jwt = encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(key).unwrap(),
    )
    .unwrap();
    format!("Bearer {jwt}")
}

/// The `Authorization` header of each user.
type Auth = fn(&str) -> String;

fn basic_of(user: &str) -> String {
    basic(user, &password(user))
}

fn bearer_of(user: &str) -> String {
    token(user, now() + 600, SECRET)
}

async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    auth: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = http.request(method, url).header("authorization", auth);
    if let Some(body) = body {
        request = request.json(&body);
    }
    json(request.send().await.unwrap()).await
}

/// Every path, with ann, bob and cid.
async fn rights(base: &str, auth: Auth) {
    use reqwest::Method as M;
    let http = client();
    let (ann, bob, cid) = (auth("ann"), auth("bob"), auth("cid"));
    let url = |path: &str| format!("{base}{path}");
    let create = |collection: &str, id: &str, data: Value| {
        (
            url(&format!("/{collection}")),
            json!({"resource_id": id, "resource_data": data}),
        )
    };

    // create
    let (u, b) = create("power", "p1", json!({"value": 3}));
    assert_eq!(send(&http, M::POST, u, &ann, Some(b)).await.0, 201);
    let (u, b) = create("power", "p2", json!({"value": 4}));
    assert_eq!(send(&http, M::POST, u, &cid, Some(b)).await.0, 201);
    let (u, b) = create("power", "p3", json!({"value": 5}));
    let (status, body) = send(&http, M::POST, u, &bob, Some(b)).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "forbidden: create on power");
    let (u, b) = create("chat", "c1", json!({"text": "secret"}));
    assert_eq!(send(&http, M::POST, u, &ann, Some(b)).await.0, 201);
    let (u, b) = create("chat", "c2", json!({"text": "no"}));
    assert_eq!(send(&http, M::POST, u, &cid, Some(b)).await.0, 403);

    // list and get
    let (status, list) = send(&http, M::GET, url("/power"), &bob, None).await;
    assert_eq!((status, list.as_array().map(Vec::len)), (200, Some(2)));
    assert_eq!(
        send(&http, M::GET, url("/power/p1"), &bob, None).await.0,
        200
    );
    assert_eq!(send(&http, M::GET, url("/chat"), &bob, None).await.0, 403);
    assert_eq!(
        send(&http, M::GET, url("/chat/c1"), &bob, None).await.0,
        403
    );
    assert_eq!(
        send(&http, M::GET, url("/chat/c1"), &cid, None).await.0,
        403
    );
    assert_eq!(
        send(&http, M::GET, url("/chat/c1"), &ann, None).await.0,
        200
    );

    // patch
    let patch = json!({"patch": {"$set": {"value": 6}}});
    let (status, _) = send(&http, M::PATCH, url("/power/p1"), &bob, Some(patch.clone())).await;
    assert_eq!(status, 403);
    let (status, doc) = send(&http, M::PATCH, url("/power/p1"), &ann, Some(patch)).await;
    assert_eq!((status, &doc["resource_data"]["value"]), (200, &json!(6)));

    // actions: a resource action and a collection action
    let (status, body) = send(&http, M::POST, url("/power/p1/square"), &bob, None).await;
    assert_eq!(
        (status, &body["error"]),
        (403, &json!("forbidden: square on power"))
    );
    let (status, body) = send(&http, M::POST, url("/power/p1/square"), &ann, None).await;
    assert_eq!((status, body), (200, json!(36)));
    let reset = Some(json!({"value": 1}));
    assert_eq!(
        send(&http, M::POST, url("/power/reset"), &bob, reset.clone())
            .await
            .0,
        403
    );

    // add_link: a write on the source, a read of the target's collection
    let link = |target: [&str; 2]| Some(json!({"relation": "about", "target_id": target}));
    let add = url("/power/p1/add_link");
    let (status, body) = send(&http, M::POST, add.clone(), &bob, link(["power", "p2"])).await;
    assert_eq!(
        (status, &body["error"]),
        (403, &json!("forbidden: patch on power"))
    );
    let (status, body) = send(&http, M::POST, add.clone(), &cid, link(["chat", "c1"])).await;
    assert_eq!(
        (status, &body["error"]),
        (403, &json!("forbidden: get on chat"))
    );
    assert_eq!(
        send(&http, M::POST, add.clone(), &cid, link(["power", "p2"]))
            .await
            .0,
        200
    );
    assert_eq!(
        send(&http, M::POST, add.clone(), &ann, link(["chat", "c1"]))
            .await
            .0,
        200
    );

    // follow_links: the targets the user may not read are left out
    let follow = url("/power/p1/follow_links");
    let about = Some(json!({"relation": "about"}));
    let names = |body: &Value| -> Vec<String> {
        body.as_array()
            .unwrap_or_else(|| panic!("{body}"))
            .iter()
            .map(|t| {
                format!(
                    "{}/{}",
                    t["resource_name"].as_str().unwrap(),
                    t["resource_id"].as_str().unwrap()
                )
            })
            .collect()
    };
    let (status, body) = send(&http, M::POST, follow.clone(), &ann, about.clone()).await;
    assert_eq!(
        (status, names(&body)),
        (200, vec!["power/p2".to_owned(), "chat/c1".to_owned()])
    );
    let (status, body) = send(&http, M::POST, follow.clone(), &bob, about.clone()).await;
    assert_eq!((status, names(&body)), (200, vec!["power/p2".to_owned()]));

    // incoming_links: a list of the collection asked
    let incoming = |target: [&str; 2]| Some(json!({"relation": "about", "target_id": target}));
    let (status, body) = send(
        &http,
        M::POST,
        url("/power/incoming_links"),
        &bob,
        incoming(["chat", "c1"]),
    )
    .await;
    assert_eq!((status, body[0]["resource_id"].clone()), (200, json!("p1")));
    let (status, _) = send(
        &http,
        M::POST,
        url("/chat/incoming_links"),
        &bob,
        incoming(["power", "p1"]),
    )
    .await;
    assert_eq!(status, 403);

    // GET / and /openapi.json: only the collections the user may list
    let (_, index) = send(&http, M::GET, url("/"), &bob, None).await;
    assert_eq!(index, json!({"resources": ["power"]}));
    let (_, index) = send(&http, M::GET, url("/"), &ann, None).await;
    assert_eq!(index, json!({"resources": ["chat", "power"]}));
    let (status, doc) = send(&http, M::GET, url("/openapi.json"), &bob, None).await;
    assert_eq!(status, 200);
    let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    assert!(paths.iter().any(|p| p.starts_with("/power")), "{paths:?}");
    assert!(!paths.iter().any(|p| p.starts_with("/chat")), "{paths:?}");
    let (_, doc) = send(&http, M::GET, url("/openapi.json"), &ann, None).await;
    assert!(
        doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .any(|p| p.starts_with("/chat"))
    );

    // the websocket: bob sees power's events, not chat's
    let mut ws = ws_connect(base, Some(&bob)).await.unwrap();
    ws_subscribe(&mut ws, &["*"]).await;
    let (u, b) = create("chat", "c3", json!({"text": "hidden"}));
    assert_eq!(send(&http, M::POST, u, &ann, Some(b)).await.0, 201);
    let (u, b) = create("power", "p4", json!({"value": 7}));
    assert_eq!(send(&http, M::POST, u, &ann, Some(b)).await.0, 201);
    assert_eq!(ws_next(&mut ws).await["topic"], "power.create.p4");
    ws_assert_quiet(&mut ws, Duration::from_millis(100)).await;

    // delete
    assert_eq!(
        send(&http, M::DELETE, url("/power/p4"), &bob, None).await.0,
        403
    );
    assert_eq!(
        send(&http, M::DELETE, url("/chat/c3"), &cid, None).await.0,
        403
    );
    assert_eq!(
        send(&http, M::DELETE, url("/power/p4"), &cid, None).await.0,
        204
    );
    assert_eq!(
        send(&http, M::DELETE, url("/chat/c3"), &ann, None).await.0,
        204
    );
}

/// A node owning `power` and `chat`, with the rules installed on it.
async fn owner_with_rules(cluster: &MemoryCluster) -> Node {
    Node::builder("power_service")
        .memory(cluster)
        .resource::<Power>()
        .resource::<ChatMessage>()
        .authorizer(rules)
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn users_of_a_file_with_different_rights() {
    let dir = tempfile::tempdir().unwrap();
    let users = Users::load(users_file(&dir)).unwrap();
    let cluster = MemoryCluster::new();
    let node = owner_with_rules(&cluster).await;
    let (server, base) = start(&node, HttpConfig::new(0).users(users)).await;
    rights(&base, basic_of).await;

    // wrong passwords, unknown users, no credentials: 401
    let http = client();
    for auth in [
        basic("ann", "bob-password"),
        basic("ann", ""),
        basic("eve", "eve-password"),
        bearer_of("ann"), // no JWT configured
    ] {
        let response = http
            .get(format!("{base}/power"))
            .header("authorization", &auth);
        let (status, body) = json(response.send().await.unwrap()).await;
        assert_eq!(status, 401, "{auth}: {body}");
    }
    assert_eq!(
        json(http.get(format!("{base}/power")).send().await.unwrap())
            .await
            .0,
        401
    );
    let (_, doc) = json(
        http.get(format!("{base}/openapi.json"))
            .header("authorization", basic_of("bob"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(doc["security"], json!([{"basicAuth": []}]));
    server.shutdown().await;
    node.stop().await;
}

/// The users file is read again on `SIGHUP`: a user added logs in, a removed one (already
/// verified, so cached) is refused at once; a malformed file changes nothing.
#[cfg(unix)]
#[tokio::test]
async fn the_users_file_is_reloaded_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let path = users_file(&dir);
    let cluster = MemoryCluster::new();
    let node = owner_with_rules(&cluster).await;
    let config = HttpConfig::new(0).users(Users::load(&path).unwrap());
    let (server, base) = start(&node, config).await;
    let http = client();
    let status = |user: &'static str, pw: String| {
        let http = http.clone();
        let url = format!("{base}/power");
        async move {
            let response = http.get(url).header("authorization", basic(user, &pw));
            response.send().await.unwrap().status().as_u16()
        }
    };
    assert_eq!(status("bob", password("bob")).await, 200);
    assert_eq!(status("dan", password("dan")).await, 401);

    // bob removed, dan added (a reader).
    let dan = hash_password(&password("dan")).unwrap();
    let ann = hash_password(&password("ann")).unwrap();
    std::fs::write(&path, format!("ann:{ann}:writer\ndan:{dan}:reader\n")).unwrap();
    let hup = || {
        let sent = std::process::Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    };
    hup();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while status("dan", password("dan")).await != 200 {
        assert!(std::time::Instant::now() < deadline, "dan never let in");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status("bob", password("bob")).await, 401, "bob was removed");

    // A malformed file is refused: the users stay.
    std::fs::write(&path, "dan:not-a-hash\n").unwrap();
    hup();
    // The reload is asynchronous: wait for a change that cannot come, for a while, then check.
    for _ in 0..20 {
        assert_eq!(status("dan", password("dan")).await, 200);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.shutdown().await;
    node.stop().await;
}

#[tokio::test]
async fn jwt_users_with_different_rights() {
    let cluster = MemoryCluster::new();
    let node = owner_with_rules(&cluster).await;
    let jwt = JwtAuth::hs256(SECRET).unwrap();
    let (server, base) = start(&node, HttpConfig::new(0).jwt(jwt)).await;
    rights(&base, bearer_of).await;

    // expired, signed with another key, without exp, garbage: 401
    let unsigned_exp = {
        let claims = json!({"sub": "ann", "roles": ["writer"]});
        let jwt = encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET).unwrap(),
        )
        .unwrap();
        format!("Bearer {jwt}")
    };
    let http = client();
    for auth in [
        token("ann", now() - 3600, SECRET),
        token(
            "ann",
            now() + 600,
            b"another secret of more than 32 bytes, wrong",
        ),
        unsigned_exp,
        "Bearer not.a.token".to_owned(),
        "Bearer".to_owned(),
        basic("ann", "ann-password"), // no Basic users configured
    ] {
        let response = http
            .get(format!("{base}/power"))
            .header("authorization", &auth);
        let (status, body) = json(response.send().await.unwrap()).await;
        assert_eq!(status, 401, "{auth}: {body}");
        assert!(body["error"].is_string());
    }
    // The OpenAPI document names the bearer scheme.
    let (_, doc) = json(
        http.get(format!("{base}/openapi.json"))
            .header("authorization", bearer_of("bob"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(doc["security"], json!([{"bearerAuth": []}]));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearerAuth"]["scheme"],
        "bearer"
    );
    let bad = ws_connect(&base, Some(&token("bob", now() - 3600, SECRET)))
        .await
        .unwrap_err();
    assert!(bad.contains("401"), "{bad}");
    server.shutdown().await;
    node.stop().await;
}

/// What the owner's authorizer was asked: user, roles, collection, operation.
type Asked = (String, Vec<String>, String, String);

/// The gateway has no authorizer: the owner's decides, with the user the request carries.
#[tokio::test]
async fn the_caller_reaches_a_remote_owner() {
    let seen: Arc<Mutex<Vec<Asked>>> = Arc::default();
    let cluster = MemoryCluster::new();
    let record = seen.clone();
    let owner = Node::builder("power_service")
        .memory(&cluster)
        .resource::<Power>()
        .resource::<ChatMessage>()
        .authorizer(
            move |user: Option<&User>, collection: &str, op: &Operation| {
                let user = user.expect("a request from HTTP carries its user");
                record.lock().unwrap().push((
                    user.name.clone(),
                    user.roles.clone(),
                    collection.to_owned(),
                    op.name().to_owned(),
                ));
                rules(Some(user), collection, op)
            },
        )
        .start()
        .await
        .unwrap();
    let gateway = gateway(&cluster, Duration::from_secs(5)).await;
    gateway
        .wait_for_collection("chat", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(gateway.authorizer().is_none());
    let config = HttpConfig::new(0).jwt(JwtAuth::hs256(SECRET).unwrap());
    let (server, base) = start(&gateway, config).await;
    let http = client();
    let (ann, bob) = (bearer_of("ann"), bearer_of("bob"));
    let post = |path: &str, auth: &str, body: Value| {
        http.post(format!("{base}{path}"))
            .header("authorization", auth)
            .json(&body)
            .send()
    };
    let created = post(
        "/chat",
        &ann,
        json!({"resource_id": "c1", "resource_data": {"text": "x"}}),
    );
    assert_eq!(json(created.await.unwrap()).await.0, 201);
    let created = post(
        "/power",
        &ann,
        json!({"resource_id": "p1", "resource_data": {"value": 2}}),
    );
    assert_eq!(json(created.await.unwrap()).await.0, 201);
    // The gateway let bob through; the owner refused him.
    let (status, body) = json(
        http.get(format!("{base}/chat/c1"))
            .header("authorization", &bob)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, &body["error"]),
        (403, &json!("forbidden: get on chat"))
    );
    let created = post("/power", &bob, json!({"resource_data": {"value": 3}}));
    assert_eq!(json(created.await.unwrap()).await.0, 403);
    // add_link and follow_links, decided by the owner.
    let link = json!({"relation": "about", "target_id": ["chat", "c1"]});
    assert_eq!(
        json(post("/power/p1/add_link", &ann, link).await.unwrap())
            .await
            .0,
        200
    );
    let about = json!({"relation": "about"});
    let (status, body) = json(
        post("/power/p1/follow_links", &bob, about.clone())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body), (200, json!([])));
    let (status, body) = json(post("/power/p1/follow_links", &ann, about).await.unwrap()).await;
    assert_eq!((status, body[0]["resource_id"].clone()), (200, json!("c1")));

    let seen = seen.lock().unwrap().clone();
    let asked = |user: &str, collection: &str, op: &str| {
        seen.iter()
            .any(|(u, _, c, o)| u == user && c == collection && o == op)
    };
    assert!(asked("bob", "chat", "get"), "{seen:?}");
    assert!(asked("bob", "power", "create"), "{seen:?}");
    assert!(
        asked("ann", "power", "patch"),
        "add_link on the source: {seen:?}"
    );
    assert!(asked("ann", "chat", "get"), "add_link's target: {seen:?}");
    assert!(
        asked("bob", "power", "get"),
        "follow_links' source: {seen:?}"
    );
    let bob_roles = &seen.iter().find(|(u, ..)| u == "bob").unwrap().1;
    assert_eq!(bob_roles, &vec!["reader".to_owned()]);
    server.shutdown().await;
    gateway.stop().await;
    owner.stop().await;
}

/// `zeroservices hash-password` reads the password on stdin and prints a hash a users file
/// takes; without a password it exits 2.
#[test]
fn the_hash_password_command() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let run = |input: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_zeroservices"))
            .arg("hash-password")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run("correct horse\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hash = String::from_utf8(out.stdout).unwrap();
    let hash = hash.trim();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let users = Users::parse(&format!("ann:{hash}:admin\n"), "users").unwrap();
    assert_eq!(
        users.verify("ann", "correct horse"),
        Some(User::new("ann").roles(["admin"]))
    );
    assert_eq!(users.verify("ann", "correct horse\n"), None);
    let empty = run("");
    assert_eq!(empty.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&empty.stderr).contains("stdin"));
}
