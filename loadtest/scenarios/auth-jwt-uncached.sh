DESCRIPTION="small GET with two RS256 bearer tokens in turn through a JWT route whose cache holds one (ringgate-auth: every request verifies a signature) and through an unprotected twin route of the same process (ringgate-open): what an unseen token costs"
TOOL=wrk
REQUEST_PATH=/jwt-fresh/items
CONNECTIONS=64
WRK_SCRIPT=alternate-tokens.lua
TARGETS_ONLY="ringgate-open ringgate-auth"
