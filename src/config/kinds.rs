//! What a trigger is beyond the HTTP door (SPEC section 8): its kind and the settings of
//! each kind, validated once at load.
//!
//! - [`Kind::Http`] and [`Kind::Event`] are routed by host and path; an HTTP trigger may
//!   expose many functions through a [`RouteTemplate`].
//! - [`Kind::Cron`], [`Kind::Mqtt`] and [`Kind::Nats`] are not routed: a supervised source
//!   turns ticks and messages into durable invocations.

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{Result, anyhow, bail};

/// A trigger's kind and the settings that only that kind has.
#[derive(Debug, Clone)]
pub enum Kind {
    Http,
    Event,
    Cron(CronConfig),
    Mqtt(BrokerConfig),
    Nats(BrokerConfig),
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Http => "http",
            Kind::Event => "event",
            Kind::Cron(_) => "cron",
            Kind::Mqtt(_) => "mqtt",
            Kind::Nats(_) => "nats",
        }
    }

    /// Whether requests reach this trigger through a listener (host and path routing).
    pub fn is_routed(&self) -> bool {
        matches!(self, Kind::Http | Kind::Event)
    }

    /// The broker settings of an MQTT or NATS trigger.
    pub fn broker(&self) -> Option<&BrokerConfig> {
        match self {
            Kind::Mqtt(b) | Kind::Nats(b) => Some(b),
            _ => None,
        }
    }
}

/// `kind = "cron"`.
#[derive(Debug, Clone)]
pub struct CronConfig {
    /// The expression as written (shown by `check` and in errors).
    pub schedule: String,
    pub cron: croner::Cron,
    pub timezone: chrono_tz::Tz,
    /// The request body of every tick (POST `/`).
    pub payload: Option<String>,
    /// At start, run the last tick missed while the node was down.
    pub catch_up: bool,
}

/// Parses a cron expression: 5 fields, 6 with seconds first, or a descriptor. The error
/// quotes the expression.
pub fn parse_schedule(expr: &str) -> Result<croner::Cron> {
    let trimmed = expr.trim();
    let pattern = if trimmed.eq_ignore_ascii_case("@midnight") {
        "@daily"
    } else {
        trimmed
    };
    if pattern.starts_with('@') {
        const DESCRIPTORS: [&str; 6] = [
            "@yearly",
            "@annually",
            "@monthly",
            "@weekly",
            "@daily",
            "@hourly",
        ];
        if !DESCRIPTORS.iter().any(|d| d.eq_ignore_ascii_case(pattern)) {
            bail!(
                "schedule '{expr}': unknown descriptor (use @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly)"
            );
        }
    } else {
        let fields = pattern.split_whitespace().count();
        if fields != 5 && fields != 6 {
            bail!(
                "schedule '{expr}': has {fields} fields; use 5 (minute hour day-of-month month day-of-week) or 6 (seconds first)"
            );
        }
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .year(croner::parser::Year::Disallowed)
        .build()
        .parse(pattern)
        .map_err(|e| anyhow!("schedule '{expr}': {e}"))
}

/// Whether an MQTT or NATS connection uses TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Plain,
    Tls,
}

/// `kind = "mqtt"` or `kind = "nats"`.
#[derive(Clone)]
pub struct BrokerConfig {
    /// The URL as written (`mqtt://`, `mqtts://`, `nats://`, `tls://`).
    pub url: String,
    pub host: String,
    pub port: u16,
    pub transport: Transport,
    /// Trust for the broker's certificate (else the public web roots).
    pub ca_file: Option<PathBuf>,
    /// MQTT: the stable client id of the persistent session.
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// MQTT: 0 or 1.
    pub qos: u8,
    /// MQTT topic filters or NATS subjects.
    pub topics: Vec<String>,
    /// NATS: the queue group that shares messages between nodes.
    pub queue_group: String,
    /// NATS: replies go only to subjects starting with this (ends with `.`).
    pub reply_prefix: String,
    /// The `Content-Type` of the request a message becomes.
    pub content_type: String,
}

impl std::fmt::Debug for BrokerConfig {
    // The password never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerConfig")
            .field("url", &self.url)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("transport", &self.transport)
            .field("ca_file", &self.ca_file)
            .field("qos", &self.qos)
            .field("topics", &self.topics)
            .field("queue_group", &self.queue_group)
            .field("reply_prefix", &self.reply_prefix)
            .field("content_type", &self.content_type)
            .finish()
    }
}

