//! `ferromq group list|describe|reset-offsets`.

use clap::{Args, Subcommand};

use super::output::Format;
use super::{CliResult, NamesrvOpt};
use crate::client::Admin;
use crate::wire::group::ResetTarget;

/// `ferromq group …`.
#[derive(Debug, Args)]
pub struct GroupArgs {
    /// The group operation.
    #[command(subcommand)]
    pub command: GroupCmd,
}

/// Group operations.
#[derive(Debug, Subcommand)]
pub enum GroupCmd {
    /// List every group.
    List {
        #[command(flatten)]
        ns: NamesrvOpt,
    },
    /// Members, generation, strategy, assignment, committed offset and lag.
    Describe {
        /// Group name.
        group: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[command(flatten)]
        ns: NamesrvOpt,
    },
    /// Move a stopped group's offsets of a topic.
    ResetOffsets {
        /// Group name.
        group: String,
        /// Topic.
        #[arg(long)]
        topic: String,
        /// `earliest`, `latest`, an RFC 3339 time, or an offset.
        #[arg(long, value_parser = parse_reset_target)]
        to: ResetTarget,
        /// Create offsets for a group no broker knows yet (otherwise an
        /// unknown group is an error).
        #[arg(long)]
        create: bool,
        #[command(flatten)]
        ns: NamesrvOpt,
    },
}

/// Parses `earliest`, `latest`, an offset, or an RFC 3339 time.
pub fn parse_reset_target(s: &str) -> Result<ResetTarget, String> {
    match s {
        "earliest" => return Ok(ResetTarget::Earliest),
        "latest" => return Ok(ResetTarget::Latest),
        _ => {}
    }
    if let Ok(o) = s.parse::<u64>() {
        return Ok(ResetTarget::Offset(o));
    }
    parse_time_ms(s).map(ResetTarget::Timestamp)
}

/// Milliseconds since the epoch of an RFC 3339 time.
pub fn parse_time_ms(s: &str) -> Result<u64, String> {
    let t = humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("{s:?} is not earliest, latest, an offset or an RFC 3339 time: {e}"))?;
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .map_err(|e| e.to_string())
}

/// Runs a group command.
pub async fn run(a: GroupArgs) -> CliResult {
    match a.command {
        GroupCmd::List { ns } => {
            for g in Admin::new(ns.client_config()).list_groups().await? {
                outln!("{g}");
            }
        }
        GroupCmd::Describe { group, format, ns } => describe(&Admin::new(ns.client_config()), &group, format).await?,
        GroupCmd::ResetOffsets {
            group,
            topic,
            to,
            create,
            ns,
        } => {
            for o in Admin::new(ns.client_config())
                .reset_offsets(&group, &topic, to, create)
                .await?
            {
                outln!("{} {} {} {}", o.topic, o.broker_name, o.queue, o.offset);
            }
        }
    }
    Ok(())
}

async fn describe(admin: &Admin, group: &str, format: Format) -> CliResult {
    let d = admin.describe_group(group).await?;
    let queues: Vec<serde_json::Value> = admin
        .group_queues(&d)
        .await?
        .into_iter()
        .map(|q| serde_json::to_value(q).unwrap_or_default())
        .collect();
    match format {
        Format::Json => {
            let mut v = serde_json::to_value(&d)?;
            if let Some(obj) = v.as_object_mut() {
                obj.insert("queues".into(), serde_json::Value::Array(queues));
            }
            outln!("{v}");
        }
        Format::Text => {
            outln!(
                "group {} state {} generation {} strategy {} mode {}",
                d.group,
                d.state,
                d.generation,
                d.strategy,
                d.mode
            );
            for addr in &d.unreachable {
                outln!("broker {addr} unreachable: its members or offsets are not shown");
            }
            for m in &d.members {
                let qs: Vec<String> = m
                    .assignment
                    .iter()
                    .map(|q| format!("{}/{}/{}", q.topic, q.broker_name, q.queue))
                    .collect();
                outln!(
                    "member {} client {} queues [{}]",
                    m.member_id,
                    m.client_id,
                    qs.join(" ")
                );
            }
            outln!("topic broker queue committed max lag owner");
            for q in &queues {
                let opt = |v: &serde_json::Value| {
                    if v.is_null() {
                        "-".to_string()
                    } else {
                        v.to_string().trim_matches('"').to_string()
                    }
                };
                outln!(
                    "{} {} {} {} {} {} {}",
                    opt(&q["topic"]),
                    opt(&q["broker"]),
                    q["queue"],
                    opt(&q["committed_offset"]),
                    q["max_offset"],
                    q["lag"],
                    opt(&q["owner"])
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_targets_parse() {
        assert_eq!(parse_reset_target("earliest").unwrap(), ResetTarget::Earliest);
        assert_eq!(parse_reset_target("latest").unwrap(), ResetTarget::Latest);
        assert_eq!(parse_reset_target("42").unwrap(), ResetTarget::Offset(42));
        assert_eq!(
            parse_reset_target("1970-01-01T00:00:01Z").unwrap(),
            ResetTarget::Timestamp(1000)
        );
        assert!(parse_reset_target("yesterday").is_err());
    }
}
