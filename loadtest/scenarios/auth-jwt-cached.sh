DESCRIPTION="small GET with a valid RS256 bearer token through a JWT-protected route (ringgate-auth; the token verified once, then served from the worker's cache) and the same request through an unprotected twin route of the same process (ringgate-open): the cost of authentication"
TOOL=wrk
REQUEST_PATH=/jwt/items
CONNECTIONS=64
HEADER="Authorization: Bearer ${AUTH_TOKEN:-}"
TARGETS_ONLY="ringgate-open ringgate-auth"
