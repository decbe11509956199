//! `ringgate-stub`: the load-test suite's upstream. A small, fast HTTP/1.1
//! server (thread per core, monoio, ringgate's own codec) serving fixed
//! bodies, so the upstream is never the bottleneck by accident.
//!
//! ```text
//! ringgate-stub [--listen 127.0.0.1:9000] [--threads N] [--driver io_uring|epoll]
//!   GET /bytes/N   → 200 with an N-byte body (N ≤ 16 MiB), built once per size
//!   GET /json/N    → 200 with an N-byte JSON array of API-like records
//!                    (application/json: what compression scenarios compress)
//!   POST /introspect → an RFC 7662 answer: the token is active, for
//!                    `loadtest-user` (the auth-introspection scenario)
//!   POST anything  → the body is read and discarded; 200 "ok\n"
//!   anything else  → 200 "hello world\n"
//! ```

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::{Buf, Bytes, BytesMut};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{ListenerOpts, TcpListener, TcpStream};
use ringgate::http::{BodyFraming, ChunkedDecoder, Step, parse_request};

const SMALL: &[u8] = b"hello world\n";
const MAX_BODY: usize = 16 << 20;

struct Options {
    listen: SocketAddr,
    threads: usize,
    epoll: bool,
}

fn parse_options() -> Result<Options, String> {
    let mut o = Options {
        listen: "127.0.0.1:9000".parse().map_err(|e| format!("{e}"))?,
        threads: 1,
        epoll: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--listen" => o.listen = value()?.parse().map_err(|e| format!("--listen: {e}"))?,
            "--threads" => o.threads = value()?.parse().map_err(|e| format!("--threads: {e}"))?,
            "--driver" => o.epoll = value()? == "epoll",
            "-h" | "--help" => {
                println!("ringgate-stub [--listen ADDR] [--threads N] [--driver io_uring|epoll]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(o)
}

fn main() {
    let options = match parse_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("ringgate-stub: {e}");
            std::process::exit(2);
        }
    };
    let mut handles = Vec::new();
    for _ in 0..options.threads.max(1) {
        let (listen, epoll) = (options.listen, options.epoll);
        handles.push(std::thread::spawn(move || {
            let opts = ListenerOpts::new().reuse_port(true).backlog(4096);
            if epoll {
                let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                    .enable_timer()
                    .build()
                    .expect("epoll runtime");
                rt.block_on(serve(listen, opts));
            } else {
                let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                    .enable_timer()
                    .build()
                    .expect("io_uring runtime (use --driver epoll)");
                rt.block_on(serve(listen, opts));
            }
        }));
    }
    println!(
        "ringgate-stub listening on http://{} ({} threads)",
        options.listen,
        options.threads.max(1)
    );
    for h in handles {
        let _ = h.join();
    }
}

async fn serve(listen: SocketAddr, opts: ListenerOpts) {
    let listener = TcpListener::bind_with_config(listen, &opts).expect("bind");
    let cache: Rc<RefCell<HashMap<usize, Bytes>>> = Rc::default();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        monoio::spawn(connection(stream, cache.clone()));
    }
}

fn response(size: usize) -> Bytes {
    let mut r = format!("HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {size}\r\n\r\n").into_bytes();
    r.resize(r.len() + size, b'x');
    Bytes::from(r)
}

/// Marks a `/json/N` body in the per-size cache.
const JSON_KEY: usize = 1 << 60;

/// A valid JSON array of records, as close to `size` bytes as whole
/// records allow (at most `size`, at least `[]`).
fn json_response(size: usize) -> Bytes {
    let mut body = b"[".to_vec();
    let mut i = 0u64;
    loop {
        let record = format!(
            "{{\"id\":{i},\"name\":\"customer {i}\",\"email\":\"user{i}@example.com\",\"plan\":\"{}\",\"active\":{},\"balance\":{}.{:02}}}",
            ["free", "pro", "team"][(i % 3) as usize],
            !i.is_multiple_of(7),
            (i * 7919) % 10_000,
            i % 100
        );
        // A comma before every record but the first, `]` after the last.
        let extra = usize::from(i > 0) + record.len() + 1;
        if body.len() + extra > size {
            break;
        }
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(record.as_bytes());
        i += 1;
    }
    body.push(b']');
    let mut r = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(&body);
    Bytes::from(r)
}

fn small_response() -> Bytes {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
        SMALL.len()
    )
    .into_bytes();
    r.extend_from_slice(SMALL);
    Bytes::from(r)
}

