//! TCP serving: one framed session per client connection, spread over the
//! network arbiters, routing requests to a [`RequestHandler`]; the broker's
//! native-protocol adapter ([`native`]) over the broker core.

pub mod auth;
mod budget;
pub mod connection;
pub mod delivery_frames;
pub mod native;
pub mod status;

pub use connection::{serve, ConnectionHandle, RequestHandler, ServeOptions};
