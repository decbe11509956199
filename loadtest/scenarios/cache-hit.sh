DESCRIPTION="small GET answered from the response cache (ringgate-cache: a cached route, one hot key), the same request proxied by the same process without the cache (ringgate-proxied), a direct response of the same body from that process (ringgate-direct), and nginx answering from proxy_cache (nginx-cache): what a hit costs"
TOOL=wrk
REQUEST_PATH=/c/api/items
PROXIED_PATH=/api/items
DIRECT_PATH=/respond/small
CONNECTIONS=64
TARGETS_ONLY="ringgate-cache ringgate-proxied ringgate-direct nginx-cache"
