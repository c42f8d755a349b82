//! The JSON API's operations on this broker's own data, which it does
//! in-process through the broker core (topic create/delete, lookups by id
//! and key), answer as before: same shapes, same statuses.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

#[test]
fn topics_and_lookups_of_this_broker_go_through_the_core() {
    let dir = tempfile::tempdir().unwrap();
    let broker = ServerProcess::broker(dir.path(), &[], &small_store_env());
    let (ns, web) = (broker.namesrv_addr.as_str(), broker.http_addr.as_str());
    assert!(wait_until(Duration::from_secs(10), || http(web, "GET", "/ready", None)
        .0
        == 200));

    let (status, resp) = http(web, "POST", "/api/topics", Some(r#"{"topic":"api-t","queues":3}"#));
    assert_eq!(status, 201, "{resp}");
    assert_eq!(json(&resp), json(r#"{"topic":"api-t","queues":3}"#));
    let described = json(&http_get(web, "/api/topics/api-t"));
    assert_eq!(described["queues"].as_array().map(Vec::len), Some(3), "{described}");
    // The CLI (another client) sees it too.
    assert!(cli_ok(ns, &["topic", "list"]).contains("api-t"));

    let (status, resp) = http(web, "POST", "/api/topics", Some(r#"{"topic":"bad name","queues":3}"#));
    assert_eq!(status, 400, "{resp}");
    assert!(json(&resp)["error"].is_string());
    let (status, resp) = http(web, "POST", "/api/topics", Some(r#"{"topic":"zero","queues":0}"#));
    assert_eq!(status, 400, "{resp}");

    let (status, resp) = http(
        web,
        "POST",
        "/api/messages",
        Some(r#"{"topic":"api-t","body":"hello","key":"k1","tag":"a"}"#),
    );
    assert_eq!(status, 201, "{resp}");
    let sent = json(&resp);
    let msg_id = sent["msg_id"].as_str().unwrap().to_string();

    let (status, resp) = http(web, "GET", &format!("/api/messages/{msg_id}"), None);
    assert_eq!(status, 200, "{resp}");
    let got = json(&resp);
    assert_eq!(got["msg_id"], msg_id.as_str());
    assert_eq!(got["topic"], "api-t");
    assert_eq!(got["keys"], "k1");
    assert_eq!(got["offset"], sent["offset"]);

    let found = json(&http_get(web, "/api/messages?topic=api-t&key=k1"));
    let found = found["messages"].as_array().unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["msg_id"], msg_id.as_str());
    let none = json(&http_get(web, "/api/messages?topic=api-t&key=nope"));
    assert_eq!(none["messages"].as_array().map(Vec::len), Some(0));

    let (status, resp) = http(web, "GET", "/api/messages/not-an-id", None);
    assert_eq!(status, 400, "{resp}");

    let (status, resp) = http(web, "DELETE", "/api/topics/api-t", None);
    assert_eq!(status, 200, "{resp}");
    assert_eq!(json(&resp), json(r#"{"deleted":"api-t"}"#));
    assert!(wait_until(Duration::from_secs(5), || !cli_ok(ns, &["topic", "list"])
        .contains("api-t")));
    let (status, resp) = http(web, "DELETE", "/api/topics/api-t", None);
    assert_eq!(status, 404, "{resp}");
}
