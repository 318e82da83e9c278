//! CORS with a real browser: headless Chromium (Debian's `chromium`) loads a page from one
//! origin that calls triggers on another with `fetch`. A trigger with a `cors` table answers
//! the preflight itself and its responses are readable by the page; one without it is
//! blocked by the browser.

mod common;

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TestServer;

/// Serves the page (set once the gateway's address is known) for every request on a
/// loopback port: the page's origin.
fn page_server() -> (u16, Arc<Mutex<String>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let page = Arc::new(Mutex::new(String::new()));
    let served = page.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let html = served.lock().unwrap().clone();
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = stream.read(&mut buf);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                html.len(),
                html
            );
        }
    });
    (port, page)
}

fn chromium() -> &'static str {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if std::process::Command::new(name)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return name;
        }
    }
    panic!("no headless Chromium (apt-get install chromium; scripts/install-test-deps.sh does)");
}

#[test]
fn a_page_on_another_origin_calls_triggers_with_fetch() {
    let (page_port, page) = page_server();
    let origin = format!("http://127.0.0.1:{page_port}");
    let s = TestServer::start(&format!(
        r#"
[server]
listen = "127.0.0.1:0"

[[function]]
name = "echo"
wasm = "{{echo}}"

[[trigger]]
name = "api"
function = "echo"
path = "/api"
methods = ["GET", "PUT"]
auth = "bearer"
bearer = {{ tokens = [{{ name = "web", token = "browser-token-0123456789abcdef0123" }}] }}

[trigger.cors]
allow_origins = ["{origin}"]
allow_methods = ["GET", "PUT"]
allow_headers = ["Authorization", "Content-Type", "X-Token"]
expose_headers = ["X-Fc-Request-Id"]
max_age_s = 600

[[trigger]]
name = "closed"
function = "echo"
path = "/closed"

[[trigger]]
name = "cred"
function = "echo"
path = "/cred"
cors = {{ allow_origins = ["{origin}"], allow_credentials = true }}

[[trigger]]
name = "nocred"
function = "echo"
path = "/nocred"
cors = {{ allow_origins = ["{origin}"] }}

[[trigger]]
name = "elsewhere"
function = "echo"
path = "/elsewhere"
cors = {{ allow_origins = ["http://app.example:{page_port}"] }}
"#
    ));
    let api = s.url("/api/items/7");
    let closed = s.url("/closed");
    let cred = s.url("/cred");
    let nocred = s.url("/nocred");
    let elsewhere = s.url("/elsewhere");
    let html = format!(
        r#"<!doctype html><html><body><pre id="out">running</pre><script>
const out = [];
async function main() {{
  try {{
    const r = await fetch("{api}", {{
      method: "PUT",
      headers: {{ "Authorization": "Bearer browser-token-0123456789abcdef0123",
                 "Content-Type": "application/json", "X-Token": "t" }},
      body: JSON.stringify({{ n: 7 }}),
    }});
    const seen = await r.json();
    out.push("put:" + r.status + ":" + seen.method + ":" + seen.path + ":" + seen.body);
    out.push("exposed:" + (r.headers.get("x-fc-request-id") || "none").length);
  }} catch (e) {{ out.push("put:error:" + e); }}
  try {{
    const r = await fetch("{api}", {{ method: "PUT", headers: {{ "X-Token": "t" }} }});
    out.push("unauthorized:" + r.status);
  }} catch (e) {{ out.push("unauthorized:error:" + e); }}
  try {{
    await fetch("{closed}");
    out.push("closed:readable");
  }} catch (e) {{ out.push("closed:blocked"); }}
  try {{
    const r = await fetch("{cred}", {{ credentials: "include" }});
    out.push("cred:" + r.status);
  }} catch (e) {{ out.push("cred:blocked"); }}
  try {{
    await fetch("{nocred}", {{ credentials: "include" }});
    out.push("nocred:readable");
  }} catch (e) {{ out.push("nocred:blocked"); }}
  try {{
    const r = await fetch("{nocred}");
    out.push("nocred-plain:" + r.status);
  }} catch (e) {{ out.push("nocred-plain:blocked"); }}
  try {{
    await fetch("{elsewhere}");
    out.push("elsewhere:readable");
  }} catch (e) {{ out.push("elsewhere:blocked"); }}
  document.getElementById("out").textContent = out.join("\n") + "\ndone";
}}
main();
</script></body></html>"#
    );
    *page.lock().unwrap() = html;
    let dom = run_chromium(&format!("{origin}/"));
    check(&dom);
}

fn run_chromium(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(chromium())
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--virtual-time-budget=15000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .output()
        .expect("run chromium");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The page's results: the text of its `<pre id="out">`, not the whole DOM (which holds the
/// script, and so every string the script could write).
fn results(dom: &str) -> &str {
    let start = dom
        .find(r#"<pre id="out">"#)
        .map(|i| i + r#"<pre id="out">"#.len())
        .unwrap_or_else(|| panic!("no results on the page:\n{dom}"));
    let end = dom[start..].find("</pre>").map_or(dom.len(), |i| start + i);
    &dom[start..end]
}

fn check(dom: &str) {
    let dom = results(dom);
    assert!(dom.contains("done"), "the page did not finish:\n{dom}");
    assert!(
        dom.contains("put:200:PUT:/items/7:{\"n\":7}"),
        "the allowed call failed:\n{dom}"
    );
    assert!(
        dom.contains("exposed:36"),
        "the exposed header was not readable:\n{dom}"
    );
    // The gateway's own 401 is readable by the page too.
    assert!(dom.contains("unauthorized:401"), "{dom}");
    assert!(
        dom.contains("closed:blocked"),
        "a trigger without cors was readable:\n{dom}"
    );
    // A credentialed call is readable only where the trigger allows credentials.
    assert!(
        dom.contains("cred:200"),
        "a credentialed call was blocked:\n{dom}"
    );
    assert!(
        dom.contains("nocred:blocked"),
        "a credentialed call was readable without allow_credentials:\n{dom}"
    );
    assert!(dom.contains("nocred-plain:200"), "{dom}");
    assert!(
        dom.contains("elsewhere:blocked"),
        "an origin not in allow_origins was readable:\n{dom}"
    );
}
