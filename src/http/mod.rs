//! The broker's HTTP endpoint (actix-web): Prometheus `/metrics`, the live
//! actor tree `/actors`, `/health`, `/ready`, the JSON API under `/api`
//! ([`api`]), the web console at `/` (one page embedded in the binary), and
//! (when enabled) the debug command that makes an actor fail. Every endpoint
//! is documented in `docs/http.md`.
//!
//! Every request passes [`guard`] first: the Host check, the cross-site
//! checks of state-changing requests, and (ACL on) authentication and the
//! admin permission; every response carries the anti-framing headers.

pub mod api;
pub mod guard;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use actix::Addr;
use actix_web::{web, App, HttpResponse, HttpServer};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::json;

use crate::actors::namesrv_client::{IsRegistered, NameServerClient};
use crate::observe::{kind, metrics, ActorTree};
use crate::store::Store;

/// What the handlers read.
pub struct HttpState {
    /// The live actors.
    pub tree: Arc<ActorTree>,
    /// The store (offsets, topics, disk figures).
    pub store: Arc<Store>,
    /// The Prometheus recorder's handle (`None`: metrics unavailable).
    pub metrics: Option<PrometheusHandle>,
    /// Registration state for `/ready`.
    pub registrar: Addr<NameServerClient>,
    /// Serve the debug command.
    pub debug: bool,
    /// Admin client of the cluster (for `/api`).
    pub admin: crate::client::Admin,
    /// Producer for `POST /api/messages`.
    pub producer: crate::client::Producer,
    /// Name servers this broker uses.
    pub namesrv_addrs: Vec<String>,
    /// This broker's group name.
    pub broker_name: String,
    /// This broker's client address.
    pub broker_addr: String,
    /// The broker core, called in-process for this broker's own data (and
    /// its sessions, for the client counts).
    pub core: Arc<crate::broker::BrokerCore>,
    /// The session the API's in-process calls to the core run in while
    /// ACL is off (trusted); with ACL on each request gets one acting for
    /// its caller ([`guard::Caller::session`]).
    pub session: Arc<crate::broker::session::Session>,
    /// The `[http]` settings (token, open health endpoints, allowed hosts).
    pub settings: crate::config::HttpSection,
}

/// The console page (HTML, CSS and JS in one file, embedded at build time).
const CONSOLE_HTML: &str = include_str!("console.html");

/// Binds `addr` and serves in the background (one worker thread); returns
/// the bound address. Fails when `[http] token` names an environment
/// variable that is not set.
pub fn start(addr: &str, state: HttpState) -> io::Result<SocketAddr> {
    let rules = guard::Guard::new(&state.settings, state.core.acl.clone())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let rules = web::Data::new(rules);
    let listener = std::net::TcpListener::bind(addr).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("HTTP endpoint cannot listen on {addr}: {e} (set --http to another address, or 0 to disable it)"),
        )
    })?;
    let bound = listener.local_addr()?;
    let state = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(rules.clone())
            .wrap(actix_web::middleware::from_fn(guard::guard))
            .wrap(guard::security_headers())
            .route("/health", web::get().to(health))
            .route("/ready", web::get().to(ready))
            .route("/metrics", web::get().to(prometheus))
            .route("/actors", web::get().to(actors))
            .route("/api/debug/fail", web::post().to(fail))
            .route("/", web::get().to(console))
            .configure(api::routes)
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    actix_rt::spawn(server);
    Ok(bound)
}

async fn console() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(CONSOLE_HTML)
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn ready(state: web::Data<HttpState>) -> HttpResponse {
    // The store is recovered before the endpoint starts.
    let registered = state.registrar.send(IsRegistered).await.unwrap_or(false);
    let body = json!({"ready": registered, "store_recovered": true, "namesrv_registered": registered});
    if registered {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn prometheus(state: web::Data<HttpState>) -> HttpResponse {
    let Some(handle) = &state.metrics else {
        return HttpResponse::ServiceUnavailable().body("metrics recorder unavailable in this process\n");
    };
    metrics::refresh(&state.tree, &state.store);
    state.core.replication.record_metrics();
    for (role, n) in state.core.sessions.by_role() {
        ::metrics::gauge!("ferromq_clients", "role" => role.as_str()).set(n as f64);
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(handle.render())
}

pub(crate) async fn actors(state: web::Data<HttpState>) -> HttpResponse {
    let actors = state.tree.snapshot();
    HttpResponse::Ok().json(json!({
        "root": kind::BROKER,
        "actors": actors,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FailRequest {
    kind: String,
    id: String,
    #[serde(default)]
    reason: Option<String>,
    /// Panic in the handler instead of stopping.
    #[serde(default)]
    panic: bool,
}

async fn fail(state: web::Data<HttpState>, caller: guard::Caller, req: web::Json<FailRequest>) -> HttpResponse {
    if let Err(refused) = caller.check(&crate::acl::Access::Admin("run debug commands")) {
        return *refused;
    }
    if !state.debug {
        return HttpResponse::Forbidden().json(json!({"error": "debug commands are off (set http.debug = true)"}));
    }
    let reason = req.reason.clone().unwrap_or_else(|| "failed on request".into());
    match state.tree.fail(&req.kind, &req.id, &reason, req.panic) {
        Ok(()) => HttpResponse::Ok().json(json!({"failed": format!("{}/{}", req.kind, req.id)})),
        Err(e) => HttpResponse::NotFound().json(json!({"error": e})),
    }
}
