//! `ringgate-wsbench`: the WebSocket load test's two ends (loadtest/websocket.sh).
//!
//! ```text
//! ringgate-wsbench serve ADDR
//!     an RFC 6455 echo server, a thread per connection
//! ringgate-wsbench drive ADDR --connections N --duration SECS --size BYTES
//!     N tunnels, each sending a masked message and waiting for its echo,
//!     over and over; prints `messages=M seconds=S p50_us=.. p99_us=..`
//! ringgate-wsbench hold ADDR --connections N
//!     opens N tunnels, prints `ready`, holds them idle until stdin closes
//! ```
//!
//! Blocking sockets and plain threads: simple, and the same client for
//! every target, so ratios between targets are fair.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.trim_end_matches('s').parse().ok())
            .unwrap_or(default)
    };
    let (Some(mode), Some(addr)) = (args.first(), args.get(1)) else {
        eprintln!(
            "usage: ringgate-wsbench serve|drive|hold ADDR [--connections N] [--duration S] [--size B]"
        );
        std::process::exit(2);
    };
    let Ok(addr) = addr.parse::<SocketAddr>() else {
        eprintln!("ringgate-wsbench: `{addr}` is not ADDR:PORT");
        std::process::exit(2);
    };
    match mode.as_str() {
        "serve" => serve(addr),
        "drive" => drive(
            addr,
            flag("--connections", 64) as usize,
            Duration::from_secs(flag("--duration", 10)),
            flag("--size", 128) as usize,
        ),
        "hold" => hold(addr, flag("--connections", 1000) as usize),
        other => {
            eprintln!("ringgate-wsbench: unknown mode {other}");
            std::process::exit(2);
        }
    }
}

fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>, out: &mut Vec<u8>) {
    out.clear();
    out.push(0x80 | opcode);
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 0xffff => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
}

/// Reads one frame into `payload` (unmasked); the opcode, or `None` at
/// end of stream.
fn read_frame(r: &mut impl Read, payload: &mut Vec<u8>) -> Option<u8> {
    let mut h = [0u8; 2];
    r.read_exact(&mut h).ok()?;
    let masked = h[1] & 0x80 != 0;
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).ok()?;
            usize::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            r.read_exact(&mut b).ok()?;
            u64::from_be_bytes(b) as usize
        }
        n => usize::from(n),
    };
    let mut key = [0u8; 4];
    if masked {
        r.read_exact(&mut key).ok()?;
    }
    payload.resize(len, 0);
    r.read_exact(payload).ok()?;
    if masked {
        payload
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b ^= key[i % 4]);
    }
    Some(h[0] & 0x0f)
}

fn read_head(r: &mut impl BufRead) -> Option<String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        head.push_str(&line);
        if line == "\r\n" {
            return Some(head);
        }
    }
}

fn serve(addr: SocketAddr) {
    let listener = TcpListener::bind(addr).expect("bind");
    println!("serving on {addr}");
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        std::thread::spawn(move || {
            let _ = stream.set_nodelay(true);
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut writer = stream;
            if read_head(&mut reader).is_none() {
                return;
            }
            // The accept key is the client's to check; this bench's client
            // does not, so a fixed one keeps the server free of SHA-1.
            if writer
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
                .is_err()
            {
                return;
            }
            let (mut payload, mut out) = (Vec::new(), Vec::new());
            while let Some(opcode) = read_frame(&mut reader, &mut payload) {
                if opcode == 0x8 {
                    frame(0x8, &payload, None, &mut out);
                    let _ = writer.write_all(&out);
                    return;
                }
                frame(
                    if opcode == 0x9 { 0xA } else { opcode },
                    &payload,
                    None,
                    &mut out,
                );
                if writer.write_all(&out).is_err() {
                    return;
                }
            }
        });
    }
}

fn handshake(addr: SocketAddr) -> std::io::Result<(TcpStream, BufReader<TcpStream>)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    stream.write_all(b"GET /ws/bench HTTP/1.1\r\nHost: loadtest\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")?;
    let mut reader = BufReader::new(stream.try_clone()?);
    match read_head(&mut reader) {
        Some(h) if h.starts_with("HTTP/1.1 101") => Ok((stream, reader)),
        other => Err(std::io::Error::other(format!("no 101: {other:?}"))),
    }
}

fn drive(addr: SocketAddr, connections: usize, duration: Duration, size: usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || -> (u64, Vec<u32>) {
                let Ok((mut stream, mut reader)) = handshake(addr) else {
                    return (0, Vec::new());
                };
                let message = vec![b'x'; size];
                let (mut out, mut payload) = (Vec::new(), Vec::new());
                let mut latencies = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    frame(0x2, &message, Some([1, 2, 3, 4]), &mut out);
                    let t = Instant::now();
                    if stream.write_all(&out).is_err() {
                        break;
                    }
                    if read_frame(&mut reader, &mut payload) != Some(0x2) || payload.len() != size {
                        break;
                    }
                    latencies.push(t.elapsed().as_micros() as u32);
                    n += 1;
                }
                (n, latencies)
            })
        })
        .collect();
    let started = Instant::now();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut all = Vec::new();
    for t in threads {
        let (n, l) = t.join().unwrap_or_default();
        total += n;
        all.extend(l);
    }
    let seconds = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "messages={total} seconds={seconds:.3} rate={:.0} p50_us={} p99_us={}",
        total as f64 / seconds,
        pct(0.50),
        pct(0.99)
    );
}

fn hold(addr: SocketAddr, connections: usize) {
    let mut held = Vec::with_capacity(connections);
    for _ in 0..connections {
        match handshake(addr) {
            Ok(pair) => held.push(pair),
            Err(e) => {
                eprintln!("hold: {e}");
                break;
            }
        }
    }
    println!("ready {}", held.len());
    let _ = std::io::stdout().flush();
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
}
