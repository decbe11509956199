//! [hot] Owned-buffer I/O helpers over monoio (io_uring takes ownership of a
//! buffer while the kernel uses it). Each helper moves the caller's buffer in
//! and puts it back, so buffers keep their capacity across requests and the
//! steady state allocates nothing. If a future is dropped mid-operation (a
//! timeout), the runtime keeps the buffer alive until the kernel is done and
//! the caller is left with an empty one; callers close the connection then.

use std::io;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, CancelHandle, CancelableAsyncReadRent};
use monoio::net::TcpStream;

/// Bytes of free space we ask for before each read.
pub const READ_CHUNK: usize = 16 * 1024;

/// Why a timed I/O operation did not complete.
#[derive(Debug)]
pub enum IoFailure {
    TimedOut,
    /// Orderly close by the peer (read returned 0).
    Closed,
    Io(#[allow(dead_code)] io::Error),
}

/// Appends whatever the peer sends next to `buf`; `Ok(0)` is end of stream.
pub async fn read_more(stream: &mut TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    let owned = std::mem::take(buf);
    let (len, cap) = (owned.len(), owned.capacity());
    let (result, slice) = stream.read(owned.slice_mut(len..cap)).await;
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
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    let owned = std::mem::take(buf);
    let (len, cap) = (owned.len(), owned.capacity());
    let (result, slice) = stream
        .cancelable_read(owned.slice_mut(len..cap), cancel)
        .await;
    *buf = slice.into_inner();
    result
}

/// `read_more` bounded by `limit`; end of stream is `IoFailure::Closed`.
pub async fn read_more_timed(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    limit: Duration,
) -> Result<usize, IoFailure> {
    match monoio::time::timeout(limit, read_more(stream, buf)).await {
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
