//! Who may use the HTTP endpoint, and from where (`docs/http.md`,
//! "Security").
//!
//! One middleware ([`guard`]) runs before every handler:
//!
//! 1. **Host** (DNS rebinding): the `Host` header must be an IP address,
//!    `localhost`, or a name of `[http] allowed_hosts` (`/health`, `/ready`
//!    and `/metrics` are exempt: probes and scrapers name the broker as
//!    they like, and what they read is not secret). Else 403.
//! 2. **Cross-site requests**, for every method but `GET`/`HEAD`: an
//!    `Origin` (or, lacking it, a `Referer`) that is not this endpoint's
//!    own origin is refused (403), and a `POST` must say
//!    `Content-Type: application/json` or carry `X-Requested-With` (415),
//!    which an HTML form cannot do.
//! 3. **Authentication**, when ACL is on: HTTP basic (access key and
//!    secret key of the ACL file, checked with the peer's address), or
//!    `Authorization: Bearer <[http] token>` (an admin), or a globally
//!    whitelisted peer; else 401. `/health`, `/ready`, `/metrics` are open
//!    while `[http] open_health`.
//! 4. **Admin** for every method but `GET`/`HEAD` (the state-changing
//!    requests): else 403 naming the missing permission.
//!
//! The caller found is left in the request for the handlers ([`Caller`]),
//! whose calls into the broker core run in a session acting for it.
//! [`security_headers`] adds `X-Frame-Options`, a `frame-ancestors` CSP
//! and `X-Content-Type-Options` to every response.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::{DefaultHeaders, Next};
use actix_web::{web, FromRequest, HttpMessage, HttpRequest, HttpResponse};
use base64::Engine;
use serde_json::json;

use crate::acl::sign::same_secret;
use crate::acl::{Access, Acl, Denied, Identity, Secret};
use crate::broker::session::Session;
use crate::config::HttpSection;

/// The realm of the basic-authentication challenge.
pub const REALM: &str = "FerroMQ";

/// Paths that answer without credentials while `[http] open_health`, and
/// without a Host check.
const PROBES: [&str; 3] = ["/health", "/ready", "/metrics"];

/// The rules [`guard`] applies, built once from `[http]` and the ACL.
pub struct Guard {
    acl: Acl,
    /// The bearer token (compared in constant time); `None`: no token
    /// accepted.
    token: Option<Secret>,
    open_health: bool,
    hosts: HostRules,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("acl", &self.acl)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("open_health", &self.open_health)
            .field("hosts", &self.hosts)
            .finish()
    }
}

impl Guard {
    /// The rules of `settings` over `acl`; `Err` when the bearer token
    /// names an environment variable that is not set.
    pub fn new(settings: &HttpSection, acl: Acl) -> Result<Guard, String> {
        let token = match settings.token.trim() {
            "" => None,
            text => Some(
                Secret::resolve(text, &|name| std::env::var(name).ok()).map_err(|e| format!("[http] token: {e}"))?,
            ),
        };
        Ok(Guard {
            acl,
            token,
            open_health: settings.open_health,
            hosts: HostRules::new(&settings.allowed_hosts),
        })
    }

    fn token_matches(&self, given: &str) -> bool {
        self.token
            .as_ref()
            .is_some_and(|t| same_secret(t.expose(), given.as_bytes()))
    }

    /// Who sent `req` (ACL on): `Ok` with the identity, `Err` with why not.
    fn authenticate(&self, headers: &HeaderMap, peer: IpAddr) -> Result<Identity, Denied> {
        let rules = self.acl.rules();
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return match rules.authenticate(None, peer, 0, 0)? {
                Identity::Anonymous => Err(Denied(
                    "this request needs an account: HTTP basic authentication with an access key and \
                     secret key, or Authorization: Bearer with the [http] token"
                        .into(),
                )),
                who => Ok(who),
            };
        };
        let value = value
            .to_str()
            .map_err(|_| Denied("the Authorization header is not ASCII".into()))?;
        let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| Denied("the basic credentials are not base64 of UTF-8 access-key:secret-key".into()))?;
            let (key, secret) = decoded
                .split_once(':')
                .ok_or_else(|| Denied("the basic credentials are not access-key:secret-key".into()))?;
            rules.authenticate_plain(key, secret, peer)
        } else if scheme.eq_ignore_ascii_case("bearer") {
            if self.token_matches(rest.trim()) {
                // The token admits its bearer as an admin.
                Ok(Identity::Whitelisted)
            } else if self.token.is_none() {
                Err(Denied(
                    "bearer tokens are not accepted ([http] token is not set)".into(),
                ))
            } else {
                Err(Denied("the bearer token does not match [http] token".into()))
            }
        } else {
            Err(Denied(format!(
                "unsupported authorization scheme {scheme} (use Basic or Bearer)"
            )))
        }
    }
}

