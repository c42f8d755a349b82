//! Message lookups: by message id, and by key through the key index. Both
//! answer records in their stored format (what clients decode).

use bytes::Bytes;

use super::{io_err, BrokerCore, Operation};
use crate::broker::session::Session;
use crate::error::{BrokerError, ErrorKind};
use crate::record::{MessageId, StoredRecord};
use crate::wire::control::validate_topic_name;

/// Most records one key query returns.
pub const MAX_QUERY_RESULTS: u32 = 64;

impl BrokerCore {
    /// The stored record `msg_id` names; `MESSAGE_NOT_FOUND` when another
    /// broker stored it or it is gone.
    pub fn query_by_id(&self, session: &Session, msg_id: &str) -> Result<Bytes, BrokerError> {
        self.admit(session, &Operation::QueryById)?;
        let id: MessageId = msg_id
            .parse()
            .map_err(|e: crate::codec::DecodeError| BrokerError::new(ErrorKind::InvalidArgument, e.to_string()))?;
        // A slave holds its master's records byte for byte, under the
        // master's ids: it serves them when the record there is the one
        // the id names (same storing broker).
        let slave = self.role() == super::BrokerRole::Slave;
        if id.store_host != self.store_host && !slave {
            return Err(BrokerError::new(
                ErrorKind::MessageNotFound,
                format!(
                    "message {msg_id} was stored by {}, not by this broker ({})",
                    id.store_host, self.store_host
                ),
            ));
        }
        let not_found = |e: String| BrokerError::new(ErrorKind::MessageNotFound, format!("no message {msg_id}: {e}"));
        let raw = self.store.raw_record_by_id(&id).map_err(|e| not_found(e.to_string()))?;
        if id.store_host != self.store_host {
            let rec = StoredRecord::decode(raw.clone()).map_err(|e| not_found(e.to_string()))?;
            if rec.store_host != id.store_host {
                return Err(not_found(format!(
                    "the record there was stored by {}, not {}",
                    rec.store_host, id.store_host
                )));
            }
        }
        Ok(raw)
    }

    /// Up to `max` (at most [`MAX_QUERY_RESULTS`]) records of `topic`
    /// carrying `key`, newest first: their count and the records back to
    /// back.
    pub fn query_by_key(
        &self,
        session: &Session,
        topic: &str,
        key: &str,
        max: u32,
    ) -> Result<(u32, Bytes), BrokerError> {
        self.admit(session, &Operation::DescribeTopic { topic })?;
        validate_topic_name(topic).map_err(|e| BrokerError::new(ErrorKind::InvalidArgument, e.to_string()))?;
        let max = max.clamp(1, MAX_QUERY_RESULTS) as usize;
        let (count, raw) = self.store.raw_records_by_key(topic, key, max).map_err(io_err)?;
        Ok((count, raw))
    }
}
