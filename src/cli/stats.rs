//! `ferromq cluster` and `ferromq stats`: read the broker's HTTP JSON API
//! (`docs/http.md`), the same one the web console uses.

use std::time::Duration;

use clap::Args;
use serde_json::Value;

use super::output::Format;
use super::CliResult;

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
    #[command(flatten)]
    pub http: HttpOpt,
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
}

async fn get(http: &str, path: &str) -> Result<Value, String> {
    let url = format!("http://{http}{path}");
    tokio::task::spawn_blocking(move || {
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
        match agent.get(&url).call() {
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

/// Runs `cluster`.
pub async fn cluster(a: ClusterArgs) -> CliResult {
    let c = get(&a.http.http, "/api/cluster").await?;
    match a.format {
        Format::Json => outln!("{c}"),
        Format::Text => {
            outln!("cluster broker id role address");
            for b in c["brokers"].as_array().into_iter().flatten() {
                outln!(
                    "{} {} {} {} {}",
                    b["cluster"].as_str().unwrap_or("-"),
                    b["broker_name"].as_str().unwrap_or("-"),
                    b["broker_id"],
                    b["role"].as_str().unwrap_or("-"),
                    b["addr"].as_str().unwrap_or("-")
                );
            }
            for n in c["namesrv"].as_array().into_iter().flatten() {
                outln!("namesrv {}", n.as_str().unwrap_or("-"));
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
    loop {
        let o = get(&a.http.http, "/api/overview").await?;
        let mut lags = serde_json::Map::new();
        for g in o["groups"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            if let Ok(d) = get(&a.http.http, &format!("/api/groups/{g}")).await {
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
            match a.format {
                Format::Json => outln!(
                    "{}",
                    serde_json::json!({"in_per_sec": rin, "out_per_sec": rout, "connections": conns,
                        "rss_bytes": o["rss_bytes"], "lag": lags})
                ),
                Format::Text => {
                    let lag: Vec<String> = lags.iter().map(|(g, l)| format!("{g}={l}")).collect();
                    outln!(
                        "in {rin:.0}/s out {rout:.0}/s connections {conns} rss {rss:.1}MiB lag {}",
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
