-- wrk script of `cairn-bench --only wrk`: POST /orders with a create-order body like the
-- harness's own HTTP scenarios send (one item), a different customer per request, and
-- `Authorization: Bearer <token>` with the token in the CAIRN_TOKEN variable.
--
--   CAIRN_TOKEN=cairn_... wrk -t2 -c16 -d10s --latency -s create-order.lua http://127.0.0.1:7070
--
-- At the end it prints one line the harness reads:
--   cairn-wrk requests=N duration_us=D p50_us=X p99_us=Y non2xx=S connect=C read=R write=W timeout=T

-- Customers the orders are spread over (cust-0 .. cust-999).
local CUSTOMERS = 1000
-- Products (prod-0 .. prod-9).
local PRODUCTS = 10

local token = os.getenv("CAIRN_TOKEN")
if token == nil or token == "" then
    error("CAIRN_TOKEN must hold a bearer token (cairn tokens create --role writer)")
end

wrk.method = "POST"
wrk.path = "/orders"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. token

local next_thread = 0

function setup(thread)
    thread:set("thread_id", next_thread)
    next_thread = next_thread + 1
end

local counter = 0

function request()
    counter = counter + 1
    -- Each thread has its own Lua state (and counter): the thread id keeps them apart.
    local i = (thread_id or 0) * 1000003 + counter
    local body = string.format(
        '{"customer_id":"cust-%d","items":[{"product_id":"prod-%d","quantity":2,"price":29.99}]}',
        i % CUSTOMERS, i % PRODUCTS)
    return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
    io.write(string.format(
        "cairn-wrk requests=%d duration_us=%d p50_us=%d p99_us=%d non2xx=%d connect=%d read=%d write=%d timeout=%d\n",
        summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
        summary.errors.status, summary.errors.connect, summary.errors.read,
        summary.errors.write, summary.errors.timeout))
end
