//! Address rules shared by everything that connects out on someone else's say-so (callback
//! URLs, a guest's outbound wasi:http): what counts as the inside, and the gateway's own
//! private listeners (admin, internal), which nothing sent out may reach.

use std::net::{IpAddr, SocketAddr};
use std::sync::RwLock;

/// The admin and internal listeners of this process, as bound.
static PRIVATE_LISTENERS: RwLock<Vec<SocketAddr>> = RwLock::new(Vec::new());

/// Records a private (admin or internal) listener's bound address.
pub fn note_private_listener(addr: SocketAddr) {
    if let Ok(mut l) = PRIVATE_LISTENERS.write()
        && !l.contains(&addr)
    {
        l.push(addr);
    }
}

/// Whether connecting to `addr` reaches one of this process's private listeners (one bound
/// to an unspecified address is reached through any of the host's addresses).
pub fn is_private_listener(addr: SocketAddr) -> bool {
    PRIVATE_LISTENERS.read().is_ok_and(|l| {
        l.iter().any(|own| {
            addr.port() == own.port()
                && (addr.ip() == own.ip()
                    || own.ip().is_unspecified()
                    || (addr.ip().is_loopback() && own.ip().is_loopback()))
        })
    })
}

/// A guest's outbound request to `host:port` (a host its `outbound_hosts` lists): never to a
/// private listener of this process; a host **name** only to public addresses (loopback and
/// private addresses are reached only when the address itself is listed). Every address the
/// name resolves to is checked.
pub async fn check_outbound(host: &str, port: u16) -> Result<(), String> {
    let literal = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok();
    let addrs: Vec<SocketAddr> = match literal {
        Some(ip) => vec![SocketAddr::new(ip, port)],
        None => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("cannot resolve '{host}': {e}"))?
            .collect(),
    };
    for addr in addrs {
        if is_private_listener(addr) {
            return Err(format!("{addr} is a private listener of the gateway"));
        }
        if literal.is_none() && is_internal(addr.ip()) {
            return Err(format!(
                "'{host}' resolves to the internal address {}; list the address itself to allow it",
                addr.ip()
            ));
        }
    }
    Ok(())
}

/// Whether `ip` is an address of the inside: loopback, private, link-local, unique-local,
/// carrier-grade NAT or unspecified.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_internal(IpAddr::V4(v4)),
            None => {
                let s = v6.segments();
                let embedded = |hi: u16, lo: u16| {
                    let [a, b] = hi.to_be_bytes();
                    let [c, d] = lo.to_be_bytes();
                    is_internal(IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d)))
                };
                v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    // unique-local, link-local, the deprecated site-local
                    || (s[0] & 0xfe00) == 0xfc00
                    || (s[0] & 0xffc0) == 0xfe80
                    || (s[0] & 0xffc0) == 0xfec0
                    // IPv4-compatible ::a.b.c.d (deprecated, still routed by some stacks)
                    || (s[..6] == [0; 6] && embedded(s[6], s[7]))
                    // NAT64 well-known prefix 64:ff9b::/96 and local-use 64:ff9b:1::/48
                    || (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] && embedded(s[6], s[7]))
                    || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1)
                    // 6to4 2002:a.b.c.d::/48
                    || (s[0] == 0x2002 && embedded(s[1], s[2]))
            }
        },
    }
}
