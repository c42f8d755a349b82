//! `ferromq broker` and `ferromq namesrv`.

use std::path::PathBuf;

use clap::Args;

use super::split_addrs;
use crate::config::{Config, FlushMode, Overrides, ReplicationMode};

/// `ferromq broker` flags.
#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// Configuration file (TOML); defaults are built in.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Data directory (store.data_dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Client address to listen on (broker.listen); port 0 picks one.
    #[arg(long)]
    pub listen: Option<String>,
    /// Embedded name server address (namesrv.listen).
    #[arg(long)]
    pub namesrv_listen: Option<String>,
    /// Do not run a name server in this process.
    #[arg(long)]
    pub no_embedded_namesrv: bool,
    /// Name servers to register with, comma separated.
    #[arg(long)]
    pub namesrv: Option<String>,
    /// `sync`: acknowledge after the disk flush; `async`: after the page cache.
    #[arg(long)]
    pub flush: Option<FlushMode>,
    /// HTTP endpoint (metrics, actors, health, console) address; `0`
    /// disables it (http.listen, default 127.0.0.1:8080).
    #[arg(long)]
    pub http: Option<String>,
    /// Broker group name (broker.name), shared by a master and its slaves.
    #[arg(long)]
    pub broker_name: Option<String>,
    /// 0 for the master, > 0 for a slave (broker.id).
    #[arg(long)]
    pub broker_id: Option<u64>,
    /// A master's replication mode (replication.mode): `sync` answers a
    /// send once a slave has it, `async` per the flush policy.
    #[arg(long)]
    pub replication: Option<ReplicationMode>,
}

/// `ferromq namesrv` flags.
#[derive(Debug, Args)]
pub struct NamesrvArgs {
    /// Configuration file (TOML; its `[namesrv]` section is used).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to listen on (namesrv.listen); port 0 picks one.
    #[arg(long)]
    pub listen: Option<String>,
}

fn load(file: Option<&PathBuf>, overrides: &Overrides) -> Result<Config, i32> {
    Config::load(file.map(PathBuf::as_path), overrides).map_err(|e| {
        eprintln!("error: {e}");
        2
    })
}

/// Runs a broker; returns the exit code.
pub fn run_broker(a: BrokerArgs) -> i32 {
    let overrides = Overrides {
        data_dir: a.data_dir,
        listen: a.listen,
        namesrv_listen: a.namesrv_listen,
        no_embedded_namesrv: a.no_embedded_namesrv,
        namesrv_addrs: a.namesrv.as_deref().map(split_addrs),
        flush: a.flush,
        http: a.http,
        broker_name: a.broker_name,
        broker_id: a.broker_id,
        replication: a.replication,
    };
    let cfg = match load(a.config.as_ref(), &overrides) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match crate::launch::run(cfg) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// Runs a standalone name server; returns the exit code.
pub fn run_namesrv(a: NamesrvArgs) -> i32 {
    let overrides = Overrides {
        namesrv_listen: a.listen,
        ..Overrides::default()
    };
    let cfg = match load(a.config.as_ref(), &overrides) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match crate::namesrv_server::run_standalone(cfg) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}
