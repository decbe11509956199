DESCRIPTION="HTTPS small GET while idle TLS keep-alive connections are held open (--idle, default 10 000); reports RSS per idle TLS connection (compare idle-10k for plain HTTP)"
TOOL=wrk
REQUEST_PATH=/
CONNECTIONS=64
HOLD_IDLE=1
TLS=ecdsa
TARGETS_ONLY="ringgate nginx"
