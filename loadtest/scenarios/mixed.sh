DESCRIPTION="mixed routes and response sizes (wrk Lua script)"
TOOL=wrk
REQUEST_PATH=/
CONNECTIONS=64
WRK_SCRIPT=mixed.lua
