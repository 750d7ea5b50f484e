//! An address written as `Display` writes it, without the formatter: `Display` costs ~1,300
//! instructions for an IPv4 address, and a request writes its client's address twice (the
//! `X-Forwarded-For` it sends upstream, the access log's line). IPv6 addresses, rare behind an
//! edge and much harder to shorten right, still go through `Display`.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// `ip` as `Display` writes it (`10.0.0.1`, `::1`).
pub fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => push_ipv4(out, v4),
        IpAddr::V6(v6) => write!(out, "{v6}").expect("writing into a Vec"),
    }
}

/// `addr` as `Display` writes it (`10.0.0.1:443`, `[::1]:443`).
pub fn push_socket_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(v4) => {
            push_ipv4(out, *v4.ip());
            out.push(b':');
            push_decimal(out, v4.port().into());
        }
        SocketAddr::V6(v6) => write!(out, "{v6}").expect("writing into a Vec"),
    }
}

fn push_ipv4(out: &mut Vec<u8>, ip: Ipv4Addr) {
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        push_decimal(out, octet.into());
    }
}

fn push_decimal(out: &mut Vec<u8>, mut value: u32) {
    let mut digits = [0u8; 10];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_displayed() {
        for addr in [
            "0.0.0.0:0",
            "10.200.3.45:8080",
            "255.255.255.255:65535",
            "[::1]:443",
            "[2001:db8::8a2e:370:7334]:1",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            let mut out = Vec::new();
            push_socket_addr(&mut out, addr);
            assert_eq!(String::from_utf8(out).unwrap(), addr.to_string());
            let mut out = Vec::new();
            push_ip(&mut out, addr.ip());
            assert_eq!(String::from_utf8(out).unwrap(), addr.ip().to_string());
        }
    }
}
