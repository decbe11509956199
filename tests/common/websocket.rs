//! RFC 6455 for tests: a WebSocket echo upstream (handshake with a real
//! `Sec-WebSocket-Accept`, text and binary echoed, ping answered with pong,
//! close answered with close) and a client that frames and masks.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
pub fn accept_key(key: &str) -> String {
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{GUID}").as_bytes(),
    );
    base64(digest.as_ref())
}

pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// One frame: FIN set, `mask` for a client's.
pub fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
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
    out
}

/// Reads one frame: (opcode, payload unmasked, was masked); `None` at
/// end of stream.
pub fn read_frame(r: &mut impl Read) -> Option<(u8, Vec<u8>, bool)> {
    let mut h = [0u8; 2];
    r.read_exact(&mut h).ok()?;
    let opcode = h[0] & 0x0f;
    let masked = h[1] & 0x80 != 0;
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).ok()?;
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            r.read_exact(&mut b).ok()?;
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    let mut key = [0u8; 4];
    if masked {
        r.read_exact(&mut key).ok()?;
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).ok()?;
    if masked {
        payload
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b ^= key[i % 4]);
    }
    Some((opcode, payload, masked))
}

/// A WebSocket echo server. A request without `Upgrade: websocket` gets
/// `426 Upgrade Required`; one to `/refuse` gets `403`.
pub struct WsUpstream {
    pub addr: SocketAddr,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
    /// Heads of the requests received, as text.
    pub heads: Arc<std::sync::Mutex<Vec<String>>>,
}

impl WsUpstream {
    pub fn start() -> WsUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, h) = (connections.clone(), heads.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let h = h.clone();
                std::thread::spawn(move || serve(stream, h));
            }
        });
        WsUpstream {
            addr,
            connections,
            heads,
        }
    }

    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, heads: Arc<std::sync::Mutex<Vec<String>>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        heads.lock().unwrap().push(head.clone());
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let upgrade = header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
        if head.lines().next().is_some_and(|l| l.contains("/refuse ")) {
            let _ = writer.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 7\r\n\r\nrefused");
            continue;
        }
        if !upgrade {
            let _ = writer.write_all(
                b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 13\r\n\r\nnot websocket",
            );
            continue;
        }
        let key = header("sec-websocket-key").unwrap_or_default();
        let hello = frame(TEXT, b"welcome", None);
        // The 101 and a first frame in one write: the gateway must pass on
        // bytes that arrive with the head.
        let mut out = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\nX-Upstream: ws\r\n\r\n",
            accept_key(&key)
        )
        .into_bytes();
        out.extend_from_slice(&hello);
        if writer.write_all(&out).is_err() {
            return;
        }
        while let Some((opcode, payload, _)) = read_frame(&mut reader) {
            let reply = match opcode {
                PING => frame(PONG, &payload, None),
                CLOSE => {
                    let _ = writer.write_all(&frame(CLOSE, &payload, None));
                    let _ = writer.shutdown(std::net::Shutdown::Write);
                    // Wait for the client's end of the TCP connection.
                    let mut rest = Vec::new();
                    let _ = reader.read_to_end(&mut rest);
                    return;
                }
                _ => frame(opcode, &payload, None),
            };
            if writer.write_all(&reply).is_err() {
                return;
            }
        }
        return;
    }
}

/// A client's side: the handshake through `addr` to `path`.
pub struct WsClient {
    pub stream: TcpStream,
    /// The 101's head, as text.
    pub head: String,
    reader: BufReader<TcpStream>,
}

pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

impl WsClient {
    /// Sends the upgrade request; returns the client once a 101 arrived,
    /// or the status line and head of any other answer.
    pub fn connect(addr: SocketAddr, path: &str, extra: &str) -> Result<WsClient, String> {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let mut w = stream.try_clone().unwrap();
        w.write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return Err(format!("closed after {head:?}"));
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        if !head.starts_with("HTTP/1.1 101") {
            return Err(head);
        }
        Ok(WsClient {
            stream,
            head,
            reader,
        })
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    pub fn send(&mut self, opcode: u8, payload: &[u8]) -> bool {
        self.stream
            .write_all(&frame(opcode, payload, Some([0x12, 0x34, 0x56, 0x78])))
            .is_ok()
    }

    pub fn recv(&mut self) -> Option<(u8, Vec<u8>)> {
        read_frame(&mut self.reader).map(|(op, payload, masked)| {
            assert!(!masked, "a server's frames are not masked");
            (op, payload)
        })
    }

    /// Whether the gateway ends the connection (EOF or reset) within
    /// `limit`, discarding anything before it.
    pub fn closed_within(&mut self, limit: Duration) -> bool {
        self.stream.set_read_timeout(Some(limit)).unwrap();
        let mut b = [0u8; 4096];
        let start = std::time::Instant::now();
        loop {
            match self.reader.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return false;
                }
                Err(_) => return true,
            }
            if start.elapsed() > limit {
                return false;
            }
        }
    }
}
