//! Broker and name-server configuration.
//!
//! Sources, later ones winning: built-in defaults (documented in
//! `conf/broker.toml`), an optional TOML file, `FERROMQ__SECTION__KEY`
//! environment variables, then command-line flags. Unknown keys are errors.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[broker]`: identity, network, topics.
    pub broker: BrokerSection,
    /// `[store]`: where and how messages are kept.
    pub store: StoreSection,
    /// `[namesrv]`: the (embedded or standalone) name server.
    pub namesrv: NamesrvSection,
    /// `[group]`: consumer-group coordination.
    pub group: GroupSection,
    /// `[delivery]`: per-message acknowledgements, retries, delays.
    pub delivery: DeliverySection,
    /// `[http]`: metrics, actor tree, health, console.
    pub http: HttpSection,
    /// `[replication]`: master → slave copying of the commitlog.
    pub replication: ReplicationSection,
    /// `[acl]`: accounts, permissions, signed requests.
    pub acl: AclSection,
    /// `[tls]`: encryption of the broker's and name server's ports and of
    /// the links they open.
    pub tls: TlsSection,
}

/// `[acl]` section (`docs/security.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AclSection {
    /// Check every request against the ACL file (off: the trusted-network
    /// mode, everything allowed).
    pub enabled: bool,
    /// The ACL file (TOML); watched and reloaded when it changes.
    pub file: PathBuf,
    /// This broker's own account, which signs its registrations, a
    /// slave's replication and requests it forwards (an admin account of
    /// the ACL file; empty: unsigned).
    pub access_key: String,
    /// The secret of `access_key`, or `env:NAME`.
    pub secret_key: String,
    /// How far a signed request's timestamp may be from the server's clock
    /// (ms); older or newer requests are refused as replays.
    pub replay_window_ms: u64,
    /// How often the ACL file is checked for changes (ms).
    pub reload_interval_ms: u64,
}

impl Default for AclSection {
    fn default() -> Self {
        AclSection {
            enabled: false,
            file: PathBuf::new(),
            access_key: String::new(),
            secret_key: String::new(),
            replay_window_ms: 120_000,
            reload_interval_ms: 1_000,
        }
    }
}

/// Whether a port speaks TLS (RocketMQ's three modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain TCP only.
    #[default]
    Off,
    /// Both: a connection starting with a TLS handshake gets TLS, others
    /// plain TCP.
    Permissive,
    /// TLS only; a plain connection is closed.
    Enforcing,
}

impl std::str::FromStr for TlsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(TlsMode::Off),
            "permissive" => Ok(TlsMode::Permissive),
            "enforcing" => Ok(TlsMode::Enforcing),
            other => Err(format!("tls mode {other:?} is not off, permissive or enforcing")),
        }
    }
}

/// `[tls]` section (`docs/security.md`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// `off`, `permissive` or `enforcing` for the ports this process
    /// listens on.
    pub mode: TlsMode,
    /// The server certificate chain (PEM).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA
    /// (PEM): mutual TLS.
    pub client_ca: PathBuf,
    /// Connections this process opens (to name servers, to its master) use
    /// TLS.
    pub client: bool,
    /// CA (PEM) those connections trust (empty: the built-in web roots).
    pub ca: PathBuf,
}

/// When a master answers a producer with respect to its slaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicationMode {
    /// Answer only once a slave has confirmed the batch (RocketMQ
    /// `SYNC_MASTER`); `SLAVE_NOT_AVAILABLE` when none does in time.
    Sync,
    /// Answer per the flush policy; slaves follow (`ASYNC_MASTER`).
    Async,
}

impl std::str::FromStr for ReplicationMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sync" => Ok(ReplicationMode::Sync),
            "async" => Ok(ReplicationMode::Async),
            other => Err(format!("replication mode {other:?} is not sync or async")),
        }
    }
}

/// `[replication]` section. A master (`broker.id = 0`) serves its log to
/// slaves and answers producers per `mode`; a slave (`broker.id > 0`)
/// follows the master of its broker group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationSection {
    /// `sync` or `async` (a master's setting; slaves ignore it).
    pub mode: ReplicationMode,
    /// A slave's master, `host:port`; empty: found through the name
    /// servers by broker name (the group's broker with id 0).
    pub master: String,
    /// Sync replication: how long a send waits for a slave's confirmation
    /// before it is answered `SLAVE_NOT_AVAILABLE`.
    pub sync_timeout_ms: u64,
    /// Largest chunk of log a slave asks for at once.
    pub fetch_max_bytes: u32,
    /// How long the master holds a slave's fetch when it has nothing new.
    pub fetch_wait_ms: u32,
    /// A slave that has not fetched for this long is dropped by the master
    /// (sync sends then fail at once instead of waiting).
    pub slave_idle_ms: u64,
}

