//! Serving the name server: the adapter between connections and the
//! [`NameServer`] actor.
//!
//! The name server is three layers, each importing only the ones below it:
//! [`crate::namesrv`] is the pure registry (`namesrv::state`),
//! [`crate::actors::namesrv`] the actor owning it, and this module the
//! wiring above the actors: [`handler`] decodes requests and asks the actor,
//! [`start_embedded`] starts the actor and serves connections inside a
//! broker, and [`run_standalone`] runs it as its own process.

pub mod handler;

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::{Addr, Arbiter, ArbiterHandle};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use crate::actors::namesrv::NameServer;
use crate::config::{Config, NamesrvSection};
use crate::server::{serve, ServeOptions};

pub use handler::NamesrvHandler;

/// Starts a name server in the current arbiter: binds `cfg.listen` (port 0
/// picks a free port), starts the supervised [`NameServer`] actor and serves
/// connections on `arbiters` (on the current arbiter when empty).
///
/// Returns the bound address and the actor. Must be called inside an actix
/// system.
pub async fn start_embedded(
    cfg: &NamesrvSection,
    opts: ServeOptions,
    arbiters: Vec<ArbiterHandle>,
    tree: &crate::observe::ActorTree,
    acl: crate::acl::Acl,
) -> io::Result<(SocketAddr, Addr<NameServer>)> {
    if cfg.broker_expiry_ms == 0 || cfg.scan_interval_ms == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "namesrv.broker_expiry_ms and namesrv.scan_interval_ms must be positive",
        ));
    }
    let listener = TcpListener::bind(&cfg.listen)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("name server cannot listen on {}: {e}", cfg.listen)))?;
    let local = listener.local_addr()?;
    let expiry_ms = cfg.broker_expiry_ms;
    let scan = Duration::from_millis(cfg.scan_interval_ms);
    let addr = tree
        .start(crate::observe::kind::NAME_SERVER, "0", None, move |stats| {
            NameServer::new(expiry_ms, scan).with_stats(stats)
        })
        .addr()
        .clone();
    let handler = Arc::new(NamesrvHandler::new(addr.clone()).with_acl(acl));
    let opts = ServeOptions {
        role: "namesrv",
        ..opts
    };
    actix_rt::spawn(serve(listener, arbiters, handler, opts));
    tracing::info!(listen = %local, expiry_ms, "name server started");
    Ok((local, addr))
}

