//! The `ferromq` command line: server commands (`broker`, `namesrv`) and
//! client commands (`topic`, `produce`, `consume`, `message`). The command
//! names, flags and output formats here are a contract scripts rely on.

/// `println!` that reports a closed stdout (`| head`) as an error instead of
/// panicking; only for functions returning [`CliResult`].
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

pub mod bench;
pub mod consume;
pub mod dlq;
pub mod group;
pub mod message;
pub mod output;
pub mod produce;
pub mod server;
pub mod stats;
pub mod store;
pub mod topic;

use clap::{Args, Parser, Subcommand};

use std::path::PathBuf;
use std::sync::Arc;

use crate::client::{ClientConfig, Credentials};
use crate::tls::ClientTls;

/// FerroMQ: a persistent, distributed message broker.
#[derive(Debug, Parser)]
#[command(name = "ferromq", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Cmd,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run a broker (with an embedded name server unless told otherwise).
    Broker(server::BrokerArgs),
    /// Run a standalone name server.
    Namesrv(server::NamesrvArgs),
    /// Create, list, describe and delete topics.
    Topic(topic::TopicArgs),
    /// Send messages (stdin lines, or generated with --count).
    Produce(produce::ProduceArgs),
    /// Print a topic's messages.
    Consume(consume::ConsumeArgs),
    /// Look messages up by id or key.
    Message(message::MessageArgs),
    /// List, describe and reset consumer groups.
    Group(group::GroupArgs),
    /// List and resend a group's dead letters.
    Dlq(dlq::DlqArgs),
    /// Brokers and name servers, each pinged: `up` or `unreachable`.
    Cluster(stats::ClusterArgs),
    /// A compact live view of rates, connections, memory and lag.
    Stats(stats::StatsArgs),
    /// Load generators and the disk's own limits.
    Bench(bench::BenchArgs),
    /// Check a stopped broker's data directory offline (`store verify`).
    Store(store::StoreArgs),
}

/// Where the name servers are; every client command takes it.
#[derive(Debug, Clone, Args)]
pub struct NamesrvOpt {
    /// Name server addresses, comma separated.
    #[arg(
        short = 'n',
        long = "namesrv",
        env = "FERROMQ_NAMESRV",
        default_value = "127.0.0.1:9876"
    )]
    pub namesrv: String,
    /// Access key of the account that signs every request (ACL).
    #[arg(long, env = "FERROMQ_ACCESS_KEY")]
    pub access_key: Option<String>,
    /// Secret key of `--access-key`.
    #[arg(long, env = "FERROMQ_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,
    /// Connect with TLS.
    #[arg(long, env = "FERROMQ_TLS")]
    pub tls: bool,
    /// CA certificate (PEM) to trust for TLS (implies --tls; default: the
    /// built-in web roots).
    #[arg(long, env = "FERROMQ_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS (implies --tls).
    #[arg(long, env = "FERROMQ_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "FERROMQ_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl NamesrvOpt {
    /// Client settings for these name servers, signing and encrypting as
    /// the flags say. A TLS file that cannot be loaded, or a key without
    /// its secret, ends the process with exit code 2 and the reason.
    pub fn client_config(&self) -> ClientConfig {
        match self.try_client_config() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(2)
            }
        }
    }

    /// Client settings for these name servers, or why the flags do not
    /// make any.
    pub fn try_client_config(&self) -> Result<ClientConfig, String> {
        let mut cfg = ClientConfig::new(split_addrs(&self.namesrv));
        // An empty value (an exported but empty variable) counts as unset.
        let given = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        match (given(&self.access_key), given(&self.secret_key)) {
            (Some(k), Some(s)) => cfg.security.credentials = Some(Credentials::new(k, s)),
            (Some(k), None) => return Err(format!("--access-key {k} needs --secret-key (or FERROMQ_SECRET_KEY)")),
            (None, Some(_)) => return Err("--secret-key needs --access-key (or FERROMQ_ACCESS_KEY)".into()),
            (None, None) => {}
        }
        if self.tls || self.tls_ca.is_some() || self.tls_cert.is_some() {
            let tls = ClientTls::from_files(
                self.tls_ca.as_deref(),
                self.tls_cert.as_deref(),
                self.tls_key.as_deref(),
            )?;
            cfg.security.tls = Some(Arc::new(tls));
        }
        Ok(cfg)
    }
}

