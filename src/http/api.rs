//! The JSON API under `/api/…` that the web console and `ferromq
//! cluster|stats` read (`docs/http.md`).
//!
//! What is this broker's own is done in-process through the broker core
//! (`BrokerCore`, with the API's session): its share of a topic created or
//! deleted, message lookups by id of messages it stored, and its share of
//! a key lookup. What spans the cluster — the name servers' views (cluster,
//! topics, groups), the other brokers' shares of those operations, topic
//! and group descriptions gathered from every broker group, dead-letter
//! queues on every broker group, and producing (which picks a queue on any
//! broker) — goes through the Rust client library's routing, so it shows
//! what any client of the cluster sees.

use actix_web::{web, HttpResponse};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use super::guard::Caller;
use super::HttpState;
use crate::acl::Access;
use crate::broker::core::{Operation, TopicSpec};
use crate::client::dlq::ResendSelection;
use crate::client::ClientError;
use crate::error::{BrokerError, ErrorKind};
use crate::message::Message;
use crate::observe::{metrics, totals};
use crate::record::{MessageId, StoredRecord};
use crate::wire::Status;

/// Registers the routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/overview", web::get().to(overview))
        .route("/api/cluster", web::get().to(cluster))
        .route("/api/topics", web::get().to(list_topics))
        .route("/api/topics", web::post().to(create_topic))
        .route("/api/topics/{topic}", web::get().to(describe_topic))
        .route("/api/topics/{topic}", web::delete().to(delete_topic))
        .route("/api/groups", web::get().to(list_groups))
        .route("/api/groups/{group}", web::get().to(describe_group))
        .route("/api/messages", web::post().to(produce))
        .route("/api/messages", web::get().to(find_messages))
        .route("/api/messages/{id}", web::get().to(get_message))
        .route("/api/dlq/{group}", web::get().to(list_dead_letters))
        .route("/api/dlq/{group}/resend", web::post().to(resend_dead_letters))
        .route("/api/actors", web::get().to(super::actors));
}

/// A client error as an HTTP answer: 404 for what does not exist, 400 for
/// bad input, 502 for an unreachable cluster.
fn error(e: ClientError) -> HttpResponse {
    let body = json!({"error": e.to_string()});
    match e.status() {
        Some(Status::TopicNotExist | Status::MessageNotFound | Status::QueueNotExist | Status::GroupNotExist) => {
            HttpResponse::NotFound().json(body)
        }
        Some(Status::InvalidArgument | Status::MalformedFrame) => HttpResponse::BadRequest().json(body),
        // 507 Insufficient Storage: the broker's disk is full.
        Some(Status::DiskFull) => HttpResponse::InsufficientStorage().json(body),
        // A read-only slave refused a write.
        Some(Status::NotMaster) => HttpResponse::Conflict().json(body),
        // Refused by the rules (ACL, or an internal topic).
        Some(Status::AccessDenied | Status::InternalTopic) => HttpResponse::Forbidden().json(body),
        Some(_) => HttpResponse::InternalServerError().json(body),
        None => match e {
            ClientError::Invalid(_) | ClientError::Decode(_) => HttpResponse::BadRequest().json(body),
            ClientError::NoRoute(_) => HttpResponse::NotFound().json(body),
            _ => HttpResponse::BadGateway().json(body),
        },
    }
}

/// A broker core error as an HTTP answer, as [`error`] maps the same
/// statuses.
fn core_error(e: BrokerError) -> HttpResponse {
    let status = match e.kind() {
        ErrorKind::TopicNotExist | ErrorKind::MessageNotFound | ErrorKind::QueueNotExist | ErrorKind::GroupNotExist => {
            actix_web::http::StatusCode::NOT_FOUND
        }
        ErrorKind::InvalidArgument | ErrorKind::Malformed => actix_web::http::StatusCode::BAD_REQUEST,
        ErrorKind::DiskFull => actix_web::http::StatusCode::INSUFFICIENT_STORAGE,
        ErrorKind::NotMaster => actix_web::http::StatusCode::CONFLICT,
        ErrorKind::AccessDenied | ErrorKind::InternalTopic => actix_web::http::StatusCode::FORBIDDEN,
        _ => actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
    };
    HttpResponse::build(status).json(json!({"error": e.to_string()}))
}

