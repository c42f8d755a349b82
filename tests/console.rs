//! The web console in headless Chromium, driven over the DevTools protocol:
//! create a topic through the UI, see it listed, produce through the API,
//! watch a group's lag fall to 0, and take a screenshot that is not blank;
//! with ACL on, sign in through the console's form first.
//!
//! Chromium comes from `scripts/install-chromium.sh` (Debian's package).
//! `.ci/run` installs it and sets `FERROMQ_REQUIRE_BROWSER=1`, so there a
//! missing browser fails the test; elsewhere the test says why it skipped.

mod common;

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use serde_json::{json, Value};
use tungstenite::{Message as WsMessage, WebSocket};

fn find_chromium() -> Option<PathBuf> {
    let which = |name: &str| {
        std::env::var_os("PATH")
            .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.exists()))
    };
    if let Some(p) = which("chromium") {
        return Some(p);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-chromium.sh");
    let installed = Command::new("sh").arg(&script).stdout(Stdio::null()).status();
    if installed.is_ok_and(|s| s.success()) {
        return which("chromium");
    }
    None
}

struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium forks helpers (zygote, renderer, GPU): stop its whole
        // process group so none outlives the test.
        // SAFETY: signalling a process group this test created.
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Starts headless Chromium on `url`; returns it and its DevTools port.
fn launch(chromium: &Path, url: &str) -> (Browser, u16) {
    let profile = tempfile::tempdir().unwrap();
    let child = Command::new(chromium)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--remote-debugging-port=0",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let browser = Browser {
        child,
        _profile: profile,
    };
    let port_file = browser._profile.path().join("DevToolsActivePort");
    let mut port = None;
    assert!(
        wait_until(Duration::from_secs(30), || {
            port = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.lines().next().and_then(|l| l.parse().ok()));
            port.is_some()
        }),
        "chromium did not open its DevTools port"
    );
    (browser, port.unwrap())
}

/// A DevTools session with one page.
struct Page {
    ws: WebSocket<TcpStream>,
    next_id: u64,
}

impl Page {
    fn attach(port: u16) -> Page {
        let devtools = format!("127.0.0.1:{port}");
        let mut url = None;
        assert!(wait_until(Duration::from_secs(20), || {
            let Some((_, body)) = try_http(&devtools, "GET", "/json/list", None) else {
                return false;
            };
            let targets: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            url = targets.as_array().and_then(|t| {
                t.iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_string))
            });
            url.is_some()
        }));
        let url = url.unwrap();
        let stream = TcpStream::connect(&devtools).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let (ws, _) = tungstenite::client(url.as_str(), stream).expect("DevTools websocket");
        Page { ws, next_id: 1 }
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(WsMessage::Text(msg)).unwrap();
        loop {
            let text = match self.ws.read().expect("DevTools message") {
                WsMessage::Text(t) => t,
                _ => continue,
            };
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `js` in the page (promises awaited) and returns its value.
    fn eval(&mut self, js: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": js, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(r.get("exceptionDetails").is_none(), "{js}: {r}");
        r["result"]["value"].clone()
    }

    fn wait_for(&mut self, what: &str, js: &str, within: Duration) {
        let deadline = Instant::now() + within;
        // Not there yet (the page still loading) counts as false.
        let guarded = format!("(() => {{ try {{ return ({js}); }} catch (e) {{ return false; }} }})()");
        while Instant::now() < deadline {
            if self.eval(&guarded) == Value::Bool(true) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let body = self.eval("document.body.innerText");
        panic!("timed out waiting for {what}; page text:\n{body}");
    }
}

fn text_of(id: &str) -> String {
    format!("document.getElementById('{id}').textContent")
}

#[test]
fn console_creates_a_topic_and_shows_lag_falling_to_zero() {
    let Some(chromium) = find_chromium() else {
        assert!(
            std::env::var_os("FERROMQ_REQUIRE_BROWSER").is_none(),
            "chromium is required (scripts/install-chromium.sh failed)"
        );
        eprintln!("SKIPPED: no chromium and scripts/install-chromium.sh could not install it");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = ServerProcess::broker(dir.path(), &[], &small_store_env());
    let (ns, web) = (broker.namesrv_addr.clone(), broker.http_addr.clone());
    let (_browser, port) = launch(&chromium, &format!("http://{web}/"));
    let mut page = Page::attach(port);
    page.wait_for(
        "the console to load",
        "document.readyState === 'complete' && document.getElementById('status').textContent.startsWith('live')",
        Duration::from_secs(20),
    );

    // Create a topic through the UI and see it listed.
    page.eval("document.querySelector(\"nav button[data-tab='topics']\").click(); true");
    page.eval(
        "document.getElementById('topic-name').value = 'ui-orders';
         document.getElementById('topic-queues').value = '2';
         document.getElementById('topic-create').click(); true",
    );
    page.wait_for(
        "the new topic in the list",
        &format!("{}.includes('ui-orders')", text_of("topic-list")),
        Duration::from_secs(15),
    );
    let topics = http_get(&web, "/api/topics");
    assert!(topics.contains("ui-orders"), "{topics}");

    // Produce through the API; a group consumes a third, so it lags.
    for i in 0..30 {
        let body = format!(r#"{{"topic":"ui-orders","body":"order {i}","key":"o{i}"}}"#);
        let (status, resp) = http(&web, "POST", "/api/messages", Some(&body));
        assert_eq!(status, 201, "{resp}");
    }
    let first = consume_json(&ns, "ui-orders", &["--group", "ui-readers", "--count", "10"]);
    assert_eq!(first.len(), 10);
    page.eval("document.querySelector(\"nav button[data-tab='groups']\").click(); true");
    page.eval(
        "document.getElementById('group-name').value = 'ui-readers';
         document.getElementById('group-show').click(); true",
    );
    page.wait_for(
        "the group's lag",
        &format!("Number({}) >= 20", text_of("group-lag")),
        Duration::from_secs(15),
    );
    // The rest is consumed: the console's lag falls to 0 by itself.
    let rest = consume_json(
        &ns,
        "ui-orders",
        &["--group", "ui-readers", "--count", "20", "--idle-timeout", "10"],
    );
    assert_eq!(rest.len(), 20);
    page.wait_for(
        "the lag to fall to 0",
        &format!("{} === '0'", text_of("group-lag")),
        Duration::from_secs(20),
    );

    // Screenshot the overview; it must not be blank.
    page.eval("document.querySelector(\"nav button[data-tab='overview']\").click(); true");
    page.wait_for(
        "the overview",
        &format!("{}.length > 0", text_of("ov-broker-rows")),
        Duration::from_secs(10),
    );
    let shot = page.call("Page.captureScreenshot", json!({"format": "png"}));
    let data = shot["data"].as_str().expect("screenshot data").to_string();
    let png = base64::engine::general_purpose::STANDARD.decode(&data).unwrap();
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-overview.png");
    std::fs::write(&out, &png).unwrap();
    println!("console screenshot: {} ({} bytes)", out.display(), png.len());
    // Count, in the browser, the pixels that differ from the background.
    let inked = page.eval(&format!(
        "new Promise((done) => {{
            const img = new Image();
            img.onload = () => {{
                const c = document.createElement('canvas');
                c.width = img.width; c.height = img.height;
                const g = c.getContext('2d');
                g.drawImage(img, 0, 0);
                const px = g.getImageData(0, 0, c.width, c.height).data;
                let inked = 0;
                for (let i = 0; i < px.length; i += 4) {{
                    if (px[i] !== px[0] || px[i + 1] !== px[1] || px[i + 2] !== px[2]) inked++;
                }}
                done(inked / (px.length / 4));
            }};
            img.src = 'data:image/png;base64,{data}';
        }})"
    ));
    let inked = inked.as_f64().unwrap();
    assert!(
        inked > 0.05,
        "screenshot is (nearly) blank: {:.1}% of pixels differ",
        inked * 100.0
    );
}

