DESCRIPTION="a new TLS connection per request, full handshake every time (listeners without resumption; ECDSA P-256, TLS 1.3)"
TOOL=wrk
REQUEST_PATH=/
CONNECTIONS=32
HEADER="Connection: close"
TLS=ecdsa-full
TARGETS_ONLY="ringgate nginx"
