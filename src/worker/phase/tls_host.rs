//! [hot] Phase: TLS host check, before routing. Compiled part: the
//! listener's SNI table and whether any of its names needs a client
//! certificate (`ListenerTls::checks_host`). Per-connection part: the site
//! the handshake chose (`ConnTls::site`).
//!
//! On such a listener a request's Host must name a server the handshake
//! covered: otherwise a client could authenticate (or skip authenticating)
//! for one name and then ask for another whose rules differ. Listeners
//! without client authentication pay one branch.

use crate::failure::Failure;
use crate::http::RequestHead;

use super::super::client::RequestView;
use super::Verdict;

pub fn check(request: &RequestView, head: &RequestHead) -> Verdict {
    let Some(tls) = request.tls else {
        return Verdict::Continue;
    };
    if !tls.listener.checks_host {
        return Verdict::Continue;
    }
    match head.host {
        Some(host) if !tls.listener.covers(tls.site, host.get(request.buf)) => {
            Verdict::Answer(Failure::Misdirected)
        }
        _ => Verdict::Continue,
    }
}
