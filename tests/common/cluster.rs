//! A small cluster of real processes for integration tests: N standalone
//! name servers and M master brokers (one per broker group, id 0), each on
//! its own fixed 127.0.0.1 port and temp data directory, so any of them can
//! be killed with SIGKILL and restarted on the same address with the same
//! data. Everything is killed on drop; every wait is bounded.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{cli, cli_ok, field, free_addr, small_store_env, ServerProcess};

/// How long a (re)started process may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a (re)started broker may take to be routed by the name servers.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(20);

/// Starts `ferromq ARGS` and waits for its ready line; `Err` (with its
/// stderr) if it exits or stays silent, so callers can retry (a port still
/// held by a dying process).
fn try_spawn(args: &[&str], env: &[(String, String)]) -> Result<(ServerProcess, String), String> {
    let (child, line, stderr) = super::try_spawn_server(args, env, READY_TIMEOUT)?;
    let optional = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .unwrap_or("-")
            .to_string()
    };
    let p = ServerProcess {
        child,
        broker_addr: optional("broker="),
        namesrv_addr: field(&line, "namesrv="),
        http_addr: optional("http="),
        data_dir: PathBuf::new(),
        stderr,
    };
    Ok((p, line))
}

/// Retries [`try_spawn`] for up to `within` (a restarted process may find
/// its port still bound for a moment).
fn spawn_retrying(args: &[&str], env: &[(String, String)], within: Duration) -> ServerProcess {
    let deadline = Instant::now() + within;
    loop {
        match try_spawn(args, env) {
            Ok((p, _)) => return p,
            Err(e) if Instant::now() < deadline => {
                eprintln!("cluster: retrying start: {}", e.lines().next().unwrap_or(""));
                std::thread::sleep(Duration::from_millis(300));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

fn running(p: &mut Option<ServerProcess>) -> bool {
    p.as_mut().is_some_and(|p| p.is_running())
}

/// A standalone name server of the cluster.
pub struct NamesrvNode {
    /// Its fixed address.
    pub addr: String,
    proc: Option<ServerProcess>,
}

/// A broker of the cluster: a broker group's master, or one of its slaves.
pub struct BrokerNode {
    /// The node's name in the harness: the broker group name for a master,
    /// `<group>-s<id>` for a slave.
    pub name: String,
    /// Broker group name (`--broker-name`).
    pub group: String,
    /// Broker id (`--broker-id`): 0 for the master.
    pub id: u64,
    /// Fixed client address (`--listen`).
    pub addr: String,
    /// Fixed HTTP address (`--http`), for `ferromq cluster --http`.
    pub http: String,
    /// Data directory, kept across restarts.
    pub data_dir: PathBuf,
    /// Environment for this node only.
    extra_env: Vec<(String, String)>,
    proc: Option<ServerProcess>,
}

/// N name servers and M master brokers as real processes.
pub struct Cluster {
    /// Name servers, in the order of [`Cluster::ns`].
    pub namesrvs: Vec<NamesrvNode>,
    /// Brokers, in the order given to [`Cluster::start`].
    pub brokers: Vec<BrokerNode>,
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `namesrvs` standalone name servers and one master broker per
    /// name in `broker_groups` (each with `small_store_env()`, a 1 s
    /// registration interval and `env`), then waits until every name server
    /// routes every broker.
    pub fn start(namesrvs: usize, broker_groups: &[&str], env: &[(&str, &str)]) -> Cluster {
        assert!(namesrvs >= 1, "a cluster needs a name server");
        let dir = tempfile::tempdir().expect("temp dir");
        let mut all_env: Vec<(String, String)> = small_store_env()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        all_env.push(("FERROMQ__BROKER__REGISTER_INTERVAL_MS".into(), "1000".into()));
        all_env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut c = Cluster {
            namesrvs: (0..namesrvs)
                .map(|_| NamesrvNode {
                    addr: free_addr(),
                    proc: None,
                })
                .collect(),
            brokers: broker_groups
                .iter()
                .map(|name| BrokerNode {
                    name: name.to_string(),
                    group: name.to_string(),
                    id: 0,
                    addr: free_addr(),
                    http: free_addr(),
                    data_dir: dir.path().join(format!("data-{name}")),
                    extra_env: Vec::new(),
                    proc: None,
                })
                .collect(),
            env: all_env,
            dir,
        };
        for i in 0..namesrvs {
            c.spawn_namesrv(i);
        }
        for i in 0..c.brokers.len() {
            c.spawn_broker(i);
        }
        for i in 0..c.brokers.len() {
            c.wait_routed(i);
        }
        c
    }

    /// A scratch directory that lives as long as the cluster.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Name server addresses, comma separated (for `-n`).
    pub fn ns(&self) -> String {
        self.namesrvs
            .iter()
            .map(|n| n.addr.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Master brokers' names (their broker groups), in start order.
    pub fn broker_names(&self) -> Vec<String> {
        self.brokers
            .iter()
            .filter(|b| b.id == 0)
            .map(|b| b.name.clone())
            .collect()
    }

    /// Starts a slave of broker group `group` (the next free id) and waits
    /// until the name servers route it; returns its node name
    /// (`<group>-s<id>`), for [`Cluster::kill9_broker`] and the like.
    pub fn add_slave(&mut self, group: &str) -> String {
        self.add_slave_with(group, &[])
    }

    /// [`Cluster::add_slave`] with extra environment for this slave only.
    pub fn add_slave_with(&mut self, group: &str, env: &[(&str, &str)]) -> String {
        let id = self
            .brokers
            .iter()
            .filter(|b| b.group == group)
            .map(|b| b.id)
            .max()
            .unwrap_or(0)
            + 1;
        let name = format!("{group}-s{id}");
        self.brokers.push(BrokerNode {
            name: name.clone(),
            group: group.to_string(),
            id,
            addr: free_addr(),
            http: free_addr(),
            data_dir: self.dir.path().join(format!("data-{name}")),
            extra_env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            proc: None,
        });
        let i = self.brokers.len() - 1;
        self.spawn_broker(i);
        self.wait_routed(i);
        name
    }

    /// Sets environment for node `name` only, from its next (re)start
    /// (replacing what was set before).
    pub fn set_broker_env(&mut self, name: &str, env: &[(&str, &str)]) {
        let i = self.broker_index(name);
        self.brokers[i].extra_env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    }

    /// Gives node `name` broker id `id` from its next (re)start: a slave
    /// promoted to master (0), a former master rejoining as a slave.
    pub fn set_broker_id(&mut self, name: &str, id: u64) {
        let i = self.broker_index(name);
        self.brokers[i].id = id;
    }

    /// The data directory of node `name`.
    pub fn broker_data_dir(&self, name: &str) -> &Path {
        &self.brokers[self.broker_index(name)].data_dir
    }

    fn broker_index(&self, name: &str) -> usize {
        self.brokers
            .iter()
            .position(|b| b.name == name)
            .unwrap_or_else(|| panic!("no broker named {name}"))
    }

    /// The broker's client address.
    pub fn broker_addr(&self, name: &str) -> &str {
        &self.brokers[self.broker_index(name)].addr
    }

    /// The broker's HTTP address.
    pub fn broker_http(&self, name: &str) -> &str {
        &self.brokers[self.broker_index(name)].http
    }

    /// The broker group whose broker listens on `addr`.
    pub fn broker_name_at(&self, addr: &str) -> Option<&str> {
        self.brokers.iter().find(|b| b.addr == addr).map(|b| b.name.as_str())
    }

    /// The broker group that stored the message `msg_id` names.
    pub fn broker_of_msg_id(&self, msg_id: &str) -> Option<&str> {
        let id: ferromq::store::record::MessageId = msg_id.parse().ok()?;
        self.broker_name_at(&id.store_host.to_string())
    }

    /// Is the broker process running?
    pub fn broker_running(&mut self, name: &str) -> bool {
        let i = self.broker_index(name);
        running(&mut self.brokers[i].proc)
    }

    /// Everything the broker wrote to stderr (current incarnation).
    pub fn broker_stderr(&self, name: &str) -> String {
        let i = self.broker_index(name);
        self.brokers[i].proc.as_ref().map(|p| p.stderr()).unwrap_or_default()
    }

    fn spawn_namesrv(&mut self, i: usize) {
        let addr = self.namesrvs[i].addr.clone();
        // Name servers share the cluster's access control (and nothing else).
        let env: Vec<(String, String)> = self
            .env
            .iter()
            .filter(|(k, _)| k.starts_with("FERROMQ__ACL__"))
            .cloned()
            .collect();
        let p = spawn_retrying(&["namesrv", "--listen", &addr], &env, Duration::from_secs(15));
        assert_eq!(p.namesrv_addr, addr, "name server bound where asked");
        self.namesrvs[i].proc = Some(p);
    }

    fn spawn_broker(&mut self, i: usize) {
        let ns = self.ns();
        let b = &self.brokers[i];
        let dir = b.data_dir.to_str().expect("utf-8 path").to_string();
        let id = b.id.to_string();
        let args = [
            "broker",
            "--data-dir",
            &dir,
            "--listen",
            &b.addr,
            "--no-embedded-namesrv",
            "--namesrv",
            &ns,
            "--http",
            &b.http,
            "--broker-name",
            &b.group,
            "--broker-id",
            &id,
        ];
        let mut env = self.env.clone();
        env.extend(b.extra_env.iter().cloned());
        let mut p = spawn_retrying(&args, &env, Duration::from_secs(15));
        assert_eq!(p.broker_addr, b.addr, "broker {} bound where asked", b.name);
        p.data_dir = b.data_dir.clone();
        self.brokers[i].proc = Some(p);
    }

    /// Waits until every running name server lists broker `i` at its address.
    fn wait_routed(&mut self, i: usize) {
        let (name, id, addr) = (
            self.brokers[i].group.clone(),
            self.brokers[i].id,
            self.brokers[i].addr.clone(),
        );
        let live: Vec<String> = self
            .namesrvs
            .iter_mut()
            .filter_map(|n| running(&mut n.proc).then(|| n.addr.clone()))
            .collect();
        for ns in live {
            let mut last = None;
            let ok = super::wait_until(ROUTE_TIMEOUT, || {
                last = namesrv_nodes(&ns);
                last.as_ref()
                    .is_some_and(|bs| bs.iter().any(|(n, i, a)| *n == name && *i == id && *a == addr))
            });
            assert!(
                ok,
                "name server {ns} does not route broker {name} at {addr} after {ROUTE_TIMEOUT:?}: {last:?}"
            );
        }
    }

    /// SIGKILL the broker of group `name` (its data directory stays).
    pub fn kill9_broker(&mut self, name: &str) {
        let i = self.broker_index(name);
        if let Some(mut p) = self.brokers[i].proc.take() {
            p.kill9();
        }
    }

    /// Restarts the broker of group `name` on its address and data
    /// directory; returns once it printed its ready line and every running
    /// name server routes it again.
    pub fn restart_broker(&mut self, name: &str) {
        let i = self.broker_index(name);
        if let Some(mut p) = self.brokers[i].proc.take() {
            p.kill9();
        }
        self.spawn_broker(i);
        self.wait_routed(i);
    }

    /// SIGKILL name server `i` (index into [`Cluster::ns`]'s list).
    pub fn kill9_namesrv(&mut self, i: usize) {
        if let Some(mut p) = self.namesrvs[i].proc.take() {
            p.kill9();
        }
    }

    /// Restarts name server `i` on its address; returns once every running
    /// broker has registered with it again.
    pub fn restart_namesrv(&mut self, i: usize) {
        if let Some(mut p) = self.namesrvs[i].proc.take() {
            p.kill9();
        }
        self.spawn_namesrv(i);
        let ns = self.namesrvs[i].addr.clone();
        let want: Vec<(String, u64, String)> = self
            .brokers
            .iter_mut()
            .filter_map(|b| running(&mut b.proc).then(|| (b.group.clone(), b.id, b.addr.clone())))
            .collect();
        let mut last = None;
        let ok = super::wait_until(ROUTE_TIMEOUT, || {
            last = namesrv_nodes(&ns);
            last.as_ref().is_some_and(|bs| want.iter().all(|w| bs.contains(w)))
        });
        assert!(
            ok,
            "restarted name server {ns} does not route {want:?} after {ROUTE_TIMEOUT:?}: {last:?}"
        );
    }

    /// `topic create TOPIC --queues Q` (on every master broker), then waits
    /// until the route has `queues` queues on every running broker group.
    pub fn create_topic(&mut self, topic: &str, queues: u32) {
        let ns = self.ns();
        let q = queues.to_string();
        cli_ok(&ns, &["topic", "create", topic, "--queues", &q]);
        let want: Vec<String> = self
            .brokers
            .iter_mut()
            .filter(|b| b.id == 0)
            .filter_map(|b| running(&mut b.proc).then(|| b.name.clone()))
            .collect();
        let mut last = String::new();
        let ok = super::wait_until(ROUTE_TIMEOUT, || {
            let out = cli(&ns, &["topic", "describe", topic, "--format", "json"]);
            last = String::from_utf8_lossy(&out.stdout).to_string();
            let Ok(v) = serde_json::from_str::<Value>(last.trim()) else {
                return false;
            };
            let rows = v["queues"].as_array().cloned().unwrap_or_default();
            want.iter()
                .all(|b| rows.iter().filter(|r| r["broker"].as_str() == Some(b.as_str())).count() == queues as usize)
        });
        assert!(ok, "topic {topic} not routed with {queues} queues on {want:?}: {last}");
    }

    /// A group name starting with `prefix` whose coordinator
    /// (`wire::group::coordinator_for`) is `broker` while every broker group
    /// of the cluster is up; with rendezvous hashing it stays there when
    /// other brokers die, so tests can choose whether a kill moves the
    /// coordinator.
    pub fn group_coordinated_by(&self, prefix: &str, broker: &str) -> String {
        let masters: Vec<(String, String)> = self
            .broker_names()
            .into_iter()
            .map(|n| {
                let addr = self.broker_addr(&n).to_string();
                (n, addr)
            })
            .collect();
        let want = self.broker_addr(broker).to_string();
        (0..10_000)
            .map(|i| format!("{prefix}{i}"))
            .find(|g| ferromq::wire::group::coordinator_for(g, &masters) == Some(want.as_str()))
            .expect("some name is coordinated by every broker")
    }

    /// `group describe GROUP --format json`, parsed; `Err` with the
    /// command's stderr when it fails.
    pub fn describe_group(&self, group: &str) -> Result<Value, String> {
        let out = cli(&self.ns(), &["group", "describe", group, "--format", "json"]);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).to_string());
        }
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.trim()).map_err(|e| format!("bad JSON {text:?}: {e}"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for b in &mut self.brokers {
            if let Some(mut p) = b.proc.take() {
                p.kill9();
            }
        }
        for n in &mut self.namesrvs {
            if let Some(mut p) = n.proc.take() {
                p.kill9();
            }
        }
    }
}

/// (broker name, address) of every master broker name server `ns` lists
/// (see [`namesrv_nodes`] for slaves too), or
/// `None` if it does not answer within a few seconds. Runs the client
/// library on its own thread and runtime, so it works from any context.
pub fn namesrv_brokers(ns: &str) -> Option<Vec<(String, String)>> {
    namesrv_nodes(ns).map(|nodes| {
        nodes
            .into_iter()
            .filter(|(_, id, _)| *id == 0)
            .map(|(name, _, addr)| (name, addr))
            .collect()
    })
}

/// (broker name, id, address) of every broker name server `ns` lists, or
/// `None` if it does not answer within a few seconds.
pub fn namesrv_nodes(ns: &str) -> Option<Vec<(String, u64, String)>> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async move {
            let mut cfg = ferromq::client::ClientConfig::new([ns]);
            cfg.request_timeout = Duration::from_secs(2);
            // A cluster with ACL on: the test's account (as the CLI takes it).
            if let (Ok(k), Ok(s)) = (std::env::var("FERROMQ_ACCESS_KEY"), std::env::var("FERROMQ_SECRET_KEY")) {
                cfg = cfg.with_credentials(ferromq::client::Credentials::new(k, s));
            }
            let admin = ferromq::client::Admin::new(cfg);
            let info = tokio::time::timeout(Duration::from_secs(4), admin.cluster_info())
                .await
                .ok()?
                .ok()?;
            Some(
                info.brokers
                    .into_iter()
                    .map(|b| (b.broker_name, b.broker_id, b.addr))
                    .collect(),
            )
        })
    })
    .join()
    .ok()
    .flatten()
}

