//! Access control on a real broker over TCP: every command code against
//! six callers (anonymous, wrong secret, SUB only, PUB only, non-admin,
//! admin), the CLI's refusals, reloading the ACL file, IP whitelists,
//! internal topics and the name server's trust in brokers.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use ferromq::client::{ConnectOptions, Credentials, RemotingConnection};
use ferromq::wire::delivery::{ReceiveRequest, SettleRequest};
use ferromq::wire::pull::PullRequest;
use ferromq::wire::send::{SendEntry, SendRequest};
use ferromq::wire::{Command, Frame, Status};
use serde_json::{json, Value};

const ROOT: (&str, &str) = ("root", "root-secret-0001");

/// Messages the admin stores on orders/0 before the matrix runs (so every
/// caller's commit, 1 to 6, is a valid offset).
const SEEDS: u64 = 10;

const ACL_FILE: &str = r#"
[[accounts]]
access_key = "root"
secret_key = "root-secret-0001"
admin = true

[[accounts]]
access_key = "producer"
secret_key = "producer-secret1"
default_topic_perm = "DENY"
topic_perms = ["orders=PUB"]

[[accounts]]
access_key = "consumer"
secret_key = "consumer-secret1"
topic_perms = ["orders=SUB"]
group_perms = ["billing=SUB"]

[[accounts]]
access_key = "user"
secret_key = "user-secret-0001"
topic_perms = ["orders=PUB|SUB", "victim-*=PUB|SUB"]
group_perms = ["billing=SUB"]
"#;

/// The six callers of the matrix, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Caller {
    Anonymous,
    WrongSecret,
    PubOnly,
    SubOnly,
    NonAdmin,
    Admin,
}

impl Caller {
    const ALL: [Caller; 6] = [
        Caller::Anonymous,
        Caller::WrongSecret,
        Caller::PubOnly,
        Caller::SubOnly,
        Caller::NonAdmin,
        Caller::Admin,
    ];

    fn credentials(self) -> Option<Credentials> {
        let (k, s) = match self {
            Caller::Anonymous => return None,
            Caller::WrongSecret => ("user", "user-secret-9999"),
            Caller::PubOnly => ("producer", "producer-secret1"),
            Caller::SubOnly => ("consumer", "consumer-secret1"),
            Caller::NonAdmin => ("user", "user-secret-0001"),
            Caller::Admin => ROOT,
        };
        Some(Credentials::new(k, s))
    }

    fn tag(self) -> &'static str {
        match self {
            Caller::Anonymous => "anon",
            Caller::WrongSecret => "wrong",
            Caller::PubOnly => "pub",
            Caller::SubOnly => "sub",
            Caller::NonAdmin => "user",
            Caller::Admin => "admin",
        }
    }

    fn index(self) -> u64 {
        Caller::ALL.iter().position(|c| *c == self).unwrap_or(0) as u64
    }
}

/// What a command needs, as `docs/security.md` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Nothing,
    AnyAccount,
    Pub,
    Sub,
    Admin,
}

fn need(cmd: Command) -> Need {
    use Command::*;
    match cmd {
        Ping => Need::Nothing,
        SendMessage => Need::Pub,
        PullMessage | GetOffsets | TopicStats | QueryMessageByKey | SearchOffset | ReceiveMessage | AckMessage
        | NackMessage | JoinGroup | SyncGroup | Heartbeat | LeaveGroup | CommitOffsets | FetchOffsets => Need::Sub,
        QueryMessageById | CreateTopic | DeleteTopic | ListGroups | DescribeGroup | ResetOffsets | ReplicaHandshake
        | ReplicaFetch | ReplicaTopics | ReplicaAck | RegisterBroker | UnregisterBroker => Need::Admin,
        GetRoute | GetAllTopics | GetClusterInfo => Need::AnyAccount,
        NotifyRebalance => unreachable!("a push, never a request"),
    }
}

