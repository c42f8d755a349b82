//! Message properties with a meaning to per-message delivery: they are
//! named in [`crate::message::props`] (the client sets them too) and
//! re-exported here.

pub use crate::message::props::*;
