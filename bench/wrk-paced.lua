-- wrk script for a paced load (`make bench`, rebuild): each connection waits 1 ms between a
-- response and its next request, so with -c64 the gateway gets a fraction of what it could serve
-- and keeps CPU to spare, as a production gateway does. wrk's timers tick in milliseconds, so
-- requests leave in bursts and p50 includes that queue; compare p99 quiet against p99 swapping.
function delay()
    return 1
end
