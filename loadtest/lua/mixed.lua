-- Mixed routes: cycles through paths that hit every route of the configs,
-- with different response sizes.
local paths = {
    "/", "/api/users/42", "/api/orders?id=7&expand=items", "/bytes/1024",
    "/", "/api/users/43", "/bytes/4096", "/static/app.js",
}
local i = 0
request = function()
    i = (i % #paths) + 1
    return wrk.format("GET", paths[i])
end
