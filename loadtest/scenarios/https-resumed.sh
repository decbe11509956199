DESCRIPTION="a new TLS connection per request, resumed from a session ticket (oha --disable-keepalive keeps one rustls session cache; TLS 1.3)"
TOOL=oha
OHA_ARGS="--disable-keepalive --insecure"
REQUEST_PATH=/
CONNECTIONS=32
TLS=ecdsa
TARGETS_ONLY="ringgate nginx"
