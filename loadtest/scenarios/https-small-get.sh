DESCRIPTION="HTTPS small GET (12 B), keep-alive, max throughput (ECDSA P-256 certificate, TLS 1.3)"
TOOL=wrk
REQUEST_PATH=/
CONNECTIONS=64
TLS=ecdsa
TARGETS_ONLY="ringgate nginx"