/// Follows a growing file of JSON lines (a [`super::Consumer`]'s output),
/// returning only what was appended since the last call.
pub struct JsonTail {
    path: PathBuf,
    pos: u64,
    partial: String,
}

impl JsonTail {
    /// Follows `path` from its start.
    pub fn new(path: &Path) -> JsonTail {
        JsonTail {
            path: path.to_path_buf(),
            pos: 0,
            partial: String::new(),
        }
    }

    /// The complete lines appended since the last call, parsed (lines that
    /// are not JSON are skipped).
    pub fn poll(&mut self) -> Vec<Value> {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        if f.seek(SeekFrom::Start(self.pos)).is_err() {
            return Vec::new();
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            return Vec::new();
        }
        self.pos += buf.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        let mut out = Vec::new();
        while let Some(nl) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=nl).collect();
            if let Ok(v) = serde_json::from_str(line.trim()) {
                out.push(v);
            }
        }
        out
    }
}

/// The xorshift64* generator: tiny, seeded, reproducible.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from `seed` (0 is replaced by a fixed non-zero value).
    pub fn new(seed: u64) -> XorShift {
        XorShift(if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `lo..hi` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi.saturating_sub(lo).max(1)))
    }
}

/// Is the consumer process still running (it may exit on its own on an
/// error)?
pub fn consumer_running(c: &mut super::Consumer) -> bool {
    matches!(c.child.try_wait(), Ok(None))
}

/// Everything the consumer wrote to stderr (its `<name>.err` file).
pub fn consumer_stderr(c: &super::Consumer) -> String {
    std::fs::read_to_string(c.out.with_extension("err")).unwrap_or_default()
}
