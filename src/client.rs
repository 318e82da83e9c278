//! The client side (SPEC section 8.5): `wasmgate invoke` calls a trigger, `wasmgate event`
//! publishes to the event API. Both print what the gateway answered and fail (non-zero
//! exit) when the answer is an error (status 400 or above), with the error body printed.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};

/// How to reach and authenticate to a gateway.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// A PEM CA certificate to trust (besides the Web PKI roots).
    pub cacert: Option<PathBuf>,
    /// Sign with ACS3-HMAC-SHA256: (key id, environment variable holding the secret).
    pub sign: Option<(String, String)>,
    /// Extra `Name: value` headers.
    pub headers: Vec<String>,
}

/// One request.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What came back.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Writes the answer: the status line and headers first with `include`, then the body.
    pub fn print(&self, include: bool, out: &mut impl std::io::Write) -> std::io::Result<()> {
        if include {
            writeln!(out, "{} {}", self.version, self.status)?;
            for (k, v) in &self.headers {
                writeln!(out, "{k}: {v}")?;
            }
            writeln!(out)?;
        }
        out.write_all(&self.body)?;
        if !self.body.is_empty() && !self.body.ends_with(b"\n") {
            writeln!(out)?;
        }
        Ok(())
    }
}

/// A request body from `-d`: the text itself, or `@file` for a file's bytes (`@-`: stdin).
pub fn body_arg(data: Option<&str>) -> Result<Vec<u8>> {
    match data {
        None => Ok(Vec::new()),
        Some("@-") => {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut v).context("reading stdin")?;
            Ok(v)
        }
        Some(d) => match d.strip_prefix('@') {
            Some(file) => std::fs::read(file).with_context(|| format!("-d @{file}: cannot read")),
            None => Ok(d.as_bytes().to_vec()),
        },
    }
}

/// Sends `call` with the connection's headers and signature.
pub fn send(conn: &Connection, mut call: Call) -> Result<Answer> {
    for h in &conn.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| anyhow!("-H '{h}': expected 'Name: value'"))?;
        call.headers
            .push((k.trim().to_string(), v.trim().to_string()));
    }
    let url: reqwest::Url = call
        .url
        .parse()
        .map_err(|e| anyhow!("URL '{}' is not valid: {e}", call.url))?;
    if let Some((key_id, secret_env)) = &conn.sign {
        let secret = std::env::var(secret_env)
            .map_err(|_| anyhow!("--secret-env: environment variable '{secret_env}' is not set"))?;
        call.headers.extend(crate::auth::signature::sign_acs3(
            key_id,
            &secret,
            &call.method.to_ascii_uppercase(),
            url.path(),
            url.query().unwrap_or(""),
            chrono::Utc::now(),
        ));
    }
    let mut builder = reqwest::Client::builder();
    if let Some(ca) = &conn.cacert {
        let pem =
            std::fs::read(ca).with_context(|| format!("--cacert {}: cannot read", ca.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .with_context(|| format!("--cacert {}: not a PEM certificate", ca.display()))?;
        builder = builder.add_root_certificate(cert);
    }
    let client = builder.build()?;
    let method = reqwest::Method::from_bytes(call.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| anyhow!("-X '{}' is not a method", call.method))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut req = client.request(method, url.clone()).body(call.body);
        for (k, v) in &call.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| anyhow!("cannot reach {url}: {}", error_chain(&e)))?;
        let status = resp.status().as_u16();
        let version = format!("{:?}", resp.version());
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = resp.bytes().await?.to_vec();
        Ok(Answer {
            status,
            version,
            headers,
            body,
        })
    })
}

/// An error with its causes, `outer: inner: ...` (a TLS or connect failure says why).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
}

/// `wasmgate invoke`'s options.
#[derive(Debug, Clone, Default)]
pub struct Invoke {
    pub method: Option<String>,
    pub data: Option<String>,
    pub asynchronous: bool,
    pub task_id: Option<String>,
    pub callback: Option<String>,
}

