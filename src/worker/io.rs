//! [hot] Owned-buffer I/O helpers over monoio (io_uring takes ownership of a
//! buffer while the kernel uses it). Each helper moves the caller's buffer in
//! and puts it back, so buffers keep their capacity across requests and the
//! steady state allocates nothing. If a future is dropped mid-operation (a
//! timeout), the runtime keeps the buffer alive until the kernel is done and
//! the caller is left with an empty one; callers close the connection then.

use std::io;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use monoio::buf::{IoBuf, IoBufMut, SliceMut};
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, CancelHandle, CancelableAsyncReadRent,
};
use monoio::net::TcpStream;

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
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    want: usize,
) -> io::Result<usize> {
    let (result, slice) = stream.read(spare(buf, want)).await;
    *buf = slice.into_inner();
    result
}

/// Like `read_more`, but the read can be cancelled through `cancel` (used for
/// idle keep-alive waits, which a drain cancels all at once).
pub async fn read_more_cancelable(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    cancel: CancelHandle,
) -> io::Result<usize> {
    let (result, slice) = stream.cancelable_read(spare(buf, HEAD_READ), cancel).await;
    *buf = slice.into_inner();
    result
}

/// `read_more` bounded by `limit`; end of stream is `IoFailure::Closed`.
pub async fn read_more_timed(
    stream: &mut TcpStream,
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
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    limit: Duration,
) -> Result<(), IoFailure> {
    write_all_keep(stream, buf, limit).await?;
    buf.clear();
    Ok(())
}

/// Writes all of `buf`, leaving its contents in place (for a possible retry).
pub async fn write_all_keep(
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

/// Writes the first `n` bytes of `buf` and consumes them, without copying.
pub async fn write_front(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    n: usize,
    limit: Duration,
) -> Result<(), IoFailure> {
    let owned = std::mem::take(buf);
    match monoio::time::timeout(limit, stream.write_all(owned.slice(0..n))).await {
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
    stream: &mut TcpStream,
    first: &mut BytesMut,
    second: &mut BytesMut,
    mut second_len: usize,
    iov_slot: &mut Option<IoVecPair>,
    limit: Duration,
) -> Result<(), IoFailure> {
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
