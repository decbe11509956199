DESCRIPTION="small GET with an opaque bearer token through an introspection-protected route (ringgate-auth; the token introspected once per worker at the stub's /introspect, then served from the worker's cache) and the same request through an unprotected twin route of the same process (ringgate-open): the cost of a cached introspection"
TOOL=wrk
REQUEST_PATH=/opaque/items
CONNECTIONS=64
HEADER="Authorization: Bearer opaque-loadtest-token"
TARGETS_ONLY="ringgate-open ringgate-auth"
