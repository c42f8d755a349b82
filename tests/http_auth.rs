//! The HTTP endpoint's protection, on real brokers: with ACL on the API
//! asks for an account (basic authentication or the `[http] token`),
//! state changes need an admin, and with or without ACL cross-site and
//! rebinding requests are refused; every response forbids framing.

mod common;

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use common::*;
use serde_json::Value;

const ROOT: (&str, &str) = ("root", "root-secret-0001");
const READER: (&str, &str) = ("reader", "reader-secret-01");
const TOKEN: &str = "http-token-for-tests-0001";

/// The response's headers, lower-case names.
struct Headers(Vec<(String, String)>);

impl Headers {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// One HTTP request with `headers`; returns (status, body, headers).
fn call(web: &str, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> (u16, String, Headers) {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
    let mut req = agent.request(method, &format!("http://{web}{path}"));
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let res = match body {
        Some(b) => req.set("Content-Type", "application/json").send_string(b),
        None => req.call(),
    };
    let r = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path}: {e}"),
    };
    let status = r.status();
    let names = r.headers_names();
    let got = Headers(
        names
            .iter()
            .filter_map(|n| r.header(n).map(|v| (n.to_ascii_lowercase(), v.to_string())))
            .collect(),
    );
    (status, r.into_string().unwrap_or_default(), got)
}

fn basic((key, secret): (&str, &str)) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:{secret}"))
    )
}

fn topics(web: &str) -> Vec<String> {
    let (status, body, _) = call(web, "GET", "/api/topics", &[("Authorization", &basic(ROOT))], None);
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["topics"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t.as_str().map(str::to_string))
        .collect()
}

fn error_of(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["error"].as_str().unwrap_or_default().to_string()
}

fn write_acl(path: &Path, extra: &str) {
    std::fs::write(
        path,
        format!(
            "{extra}
[[accounts]]
access_key = \"{}\"
secret_key = \"{}\"
admin = true

[[accounts]]
access_key = \"{}\"
secret_key = \"{}\"
default_topic_perm = \"SUB\"
default_group_perm = \"SUB\"
",
            ROOT.0, ROOT.1, READER.0, READER.1
        ),
    )
    .unwrap();
}

fn acl_broker(dir: &Path, extra_acl: &str) -> ServerProcess {
    let file = dir.join("acl.toml");
    write_acl(&file, extra_acl);
    let file = file.display().to_string();
    let mut env = small_store_env();
    env.extend([
        ("FERROMQ__ACL__ENABLED", "true"),
        ("FERROMQ__ACL__FILE", file.as_str()),
        ("FERROMQ__ACL__ACCESS_KEY", ROOT.0),
        ("FERROMQ__ACL__SECRET_KEY", ROOT.1),
        ("FERROMQ__HTTP__TOKEN", "env:FERROMQ_TEST_HTTP_TOKEN"),
        ("FERROMQ_TEST_HTTP_TOKEN", TOKEN),
    ]);
    let data = dir.join("data");
    ServerProcess::broker(&data, &[], &env)
}

fn ready(web: &str) {
    assert!(
        wait_until(Duration::from_secs(10), || call(web, "GET", "/ready", &[], None).0
            == 200),
        "broker not ready"
    );
}

