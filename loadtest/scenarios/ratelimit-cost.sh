DESCRIPTION="small GET through a route with a per-client-IP rate limit that never triggers, per worker (ringgate-limited) and node-wide (ringgate-node), and without one (ringgate): the cost of limiting"
TOOL=wrk
REQUEST_PATH=/api/items
CONNECTIONS=64
TARGETS_ONLY="ringgate ringgate-limited ringgate-node"