/// Allowed `Host` headers besides IP addresses and `localhost`.
#[derive(Debug, Clone, Default)]
struct HostRules {
    any: bool,
    /// Lower-case names with an optional port.
    names: Vec<(String, Option<u16>)>,
}

impl HostRules {
    fn new(list: &[String]) -> HostRules {
        let mut rules = HostRules::default();
        for entry in list.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            if entry == "*" {
                rules.any = true;
            } else {
                let (host, port) = split_host(entry);
                rules.names.push((normal_name(host), port));
            }
        }
        rules
    }

    /// May a request name this endpoint `host` (a `Host` header)?
    fn allows(&self, host: &str) -> bool {
        if self.any {
            return true;
        }
        let (name, port) = split_host(host);
        if name.is_empty() {
            return false;
        }
        // An address cannot be rebound by DNS, and `localhost` is the
        // loopback interface whatever a resolver says.
        if name.parse::<IpAddr>().is_ok() {
            return true;
        }
        let name = normal_name(name);
        if name == "localhost" {
            return true;
        }
        self.names
            .iter()
            .any(|(n, p)| *n == name && (p.is_none() || *p == port))
    }
}

fn normal_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// `name[:port]` or `[v6][:port]` → (name without brackets, port).
fn split_host(text: &str) -> (&str, Option<u16>) {
    let text = text.trim();
    if let Some(rest) = text.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((addr, tail)) => (addr, tail.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (rest, None),
        };
    }
    match text.split_once(':') {
        Some((name, port)) if !port.contains(':') => (name, port.parse().ok()),
        // Several colons: a bare IPv6 address.
        _ => (text, None),
    }
}

/// The headers every response carries: no framing (clickjacking), no
/// content sniffing.
pub fn security_headers() -> DefaultHeaders {
    DefaultHeaders::new()
        .add((header::X_FRAME_OPTIONS, "DENY"))
        .add((header::CONTENT_SECURITY_POLICY, "frame-ancestors 'none'"))
        .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
}

/// Who a request is for, as [`guard`] found it; handlers take it as an
/// extractor.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The authenticated identity (`Whitelisted` while ACL is off, for a
    /// whitelisted peer, or for the bearer token).
    pub identity: Identity,
    /// The HTTP client's address.
    pub peer: SocketAddr,
    acl: Acl,
}

impl Caller {
    /// May the caller do `access`? `Err` is the 403 answer.
    pub fn check(&self, access: &Access<'_>) -> Result<(), Box<HttpResponse>> {
        self.acl
            .check(&self.identity, access)
            .map_err(|d| Box::new(forbidden(&d)))
    }

    /// Like [`Caller::check`], as a yes or no.
    pub fn may(&self, access: &Access<'_>) -> bool {
        self.acl.check(&self.identity, access).is_ok()
    }

    /// The session the caller's calls into the broker core run in: the
    /// endpoint's trusted one while ACL is off, else one acting for the
    /// caller (so the core's own checks apply).
    pub fn session(&self, trusted: &Arc<Session>) -> Arc<Session> {
        if self.acl.enabled() {
            Arc::new(Session::internal_as(self.peer, self.identity.clone()))
        } else {
            trusted.clone()
        }
    }
}

impl FromRequest for Caller {
    type Error = actix_web::Error;
    type Future = std::future::Ready<Result<Caller, actix_web::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let found = req.extensions().get::<Caller>().cloned();
        std::future::ready(match found {
            Some(c) => Ok(c),
            None => match req.app_data::<web::Data<Guard>>() {
                // ACL off: the middleware leaves nothing; everyone is
                // trusted. With ACL on, a request it did not see is
                // anonymous (fail closed).
                Some(g) => Ok(Caller {
                    identity: if g.acl.enabled() {
                        Identity::Anonymous
                    } else {
                        Identity::Whitelisted
                    },
                    peer: peer_of(req.peer_addr()),
                    acl: g.acl.clone(),
                }),
                None => Err(actix_web::error::ErrorInternalServerError("no HTTP guard")),
            },
        })
    }
}

