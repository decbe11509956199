//! [hot] A connection's byte stream, plain TCP or TLS, and the owned-buffer
//! I/O every connection does through it (io_uring takes ownership of a
//! buffer while the kernel uses it). Each helper moves the caller's buffer in
//! and puts it back, so buffers keep their capacity across requests and the
//! steady state allocates nothing. If a future is dropped mid-operation (a
//! timeout), the runtime keeps the buffer alive until the kernel is done and
//! the caller is left with an empty one; callers close the connection then.
//!
//! Over TLS the same helpers read ciphertext into the session's buffer and
//! open it into the caller's (`tls::session`), and seal the caller's bytes
//! into the session's outgoing buffer before writing it: one copy each way,
//! which the encryption needs anyway, and no allocation once warm.

use std::io;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use monoio::buf::{IoBuf, IoBufMut, SliceMut};
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, CancelHandle, CancelableAsyncReadRent,
};
use monoio::net::TcpStream;

use crate::tls::session::TlsSession;

/// A connection's stream.
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

/// A TCP stream carrying an established TLS session.
pub struct TlsStream {
    pub socket: TcpStream,
    pub session: TlsSession,
}

/// Most plaintext sealed before the records are written: bounds the
/// outgoing buffer whatever the size of one write.
const SEAL_BATCH: usize = 64 * 1024;

impl Transport {
    pub fn socket(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => &t.socket,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// Ends our side: close_notify first over TLS, then a TCP half-close.
    pub async fn shutdown(&mut self, limit: Duration) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.shutdown().await,
            Transport::Tls(t) => {
                t.session.outgoing = outgoing::take();
                t.session.take_pending();
                t.session.seal_close_notify();
                let _ = t.flush(limit).await;
                outgoing::give(std::mem::take(&mut t.session.outgoing));
                t.socket.shutdown().await
            }
        }
    }
}

impl TlsStream {
    /// Writes and clears the session's sealed records.
    async fn flush(&mut self, limit: Duration) -> Result<(), IoFailure> {
        let mut out = std::mem::take(&mut self.session.outgoing);
        let result = write_buf(&mut self.socket, &mut out, limit).await;
        out.clear();
        self.session.outgoing = out;
        result
    }

    /// Seals `parts` in order and writes them, a batch at a time, through
    /// an outgoing buffer borrowed for the length of the write.
    async fn write(&mut self, parts: &[&[u8]], limit: Duration) -> Result<(), IoFailure> {
        self.session.outgoing = outgoing::take();
        self.session.take_pending();
        let result = self.seal_and_flush(parts, limit).await;
        outgoing::give(std::mem::take(&mut self.session.outgoing));
        result
    }

    async fn seal_and_flush(&mut self, parts: &[&[u8]], limit: Duration) -> Result<(), IoFailure> {
        for part in parts {
            let mut rest = *part;
            while !rest.is_empty() {
                let n = rest.len().min(SEAL_BATCH);
                self.session
                    .seal(&rest[..n])
                    .map_err(|e| IoFailure::Io(e.into()))?;
                if self.session.outgoing.len() >= SEAL_BATCH {
                    self.flush(limit).await?;
                }
                rest = &rest[n..];
            }
        }
        self.flush(limit).await
    }

    /// Appends the plaintext of the records that arrive next to `buf`;
    /// `Ok(0)` once the peer closed (close_notify or end of stream).
    async fn read_more(
        &mut self,
        buf: &mut BytesMut,
        cancel: Option<CancelHandle>,
    ) -> io::Result<usize> {
        loop {
            let n = self.session.open_records(buf)?;
            if n > 0 {
                return Ok(n);
            }
            if self.session.peer_closed() {
                return Ok(0);
            }
            // Room for the rest of a partial record, or a head's worth:
            // an idle connection keeps a small buffer.
            let want = self.session.pending_need().max(HEAD_READ);
            let mut incoming = std::mem::take(&mut self.session.incoming);
            if incoming.capacity() - incoming.len() < want {
                incoming.reserve(want);
            }
            let read = match cancel.clone() {
                Some(cancel) => {
                    let (result, slice) = self
                        .socket
                        .cancelable_read(spare(&mut incoming, want), cancel)
                        .await;
                    incoming = slice.into_inner();
                    result
                }
                None => {
                    let (result, slice) = self.socket.read(spare(&mut incoming, want)).await;
                    incoming = slice.into_inner();
                    result
                }
            };
            self.session.incoming = incoming;
            if read? == 0 {
                return Ok(0);
            }
        }
    }
}

