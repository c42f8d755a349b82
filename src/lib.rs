//! FerroMQ: a persistent, distributed message broker on actix actors.
//!
//! * [`clock`] — the wall clock (ms since the epoch).
//! * [`codec`] — primitive encodings shared by the wire and the store.
//! * [`record`] — decoded records and message ids, shared by the client and
//!   the store.
//! * [`wire`] — the binary protocol (pure codec).
//! * [`store`] — commitlog, consume queues, indexes, recovery.
//! * [`actors`] — the actor tree: commitlog writer, dispatcher, queue actors,
//!   name server.
//! * [`namesrv`] — the name server's registry (pure state machine);
//!   [`namesrv_server`] — serving it: request handler, start-up.
//! * [`server`] — framed TCP sessions routing requests to actors.
//! * [`client`] — the Rust client library; [`cli`] — the `ferromq` command.
//! * [`push`] — protocol-neutral events pushed to clients.
//! * [`render`] — JSON renderings shared by the CLI and the HTTP API.

pub mod acl;
pub mod actors;
pub mod broker;
pub mod cli;
pub mod client;
pub mod clock;
pub mod codec;
pub mod config;
pub mod delivery;
pub mod error;
pub mod groups;
pub mod http;
pub mod launch;
pub mod message;
pub mod namesrv;
pub mod namesrv_server;
pub mod observe;
pub mod push;
pub mod record;
pub mod render;
pub mod replication;
pub mod server;
pub mod store;
pub mod tls;
pub mod wire;
