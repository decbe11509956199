DESCRIPTION="small GET with an API key through a key-protected route (ringgate-auth; 10 000 keys in the file) and the same request through an unprotected twin route of the same process (ringgate-open): the cost of an API-key check"
TOOL=wrk
REQUEST_PATH=/key/items
CONNECTIONS=64
HEADER="X-Api-Key: ${AUTH_KEY:-}"
TARGETS_ONLY="ringgate-open ringgate-auth"
