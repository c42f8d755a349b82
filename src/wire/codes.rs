//! Command codes (requests) and status codes (responses).

/// A request, oneway or push command code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Command {
    /// Liveness probe; answered with an empty success.
    Ping = 1,
    /// Append a batch of messages to one topic queue.
    SendMessage = 10,
    /// Read messages from one topic queue, optionally long-polling.
    PullMessage = 11,
    /// Smallest and next queue offset of a topic queue.
    GetOffsets = 12,
    /// Fetch one record by message id.
    QueryMessageById = 13,
    /// Fetch records carrying a message key.
    QueryMessageByKey = 14,
    /// Create a topic (or change its queue count).
    CreateTopic = 20,
    /// Delete a topic and its consume queues.
    DeleteTopic = 21,
    /// Per-queue offsets of a topic.
    TopicStats = 22,
    /// Join (or rejoin) a consumer group; answered after the rebalance.
    JoinGroup = 30,
    /// Re-read the member's assignment for its generation.
    SyncGroup = 31,
    /// Keep a member alive; tells it when to rejoin.
    Heartbeat = 32,
    /// Leave a group at once (fast rebalance).
    LeaveGroup = 33,
    /// Store a group's consumed offsets.
    CommitOffsets = 34,
    /// Read a group's committed offsets of a topic.
    FetchOffsets = 35,
    /// Every group this broker coordinates or stores offsets for.
    ListGroups = 36,
    /// Members, generation, assignment and offsets of a group.
    DescribeGroup = 37,
    /// Move a stopped group's offsets.
    ResetOffsets = 38,
    /// First queue offset stored at or after a time.
    SearchOffset = 39,
    /// Take messages of one queue for a group, tracked until acknowledged.
    ReceiveMessage = 40,
    /// Settle delivered messages.
    AckMessage = 41,
    /// Reject delivered messages: redeliver after backoff, or dead-letter.
    NackMessage = 42,
    /// Slave → master: start (or restart) replication; the slave names its
    /// log's end and its last records so the master can detect divergence.
    ReplicaHandshake = 110,
    /// Slave → master: commitlog bytes from an offset (long-polled); the
    /// offset also confirms everything below it.
    ReplicaFetch = 111,
    /// Slave → master: topic configuration, for the slave's topic table.
    ReplicaTopics = 112,
    /// Slave → master (oneway): the slave has stored everything below an
    /// offset (sent after each chunk while the next fetch is in flight).
    ReplicaAck = 113,
    /// Server push: the member's group is rebalancing; rejoin now.
    NotifyRebalance = 500,
    /// A broker announces itself and its topics to a name server.
    RegisterBroker = 100,
    /// A broker leaves the name server.
    UnregisterBroker = 101,
    /// Which brokers serve a topic.
    GetRoute = 102,
    /// Every topic any live broker serves.
    GetAllTopics = 103,
    /// Every live broker.
    GetClusterInfo = 104,
}

impl Command {
    /// The command for a wire code, if it is one.
    pub fn from_code(code: u16) -> Option<Command> {
        use Command::*;
        Some(match code {
            1 => Ping,
            10 => SendMessage,
            11 => PullMessage,
            12 => GetOffsets,
            13 => QueryMessageById,
            14 => QueryMessageByKey,
            20 => CreateTopic,
            21 => DeleteTopic,
            22 => TopicStats,
            30 => JoinGroup,
            31 => SyncGroup,
            32 => Heartbeat,
            33 => LeaveGroup,
            34 => CommitOffsets,
            35 => FetchOffsets,
            36 => ListGroups,
            37 => DescribeGroup,
            38 => ResetOffsets,
            39 => SearchOffset,
            40 => ReceiveMessage,
            41 => AckMessage,
            42 => NackMessage,
            500 => NotifyRebalance,
            100 => RegisterBroker,
            101 => UnregisterBroker,
            102 => GetRoute,
            103 => GetAllTopics,
            104 => GetClusterInfo,
            110 => ReplicaHandshake,
            111 => ReplicaFetch,
            112 => ReplicaTopics,
            113 => ReplicaAck,
            _ => return None,
        })
    }

    /// The wire code.
    pub fn code(self) -> u16 {
        self as u16
    }
}