/// Builds the request `wasmgate invoke` sends.
pub fn invoke_call(url: &str, o: &Invoke) -> Result<Call> {
    let body = body_arg(o.data.as_deref())?;
    let method = o.method.clone().unwrap_or_else(|| {
        if o.data.is_some() || o.asynchronous {
            "POST".into()
        } else {
            "GET".into()
        }
    });
    let mut headers = Vec::new();
    if o.asynchronous {
        headers.push(("X-Fc-Invocation-Type".into(), "Async".into()));
    }
    if let Some(id) = &o.task_id {
        if !o.asynchronous {
            bail!("--task-id needs --async");
        }
        headers.push(("X-Fc-Async-Task-Id".into(), id.clone()));
    }
    if let Some(cb) = &o.callback {
        if !o.asynchronous {
            bail!("--callback needs --async");
        }
        headers.push(("X-Callback-Url".into(), cb.clone()));
    }
    Ok(Call {
        method,
        url: url.to_string(),
        headers,
        body,
    })
}

/// `wasmgate event`'s options.
#[derive(Debug, Clone, Default)]
pub struct Publish {
    pub data: Option<String>,
    pub synchronous: bool,
    pub delay: Option<f64>,
    pub at: Option<String>,
    pub id: Option<String>,
}

/// Builds the event API request `wasmgate event` sends (SPEC section 8.3).
pub fn event_call(url: &str, event_type: &str, o: &Publish) -> Result<Call> {
    let mut event = serde_json::Map::new();
    event.insert("type".into(), event_type.into());
    if let Some(d) = &o.data {
        let text = String::from_utf8(body_arg(Some(d))?).context("--data is not UTF-8")?;
        let data: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| anyhow!("--data is not JSON: {e}"))?;
        event.insert("data".into(), data);
    }
    if o.synchronous {
        event.insert("isSynchronous".into(), true.into());
    }
    if let Some(d) = o.delay {
        event.insert("delay".into(), d.into());
    }
    if let Some(at) = &o.at {
        let t = chrono::DateTime::parse_from_rfc3339(at)
            .map_err(|e| anyhow!("--at '{at}' is not an RFC 3339 time: {e}"))?;
        event.insert("timestamp".into(), t.timestamp_millis().into());
    }
    if let Some(id) = &o.id {
        event.insert("id".into(), id.clone().into());
    }
    Ok(Call {
        method: "POST".into(),
        url: url.to_string(),
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: serde_json::Value::Object(event).to_string().into_bytes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invoke_builds_async_requests() {
        let c = invoke_call(
            "https://h/x",
            &Invoke {
                asynchronous: true,
                task_id: Some("job_1".into()),
                data: Some("hi".into()),
                ..Invoke::default()
            },
        )
        .unwrap();
        assert_eq!(c.method, "POST");
        assert_eq!(c.body, b"hi");
        assert!(
            c.headers
                .contains(&("X-Fc-Async-Task-Id".into(), "job_1".into()))
        );
        assert!(
            invoke_call(
                "https://h/x",
                &Invoke {
                    task_id: Some("a".into()),
                    ..Invoke::default()
                }
            )
            .is_err()
        );
    }

    #[test]
    fn event_builds_the_spec_body() {
        let c = event_call(
            "https://h/e",
            "order.created",
            &Publish {
                data: Some(r#"{"n":1}"#.into()),
                delay: Some(5.0),
                at: Some("2026-11-24T12:00:00Z".into()),
                id: Some("o-1".into()),
                ..Publish::default()
            },
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&c.body).unwrap();
        assert_eq!(v["type"], "order.created");
        assert_eq!(v["data"]["n"], 1);
        assert_eq!(v["delay"], 5.0);
        assert_eq!(v["timestamp"], 1_795_521_600_000i64);
        assert_eq!(v["id"], "o-1");
        assert!(
            event_call(
                "u",
                "t",
                &Publish {
                    data: Some("{".into()),
                    ..Publish::default()
                }
            )
            .is_err()
        );
    }
}