impl BrokerConfig {
    /// A fingerprint of everything a connection depends on: a reload that changes none of
    /// it keeps the connection.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            &self.url,
            &self.ca_file,
            &self.client_id,
            &self.username,
            &self.password,
            self.qos,
            &self.topics,
            &self.queue_group,
            &self.reply_prefix,
            &self.content_type,
        )
            .hash(&mut h);
        h.finish()
    }
}

/// Splits a broker URL into transport, host and port.
pub fn parse_broker_url(kind: &str, url: &str) -> Result<(Transport, String, u16)> {
    let (plain, tls, plain_port, tls_port): (&[&str], &[&str], u16, u16) = match kind {
        "mqtt" => (&["mqtt", "tcp"], &["mqtts", "ssl"], 1883, 8883),
        _ => (&["nats"], &["tls"], 4222, 4222),
    };
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| anyhow!("broker '{url}': not a URL like {}://host:port", plain[0]))?;
    let transport = if plain.contains(&scheme) {
        Transport::Plain
    } else if tls.contains(&scheme) {
        Transport::Tls
    } else {
        bail!(
            "broker '{url}': the scheme must be {} (or {} for TLS)",
            plain[0],
            tls[0]
        );
    };
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') || authority.contains('@') {
        bail!("broker '{url}': give host:port only (credentials go in username/password)");
    }
    let default_port = match transport {
        Transport::Plain => plain_port,
        Transport::Tls => tls_port,
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
            let port = p
                .parse::<u16>()
                .map_err(|_| anyhow!("broker '{url}': '{p}' is not a port"))?;
            (h.trim_start_matches('[').trim_end_matches(']'), port)
        }
        _ => (authority, default_port),
    };
    if host.is_empty() {
        bail!("broker '{url}': the host is missing");
    }
    Ok((transport, host.to_string(), port))
}

/// Checks an MQTT topic filter: `+` is a whole level, `#` the whole last level.
pub fn check_mqtt_filter(filter: &str) -> Result<()> {
    if filter.is_empty() {
        bail!("topic filter is empty");
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            bail!("topic filter '{filter}': '#' must be the whole last level");
        }
        if level.contains('+') && *level != "+" {
            bail!("topic filter '{filter}': '+' must be a whole level");
        }
    }
    Ok(())
}

/// Checks a NATS subject: `*` is a whole token, `>` the whole last token.
pub fn check_nats_subject(subject: &str) -> Result<()> {
    if subject.is_empty() || subject.contains(char::is_whitespace) {
        bail!("subject '{subject}' is empty or has spaces");
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, t) in tokens.iter().enumerate() {
        if t.is_empty() {
            bail!("subject '{subject}': empty token");
        }
        if t.contains('>') && (*t != ">" || i + 1 != tokens.len()) {
            bail!("subject '{subject}': '>' must be the whole last token");
        }
        if t.contains('*') && *t != "*" {
            bail!("subject '{subject}': '*' must be a whole token");
        }
    }
    Ok(())
}

/// Whether a NATS subject is one the gateway keeps for itself: anything starting with `$`
/// (the JetStream API, KV buckets such as `$KV.wasmgate_tasks`, object stores, the system
/// account) and the `wasmgate` namespace of the cluster's task stream. Nothing a message
/// asks for is ever published there.
pub fn reserved_subject(subject: &str) -> bool {
    subject.starts_with('$') || subject.split('.').next() == Some("wasmgate")
}

/// A NATS trigger's `reply_prefix`: whole tokens ending in `.`, no wildcards or spaces,
/// and outside the subjects [`reserved_subject`] keeps for the gateway.
pub fn check_reply_prefix(prefix: &str) -> Result<()> {
    let Some(tokens) = prefix.strip_suffix('.') else {
        bail!("'{prefix}' must end with `.` (a prefix of whole tokens, like _INBOX.)");
    };
    if prefix.contains(char::is_whitespace) {
        bail!("'{prefix}' has a space");
    }
    if tokens.split('.').any(|t| t.is_empty()) {
        bail!("'{prefix}': empty token");
    }
    if tokens
        .split('.')
        .any(|t| t.contains('*') || t.contains('>'))
    {
        bail!("'{prefix}': a wildcard is not a prefix");
    }
    if reserved_subject(prefix) {
        bail!(
            "'{prefix}' names the gateway's own subjects (those starting with `$`, and wasmgate.)"
        );
    }
    Ok(())
}

