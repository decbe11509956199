DESCRIPTION="small GET through a route with a per-client-IP rate limit that never triggers (ringgate-limited) and without (ringgate): the cost of limiting"
TOOL=wrk
REQUEST_PATH=/api/items
CONNECTIONS=64
TARGETS_ONLY="ringgate ringgate-limited"
