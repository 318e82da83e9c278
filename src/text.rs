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

/// Each byte's two lowercase hex digits.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 15]];
        i += 1;
    }
    t
};

/// `bytes` in lowercase hex into `out` (twice as long).
pub fn hex_into(out: &mut [u8], bytes: &[u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
    }
}