/// How a message's topic is compared with the functions' `topics` (topic routing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicMatch {
    /// MQTT wildcards (`+`, `#`); for NATS triggers the NATS ones (`*`, `>`).
    Wildcard,
    Exact,
    ExactIgnoreCase,
}

impl FromStr for TopicMatch {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "mqtt" => Ok(TopicMatch::Wildcard),
            "exact" => Ok(TopicMatch::Exact),
            "exact-ignore-case" => Ok(TopicMatch::ExactIgnoreCase),
            other => Err(format!(
                "'{other}' is not one of mqtt, exact, exact-ignore-case"
            )),
        }
    }
}

/// One segment of a route template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Function,
    Namespace,
}

/// A path with `{function}` (and optionally `{namespace}`) segments (SPEC section 8.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTemplate {
    /// As written.
    pub text: String,
    /// The literal segments before the first variable, as a route prefix (`/` if none).
    pub prefix: String,
    /// The segments after the prefix.
    pub rest: Vec<Segment>,
}

impl RouteTemplate {
    /// Parses a template; `None` when `path` has no variable (a plain prefix).
    pub fn parse(path: &str) -> Result<Option<RouteTemplate>> {
        if !path.contains('{') && !path.contains('}') {
            return Ok(None);
        }
        let mut prefix = String::new();
        let mut rest = Vec::new();
        let (mut function, mut namespace) = (0, 0);
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            let s = match seg {
                "{function}" => {
                    function += 1;
                    Segment::Function
                }
                "{namespace}" => {
                    namespace += 1;
                    Segment::Namespace
                }
                s if s.contains('{') || s.contains('}') => bail!(
                    "path '{path}': a variable must be a whole segment, {{function}} or {{namespace}}"
                ),
                s => Segment::Literal(s.to_string()),
            };
            match s {
                Segment::Literal(l) if rest.is_empty() => {
                    prefix.push('/');
                    prefix.push_str(&l);
                }
                s => rest.push(s),
            }
        }
        if function != 1 || namespace > 1 {
            bail!(
                "path '{path}': a template has exactly one {{function}} and at most one {{namespace}}"
            );
        }
        if prefix.is_empty() {
            prefix.push('/');
        }
        Ok(Some(RouteTemplate {
            text: path.to_string(),
            prefix,
            rest,
        }))
    }

    /// Matches a normalised path: the function id it names (`name`, or `name.namespace`
    /// outside the default namespace) and the rest of the path (at any depth, `/` when
    /// there is none).
    pub fn matches(&self, path: &str) -> Option<(String, String)> {
        let after = if self.prefix == "/" {
            path
        } else {
            let r = path.strip_prefix(&self.prefix)?;
            if !r.is_empty() && !r.starts_with('/') {
                return None;
            }
            r
        };
        let mut segments = after.split('/').filter(|s| !s.is_empty());
        let (mut function, mut namespace) = (None, None);
        let mut consumed = 0usize;
        for s in &self.rest {
            let seg = segments.next()?;
            consumed += 1;
            match s {
                Segment::Literal(l) if l == seg => {}
                Segment::Literal(_) => return None,
                Segment::Function => function = Some(seg),
                Segment::Namespace => namespace = Some(seg),
            }
        }
        // The rest: everything after the consumed segments, keeping a trailing slash.
        let mut idx = 0usize;
        let bytes = after.as_bytes();
        let mut seen = 0usize;
        while seen < consumed && idx < bytes.len() {
            while idx < bytes.len() && bytes[idx] == b'/' {
                idx += 1;
            }
            while idx < bytes.len() && bytes[idx] != b'/' {
                idx += 1;
            }
            seen += 1;
        }
        let rest = &after[idx..];
        let rest = if rest.is_empty() { "/" } else { rest };
        let function = function?;
        let id = match namespace {
            None | Some("default") => function.to_string(),
            Some(ns) => format!("{function}.{ns}"),
        };
        Some((id, rest.to_string()))
    }
}