/// The buffers TLS records are sealed into. Records are written as soon as
/// they are sealed, so a connection needs one only during a write: it is
/// borrowed from this thread's stock (a worker's) and given back, and an
/// idle TLS connection holds none. No lock: each worker thread has its own.
mod outgoing {
    use std::cell::RefCell;

    use bytes::BytesMut;

    /// Room for a 16 KiB record sealed (header, tag, inner type).
    const SIZE: usize = 17 * 1024;
    /// Buffers that grew past this (large writes) are not kept.
    const MAX_KEPT: usize = 128 * 1024;
    const STOCK: usize = 256;

    thread_local! {
        static FREE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    }

    pub fn take() -> BytesMut {
        FREE.with(|f| f.borrow_mut().pop())
            .unwrap_or_else(|| BytesMut::with_capacity(SIZE))
    }

    pub fn give(mut buf: BytesMut) {
        if !(SIZE..=MAX_KEPT).contains(&buf.capacity()) {
            return;
        }
        buf.clear();
        FREE.with(|f| {
            let mut free = f.borrow_mut();
            if free.len() < STOCK {
                free.push(buf);
            }
        });
    }
}

/// Writes all of `buf` to a socket, leaving its contents in place.
async fn write_buf(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    limit: Duration,
) -> Result<(), IoFailure> {
    if buf.is_empty() {
        return Ok(());
    }
    let owned = std::mem::take(buf);
    match monoio::time::timeout(limit, stream.write_all(owned)).await {
        Err(_) => Err(IoFailure::TimedOut),
        Ok((result, owned)) => {
            *buf = owned;
            result.map(|_| ()).map_err(IoFailure::Io)
        }
    }
}

/// Free space wanted before reading a head: small, because a connection's
/// read buffer lives as long as the connection (idle ones included).
pub const HEAD_READ: usize = 2 * 1024;
/// Free space wanted before reading body bytes: large, for fewer syscalls.
pub const BODY_READ: usize = 16 * 1024;

