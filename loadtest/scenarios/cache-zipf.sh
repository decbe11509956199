DESCRIPTION="small GETs over 100 000 keys drawn Zipf(1.0), through a cache of 8 MiB per process (ringgate-cache; its hit ratio from its metrics) and nginx's proxy_cache of the same size (nginx-cache), against the same keys proxied uncached (ringgate-proxied)"
TOOL=wrk
REQUEST_PATH=/c/api/items
PROXIED_PATH=/api/items
CONNECTIONS=64
WRK_SCRIPT=zipf.lua
TARGETS_ONLY="ringgate-cache ringgate-proxied nginx-cache"
