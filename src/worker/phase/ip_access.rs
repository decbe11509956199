//! [hot] Phase: IP allow/deny. A listener's rule runs before routing, a
//! route's right after it; both judge the client address the rate
//! limiter would (`IpRule::client_ip`). Compiled part:
//! `Snapshot::ip_rules`, named by `ListenerSpec::ip_rule` and
//! `Route::ip_rule`. No per-worker state beyond counters.

use crate::policy::ip_access::Refusal;
use crate::snapshot::Snapshot;

use super::super::client::RequestView;
use super::super::shard::Shard;

/// The rule of the listener a request arrived on, if it has one.
#[inline]
pub fn listener_rule(snapshot: &Snapshot, listener: std::net::SocketAddr) -> Option<usize> {
    snapshot
        .listeners
        .iter()
        .find(|l| l.addr == listener)
        .and_then(|l| l.ip_rule)
}

/// Judges the request by rule `rule`: `None` to go on, or how to refuse.
#[inline]
pub fn check(
    shard: &Shard,
    snapshot: &Snapshot,
    rule: usize,
    request: &RequestView<'_>,
) -> Option<Refusal> {
    let r = snapshot.ip_rules.get(rule)?;
    let ip = r.client_ip(request.peer.ip(), request.values(b"x-forwarded-for"));
    let admitted = r.admits(ip);
    shard.metrics.ip_rule(rule, admitted);
    (!admitted).then_some(r.refusal)
}
