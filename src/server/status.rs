//! The native protocol's edge for errors: each [`ErrorKind`] of the broker
//! core becomes one wire [`Status`] here and nowhere else.

use crate::error::{BrokerError, ErrorKind};
use crate::wire::{Frame, Status};

/// The wire status of an error kind.
pub fn status_of(kind: ErrorKind) -> Status {
    match kind {
        ErrorKind::Internal => Status::SystemError,
        ErrorKind::Busy => Status::SystemBusy,
        ErrorKind::Unsupported => Status::UnknownCommand,
        ErrorKind::Malformed => Status::MalformedFrame,
        ErrorKind::InvalidArgument => Status::InvalidArgument,
        ErrorKind::TopicNotExist => Status::TopicNotExist,
        ErrorKind::QueueNotExist => Status::QueueNotExist,
        ErrorKind::MessageNotFound => Status::MessageNotFound,
        ErrorKind::IllegalGeneration => Status::IllegalGeneration,
        ErrorKind::UnknownMember => Status::UnknownMember,
        ErrorKind::RebalanceInProgress => Status::RebalanceInProgress,
        ErrorKind::GroupNotEmpty => Status::GroupNotEmpty,
        ErrorKind::GroupNotExist => Status::GroupNotExist,
        ErrorKind::NotCoordinator => Status::NotCoordinator,
        ErrorKind::NotQueueOwner => Status::NotQueueOwner,
        ErrorKind::Store => Status::StoreError,
        ErrorKind::Unavailable => Status::ServiceUnavailable,
        ErrorKind::DiskFull => Status::DiskFull,
        ErrorKind::NotMaster => Status::NotMaster,
        ErrorKind::SlaveNotAvailable => Status::SlaveNotAvailable,
        ErrorKind::AccessDenied => Status::AccessDenied,
        ErrorKind::InternalTopic => Status::InternalTopic,
    }
}

/// An error response frame (correlation id set by the connection).
pub fn error_frame(e: BrokerError) -> Frame {
    let status = status_of(e.kind());
    Frame::error(0, status, e.into_message())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_status() {
        use ErrorKind::*;
        let kinds = [
            Internal,
            Busy,
            Unsupported,
            Malformed,
            InvalidArgument,
            TopicNotExist,
            QueueNotExist,
            MessageNotFound,
            IllegalGeneration,
            UnknownMember,
            RebalanceInProgress,
            GroupNotEmpty,
            GroupNotExist,
            NotCoordinator,
            NotQueueOwner,
            Store,
            Unavailable,
            DiskFull,
            NotMaster,
            SlaveNotAvailable,
            AccessDenied,
            InternalTopic,
        ];
        let statuses: std::collections::HashSet<_> = kinds.iter().map(|k| status_of(*k)).collect();
        assert_eq!(statuses.len(), kinds.len());
        assert!(!statuses.contains(&Status::Success));
    }
}
