//! IP whitelist patterns: `*`, an address (`10.1.2.3`, `::1`), a CIDR
//! range (`10.0.0.0/8`, `fd00::/8`) or IPv4 octets with `*` and ranges
//! (`192.168.1.*`, `192.168.1.10-20`), as RocketMQ writes them.

use std::net::{IpAddr, Ipv4Addr};

/// One whitelist entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddrPattern {
    /// Every address.
    Any,
    /// A CIDR range (an address is a /32 or /128).
    Cidr {
        /// The network address.
        net: IpAddr,
        /// Prefix length.
        bits: u8,
    },
    /// IPv4 octets, each an inclusive range (`*` is 0-255).
    Octets([(u8, u8); 4]),
}

impl AddrPattern {
    /// Parses one entry.
    pub fn parse(text: &str) -> Result<AddrPattern, String> {
        let t = text.trim();
        let bad = || format!("{text:?} is not an address, a CIDR range or a pattern such as 192.168.1.*");
        if t == "*" {
            return Ok(AddrPattern::Any);
        }
        if let Some((net, bits)) = t.split_once('/') {
            let net: IpAddr = net.parse().map_err(|_| bad())?;
            let bits: u8 = bits.parse().map_err(|_| bad())?;
            let max = if net.is_ipv4() { 32 } else { 128 };
            if bits > max {
                return Err(bad());
            }
            return Ok(AddrPattern::Cidr { net, bits });
        }
        if let Ok(ip) = t.parse::<IpAddr>() {
            let bits = if ip.is_ipv4() { 32 } else { 128 };
            return Ok(AddrPattern::Cidr { net: ip, bits });
        }
        let parts: Vec<&str> = t.split('.').collect();
        if parts.len() != 4 {
            return Err(bad());
        }
        let mut octets = [(0u8, 255u8); 4];
        for (slot, part) in octets.iter_mut().zip(parts) {
            *slot = match part {
                "*" => (0, 255),
                p => match p.split_once('-') {
                    Some((a, b)) => {
                        let (a, b): (u8, u8) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                        if a > b {
                            return Err(bad());
                        }
                        (a, b)
                    }
                    None => {
                        let v: u8 = p.parse().map_err(|_| bad())?;
                        (v, v)
                    }
                },
            };
        }
        Ok(AddrPattern::Octets(octets))
    }

    /// True when `ip` matches (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn matches(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match self {
            AddrPattern::Any => true,
            AddrPattern::Octets(ranges) => match ip {
                IpAddr::V4(v4) => v4
                    .octets()
                    .iter()
                    .zip(ranges)
                    .all(|(o, (lo, hi))| (*lo..=*hi).contains(o)),
                IpAddr::V6(_) => false,
            },
            AddrPattern::Cidr { net, bits } => match (canonical(*net), ip) {
                (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), *bits),
                (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), *bits),
                _ => false,
            },
        }
    }
}

/// `::ffff:a.b.c.d` as `a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, |v4: Ipv4Addr| IpAddr::V4(v4)),
        v4 => v4,
    }
}

/// True when the first `bits` bits of `a` and `b` agree.
fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let (whole, rest) = ((bits / 8) as usize, bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xFFu8 << (8 - rest);
    a[whole] & mask == b[whole] & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn patterns_match_what_they_say() {
        let cidr = AddrPattern::parse("10.0.0.0/8").unwrap();
        assert!(cidr.matches(ip("10.200.1.1")) && !cidr.matches(ip("11.0.0.1")));
        assert!(cidr.matches(ip("::ffff:10.1.1.1")));
        let odd = AddrPattern::parse("192.168.0.0/23").unwrap();
        assert!(odd.matches(ip("192.168.1.9")) && !odd.matches(ip("192.168.2.1")));
        let star = AddrPattern::parse("192.168.1.*").unwrap();
        assert!(star.matches(ip("192.168.1.77")) && !star.matches(ip("192.168.2.77")));
        let range = AddrPattern::parse("127.0.0.1-5").unwrap();
        assert!(range.matches(ip("127.0.0.5")) && !range.matches(ip("127.0.0.6")));
        let exact = AddrPattern::parse("::1").unwrap();
        assert!(exact.matches(ip("::1")) && !exact.matches(ip("127.0.0.1")));
        assert!(AddrPattern::parse("*").unwrap().matches(ip("8.8.8.8")));
        assert!(AddrPattern::parse("fd00::/8").unwrap().matches(ip("fd12::1")));
        for bad in [
            "",
            "10.0.0.0/33",
            "1.2.3",
            "1.2.3.300",
            "1.2.3.9-4",
            "host.example",
            "1.2.3.4/x",
        ] {
            assert!(AddrPattern::parse(bad).is_err(), "{bad:?}");
        }
    }
}
