DESCRIPTION="small GET (12 B), keep-alive, max throughput"
TOOL=wrk
REQUEST_PATH=/
CONNECTIONS=64
