DESCRIPTION="1 KiB POST body, keep-alive"
TOOL=wrk
REQUEST_PATH=/api/upload
CONNECTIONS=64
WRK_SCRIPT=post-1k.lua
