//! TCP serving: one framed session per client connection, spread over the
//! network arbiters, routing requests to a [`RequestHandler`].

mod budget;
pub mod connection;
pub mod delivery_frames;
pub mod status;

pub use connection::{serve, ConnectionHandle, RequestHandler, ServeOptions};
