DESCRIPTION="16 KiB GET answered from the response cache (ringgate-cache), proxied by the same process (ringgate-proxied), as a direct response (ringgate-direct) and from nginx's proxy_cache (nginx-cache)"
TOOL=wrk
REQUEST_PATH=/c/bytes/16384
PROXIED_PATH=/bytes/16384
DIRECT_PATH=/respond/16k
CONNECTIONS=64
TARGETS_ONLY="ringgate-cache ringgate-proxied ringgate-direct nginx-cache"