/// The browser, or `None` (the test skips) where it cannot be had.
fn chromium_or_skip() -> Option<PathBuf> {
    let found = find_chromium();
    if found.is_none() {
        assert!(
            std::env::var_os("FERROMQ_REQUIRE_BROWSER").is_none(),
            "chromium is required (scripts/install-chromium.sh failed)"
        );
        eprintln!("SKIPPED: no chromium and scripts/install-chromium.sh could not install it");
    }
    found
}

/// The console of the broker whose HTTP endpoint is `web`, loaded.
fn open_console(chromium: &Path, web: &str) -> (Browser, Page) {
    let (browser, port) = launch(chromium, &format!("http://{web}/"));
    let mut page = Page::attach(port);
    page.wait_for(
        "the console to load",
        "document.readyState === 'complete' && document.getElementById('status').textContent.startsWith('live')",
        Duration::from_secs(20),
    );
    (browser, page)
}

#[test]
fn console_shows_the_store_and_warns_when_sends_are_refused() {
    let Some(chromium) = chromium_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let topic = "ui-store";
    {
        // The harness's watermarks (97/98/99 %): the disk is `normal`.
        let env = small_store_env();
        let mut broker = ServerProcess::broker(dir.path(), &[], &env);
        let (ns, web) = (broker.namesrv_addr.clone(), broker.http_addr.clone());
        cli_ok(&ns, &["topic", "create", topic, "--queues", "2"]);
        let (_browser, mut page) = open_console(&chromium, &web);
        // The overview's store cards.
        page.wait_for(
            "the store's watermark level",
            &format!("{} === 'normal'", text_of("ov-disk-level")),
            Duration::from_secs(15),
        );
        assert_eq!(page.eval(&text_of("ov-sends")), "accepted");
        assert_eq!(page.eval("document.getElementById('ov-disk-warn').hidden"), true);
        let used = page.eval(&text_of("ov-disk-used"));
        assert!(used.as_str().is_some_and(|u| u.ends_with('%')), "{used}");
        let size = page.eval(&text_of("ov-log"));
        // `0 B` until the first send creates a segment.
        assert!(
            size.as_str().is_some_and(|s| s.ends_with(" B") || s.ends_with("iB")),
            "{size}"
        );
        assert_eq!(page.eval(&text_of("ov-marks")), "97% / 98% / 99%");
        // A topic's description has a store row per broker group.
        page.eval("document.querySelector(\"nav button[data-tab='topics']\").click(); true");
        page.wait_for(
            "the topic in the list",
            &format!("{}.includes('{topic}')", text_of("topic-list")),
            Duration::from_secs(15),
        );
        page.eval(&format!(
            "document.querySelector(\"button[data-describe='{topic}']\").click(); true"
        ));
        page.wait_for(
            "the store row of the description",
            &format!(
                "{0}.includes('watermark') && {0}.includes('normal') && {0}.includes('accepted')",
                text_of("topic-detail")
            ),
            Duration::from_secs(15),
        );
        assert!(broker.stop());
    }

    // Restarted with watermarks the disk is certainly above: a warning.
    let mut env = small_store_env();
    set_watermarks(&mut env, "0.000001");
    let broker = ServerProcess::broker(dir.path(), &[], &env);
    let (_browser, mut page) = open_console(&chromium, &broker.http_addr);
    page.wait_for(
        "the refusal warning",
        "!document.getElementById('ov-disk-warn').hidden",
        Duration::from_secs(15),
    );
    let warning = page.eval(&text_of("ov-disk-warn"));
    assert!(
        warning
            .as_str()
            .is_some_and(|w| w.starts_with("Sends are refused (DISK_FULL): disk full: ")),
        "{warning}"
    );
    assert_eq!(page.eval(&text_of("ov-sends")), "refused");
    assert_eq!(page.eval(&text_of("ov-disk-level")), "refuse");
}

