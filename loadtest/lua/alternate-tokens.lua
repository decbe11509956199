-- Sends the tokens in $AUTH_TOKENS (comma-separated) in turn as
-- `Authorization: Bearer`, so that a cache holding one token misses on
-- every request: the cost of verifying a token from scratch.
local tokens = {}
for t in string.gmatch(os.getenv("AUTH_TOKENS") or "", "[^,]+") do
    tokens[#tokens + 1] = t
end
local n = 0

request = function()
    n = n % #tokens + 1
    return wrk.format(nil, nil, { ["Authorization"] = "Bearer " .. tokens[n] })
end
