#!/usr/bin/env python3
"""Opens N keep-alive connections to a target, sends one request on each and
reads its response (so each connection has been served once), prints
"ready", then holds them open until stdin closes or it is killed."""
import resource
import socket
import sys

host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
want = count + 256
if soft < want:
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
request = b"GET / HTTP/1.1\r\nHost: loadtest\r\n\r\n"
conns = []
for _ in range(count):
    s = socket.create_connection((host, port))
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
