//! Host + longest-prefix routing (SPEC section 2, "Routing").
//!
//! The most specific match wins: a trigger with a matching host beats one without; a longer
//! path prefix beats a shorter one; a prefix matches only at a `/` boundary. Conflicts (same
//! host and path) are rejected when the config is validated, so lookups are unambiguous.

use std::collections::HashMap;

/// A routing table from (host, path prefix) to a value (the trigger index).
#[derive(Debug, Default)]
pub struct Router<T> {
    /// Routes per exact host, longest prefix first.
    by_host: HashMap<String, Vec<(String, T)>>,
    /// Routes without a host, longest prefix first.
    any_host: Vec<(String, T)>,
}

/// The result of a lookup: the value and the path the function sees.
#[derive(Debug, PartialEq, Eq)]
pub struct Match<'a, T> {
    pub value: &'a T,
    /// The matched prefix (the trigger's `path`).
    pub prefix: &'a str,
}

impl<T> Router<T> {
    pub fn new() -> Self {
        Router {
            by_host: HashMap::new(),
            any_host: Vec::new(),
        }
    }

    /// Adds a route. `prefix` starts with `/` and has no trailing `/` (except `/` itself).
    pub fn insert(&mut self, host: Option<&str>, prefix: &str, value: T) {
        let list = match host {
            Some(h) => self.by_host.entry(h.to_ascii_lowercase()).or_default(),
            None => &mut self.any_host,
        };
        list.push((prefix.to_string(), value));
        list.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
    }

    /// Finds the most specific route for a request's host (port ignored) and path.
    pub fn lookup<'a>(&'a self, host: Option<&str>, path: &str) -> Option<Match<'a, T>> {
        // Without host rules (the common case) the host is not looked at.
        if !self.by_host.is_empty()
            && let Some(h) = host.map(normalize_host)
            && let Some(list) = self.by_host.get(h.as_str())
            && let Some(m) = Self::find(list, path)
        {
            return Some(m);
        }
        Self::find(&self.any_host, path)
    }

    fn find<'a>(list: &'a [(String, T)], path: &str) -> Option<Match<'a, T>> {
        list.iter()
            .find(|(prefix, _)| prefix_matches(prefix, path))
            .map(|(prefix, value)| Match { value, prefix })
    }
}

/// A request path normalised for routing and path rules (SPEC section 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalPath {
    /// Unreserved percent-escapes decoded, `.` and `..` resolved, `//` collapsed.
    pub path: String,
    /// The fewest segments left right after a `..` removed one (`usize::MAX` when none
    /// did): a path may not climb above the prefix of the trigger it routes to.
    pub lowest: usize,
}

impl NormalPath {
    /// Whether resolving `..` went above `prefix` (a trigger's path).
    pub fn climbs_above(&self, prefix: &str) -> bool {
        let depth = prefix.split('/').filter(|s| !s.is_empty()).count();
        self.lowest < depth
    }
}

/// Normalises a request path: percent-escapes of unreserved characters (RFC 3986 section
/// 2.3) are decoded, other escapes kept (hex upper-cased), `.` and `..` segments resolved,
/// empty segments (`//`) dropped; a trailing `/` is kept. An encoded `/` or `\` in a
/// segment, or a `..` above the root, is an error (400).
pub fn normalize_path(raw: &str) -> Result<NormalPath, String> {
    let mut stack: Vec<String> = Vec::new();
    let mut lowest = usize::MAX;
    let segments: Vec<&str> = raw.split('/').collect();
    let trailing = raw.len() > 1 && raw.ends_with('/');
    for seg in segments {
        let seg = decode_unreserved(seg)?;
        match seg.as_str() {
            "" | "." => {}
            ".." => {
                if stack.pop().is_none() {
                    return Err(format!("path '{raw}' climbs above '/'"));
                }
                lowest = lowest.min(stack.len());
            }
            _ => stack.push(seg),
        }
    }
    let mut path = String::with_capacity(raw.len());
    for seg in &stack {
        path.push('/');
        path.push_str(seg);
    }
    if path.is_empty() || trailing {
        path.push('/');
    }
    Ok(NormalPath { path, lowest })
}

fn decode_unreserved(seg: &str) -> Result<String, String> {
    if !seg.contains('%') {
        return Ok(seg.to_string());
    }
    let b = seg.as_bytes();
    let mut out = String::with_capacity(seg.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = seg
                .get(i + 1..i + 3)
                .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
                .ok_or_else(|| format!("malformed percent-escape in '{seg}'"))?;
            let byte = u8::from_str_radix(hex, 16).map_err(|e| e.to_string())?;
            match byte {
                b'/' | b'\\' => {
                    return Err(format!("an encoded '/' or '\\' in path segment '{seg}'"));
                }
                c if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') => {
                    out.push(c as char)
                }
                _ => {
                    out.push('%');
                    out.push_str(&hex.to_ascii_uppercase());
                }
            }
            i += 3;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    Ok(out)
}

