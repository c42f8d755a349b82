//! The broker process, the composition root above every layer: opens (and recovers) the store, starts the actor tree and
//! the listeners, prints the ready line, and shuts down cleanly on SIGINT or
//! SIGTERM.
//!
//! Threads: the system arbiter (name server, registration, accept loops),
//! a store arbiter (CommitLogWriter), a dispatch arbiter (Dispatcher), one
//! network arbiter per core (connections, queue actors, group coordinators)
//! and the flusher thread.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::{Arbiter, ArbiterHandle};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use crate::actors::ack_policy::{policy_for, AckPolicy, AllOf};
use crate::actors::commitlog_writer::CommitLogWriter;
use crate::actors::delay_scheduler::DelayScheduler;
use crate::actors::dispatcher::{Dispatcher, Subscribe};
use crate::actors::group_registry::GroupRegistry;
use crate::actors::heartbeat_scanner::HeartbeatScanner;
use crate::actors::namesrv_client::{BrokerIdentity, IsRegistered, NameServerClient, RegisterNow, Unregister};
use crate::actors::queue_registry::QueueRegistry;
use crate::actors::replication::follower::{self, FollowerParts, ReplicaFollower};
use crate::actors::replication::hub::ReplicationHub;
use crate::actors::replication::Replication;
use crate::actors::retention_cleaner::RetentionCleaner;
use crate::actors::services::BrokerServices;
use crate::broker::BrokerCore;
use crate::clock::now_millis;
use crate::config::{Config, StoreSection};
use crate::delivery::delay::{DELAY_QUEUES, DELAY_TOPIC};
use crate::delivery::expiry::expire_at;
use crate::observe::{kind, ActorTree};
use crate::replication::follower::FollowerState;
use crate::server::{serve, ServeOptions};
use crate::store::commitlog::RecoveryReport;
use crate::store::error::StoreResult;
use crate::store::flusher::{FlushHandle, Flusher};
use crate::store::topics::TopicConfig;
use crate::store::Store;
use crate::wire::control::TopicInfo;

/// The broker's internal topics besides the store's own: the delay topic.
fn internal_topics() -> [(&'static str, TopicConfig); 1] {
    [(DELAY_TOPIC, TopicConfig::with_queues(DELAY_QUEUES))]
}

/// Opens (and recovers) the store as the broker does: with the broker's
/// internal topics and TTL function, so replay indexes the same records.
/// `ferromq store verify --repair` opens it the same way.
pub fn open_store(cfg: &StoreSection) -> StoreResult<(Store, RecoveryReport)> {
    Store::open_with_internal_topics(cfg, &internal_topics(), expire_at)
}

/// Runs a broker until SIGINT or SIGTERM. Fails early, with a message naming
/// the cause, when the data directory is locked or an address is taken.
pub fn run(cfg: Config) -> io::Result<()> {
    // The lock (inside Store::open) comes before binding any port, so a
    // second broker on the same directory fails on the lock.
    let (store, _report) = open_store(&cfg.store)?;
    let store = Arc::new(store);
    let flusher = Flusher::start(store.clone(), Duration::from_millis(cfg.store.flush_interval_ms))?;
    let system = actix_rt::System::new();
    let threads = match cfg.broker.network_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let network: Vec<Arbiter> = (0..threads).map(|_| Arbiter::new()).collect();
    let store_arbiter = Arbiter::new();
    let dispatch_arbiter = Arbiter::new();
    let handles: Vec<ArbiterHandle> = network.iter().map(Arbiter::handle).collect();
    let result = system.block_on(serve_until_signal(
        cfg,
        store.clone(),
        flusher.handle(),
        handles,
        store_arbiter.handle(),
        dispatch_arbiter.handle(),
    ));
    for arbiter in network.into_iter().chain([store_arbiter, dispatch_arbiter]) {
        arbiter.stop();
        let _ = arbiter.join();
    }
    flusher.stop();
    let shutdown = store.shutdown().map_err(io::Error::from);
    match (result, shutdown) {
        (Err(e), _) | (Ok(()), Err(e)) => Err(e),
        (Ok(()), Ok(())) => {
            tracing::info!("broker stopped cleanly");
            Ok(())
        }
    }
}

/// The ACL in force (watched for changes), or why it cannot be loaded.
fn load_acl(cfg: &Config) -> io::Result<crate::acl::Acl> {
    let acl = crate::acl::Acl::start(&cfg.acl).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    if acl.enabled() && cfg.acl.access_key.is_empty() {
        tracing::warn!(
            "acl.enabled without acl.access_key: this broker's registrations and replication are unsigned, and name \
             servers and masters with ACL on refuse them"
        );
    }
    Ok(acl)
}

/// How this broker's own connections (registration, replication, forwarded
/// requests, the HTTP API's cluster views) sign and encrypt: its
/// `[acl] access_key` and the `[tls]` client settings. With
/// `[tls] client = true` they speak TLS trusting `[tls] ca` (empty: the web
/// roots) and, when `[tls] cert` and `key` are set, present that same
/// certificate as their client certificate, so a peer with `client_ca`
/// (mutual TLS) accepts them (the certificate then needs the clientAuth
/// extended key usage, or none).
pub fn outgoing_options(cfg: &Config) -> io::Result<Arc<crate::client::ConnectOptions>> {
    let credentials = if cfg.acl.access_key.is_empty() {
        None
    } else {
        let env = |name: &str| std::env::var(name).ok();
        let secret = crate::acl::Secret::resolve(&cfg.acl.secret_key, &env)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("acl.secret_key: {e}")))?;
        Some(crate::acl::Credentials {
            access_key: cfg.acl.access_key.clone(),
            secret_key: secret,
        })
    };
    let tls = crate::tls::ClientTls::from_section(&cfg.tls)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("[tls] client: {e}")))?
        .map(Arc::new);
    Ok(Arc::new(crate::client::ConnectOptions { credentials, tls }))
}