fn allowed(caller: Caller, need: Need) -> bool {
    match (caller, need) {
        (Caller::WrongSecret, _) => false,
        (_, Need::Nothing) | (Caller::Admin, _) => true,
        (Caller::Anonymous, _) => false,
        (_, Need::AnyAccount) => true,
        (Caller::PubOnly, Need::Pub) | (Caller::SubOnly, Need::Sub) => true,
        (Caller::NonAdmin, Need::Pub | Need::Sub) => true,
        _ => false,
    }
}

fn acl_env(file: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("FERROMQ__ACL__ENABLED", "true".into()),
        ("FERROMQ__ACL__FILE", file.display().to_string()),
        ("FERROMQ__ACL__ACCESS_KEY", ROOT.0.into()),
        ("FERROMQ__ACL__SECRET_KEY", ROOT.1.into()),
        ("FERROMQ__ACL__RELOAD_INTERVAL_MS", "200".into()),
        ("FERROMQ__GROUP__INITIAL_REBALANCE_DELAY_MS", "0".into()),
    ]
}

fn start_broker(dir: &Path, acl_file: &Path, extra: &[(&str, &str)]) -> ServerProcess {
    let mut env: Vec<(&str, String)> = small_store_env().into_iter().map(|(k, v)| (k, v.to_string())).collect();
    env.extend(acl_env(acl_file));
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ServerProcess::broker(dir, &["--broker-name", "broker-a"], &env)
}

async fn connect(addr: &str, caller: Caller) -> RemotingConnection {
    let options = ConnectOptions {
        credentials: caller.credentials(),
        tls: None,
    };
    RemotingConnection::connect_with(addr, Duration::from_secs(5), None, Arc::new(options))
        .await
        .expect("connect")
}

fn header(v: Value) -> Bytes {
    Bytes::from(serde_json::to_vec(&v).expect("json"))
}

fn send_body(topic: &str, body: &str) -> Bytes {
    SendRequest {
        topic: topic.into(),
        queue_id: 0,
        entries: vec![SendEntry {
            flags: 0,
            born_timestamp: 1,
            properties: BTreeMap::new(),
            body: Bytes::from(body.to_string()),
        }],
    }
    .encode()
}

