//! [hot] IP allow/deny rules (`[ip_rules.NAME]`): which client addresses
//! a listener or route admits. The client address is the one the rate
//! limiter uses (the peer, or the `X-Forwarded-For` entry behind trusted
//! proxies); the lists are compiled into `IpSet`s, so a rule of thousands
//! of networks costs a pair of binary searches.

use std::net::IpAddr;

use crate::ipnet::{IpNet, IpSet};

/// Which list is asked first when an address is on both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// `deny` wins over `allow` (the networks denied are carved out of
    /// those allowed).
    DenyFirst,
    /// `allow` wins over `deny` (exceptions punched into a deny list).
    AllowFirst,
}

/// What a refused client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 403 with the `ip_forbidden` JSON body.
    Forbid,
    /// The connection is closed without an answer.
    Close,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpRule {
    pub name: String,
    pub allow: IpSet,
    pub deny: IpSet,
    pub order: Order,
    /// An address on neither list is admitted.
    pub admit_unlisted: bool,
    pub refusal: Refusal,
    /// Peers whose `X-Forwarded-For` is believed (as for rate limits).
    pub trusted_proxies: Vec<IpNet>,
}

impl IpRule {
    /// Whether `ip` (the client's address) may pass.
    #[inline]
    pub fn admits(&self, ip: IpAddr) -> bool {
        let (first, first_admits, second) = match self.order {
            Order::DenyFirst => (&self.deny, false, &self.allow),
            Order::AllowFirst => (&self.allow, true, &self.deny),
        };
        if first.contains(ip) {
            first_admits
        } else if second.contains(ip) {
            !first_admits
        } else {
            self.admit_unlisted
        }
    }

    /// The address the rule judges: the peer, or who is behind it when it
    /// is a trusted proxy.
    #[inline]
    pub fn client_ip<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl DoubleEndedIterator<Item = &'a [u8]>,
    ) -> IpAddr {
        crate::ipnet::behind_trusted_proxies(peer, &self.trusted_proxies, forwarded_for)
            .map_or(peer, |(_, ip)| ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> IpSet {
        IpSet::new(
            &list
                .iter()
                .map(|n| IpNet::parse(n).unwrap())
                .collect::<Vec<_>>(),
        )
    }

    fn rule(order: Order, admit_unlisted: bool) -> IpRule {
        IpRule {
            name: "r".into(),
            allow: nets(&["10.0.0.0/8", "2001:db8::/32"]),
            deny: nets(&["10.66.0.0/16", "2001:db8:bad::/48"]),
            order,
            admit_unlisted,
            refusal: Refusal::Forbid,
            trusted_proxies: vec![IpNet::parse("127.0.0.1").unwrap()],
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn deny_first_carves_denied_networks_out_of_allowed_ones() {
        let r = rule(Order::DenyFirst, false);
        assert!(r.admits(ip("10.1.2.3")));
        assert!(!r.admits(ip("10.66.1.1")));
        assert!(r.admits(ip("2001:db8:1::1")));
        assert!(!r.admits(ip("2001:db8:bad::1")));
        assert!(!r.admits(ip("192.0.2.1")));
        assert!(rule(Order::DenyFirst, true).admits(ip("192.0.2.1")));
        assert!(!rule(Order::DenyFirst, true).admits(ip("10.66.0.1")));
    }

    #[test]
    fn allow_first_lets_allowed_networks_through_a_deny_list() {
        let r = rule(Order::AllowFirst, true);
        // On both lists: allow wins.
        assert!(r.admits(ip("10.66.1.1")));
        assert!(r.admits(ip("2001:db8:bad::1")));
        assert!(r.admits(ip("192.0.2.1")));
        let mut only_deny = rule(Order::AllowFirst, true);
        only_deny.allow = IpSet::default();
        assert!(!only_deny.admits(ip("10.66.1.1")));
        assert!(only_deny.admits(ip("10.1.1.1")));
        assert!(!rule(Order::AllowFirst, false).admits(ip("192.0.2.1")));
    }

    #[test]
    fn the_client_behind_a_trusted_proxy_is_judged() {
        let r = rule(Order::DenyFirst, false);
        let xff: [&[u8]; 1] = [b"10.66.0.9"];
        assert_eq!(
            r.client_ip(ip("127.0.0.1"), xff.into_iter()),
            ip("10.66.0.9")
        );
        assert_eq!(r.client_ip(ip("10.1.1.1"), xff.into_iter()), ip("10.1.1.1"));
        assert_eq!(
            r.client_ip(ip("127.0.0.1"), std::iter::empty()),
            ip("127.0.0.1")
        );
    }
}
