DESCRIPTION="small GET with the JSON access log on (ringgate-log) and off (ringgate): the cost of logging"
TOOL=wrk
REQUEST_PATH=/api/items?page=2
CONNECTIONS=64
TARGETS_ONLY="ringgate ringgate-log"
