//! The chat example's behaviour on three in-process nodes: joins, leaves, broadcast, and a
//! direct message that only its target sees.

use std::time::Duration;

use futures::StreamExt;
use zeroservices::medium::MemoryCluster;
use zeroservices::{Event, EventStream, Node};
use zeroservices_examples::chat_node::ChatNode;

async fn next(events: &mut EventStream) -> Event {
    tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("no chat event within 5 s")
        .expect("stream ended")
}

/// No further event within a short while (for "reaches only its target").
async fn nothing(events: &mut EventStream) {
    if let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(300), events.next()).await {
        panic!("unexpected event {} {}", e.topic, e.data);
    }
}

#[tokio::test]
async fn three_users_chat_and_one_leaves() {
    let cluster = MemoryCluster::new();
    let start = |user: &'static str| {
        let cluster = cluster.clone();
        async move {
            ChatNode::start(user, |name| Node::builder(name).memory(&cluster))
                .await
                .unwrap()
        }
    };
    let ann = start("ann").await;
    let mut ann_events = ann.node().subscribe("chat");
    let bob = start("bob").await;
    let mut bob_events = bob.node().subscribe("chat");
    let cid = start("cid").await;
    let mut cid_events = cid.node().subscribe("chat");

    // Joins appear live.
    assert_eq!(next(&mut ann_events).await.topic, "chat.join.bob");
    assert_eq!(next(&mut ann_events).await.topic, "chat.join.cid");
    assert_eq!(next(&mut bob_events).await.topic, "chat.join.cid");
    assert_eq!(ann.users(), ["bob", "cid"]);
    assert_eq!(cid.users(), ["ann", "bob"]);

    // A broadcast reaches everyone, the sender included.
    ann.say("hello all").await;
    for events in [&mut ann_events, &mut bob_events, &mut cid_events] {
        let e = next(events).await;
        assert_eq!(e.topic, "chat.message.ann");
        assert_eq!(e.data["text"], "hello all");
    }

    // A direct message reaches its target (and the sender's own page), nobody else.
    ann.tell("bob", "psst").await.unwrap();
    let e = next(&mut bob_events).await;
    assert_eq!(e.topic, "chat.direct.ann");
    assert_eq!(
        (e.data["to"].as_str(), e.data["text"].as_str()),
        (Some("bob"), Some("psst"))
    );
    let mine = next(&mut ann_events).await;
    assert_eq!(mine.topic, "chat.direct.ann");
    nothing(&mut cid_events).await;
    assert!(ann.tell("dan", "anyone?").await.is_err());

    // Cid leaves; the others see it.
    cid.node().stop().await;
    for events in [&mut ann_events, &mut bob_events] {
        let e = next(events).await;
        assert_eq!(e.topic, "chat.leave.cid");
        assert_eq!(e.data["reason"], "goodbye");
    }
    assert_eq!(ann.users(), ["bob"]);
    ann.node().stop().await;
    bob.node().stop().await;
}