async fn read_more(stream: &mut TcpStream, buf: &mut BytesMut) -> usize {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
    let owned = std::mem::take(buf);
    let (len, cap) = (owned.len(), owned.capacity());
    let (r, slice) = stream.read(owned.slice_mut(len..cap)).await;
    *buf = slice.into_inner();
    r.unwrap_or(0)
}

/// Writes and clears `out` (if anything is in it); false if the peer is gone.
async fn flush(stream: &mut TcpStream, out: &mut BytesMut) -> bool {
    if out.is_empty() {
        return true;
    }
    let (r, o) = stream.write_all(std::mem::take(out)).await;
    *out = o;
    out.clear();
    r.is_ok()
}

async fn connection(mut stream: TcpStream, cache: Rc<RefCell<HashMap<usize, Bytes>>>) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut out = BytesMut::with_capacity(16 * 1024);
    let mut headers = Vec::with_capacity(32);
    let small_response = small_response();
    let ok_response = Bytes::from_static(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n");
    let introspection_answer = Bytes::from_static(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 53\r\n\r\n{\"active\":true,\"sub\":\"loadtest-user\",\"scope\":\"read\"}\n",
    );
    loop {
        // Answer every complete request in the buffer (pipelining), then write once.
        loop {
            let head = match parse_request(&buf, 64 * 1024, 256, &mut headers) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(_) => return,
            };
            let path = head.path.get(&buf);
            let post = head.method_span.get(&buf) == b"POST";
            let introspect = post && path == b"/introspect";
            let size = path
                .strip_prefix(b"/bytes/")
                .and_then(|n| std::str::from_utf8(n).ok()?.parse::<usize>().ok());
            let json_size = path
                .strip_prefix(b"/json/")
                .and_then(|n| std::str::from_utf8(n).ok()?.parse::<usize>().ok());
            let keep = head.keep_alive;
            buf.advance(head.len);
            match head.framing {
                BodyFraming::None => {}
                BodyFraming::Length(n) => {
                    let mut left = n as usize;
                    loop {
                        let take = left.min(buf.len());
                        buf.advance(take);
                        left -= take;
                        if left == 0 {
                            break;
                        }
                        if read_more(&mut stream, &mut buf).await == 0 {
                            return;
                        }
                    }
                }
                BodyFraming::Chunked => {
                    let mut decoder = ChunkedDecoder::new();
                    loop {
                        match decoder.step(&buf) {
                            Err(_) => return,
                            Ok(Step::Skip(n) | Step::Data(n) | Step::ChunkEnd(n)) => buf.advance(n),
                            Ok(Step::ChunkStart { consumed, .. }) => buf.advance(consumed),
                            Ok(Step::End(n)) => {
                                buf.advance(n);
                                break;
                            }
                            Ok(Step::NeedMore) => {
                                if read_more(&mut stream, &mut buf).await == 0 {
                                    return;
                                }
                            }
                        }
                    }
                }
            }
            let body = if introspect {
                introspection_answer.clone()
            } else if post {
                ok_response.clone()
            } else if let Some(n) = json_size.filter(|&n| n <= MAX_BODY) {
                cache
                    .borrow_mut()
                    .entry(n | JSON_KEY)
                    .or_insert_with(|| json_response(n))
                    .clone()
            } else if let Some(n) = size.filter(|&n| n <= MAX_BODY) {
                cache
                    .borrow_mut()
                    .entry(n)
                    .or_insert_with(|| response(n))
                    .clone()
            } else {
                small_response.clone()
            };
            if body.len() > 32 * 1024 {
                if !flush(&mut stream, &mut out).await {
                    return;
                }
                if stream.write_all(body).await.0.is_err() {
                    return;
                }
            } else {
                out.extend_from_slice(&body);
            }
            if !keep {
                // Lingering close, as a real server does: half-close, then
                // wait for the client's close so no reset races our answer.
                let _ = stream.write_all(out).await;
                let _ = monoio::io::AsyncWriteRent::shutdown(&mut stream).await;
                let mut sink = BytesMut::with_capacity(1024);
                while read_more(&mut stream, &mut sink).await > 0 {
                    sink.clear();
                }
                return;
            }
        }
        if !flush(&mut stream, &mut out).await {
            return;
        }
        if read_more(&mut stream, &mut buf).await == 0 {
            return;
        }
    }
}
