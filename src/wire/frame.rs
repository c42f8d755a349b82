//! Splitting a byte stream into frames and writing frames back.
//!
//! ```text
//! u32 length | u8 version | u8 kind | u16 code | u32 correlation id
//! | u32 header_len | [auth] | header | body
//! ```
//!
//! `auth` is present when the kind byte has [`AUTH_FLAG`] set: a signed
//! request ([`AuthBlock`]: `u8 key_len | access key | u64 timestamp_ms |
//! 32-byte signature`).
//!
//! [`Frame::parse`] is incremental: it returns `Ok(None)` until a whole frame
//! is buffered, refuses an oversized length before anything is allocated for
//! it, and consumes a frame with a bad version, kind or header length so that
//! the connection can answer it and carry on.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::codes::{Command, Status};

/// The protocol version this codec speaks.
pub const PROTOCOL_VERSION: u8 = 2;

/// Bytes before the header: length, version, kind, code, correlation id,
/// header length.
pub const FRAME_PREFIX_LEN: usize = 16;

/// Smallest legal value of the length field (everything after it but the
/// header and body).
const MIN_LENGTH_FIELD: usize = FRAME_PREFIX_LEN - 4;

/// Set in the kind byte when an [`AuthBlock`] follows the prefix.
pub const AUTH_FLAG: u8 = 0x80;

/// A request's signature (`docs/protocol.md` §10): which account signed,
/// when, and the HMAC-SHA256 over what it asks (`acl::sign`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthBlock {
    /// The signing account (1 to 255 bytes of UTF-8).
    pub access_key: String,
    /// When it was signed, ms since the epoch.
    pub timestamp_ms: u64,
    /// The signature.
    pub signature: [u8; 32],
}

impl AuthBlock {
    /// Bytes it occupies on the wire.
    pub fn encoded_len(&self) -> usize {
        1 + self.access_key.len() + 8 + 32
    }

    fn encode(&self, dst: &mut BytesMut) {
        dst.put_u8(self.access_key.len() as u8);
        dst.put_slice(self.access_key.as_bytes());
        dst.put_u64(self.timestamp_ms);
        dst.put_slice(&self.signature);
    }

    fn decode(src: &mut Bytes) -> Result<AuthBlock, String> {
        let key_len = *src.first().ok_or("the auth block is empty")? as usize;
        if key_len == 0 || src.len() < 1 + key_len + 8 + 32 {
            return Err("the auth block is truncated or names no access key".into());
        }
        src.advance(1);
        let key = src.split_to(key_len);
        let access_key = String::from_utf8(key.to_vec()).map_err(|_| "the access key is not UTF-8".to_string())?;
        let timestamp_ms = src.get_u64();
        let mut signature = [0u8; 32];
        src.copy_to_slice(&mut signature);
        Ok(AuthBlock {
            access_key,
            timestamp_ms,
            signature,
        })
    }
}

/// What a frame is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Expects a response with the same correlation id.
    Request = 0,
    /// Answers a request.
    Response = 1,
    /// A request that wants no response.
    Oneway = 2,
    /// Sent by a server unasked.
    Push = 3,
}

impl FrameKind {
    fn from_u8(v: u8) -> Option<FrameKind> {
        match v {
            0 => Some(FrameKind::Request),
            1 => Some(FrameKind::Response),
            2 => Some(FrameKind::Oneway),
            3 => Some(FrameKind::Push),
            _ => None,
        }
    }
}

/// One protocol frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Request, response, oneway or push.
    pub kind: FrameKind,
    /// Command code, or status code for a response.
    pub code: u16,
    /// Pairs a response with its request.
    pub correlation_id: u32,
    /// Command-specific header (often JSON, often empty).
    pub header: Bytes,
    /// Command-specific body.
    pub body: Bytes,
    /// More body bytes, sent after `body` without being copied next to it:
    /// a pull response's records straight from the commitlog mapping. On
    /// the wire they are part of the body; [`Frame::parse`] puts the whole
    /// body in `body` and leaves this empty.
    pub body_tail: Vec<Bytes>,
    /// The request's signature, if it is signed.
    pub auth: Option<Box<AuthBlock>>,
}

