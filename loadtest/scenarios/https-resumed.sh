DESCRIPTION="a new TLS connection per request, resumed from a session ticket (wrk resumes its sessions; ECDSA P-256, TLS 1.3)"
TOOL=wrk
REQUEST_PATH=/
CONNECTIONS=32
HEADER="Connection: close"
TLS=ecdsa
TARGETS_ONLY="ringgate nginx"
