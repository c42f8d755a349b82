//! `ferromq cluster` and `ferromq stats`. `stats` reads the broker's HTTP
//! JSON API (`docs/http.md`), the same one the web console uses; `cluster`
//! asks the name servers (or, with `--http`, that API) and pings every name
//! server and broker to show which are up.
//!
//! With `--access-key`/`--secret-key`, requests to the HTTP API carry them
//! as HTTP basic authentication (a broker with ACL on asks for it).

use std::time::Duration;

use clap::Args;
use serde_json::Value;

use super::output::Format;
use super::{CliResult, NamesrvOpt};
use crate::client::Admin;

/// Where the HTTP API is.
#[derive(Debug, Args)]
pub struct HttpOpt {
    /// A broker's HTTP address (its `--http`).
    #[arg(long = "http", env = "FERROMQ_HTTP", default_value = "127.0.0.1:8080")]
    pub http: String,
}

/// `ferromq cluster` flags.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Read the broker list from this broker's HTTP API (its `--http`)
    /// instead of from the name servers.
    #[arg(long = "http", env = "FERROMQ_HTTP")]
    pub http: Option<String>,
    #[command(flatten)]
    pub ns: NamesrvOpt,
}

/// `ferromq stats` flags.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Seconds between lines.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
    /// Print this many lines, then exit (default: until interrupted).
    #[arg(long)]
    pub count: Option<u64>,
    /// Output format (`json`: one object per line).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    #[command(flatten)]
    pub http: HttpOpt,
    /// `--access-key`/`--secret-key` (sent to the HTTP API as basic
    /// authentication).
    #[command(flatten)]
    pub ns: NamesrvOpt,
}

/// The `Authorization` header for the HTTP API from the account flags
/// (`None` without an access key); `Err` for a key without its secret.
fn http_auth(ns: &NamesrvOpt) -> Result<Option<String>, String> {
    match (&ns.access_key, &ns.secret_key) {
        (Some(k), Some(s)) if !k.is_empty() => Ok(Some(crate::http::guard::basic_auth(k, s))),
        (Some(k), None) if !k.is_empty() => Err(format!("--access-key {k} needs --secret-key (or FERROMQ_SECRET_KEY)")),
        (None, Some(_)) => Err("--secret-key needs --access-key (or FERROMQ_ACCESS_KEY)".into()),
        _ => Ok(None),
    }
}

