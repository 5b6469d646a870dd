-- wrk script for a paced load: each connection waits a millisecond between a response and its next
-- request, so with -c64 the gateway gets about half of what it could serve on these cores, the
-- headroom a production gateway runs with; latency is then the request's own, not the queue's.
function delay()
    return 1
end
