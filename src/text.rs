//! Text for the request path written without `core::fmt`: a request formats a few numbers
//! and addresses (the access line, `X-Forwarded-For`), and the formatter's machinery cost
//! several times what writing them directly does (about 3k instructions a request).

use std::fmt::Write as _;

/// Appends an integer in decimal (no formatter: `write!` costs several times as much).
pub fn push_int(out: &mut String, v: impl itoa::Integer) {
    out.push_str(itoa::Buffer::new().format(v));
}

/// Appends an IP address as `Display` writes it; an IPv4 one without the formatter.
pub fn push_ip(out: &mut String, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_int(out, octet);
            }
        }
        std::net::IpAddr::V6(_) => {
            let _ = write!(out, "{ip}");
        }
    }
}