/// A valid request for `cmd` on behalf of `caller` (resources named so
/// that what each caller changes can be told apart afterwards).
fn request(cmd: Command, caller: Caller, member: &str, broker_name: &str) -> (Bytes, Bytes) {
    use Command::*;
    let tag = caller.tag();
    let none = Bytes::new();
    match cmd {
        Ping | ListGroups | GetAllTopics | GetClusterInfo | ReplicaTopics => (none.clone(), none),
        SendMessage => (none, send_body("orders", &format!("from-{tag}"))),
        PullMessage => {
            let pull = PullRequest {
                topic: "orders".into(),
                queue_id: 0,
                offset: 0,
                max_count: 1,
                max_wait_ms: 0,
                tag_expression: "*".into(),
            };
            (none, pull.encode())
        }
        GetOffsets => (header(json!({"topic": "orders", "queue": 0})), none),
        QueryMessageById => (header(json!({"msg_id": "00000000000000000000000000000000"})), none),
        QueryMessageByKey => (header(json!({"topic": "orders", "key": "k", "max": 4})), none),
        CreateTopic => (header(json!({"topic": format!("created-{tag}"), "queues": 2})), none),
        DeleteTopic => (header(json!({"topic": format!("victim-{tag}")})), none),
        TopicStats | GetRoute => (header(json!({"topic": "orders"})), none),
        JoinGroup => (
            header(
                json!({"group": "billing", "client_id": format!("c-{tag}"), "topics": ["orders"],
                          "session_timeout_ms": 10_000}),
            ),
            none,
        ),
        SyncGroup | Heartbeat => (
            header(json!({"group": "billing", "member_id": member, "generation": 1})),
            none,
        ),
        LeaveGroup => (header(json!({"group": "billing", "member_id": member})), none),
        CommitOffsets => (
            header(
                json!({"group": "billing", "offsets": [{"topic": "orders", "broker_name": broker_name,
                          "queue": 0, "offset": 1 + caller.index()}]}),
            ),
            none,
        ),
        FetchOffsets => (header(json!({"group": "billing", "topic": "orders"})), none),
        DescribeGroup => (header(json!({"group": "billing"})), none),
        ResetOffsets => (
            header(json!({"group": "resetme", "topic": "orders", "to": "latest"})),
            none,
        ),
        SearchOffset => (header(json!({"topic": "orders", "queue": 0, "timestamp": 0})), none),
        ReceiveMessage => {
            let r = ReceiveRequest {
                group: "billing".into(),
                topic: "orders".into(),
                queue_id: 1,
                start_offset: 0,
                max_count: 1,
                max_wait_ms: 0,
                ack_timeout_ms: 30_000,
                flags: 0,
                tag_expression: "*".into(),
            };
            (none, r.encode())
        }
        AckMessage | NackMessage => {
            let s = SettleRequest {
                group: "billing".into(),
                topic: "orders".into(),
                queue_id: 1,
                requeue: true,
                offsets: vec![123_456],
            };
            (none, s.encode())
        }
        ReplicaHandshake => (
            header(
                json!({"broker_name": broker_name, "broker_id": 7, "addr": "127.0.0.1:1",
                          "start_offset": 0, "max_offset": 0, "segment_bytes": 1 << 20, "last_records": []}),
            ),
            none,
        ),
        ReplicaFetch => (
            header(json!({"broker_id": 7, "from": 0, "max_bytes": 65_536, "max_wait_ms": 0})),
            none,
        ),
        ReplicaAck => (header(json!({"broker_id": 7, "confirmed": 0})), none),
        RegisterBroker => (
            header(
                json!({"cluster": "DefaultCluster", "broker_name": format!("fake-{tag}"), "broker_id": 0,
                          "addr": "127.0.0.1:1", "topics": {}}),
            ),
            none,
        ),
        UnregisterBroker => (
            header(json!({"cluster": "DefaultCluster", "broker_name": format!("fake-{tag}"), "broker_id": 0})),
            none,
        ),
        NotifyRebalance => (none.clone(), none),
    }
}

/// Commands a test can send: every code but the server's push.
fn every_command() -> Vec<Command> {
    (0..=u16::MAX)
        .filter_map(Command::from_code)
        .filter(|c| *c != Command::NotifyRebalance)
        .collect()
}

fn is_namesrv_command(cmd: Command) -> bool {
    (100..=104).contains(&cmd.code())
}