impl Default for ReplicationSection {
    fn default() -> Self {
        ReplicationSection {
            mode: ReplicationMode::Async,
            master: String::new(),
            sync_timeout_ms: 3_000,
            fetch_max_bytes: 4 << 20,
            fetch_wait_ms: 1_000,
            slave_idle_ms: 5_000,
        }
    }
}

/// `[http]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Address of the HTTP endpoint; `0` (or empty) disables it.
    pub listen: String,
    /// Serve `POST /api/debug/fail` (makes an actor fail; for tests).
    pub debug: bool,
    /// A bearer token that also admits HTTP requests as an admin when ACL
    /// is on (empty: none; `env:NAME` reads it from the environment).
    pub token: String,
    /// With ACL on, `/health`, `/ready` and `/metrics` still answer
    /// without credentials.
    pub open_health: bool,
    /// Host names (`name` or `name:port`) the endpoint answers to besides
    /// IP addresses and `localhost` (a request with another `Host` header
    /// is refused: DNS rebinding); `"*"` accepts any. A list, or one
    /// comma-separated string (`FERROMQ__HTTP__ALLOWED_HOSTS`).
    #[serde(deserialize_with = "host_list")]
    pub allowed_hosts: Vec<String>,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: "127.0.0.1:8080".into(),
            debug: false,
            token: String::new(),
            open_health: true,
            allowed_hosts: Vec::new(),
        }
    }
}

impl HttpSection {
    /// The address to serve on, unless disabled.
    pub fn enabled(&self) -> Option<&str> {
        match self.listen.trim() {
            "" | "0" => None,
            a => Some(a),
        }
    }
}

/// `[delivery]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverySection {
    /// Wait before the 1st, 2nd, … redelivery of a NACKed message, ms.
    pub retry_backoff_ms: Vec<u64>,
    /// Redeliveries before a message goes to `%DLQ%<group>`.
    pub max_retries: u32,
    /// Most delivered-but-unsettled messages per group and queue.
    pub max_unsettled: u64,
    /// How often queue actors commit their groups' settled offsets.
    pub commit_interval_ms: u64,
    /// Furthest ahead a deliver-at time may be.
    pub max_delay_ms: u64,
}

/// RocketMQ's retry schedule: the wait before the 1st, 2nd, … redelivery.
pub const DEFAULT_RETRY_BACKOFF_MS: [u64; 16] = [
    10_000, 30_000, 60_000, 120_000, 180_000, 240_000, 300_000, 360_000, 420_000, 480_000, 540_000, 600_000, 1_200_000,
    1_800_000, 3_600_000, 7_200_000,
];

impl Default for DeliverySection {
    fn default() -> Self {
        DeliverySection {
            retry_backoff_ms: DEFAULT_RETRY_BACKOFF_MS.to_vec(),
            max_retries: 16,
            max_unsettled: 10_000,
            commit_interval_ms: 200,
            max_delay_ms: 7 * 86_400_000,
        }
    }
}

/// `[group]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupSection {
    /// Longest a rebalance waits for members to rejoin.
    pub rebalance_timeout_ms: u64,
    /// A group's first rebalance waits this long for more members.
    pub initial_rebalance_delay_ms: u64,
    /// Smallest session timeout a member may ask for.
    pub min_session_timeout_ms: u64,
    /// Largest session timeout a member may ask for.
    pub max_session_timeout_ms: u64,
    /// How often a coordinator looks up its groups' topic routes again; a
    /// broker group that died or came back changes the queues, and the
    /// group rebalances.
    pub route_refresh_ms: u64,
}

impl Default for GroupSection {
    fn default() -> Self {
        GroupSection {
            rebalance_timeout_ms: 3_000,
            initial_rebalance_delay_ms: 0,
            min_session_timeout_ms: 1_000,
            max_session_timeout_ms: 300_000,
            route_refresh_ms: 3_000,
        }
    }
}

