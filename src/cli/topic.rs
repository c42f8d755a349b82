//! `ferromq topic create|list|describe|delete`.

use clap::{Args, Subcommand};
use serde_json::json;

use super::output::Format;
use super::{CliResult, NamesrvOpt};
use crate::client::Admin;
use crate::wire::control::TopicStats;

/// `ferromq topic …`.
#[derive(Debug, Args)]
pub struct TopicArgs {
    /// The topic operation.
    #[command(subcommand)]
    pub command: TopicCmd,
}

/// Topic operations.
#[derive(Debug, Subcommand)]
pub enum TopicCmd {
    /// Create a topic (or change its queue count) on every master broker.
    Create {
        /// Topic name.
        name: String,
        /// Queues per broker.
        #[arg(long, default_value_t = 8)]
        queues: u32,
        /// Default time to live of its messages (e.g. `30s`, `10m`); an
        /// expired message is never delivered and is dead-lettered.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
        #[command(flatten)]
        ns: NamesrvOpt,
    },
    /// List every topic.
    List {
        #[command(flatten)]
        ns: NamesrvOpt,
    },
    /// Show each queue's offsets, then each broker group's store (commitlog
    /// size, disk usage, watermark level, whether sends are refused); a
    /// broker group that cannot be reached is shown as `unreachable`
    /// (JSON: `"brokers": [{"unreachable": true}]`, and a `store` object
    /// per reachable group).
    Describe {
        /// Topic name.
        name: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[command(flatten)]
        ns: NamesrvOpt,
    },
    /// Delete a topic on every broker serving it.
    Delete {
        /// Topic name.
        name: String,
        #[command(flatten)]
        ns: NamesrvOpt,
    },
}

/// Runs a topic command.
pub async fn run(a: TopicArgs) -> CliResult {
    match a.command {
        TopicCmd::Create { name, queues, ttl, ns } => {
            Admin::new(ns.client_config())
                .create_topic_with_ttl(&name, queues, ttl)
                .await?;
            outln!("created topic {name} with {queues} queues per broker");
        }
        TopicCmd::List { ns } => {
            for t in Admin::new(ns.client_config()).list_topics().await? {
                outln!("{t}");
            }
        }
        TopicCmd::Describe { name, format, ns } => {
            let brokers = Admin::new(ns.client_config()).describe_topic_brokers(&name).await?;
            match format {
                Format::Text => {
                    outln!("broker queue min_offset max_offset");
                    for b in &brokers {
                        match &b.stats {
                            Some(s) => {
                                for q in &s.queues {
                                    outln!("{} {} {} {}", b.broker_name, q.queue, q.min_offset, q.max_offset);
                                }
                            }
                            None => outln!(
                                "{} - - - unreachable {} ({})",
                                b.broker_name,
                                b.addr,
                                b.error.as_deref().unwrap_or("no answer")
                            ),
                        }
                    }
                    for b in &brokers {
                        if let Some(store) = b.stats.as_ref().and_then(|s| s.store.as_ref()) {
                            outln!("{}", crate::render::store_line(&b.broker_name, store));
                        }
                    }
                }
                Format::Json => {
                    let reachable: Vec<(String, TopicStats)> = brokers
                        .iter()
                        .filter_map(|b| b.stats.clone().map(|s| (b.broker_name.clone(), s)))
                        .collect();
                    let queues = crate::render::topic_queues_json(&reachable);
                    let groups: Vec<_> = brokers
                        .iter()
                        .map(|b| {
                            let mut o =
                                json!({"broker": b.broker_name, "addr": b.addr, "unreachable": b.unreachable()});
                            if let Some(e) = &b.error {
                                o["error"] = json!(e);
                            }
                            if let Some(store) = b.stats.as_ref().and_then(|s| s.store.as_ref()) {
                                o["store"] = crate::render::store_json(store);
                            }
                            o
                        })
                        .collect();
                    outln!("{}", json!({"topic": name, "queues": queues, "brokers": groups}));
                }
            }
        }
        TopicCmd::Delete { name, ns } => {
            Admin::new(ns.client_config()).delete_topic(&name).await?;
            outln!("deleted topic {name}");
        }
    }
    Ok(())
}
