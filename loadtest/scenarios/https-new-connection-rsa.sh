DESCRIPTION="a new TLS connection per request, full handshake every time (listeners without resumption; RSA-2048, TLS 1.3)"
TOOL=wrk
REQUEST_PATH=/
CONNECTIONS=32
HEADER="Connection: close"
TLS=rsa-full
TARGETS_ONLY="ringgate nginx"
