//! Where a task's result may be POSTed (SPEC section 7): the SSRF guard.
//!
//! A client's `X-Callback-Url` must name a host the trigger lists in `callback_hosts`: an
//! entry `host` allows any port, `host:port` that port only. Whatever the list says:
//! - the admin listener is never a callback target (it needs no token on loopback);
//! - a host *name* never reaches loopback, private or link-local addresses; those are
//!   reachable only when the list names them literally (`127.0.0.1`, `[::1]`, `localhost`,
//!   `10.0.0.7`), so DNS cannot be used to point an allowed name at the inside;
//! - the address checked is the address connected to: delivery resolves once, checks, and
//!   pins that address for the connection (no DNS rebinding between check and connect).
//!
//! The operator's own `on_success` / `on_failure` URLs need no listing and may use any
//! name; only the admin rule applies to them.

use std::net::{IpAddr, SocketAddr};

/// A parsed callback URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Lowercase host, without IPv6 brackets.
    pub host: String,
    pub port: u16,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let uri: http::Uri = url.parse().map_err(|_| "not a URL".to_string())?;
        let port = match uri.scheme_str() {
            Some("http") => 80,
            Some("https") => 443,
            _ => return Err("not an http(s) URL".into()),
        };
        let host = uri
            .host()
            .ok_or_else(|| "no host".to_string())?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        Ok(Target {
            port: uri.port_u16().unwrap_or(port),
            host,
        })
    }

    /// The host as an IP literal (`localhost` counts as loopback).
    fn literal(&self) -> Option<Vec<IpAddr>> {
        if self.host == "localhost" {
            return Some(vec![
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
            ]);
        }
        self.host.parse::<IpAddr>().ok().map(|ip| vec![ip])
    }
}

/// A callback URL as logs may show it: no userinfo, query or fragment (webhook URLs carry
/// their secrets there).
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<not a URL>".into();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let path_end = rest[end..].find(['?', '#']).map_or(rest.len(), |i| end + i);
    let path = &rest[end..path_end];
    let hidden = if path_end < rest.len() { "?..." } else { "" };
    format!("{scheme}://{host}{path}{hidden}")
}

pub use crate::netguard::is_internal;

/// Whether `addr` reaches the admin listener at `admin`.
fn is_admin(addr: SocketAddr, admin: Option<SocketAddr>) -> bool {
    let Some(admin) = admin else { return false };
    addr.port() == admin.port()
        && (addr.ip() == admin.ip()
            || admin.ip().is_unspecified()
            || (addr.ip().is_loopback() && admin.ip().is_loopback()))
}

/// Submission: may a client name `url` as its callback, given the trigger's list?
pub fn check_client_url(
    url: &str,
    hosts: &[String],
    admin: Option<SocketAddr>,
) -> Result<(), String> {
    let target = Target::parse(url)?;
    let with_port = |h: &str| format!("{h}:{}", target.port);
    let bracketed = format!("[{}]", target.host);
    let listed = hosts.iter().any(|entry| {
        let entry = entry.to_ascii_lowercase();
        entry == target.host
            || entry == bracketed
            || entry == with_port(&target.host)
            || entry == with_port(&bracketed)
    });
    if !listed {
        return Err(format!(
            "host '{}' port {} is not in the trigger's callback_hosts",
            target.host, target.port
        ));
    }
    if let Some(ips) = target.literal()
        && ips
            .iter()
            .any(|ip| is_admin(SocketAddr::new(*ip, target.port), admin))
    {
        return Err("the admin listener is never a callback target".into());
    }
    Ok(())
}

/// Delivery: the one address to connect to for `url`, checked. A client-supplied URL whose
/// host is a name may only reach public addresses; no URL may reach the admin listener.
pub async fn resolve(
    url: &str,
    client_supplied: bool,
    admin: Option<SocketAddr>,
) -> Result<(Target, SocketAddr), String> {
    let target = Target::parse(url)?;
    let (candidates, named): (Vec<SocketAddr>, bool) = match target.literal() {
        Some(ips) => (
            ips.into_iter()
                .map(|ip| SocketAddr::new(ip, target.port))
                .collect::<Vec<_>>(),
            false,
        ),
        None => (
            tokio::net::lookup_host((target.host.as_str(), target.port))
                .await
                .map_err(|e| format!("cannot resolve '{}': {e}", target.host))?
                .collect(),
            true,
        ),
    };
    pick(&target, candidates, named && client_supplied, admin).map(|a| (target.clone(), a))
}

