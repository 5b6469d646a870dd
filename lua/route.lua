-- Drop-in replacement for the classic per-request-Redis test.lua:
--
--     location / { content_by_lua_file /path/to/gray/lua/route.lua; }
--
-- Whitelisted clients go to @prod2-grey, everyone else to @prod1 (names and Redis are set with
-- require("gray").configure{...}). The list is in memory: no Redis round trip per request.
return require("gray").route()
