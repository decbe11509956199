#!/usr/bin/env python3
"""Opens N keep-alive connections to a target, sends one request on each and
reads its response (so each connection has been served once), prints
"ready", then holds them open until stdin closes or it is killed.

    idle_conns.py HOST PORT N [--tls]

With --tls each connection is HTTPS (certificate not checked: the suite's
certificates are self-signed)."""
import resource
import socket
import ssl
import sys

args = [a for a in sys.argv[1:] if not a.startswith("--")]
use_tls = "--tls" in sys.argv
host, port, count = args[0], int(args[1]), int(args[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
want = count + 256
if soft < want:
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
context = None
if use_tls:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
request = b"GET / HTTP/1.1\r\nHost: loadtest\r\n\r\n"
conns = []
for _ in range(count):
    s = socket.create_connection((host, port))
    if context is not None:
        s = context.wrap_socket(s, server_hostname="loadtest")
    s.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            sys.exit("target closed an idle connection during setup")
        data += chunk
    conns.append(s)
print("ready", flush=True)
sys.stdin.read()