fn peer_of(addr: Option<SocketAddr>) -> SocketAddr {
    addr.unwrap_or_else(|| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0))
}

/// A JSON error answer.
fn refuse(status: StatusCode, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(json!({"error": message.into()}))
}

fn forbidden(d: &Denied) -> HttpResponse {
    refuse(StatusCode::FORBIDDEN, d.to_string())
}

/// 401 with a challenge. Browsers show their own login dialog for a
/// `Basic` challenge; the console's scripts (which send
/// `X-Requested-With`) and the console page itself get a `FerroMQ`
/// challenge instead, and the page shows its own form.
fn unauthorized(req: &ServiceRequest, d: &Denied, console_html: &'static str) -> HttpResponse {
    let scripted = req.headers().contains_key("x-requested-with");
    let page = req.path() == "/" && matches!(*req.method(), Method::GET | Method::HEAD);
    let scheme = if scripted || page { "FerroMQ" } else { "Basic" };
    let challenge = format!("{scheme} realm=\"{REALM}\"");
    let mut resp = HttpResponse::Unauthorized();
    resp.insert_header((header::WWW_AUTHENTICATE, challenge))
        .insert_header((header::CACHE_CONTROL, "no-store"));
    if page {
        resp.content_type("text/html; charset=utf-8").body(console_html)
    } else {
        resp.json(json!({"error": d.to_string()}))
    }
}

/// Does the request change state (everything but GET and HEAD)?
fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD)
}

/// What a state-changing request does, for the refusal's message.
fn admin_task(method: &Method, path: &str) -> &'static str {
    match (method.as_str(), path) {
        ("POST", "/api/topics") => "create or change topics",
        ("DELETE", p) if p.starts_with("/api/topics/") => "delete topics",
        ("POST", "/api/messages") => "produce through the HTTP API",
        ("POST", p) if p.starts_with("/api/dlq/") => "resend dead letters",
        ("POST", "/api/debug/fail") => "run debug commands",
        _ => "change state through the HTTP API",
    }
}

/// The authority (`host[:port]`, lower case, default port dropped) of an
/// `Origin` or `Referer` URL; `None` when it has none (e.g. `null`).
fn url_authority(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    // Drop any user-info.
    let authority = authority.rsplit('@').next()?;
    if authority.is_empty() {
        return None;
    }
    Some(normal_authority(authority, &scheme.to_ascii_lowercase()))
}

fn normal_authority(authority: &str, scheme: &str) -> String {
    let a = authority.trim().to_ascii_lowercase();
    let default = match scheme {
        "https" => ":443",
        _ => ":80",
    };
    match a.strip_suffix(default) {
        Some(bare) if !bare.is_empty() && !bare.ends_with(':') => bare.to_string(),
        _ => a,
    }
}

/// The request's `Host` (the header, else the URI's authority).
fn host_of(req: &ServiceRequest) -> Option<String> {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_string()))
}

/// The cross-site checks of a state-changing request: `Err` is the answer.
fn check_cross_site(req: &ServiceRequest, host: Option<&str>) -> Result<(), Box<HttpResponse>> {
    let headers = req.headers();
    let source = headers
        .get(header::ORIGIN)
        .map(|v| ("Origin", v))
        .or_else(|| headers.get(header::REFERER).map(|v| ("Referer", v)));
    if let Some((name, value)) = source {
        let text = value.to_str().unwrap_or("");
        let theirs = url_authority(text);
        let ours = host.map(|h| normal_authority(h, "http"));
        // The endpoint speaks plain HTTP, but a TLS-terminating proxy may
        // front it: compare authorities, not schemes.
        let same = match (&theirs, &ours) {
            (Some(t), Some(o)) => t == o || normal_authority(t, "https") == normal_authority(o, "https"),
            _ => false,
        };
        if !same {
            return Err(Box::new(refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "cross-site request refused: {name} {text:?} is not this endpoint's origin (Host {:?})",
                    host.unwrap_or("")
                ),
            )));
        }
    }
    if *req.method() == Method::POST {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
        if !json && !req.headers().contains_key("x-requested-with") {
            return Err(Box::new(refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "a POST must send Content-Type: application/json (or an X-Requested-With header)",
            )));
        }
    }
    Ok(())
}

