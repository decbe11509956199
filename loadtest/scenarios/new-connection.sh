DESCRIPTION="a new connection per request (Connection: close)"
TOOL=wrk
REQUEST_PATH=/
CONNECTIONS=32
HEADER="Connection: close"