/// Records in their stored format, decoded (a failure is the broker's).
fn decode_records(raw: Bytes, count: u32) -> Result<Vec<StoredRecord>, BrokerError> {
    StoredRecord::decode_all(raw, count).map_err(|e| BrokerError::internal(format!("bad stored record: {e}")))
}

fn bad_request(msg: impl Into<String>) -> HttpResponse {
    HttpResponse::BadRequest().json(json!({"error": msg.into()}))
}

async fn overview(state: web::Data<HttpState>, caller: Caller) -> HttpResponse {
    let (messages_in, messages_out, broker_conns, namesrv_conns) = totals::snapshot();
    let cluster = state.admin.cluster_info().await.ok();
    let topics = state.admin.list_topics().await.unwrap_or_default();
    // Listing groups is an admin's (as on the native protocol).
    let groups = if caller.may(&Operation::DescribeGroups.access()) {
        state.admin.list_groups().await.unwrap_or_default()
    } else {
        Vec::new()
    };
    let clients: serde_json::Map<String, serde_json::Value> = state
        .core
        .sessions
        .by_role()
        .into_iter()
        .map(|(r, n)| (r.as_str().to_string(), n.into()))
        .collect();
    let memory = metrics::process_memory();
    HttpResponse::Ok().json(json!({
        "broker": {"name": state.broker_name, "addr": state.broker_addr},
        "namesrv": state.namesrv_addrs,
        "brokers": cluster.map(|c| c.brokers).unwrap_or_default(),
        "topics": topics,
        "groups": groups,
        "connections": {"broker": broker_conns, "namesrv": namesrv_conns},
        "clients": clients,
        "messages_in_total": messages_in,
        "messages_out_total": messages_out,
        "rss_bytes": memory.rss,
        "rss_anon_bytes": memory.anon,
        "rss_file_bytes": memory.file,
        "store": crate::render::store_json(&state.core.store_usage()),
        "time_ms": crate::clock::now_millis(),
    }))
}

async fn cluster(state: web::Data<HttpState>) -> HttpResponse {
    match state.admin.cluster_info().await {
        Ok(c) => HttpResponse::Ok().json(json!({
            "namesrv": state.namesrv_addrs,
            "brokers": c.brokers.iter().map(|b| json!({
                "cluster": b.cluster,
                "broker_name": b.broker_name,
                "broker_id": b.broker_id,
                "role": if b.broker_id == 0 { "master" } else { "slave" },
                "addr": b.addr,
                "master": b.replication.as_ref().and_then(|r| r.master.clone()),
                "lag_bytes": b.replication.as_ref().map(|r| r.lag_bytes),
                "lag_ms": b.replication.as_ref().map(|r| r.lag_ms),
                "links": b.replication.as_ref().map(|r| r.links),
            })).collect::<Vec<_>>(),
        })),
        Err(e) => error(e),
    }
}

