//! [warm] The TLS phase of a connection: wait for a handshake slot
//! (`handshake_gate`), run the handshake under its deadline, count the
//! outcome, and keep what requests on the connection will ask about it (the
//! site the SNI chose, the client certificate).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use monoio::net::TcpStream;

use crate::tls::handshake;
use crate::tls::identity::CertFacts;
use crate::tls::listener::ListenerTls;
use crate::transport::{TlsStream, Transport};

use super::shard::Shard;

/// What requests on a TLS connection may ask about it.
pub struct ConnTls {
    pub listener: Arc<ListenerTls>,
    /// The site the SNI selected.
    pub site: Option<usize>,
    /// The verified client certificate (mTLS).
    pub client_cert: Option<CertFacts>,
    /// "1.2" or "1.3", for the access log.
    pub version: &'static str,
}

/// Runs the server handshake for a new connection. `None`: it failed (and
/// was counted); the connection is closed.
pub async fn handshake(
    shard: &Shard,
    mut socket: TcpStream,
    peer: SocketAddr,
    listener: Arc<ListenerTls>,
    early: &mut BytesMut,
) -> Option<(Transport, ConnTls)> {
    let deadline = Instant::now() + listener.handshake_timeout;
    let result = monoio::time::timeout_at(deadline.into(), async {
        let (slot, waited) = shard
            .handshakes
            .acquire(listener.max_handshakes_in_flight)
            .await;
        if waited {
            shard.metrics.tls_handshake_queued();
        }
        let accepted = handshake::accept(&mut socket, &listener, early, deadline).await;
        drop(slot);
        accepted
    })
    .await
    .unwrap_or(Err(handshake::HandshakeError::TimedOut));
    let accepted = match result {
        Ok(accepted) => accepted,
        Err(e) => {
            shard.metrics.tls_handshake_failed(e.index());
            tracing::debug!(worker = shard.id, %peer, reason = e.reason(), error = %e, "TLS handshake failed");
            return None;
        }
    };
    shard.metrics.tls_handshake(accepted.resumed);
    let client_cert = accepted
        .client_chain
        .as_ref()
        .and_then(|chain| chain.first())
        .and_then(|leaf| CertFacts::parse(leaf).ok());
    let stream = Transport::Tls(Box::new(TlsStream {
        socket,
        session: accepted.session,
    }));
    Some((
        stream,
        ConnTls {
            listener,
            site: accepted.site,
            client_cert,
            version: if accepted.version == rustls::ProtocolVersion::TLSv1_3 {
                "1.3"
            } else {
                "1.2"
            },
        },
    ))
}