/// `[broker]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerSection {
    /// Cluster the broker belongs to.
    pub cluster: String,
    /// Broker group name (shared by a master and its slaves).
    pub name: String,
    /// 0 for a master, > 0 for a slave.
    pub id: u64,
    /// Address the broker listens on for clients.
    pub listen: String,
    /// Address registered with name servers; defaults to the bound listen
    /// address.
    pub advertise: Option<String>,
    /// Run a name server inside the broker process.
    pub embedded_namesrv: bool,
    /// Name servers to register with; empty means the embedded one.
    pub namesrv_addrs: Vec<String>,
    /// How often the broker re-registers with the name servers.
    pub register_interval_ms: u64,
    /// Clients silent this long are dropped from the client table.
    pub client_expiry_ms: u64,
    /// Create unknown topics on first send (with `default_topic_queues`).
    pub auto_create_topics: bool,
    /// Queue count of auto-created topics and of `topic create` without
    /// `--queues`.
    pub default_topic_queues: u32,
    /// Largest frame accepted, in bytes.
    pub max_frame_bytes: usize,
    /// Network threads (arbiters); 0 means one per CPU core.
    pub network_threads: usize,
    /// Requests one connection may have outstanding before the broker stops
    /// reading from it (backpressure).
    pub max_inflight_per_connection: usize,
    /// Pulls one connection may have being served or waiting to be sent;
    /// bounds what a consumer that stops reading can make the broker hold
    /// (each pull response is at most 8 MiB).
    pub max_inflight_pulls_per_connection: usize,
    /// Longest a `PULL_MESSAGE` or `RECEIVE_MESSAGE` long poll waits; a
    /// larger requested wait is clamped to this.
    pub max_poll_wait_ms: u64,
    /// Bytes of responses one connection may have being built or waiting to
    /// be written (pulls, receives and key queries reserve 8 MiB each while
    /// being served); when exhausted the broker stops reading from the
    /// connection until responses are written.
    pub max_pending_response_bytes_per_connection: usize,
    /// A connection with no complete request for this long and nothing in
    /// flight is closed; 0 never closes idle connections.
    pub idle_timeout_ms: u64,
    /// A frame started but not completed within this is dropped and its
    /// connection closed; 0 waits forever.
    pub frame_read_timeout_ms: u64,
    /// Most client connections (broker and name-server listeners together)
    /// the process keeps open. At the limit a new connection replaces the
    /// one idle longest, or is accepted and closed at once when none is
    /// idle. Never more than the open-file limit minus a reserve for the
    /// store's files.
    pub max_connections: usize,
}

impl Default for BrokerSection {
    fn default() -> Self {
        BrokerSection {
            cluster: "DefaultCluster".into(),
            name: "broker-a".into(),
            id: 0,
            listen: "127.0.0.1:10911".into(),
            advertise: None,
            embedded_namesrv: true,
            namesrv_addrs: Vec::new(),
            register_interval_ms: 30_000,
            client_expiry_ms: 120_000,
            auto_create_topics: true,
            default_topic_queues: 8,
            max_frame_bytes: 16 << 20,
            network_threads: 0,
            max_inflight_per_connection: 256,
            max_inflight_pulls_per_connection: 8,
            max_poll_wait_ms: 30_000,
            max_pending_response_bytes_per_connection: 64 << 20,
            idle_timeout_ms: 600_000,
            frame_read_timeout_ms: 30_000,
            max_connections: 10_000,
        }
    }
}

/// When an acknowledged message reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlushMode {
    /// The producer is answered after the record is durable (group commit).
    Sync,
    /// The producer is answered after the record is in the page cache; a
    /// flusher makes it durable every `flush_interval_ms`.
    Async,
}

impl std::str::FromStr for FlushMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sync" => Ok(FlushMode::Sync),
            "async" => Ok(FlushMode::Async),
            other => Err(format!("flush mode {other:?} is not sync or async")),
        }
    }
}