async fn serve_until_signal(
    cfg: Config,
    store: Arc<Store>,
    flusher: FlushHandle,
    network: Vec<ArbiterHandle>,
    store_arbiter: ArbiterHandle,
    dispatch_arbiter: ArbiterHandle,
) -> io::Result<()> {
    // Installed before the ready line so that a signal right after it is a
    // clean shutdown, not the default kill.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    // The broker's client port and its embedded name server share `[tls]`.
    let opts = ServeOptions {
        tls: crate::tls::ServerTls::from_section(&cfg.tls)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("[tls]: {e}")))?,
        ..ServeOptions::from_config(&cfg.broker, "broker")
    };
    if cfg.tls.mode == crate::config::TlsMode::Enforcing
        && cfg.broker.embedded_namesrv
        && cfg.broker.namesrv_addrs.is_empty()
        && !cfg.tls.client
    {
        // Its own registration would be refused by its name server.
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "tls.mode = enforcing with the embedded name server needs tls.client = true (and tls.ca): \
             the broker registers with it over TLS",
        ));
    }
    let listener = TcpListener::bind(&cfg.broker.listen)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("broker cannot listen on {}: {e}", cfg.broker.listen)))?;
    let bound = listener.local_addr()?;
    let store_host: SocketAddr = match &cfg.broker.advertise {
        Some(a) => a.parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("broker.advertise {a:?} is not an ip:port address"),
            )
        })?,
        None => bound,
    };
    if store_host.ip().is_unspecified() {
        tracing::warn!(%store_host, "advertising an unspecified address; set broker.advertise");
    }

    let metrics = crate::observe::metrics::install();
    let tree = Arc::new(ActorTree::default());
    let acl = load_acl(&cfg)?;
    let outgoing = outgoing_options(&cfg)?;
    let embedded = if cfg.broker.embedded_namesrv {
        Some(
            crate::namesrv_server::start_embedded(&cfg.namesrv, opts.clone(), network.clone(), &tree, acl.clone())
                .await?
                .0,
        )
    } else {
        None
    };
    let namesrv_addrs = match (&embedded, cfg.broker.namesrv_addrs.is_empty()) {
        (Some(addr), true) => vec![addr.to_string()],
        _ => cfg.broker.namesrv_addrs.clone(),
    };

    // The store side first, each part given what it uses at construction:
    // dispatcher → writer → services → queue registry, which then
    // subscribes to the dispatcher (before anything can append).
    let dispatcher = {
        let store = store.clone();
        tree.start(kind::DISPATCHER, "0", Some(&dispatch_arbiter), move |stats| {
            Dispatcher::new(store).with_stats(stats)
        })
    };
    let is_slave = cfg.broker.id != 0;
    // A master's ack policy includes the replication hub (it wakes slaves'
    // fetches and, under sync replication, waits for one to confirm).
    let hub = (!is_slave).then(|| ReplicationHub::new(&cfg.replication, store.log.write_pos()));
    let writer = {
        let (store, dispatcher) = (store.clone(), dispatcher.clone());
        let flush = policy_for(cfg.store.flush, flusher);
        let ack: Arc<dyn AckPolicy> = match &hub {
            Some(hub) => Arc::new(AllOf(vec![flush, hub.clone()])),
            None => flush,
        };
        let read_only = is_slave.then(|| {
            format!(
                "broker {}/{} is a read-only slave: it stores only what its master sends",
                cfg.broker.name, cfg.broker.id
            )
        });
        tree.start(kind::COMMITLOG_WRITER, "0", Some(&store_arbiter), move |stats| {
            CommitLogWriter::new(store, dispatcher, ack, store_host)
                .read_only(read_only)
                .with_stats(stats)
        })
    };
    let replication = Arc::new(match &hub {
        Some(hub) => Replication::Master {
            hub: hub.clone(),
            links: Default::default(),
            store: store.clone(),
            tree: tree.clone(),
        },
        None => Replication::Slave {
            status: Arc::new(std::sync::Mutex::new(FollowerState::new(now_millis()))),
        },
    });
    if let Some(hub) = hub.clone() {
        // Sync sends past their deadline are answered; silent slaves dropped.
        actix_rt::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                hub.tick();
            }
        });
    }
    let services = Arc::new(BrokerServices::new(
        store.clone(),
        store_host,
        cfg.delivery.clone(),
        tree.clone(),
        writer.clone(),
    ));
    let queues = Arc::new(QueueRegistry::new(services.clone(), network.clone()));
    dispatcher.do_send(Subscribe(queues.clone()));
    let identity = BrokerIdentity {
        cluster: cfg.broker.cluster.clone(),
        broker_name: cfg.broker.name.clone(),
        broker_id: cfg.broker.id,
        addr: store_host.to_string(),
    };
    let topics = {
        let store = store.clone();
        Arc::new(move || {
            store
                .topics
                .snapshot()
                .into_iter()
                .map(|(name, t)| (name, TopicInfo { queues: t.queues }))
                .collect()
        })
    };
    let mut client_cfg = crate::client::ClientConfig::new(namesrv_addrs.clone());
    client_cfg.security = (*outgoing).clone();
    let http_namesrv = namesrv_addrs.clone();
    let routes = crate::client::core::ClientCore::new(client_cfg.clone());
    let groups = Arc::new(GroupRegistry::new(cfg.group.clone(), network.clone(), tree.clone()));
    let register_interval = Duration::from_millis(cfg.broker.register_interval_ms);
    let report: crate::actors::namesrv_client::ReportFn = {
        let replication = replication.clone();
        Arc::new(move || Some(replication.report()))
    };
    let registrar = tree.start(kind::NAME_SERVER_CLIENT, "0", None, move |stats| {
        NameServerClient::new(namesrv_addrs, identity, register_interval, topics)
            .with_report(report)
            .with_security(outgoing)
            .with_stats(stats)
    });
    services.set_registrar(registrar.addr().clone());
    let delays = {
        let services = services.clone();
        tree.start(kind::DELAY_SCHEDULER, "0", None, move |stats| {
            DelayScheduler::new(services).standby(is_slave).with_stats(stats)
        })
    };
    services.set_delays(delays.addr().clone().recipient());
    // Queues that groups receive with acknowledgements come back at once,
    // so TTL expiry runs before any consumer reconnects (on a master: a
    // slave's queues take no receives and dead-letter nothing).
    for topic in store.subscriptions.topics().into_iter().filter(|_| !is_slave) {
        for queue in 0..store.topics.get(&topic).map_or(0, |t| t.queues) {
            queues.get_or_start(&topic, queue);
        }
    }
    if !registrar.send(RegisterNow).await.unwrap_or(false) {
        tracing::warn!("no name server acknowledged the first registration; retrying every register_interval_ms");
    }

    let sessions = Arc::new(crate::broker::session::SessionRegistry::default());
    {
        let clients: Arc<dyn crate::actors::heartbeat_scanner::ClientExpiry> = sessions.clone();
        let expiry = cfg.broker.client_expiry_ms;
        tree.start(kind::HEARTBEAT_SCANNER, "0", None, move |stats| {
            HeartbeatScanner::new(clients, expiry).with_stats(stats)
        });
    }
    {
        let (store, store_cfg) = (store.clone(), cfg.store.clone());
        tree.start(kind::RETENTION_CLEANER, "0", None, move |stats| {
            RetentionCleaner::new(store, &store_cfg).with_stats(stats)
        });
    }
    let coordination = Arc::new(crate::broker::coordination::Coordination::new(
        routes.clone(),
        store_host.to_string(),
    ));
    if let Replication::Slave { status } = &*replication {
        let status = status.clone();
        let parts = FollowerParts {
            store: store.clone(),
            writer: writer.clone(),
            registrar: registrar.addr().clone(),
            routes: routes.clone(),
            broker: cfg.broker.clone(),
            replication: cfg.replication.clone(),
            addr: store_host.to_string(),
            status,
        };
        tree.start(follower::KIND, "0", None, move |stats| {
            ReplicaFollower::new(parts).with_stats(stats)
        });
    }
    let core = Arc::new(BrokerCore {
        groups,
        routes,
        coordination,
        cfg: cfg.broker.clone(),
        store: store.clone(),
        writer,
        queues,
        registrar: registrar.addr().clone(),
        store_host,
        services,
        delays,
        sessions,
        replication,
        acl,
    });
    {
        let core = core.clone();
        let period = Duration::from_millis(cfg.group.route_refresh_ms.max(100));
        actix_rt::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                core.refresh_group_routes().await;
            }
        });
    }
    let native = Arc::new(crate::server::native::NativeAdapter::new(core.clone()));
    actix_rt::spawn(serve(listener, network, native, opts));
    let http_text = match cfg.http.enabled() {
        Some(addr) => {
            let state = crate::http::HttpState {
                tree: tree.clone(),
                store: store.clone(),
                metrics,
                registrar: registrar.addr().clone(),
                debug: cfg.http.debug,
                admin: crate::client::Admin::new(client_cfg.clone()),
                producer: crate::client::Producer::new(client_cfg),
                namesrv_addrs: http_namesrv,
                broker_name: cfg.broker.name.clone(),
                broker_addr: store_host.to_string(),
                core: core.clone(),
                session: Arc::new(crate::broker::session::Session::internal(store_host)),
                settings: cfg.http.clone(),
            };
            crate::http::start(addr, state)?.to_string()
        }
        None => "-".to_string(),
    };

    let namesrv_text = embedded.map_or_else(|| "-".to_string(), |a| a.to_string());
    tracing::info!(
        broker = %bound,
        namesrv = %namesrv_text,
        flush = ?cfg.store.flush,
        role = if is_slave { "slave" } else { "master" },
        replication = ?cfg.replication.mode,
        "broker ready"
    );
    {
        let mut out = io::stdout().lock();
        writeln!(
            out,
            "ferromq broker ready: broker={bound} namesrv={namesrv_text} http={http_text} data_dir={}",
            cfg.store.data_dir.display()
        )?;
        out.flush()?;
    }

    tokio::select! {
        _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
        _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
    }
    if registrar.send(IsRegistered).await.unwrap_or(false) {
        let _ = registrar.send(Unregister).await;
    }
    Ok(())
}