/// Why a timed I/O operation did not complete.
#[derive(Debug)]
pub enum IoFailure {
    TimedOut,
    /// Orderly close by the peer (read returned 0).
    Closed,
    Io(#[allow(dead_code)] io::Error),
}

/// Moves `buf` out as a view of its spare capacity (what a read fills),
/// first growing it if less than a quarter of `want` is free.
fn spare(buf: &mut BytesMut, want: usize) -> SliceMut<BytesMut> {
    if buf.capacity() - buf.len() < want / 4 {
        buf.reserve(want);
    }
    let owned = std::mem::take(buf);
    let (len, cap) = (owned.len(), owned.capacity());
    owned.slice_mut(len..cap)
}

/// Appends whatever the peer sends next to `buf`, first growing it if less
/// than a quarter of `want` is free; `Ok(0)` is end of stream.
pub async fn read_more(
    stream: &mut Transport,
    buf: &mut BytesMut,
    want: usize,
) -> io::Result<usize> {
    match stream {
        Transport::Plain(socket) => {
            let (result, slice) = socket.read(spare(buf, want)).await;
            *buf = slice.into_inner();
            result
        }
        Transport::Tls(tls) => tls.read_more(buf, None).await,
    }
}

/// Like `read_more`, but the read can be cancelled through `cancel` (used for
/// idle keep-alive waits, which a drain cancels all at once).
pub async fn read_more_cancelable(
    stream: &mut Transport,
    buf: &mut BytesMut,
    cancel: CancelHandle,
) -> io::Result<usize> {
    match stream {
        Transport::Plain(socket) => {
            let (result, slice) = socket.cancelable_read(spare(buf, HEAD_READ), cancel).await;
            *buf = slice.into_inner();
            result
        }
        Transport::Tls(tls) => tls.read_more(buf, Some(cancel)).await,
    }
}

/// `read_more` bounded by `limit`; end of stream is `IoFailure::Closed`.
pub async fn read_more_timed(
    stream: &mut Transport,
    buf: &mut BytesMut,
    want: usize,
    limit: Duration,
) -> Result<usize, IoFailure> {
    match monoio::time::timeout(limit, read_more(stream, buf, want)).await {
        Err(_) => Err(IoFailure::TimedOut),
        Ok(Ok(0)) => Err(IoFailure::Closed),
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(IoFailure::Io(e)),
    }
}

/// Writes all of `buf` and clears it (capacity kept).
pub async fn write_all_clear(
    stream: &mut Transport,
    buf: &mut BytesMut,
    limit: Duration,
) -> Result<(), IoFailure> {
    write_all_keep(stream, buf, limit).await?;
    buf.clear();
    Ok(())
}

/// Writes all of `buf`, leaving its contents in place (for a possible retry).
pub async fn write_all_keep(
    stream: &mut Transport,
    buf: &mut BytesMut,
    limit: Duration,
) -> Result<(), IoFailure> {
    match stream {
        Transport::Plain(socket) => write_buf(socket, buf, limit).await,
        Transport::Tls(tls) => tls.write(&[buf], limit).await,
    }
}

/// Writes bytes the caller need not get back without copying them: the
/// kernel reads from them where they lie (over TLS they are sealed from
/// there). For a cached body (`Bytes`, shared) or an interim
/// `100 Continue` (`&'static [u8]`).
pub async fn write_owned<B>(
    stream: &mut Transport,
    bytes: B,
    limit: Duration,
) -> Result<(), IoFailure>
where
    B: IoBuf + std::ops::Deref<Target = [u8]>,
{
    match stream {
        Transport::Plain(socket) => {
            match monoio::time::timeout(limit, socket.write_all(bytes)).await {
                Err(_) => Err(IoFailure::TimedOut),
                Ok((result, _)) => result.map(|_| ()).map_err(IoFailure::Io),
            }
        }
        Transport::Tls(tls) => tls.write(&[&bytes[..]], limit).await,
    }
}

/// Writes the first `n` bytes of `buf` and consumes them, without copying
/// (over TLS: sealed from where they lie).
pub async fn write_front(
    stream: &mut Transport,
    buf: &mut BytesMut,
    n: usize,
    limit: Duration,
) -> Result<(), IoFailure> {
    let socket = match stream {
        Transport::Plain(socket) => socket,
        Transport::Tls(tls) => {
            tls.write(&[&buf[..n]], limit).await?;
            buf.advance(n);
            return Ok(());
        }
    };
    let owned = std::mem::take(buf);
    match monoio::time::timeout(limit, socket.write_all(owned.slice(0..n))).await {
        Err(_) => Err(IoFailure::TimedOut),
        Ok((result, slice)) => {
            *buf = slice.into_inner();
            result.map_err(IoFailure::Io)?;
            buf.advance(n);
            Ok(())
        }
    }
}

/// Room for one two-part vectored write, kept per connection so vectored
/// writes allocate nothing after the first.
pub type IoVecPair = Box<[libc::iovec; 2]>;

/// Two buffers handed to the kernel together for one `writev`. Owning both
/// (and the iovec array, on the heap so its address survives moves of this
/// value) keeps the memory alive even if the write is abandoned on timeout.
struct TwoPart {
    first: BytesMut,
    second: BytesMut,
    iov: IoVecPair,
    count: usize,
}

// SAFETY: the iovecs point into `first`/`second`, whose heap storage does not
// move when `TwoPart` moves, and which live as long as the value the kernel
// is handed.
unsafe impl monoio::buf::IoVecBuf for TwoPart {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iov.as_ptr()
    }
    fn read_iovec_len(&self) -> usize {
        self.count
    }
}