/// The first candidate address that may be reached. `names_stay_outside`: the host was a
/// name in a client's URL, so internal addresses are refused.
fn pick(
    target: &Target,
    candidates: Vec<SocketAddr>,
    names_stay_outside: bool,
    admin: Option<SocketAddr>,
) -> Result<SocketAddr, String> {
    let mut refused = None;
    for addr in candidates {
        if is_admin(addr, admin) {
            refused = Some(format!("{addr} is the admin listener"));
        } else if names_stay_outside && is_internal(addr.ip()) {
            refused = Some(format!(
                "'{}' resolves to the internal address {}; list the address itself in callback_hosts to allow it",
                target.host,
                addr.ip()
            ));
        } else {
            return Ok(addr);
        }
    }
    Err(refused.unwrap_or_else(|| format!("'{}' has no address", target.host)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(h: &[&str]) -> Vec<String> {
        h.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn entries_are_a_host_or_a_host_and_port() {
        let list = hosts(&["hooks.example", "127.0.0.1:8080", "[::1]:9"]);
        assert!(check_client_url("https://hooks.example/x", &list, None).is_ok());
        assert!(check_client_url("http://HOOKS.example:1234/x", &list, None).is_ok());
        assert!(check_client_url("http://127.0.0.1:8080/x", &list, None).is_ok());
        assert!(check_client_url("http://127.0.0.1:8081/x", &list, None).is_err());
        assert!(check_client_url("http://127.0.0.1/x", &list, None).is_err());
        assert!(check_client_url("http://[::1]:9/x", &list, None).is_ok());
        assert!(check_client_url("http://evil.example/x", &list, None).is_err());
        assert!(check_client_url("ftp://hooks.example/x", &list, None).is_err());
    }

    #[test]
    fn the_admin_listener_is_never_a_target() {
        let admin: SocketAddr = "127.0.0.1:9090".parse().unwrap();
        let list = hosts(&["127.0.0.1", "localhost"]);
        assert!(check_client_url("http://127.0.0.1:9090/-/reload", &list, Some(admin)).is_err());
        assert!(check_client_url("http://localhost:9090/-/reload", &list, Some(admin)).is_err());
        assert!(check_client_url("http://127.0.0.1:9091/", &list, Some(admin)).is_ok());
        let any: SocketAddr = "0.0.0.0:9090".parse().unwrap();
        assert!(check_client_url("http://127.0.0.1:9090/", &list, Some(any)).is_err());
    }

    #[tokio::test]
    async fn names_never_reach_the_inside_but_literals_do() {
        // Literals (and `localhost`) are used as written.
        let (_, addr) = resolve("http://127.0.0.1:7/", true, None).await.unwrap();
        assert_eq!(addr, "127.0.0.1:7".parse().unwrap());
        let (_, addr) = resolve("http://localhost:7/", true, None).await.unwrap();
        assert!(addr.ip().is_loopback());
        // A name that resolves inside is refused for a client's URL; among several
        // addresses the first acceptable one is what gets connected to.
        let t = Target::parse("http://hooks.example:8080/").unwrap();
        let inside: SocketAddr = "10.0.0.5:8080".parse().unwrap();
        let outside: SocketAddr = "93.184.216.34:8080".parse().unwrap();
        assert!(
            pick(&t, vec![inside], true, None)
                .unwrap_err()
                .contains("internal")
        );
        assert_eq!(
            pick(&t, vec![inside, outside], true, None).unwrap(),
            outside
        );
        // The operator's own URLs may use names that resolve inside.
        assert_eq!(pick(&t, vec![inside], false, None).unwrap(), inside);
        let admin: SocketAddr = "127.0.0.1:7".parse().unwrap();
        assert!(
            resolve("http://127.0.0.1:7/", false, Some(admin))
                .await
                .is_err()
        );
        assert!(is_internal("10.1.2.3".parse().unwrap()));
        assert!(is_internal("100.64.0.1".parse().unwrap()));
        assert!(is_internal("fd00::1".parse().unwrap()));
        assert!(is_internal("::ffff:192.168.1.1".parse().unwrap()));
        assert!(!is_internal("93.184.216.34".parse().unwrap()));
    }

    #[test]
    fn logged_urls_keep_no_secret() {
        assert_eq!(
            redacted("https://user:pw@hooks.example:8443/t/abc?token=s3cret#f"),
            "https://hooks.example:8443/t/abc?..."
        );
        assert_eq!(redacted("http://h/p"), "http://h/p");
        assert_eq!(redacted("http://h?k=v"), "http://h?...");
        assert_eq!(redacted("nonsense"), "<not a URL>");
    }

    #[test]
    fn v4_inside_v6_is_inside() {
        for inside in [
            "64:ff9b::7f00:1",  // NAT64 of 127.0.0.1
            "64:ff9b::a00:1",   // NAT64 of 10.0.0.1
            "64:ff9b:1::1",     // local-use NAT64
            "2002:7f00:1::1",   // 6to4 of 127.0.0.1
            "2002:c0a8:101::1", // 6to4 of 192.168.1.1
            "::127.0.0.1",      // IPv4-compatible
            "::10.0.0.1",
            "fec0::1", // site-local
            "ff02::1", // multicast
            "0.1.2.3",
            "224.0.0.1",
        ] {
            assert!(is_internal(inside.parse().unwrap()), "{inside}");
        }
        for outside in ["64:ff9b::5db8:d822", "2002:5db8:d822::1", "2606:4700::1111"] {
            assert!(!is_internal(outside.parse().unwrap()), "{outside}");
        }
    }
}