/// `GET path` with HTTP basic authentication, which must answer 200.
fn get_as(web: &str, path: &str, (key, secret): (&str, &str)) -> String {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{key}:{secret}"));
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
    let r = agent
        .get(&format!("http://{web}{path}"))
        .set("Authorization", &format!("Basic {auth}"))
        .call()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    r.into_string().unwrap()
}

#[test]
fn with_acl_the_console_asks_for_an_account_then_works() {
    let Some(chromium) = chromium_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl.toml");
    std::fs::write(
        &acl,
        "[[accounts]]\naccess_key = \"root\"\nsecret_key = \"root-secret-0001\"\nadmin = true\n",
    )
    .unwrap();
    let acl = acl.display().to_string();
    let mut env = small_store_env();
    env.extend([
        ("FERROMQ__ACL__ENABLED", "true"),
        ("FERROMQ__ACL__FILE", acl.as_str()),
        ("FERROMQ__ACL__ACCESS_KEY", "root"),
        ("FERROMQ__ACL__SECRET_KEY", "root-secret-0001"),
    ]);
    let broker = ServerProcess::broker(&dir.path().join("data"), &[], &env);
    let web = broker.http_addr.clone();
    let (_browser, port) = launch(&chromium, &format!("http://{web}/"));
    let mut page = Page::attach(port);
    page.wait_for(
        "the sign-in form",
        "document.readyState === 'complete' && !document.getElementById('login').hidden",
        Duration::from_secs(20),
    );
    // A wrong secret is refused and the form says why.
    let sign_in = |page: &mut Page, secret: &str| {
        page.eval(&format!(
            "document.getElementById('login-key').value = 'root';
             document.getElementById('login-secret').value = '{secret}';
             document.getElementById('login-submit').click(); true"
        ));
    };
    sign_in(&mut page, "not-the-secret");
    page.wait_for(
        "the refusal",
        &format!(
            "!document.getElementById('login').hidden && {}.includes('access denied')",
            text_of("login-msg")
        ),
        Duration::from_secs(15),
    );
    sign_in(&mut page, "root-secret-0001");
    page.wait_for(
        "the console to go live",
        "document.getElementById('login').hidden && document.getElementById('status').textContent.startsWith('live')",
        Duration::from_secs(20),
    );
    assert_eq!(page.eval(&text_of("whoami")), "root");
    assert_eq!(
        page.eval("sessionStorage.getItem('ferromq.credentials') !== null"),
        true
    );

    // Create a topic through the UI (a POST that needs the admin).
    page.eval("document.querySelector(\"nav button[data-tab='topics']\").click(); true");
    page.eval(
        "document.getElementById('topic-name').value = 'acl-orders';
         document.getElementById('topic-queues').value = '2';
         document.getElementById('topic-create').click(); true",
    );
    page.wait_for(
        "the new topic in the list",
        &format!("{}.includes('acl-orders')", text_of("topic-list")),
        Duration::from_secs(15),
    );
    let topics = get_as(&web, "/api/topics", ("root", "root-secret-0001"));
    assert!(topics.contains("acl-orders"), "{topics}");

    // Log out: the credentials are gone and the form is back.
    page.eval("document.getElementById('logout').click(); true");
    // The page reloads.
    std::thread::sleep(Duration::from_millis(1500));
    page.wait_for(
        "the sign-in form again",
        "document.readyState === 'complete' && !document.getElementById('login').hidden",
        Duration::from_secs(20),
    );
    assert_eq!(
        page.eval("sessionStorage.getItem('ferromq.credentials') === null"),
        true
    );
}
