//! Client networks let into the Modbus TCP server (`allow = ["192.168.1.0/24"]`).
//! Here, in `config`, because the file describes them; `modbus_server` filters with them (and
//! re-exports this as `modbus_server::cidr`).

use std::net::IpAddr;

/// A network: an address and a prefix length (a bare address is the host alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the network. An IPv4 client on an IPv6 socket (`::ffff:a.b.c.d`)
    /// is taken as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Why a text is no network; `text` is the text as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadNetwork {
    #[error("{text:?} is not a network: write e.g. \"192.168.1.0/24\", \"10.0.0.7\" or \"fd00::/8\"")]
    Address { text: String },
    /// `max` is 32 for IPv4, 128 for IPv6.
    #[error("{text:?}: the prefix length must be 0..={max}")]
    Prefix { text: String, max: u8 },
}

/// The configuration loader reports it in plain text.
impl From<BadNetwork> for String {
    fn from(e: BadNetwork) -> String {
        e.to_string()
    }
}

impl std::str::FromStr for Cidr {
    type Err = BadNetwork;

    fn from_str(s: &str) -> Result<Cidr, BadNetwork> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr.trim().parse().map_err(|_| BadNetwork::Address { text: s.to_owned() })?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| BadNetwork::Prefix { text: s.to_owned(), max })?,
        };
        Ok(Cidr { net, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_hold_their_addresses_and_no_others() {
        let lan: Cidr = "192.168.1.0/24".parse().unwrap();
        assert!(lan.contains(ip("192.168.1.77")));
        assert!(!lan.contains(ip("192.168.2.1")));
        assert!(lan.contains(ip("::ffff:192.168.1.9")), "an IPv4 client on an IPv6 socket");
        let host: Cidr = "127.0.0.1".parse().unwrap();
        assert!(host.contains(ip("127.0.0.1")) && !host.contains(ip("127.0.0.2")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")) && !all.contains(ip("fd00::1")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        for bad in ["192.168.1.0/33", "lan", "10.0.0.0/x", "fd00::/129", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!(lan.to_string(), "192.168.1.0/24");
    }
}
