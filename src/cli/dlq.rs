//! `ferromq dlq list|resend`: a group's dead letters.

use clap::{Args, Subcommand};

use super::output::Format;
use super::{CliResult, NamesrvOpt};
use crate::client::dlq::ResendSelection;
use crate::client::Admin;
use crate::message::props;
use crate::render::dead_letter_json;

/// `ferromq dlq …`.
#[derive(Debug, Args)]
pub struct DlqArgs {
    /// The dead-letter operation.
    #[command(subcommand)]
    pub command: DlqCmd,
}

/// Dead-letter operations.
#[derive(Debug, Subcommand)]
pub enum DlqCmd {
    /// Print the dead letters of a group (`%DLQ%<group>`).
    List {
        /// Consumer group.
        group: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[command(flatten)]
        ns: NamesrvOpt,
    },
    /// Send dead letters back to the topic they came from.
    Resend {
        /// Consumer group.
        group: String,
        /// The dead letter with this id (its own or its original id).
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        msg_id: Option<String>,
        /// Every dead letter not sent back by an earlier `--all`.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        ns: NamesrvOpt,
    },
}

/// Runs a dead-letter command.
pub async fn run(a: DlqArgs) -> CliResult {
    match a.command {
        DlqCmd::List { group, format, ns } => {
            for (_, entry) in Admin::new(ns.client_config()).dlq_list(&group).await? {
                let r = &entry.record;
                match format {
                    Format::Json => outln!("{}", dead_letter_json(&entry)),
                    Format::Text => {
                        let p = |k: &str| r.properties.get(k).map_or("-", String::as_str);
                        outln!(
                            "msg_id={} origin={}/{}@{} origin_msg_id={} reason={} deliveries={} resent={} body={}",
                            r.msg_id(),
                            p(props::ORIGIN_TOPIC),
                            p(props::ORIGIN_QUEUE),
                            p(props::ORIGIN_OFFSET),
                            p(props::ORIGIN_MSG_ID),
                            p(props::DLQ_REASON),
                            p(props::DELIVERY_COUNT),
                            entry.resent,
                            String::from_utf8_lossy(&r.body)
                        );
                    }
                }
            }
        }
        DlqCmd::Resend { group, msg_id, all, ns } => {
            let which = match (msg_id, all) {
                (Some(id), _) => ResendSelection::MessageId(id),
                (None, _) => ResendSelection::AllNew,
            };
            let sent = Admin::new(ns.client_config()).dlq_resend(&group, &which).await?;
            for (dead, result) in &sent {
                outln!(
                    "resent {} to {} as {} {} {}",
                    dead.msg_id(),
                    dead.properties.get(props::ORIGIN_TOPIC).map_or("-", String::as_str),
                    result.queue_id,
                    result.queue_offset,
                    result.msg_id
                );
            }
            outln!("resent {} dead letters", sent.len());
        }
    }
    Ok(())
}
