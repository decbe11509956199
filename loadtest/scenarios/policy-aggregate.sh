DESCRIPTION="GET answered by aggregating three backend calls (ringgate-aggregate: the stub's 1 KiB JSON three times at once, merged under keys) vs the same 1 KiB JSON proxied once (ringgate-plain), one process: what an aggregate costs against one proxied request"
TOOL=wrk
REQUEST_PATH=/json/1024
CONNECTIONS=64
TARGETS_ONLY="ringgate-plain ringgate-aggregate"