/// Why bytes could not be read as a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length field exceeds the maximum; nothing was allocated and the
    /// framing is lost.
    #[error("frame of {length} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// The announced length.
        length: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The length field is too small to hold a frame; the framing is lost.
    #[error("frame length {length} is shorter than the {MIN_LENGTH_FIELD}-byte minimum")]
    TooShort {
        /// The announced length.
        length: usize,
    },
    /// A well-delimited frame with bad contents; it has been consumed.
    #[error("{reason}")]
    Invalid {
        /// The frame's correlation id, for the error response.
        correlation_id: u32,
        /// The status to answer with.
        status: Status,
        /// What is wrong.
        reason: String,
    },
}

impl FrameError {
    /// True when the stream can no longer be split into frames and the
    /// connection must be closed after answering.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, FrameError::Invalid { .. })
    }

    /// The status code that answers this error.
    pub fn status(&self) -> Status {
        match self {
            FrameError::TooLarge { .. } => Status::FrameTooLarge,
            FrameError::TooShort { .. } => Status::MalformedFrame,
            FrameError::Invalid { status, .. } => *status,
        }
    }

    /// The correlation id the error response should carry.
    pub fn correlation_id(&self) -> u32 {
        match self {
            FrameError::Invalid { correlation_id, .. } => *correlation_id,
            _ => 0,
        }
    }
}

impl Frame {
    /// A request frame.
    pub fn request(cmd: Command, correlation_id: u32, header: Bytes, body: Bytes) -> Frame {
        Frame {
            kind: FrameKind::Request,
            code: cmd.code(),
            correlation_id,
            header,
            body,
            body_tail: Vec::new(),
            auth: None,
        }
    }

    /// A successful response to the request with `correlation_id`.
    pub fn ok(correlation_id: u32, header: Bytes, body: Bytes) -> Frame {
        Frame {
            kind: FrameKind::Response,
            code: Status::Success.code(),
            correlation_id,
            header,
            body,
            body_tail: Vec::new(),
            auth: None,
        }
    }

    /// An error response: empty header, UTF-8 message as body.
    pub fn error(correlation_id: u32, status: Status, message: impl Into<String>) -> Frame {
        Frame {
            kind: FrameKind::Response,
            code: status.code(),
            correlation_id,
            header: Bytes::new(),
            body: Bytes::from(message.into()),
            body_tail: Vec::new(),
            auth: None,
        }
    }

    /// The response status (meaningful for responses).
    pub fn status(&self) -> Status {
        Status::from_code(self.code)
    }

    /// The error message carried by a non-success response.
    pub fn error_message(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Bytes this frame occupies on the wire.
    pub fn encoded_len(&self) -> usize {
        FRAME_PREFIX_LEN + self.auth_len() + self.header.len() + self.body_len()
    }

    fn auth_len(&self) -> usize {
        self.auth.as_ref().map_or(0, |a| a.encoded_len())
    }

    /// Length of the body including its tail.
    pub fn body_len(&self) -> usize {
        self.body.len() + self.body_tail.iter().map(Bytes::len).sum::<usize>()
    }

    /// The frame with `tail` sent after its body (see [`Frame::body_tail`]).
    pub fn with_body_tail(mut self, tail: Vec<Bytes>) -> Frame {
        self.body_tail = tail;
        self
    }

    /// Appends the encoded frame to `dst`, copying the body's tail too.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.reserve(self.encoded_len());
        self.encode_head(dst);
        for chunk in &self.body_tail {
            dst.put_slice(chunk);
        }
    }

    /// Appends everything but the body's tail to `dst`; a writer then sends
    /// the tail's chunks as they are (vectored I/O, no copy).
    pub fn encode_head(&self, dst: &mut BytesMut) {
        dst.put_u32((MIN_LENGTH_FIELD + self.auth_len() + self.header.len() + self.body_len()) as u32);
        dst.put_u8(PROTOCOL_VERSION);
        dst.put_u8(self.kind as u8 | if self.auth.is_some() { AUTH_FLAG } else { 0 });
        dst.put_u16(self.code);
        dst.put_u32(self.correlation_id);
        dst.put_u32(self.header.len() as u32);
        if let Some(a) = &self.auth {
            a.encode(dst);
        }
        dst.put_slice(&self.header);
        dst.put_slice(&self.body);
    }