/// Writes all of `first`, then the first `second_len` bytes of `second`, in
/// as few `writev` calls as the socket allows. `first` ends up empty and the
/// written part of `second` is consumed, without copying either.
pub async fn write_two(
    stream: &mut Transport,
    first: &mut BytesMut,
    second: &mut BytesMut,
    mut second_len: usize,
    iov_slot: &mut Option<IoVecPair>,
    limit: Duration,
) -> Result<(), IoFailure> {
    let stream = match stream {
        Transport::Plain(socket) => socket,
        Transport::Tls(tls) => {
            // Both parts sealed into one batch of records, one write.
            tls.write(&[first, &second[..second_len]], limit).await?;
            first.clear();
            second.advance(second_len);
            return Ok(());
        }
    };
    let empty = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    while !first.is_empty() || second_len > 0 {
        let mut iov = iov_slot.take().unwrap_or_else(|| Box::new([empty, empty]));
        let mut count = 0;
        for part in [&first[..], &second[..second_len]] {
            if !part.is_empty() {
                iov[count] = libc::iovec {
                    iov_base: part.as_ptr() as *mut libc::c_void,
                    iov_len: part.len(),
                };
                count += 1;
            }
        }
        let parts = TwoPart {
            first: std::mem::take(first),
            second: std::mem::take(second),
            iov,
            count,
        };
        let (result, parts) = match monoio::time::timeout(limit, stream.writev(parts)).await {
            Err(_) => return Err(IoFailure::TimedOut),
            Ok(done) => done,
        };
        *first = parts.first;
        *second = parts.second;
        *iov_slot = Some(parts.iov);
        let mut written = match result {
            Ok(0) => return Err(IoFailure::Closed),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(IoFailure::Io(e)),
        };
        let from_first = written.min(first.len());
        first.advance(from_first);
        written -= from_first;
        second.advance(written);
        second_len -= written;
    }
    first.clear();
    Ok(())
}

/// Sends what the socket takes of `bytes` right now, with one non-blocking
/// `send(2)`, and returns how many it took (0 when its buffer is full).
///
/// Why: io_uring submits queued operations only after the worker has run
/// every ready task. After CPU-heavy work (a handshake's signature, about
/// a millisecond for RSA-2048) a write queued the usual way waits for the
/// rest of the batch — other handshakes' signatures — before the kernel
/// sees it, and the client sits idle meanwhile. Sending directly puts the
/// bytes on the wire as soon as they exist; the epoll driver does the same
/// syscall anyway. Only for a socket with no write of its own in flight,
/// or the bytes could interleave.
pub fn send_now(stream: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    if bytes.is_empty() {
        return Ok(0);
    }
    // SAFETY: `bytes` is a live slice for the call; the fd is owned by
    // `stream`.
    let n = unsafe {
        libc::send(
            stream.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n >= 0 {
        return Ok(n as usize);
    }
    let e = io::Error::last_os_error();
    match e.kind() {
        io::ErrorKind::WouldBlock => Ok(0),
        io::ErrorKind::Interrupted => Ok(0),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A connected pair: a monoio stream (inside the runtime) and a std peer.
    fn pair() -> (TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let peer =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (ours, _) = listener.accept().expect("accept");
        ours.set_nonblocking(true).expect("nonblocking");
        (TcpStream::from_std(ours).expect("register"), peer)
    }

    fn runtime() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime")
    }

    #[test]
    fn send_now_puts_the_bytes_on_the_wire_at_once() {
        runtime().block_on(async {
            let (ours, mut peer) = pair();
            assert_eq!(send_now(&ours, b"").expect("empty"), 0);
            assert_eq!(send_now(&ours, b"flight").expect("send"), 6);
            let mut got = [0u8; 6];
            peer.read_exact(&mut got).expect("read");
            assert_eq!(&got, b"flight");
        });
    }

    #[test]
    fn send_now_takes_what_fits_and_never_blocks() {
        runtime().block_on(async {
            let (ours, peer) = pair();
            let chunk = vec![7u8; 256 * 1024];
            let mut total = 0;
            // The peer never reads: the buffers fill, sends shrink to 0.
            loop {
                let n = send_now(&ours, &chunk).expect("send");
                assert!(n <= chunk.len());
                total += n;
                if n == 0 {
                    break;
                }
                assert!(total < 1 << 30, "the socket never filled");
            }
            assert!(total > 0);
            drop(peer);
        });
    }

    #[test]
    fn send_now_reports_a_reset_connection() {
        runtime().block_on(async {
            let (ours, peer) = pair();
            // Linger 0: close sends a reset.
            socket2::SockRef::from(&peer)
                .set_linger(Some(Duration::ZERO))
                .expect("linger");
            drop(peer);
            let mut failed = false;
            for _ in 0..1000 {
                if send_now(&ours, b"x").is_err() {
                    failed = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            assert!(failed, "a send to a reset connection kept succeeding");
        });
    }
}
