//! The FerroMQ wire protocol: a pure codec, no I/O.
//!
//! `docs/protocol.md` specifies every frame byte by byte; this module is its
//! implementation. [`frame`] splits a byte stream into [`Frame`]s, [`codes`]
//! names command and status codes, [`buf`] holds the primitive encodings, and
//! the remaining modules encode one command's header and body each.

pub mod buf;
pub mod codes;
pub mod control;
pub mod delivery;
pub mod frame;
pub mod group;
pub mod pull;
pub mod replica;
pub mod send;

pub use buf::DecodeError;
pub use codes::{Command, Status};
pub use frame::{AuthBlock, Frame, FrameError, FrameKind, AUTH_FLAG, FRAME_PREFIX_LEN, PROTOCOL_VERSION};
