DESCRIPTION="GET of a 16 KiB JSON answer through twin routes of one process: uncompressed (ringgate-plain), gzip (ringgate-gzip, level 4) and brotli (ringgate-br, quality 4), the client accepting both: what compression costs in CPU per KiB of body"
TOOL=wrk
REQUEST_PATH=/json/16384
CONNECTIONS=64
HEADER="Accept-Encoding: gzip, br"
BODY_KIB=16
TARGETS_ONLY="ringgate-plain ringgate-gzip ringgate-br"
