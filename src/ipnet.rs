//! [cold] IP networks (`10.0.0.0/8`, `::1/128`, a bare address) as config
//! values: parsed once at load, matched per request with a mask compare.

/// An IP network (`10.0.0.0/8`, `::1/128`, or a bare address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn parse(text: &str) -> Option<IpNet> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a.parse::<std::net::IpAddr>().ok()?, p.parse::<u8>().ok()?),
            None => {
                let a: std::net::IpAddr = text.parse().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(IpNet { addr, prefix })
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl IpNet {
    /// The network as an inclusive range of addresses of its family.
    fn range(&self) -> AddrRange {
        use std::net::IpAddr;
        match self.addr {
            IpAddr::V4(a) => {
                let host_bits = u32::MAX.checked_shr(u32::from(self.prefix)).unwrap_or(0);
                let start = u32::from(a) & !host_bits;
                AddrRange::V4(start, start | host_bits)
            }
            IpAddr::V6(a) => {
                let host_bits = u128::MAX.checked_shr(u32::from(self.prefix)).unwrap_or(0);
                let start = u128::from(a) & !host_bits;
                AddrRange::V6(start, start | host_bits)
            }
        }
    }
}

enum AddrRange {
    V4(u32, u32),
    V6(u128, u128),
}

/// Many networks compiled for lookup: each family's networks as sorted,
/// disjoint, merged ranges, found by binary search. A set of thousands of
/// networks answers in a dozen comparisons, with no allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpSet {
    v4: Box<[(u32, u32)]>,
    v6: Box<[(u128, u128)]>,
}

