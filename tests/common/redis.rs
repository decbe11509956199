//! A throwaway `redis-server` for the tests that share state between
//! nodes through Redis. `redis-server` comes from Debian's `redis-server`
//! package (.ci/run installs it); without it these tests say so and pass,
//! unless RINGGATE_REQUIRE_REDIS is set (as in CI).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    pub child: Child,
    pub port: u16,
}

/// A redis-server bound to 127.0.0.1 that keeps nothing on disk, with
/// `args` for its ports (and TLS).
pub fn spawn_redis(args: &[&str]) -> Child {
    Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server")
}

impl Redis {
    pub fn start_on(port: u16) -> Redis {
        let child = spawn_redis(&["--port", &port.to_string()]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.write_all(b"PING\r\n");
                let mut buf = [0u8; 16];
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                if matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG")) {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { child, port }
    }

    pub fn start() -> Option<Redis> {
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok();
        if !found {
            assert!(
                std::env::var_os("RINGGATE_REQUIRE_REDIS").is_none(),
                "redis-server is required (apt-get install redis-server)"
            );
            eprintln!("SKIPPED: redis-server is not installed (apt-get install redis-server)");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Some(Redis::start_on(port))
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
