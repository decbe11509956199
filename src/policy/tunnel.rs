//! [hot] Upgrade tunnels (`upgrades = ["websocket"]` on a route): which
//! protocols a client may switch to through the route, and how long the
//! tunnel that follows a 101 may live. The tunnel itself (bytes both ways)
//! is `worker::tunnel`.

use std::time::Duration;

use crate::http;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelPolicy {
    /// Lower-case protocol names (`websocket`).
    pub protocols: Box<[Box<[u8]>]>,
    /// No bytes either way for this long: the tunnel is closed.
    pub idle_timeout: Duration,
    /// The longest a tunnel lives (`None`: no limit).
    pub max_lifetime: Option<Duration>,
}

impl TunnelPolicy {
    /// Whether an `Upgrade` header value asks for a protocol this route
    /// tunnels: its first offer, by name (a version after `/` is the
    /// upstream's to judge).
    pub fn allows(&self, upgrade: &[u8]) -> bool {
        let Some(first) = http::list_elements(upgrade).next() else {
            return false;
        };
        let name = first.split(|&b| b == b'/').next().unwrap_or_default();
        let name = http::trim_ows(name);
        self.protocols.iter().any(|p| name.eq_ignore_ascii_case(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_offered_protocol_decides() {
        let p = TunnelPolicy {
            protocols: vec![b"websocket".as_slice().into()].into_boxed_slice(),
            idle_timeout: Duration::from_secs(60),
            max_lifetime: None,
        };
        assert!(p.allows(b"websocket"));
        assert!(p.allows(b"WebSocket"));
        assert!(p.allows(b" websocket/13 , h2c"));
        assert!(!p.allows(b"h2c, websocket"));
        assert!(!p.allows(b"h2c"));
        assert!(!p.allows(b""));
        assert!(!p.allows(b"websockets"));
    }
}