impl IpSet {
    pub fn new(nets: &[IpNet]) -> IpSet {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for net in nets {
            match net.range() {
                AddrRange::V4(a, b) => v4.push((a, b)),
                AddrRange::V6(a, b) => v6.push((a, b)),
            }
        }
        IpSet {
            v4: merge(v4).into_boxed_slice(),
            v6: merge(v6).into_boxed_slice(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Disjoint ranges after merging (tests check the merge by it).
    pub fn ranges(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Whether `ip` is in one of the networks. An IPv4-mapped IPv6
    /// address (`::ffff:10.1.2.3`, what a dual-stack socket reports for an
    /// IPv4 client) is looked up as the IPv4 address it carries.
    #[inline]
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        match ip.to_canonical() {
            std::net::IpAddr::V4(a) => within(&self.v4, u32::from(a)),
            std::net::IpAddr::V6(a) => within(&self.v6, u128::from(a)),
        }
    }
}

/// Sorts inclusive ranges and merges overlapping and adjacent ones.
fn merge<T: Copy + Ord + num_step::Step>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut merged: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start <= last.1.next_or_max() => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}

#[inline]
fn within<T: Copy + Ord>(ranges: &[(T, T)], x: T) -> bool {
    let after = ranges.partition_point(|&(start, _)| start <= x);
    after > 0 && ranges[after - 1].1 >= x
}

mod num_step {
    /// The next address, saturating at the family's last.
    pub trait Step {
        fn next_or_max(self) -> Self;
    }
    impl Step for u32 {
        fn next_or_max(self) -> u32 {
            self.saturating_add(1)
        }
    }
    impl Step for u128 {
        fn next_or_max(self) -> u128 {
            self.saturating_add(1)
        }
    }
}

/// The client address behind trusted proxies: `None` when the peer is the
/// client (no trusted proxies, the peer is not one, or its
/// `X-Forwarded-For` is unusable), else the right-most `X-Forwarded-For`
/// entry that is not itself a trusted proxy, as written and parsed
/// (entries further left are the client's own claims and could be
/// forged). `xff` yields the header's values in order.
pub fn behind_trusted_proxies<'a>(
    peer: std::net::IpAddr,
    trusted: &[IpNet],
    xff: impl DoubleEndedIterator<Item = &'a [u8]>,
) -> Option<(&'a [u8], std::net::IpAddr)> {
    let trusts = |ip: std::net::IpAddr| {
        let ip = ip.to_canonical();
        trusted.iter().any(|n| n.contains(ip))
    };
    if trusted.is_empty() || !trusts(peer) {
        return None;
    }
    for value in xff.rev() {
        for entry in value.rsplit(|&b| b == b',') {
            let entry = crate::http::trim_ows(entry);
            // Not an address: stop trusting the chain here.
            let ip = std::str::from_utf8(entry)
                .ok()?
                .parse::<std::net::IpAddr>()
                .ok()?;
            if !trusts(ip) {
                return Some((entry, ip));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(nets: &[&str]) -> IpSet {
        IpSet::new(
            &nets
                .iter()
                .map(|n| IpNet::parse(n).unwrap())
                .collect::<Vec<_>>(),
        )
    }

    fn ip(text: &str) -> std::net::IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_set_matches_exactly_its_networks_edges_included() {
        let s = set(&[
            "10.0.0.0/8",
            "192.168.1.0/24",
            "192.168.2.0/24",
            "2001:db8::/32",
            "::1",
        ]);
        for inside in [
            "10.0.0.0",
            "10.255.255.255",
            "192.168.1.0",
            "192.168.2.255",
            "2001:db8::",
            "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
            "::1",
            "::ffff:10.9.9.9",
        ] {
            assert!(s.contains(ip(inside)), "{inside}");
        }
        for outside in [
            "9.255.255.255",
            "11.0.0.0",
            "192.168.0.255",
            "192.168.3.0",
            "2001:db7:ffff::",
            "2001:db9::",
            "::2",
            "::",
            "0.0.0.0",
            "255.255.255.255",
        ] {
            assert!(!s.contains(ip(outside)), "{outside}");
        }
        // The two adjacent /24s merged into one range.
        assert_eq!(s.ranges(), 4);
        assert!(!IpSet::default().contains(ip("1.2.3.4")));
        assert!(IpSet::default().is_empty() && !s.is_empty());
    }

    #[test]
    fn overlapping_and_nested_networks_merge() {
        let s = set(&[
            "10.1.0.0/16",
            "10.0.0.0/8",
            "10.200.0.0/16",
            "0.0.0.0/0",
            "::/0",
        ]);
        assert_eq!(s.ranges(), 2);
        assert!(s.contains(ip("255.255.255.255")) && s.contains(ip("ffff::1")));
        let s = set(&["255.255.255.255", "255.255.255.254/31"]);
        assert_eq!(s.ranges(), 1);
        assert!(s.contains(ip("255.255.255.254")) && !s.contains(ip("255.255.255.253")));
    }

    #[test]
    fn a_set_agrees_with_the_networks_it_was_built_from() {
        // A deterministic spread of networks and probes (xorshift).
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let nets: Vec<IpNet> = (0..500)
            .map(|_| {
                let a = std::net::Ipv4Addr::from(next() as u32);
                IpNet::parse(&format!("{a}/{}", 8 + next() % 25)).unwrap()
            })
            .collect();
        let s = IpSet::new(&nets);
        for _ in 0..20_000 {
            let probe = ip(&std::net::Ipv4Addr::from(next() as u32).to_string());
            assert_eq!(
                s.contains(probe),
                nets.iter().any(|n| n.contains(probe)),
                "{probe}"
            );
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_through_trusted_proxies() {
        let trusted = [IpNet::parse("10.0.0.0/8").unwrap()];
        let pick = |peer: &str, values: &[&'static str]| {
            behind_trusted_proxies(ip(peer), &trusted, values.iter().map(|v| v.as_bytes()))
                .map(|(text, addr)| (std::str::from_utf8(text).unwrap(), addr))
        };
        assert_eq!(
            pick("10.0.0.5", &["6.6.6.6, 1.2.3.4, 10.0.0.9"]),
            Some(("1.2.3.4", ip("1.2.3.4")))
        );
        assert_eq!(
            pick("10.0.0.5", &["1.2.3.4", "10.1.1.1"]),
            Some(("1.2.3.4", ip("1.2.3.4")))
        );
        assert_eq!(
            pick("::ffff:10.0.0.5", &["2001:db8::7"]),
            Some(("2001:db8::7", ip("2001:db8::7")))
        );
        assert_eq!(pick("8.8.8.8", &["1.2.3.4"]), None);
        assert_eq!(pick("10.0.0.5", &["junk, 10.0.0.1"]), None);
        assert_eq!(pick("10.0.0.5", &["10.0.0.1"]), None);
        assert_eq!(pick("10.0.0.5", &[]), None);
    }

    #[test]
    fn networks_match_by_prefix() {
        let n = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(!n.contains("::1".parse().unwrap()));
        let one = IpNet::parse("127.0.0.1").unwrap();
        assert!(
            one.contains("127.0.0.1".parse().unwrap())
                && !one.contains("127.0.0.2".parse().unwrap())
        );
        let v6 = IpNet::parse("2001:db8::/32").unwrap();
        assert!(
            v6.contains("2001:db8:1::5".parse().unwrap())
                && !v6.contains("2001:db9::1".parse().unwrap())
        );
        assert!(IpNet::parse("10.0.0.0/33").is_none());
        assert!(
            IpNet::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
    }
}