/// Splits a comma-separated address list, dropping blanks.
pub fn split_addrs(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect()
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .try_init();
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Broker(a) => {
            init_logging("info");
            server::run_broker(a)
        }
        Cmd::Namesrv(a) => {
            init_logging("info");
            server::run_namesrv(a)
        }
        Cmd::Store(a) => {
            init_logging("warn");
            store::run(a)
        }
        other => {
            init_logging("warn");
            let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return 1;
                }
            };
            let result = rt.block_on(async move {
                match other {
                    Cmd::Topic(a) => topic::run(a).await,
                    Cmd::Produce(a) => produce::run(a).await,
                    Cmd::Consume(a) => consume::run(a).await,
                    Cmd::Message(a) => message::run(a).await,
                    Cmd::Group(a) => group::run(a).await,
                    Cmd::Dlq(a) => dlq::run(a).await,
                    Cmd::Cluster(a) => stats::cluster(a).await,
                    Cmd::Stats(a) => stats::stats(a).await,
                    Cmd::Bench(a) => bench::run(a).await,
                    Cmd::Broker(_) | Cmd::Namesrv(_) | Cmd::Store(_) => Ok(()),
                }
            });
            match result {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("error: {e}");
                    1
                }
            }
        }
    }
}

/// Error of a client command: printed as `error: …`, exit code 1.
pub type CliResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_parses() {
        let ok = [
            "ferromq broker --config c.toml --data-dir d --listen 127.0.0.1:0 --namesrv-listen 127.0.0.1:0 --flush sync",
            "ferromq broker --no-embedded-namesrv --namesrv a:1,b:2",
            "ferromq namesrv --listen 127.0.0.1:0",
            "ferromq topic create orders --queues 4 -n 127.0.0.1:1",
            "ferromq topic list",
            "ferromq topic describe orders --format json",
            "ferromq topic delete orders",
            "ferromq produce --topic t --tag a --key k --property x=1 --property y=2",
            "ferromq produce --topic t --count 10 --size 100 --batch 5",
            "ferromq consume --topic t --tag a||b --from earliest --count 3 --idle-timeout 2 --format json",
            "ferromq message get 7f0000012a9f0000000000000000",
            "ferromq message find --topic t --key k --format json",
            "ferromq consume --topic t --group g --mode broadcasting --strategy sticky",
            "ferromq group list",
            "ferromq group describe g --format json",
            "ferromq group reset-offsets g --topic t --to 2026-01-01T00:00:00Z",
            "ferromq produce --topic t --ttl 30s --delay-level 3",
            "ferromq produce --topic t --deliver-at +90s",
            "ferromq produce --topic t --deliver-at 2026-11-23T10:00:00Z",
            "ferromq consume --topic t --group g --ack-timeout 5s --nack-every 3 --orderly",
            "ferromq dlq list g --format json",
            "ferromq dlq resend g --all",
            "ferromq dlq resend g --msg-id 7f0000012a9f0000000000000000",
            "ferromq topic create t --queues 2 --ttl 10m",
            "ferromq cluster --http 127.0.0.1:8080 --format json",
            "ferromq stats --interval 0.5 --count 3",
            "ferromq broker --http 0",
            "ferromq produce --topic t --access-key app --secret-key app-secret-00001",
            "ferromq topic list --tls --tls-ca ca.pem --tls-cert c.pem --tls-key k.pem",
        ];
        for line in ok {
            Cli::try_parse_from(line.split(' ')).unwrap_or_else(|e| panic!("{line}: {e}"));
        }
        for bad in [
            "ferromq produce",
            "ferromq consume --topic t --from yesterday",
            "ferromq broker --flush maybe",
            "ferromq produce --topic t --delay-level 19",
            "ferromq produce --topic t --delay-level 2 --deliver-at +1s",
            "ferromq consume --topic t --ack-timeout 5s",
            "ferromq dlq resend g",
        ] {
            assert!(Cli::try_parse_from(bad.split(' ')).is_err(), "{bad}");
        }
    }

    fn ns_opt(access: Option<&str>, secret: Option<&str>) -> NamesrvOpt {
        NamesrvOpt {
            namesrv: "127.0.0.1:9876".into(),
            access_key: access.map(String::from),
            secret_key: secret.map(String::from),
            tls: false,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
        }
    }

    #[test]
    fn credentials_come_in_pairs_and_empty_values_count_as_unset() {
        let cfg = ns_opt(Some("app"), Some("app-secret-00001"))
            .try_client_config()
            .unwrap();
        assert_eq!(cfg.security.credentials.map(|c| c.access_key).as_deref(), Some("app"));
        assert!(ns_opt(Some(""), Some(""))
            .try_client_config()
            .unwrap()
            .security
            .credentials
            .is_none());
        assert!(ns_opt(None, None)
            .try_client_config()
            .unwrap()
            .security
            .credentials
            .is_none());
        let e = ns_opt(Some("app"), Some("")).try_client_config().unwrap_err();
        assert!(e.contains("needs --secret-key"), "{e}");
        let e = ns_opt(None, Some("s3cret-s3cret")).try_client_config().unwrap_err();
        assert!(e.contains("needs --access-key") && !e.contains("s3cret"), "{e}");
    }

    #[test]
    fn address_lists_split_on_commas() {
        assert_eq!(split_addrs(" a:1, ,b:2"), ["a:1", "b:2"]);
    }
}
