//! [warm] The TLS phase of a connection: run the handshake under its
//! deadline, holding a slot of the worker's `gate` while rustls
//! has work (not while the client is silent), count the
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

use super::gate::Slot;
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

/// Holds a handshake slot of the worker's gate while rustls works.
struct GatePacer<'a> {
    shard: &'a Shard,
    max: usize,
    slot: Option<Slot<'a>>,
}

impl handshake::Pacer for GatePacer<'_> {
    async fn busy(&mut self) {
        if self.slot.is_none() {
            let (slot, waited) = self.shard.handshakes.acquire(self.max).await;
            if waited {
                self.shard.metrics.tls_handshake_queued();
            }
            self.slot = Some(slot);
        }
    }

    fn idle(&mut self) {
        self.slot = None;
    }
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
    let mut pacer = GatePacer {
        shard,
        max: listener.max_handshakes_in_flight,
        slot: None,
    };
    let result = monoio::time::timeout_at(
        deadline.into(),
        handshake::accept(&mut socket, &listener, early, deadline, &mut pacer),
    )
    .await
    .unwrap_or(Err(handshake::HandshakeError::TimedOut));
    drop(pacer);
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
