//! `ferromq message get|find`.

use clap::{Args, Subcommand};

use super::output::{format_message, Format};
use super::{CliResult, NamesrvOpt};
use crate::client::Admin;

/// `ferromq message …`.
#[derive(Debug, Args)]
pub struct MessageArgs {
    /// The lookup.
    #[command(subcommand)]
    pub command: MessageCmd,
}

/// Message lookups.
#[derive(Debug, Subcommand)]
pub enum MessageCmd {
    /// Print the message with this id.
    Get {
        /// Message id (as printed by produce).
        msg_id: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[command(flatten)]
        ns: NamesrvOpt,
    },
    /// Print the messages of a topic carrying a key, newest first.
    Find {
        /// Topic.
        #[arg(long)]
        topic: String,
        /// Message key.
        #[arg(long)]
        key: String,
        /// Most messages to print.
        #[arg(long, default_value_t = 32)]
        max: u32,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[command(flatten)]
        ns: NamesrvOpt,
    },
}

/// Runs a message lookup.
pub async fn run(a: MessageArgs) -> CliResult {
    match a.command {
        MessageCmd::Get { msg_id, format, ns } => {
            let rec = Admin::new(ns.client_config()).get_message(&msg_id).await?;
            outln!("{}", format_message(&rec, format));
        }
        MessageCmd::Find {
            topic,
            key,
            max,
            format,
            ns,
        } => {
            let found = Admin::new(ns.client_config()).find_messages(&topic, &key, max).await?;
            if found.is_empty() {
                return Err("message not found".into());
            }
            for rec in &found {
                outln!("{}", format_message(rec, format));
            }
        }
    }
    Ok(())
}
