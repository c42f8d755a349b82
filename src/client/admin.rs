//! Administration: topics, message lookup, cluster view.

use std::sync::Arc;

use bytes::Bytes;

use super::core::{ClientConfig, ClientCore};
use super::error::{ClientError, ClientResult};
use crate::store::record::{MessageId, StoredRecord};
use crate::wire::control::{
    from_json, to_json, AllTopics, ClusterInfo, CreateTopic, QueryById, QueryByKey, TopicRef, TopicStats,
};
use crate::wire::{Command, DecodeError};

/// Admin operations.
#[derive(Debug, Clone)]
pub struct Admin {
    core: Arc<ClientCore>,
}

impl Admin {
    /// An admin client using `cfg`'s name servers.
    pub fn new(cfg: ClientConfig) -> Admin {
        Admin {
            core: ClientCore::new(cfg),
        }
    }

    async fn broker(&self, addr: &str, cmd: Command, header: Bytes) -> ClientResult<Bytes> {
        let timeout = self.core.cfg.request_timeout;
        Ok(self.core.request(addr, cmd, header, Bytes::new(), timeout).await?.1)
    }

    /// Creates `topic` with `queues` queues on every master broker.
    pub async fn create_topic(&self, topic: &str, queues: u32) -> ClientResult<()> {
        let masters: Vec<String> = self
            .cluster_info()
            .await?
            .brokers
            .into_iter()
            .filter(|b| b.broker_id == 0)
            .map(|b| b.addr)
            .collect();
        if masters.is_empty() {
            return Err(ClientError::NoRoute(
                "no live master broker to create the topic on".into(),
            ));
        }
        let header = to_json(&CreateTopic {
            topic: topic.to_string(),
            queues,
        });
        for addr in masters {
            self.broker(&addr, Command::CreateTopic, header.clone()).await?;
        }
        self.core.invalidate(topic);
        Ok(())
    }

    /// Deletes `topic` on every broker serving it.
    pub async fn delete_topic(&self, topic: &str) -> ClientResult<()> {
        let route = self.core.route(topic, true).await?;
        let header = to_json(&TopicRef {
            topic: topic.to_string(),
        });
        for b in &route.brokers {
            for addr in b.addrs.values() {
                self.broker(addr, Command::DeleteTopic, header.clone()).await?;
            }
        }
        self.core.invalidate(topic);
        Ok(())
    }

    /// Every topic any live broker serves.
    pub async fn list_topics(&self) -> ClientResult<Vec<String>> {
        let body = self.core.namesrv(Command::GetAllTopics, Bytes::new()).await?;
        Ok(from_json::<AllTopics>(&body, "topics")?.topics)
    }

    /// Per-queue offsets of `topic` on each broker group (master).
    pub async fn describe_topic(&self, topic: &str) -> ClientResult<Vec<(String, TopicStats)>> {
        let route = self.core.route(topic, true).await?;
        let header = to_json(&TopicRef {
            topic: topic.to_string(),
        });
        let mut out = Vec::new();
        for b in &route.brokers {
            let Some(addr) = b.addrs.get(&0) else { continue };
            let body = self.broker(addr, Command::TopicStats, header.clone()).await?;
            out.push((b.broker_name.clone(), from_json(&body, "topic stats")?));
        }
        Ok(out)
    }

    /// The message a message id names (asked of the broker in the id).
    pub async fn get_message(&self, msg_id: &str) -> ClientResult<StoredRecord> {
        let id: MessageId = msg_id.parse()?;
        let header = to_json(&QueryById {
            msg_id: msg_id.to_string(),
        });
        let body = self
            .broker(&id.store_host.to_string(), Command::QueryMessageById, header)
            .await?;
        Ok(StoredRecord::decode(body)?)
    }

    /// Messages of `topic` carrying `key`, newest first, from every broker.
    pub async fn find_messages(&self, topic: &str, key: &str, max: u32) -> ClientResult<Vec<StoredRecord>> {
        let route = self.core.route(topic, true).await?;
        let header = to_json(&QueryByKey {
            topic: topic.to_string(),
            key: key.to_string(),
            max,
        });
        let mut out = Vec::new();
        for b in &route.brokers {
            let Some(addr) = b.addrs.get(&0) else { continue };
            let body = self.broker(addr, Command::QueryMessageByKey, header.clone()).await?;
            if body.len() < 4 {
                return Err(DecodeError::invalid("key query", "missing count").into());
            }
            let count = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
            out.extend(StoredRecord::decode_all(body.slice(4..), count)?);
        }
        Ok(out)
    }

    /// Every live broker.
    pub async fn cluster_info(&self) -> ClientResult<ClusterInfo> {
        self.core.cluster_info().await
    }
}
