#!/usr/bin/env python3
"""What a per-worker share of a circuit-breaker limit does under uneven load.

ringgate enforces `max_requests` per worker, on limit / workers each
(docs/resilience.md). SO_REUSEPORT spreads connections across workers by a
hash, so a burst of exactly `max_requests` concurrent requests is rarely
spread evenly: whatever lands beyond a worker's share waits in the queue
(or, with `max_pending = 0`, is refused) although the process as a whole
is within its limit. This measures how often, for a burst of N requests
against a limit of N, with 2 and 4 workers.

usage: loadtest/breaker_share.py [--rounds 200] [--ringgate target/release/ringgate]
"""

import argparse
import http.server
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

HOLD = 0.2  # seconds each request is held by the upstream


class Slow(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        time.sleep(HOLD)
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port):
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"port {port} did not open")


def one_request(port, results, i):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        results[i] = int(data.split(b" ", 2)[1])
    except OSError:
        results[i] = 0


def run(ringgate, workers, limit, rounds, upstream_port):
    port = free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(
            f'workers = {workers}\nlog_level = "warn"\n[[listeners]]\nbind = "127.0.0.1:{port}"\n'
            f'[upstreams.slow]\nendpoints = ["127.0.0.1:{upstream_port}"]\n'
            f"[upstreams.slow.circuit_breaker]\nmax_requests = {limit}\nmax_pending = 0\n"
            f'[[routes]]\npath_prefix = "/"\nupstream = "slow"\n'
        )
        path = f.name
    gw = subprocess.Popen([ringgate, "run", "-c", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        refused_bursts, refused = 0, 0
        for _ in range(rounds):
            results = [None] * limit
            threads = [threading.Thread(target=one_request, args=(port, results, i)) for i in range(limit)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            n = sum(1 for r in results if r == 503)
            refused += n
            refused_bursts += n > 0
        return refused_bursts / rounds, refused / (rounds * limit)
    finally:
        gw.terminate()
        gw.wait()
        os.unlink(path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--ringgate", default="target/release/ringgate")
    args = ap.parse_args()
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    print(f"# Per-worker shares: bursts of N concurrent requests against max_requests = N, max_pending = 0 ({args.rounds} bursts each)\n")
    print("| workers | N | share per worker | bursts with a 503 | requests refused |")
    print("|---|---|---|---|---|")
    for workers, limit in [(2, 4), (2, 16), (4, 16), (4, 64)]:
        bursts, requests = run(args.ringgate, workers, limit, args.rounds, upstream.server_address[1])
        share = -(-limit // workers)
        print(f"| {workers} | {limit} | {share} | {bursts:.0%} | {requests:.1%} |")


if __name__ == "__main__":
    main()
