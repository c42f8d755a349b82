//! Decodes name-server requests (`docs/protocol.md` §4, commands 1 and
//! 100–104), asks the [`NameServer`] actor and encodes its answer.

use std::net::SocketAddr;
use std::sync::Arc;

use actix::{Addr, MailboxError};
use bytes::Bytes;
use futures::future::{FutureExt, LocalBoxFuture};
use serde::de::DeserializeOwned;

use crate::acl::Access;
use crate::actors::namesrv::{
    ConnectionClosed, GetAllTopics, GetClusterInfo, GetRoute, NameServer, Register, Unregister,
};
use crate::clock::now_millis;
use crate::server::auth::identify;
use crate::server::{ConnectionHandle, RequestHandler};
use crate::wire::control::{from_json, to_json, validate_topic_name, RegisterBroker, TopicRef, UnregisterBroker};
use crate::wire::{Command, Frame, Status};

/// Serves name-server requests on behalf of one [`NameServer`] actor.
#[derive(Debug, Clone)]
pub struct NamesrvHandler {
    /// The registry every request reads or updates.
    pub addr: Addr<NameServer>,
    /// Access control (disabled: everything allowed).
    pub acl: crate::acl::Acl,
}

/// A request outcome: the response frame either way, so `?` can return
/// an error frame early.
type Reply = Result<Frame, Frame>;

impl NamesrvHandler {
    /// A handler answering from `addr`.
    pub fn new(addr: Addr<NameServer>) -> NamesrvHandler {
        NamesrvHandler {
            addr,
            acl: crate::acl::Acl::disabled(),
        }
    }

    /// Checks every request against `acl`.
    pub fn with_acl(mut self, acl: crate::acl::Acl) -> NamesrvHandler {
        self.acl = acl;
        self
    }

    /// What `cmd` needs from the ACL: brokers (admin accounts) register
    /// and unregister; route reads need an account; a ping is open.
    pub fn access(cmd: Command) -> Access<'static> {
        match cmd {
            Command::Ping => Access::Open,
            Command::RegisterBroker | Command::UnregisterBroker => Access::Admin("register brokers"),
            _ => Access::Authenticated,
        }
    }

    /// Checks the request's signature and its permission.
    fn admit(&self, peer: SocketAddr, cmd: Command, frame: &Frame) -> Result<(), Frame> {
        identify(&self.acl, frame, peer.ip(), now_millis())
            .and_then(|who| self.acl.check(&who, &Self::access(cmd)))
            .map_err(|denied| {
                tracing::debug!(%peer, ?cmd, %denied, "name-server request refused");
                Frame::error(0, Status::AccessDenied, denied.to_string())
            })
    }

    async fn respond(&self, peer: SocketAddr, conn: u64, cmd: Command, frame: Frame) -> Reply {
        self.admit(peer, cmd, &frame)?;
        match cmd {
            Command::Ping => Ok(empty_ok()),
            Command::RegisterBroker => {
                let req: RegisterBroker = decode(&frame.header)?;
                check_registration(&req)?;
                tracing::trace!(%peer, broker = %req.broker_name, "REGISTER_BROKER");
                self.addr
                    .send(Register(req, Some(conn)))
                    .await
                    .map_err(mailbox)?
                    .map_err(|why| Frame::error(0, Status::AccessDenied, format!("access denied: {why}")))?;
                Ok(empty_ok())
            }
            Command::UnregisterBroker => {
                let req: UnregisterBroker = decode(&frame.header)?;
                let unregister = Unregister {
                    req,
                    conn: Some(conn),
                    peer_ip: peer.ip().to_string(),
                };
                self.addr
                    .send(unregister)
                    .await
                    .map_err(mailbox)?
                    .map_err(|why| Frame::error(0, Status::AccessDenied, format!("access denied: {why}")))?;
                Ok(empty_ok())
            }
            Command::GetRoute => {
                let TopicRef { topic } = decode(&frame.header)?;
                validate_topic_name(&topic).map_err(|e| Frame::error(0, Status::InvalidArgument, e.to_string()))?;
                match self.addr.send(GetRoute(topic.clone())).await.map_err(mailbox)? {
                    Some(route) => Ok(Frame::ok(0, Bytes::new(), to_json(&route))),
                    None => Err(Frame::error(
                        0,
                        Status::TopicNotExist,
                        format!("no route for topic {topic}"),
                    )),
                }
            }
            Command::GetAllTopics => {
                let topics = self.addr.send(GetAllTopics).await.map_err(mailbox)?;
                Ok(Frame::ok(0, Bytes::new(), to_json(&topics)))
            }
            Command::GetClusterInfo => {
                let info = self.addr.send(GetClusterInfo).await.map_err(mailbox)?;
                Ok(Frame::ok(0, Bytes::new(), to_json(&info)))
            }
            // Everything else is a broker's.
            _ => Err(Frame::error(
                0,
                Status::UnknownCommand,
                format!("command {cmd:?} ({}) is not served by a name server", cmd.code()),
            )),
        }
    }
}

impl RequestHandler for NamesrvHandler {
    fn handle(self: Arc<Self>, conn: ConnectionHandle, cmd: Command, frame: Frame) -> LocalBoxFuture<'static, Frame> {
        async move {
            match self.respond(conn.peer, conn.id, cmd, frame).await {
                Ok(frame) | Err(frame) => frame,
            }
        }
        .boxed_local()
    }

    fn closed(&self, id: u64) {
        self.addr.do_send(ConnectionClosed(id));
    }
}

fn empty_ok() -> Frame {
    Frame::ok(0, Bytes::new(), Bytes::new())
}

fn decode<T: DeserializeOwned>(header: &[u8]) -> Result<T, Frame> {
    from_json(header, "header").map_err(|e| Frame::error(0, Status::MalformedFrame, e.to_string()))
}

/// Rejects registrations that would produce unusable routes.
fn check_registration(req: &RegisterBroker) -> Result<(), Frame> {
    let invalid = |m: String| Frame::error(0, Status::InvalidArgument, m);
    for (field, value) in [
        ("cluster", &req.cluster),
        ("broker_name", &req.broker_name),
        ("addr", &req.addr),
    ] {
        if value.is_empty() {
            return Err(invalid(format!("{field} must not be empty")));
        }
    }
    for topic in req.topics.keys() {
        validate_topic_name(topic).map_err(|e| invalid(e.to_string()))?;
    }
    Ok(())
}

fn mailbox(e: MailboxError) -> Frame {
    tracing::error!(error = %e, "name server actor unreachable");
    Frame::error(0, Status::SystemError, format!("name server unavailable: {e}"))
}
