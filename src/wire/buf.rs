//! The primitive encodings of the protocol: [`crate::codec`], which the
//! wire and the store share, re-exported under its wire-side name.

pub use crate::codec::*;