/// Lowercases a `Host` value and removes the port (IPv6 literals keep their brackets).
pub fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let without_port = if host.starts_with('[') {
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    without_port.to_ascii_lowercase()
}

/// Whether `prefix` matches `path` at a `/` boundary.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The path and query the function sees: the prefix removed, `/` when nothing is left.
/// `/hello/a/b?x=1` under `/hello` becomes `/a/b?x=1`; `/hello?x=1` becomes `/?x=1`.
pub fn strip_prefix(prefix: &str, path: &str, query: Option<&str>) -> String {
    let rest = if prefix == "/" {
        path
    } else {
        path.strip_prefix(prefix).unwrap_or(path)
    };
    let rest = if rest.is_empty() { "/" } else { rest };
    match query {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router<&'static str> {
        let mut r = Router::new();
        r.insert(None, "/", "root");
        r.insert(None, "/hello", "hello");
        r.insert(None, "/hello/deep", "deep");
        r.insert(Some("api.example.com"), "/hello", "api-hello");
        r
    }

    #[test]
    fn longest_prefix_wins() {
        let r = router();
        assert_eq!(*r.lookup(None, "/hello/deep/x").unwrap().value, "deep");
        assert_eq!(*r.lookup(None, "/hello/deeper").unwrap().value, "hello");
        assert_eq!(*r.lookup(None, "/hello").unwrap().value, "hello");
        assert_eq!(*r.lookup(None, "/other").unwrap().value, "root");
    }

    #[test]
    fn prefix_matches_only_at_a_boundary() {
        let r = router();
        assert_eq!(*r.lookup(None, "/helloworld").unwrap().value, "root");
        assert!(!prefix_matches("/hello", "/helloworld"));
        assert!(prefix_matches("/hello", "/hello/"));
    }

    #[test]
    fn host_match_beats_no_host_and_port_is_ignored() {
        let r = router();
        let m = r.lookup(Some("API.example.com:8443"), "/hello/x").unwrap();
        assert_eq!(*m.value, "api-hello");
        // A host match beats a longer host-less prefix...
        assert_eq!(
            *r.lookup(Some("api.example.com"), "/hello/deep")
                .unwrap()
                .value,
            "api-hello"
        );
        // ...and a host whose routes do not match the path falls back to host-less ones.
        assert_eq!(
            *r.lookup(Some("api.example.com"), "/x").unwrap().value,
            "root"
        );
        assert_eq!(
            *r.lookup(Some("other.com"), "/hello").unwrap().value,
            "hello"
        );
    }

    #[test]
    fn no_route_is_none() {
        let mut r = Router::new();
        r.insert(None, "/a", 1);
        assert!(r.lookup(None, "/b").is_none());
    }

    #[test]
    fn stripping() {
        assert_eq!(
            strip_prefix("/hello", "/hello/a/b", Some("x=1")),
            "/a/b?x=1"
        );
        assert_eq!(strip_prefix("/hello", "/hello", None), "/");
        assert_eq!(strip_prefix("/hello", "/hello", Some("x=1")), "/?x=1");
        assert_eq!(strip_prefix("/", "/a/b", None), "/a/b");
    }

    #[test]
    fn hosts_normalise() {
        assert_eq!(normalize_host("Example.COM:80"), "example.com");
        assert_eq!(normalize_host("[::1]:8443"), "[::1]");
        assert_eq!(normalize_host("example.com"), "example.com");
    }

    #[test]
    fn paths_normalise() {
        let n = |p: &str| normalize_path(p).map(|n| n.path);
        assert_eq!(n("/t/%61dmin").unwrap(), "/t/admin");
        assert_eq!(n("/t//admin").unwrap(), "/t/admin");
        assert_eq!(n("/t/./admin").unwrap(), "/t/admin");
        assert_eq!(n("/t/x/../admin").unwrap(), "/t/admin");
        assert_eq!(n("/t/%2e%2E/admin").unwrap(), "/admin");
        assert_eq!(n("/a/b/").unwrap(), "/a/b/");
        assert_eq!(n("/").unwrap(), "/");
        assert_eq!(n("").unwrap(), "/");
        assert_eq!(n("/a%20b/%7e").unwrap(), "/a%20b/~");
        assert_eq!(n("/a%3f").unwrap(), "/a%3F");
        assert!(n("/t/a%2Fb").is_err());
        assert!(n("/t/a%5cb").is_err());
        assert!(n("/../etc").is_err());
        assert!(n("/a/%zz").is_err());
        // Climbing: where `..` went, against the trigger's prefix.
        let p = normalize_path("/t/x/../admin").unwrap();
        assert!(!p.climbs_above("/t"));
        let p = normalize_path("/t/../admin").unwrap();
        assert!(p.climbs_above("/admin"));
        assert!(!p.climbs_above("/"));
        assert!(!normalize_path("/t/a").unwrap().climbs_above("/t"));
    }
}
