//! [cold] Listener sockets, created on the control thread so that a bind
//! error (port in use, bad address) stops startup with a clear message before
//! any worker runs. Each worker gets its own socket for each listener, all
//! bound to the same address with SO_REUSEPORT, so the kernel spreads new
//! connections across workers without a shared accept queue.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

use crate::snapshot::ListenerSpec;
use crate::worker::ListenerSocket;

/// Binds `workers` sockets per listener. Returns per-worker socket lists and
/// the bound addresses (port 0 resolved to the port actually chosen).
pub fn bind_all(
    specs: &[ListenerSpec],
    workers: usize,
) -> Result<(Vec<Vec<ListenerSocket>>, Vec<SocketAddr>), String> {
    let mut per_worker: Vec<Vec<ListenerSocket>> = (0..workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    for spec in specs {
        let mut addr = spec.addr;
        for (i, sockets) in per_worker.iter_mut().enumerate() {
            // With port 0, a socket that already has SO_REUSEPORT may be given
            // a port another process's reuseport group holds, and the two
            // would then split each other's traffic. So the first socket binds
            // without it (a port nobody has) and turns it on before listening.
            let exclusive_first = i == 0 && spec.addr.port() == 0;
            let socket = bind_one(addr, spec.backlog, exclusive_first)
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            // With port 0 the first bind picks a port; the rest join it.
            addr = socket.local_addr().map_err(|e| e.to_string())?;
            sockets.push(ListenerSocket {
                configured: spec.addr,
                socket,
            });
        }
        bound.push(addr);
    }
    Ok((per_worker, bound))
}

fn bind_one(
    addr: SocketAddr,
    backlog: u32,
    exclusive_bind: bool,
) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(!exclusive_bind)?;
    socket.set_nonblocking(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.set_reuse_port(true)?;
    socket.listen(backlog as i32)?;
    Ok(socket.into())
}