async fn list_topics(state: web::Data<HttpState>) -> HttpResponse {
    match state.admin.list_topics().await {
        Ok(t) => HttpResponse::Ok().json(json!({"topics": t})),
        Err(e) => error(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTopic {
    topic: String,
    #[serde(default = "default_queues")]
    queues: u32,
    #[serde(default)]
    ttl_ms: Option<u64>,
}

fn default_queues() -> u32 {
    8
}

async fn create_topic(state: web::Data<HttpState>, caller: Caller, req: web::Json<NewTopic>) -> HttpResponse {
    if let Err(refused) = caller.check(&Operation::CreateTopic { topic: &req.topic }.access()) {
        return *refused;
    }
    let ttl = req.ttl_ms.map(std::time::Duration::from_millis);
    // Every live master gets the topic: this broker in-process, the others
    // through the client library.
    let masters = match state.admin.master_addrs().await {
        Ok(m) => m,
        Err(e) => return error(e),
    };
    if masters.is_empty() {
        return error(ClientError::NoRoute(
            "no live master broker to create the topic on".into(),
        ));
    }
    let (here, others): (Vec<String>, Vec<String>) = masters.into_iter().partition(|a| *a == state.broker_addr);
    if !here.is_empty() {
        let spec = TopicSpec {
            topic: req.topic.clone(),
            queues: req.queues,
            ttl_ms: req.ttl_ms,
        };
        if let Err(e) = state.core.create_topic(&caller.session(&state.session), spec).await {
            return core_error(e);
        }
    }
    match state.admin.create_topic_on(&others, &req.topic, req.queues, ttl).await {
        Ok(()) => HttpResponse::Created().json(json!({"topic": req.topic, "queues": req.queues})),
        Err(e) => error(e),
    }
}

/// Gathered from every broker group serving the topic (client library).
async fn describe_topic(state: web::Data<HttpState>, caller: Caller, topic: web::Path<String>) -> HttpResponse {
    if let Err(refused) = caller.check(&Operation::DescribeTopic { topic: &topic }.access()) {
        return *refused;
    }
    match state.admin.describe_topic(&topic).await {
        Ok(per_broker) => {
            let queues = crate::render::topic_queues_json(&per_broker);
            let brokers = crate::render::topic_stores_json(&per_broker);
            let messages: u64 = per_broker
                .iter()
                .flat_map(|(_, s)| s.queues.iter().map(|q| q.max_offset - q.min_offset))
                .sum();
            HttpResponse::Ok()
                .json(json!({"topic": *topic, "messages": messages, "queues": queues, "brokers": brokers}))
        }
        Err(e) => error(e),
    }
}

async fn delete_topic(state: web::Data<HttpState>, caller: Caller, topic: web::Path<String>) -> HttpResponse {
    if let Err(refused) = caller.check(&Operation::DeleteTopic { topic: &topic }.access()) {
        return *refused;
    }
    // Every broker serving the topic drops it: this one in-process, the
    // others through the client library.
    let addrs = match state.admin.topic_addrs(&topic).await {
        Ok(a) => a,
        Err(e) => return error(e),
    };
    let (here, others): (Vec<String>, Vec<String>) = addrs.into_iter().partition(|a| *a == state.broker_addr);
    if !here.is_empty() {
        if let Err(e) = state.core.delete_topic(&caller.session(&state.session), &topic).await {
            return core_error(e);
        }
    }
    match state.admin.delete_topic_on(&others, &topic).await {
        Ok(()) => HttpResponse::Ok().json(json!({"deleted": *topic})),
        Err(e) => error(e),
    }
}

async fn list_groups(state: web::Data<HttpState>, caller: Caller) -> HttpResponse {
    if let Err(refused) = caller.check(&Operation::DescribeGroups.access()) {
        return *refused;
    }
    match state.admin.list_groups().await {
        Ok(g) => HttpResponse::Ok().json(json!({"groups": g})),
        Err(e) => error(e),
    }
}

/// Membership from the group's coordinator (any broker) and offsets from
/// every broker group: a cluster view (client library).
async fn describe_group(state: web::Data<HttpState>, caller: Caller, group: web::Path<String>) -> HttpResponse {
    if let Err(refused) = caller.check(&Operation::DescribeGroups.access()) {
        return *refused;
    }
    let d = match state.admin.describe_group(&group).await {
        Ok(d) => d,
        Err(e) => return error(e),
    };
    let queues = match state.admin.group_queues(&d).await {
        Ok(q) => q,
        Err(e) => return error(e),
    };
    let lag: u64 = queues.iter().map(|q| q.lag).sum();
    let mut v = serde_json::to_value(&d).unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        obj.insert("queues".into(), serde_json::to_value(&queues).unwrap_or_default());
        obj.insert("lag".into(), lag.into());
    }
    HttpResponse::Ok().json(v)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewMessage {
    topic: String,
    body: String,
    #[serde(default)]
    tag: Option<String>,
    #[serde(default)]
    key: Option<String>,
}

async fn produce(state: web::Data<HttpState>, caller: Caller, req: web::Json<NewMessage>) -> HttpResponse {
    // The producer signs as the broker's own (admin) account: the caller
    // must be an admin itself.
    if let Err(refused) = caller.check(&Access::Admin("produce through the HTTP API")) {
        return *refused;
    }
    let req = req.into_inner();
    let mut m = Message::new(req.topic, Bytes::from(req.body));
    if let Some(t) = req.tag {
        m = m.with_tag(t);
    }
    if let Some(k) = req.key {
        m = m.with_key(k);
    }
    match state.producer.send(m).await {
        Ok(r) => HttpResponse::Created().json(json!({
            "broker": r.broker_name, "queue": r.queue_id, "offset": r.queue_offset, "msg_id": r.msg_id.to_string(),
        })),
        Err(e) => error(e),
    }
}

#[derive(Debug, Deserialize)]
struct FindQuery {
    topic: String,
    key: String,
}

async fn find_messages(state: web::Data<HttpState>, caller: Caller, q: web::Query<FindQuery>) -> HttpResponse {
    // Other brokers are asked with the broker's own account: the caller's
    // permission is checked here.
    if let Err(refused) = caller.check(&Operation::DescribeTopic { topic: &q.topic }.access()) {
        return *refused;
    }
    let session = caller.session(&state.session);
    // Every master serving the topic is asked: this broker in-process.
    let addrs = match state.admin.topic_master_addrs(&q.topic).await {
        Ok(a) => a,
        Err(e) => return error(e),
    };
    let mut found = Vec::new();
    for addr in addrs {
        if addr == state.broker_addr {
            let (count, raw) = match state.core.query_by_key(&session, &q.topic, &q.key, 32) {
                Ok(r) => r,
                Err(e) => return core_error(e),
            };
            match decode_records(raw, count) {
                Ok(records) => found.extend(records),
                Err(e) => return core_error(e),
            }
        } else {
            match state.admin.find_messages_on(&addr, &q.topic, &q.key, 32).await {
                Ok(records) => found.extend(records),
                Err(e) => return error(e),
            }
        }
    }
    HttpResponse::Ok().json(json!({
        "messages": found.iter().map(crate::render::message_json).collect::<Vec<_>>(),
    }))
}

async fn get_message(state: web::Data<HttpState>, caller: Caller, id: web::Path<String>) -> HttpResponse {
    if let Err(refused) = caller.check(&Operation::QueryById.access()) {
        return *refused;
    }
    // A message this broker stored is read in-process; another broker's
    // (or a malformed id) through the client library.
    let ours = id
        .parse::<MessageId>()
        .is_ok_and(|m| m.store_host == state.core.store_host);
    if ours {
        return match state.core.query_by_id(&caller.session(&state.session), &id) {
            Ok(raw) => match StoredRecord::decode(raw) {
                Ok(r) => HttpResponse::Ok().json(crate::render::message_json(&r)),
                Err(e) => core_error(BrokerError::internal(format!("bad stored record: {e}"))),
            },
            Err(e) => core_error(e),
        };
    }
    match state.admin.get_message(&id).await {
        Ok(r) => HttpResponse::Ok().json(crate::render::message_json(&r)),
        Err(e) => error(e),
    }
}

/// A group's dead letters on every broker group (client library).
async fn list_dead_letters(state: web::Data<HttpState>, caller: Caller, group: web::Path<String>) -> HttpResponse {
    if let Err(refused) = caller.check(&Access::Admin("read dead letters")) {
        return *refused;
    }
    match state.admin.dlq_list(&group).await {
        Ok(list) => HttpResponse::Ok().json(json!({
            "dead_letters": list.iter().map(|(_, e)| crate::render::dead_letter_json(e)).collect::<Vec<_>>(),
        })),
        Err(e) => error(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Resend {
    #[serde(default)]
    msg_id: Option<String>,
    #[serde(default)]
    all: bool,
}

async fn resend_dead_letters(
    state: web::Data<HttpState>,
    caller: Caller,
    group: web::Path<String>,
    req: web::Json<Resend>,
) -> HttpResponse {
    // The resend signs as the broker's own (admin) account.
    if let Err(refused) = caller.check(&Access::Admin("resend dead letters")) {
        return *refused;
    }
    let which = match (&req.msg_id, req.all) {
        (Some(id), false) => ResendSelection::MessageId(id.clone()),
        (None, true) => ResendSelection::AllNew,
        _ => return bad_request("give either msg_id or all: true"),
    };
    match state.admin.dlq_resend(&group, &which).await {
        Ok(sent) => HttpResponse::Ok().json(json!({
            "resent": sent.iter().map(|(dead, r)| json!({
                "dead_letter": dead.msg_id().to_string(), "msg_id": r.msg_id.to_string(),
            })).collect::<Vec<_>>(),
        })),
        Err(e) => error(e),
    }
}