/// `[store]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// Directory holding commitlog, consume queues, indexes and config.
    pub data_dir: PathBuf,
    /// Size of one commitlog segment; also the largest record.
    pub segment_bytes: u64,
    /// Entries in the largest consume-queue file (20 bytes each); a queue's
    /// files start at 1024 entries and double up to this.
    pub consume_queue_file_entries: u64,
    /// Hash slots in one key-index file.
    pub index_slots: u32,
    /// Entries in one key-index file.
    pub index_entries: u32,
    /// `sync` or `async`.
    pub flush: FlushMode,
    /// Async flush period, and how often the checkpoint is written.
    pub flush_interval_ms: u64,
    /// A commitlog segment whose newest record is older than this (ms) is
    /// deleted by retention (unless it is the active segment).
    pub retention_ms: u64,
    /// How often the retention cleaner looks for segments to delete, ms.
    pub clean_interval_ms: u64,
    /// Hour of day (`"00"`..`"23"`, local time) during which expired
    /// segments are deleted; `None`: as soon as they expire.
    pub delete_when: Option<String>,
    /// Largest total size of the commitlog (bytes, ± one segment); 0 means
    /// unbounded. Oldest segments beyond it are deleted even if not expired.
    pub retention_bytes: u64,
    /// Used share of the data directory's file system (0..1) above which
    /// expired segments are deleted at once, whatever `delete_when` says.
    pub disk_clean_ratio: f64,
    /// Used share above which the oldest segments are deleted even if not
    /// expired (and segments held for messages still needed go too).
    pub disk_force_clean_ratio: f64,
    /// Used share above which sends are refused with `DISK_FULL`.
    pub disk_refuse_ratio: f64,
}

impl StoreSection {
    /// [`StoreSection::delete_when`] as an hour of day, if set and valid.
    pub fn delete_hour(&self) -> Result<Option<u8>, ConfigError> {
        let Some(h) = &self.delete_when else { return Ok(None) };
        let h = h.trim();
        match h.parse::<u8>() {
            // One digit too: `FERROMQ__STORE__DELETE_WHEN=04` reaches here as
            // "4" (environment values that look like numbers are parsed).
            Ok(n) if n < 24 && (1..=2).contains(&h.len()) => Ok(Some(n)),
            _ => Err(ConfigError(format!(
                "store.delete_when must be an hour of day \"00\"..\"23\", not {h:?}"
            ))),
        }
    }
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            data_dir: PathBuf::from("data"),
            segment_bytes: 1 << 30,
            consume_queue_file_entries: 300_000,
            index_slots: 500_000,
            index_entries: 2_000_000,
            flush: FlushMode::Async,
            flush_interval_ms: 500,
            retention_ms: 259_200_000,
            clean_interval_ms: 10_000,
            delete_when: None,
            retention_bytes: 0,
            disk_clean_ratio: 0.75,
            disk_force_clean_ratio: 0.85,
            disk_refuse_ratio: 0.90,
        }
    }
}

/// `[namesrv]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NamesrvSection {
    /// Address the name server listens on.
    pub listen: String,
    /// A broker silent this long is dropped from routes.
    pub broker_expiry_ms: u64,
    /// How often expired brokers are looked for.
    pub scan_interval_ms: u64,
}

impl Default for NamesrvSection {
    fn default() -> Self {
        NamesrvSection {
            listen: "127.0.0.1:9876".into(),
            broker_expiry_ms: 120_000,
            scan_interval_ms: 5_000,
        }
    }
}

