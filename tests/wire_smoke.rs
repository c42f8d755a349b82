//! Protocol-level checks against the real broker binary, without the client
//! library: batch send, pull, long polling, offsets, queries.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferromq::client::RemotingConnection;
use ferromq::store::record::StoredRecord;
use ferromq::wire::control::{to_json, CreateTopic, QueryById, QueryByKey, QueueOffsets, QueueRef};
use ferromq::wire::pull::{PullRequest, PullResponse, PullStatus};
use ferromq::wire::send::{SendEntry, SendRequest, SendResponse};
use ferromq::wire::{Command as Cmd, Status};

struct Broker {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_broker(extra_env: &[(&str, &str)]) -> Broker {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferromq"));
    cmd.args([
        "broker",
        "--listen",
        "127.0.0.1:0",
        "--namesrv-listen",
        "127.0.0.1:0",
        "--http",
        "0",
        "--data-dir",
    ])
    .arg(dir.path())
    .env("FERROMQ__STORE__SEGMENT_BYTES", "1048576")
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(30)).expect("broker ready line");
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("broker="))
        .expect("broker= in ready line")
        .to_string();
    Broker { child, addr, _dir: dir }
}

fn entry(body: &str, tag: &str, key: &str) -> SendEntry {
    let mut properties = BTreeMap::new();
    properties.insert("TAGS".to_string(), tag.to_string());
    properties.insert("KEYS".to_string(), key.to_string());
    SendEntry {
        flags: 0,
        born_timestamp: 1,
        properties,
        body: Bytes::from(body.to_string()),
    }
}

const T: Duration = Duration::from_secs(5);

async fn pull(conn: &RemotingConnection, offset: u64, wait_ms: u32, tags: &str) -> PullResponse {
    let req = PullRequest {
        topic: "smoke".into(),
        queue_id: 1,
        offset,
        max_count: 32,
        max_wait_ms: wait_ms,
        tag_expression: tags.into(),
    };
    let (_, body) = conn
        .request(Cmd::PullMessage, Bytes::new(), req.encode(), T)
        .await
        .unwrap();
    PullResponse::decode(body).unwrap()
}

#[tokio::test]
async fn batch_send_pull_long_poll_and_queries() {
    let broker = start_broker(&[("FERROMQ__BROKER__AUTO_CREATE_TOPICS", "false")]);
    let conn = RemotingConnection::connect(&broker.addr, T, None).await.unwrap();

    // Auto-create is off: sending to an unknown topic fails loudly.
    let send = |entries: Vec<SendEntry>| SendRequest {
        topic: "smoke".into(),
        queue_id: 1,
        entries,
    };
    let err = conn
        .request(
            Cmd::SendMessage,
            Bytes::new(),
            send(vec![entry("x", "a", "k")]).encode(),
            T,
        )
        .await;
    assert_eq!(err.unwrap_err().status(), Some(Status::TopicNotExist));

    let create = to_json(&CreateTopic {
        topic: "smoke".into(),
        queues: 2,
        ttl_ms: None,
    });
    conn.request(Cmd::CreateTopic, create, Bytes::new(), T).await.unwrap();

    // A long poll parked before the data arrives is answered by it.
    let poller = {
        let conn = conn.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            (pull(&conn, 0, 5000, "").await, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let batch: Vec<SendEntry> = (0..10)
        .map(|i| {
            entry(
                &format!("m{i}"),
                if i % 2 == 0 { "even" } else { "odd" },
                &format!("key{i}"),
            )
        })
        .collect();
    let (_, body) = conn
        .request(Cmd::SendMessage, Bytes::new(), send(batch).encode(), T)
        .await
        .unwrap();
    let sent = SendResponse::decode(body).unwrap();
    assert_eq!(
        sent.stored.iter().map(|s| s.queue_offset).collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );

    let (woken, waited) = poller.await.unwrap();
    assert_eq!(woken.status, PullStatus::Found);
    assert!(
        waited < Duration::from_millis(4000),
        "woken by the data, not the deadline: {waited:?}"
    );

    let all = pull(&conn, 0, 0, "").await;
    let records = StoredRecord::decode_all(all.records, all.count).unwrap();
    assert_eq!(records.len(), 10);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.queue_offset, i as u64);
        assert_eq!(&r.body[..], format!("m{i}").as_bytes());
    }
    assert_eq!((all.next_offset, all.max_offset), (10, 10));

    let odd = pull(&conn, 0, 0, "odd").await;
    let odd = StoredRecord::decode_all(odd.records, odd.count).unwrap();
    assert_eq!(odd.iter().map(|r| r.queue_offset).collect::<Vec<_>>(), [1, 3, 5, 7, 9]);

    // Past the end with no wait: nothing new; far past: offset moved.
    assert_eq!(pull(&conn, 10, 0, "").await.status, PullStatus::NoNewMessage);
    let moved = pull(&conn, 99, 0, "").await;
    assert_eq!((moved.status, moved.next_offset), (PullStatus::OffsetMoved, 10));
    // A long poll with nothing arriving ends at its deadline.
    let started = Instant::now();
    assert_eq!(pull(&conn, 10, 300, "").await.status, PullStatus::NoNewMessage);
    assert!(started.elapsed() >= Duration::from_millis(280));

    let (_, body) = conn
        .request(
            Cmd::GetOffsets,
            to_json(&QueueRef {
                topic: "smoke".into(),
                queue: 1,
            }),
            Bytes::new(),
            T,
        )
        .await
        .unwrap();
    let offs: QueueOffsets = serde_json::from_slice(&body).unwrap();
    assert_eq!((offs.min_offset, offs.max_offset), (0, 10));

    let msg_id = records[3].msg_id().to_string();
    let (_, body) = conn
        .request(Cmd::QueryMessageById, to_json(&QueryById { msg_id }), Bytes::new(), T)
        .await
        .unwrap();
    assert_eq!(&StoredRecord::decode(body).unwrap().body[..], b"m3");

    let q = QueryByKey {
        topic: "smoke".into(),
        key: "key7".into(),
        max: 10,
    };
    let (_, body) = conn
        .request(Cmd::QueryMessageByKey, to_json(&q), Bytes::new(), T)
        .await
        .unwrap();
    let count = u32::from_be_bytes(body[..4].try_into().unwrap());
    let found = StoredRecord::decode_all(body.slice(4..), count).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(&found[0].body[..], b"m7");

    // A queue id past the topic's queues is refused.
    let bad = SendRequest {
        topic: "smoke".into(),
        queue_id: 2,
        entries: vec![entry("x", "a", "k")],
    };
    let err = conn
        .request(Cmd::SendMessage, Bytes::new(), bad.encode(), T)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(Status::QueueNotExist));
}
