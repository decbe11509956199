DESCRIPTION="small GET at full load through a node-wide limit (20 000/s, burst 2 000) the load exceeds: requests admitted against the limit's allowance over the run (429s expected)"
TOOL=wrk
REQUEST_PATH=/api/items
CONNECTIONS=64
TARGETS_ONLY="ringgate-capped"
LIMITED=1