/// A response status code; stable numbers, documented in `docs/protocol.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Status {
    /// The request succeeded.
    Success = 0,
    /// Unexpected server-side failure.
    SystemError = 1,
    /// The server sheds load; retry later.
    SystemBusy = 2,
    /// The command code is not served here.
    UnknownCommand = 3,
    /// The frame, header or body did not decode.
    MalformedFrame = 4,
    /// The frame version is not supported.
    UnsupportedVersion = 5,
    /// The frame is larger than the maximum.
    FrameTooLarge = 6,
    /// A field is out of range.
    InvalidArgument = 7,
    /// Unknown topic.
    TopicNotExist = 10,
    /// Queue id not below the topic's queue count.
    QueueNotExist = 11,
    /// No message under that id or key.
    MessageNotFound = 12,
    /// The request names an old generation of its group.
    IllegalGeneration = 13,
    /// The member is not (or no longer) in the group.
    UnknownMember = 14,
    /// The group is rebalancing; rejoin.
    RebalanceInProgress = 15,
    /// The group has live members (reset refused).
    GroupNotEmpty = 16,
    /// No broker knows the group (no live member, no committed offset).
    GroupNotExist = 17,
    /// This broker does not coordinate the group: look the coordinator up
    /// again and rejoin there.
    NotCoordinator = 18,
    /// A commit names a queue its sender does not own: another member's
    /// queue, or a queue of another broker group.
    NotQueueOwner = 19,
    /// The store could not write.
    StoreError = 20,
    /// The server is starting or stopping.
    ServiceUnavailable = 21,
    /// The broker's disk is full (above its refuse watermark, or a write
    /// found no space): sends are refused until space is back. The message
    /// says which path and how full.
    DiskFull = 22,
    /// This broker is a slave (read-only): writes go to its group's
    /// master, which the message names (or says is unknown).
    NotMaster = 23,
    /// Sync replication: the batch is stored on the master (per its flush
    /// policy) but no slave confirmed it within
    /// `replication.sync_timeout_ms`. The message says so; the records
    /// are not rolled back (a retry may store them twice).
    SlaveNotAvailable = 24,
    /// The request's account (or an anonymous client) may not do this, or
    /// its signature is wrong or outside the replay window; the message
    /// starts with `access denied` and names what is missing. Nothing was
    /// changed.
    AccessDenied = 25,
    /// The topic is one of the broker's own (`__consumer_offsets`,
    /// `__delay`, `%DLQ%…`, `%RETRY%…`, transaction topics): clients may
    /// read it but not create, resize, delete or write it.
    InternalTopic = 26,
}

impl Status {
    /// The status for a wire code; unknown codes read as `SystemError`.
    pub fn from_code(code: u16) -> Status {
        use Status::*;
        match code {
            0 => Success,
            2 => SystemBusy,
            3 => UnknownCommand,
            4 => MalformedFrame,
            5 => UnsupportedVersion,
            6 => FrameTooLarge,
            7 => InvalidArgument,
            10 => TopicNotExist,
            11 => QueueNotExist,
            12 => MessageNotFound,
            13 => IllegalGeneration,
            14 => UnknownMember,
            15 => RebalanceInProgress,
            16 => GroupNotEmpty,
            17 => GroupNotExist,
            18 => NotCoordinator,
            19 => NotQueueOwner,
            20 => StoreError,
            21 => ServiceUnavailable,
            22 => DiskFull,
            23 => NotMaster,
            24 => SlaveNotAvailable,
            25 => AccessDenied,
            26 => InternalTopic,
            _ => SystemError,
        }
    }

    /// The wire code.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The documented upper-case name, e.g. `TOPIC_NOT_EXIST`.
    pub fn name(self) -> &'static str {
        use Status::*;
        match self {
            Success => "SUCCESS",
            SystemError => "SYSTEM_ERROR",
            SystemBusy => "SYSTEM_BUSY",
            UnknownCommand => "UNKNOWN_COMMAND",
            MalformedFrame => "MALFORMED_FRAME",
            UnsupportedVersion => "UNSUPPORTED_VERSION",
            FrameTooLarge => "FRAME_TOO_LARGE",
            InvalidArgument => "INVALID_ARGUMENT",
            TopicNotExist => "TOPIC_NOT_EXIST",
            QueueNotExist => "QUEUE_NOT_EXIST",
            MessageNotFound => "MESSAGE_NOT_FOUND",
            IllegalGeneration => "ILLEGAL_GENERATION",
            UnknownMember => "UNKNOWN_MEMBER",
            RebalanceInProgress => "REBALANCE_IN_PROGRESS",
            GroupNotEmpty => "GROUP_NOT_EMPTY",
            GroupNotExist => "GROUP_NOT_EXIST",
            NotCoordinator => "NOT_COORDINATOR",
            NotQueueOwner => "NOT_QUEUE_OWNER",
            StoreError => "STORE_ERROR",
            ServiceUnavailable => "SERVICE_UNAVAILABLE",
            DiskFull => "DISK_FULL",
            NotMaster => "NOT_MASTER",
            SlaveNotAvailable => "SLAVE_NOT_AVAILABLE",
            AccessDenied => "ACCESS_DENIED",
            InternalTopic => "INTERNAL_TOPIC",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_codes_round_trip() {
        for code in 0..=u16::MAX {
            if let Some(cmd) = Command::from_code(code) {
                assert_eq!(cmd.code(), code);
            }
        }
    }

    #[test]
    fn status_codes_round_trip() {
        for code in [
            0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26,
        ] {
            assert_eq!(Status::from_code(code).code(), code);
        }
        assert_eq!(Status::from_code(999), Status::SystemError);
    }
}