/// Runs a standalone name server until SIGINT or SIGTERM.
///
/// Prints `ferromq namesrv ready: namesrv=<addr>` on stdout once it accepts
/// connections. Connection limits come from the `[broker]` section
/// (`max_frame_bytes`, `max_inflight_per_connection`, the response budget,
/// `idle_timeout_ms`, `frame_read_timeout_ms`, `max_connections`); one
/// network arbiter runs per CPU core. Its port speaks TLS as `[tls] mode`
/// says (`docs/security.md`).
pub fn run_standalone(cfg: Config) -> io::Result<()> {
    let system = actix_rt::System::new();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let arbiters: Vec<Arbiter> = (0..threads).map(|_| Arbiter::new()).collect();
    let handles: Vec<ArbiterHandle> = arbiters.iter().map(Arbiter::handle).collect();
    let opts = ServeOptions {
        tls: crate::tls::ServerTls::from_section(&cfg.tls)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("[tls]: {e}")))?,
        ..ServeOptions::from_config(&cfg.broker, "namesrv")
    };
    let result = system.block_on(async move {
        // Installed before "ready" so that a signal sent right after it is
        // a clean shutdown rather than the default kill.
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let acl = crate::acl::Acl::start(&cfg.acl).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tree = crate::observe::ActorTree::default();
        let (addr, _actor) = start_embedded(&cfg.namesrv, opts, handles, &tree, acl).await?;
        let mut stdout = io::stdout().lock();
        writeln!(stdout, "ferromq namesrv ready: namesrv={addr}")?;
        stdout.flush()?;
        drop(stdout);
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("SIGINT received; stopping"),
            _ = terminate.recv() => tracing::info!("SIGTERM received; stopping"),
        }
        Ok(())
    });
    for arbiter in &arbiters {
        arbiter.stop();
    }
    for arbiter in arbiters {
        let _ = arbiter.join();
    }
    result
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;

    use super::*;
    use crate::actors::namesrv::{GetRoute, Register};
    use crate::actors::namesrv_client::{
        BrokerIdentity, IsRegistered, NameServerClient, RegisterNow, TopicsFn, Unregister,
    };
    use crate::client::{ClientError, RemotingConnection};
    use crate::wire::control::{
        from_json, to_json, AllTopics, ClusterInfo, RegisterBroker, TopicInfo, TopicRef, TopicRoute,
    };
    use crate::wire::{Command, Status};
    use actix::Actor;

    const WAIT: Duration = Duration::from_secs(5);

    fn opts() -> ServeOptions {
        ServeOptions {
            max_frame_bytes: 1 << 20,
            max_inflight: 16,
            max_inflight_pulls: 4,
            role: "namesrv",
            ..ServeOptions::from_config(&crate::config::BrokerSection::default(), "namesrv")
        }
    }

    fn section(expiry_ms: u64, scan_interval_ms: u64) -> NamesrvSection {
        NamesrvSection {
            listen: "127.0.0.1:0".into(),
            broker_expiry_ms: expiry_ms,
            scan_interval_ms,
        }
    }

    fn identity() -> BrokerIdentity {
        BrokerIdentity {
            cluster: "DefaultCluster".into(),
            broker_name: "broker-a".into(),
            broker_id: 0,
            addr: "127.0.0.1:10911".into(),
        }
    }

    fn orders_topics() -> TopicsFn {
        Arc::new(|| BTreeMap::from([("orders".to_string(), TopicInfo { queues: 4 })]))
    }

    /// A name server (ACL off) on a free port, on the current arbiter.
    async fn start_test_namesrv(cfg: &NamesrvSection) -> (SocketAddr, Addr<NameServer>) {
        start_embedded(
            cfg,
            opts(),
            Vec::new(),
            &Default::default(),
            crate::acl::Acl::disabled(),
        )
        .await
        .unwrap()
    }

    async fn connect(addr: SocketAddr) -> RemotingConnection {
        RemotingConnection::connect(&addr.to_string(), WAIT, None)
            .await
            .unwrap()
    }

    async fn get_route(conn: &RemotingConnection, topic: &str) -> Result<TopicRoute, ClientError> {
        let header = to_json(&TopicRef { topic: topic.into() });
        let (_, body) = conn.request(Command::GetRoute, header, Bytes::new(), WAIT).await?;
        Ok(from_json(&body, "body").unwrap())
    }

    #[actix_rt::test]
    async fn broker_registers_and_clients_read_routes() {
        let (ns_addr, _ns) = start_test_namesrv(&section(60_000, 1_000)).await;
        let client = NameServerClient::new(
            vec![ns_addr.to_string()],
            identity(),
            Duration::from_secs(60),
            orders_topics(),
        )
        .start();
        let acked = tokio::time::timeout(WAIT, client.send(RegisterNow))
            .await
            .unwrap()
            .unwrap();
        assert!(acked);
        assert!(client.send(IsRegistered).await.unwrap());

        let conn = connect(ns_addr).await;
        conn.request(Command::Ping, Bytes::new(), Bytes::new(), WAIT)
            .await
            .unwrap();

        let route = get_route(&conn, "orders").await.unwrap();
        assert_eq!(route.topic, "orders");
        assert_eq!(route.brokers.len(), 1);
        assert_eq!(route.brokers[0].broker_name, "broker-a");
        assert_eq!(route.brokers[0].cluster, "DefaultCluster");
        assert_eq!(route.brokers[0].queues, 4);
        assert_eq!(route.brokers[0].addrs, [(0, "127.0.0.1:10911".to_string())].into());

        let (_, body) = conn
            .request(Command::GetAllTopics, Bytes::new(), Bytes::new(), WAIT)
            .await
            .unwrap();
        let all: AllTopics = from_json(&body, "body").unwrap();
        assert_eq!(all.topics, ["orders"]);

        let (_, body) = conn
            .request(Command::GetClusterInfo, Bytes::new(), Bytes::new(), WAIT)
            .await
            .unwrap();
        let info: ClusterInfo = from_json(&body, "body").unwrap();
        assert_eq!(info.brokers.len(), 1);
        assert_eq!(info.brokers[0].broker_name, "broker-a");
        assert_eq!(info.brokers[0].addr, "127.0.0.1:10911");
        assert!(info.brokers[0].last_register_ms_ago < 5_000);

        let err = get_route(&conn, "missing").await.unwrap_err();
        assert_eq!(err.status(), Some(Status::TopicNotExist));
        assert!(err.to_string().contains("no route for topic missing"), "{err}");

        let resp = conn
            .request_raw(Command::SendMessage, Bytes::new(), Bytes::new(), WAIT)
            .await
            .unwrap();
        assert_eq!(resp.status(), Status::UnknownCommand);
        assert!(resp.error_message().contains("not served by a name server"));

        tokio::time::timeout(WAIT, client.send(Unregister))
            .await
            .unwrap()
            .unwrap();
        assert!(!client.send(IsRegistered).await.unwrap());
        let err = get_route(&conn, "orders").await.unwrap_err();
        assert_eq!(err.status(), Some(Status::TopicNotExist));
        let (_, body) = conn
            .request(Command::GetClusterInfo, Bytes::new(), Bytes::new(), WAIT)
            .await
            .unwrap();
        assert!(from_json::<ClusterInfo>(&body, "body").unwrap().brokers.is_empty());
    }

    #[actix_rt::test]
    async fn bad_requests_are_answered_not_dropped() {
        let (ns_addr, _ns) = start_test_namesrv(&section(60_000, 1_000)).await;
        let conn = connect(ns_addr).await;
        let status = |cmd, header: &'static [u8]| {
            let conn = conn.clone();
            async move {
                conn.request_raw(cmd, Bytes::from_static(header), Bytes::new(), WAIT)
                    .await
                    .unwrap()
                    .status()
            }
        };
        assert_eq!(status(Command::GetRoute, b"not json").await, Status::MalformedFrame);
        assert_eq!(
            status(Command::GetRoute, br#"{"topic":"t","x":1}"#).await,
            Status::MalformedFrame
        );
        assert_eq!(
            status(Command::GetRoute, br#"{"topic":"a b"}"#).await,
            Status::InvalidArgument
        );
        assert_eq!(status(Command::RegisterBroker, b"{}").await, Status::MalformedFrame);
        assert_eq!(
            status(
                Command::RegisterBroker,
                br#"{"cluster":"c","broker_name":"","broker_id":0,"addr":"h:1","topics":{}}"#
            )
            .await,
            Status::InvalidArgument
        );
        assert_eq!(
            status(
                Command::RegisterBroker,
                br#"{"cluster":"c","broker_name":"b","broker_id":0,"addr":"h:1","topics":{"bad/name":{"queues":1}}}"#
            )
            .await,
            Status::InvalidArgument
        );
        assert_eq!(status(Command::UnregisterBroker, b"[]").await, Status::MalformedFrame);
        // Unregistering an unknown broker is not an error.
        assert_eq!(
            status(
                Command::UnregisterBroker,
                br#"{"cluster":"c","broker_name":"b","broker_id":0}"#
            )
            .await,
            Status::Success
        );
        // The connection is still usable after all of that.
        assert_eq!(status(Command::Ping, b"").await, Status::Success);
    }

    #[actix_rt::test]
    async fn silent_broker_expires() {
        let (_, ns) = start_test_namesrv(&section(300, 50)).await;
        let reg = RegisterBroker {
            cluster: "c".into(),
            broker_name: "b".into(),
            broker_id: 0,
            addr: "127.0.0.1:1".into(),
            topics: BTreeMap::from([("t".to_string(), TopicInfo { queues: 1 })]),
            replication: None,
        };
        ns.send(Register(reg, None)).await.unwrap().unwrap();
        assert!(ns.send(GetRoute("t".into())).await.unwrap().is_some());
        let gone = tokio::time::timeout(WAIT, async {
            while ns.send(GetRoute("t".into())).await.unwrap().is_some() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(gone.is_ok(), "broker was not expired");
    }

    #[actix_rt::test]
    async fn periodic_registration_keeps_broker_alive() {
        let (ns_addr, ns) = start_test_namesrv(&section(300, 50)).await;
        let client = NameServerClient::new(
            vec![ns_addr.to_string()],
            identity(),
            Duration::from_millis(100),
            orders_topics(),
        )
        .start();
        // Registered by the start-up round, without RegisterNow.
        tokio::time::timeout(WAIT, async {
            while !client.send(IsRegistered).await.unwrap() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
        // Several expiry periods later the route is still there.
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        assert!(ns.send(GetRoute("orders".into())).await.unwrap().is_some());
        // After Unregister, periodic registration stops: the route never
        // comes back over several register intervals.
        tokio::time::timeout(WAIT, client.send(Unregister))
            .await
            .unwrap()
            .unwrap();
        for _ in 0..25 {
            assert!(ns.send(GetRoute("orders".into())).await.unwrap().is_none());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(!client.send(IsRegistered).await.unwrap());
    }

    #[actix_rt::test]
    async fn register_now_needs_one_live_namesrv() {
        // Nothing listens on a port we bound and released.
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let lonely = NameServerClient::new(
            vec![dead.to_string()],
            identity(),
            Duration::from_secs(60),
            orders_topics(),
        )
        .start();
        let acked = tokio::time::timeout(WAIT, lonely.send(RegisterNow))
            .await
            .unwrap()
            .unwrap();
        assert!(!acked);
        assert!(!lonely.send(IsRegistered).await.unwrap());

        let (ns_addr, _ns) = start_test_namesrv(&section(60_000, 1_000)).await;
        let client = NameServerClient::new(
            vec![dead.to_string(), ns_addr.to_string()],
            identity(),
            Duration::from_secs(60),
            orders_topics(),
        )
        .start();
        let acked = tokio::time::timeout(WAIT, client.send(RegisterNow))
            .await
            .unwrap()
            .unwrap();
        assert!(acked);
        let conn = connect(ns_addr).await;
        assert_eq!(get_route(&conn, "orders").await.unwrap().brokers[0].queues, 4);
    }

    #[actix_rt::test]
    async fn register_now_publishes_topic_changes() {
        let (ns_addr, _ns) = start_test_namesrv(&section(60_000, 1_000)).await;
        let topics = Arc::new(std::sync::Mutex::new(BTreeMap::from([(
            "orders".to_string(),
            TopicInfo { queues: 4 },
        )])));
        let source = topics.clone();
        let topics_fn: TopicsFn = Arc::new(move || source.lock().unwrap().clone());
        let client = NameServerClient::new(
            vec![ns_addr.to_string()],
            identity(),
            Duration::from_secs(60),
            topics_fn,
        )
        .start();
        assert!(tokio::time::timeout(WAIT, client.send(RegisterNow))
            .await
            .unwrap()
            .unwrap());
        let conn = connect(ns_addr).await;
        assert!(get_route(&conn, "orders").await.is_ok());

        {
            let mut t = topics.lock().unwrap();
            t.remove("orders");
            t.insert("billing".to_string(), TopicInfo { queues: 2 });
        }
        assert!(tokio::time::timeout(WAIT, client.send(RegisterNow))
            .await
            .unwrap()
            .unwrap());
        let err = get_route(&conn, "orders").await.unwrap_err();
        assert_eq!(err.status(), Some(Status::TopicNotExist));
        assert_eq!(get_route(&conn, "billing").await.unwrap().brokers[0].queues, 2);
    }

    #[actix_rt::test]
    async fn bind_error_names_the_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut cfg = section(1_000, 100);
        cfg.listen = taken.local_addr().unwrap().to_string();
        let err = start_embedded(
            &cfg,
            opts(),
            Vec::new(),
            &Default::default(),
            crate::acl::Acl::disabled(),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains(&cfg.listen), "{err}");
    }
}