/// The end (max offset) of queue 0 of `topic`, once it reaches `want`
/// (the end moves when a message is dispatched, just after its send is
/// answered), or what it is after 5 s.
async fn queue_end_reaching(conn: &RemotingConnection, topic: &str, want: u64) -> u64 {
    let mut end = 0;
    for _ in 0..100 {
        let (_, body) = conn
            .request(
                Command::GetOffsets,
                header(json!({"topic": topic, "queue": 0})),
                Bytes::new(),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        let offsets: Value = serde_json::from_slice(&body).unwrap();
        end = offsets["max_offset"].as_u64().unwrap_or(0);
        if end == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    end
}

/// `group`'s committed offset of orders/0 (0 when none).
async fn committed_on_queue0(admin: &RemotingConnection, group: &str) -> u64 {
    let (_, body) = admin
        .request(
            Command::FetchOffsets,
            header(json!({"group": group, "topic": "orders"})),
            Bytes::new(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let committed: Value = serde_json::from_slice(&body).unwrap();
    committed["offsets"]
        .as_array()
        .and_then(|a| a.iter().find(|o| o["queue"] == json!(0)))
        .map_or(0, |o| o["offset"].as_u64().unwrap_or(0))
}

/// True when `topic` exists (its stats are answered).
async fn topic_exists(admin: &RemotingConnection, topic: &str) -> bool {
    let answer = admin
        .request_raw(
            Command::TopicStats,
            header(json!({"topic": topic})),
            Bytes::new(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    answer.status() == Status::Success
}

/// What must still hold after `caller`'s pass if everything denied to it
/// changed nothing.
async fn assert_nothing_denied_changed(admin: &RemotingConnection, caller: Caller, sends_so_far: u64) {
    let tag = caller.tag();
    let may_admin = allowed(caller, Need::Admin);
    // The topic it tried to delete is still there unless it may delete; the
    // one it tried to create exists only if it may create.
    assert_eq!(
        topic_exists(admin, &format!("victim-{tag}")).await,
        !may_admin,
        "victim-{tag}"
    );
    assert_eq!(
        topic_exists(admin, &format!("created-{tag}")).await,
        may_admin,
        "created-{tag}"
    );
    // Messages stored: exactly the allowed sends so far (one each, queue 0).
    let want = SEEDS + sends_so_far;
    assert_eq!(
        queue_end_reaching(admin, "orders", want).await,
        want,
        "after {caller:?}"
    );
    // The group's committed offset is not this caller's unless it may commit.
    let q0 = committed_on_queue0(admin, "billing").await;
    assert_eq!(
        q0 == 1 + caller.index(),
        allowed(caller, Need::Sub),
        "billing offset {q0} after {caller:?}"
    );
    // resetme's offset moves only by an admin's reset.
    let at = committed_on_queue0(admin, "resetme").await;
    assert_eq!(at == 0, !may_admin, "resetme at {at} after {caller:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_answers_each_caller_as_the_rules_say_and_refusals_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl.toml");
    std::fs::write(&acl, ACL_FILE).unwrap();
    let broker = start_broker(&dir.path().join("data"), &acl, &[]);
    let t = Duration::from_secs(5);
    let admin = connect(&broker.broker_addr, Caller::Admin).await;
    for topic in ["orders".to_string()]
        .into_iter()
        .chain(Caller::ALL.iter().map(|c| format!("victim-{}", c.tag())))
    {
        admin
            .request(
                Command::CreateTopic,
                header(json!({"topic": topic, "queues": 2})),
                Bytes::new(),
                t,
            )
            .await
            .unwrap();
    }
    for _ in 0..SEEDS {
        admin
            .request(Command::SendMessage, Bytes::new(), send_body("orders", "seed"), t)
            .await
            .unwrap();
    }
    // Every caller's commit (1 to 6) must be below the queue's end, which
    // moves once the seeds are dispatched.
    assert_eq!(
        queue_end_reaching(&admin, "orders", SEEDS).await,
        SEEDS,
        "seeds dispatched"
    );
    let commit = json!({"group": "resetme", "offsets": [{"topic": "orders", "broker_name": "broker-a",
                        "queue": 0, "offset": 0}]});
    admin
        .request(Command::CommitOffsets, header(commit), Bytes::new(), t)
        .await
        .unwrap();

    let mut sends = 0u64;
    let mut checked = 0usize;
    for caller in Caller::ALL {
        let broker_conn = connect(&broker.broker_addr, caller).await;
        let ns_conn = connect(&broker.namesrv_addr, caller).await;
        let mut member = "no-member".to_string();
        for cmd in every_command() {
            let conn = if is_namesrv_command(cmd) {
                &ns_conn
            } else {
                &broker_conn
            };
            let (h, b) = request(cmd, caller, &member, "broker-a");
            let answer: Frame = conn.request_raw(cmd, h, b, t).await.unwrap();
            let denied = answer.status() == Status::AccessDenied;
            let want = allowed(caller, need(cmd));
            assert_eq!(
                !denied,
                want,
                "{caller:?} {cmd:?}: got {} {:?}",
                answer.status(),
                answer.error_message()
            );
            if denied {
                let msg = answer.error_message();
                assert!(msg.starts_with("access denied"), "{caller:?} {cmd:?}: {msg}");
                let names_it = match (caller, need(cmd)) {
                    (Caller::WrongSecret, _) => msg.contains("does not match"),
                    (_, Need::Pub) => msg.contains("PUB on topic orders"),
                    (Caller::Anonymous, _) => msg.contains("needs an account"),
                    (_, Need::Sub) => msg.contains("SUB on topic orders") || msg.contains("SUB on group billing"),
                    (_, Need::Admin) => msg.contains("admin") || msg.contains("register brokers"),
                    _ => true,
                };
                assert!(names_it, "{caller:?} {cmd:?}: {msg}");
            } else if matches!(
                cmd,
                Command::Ping
                    | Command::SendMessage
                    | Command::PullMessage
                    | Command::GetOffsets
                    | Command::TopicStats
                    | Command::CreateTopic
                    | Command::DeleteTopic
                    | Command::CommitOffsets
                    | Command::FetchOffsets
                    | Command::ListGroups
                    | Command::ResetOffsets
                    | Command::GetRoute
                    | Command::GetAllTopics
                    | Command::GetClusterInfo
                    | Command::RegisterBroker
                    | Command::UnregisterBroker
            ) {
                assert_eq!(
                    answer.status(),
                    Status::Success,
                    "{caller:?} {cmd:?}: {}",
                    answer.error_message()
                );
            }
            if cmd == Command::SendMessage && !denied {
                sends += 1;
            }
            if cmd == Command::JoinGroup && answer.status() == Status::Success {
                let v: Value = serde_json::from_slice(&answer.body).unwrap();
                member = v["member_id"].as_str().unwrap_or("no-member").to_string();
            }
            checked += 1;
        }
        assert_nothing_denied_changed(&admin, caller, sends).await;
    }
    assert_eq!(checked, every_command().len() * Caller::ALL.len());
    assert_eq!(sends, 3, "producer, user and root sent");
}

/// `ferromq ARGS` with credentials (`None`: anonymous).
fn cli_as(ns: &str, who: Option<(&str, &str)>, args: &[&str], stdin: &[u8]) -> std::process::Output {
    let extra: Vec<String> = who
        .map(|(k, s)| ["--access-key", k, "--secret-key", s].map(String::from).to_vec())
        .unwrap_or_default();
    cli_with_extra(ns, args, &extra, stdin)
}

#[test]
fn the_cli_signs_says_access_denied_and_reloaded_rules_and_whitelists_take_effect() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl.toml");
    std::fs::write(&acl, ACL_FILE).unwrap();
    let broker = start_broker(&dir.path().join("data"), &acl, &[]);
    let ns = broker.namesrv_addr.clone();
    let producer = Some(("producer", "producer-secret1"));

    // Anonymous: refused, non-zero exit, says so.
    let anon = cli_as(&ns, None, &["topic", "list"], b"");
    assert!(!anon.status.success());
    assert!(stderr_text(&anon).contains("access denied"), "{}", stderr_text(&anon));
    // An admin creates topics; a producer may not.
    let out = cli_as(&ns, Some(ROOT), &["topic", "create", "orders", "--queues", "2"], b"");
    assert!(out.status.success(), "{}", stderr_text(&out));
    let out = cli_as(&ns, Some(ROOT), &["topic", "create", "late", "--queues", "1"], b"");
    assert!(out.status.success(), "{}", stderr_text(&out));
    let out = cli_as(&ns, producer, &["topic", "delete", "orders"], b"");
    assert!(!out.status.success());
    assert!(stderr_text(&out).contains("access denied") && stderr_text(&out).contains("admin"));
    // The producer sends to orders, not to late (yet), and may not read.
    let out = cli_as(&ns, producer, &["produce", "--topic", "orders"], b"one\ntwo\n");
    assert!(out.status.success(), "{}", stderr_text(&out));
    let out = cli_as(&ns, producer, &["produce", "--topic", "late"], b"x\n");
    assert!(!out.status.success());
    let err = stderr_text(&out);
    assert!(
        err.contains("access denied") && err.contains("PUB on topic late"),
        "{err}"
    );
    let out = cli_as(&ns, producer, &["consume", "--topic", "orders", "--count", "1"], b"");
    assert!(!out.status.success());
    assert!(
        stderr_text(&out).contains("SUB on topic orders"),
        "{}",
        stderr_text(&out)
    );
    // The consumer reads what was sent.
    let out = cli_as(
        &ns,
        Some(("consumer", "consumer-secret1")),
        &["consume", "--topic", "orders", "--count", "2", "--from", "earliest"],
        b"",
    );
    assert!(out.status.success(), "{}", stderr_text(&out));
    // Internal topics are the broker's, even for an admin.
    let out = cli_as(
        &ns,
        Some(ROOT),
        &["produce", "--topic", "__consumer_offsets"],
        b"forged\n",
    );
    assert!(!out.status.success());
    assert!(stderr_text(&out).contains("internal"), "{}", stderr_text(&out));
    let out = cli_as(&ns, Some(ROOT), &["topic", "delete", "__delay"], b"");
    assert!(!out.status.success());

    // Reload: grant PUB on late; the change takes effect without a restart.
    let granted = ACL_FILE.replace(
        r#"topic_perms = ["orders=PUB"]"#,
        r#"topic_perms = ["orders=PUB", "late=PUB"]"#,
    );
    std::fs::write(&acl, &granted).unwrap();
    let took = wait_until(Duration::from_secs(10), || {
        cli_as(&ns, producer, &["produce", "--topic", "late"], b"x\n")
            .status
            .success()
    });
    assert!(took, "the new permission never took effect");
    // A broken file changes nothing (and the broker says why).
    std::fs::write(&acl, "[[accounts]\nthis is not toml").unwrap();
    assert!(wait_until(Duration::from_secs(10), || broker
        .stderr()
        .contains("does not parse")));
    let out = cli_as(&ns, producer, &["produce", "--topic", "late"], b"y\n");
    assert!(out.status.success(), "{}", stderr_text(&out));
    assert!(!cli_as(&ns, None, &["topic", "list"], b"").status.success());

    // Whitelists: a global entry that is not us changes nothing; one that
    // is lets anonymous clients in.
    let elsewhere = format!("global_white_remote_addresses = [\"127.0.0.2\"]\n{granted}");
    std::fs::write(&acl, &elsewhere).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert!(!cli_as(&ns, None, &["topic", "list"], b"").status.success());
    let here = format!("global_white_remote_addresses = [\"127.0.0.0/8\"]\n{granted}");
    std::fs::write(&acl, &here).unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        cli_as(&ns, None, &["topic", "list"], b"").status.success()
    }));
    let out = cli_as(&ns, None, &["produce", "--topic", "late"], b"anon\n");
    assert!(out.status.success(), "{}", stderr_text(&out));
    // A per-account whitelist refuses the account from elsewhere.
    let fenced = granted.replace(
        r#"secret_key = "producer-secret1""#,
        "secret_key = \"producer-secret1\"\nwhite_remote_address = \"10.1.*.*\"",
    );
    std::fs::write(&acl, &fenced).unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        let out = cli_as(&ns, producer, &["produce", "--topic", "orders"], b"z\n");
        !out.status.success() && stderr_text(&out).contains("may not connect from")
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_servers_refuse_strangers_and_impostors() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl.toml");
    std::fs::write(&acl, ACL_FILE).unwrap();
    let broker = start_broker(&dir.path().join("data"), &acl, &[]);
    let t = Duration::from_secs(5);
    let impostor = |id: u64| {
        header(
            json!({"cluster": "DefaultCluster", "broker_name": "broker-a", "broker_id": id,
                      "addr": "127.0.0.1:1", "topics": {"orders": {"queues": 4}}}),
        )
    };
    // Anonymous and non-admin registrations are refused.
    for caller in [Caller::Anonymous, Caller::NonAdmin] {
        let conn = connect(&broker.namesrv_addr, caller).await;
        let answer = conn
            .request_raw(Command::RegisterBroker, impostor(0), Bytes::new(), t)
            .await
            .unwrap();
        assert_eq!(answer.status(), Status::AccessDenied, "{caller:?}");
        let unreg = header(json!({"cluster": "DefaultCluster", "broker_name": "broker-a", "broker_id": 0}));
        let answer = conn
            .request_raw(Command::UnregisterBroker, unreg, Bytes::new(), t)
            .await
            .unwrap();
        assert_eq!(answer.status(), Status::AccessDenied, "{caller:?}");
    }
    // Even with a broker account, a live master is not replaced.
    let root = connect(&broker.namesrv_addr, Caller::Admin).await;
    let answer = root
        .request_raw(Command::RegisterBroker, impostor(0), Bytes::new(), t)
        .await
        .unwrap();
    assert_eq!(answer.status(), Status::AccessDenied);
    assert!(answer.error_message().contains("alive"), "{}", answer.error_message());
    assert!(broker.stderr().contains("registration refused"));
    // Routes still name the real broker.
    let (_, body) = root
        .request(Command::GetClusterInfo, Bytes::new(), Bytes::new(), t)
        .await
        .unwrap();
    let info: Value = serde_json::from_slice(&body).unwrap();
    let addrs: Vec<String> = info["brokers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["addr"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(addrs, std::slice::from_ref(&broker.broker_addr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_acl_internal_topics_and_live_brokers_are_still_protected() {
    let dir = tempfile::tempdir().unwrap();
    let broker = ServerProcess::broker(dir.path(), &[], &small_store_env());
    let t = Duration::from_secs(5);
    let conn = connect(&broker.broker_addr, Caller::Anonymous).await;
    for topic in ["__consumer_offsets", "__delay", "%DLQ%billing"] {
        let a = conn
            .request_raw(Command::DeleteTopic, header(json!({"topic": topic})), Bytes::new(), t)
            .await
            .unwrap();
        assert_eq!(a.status(), Status::InternalTopic, "{topic}: {}", a.error_message());
        let a = conn
            .request_raw(
                Command::CreateTopic,
                header(json!({"topic": topic, "queues": 64})),
                Bytes::new(),
                t,
            )
            .await
            .unwrap();
        assert_eq!(a.status(), Status::InternalTopic, "{topic}");
        let a = conn
            .request_raw(Command::SendMessage, Bytes::new(), send_body(topic, "forged"), t)
            .await
            .unwrap();
        assert_eq!(a.status(), Status::InternalTopic, "{topic}");
    }
    // The offsets topic is intact: a commit survives.
    let commit = json!({"group": "g", "offsets": [{"topic": "t", "broker_name": "broker-a", "queue": 0, "offset": 1}]});
    conn.request(
        Command::CreateTopic,
        header(json!({"topic": "t", "queues": 1})),
        Bytes::new(),
        t,
    )
    .await
    .unwrap();
    conn.request(Command::SendMessage, Bytes::new(), send_body("t", "one"), t)
        .await
        .unwrap();
    // A commit may not pass the queue's end, which moves once the message
    // is dispatched.
    assert_eq!(queue_end_reaching(&conn, "t", 1).await, 1);
    let a = conn
        .request_raw(Command::CommitOffsets, header(commit), Bytes::new(), t)
        .await
        .unwrap();
    assert_eq!(a.status(), Status::Success, "{}", a.error_message());
    // A fake master from another address is refused while the real one lives.
    let ns = connect(&broker.namesrv_addr, Caller::Anonymous).await;
    let fake = header(
        json!({"cluster": "DefaultCluster", "broker_name": "broker-a", "broker_id": 0,
                             "addr": "127.0.0.1:1", "topics": {"t": {"queues": 1}}}),
    );
    let a = ns
        .request_raw(Command::RegisterBroker, fake, Bytes::new(), t)
        .await
        .unwrap();
    assert_eq!(a.status(), Status::AccessDenied, "{}", a.error_message());
    let acks = produce(&broker.namesrv_addr, "t", &[], &["m1".to_string(), "m2".to_string()]);
    assert_eq!(acks.len(), 2);
}