#[test]
fn with_acl_the_api_needs_an_account_and_changes_need_an_admin() {
    let dir = tempfile::tempdir().unwrap();
    let broker = acl_broker(dir.path(), "");
    let web = broker.http_addr.as_str();
    // Open by default: health, readiness, metrics.
    ready(web);
    assert_eq!(call(web, "GET", "/health", &[], None).0, 200);
    assert_eq!(call(web, "GET", "/metrics", &[], None).0, 200);

    let root = basic(ROOT);
    let new_topic = r#"{"topic":"guarded","queues":2}"#;
    // No credentials: 401 with a Basic challenge and "access denied".
    let (status, body, resp) = call(web, "POST", "/api/topics", &[], Some(new_topic));
    assert_eq!(status, 401, "{body}");
    assert!(error_of(&body).contains("access denied"), "{body}");
    assert_eq!(resp.get("www-authenticate"), Some("Basic realm=\"FerroMQ\""));
    let (status, _, _) = call(web, "GET", "/api/overview", &[], None);
    assert_eq!(status, 401);
    let (status, _, _) = call(web, "GET", "/actors", &[], None);
    assert_eq!(status, 401);
    // The console page answers 401 too, with the page (its own form) and
    // no Basic challenge (no browser dialog).
    let (status, body, resp) = call(web, "GET", "/", &[], None);
    assert_eq!(status, 401);
    assert!(body.contains("login-form"), "the console page");
    assert_eq!(resp.get("www-authenticate"), Some("FerroMQ realm=\"FerroMQ\""));
    // The console's scripts (X-Requested-With) get no Basic challenge
    // either.
    let (status, _, resp) = call(
        web,
        "GET",
        "/api/overview",
        &[("X-Requested-With", "FerroMQ-Console")],
        None,
    );
    assert_eq!(status, 401);
    assert_eq!(resp.get("www-authenticate"), Some("FerroMQ realm=\"FerroMQ\""));
    // Wrong secret: 401.
    let wrong = basic((ROOT.0, "not-the-secret"));
    let (status, body, _) = call(
        web,
        "POST",
        "/api/topics",
        &[("Authorization", &wrong)],
        Some(new_topic),
    );
    assert_eq!(status, 401, "{body}");
    assert!(error_of(&body).contains("access denied"), "{body}");
    assert!(
        !body.contains("not-the-secret") && !body.contains(ROOT.1),
        "no secret echoed: {body}"
    );
    let (status, _, _) = call(
        web,
        "GET",
        "/api/topics",
        &[("Authorization", "Bearer wrong-token")],
        None,
    );
    assert_eq!(status, 401);
    assert!(!topics(web).contains(&"guarded".to_string()));

    // An admin creates it; the bearer token is an admin too.
    let (status, body, _) = call(web, "POST", "/api/topics", &[("Authorization", &root)], Some(new_topic));
    assert_eq!(status, 201, "{body}");
    let bearer = format!("Bearer {TOKEN}");
    let (status, body, _) = call(
        web,
        "POST",
        "/api/topics",
        &[("Authorization", &bearer)],
        Some(r#"{"topic":"by-token","queues":1}"#),
    );
    assert_eq!(status, 201, "{body}");
    assert!(topics(web).contains(&"by-token".to_string()));

    // A non-admin reads, but may not change anything.
    let reader = basic(READER);
    let (status, body, _) = call(web, "GET", "/api/topics/guarded", &[("Authorization", &reader)], None);
    assert_eq!(status, 200, "{body}");
    let (status, body, _) = call(web, "GET", "/api/overview", &[("Authorization", &reader)], None);
    assert_eq!(status, 200, "{body}");
    for (method, path, body) in [
        ("DELETE", "/api/topics/guarded", None),
        ("POST", "/api/topics", Some(r#"{"topic":"reader-made","queues":1}"#)),
        ("POST", "/api/messages", Some(r#"{"topic":"guarded","body":"x"}"#)),
        ("POST", "/api/dlq/g/resend", Some(r#"{"all":true}"#)),
    ] {
        let (status, resp, _) = call(web, method, path, &[("Authorization", &reader)], body);
        assert_eq!(status, 403, "{method} {path}: {resp}");
        let e = error_of(&resp);
        assert!(e.starts_with("access denied: ") && e.contains("admin"), "{e}");
    }
    let now = topics(web);
    assert!(now.contains(&"guarded".to_string()) && !now.contains(&"reader-made".to_string()));
    let (_, body, _) = call(web, "GET", "/api/topics/guarded", &[("Authorization", &root)], None);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["messages"], 0, "nothing was produced: {body}");

    // Cross-site or rebound requests are refused even with an admin's
    // credentials, and change nothing.
    let (status, body, _) = call(
        web,
        "DELETE",
        "/api/topics/guarded",
        &[("Authorization", &root), ("Origin", "http://attacker.example")],
        None,
    );
    assert_eq!(status, 403, "{body}");
    assert!(error_of(&body).contains("cross-site"), "{body}");
    let (status, body, _) = call(
        web,
        "DELETE",
        "/api/topics/guarded",
        &[("Authorization", &root), ("Host", "attacker.example")],
        None,
    );
    assert_eq!(status, 403, "{body}");
    assert!(topics(web).contains(&"guarded".to_string()));

    // The admin deletes it from the console's own origin.
    let origin = format!("http://{web}");
    let (status, body, resp) = call(
        web,
        "DELETE",
        "/api/topics/guarded",
        &[("Authorization", &root), ("Origin", &origin)],
        None,
    );
    assert_eq!(status, 200, "{body}");
    for (name, value) in [
        ("x-frame-options", "DENY"),
        ("content-security-policy", "frame-ancestors 'none'"),
        ("x-content-type-options", "nosniff"),
    ] {
        assert_eq!(resp.get(name), Some(value), "{name}");
    }
    assert!(wait_until(Duration::from_secs(5), || !topics(web).contains(&"guarded".to_string())));
    // `ferromq stats` sends the account flags as basic authentication.
    let ns = broker.namesrv_addr.as_str();
    let stats = [
        "stats",
        "--http",
        web,
        "--interval",
        "0.2",
        "--count",
        "1",
        "--format",
        "json",
    ];
    let out = cli(ns, &stats);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401") && err.contains("access denied"), "{err}");
    let mut with_account = stats.to_vec();
    with_account.extend(["--access-key", ROOT.0, "--secret-key", ROOT.1]);
    let line = cli_ok(ns, &with_account);
    assert!(line.contains("in_per_sec"), "{line}");
    // The broker's log never shows a secret.
    let log = broker.stderr();
    assert!(!log.contains(ROOT.1) && !log.contains(TOKEN) && !log.contains(READER.1));
}

#[test]
fn without_acl_cross_site_and_rebound_requests_are_still_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = small_store_env();
    env.push(("FERROMQ__HTTP__ALLOWED_HOSTS", "mq.example.com, other.example:1"));
    let broker = ServerProcess::broker(dir.path(), &[], &env);
    let web = broker.http_addr.as_str();
    ready(web);
    // Listed names are answered (a name without a port: any port).
    assert_eq!(
        call(web, "GET", "/api/topics", &[("Host", "MQ.example.com:8080")], None).0,
        200
    );
    assert_eq!(
        call(web, "GET", "/api/topics", &[("Host", "other.example:1")], None).0,
        200
    );
    assert_eq!(
        call(web, "GET", "/api/topics", &[("Host", "other.example:2")], None).0,
        403
    );
    let (status, body) = http(web, "POST", "/api/topics", Some(r#"{"topic":"kept","queues":1}"#));
    assert_eq!(status, 201, "{body}");

    // DNS rebinding: the attacker's name in Host.
    let (status, body, resp) = call(web, "DELETE", "/api/topics/kept", &[("Host", "attacker.example")], None);
    assert_eq!(status, 403, "{body}");
    assert!(error_of(&body).contains("attacker.example"), "{body}");
    assert_eq!(resp.get("x-frame-options"), Some("DENY"));
    let (status, _, _) = call(web, "GET", "/api/topics", &[("Host", "attacker.example:80")], None);
    assert_eq!(status, 403);
    // Another site's page.
    for (name, value) in [
        ("Origin", "http://attacker.example"),
        ("Origin", "null"),
        ("Referer", "http://attacker.example/page"),
    ] {
        let (status, body, _) = call(web, "DELETE", "/api/topics/kept", &[(name, value)], None);
        assert_eq!(status, 403, "{name} {value}: {body}");
    }
    // A form's POST (no JSON content type) is refused before any work.
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
    let form = agent
        .post(&format!("http://{web}/api/topics"))
        .set("Content-Type", "application/x-www-form-urlencoded")
        .send_string("topic=formed&queues=1");
    assert!(matches!(form, Err(ureq::Error::Status(415, _))), "{form:?}");
    let (status, body) = http(web, "GET", "/api/topics", None);
    assert_eq!(status, 200);
    assert!(body.contains("kept") && !body.contains("formed"), "{body}");
    // Health is answered whatever the Host (probes name the broker freely).
    let (status, _, _) = call(web, "GET", "/health", &[("Host", "broker-0.svc")], None);
    assert_eq!(status, 200);
    // `localhost` and the same origin are fine.
    let port = web.rsplit(':').next().unwrap();
    let (status, body, _) = call(
        web,
        "GET",
        "/api/topics",
        &[("Host", &format!("localhost:{port}"))],
        None,
    );
    assert_eq!(status, 200, "{body}");
    let origin = format!("http://{web}");
    let (status, body, _) = call(web, "DELETE", "/api/topics/kept", &[("Origin", &origin)], None);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn closed_health_needs_an_account_and_a_whitelisted_peer_needs_none() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("acl.toml");
    write_acl(&file, "global_white_remote_addresses = [\"10.0.0.0/8\"]\n");
    let path = file.display().to_string();
    let mut env = small_store_env();
    env.extend([
        ("FERROMQ__ACL__ENABLED", "true"),
        ("FERROMQ__ACL__FILE", path.as_str()),
        ("FERROMQ__ACL__ACCESS_KEY", ROOT.0),
        ("FERROMQ__ACL__SECRET_KEY", ROOT.1),
        ("FERROMQ__ACL__RELOAD_INTERVAL_MS", "200"),
        ("FERROMQ__HTTP__OPEN_HEALTH", "false"),
    ]);
    let broker = ServerProcess::broker(&dir.path().join("data"), &[], &env);
    let web = broker.http_addr.as_str();
    // open_health = false: the probes need an account too.
    for path in ["/health", "/metrics"] {
        assert_eq!(call(web, "GET", path, &[], None).0, 401, "{path}");
        assert_eq!(
            call(web, "GET", path, &[("Authorization", &basic(READER))], None).0,
            200,
            "{path}"
        );
    }
    let new_topic = r#"{"topic":"white","queues":1}"#;
    assert_eq!(http(web, "POST", "/api/topics", Some(new_topic)).0, 401);
    // Once 127.0.0.1 is whitelisted (the file is reloaded), no account is
    // needed: as on the native protocol.
    write_acl(&file, "global_white_remote_addresses = [\"127.0.0.1\"]\n");
    assert!(
        wait_until(Duration::from_secs(10), || http(web, "GET", "/metrics", None).0 == 200),
        "the whitelist was not taken"
    );
    let (status, body) = http(web, "POST", "/api/topics", Some(new_topic));
    assert_eq!(status, 201, "{body}");
    // Credentials that are given are still checked.
    let wrong = basic((READER.0, "wrong-secret-123"));
    assert_eq!(
        call(web, "GET", "/api/topics", &[("Authorization", &wrong)], None).0,
        401
    );
}