/// The middleware (see the module's description).
pub async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let Some(guard) = req.app_data::<web::Data<Guard>>().cloned() else {
        let resp = refuse(StatusCode::INTERNAL_SERVER_ERROR, "no HTTP guard");
        return Ok(req.into_response(resp).map_into_right_body());
    };
    match admit(&req, &guard) {
        Ok(caller) => {
            if let Some(c) = caller {
                req.extensions_mut().insert(c);
            }
            Ok(next.call(req).await?.map_into_left_body())
        }
        Err(resp) => Ok(req.into_response(*resp).map_into_right_body()),
    }
}

/// Steps 1–4 of the module's description: the caller (`None` while ACL is
/// off), or the refusal.
fn admit(req: &ServiceRequest, guard: &Guard) -> Result<Option<Caller>, Box<HttpResponse>> {
    let path = req.path();
    let probe = PROBES.contains(&path);
    let host = host_of(req);
    if !probe {
        // A request without Host (HTTP/1.0) is no browser's: no rebinding.
        if let Some(h) = &host {
            if !guard.hosts.allows(h) {
                return Err(Box::new(refuse(
                    StatusCode::FORBIDDEN,
                    format!("Host {h:?} is not allowed (an IP address, localhost, or a name of [http] allowed_hosts)"),
                )));
            }
        }
    }
    let writes = changes_state(req.method());
    if writes {
        check_cross_site(req, host.as_deref())?;
    }
    if !guard.acl.enabled() {
        return Ok(None);
    }
    if probe && guard.open_health && !writes {
        return Ok(None);
    }
    let peer = peer_of(req.peer_addr());
    let identity = match guard.authenticate(req.headers(), peer.ip()) {
        Ok(who) => who,
        Err(d) => {
            tracing::debug!(peer = %peer, path, "HTTP request refused: {d}");
            return Err(Box::new(unauthorized(req, &d, super::CONSOLE_HTML)));
        }
    };
    let caller = Caller {
        identity,
        peer,
        acl: guard.acl.clone(),
    };
    if writes {
        caller.check(&Access::Admin(admin_task(req.method(), path)))?;
    }
    Ok(Some(caller))
}

/// A header value for basic authentication (`ferromq stats`, tests).
pub fn basic_auth(access_key: &str, secret_key: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{access_key}:{secret_key}"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_allow_addresses_localhost_and_listed_names() {
        let rules = HostRules::new(&["mq.example.com".into(), "Broker-1.internal:8080".into()]);
        for ok in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "[::1]:8080",
            "10.1.2.3:18080",
            "localhost:8080",
            "LOCALHOST",
            "mq.example.com",
            "mq.example.com:443",
            "broker-1.internal:8080",
            "MQ.EXAMPLE.COM.:80",
        ] {
            assert!(rules.allows(ok), "{ok}");
        }
        for bad in [
            "attacker.example",
            "attacker.example:8080",
            "broker-1.internal:9999",
            "localhost.attacker.example",
            "",
            ":8080",
        ] {
            assert!(!rules.allows(bad), "{bad}");
        }
        assert!(HostRules::new(&["*".into()]).allows("attacker.example"));
    }

    #[test]
    fn origins_reduce_to_their_authority() {
        assert_eq!(
            url_authority("http://127.0.0.1:8080").as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(
            url_authority("http://Example.com:80/x?y").as_deref(),
            Some("example.com")
        );
        assert_eq!(url_authority("https://example.com:443").as_deref(), Some("example.com"));
        assert_eq!(url_authority("http://u:p@h:1/").as_deref(), Some("h:1"));
        assert_eq!(url_authority("null"), None);
        assert_eq!(normal_authority("h:80", "http"), "h");
        assert_eq!(normal_authority("[::1]:8080", "http"), "[::1]:8080");
    }

    #[test]
    fn admin_tasks_name_what_is_done() {
        assert_eq!(admin_task(&Method::DELETE, "/api/topics/t"), "delete topics");
        assert_eq!(admin_task(&Method::POST, "/api/dlq/g/resend"), "resend dead letters");
        assert_eq!(admin_task(&Method::PUT, "/x"), "change state through the HTTP API");
    }

    #[test]
    fn the_token_compares_whole() {
        let settings = HttpSection {
            token: "a-long-enough-token".into(),
            ..HttpSection::default()
        };
        let g = Guard::new(&settings, Acl::disabled()).unwrap();
        assert!(g.token_matches("a-long-enough-token"));
        assert!(!g.token_matches("a-long-enough-toke"));
        assert!(!g.token_matches(""));
        let none = Guard::new(&HttpSection::default(), Acl::disabled()).unwrap();
        assert!(!none.token_matches(""));
        assert!(format!("{g:?}").contains("***"));
    }
}
