-- Callgrind reference for `make bench`: what gray does on each request except deciding. A module
-- function that reads the client address and jumps, so gray's cost splits into "any Lua router
-- that looks at the client" and "gray's decision" (the FFI call into Rust and the lookup).
local ngx_var = ngx.var
local ngx_exec = ngx.exec

local _M = {}

function _M.route()
    -- Used, as gray uses it, so the JIT cannot drop the read.
    local peer = ngx_var.binary_remote_addr
    if not peer or #peer == 0 then
        return ngx_exec("@prod2-grey")
    end
    return ngx_exec("@prod1")
end

return _M
