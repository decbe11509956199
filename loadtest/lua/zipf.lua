-- Requests keys drawn from a Zipf distribution: the URL's path with
-- `?k=RANK` appended, RANK in 1..$ZIPF_KEYS (default 100000) with
-- probability proportional to 1/RANK^$ZIPF_S (default 1.0). Every target
-- sees the same sequence (a fixed seed per wrk thread), so hit ratios and
-- throughput compare like with like.
local counter = 0

setup = function(thread)
    counter = counter + 1
    thread:set("id", counter)
end

local cdf = {}
local keys = tonumber(os.getenv("ZIPF_KEYS") or "100000")

init = function(args)
    local s = tonumber(os.getenv("ZIPF_S") or "1.0")
    local total = 0
    for i = 1, keys do
        total = total + 1 / i ^ s
        cdf[i] = total
    end
    for i = 1, keys do
        cdf[i] = cdf[i] / total
    end
    math.randomseed(4242 + (id or 0))
end

request = function()
    local u = math.random()
    local lo, hi = 1, keys
    while lo < hi do
        local mid = math.floor((lo + hi) / 2)
        if cdf[mid] < u then lo = mid + 1 else hi = mid end
    end
    return wrk.format(nil, wrk.path .. "?k=" .. lo)
end