/// Command-line settings that override the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--listen`.
    pub listen: Option<String>,
    /// `--namesrv-listen` (broker) or `--listen` (standalone name server).
    pub namesrv_listen: Option<String>,
    /// `--no-embedded-namesrv`.
    pub no_embedded_namesrv: bool,
    /// `--namesrv`.
    pub namesrv_addrs: Option<Vec<String>>,
    /// `--flush`.
    pub flush: Option<FlushMode>,
    /// `--http`.
    pub http: Option<String>,
    /// `--broker-name`.
    pub broker_name: Option<String>,
    /// `--broker-id`.
    pub broker_id: Option<u64>,
    /// `--replication`.
    pub replication: Option<ReplicationMode>,
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// Loads defaults, then `file`, then the environment, then `overrides`.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let err = |e: config::ConfigError| ConfigError(e.to_string());
        let mut builder =
            config::Config::builder().add_source(config::Config::try_from(&Config::default()).map_err(err)?);
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError(format!("file {} does not exist", path.display())));
            }
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("FERROMQ")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("broker.namesrv_addrs")
                .with_list_parse_key("delivery.retry_backoff_ms"),
        );
        let mut cfg: Config = builder.build().map_err(err)?.try_deserialize().map_err(err)?;
        cfg.apply(overrides);
        cfg.validate()?;
        Ok(cfg)
    }

    fn apply(&mut self, o: &Overrides) {
        if let Some(d) = &o.data_dir {
            self.store.data_dir = d.clone();
        }
        if let Some(l) = &o.listen {
            self.broker.listen = l.clone();
        }
        if let Some(h) = &o.http {
            self.http.listen = h.clone();
        }
        if let Some(l) = &o.namesrv_listen {
            self.namesrv.listen = l.clone();
        }
        if o.no_embedded_namesrv {
            self.broker.embedded_namesrv = false;
        }
        if let Some(a) = &o.namesrv_addrs {
            self.broker.namesrv_addrs = a.clone();
        }
        if let Some(f) = o.flush {
            self.store.flush = f;
        }
        if let Some(n) = &o.broker_name {
            self.broker.name = n.clone();
        }
        if let Some(id) = o.broker_id {
            self.broker.id = id;
        }
        if let Some(m) = o.replication {
            self.replication.mode = m;
        }
    }

    /// Rejects settings the broker cannot run with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError(m.to_string()));
        if self.store.segment_bytes < 64 * 1024 {
            return bad("store.segment_bytes must be at least 65536");
        }
        if self.store.consume_queue_file_entries == 0 {
            return bad("store.consume_queue_file_entries must be positive");
        }
        if self.store.index_slots == 0 || self.store.index_entries == 0 {
            return bad("store.index_slots and store.index_entries must be positive");
        }
        if self.store.flush_interval_ms == 0 {
            return bad("store.flush_interval_ms must be positive");
        }
        if self.store.retention_ms == 0 {
            return bad("store.retention_ms must be positive");
        }
        if self.store.clean_interval_ms == 0 {
            return bad("store.clean_interval_ms must be positive");
        }
        self.store.delete_hour()?;
        if self.store.retention_bytes != 0 && self.store.retention_bytes < self.store.segment_bytes {
            return bad("store.retention_bytes must be 0 (unbounded) or at least store.segment_bytes");
        }
        let (c, f, r) = (
            self.store.disk_clean_ratio,
            self.store.disk_force_clean_ratio,
            self.store.disk_refuse_ratio,
        );
        if !(0.0 < c && c <= f && f <= r && r <= 1.0) {
            return bad(&format!(
                "store disk watermarks must satisfy 0 < disk_clean_ratio <= disk_force_clean_ratio <= \
                 disk_refuse_ratio <= 1, not {c} / {f} / {r}"
            ));
        }
        check_host_list(&self.http.allowed_hosts).map_err(ConfigError)?;
        if self.broker.default_topic_queues == 0 || self.broker.default_topic_queues > 1024 {
            return bad("broker.default_topic_queues must be between 1 and 1024");
        }
        if self.broker.max_frame_bytes < 1024 {
            return bad("broker.max_frame_bytes must be at least 1024");
        }
        if !self.broker.embedded_namesrv && self.broker.namesrv_addrs.is_empty() {
            return bad("without an embedded name server, broker.namesrv_addrs (--namesrv) is required");
        }
        if self.broker.max_inflight_per_connection == 0 || self.broker.max_inflight_pulls_per_connection == 0 {
            return bad("broker.max_inflight_per_connection and max_inflight_pulls_per_connection must be positive");
        }
        if self.broker.max_poll_wait_ms == 0 || self.broker.max_poll_wait_ms > u64::from(u32::MAX) {
            return bad("broker.max_poll_wait_ms must be between 1 and 4294967295");
        }
        if self.broker.max_pending_response_bytes_per_connection < 64 * 1024
            || self.broker.max_pending_response_bytes_per_connection > u32::MAX as usize
        {
            return bad("broker.max_pending_response_bytes_per_connection must be between 65536 and 4294967295");
        }
        if self.broker.max_connections == 0 {
            return bad("broker.max_connections must be positive");
        }
        let r = &self.replication;
        if r.sync_timeout_ms == 0 || r.fetch_wait_ms == 0 || r.slave_idle_ms <= u64::from(r.fetch_wait_ms) {
            return bad(
                "replication.sync_timeout_ms and fetch_wait_ms must be positive, and slave_idle_ms larger than \
                 fetch_wait_ms",
            );
        }
        if r.fetch_max_bytes < 64 * 1024 || r.fetch_max_bytes as usize > self.broker.max_frame_bytes / 2 {
            return bad(
                "replication.fetch_max_bytes must be at least 65536 and at most half of broker.max_frame_bytes",
            );
        }
        if !r.master.is_empty() && r.master.parse::<std::net::SocketAddr>().is_err() && !r.master.contains(':') {
            return bad("replication.master must be host:port");
        }
        let a = &self.acl;
        if a.enabled && a.file.as_os_str().is_empty() {
            return bad("acl.enabled needs acl.file (the ACL file's path)");
        }
        if a.replay_window_ms < 1_000 || a.reload_interval_ms == 0 {
            return bad("acl.replay_window_ms must be at least 1000 and acl.reload_interval_ms positive");
        }
        if a.access_key.is_empty() != a.secret_key.is_empty() {
            return bad("acl.access_key and acl.secret_key are set together");
        }
        let t = &self.tls;
        if t.mode != TlsMode::Off && (t.cert.as_os_str().is_empty() || t.key.as_os_str().is_empty()) {
            return bad("tls.mode permissive or enforcing needs tls.cert and tls.key");
        }
        Ok(())
    }
}