/// Which functions a template trigger exposes (`functions = [...]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exposed {
    All,
    Only(Vec<String>),
}

impl Exposed {
    pub fn allows(&self, id: &str) -> bool {
        match self {
            Exposed::All => true,
            Exposed::Only(list) => list.iter().any(|f| f == id),
        }
    }
}

/// Routes by function name: the sync template, the async one, and what they expose.
#[derive(Debug, Clone)]
pub struct NameRoutes {
    pub path: RouteTemplate,
    pub async_path: Option<RouteTemplate>,
    pub functions: Exposed,
}

/// A trigger's `cors` table, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsConfig {
    /// Lowercase origins (`scheme://host[:port]`); empty with `any_origin`.
    pub allow_origins: Vec<String>,
    pub any_origin: bool,
    pub allow_methods: Vec<http::Method>,
    /// Lowercase header names; `any_header` allows every requested header.
    pub allow_headers: Vec<String>,
    pub any_header: bool,
    pub expose_headers: Vec<String>,
    pub allow_credentials: bool,
    pub max_age_s: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_and_descriptors() {
        for ok in [
            "*/10 * * * *",
            "*/2 * * * * *",
            "@yearly",
            "@annually",
            "@monthly",
            "@weekly",
            "@daily",
            "@midnight",
            "@hourly",
            "0 9 * * MON-FRI",
        ] {
            parse_schedule(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "* * *",
            "61 * * * *",
            "@sometimes",
            "0 0 0 1 1 * 2030",
            "x y z a b",
        ] {
            let e = parse_schedule(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("'{bad}'")), "{bad}: {e}");
        }
    }

    #[test]
    fn broker_urls() {
        assert_eq!(
            parse_broker_url("mqtt", "mqtt://127.0.0.1:1884").unwrap(),
            (Transport::Plain, "127.0.0.1".into(), 1884)
        );
        assert_eq!(
            parse_broker_url("mqtt", "mqtts://broker.example").unwrap(),
            (Transport::Tls, "broker.example".into(), 8883)
        );
        assert_eq!(
            parse_broker_url("nats", "nats://[::1]:4223").unwrap(),
            (Transport::Plain, "::1".into(), 4223)
        );
        assert!(parse_broker_url("mqtt", "http://x:1").is_err());
        assert!(parse_broker_url("mqtt", "mqtt://u:p@x:1").is_err());
    }

    #[test]
    fn filters() {
        check_mqtt_filter("sensors/+/temperature").unwrap();
        check_mqtt_filter("alerts/#").unwrap();
        assert!(check_mqtt_filter("a/b#").is_err());
        assert!(check_mqtt_filter("a/#/b").is_err());
        check_nats_subject("orders.*.created").unwrap();
        check_nats_subject("orders.>").unwrap();
        assert!(check_nats_subject("orders.>.x").is_err());
        assert!(check_nats_subject("a..b").is_err());
    }

    #[test]
    fn templates_match_any_depth() {
        let t = RouteTemplate::parse("/function/{function}")
            .unwrap()
            .unwrap();
        assert_eq!(t.prefix, "/function");
        assert_eq!(
            t.matches("/function/hello"),
            Some(("hello".into(), "/".into()))
        );
        assert_eq!(
            t.matches("/function/hello/a/b/"),
            Some(("hello".into(), "/a/b/".into()))
        );
        assert_eq!(t.matches("/function"), None);
        assert_eq!(t.matches("/functions/x"), None);
        let s = RouteTemplate::parse("/spaces/{namespace}/functions/{function}/invoke")
            .unwrap()
            .unwrap();
        assert_eq!(s.prefix, "/spaces");
        assert_eq!(
            s.matches("/spaces/shop/functions/mailer/invoke/x"),
            Some(("mailer.shop".into(), "/x".into()))
        );
        assert_eq!(
            s.matches("/spaces/default/functions/mailer/invoke"),
            Some(("mailer".into(), "/".into()))
        );
        assert_eq!(
            s.matches("/spaces/shop/functions/mailer/async-invoke"),
            None
        );
        assert!(RouteTemplate::parse("/x/{fn}").is_err());
        assert!(RouteTemplate::parse("/x/{namespace}").is_err());
        assert!(RouteTemplate::parse("/plain").unwrap().is_none());
    }
}
