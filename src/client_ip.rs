//! The client's address behind proxies Sluice trusts (`server.trusted_proxies`): a load balancer
//! in front of Sluice connects from its own address and names the client in `X-Forwarded-For`.
//!
//! As nginx's `real_ip_recursive on`: the list is read from the right (each proxy appends the
//! address it was connected from), trusted proxies are skipped, and the first address that is
//! not trusted is the client. Anything to its left was written by the client itself and proves
//! nothing. An entry that is not an address ends the walk at the last address read.

use std::net::IpAddr;

/// Address ranges whose connections may say who the client is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl TrustedProxies {
    /// Ranges as `10.0.0.0/8`, `2001:db8::/32`, or single addresses; the error names the
    /// entry's index.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<TrustedProxies, (usize, String)> {
        entries
            .iter()
            .enumerate()
            .map(|(i, entry)| Cidr::parse(entry.as_ref()).map_err(|e| (i, e)))
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|range| range.contains(ip))
    }

    /// The client a trusted `peer` forwarded the request for, read from the `X-Forwarded-For`
    /// values in the order they came; `None` when the peer is not trusted or named nobody.
    pub fn client_of<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl DoubleEndedIterator<Item = &'a [u8]>,
    ) -> Option<IpAddr> {
        if !self.trusts(peer) {
            return None;
        }
        let mut client = None;
        for value in forwarded_for.rev() {
            for entry in value.rsplit(|&b| b == b',') {
                let Some(ip) = parse_entry(entry) else {
                    return client;
                };
                client = Some(ip);
                if !self.trusts(ip) {
                    return client;
                }
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`203.0.113.7:4711`,
/// `[2001:db8::1]:4711`, as some balancers write it).
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    text.parse::<std::net::SocketAddr>().ok().map(|a| a.ip())
}

impl Cidr {
    fn parse(text: &str) -> Result<Cidr, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an address or a range such as 10.0.0.0/8"))?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p) if p <= bits => p,
                _ => return Err(format!("{text:?}: the prefix length must be 0 to {bits}")),
            },
        };
        let range = Cidr { network, prefix };
        if range.mask(network) != network {
            return Err(format!(
                "{text:?} has bits set past its prefix length (the range is {}/{prefix})",
                range.mask(network)
            ));
        }
        Ok(range)
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.network, ip) {
            // An IPv4 client on an IPv6 socket reads as `::ffff:a.b.c.d`.
            (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            (IpAddr::V6(_), IpAddr::V4(_)) => return false,
            _ => ip,
        };
        self.mask(ip) == self.network
    }

    /// `ip` with the bits past the prefix cleared (same family as `network`).
    fn mask(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4)
                    & u32::MAX
                        .checked_shl(32 - u32::from(self.prefix))
                        .unwrap_or(0);
                IpAddr::V4(bits.into())
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6)
                    & u128::MAX
                        .checked_shl(128 - u32::from(self.prefix))
                        .unwrap_or(0);
                IpAddr::V6(bits.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn trusted(entries: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(entries).unwrap()
    }

    fn client(proxies: &TrustedProxies, peer: &str, values: &[&str]) -> Option<IpAddr> {
        proxies.client_of(ip(peer), values.iter().map(|v| v.as_bytes()))
    }

    #[test]
    fn ranges_and_single_addresses_are_read() {
        let proxies = trusted(&["10.0.0.0/8", "192.168.1.7", "2001:db8::/32", "0.0.0.0/0"]);
        assert_eq!(proxies.0.len(), 4);
        let v4 = trusted(&["10.1.0.0/16"]);
        assert!(v4.trusts(ip("10.1.255.3")));
        assert!(!v4.trusts(ip("10.2.0.1")));
        assert!(
            v4.trusts(ip("::ffff:10.1.2.3")),
            "an IPv4 peer on an IPv6 socket"
        );
        assert!(!v4.trusts(ip("2001:db8::1")));
        let v6 = trusted(&["2001:db8::/32"]);
        assert!(v6.trusts(ip("2001:db8:ffff::1")));
        assert!(!v6.trusts(ip("2001:db9::1")));
        assert!(!v6.trusts(ip("10.0.0.1")));
        assert!(trusted(&["0.0.0.0/0"]).trusts(ip("203.0.113.9")));
        assert!(trusted(&["::/0"]).trusts(ip("2001:db8::1")));
    }

    #[test]
    fn a_bad_entry_is_named_by_its_index() {
        for (entries, says) in [
            (vec!["10.0.0.0/8", "ten"], "not an address"),
            (vec!["10.0.0.0/8", "10.0.0.0/33"], "0 to 32"),
            (vec!["10.0.0.0/8", "::/129"], "0 to 128"),
            (vec!["10.0.0.0/8", "10.0.0.1/8"], "the range is 10.0.0.0/8"),
            (vec!["10.0.0.0/8", "10.0.0.0/x"], "prefix length"),
        ] {
            let (index, error) = TrustedProxies::parse(&entries).unwrap_err();
            assert_eq!(index, 1, "{entries:?}");
            assert!(error.contains(says), "{entries:?}: {error}");
        }
    }

    #[test]
    fn the_client_is_the_rightmost_address_not_trusted() {
        let proxies = trusted(&["10.0.0.0/8"]);
        // The client wrote the first entry itself: only what the proxies added counts.
        let values = ["198.51.100.1, 203.0.113.7, 10.0.0.5"];
        assert_eq!(
            client(&proxies, "10.0.0.9", &values),
            Some(ip("203.0.113.7"))
        );
        // Several header lines read as one list, in order.
        let lines = ["198.51.100.1", "203.0.113.7,10.0.0.5", " 10.0.0.6 "];
        assert_eq!(
            client(&proxies, "10.0.0.9", &lines),
            Some(ip("203.0.113.7"))
        );
        // Every address trusted: the leftmost one.
        assert_eq!(
            client(&proxies, "10.0.0.9", &["10.0.0.1, 10.0.0.2"]),
            Some(ip("10.0.0.1"))
        );
    }

    #[test]
    fn an_untrusted_peer_names_nobody() {
        let proxies = trusted(&["10.0.0.0/8"]);
        assert_eq!(client(&proxies, "203.0.113.7", &["198.51.100.1"]), None);
        assert_eq!(
            client(&TrustedProxies::default(), "10.0.0.1", &["198.51.100.1"]),
            None
        );
        assert_eq!(client(&proxies, "10.0.0.1", &[]), None, "no header");
    }

    #[test]
    fn ports_are_dropped_and_garbage_ends_the_walk() {
        let proxies = trusted(&["10.0.0.0/8"]);
        assert_eq!(
            client(&proxies, "10.0.0.9", &["203.0.113.7:4711"]),
            Some(ip("203.0.113.7"))
        );
        assert_eq!(
            client(&proxies, "10.0.0.9", &["[2001:db8::1]:4711"]),
            Some(ip("2001:db8::1"))
        );
        // Garbage right behind the proxy: it vouched for nobody readable.
        assert_eq!(client(&proxies, "10.0.0.9", &["unknown"]), None);
        // Garbage further left: the last address read (a trusted proxy's) stands.
        assert_eq!(
            client(&proxies, "10.0.0.9", &["unknown, 10.0.0.4"]),
            Some(ip("10.0.0.4"))
        );
        assert_eq!(client(&proxies, "10.0.0.9", &[""]), None);
    }
}