/// Checks `[http] allowed_hosts` (a config validation).
fn check_host_list(list: &[String]) -> Result<(), String> {
    for entry in list {
        let e = entry.trim();
        if e.is_empty() || e.contains('/') || e.contains(char::is_whitespace) {
            return Err(format!(
                "http.allowed_hosts: {entry:?} is not a host name or host:port (no scheme, path or spaces)"
            ));
        }
    }
    Ok(())
}

/// Deserializes `[http] allowed_hosts` from a list or from one
/// comma-separated string (as environment variables give it).
fn host_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Hosts {
        List(Vec<String>),
        One(String),
    }
    Ok(match Hosts::deserialize(d)? {
        Hosts::List(l) => l,
        Hosts::One(s) => s
            .split(',')
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_lists_come_from_a_list_or_a_string() {
        #[derive(serde::Deserialize)]
        struct S {
            #[serde(deserialize_with = "host_list")]
            h: Vec<String>,
        }
        let s: S = serde_json::from_str(r#"{"h": "a.example, b.example:80"}"#).unwrap();
        assert_eq!(s.h, vec!["a.example", "b.example:80"]);
        let s: S = serde_json::from_str(r#"{"h": ["c"]}"#).unwrap();
        assert_eq!(s.h, vec!["c"]);
        assert!(check_host_list(&["http://x".into()]).is_err());
        assert!(check_host_list(&["x:1".into(), "*".into()]).is_ok());
    }

    #[test]
    fn retention_settings_are_validated() {
        let mut cfg = Config::default();
        assert_eq!(cfg.store.delete_hour().unwrap(), None);
        cfg.store.delete_when = Some("04".into());
        assert_eq!(cfg.store.delete_hour().unwrap(), Some(4));
        assert!(cfg.validate().is_ok());
        cfg.store.delete_when = Some("4".into());
        assert_eq!(cfg.store.delete_hour().unwrap(), Some(4));
        for bad in ["24", "004", "4am", ""] {
            cfg.store.delete_when = Some(bad.into());
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains("store.delete_when"), "{err}");
        }
        cfg.store.delete_when = None;
        cfg.store.retention_bytes = 1;
        assert!(cfg.validate().unwrap_err().to_string().contains("retention_bytes"));
        cfg.store.retention_bytes = 0;
        cfg.store.retention_ms = 0;
        assert!(cfg.validate().unwrap_err().to_string().contains("retention_ms"));
        cfg.store.retention_ms = 1;
        cfg.store.clean_interval_ms = 0;
        assert!(cfg.validate().unwrap_err().to_string().contains("clean_interval_ms"));
    }

    #[test]
    fn shipped_config_file_equals_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/broker.toml");
        let cfg = Config::load(Some(&path), &Overrides::default()).unwrap();
        assert_eq!(cfg, Config::default());
    }

    #[test]
    fn unknown_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.toml");
        std::fs::write(&path, "[store]\nflush_mode = \"sync\"\n").unwrap();
        let err = Config::load(Some(&path), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("flush_mode"), "{err}");
    }

    #[test]
    fn file_then_flags_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.toml");
        std::fs::write(&path, "[store]\nflush = \"sync\"\nsegment_bytes = 1048576\n").unwrap();
        let o = Overrides {
            listen: Some("127.0.0.1:1".into()),
            flush: Some(FlushMode::Async),
            ..Default::default()
        };
        let cfg = Config::load(Some(&path), &o).unwrap();
        assert_eq!(cfg.store.segment_bytes, 1 << 20);
        assert_eq!(cfg.store.flush, FlushMode::Async);
        assert_eq!(cfg.broker.listen, "127.0.0.1:1");
    }
}
