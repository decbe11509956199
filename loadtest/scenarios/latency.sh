DESCRIPTION="latency percentiles at a fixed rate every target sustains (oha -q, corrected for coordinated omission)"
TOOL=oha
REQUEST_PATH=/
CONNECTIONS=64
FIXED_RATE=1   # uses --rate (default 20000 req/s)