    /// Takes one frame off the front of `src`.
    ///
    /// `Ok(None)`: not enough bytes yet (nothing consumed). `Err` with
    /// [`FrameError::is_fatal`] false: the bad frame was consumed. A fatal
    /// error leaves `src` as it was; the caller closes the connection.
    pub fn parse(src: &mut BytesMut, max_frame_bytes: usize) -> Result<Option<Frame>, FrameError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let length = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if length > max_frame_bytes {
            return Err(FrameError::TooLarge {
                length,
                max: max_frame_bytes,
            });
        }
        if length < MIN_LENGTH_FIELD {
            return Err(FrameError::TooShort { length });
        }
        if src.len() < 4 + length {
            // Reserve only what this (bounded) frame needs.
            src.reserve(4 + length - src.len());
            return Ok(None);
        }
        let mut frame = src.split_to(4 + length).freeze();
        frame.advance(4);
        let version = frame.get_u8();
        let kind = frame.get_u8();
        let code = frame.get_u16();
        let correlation_id = frame.get_u32();
        let header_len = frame.get_u32() as usize;
        let invalid = |status, reason: String| FrameError::Invalid {
            correlation_id,
            status,
            reason,
        };
        if version != PROTOCOL_VERSION {
            return Err(invalid(
                Status::UnsupportedVersion,
                format!("protocol version {version} is not supported (this server speaks {PROTOCOL_VERSION})"),
            ));
        }
        let Some(kind_only) = FrameKind::from_u8(kind & !AUTH_FLAG) else {
            return Err(invalid(Status::MalformedFrame, format!("unknown frame kind {kind}")));
        };
        let auth = if kind & AUTH_FLAG != 0 {
            let block = AuthBlock::decode(&mut frame).map_err(|e| invalid(Status::MalformedFrame, e))?;
            Some(Box::new(block))
        } else {
            None
        };
        let kind = kind_only;
        if header_len > frame.len() {
            return Err(invalid(
                Status::MalformedFrame,
                format!(
                    "header length {header_len} exceeds the {} bytes left in the frame",
                    frame.len()
                ),
            ));
        }
        let header = frame.split_to(header_len);
        Ok(Some(Frame {
            kind,
            code,
            correlation_id,
            header,
            body: frame,
            body_tail: Vec::new(),
            auth,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 16 << 20;

    fn sample_frames() -> Vec<Frame> {
        vec![
            Frame::request(Command::Ping, 1, Bytes::new(), Bytes::new()),
            Frame::request(
                Command::GetRoute,
                7,
                Bytes::from_static(br#"{"topic":"t"}"#),
                Bytes::new(),
            ),
            Frame::ok(u32::MAX, Bytes::from_static(b"h"), Bytes::from(vec![0xAB; 4096])),
            Frame::error(3, Status::TopicNotExist, "no route for topic t"),
            Frame {
                kind: FrameKind::Push,
                code: 500,
                correlation_id: 0,
                header: Bytes::new(),
                body: Bytes::from_static(b"x"),
                body_tail: Vec::new(),
                auth: None,
            },
            Frame {
                auth: Some(Box::new(AuthBlock {
                    access_key: "writer".into(),
                    timestamp_ms: 1_700_000_000_123,
                    signature: [7; 32],
                })),
                ..Frame::request(
                    Command::SendMessage,
                    8,
                    Bytes::from_static(b"{}"),
                    Bytes::from_static(b"body"),
                )
            },
        ]
    }

    #[test]
    fn a_body_tail_is_sent_as_part_of_the_body() {
        let whole = Frame::ok(9, Bytes::from_static(b"hdr"), Bytes::from_static(b"head+rec1rec2"));
        let split = Frame::ok(9, Bytes::from_static(b"hdr"), Bytes::from_static(b"head+"))
            .with_body_tail(vec![Bytes::from_static(b"rec1"), Bytes::from_static(b"rec2")]);
        assert_eq!(split.encoded_len(), whole.encoded_len());
        let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
        whole.encode(&mut a);
        split.encode(&mut b);
        assert_eq!(a, b);
        let mut head = BytesMut::new();
        split.encode_head(&mut head);
        assert_eq!(&a[..head.len()], &head[..]);
        assert_eq!(&a[head.len()..], b"rec1rec2");
        assert_eq!(Frame::parse(&mut b, MAX).unwrap(), Some(whole));
    }

    #[test]
    fn frames_round_trip_back_to_back() {
        let frames = sample_frames();
        let mut buf = BytesMut::new();
        for f in &frames {
            f.encode(&mut buf);
        }
        let mut out = Vec::new();
        while let Some(f) = Frame::parse(&mut buf, MAX).unwrap() {
            out.push(f);
        }
        assert_eq!(out, frames);
        assert!(buf.is_empty());
    }

    #[test]
    fn every_prefix_of_every_frame_decodes_without_panic() {
        for f in sample_frames() {
            let mut full = BytesMut::new();
            f.encode(&mut full);
            for cut in 0..full.len() {
                let mut partial = BytesMut::from(&full[..cut]);
                assert_eq!(Frame::parse(&mut partial, MAX), Ok(None), "cut at {cut}");
                assert_eq!(partial.len(), cut, "nothing consumed from a partial frame");
            }
            let mut whole = full.clone();
            assert_eq!(Frame::parse(&mut whole, MAX).unwrap(), Some(f));
        }
    }

    #[test]
    fn oversized_length_is_refused_before_buffering() {
        let mut buf = BytesMut::new();
        buf.put_u32(u32::MAX);
        let err = Frame::parse(&mut buf, MAX).unwrap_err();
        assert!(err.is_fatal());
        assert_eq!(err.status(), Status::FrameTooLarge);
        assert!(buf.capacity() < 1024, "no allocation for the announced length");
    }

    #[test]
    fn too_short_length_loses_framing() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 3, 1, 2, 3][..]);
        let err = Frame::parse(&mut buf, MAX).unwrap_err();
        assert!(err.is_fatal());
    }

    #[test]
    fn bad_contents_are_consumed_and_answerable() {
        let mut buf = BytesMut::new();
        Frame::request(Command::Ping, 42, Bytes::new(), Bytes::new()).encode(&mut buf);
        buf[4] = 9; // version
        Frame::request(Command::Ping, 43, Bytes::new(), Bytes::new()).encode(&mut buf);
        let err = Frame::parse(&mut buf, MAX).unwrap_err();
        assert!(!err.is_fatal());
        assert_eq!(err.correlation_id(), 42);
        assert_eq!(err.status(), Status::UnsupportedVersion);
        // The next frame is still readable.
        assert_eq!(Frame::parse(&mut buf, MAX).unwrap().unwrap().correlation_id, 43);

        let mut buf = BytesMut::new();
        Frame::request(Command::Ping, 5, Bytes::new(), Bytes::new()).encode(&mut buf);
        buf[12..16].copy_from_slice(&100u32.to_be_bytes()); // header_len
        let err = Frame::parse(&mut buf, MAX).unwrap_err();
        assert_eq!(err.status(), Status::MalformedFrame);
        assert!(buf.is_empty());

        let mut buf = BytesMut::new();
        Frame::request(Command::Ping, 6, Bytes::new(), Bytes::new()).encode(&mut buf);
        buf[5] = 77; // kind
        assert_eq!(
            Frame::parse(&mut buf, MAX).unwrap_err().status(),
            Status::MalformedFrame
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: xorshift bytes, parsed repeatedly.
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..2000 {
            let mut buf = BytesMut::new();
            let len = (state % 64) as usize;
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                buf.put_u8(state as u8);
            }
            while let Ok(Some(_)) | Err(FrameError::Invalid { .. }) = Frame::parse(&mut buf, 4096) {}
        }
    }
}