async fn get(http: &str, path: &str, auth: Option<&str>) -> Result<Value, String> {
    let url = format!("http://{http}{path}");
    let auth = auth.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
        let mut req = agent.get(&url);
        if let Some(a) = &auth {
            req = req.set("Authorization", a);
        }
        match req.call() {
            Ok(r) => r.into_json::<Value>().map_err(|e| format!("{url}: bad JSON: {e}")),
            Err(ureq::Error::Status(code, r)) => {
                let body: Value = r.into_json().unwrap_or_default();
                Err(format!("{url}: HTTP {code}: {}", body["error"].as_str().unwrap_or("")))
            }
            Err(e) => Err(format!("{url}: {e}")),
        }
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Runs `cluster`: every broker (marked `up` or `unreachable` by a ping) and
/// every name server (likewise). From the name servers it succeeds as long
/// as one of them answers; with `--http`, as long as that API answers.
pub async fn cluster(a: ClusterArgs) -> CliResult {
    let (namesrvs, brokers): (Vec<String>, Vec<Value>) = match &a.http {
        Some(http) => {
            let auth = http_auth(&a.ns)?;
            let c = get(http, "/api/cluster", auth.as_deref()).await?;
            let ns = c["namesrv"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n.as_str().map(str::to_string))
                .collect();
            (ns, c["brokers"].as_array().cloned().unwrap_or_default())
        }
        None => (super::split_addrs(&a.ns.namesrv), Vec::new()),
    };
    let mut client_cfg = a.ns.try_client_config()?;
    client_cfg.namesrv_addrs = namesrvs.clone();
    let admin = Admin::new(client_cfg);
    let ns_status = admin.namesrv_status().await;
    let brokers = match &a.http {
        Some(_) => brokers,
        None => {
            if !ns_status.iter().any(|(_, r)| r.is_ok()) {
                let why: Vec<String> = ns_status
                    .iter()
                    .map(|(addr, r)| {
                        format!(
                            "{addr}: {}",
                            r.as_ref().err().map_or_else(String::new, |e| e.to_string())
                        )
                    })
                    .collect();
                return Err(format!("no name server answered ({})", why.join("; ")).into());
            }
            let mut info = admin.cluster_info().await?.brokers;
            info.sort_by(|x, y| (&x.broker_name, x.broker_id).cmp(&(&y.broker_name, y.broker_id)));
            info.iter()
                .map(|b| {
                    serde_json::json!({
                        "cluster": b.cluster,
                        "broker_name": b.broker_name,
                        "broker_id": b.broker_id,
                        "role": if b.broker_id == 0 { "master" } else { "slave" },
                        "addr": b.addr,
                        "master": b.replication.as_ref().and_then(|r| r.master.clone()),
                        "lag_bytes": b.replication.as_ref().map(|r| r.lag_bytes),
                        "lag_ms": b.replication.as_ref().map(|r| r.lag_ms),
                        "links": b.replication.as_ref().map(|r| r.links),
                    })
                })
                .collect()
        }
    };
    let pings = futures::future::join_all(
        brokers
            .iter()
            .map(|b| admin.ping(b["addr"].as_str().unwrap_or_default())),
    )
    .await;
    let brokers: Vec<Value> = brokers
        .into_iter()
        .zip(pings)
        .map(|(mut b, r)| {
            b["unreachable"] = Value::Bool(r.is_err());
            if let Err(e) = r {
                b["error"] = Value::String(e.to_string());
            }
            b
        })
        .collect();
    match a.format {
        Format::Json => {
            let status: Vec<Value> = ns_status
                .iter()
                .map(|(addr, r)| match r {
                    Ok(_) => serde_json::json!({"addr": addr, "up": true}),
                    Err(e) => serde_json::json!({"addr": addr, "up": false, "error": e.to_string()}),
                })
                .collect();
            outln!(
                "{}",
                serde_json::json!({"namesrv": namesrvs, "namesrv_status": status, "brokers": brokers})
            );
        }
        Format::Text => {
            outln!("cluster broker id role address status master lag_bytes lag_ms");
            for b in &brokers {
                let or_dash = |v: &Value| match v {
                    Value::Null => "-".to_string(),
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                outln!(
                    "{} {} {} {} {} {} {} {} {}",
                    b["cluster"].as_str().unwrap_or("-"),
                    b["broker_name"].as_str().unwrap_or("-"),
                    b["broker_id"],
                    b["role"].as_str().unwrap_or("-"),
                    b["addr"].as_str().unwrap_or("-"),
                    if b["unreachable"] == Value::Bool(true) {
                        "unreachable"
                    } else {
                        "up"
                    },
                    or_dash(&b["master"]),
                    or_dash(&b["lag_bytes"]),
                    or_dash(&b["lag_ms"]),
                );
            }
            for (addr, r) in &ns_status {
                outln!("namesrv {addr} {}", if r.is_ok() { "up" } else { "unreachable" });
            }
        }
    }
    Ok(())
}

/// Runs `stats`: one line per interval with rates, connections, memory and
/// each group's total lag.
pub async fn stats(a: StatsArgs) -> CliResult {
    let interval = Duration::from_secs_f64(a.interval.max(0.1));
    let mut last: Option<Value> = None;
    let mut printed = 0u64;
    let auth = http_auth(&a.ns)?;
    let auth = auth.as_deref();
    loop {
        let o = get(&a.http.http, "/api/overview", auth).await?;
        let mut lags = serde_json::Map::new();
        for g in o["groups"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            if let Ok(d) = get(&a.http.http, &format!("/api/groups/{g}"), auth).await {
                lags.insert(g.to_string(), d["lag"].clone());
            }
        }
        if let Some(prev) = &last {
            let secs =
                (o["time_ms"].as_f64().unwrap_or(0.0) - prev["time_ms"].as_f64().unwrap_or(0.0)).max(1.0) / 1000.0;
            let rate = |k: &str| (o[k].as_f64().unwrap_or(0.0) - prev[k].as_f64().unwrap_or(0.0)) / secs;
            let (rin, rout) = (rate("messages_in_total"), rate("messages_out_total"));
            let conns = &o["connections"]["broker"];
            let rss = o["rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0;
            let anon = o["rss_anon_bytes"].as_f64().unwrap_or(0.0) / 1048576.0;
            match a.format {
                Format::Json => outln!(
                    "{}",
                    serde_json::json!({"in_per_sec": rin, "out_per_sec": rout, "connections": conns,
                        "rss_bytes": o["rss_bytes"], "rss_anon_bytes": o["rss_anon_bytes"],
                        "rss_file_bytes": o["rss_file_bytes"], "lag": lags})
                ),
                Format::Text => {
                    let lag: Vec<String> = lags.iter().map(|(g, l)| format!("{g}={l}")).collect();
                    outln!(
                        "in {rin:.0}/s out {rout:.0}/s connections {conns} rss {rss:.1}MiB anon {anon:.1}MiB lag {}",
                        if lag.is_empty() { "-".to_string() } else { lag.join(" ") }
                    );
                }
            }
            printed += 1;
            if a.count.is_some_and(|c| printed >= c) {
                return Ok(());
            }
        }
        last = Some(o);
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Cmd};

    #[test]
    fn cluster_reads_the_name_servers_unless_given_an_http_address() {
        let parse = |line: &str| match Cli::try_parse_from(line.split(' ')).unwrap().command {
            Cmd::Cluster(a) => a,
            other => panic!("{other:?}"),
        };
        let a = parse("ferromq cluster -n 127.0.0.1:1,127.0.0.1:2 --format json");
        assert_eq!(a.ns.namesrv, "127.0.0.1:1,127.0.0.1:2");
        if std::env::var_os("FERROMQ_HTTP").is_none() {
            assert!(a.http.is_none());
        }
        let a = parse("ferromq cluster --http 127.0.0.1:8080");
        assert_eq!(a.http.as_deref(), Some("127.0.0.1:8080"));
    }
}
