-- wrk script: POSTs Digital River callbacks (RemoteLogin or RemoteUserFetch) with HTTP Basic
-- credentials, one seeded user per request in turn, and prints a JSON summary line.
--
-- Environment: BENCH_KIND (login or profile), BENCH_USERS (number of seeded users),
-- BENCH_PASSWORD (their common password), BENCH_AUTHORIZATION (the Authorization header value).
-- User n has login bench-user-<n, 6 digits>@example.com and ERID BENCH-<n, 6 digits>.

local kind = os.getenv("BENCH_KIND") or "login"
local user_count = tonumber(os.getenv("BENCH_USERS") or "100")
local password = os.getenv("BENCH_PASSWORD") or ""
local authorization = os.getenv("BENCH_AUTHORIZATION") or ""

local RUM = "http://integration.digitalriver.com/RemoteUserManagement/1.0"
local COMMON = "http://integration.digitalriver.com/Common/1.0"
local DECLARATIONS = 'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
    .. 'xmlns:xsd="http://www.w3.org/2001/XMLSchema"'

-- Axis 1.x style, as Digital River sends it: prefixed root, unqualified children, nil leaves.
local LOGIN = '<?xml version="1.0" encoding="UTF-8"?>'
    .. '<ns1:LoginRequest xmlns:ns1="' .. RUM .. '" ' .. DECLARATIONS .. '>'
    .. '<userKey xsi:type="ns2:UserKey" xmlns:ns2="' .. COMMON .. '">'
    .. '<userID xsi:nil="true"/><externalReferenceID xsi:nil="true"/>'
    .. '<companyID xsi:nil="true"/>'
    .. '<loginID xsi:type="xsd:string">bench-user-%06d@example.com</loginID>'
    .. '<siteID xsi:nil="true"/></userKey>'
    .. '<password xsi:type="xsd:string">' .. password .. '</password>'
    .. '<extendedAttributes xsi:nil="true"/></ns1:LoginRequest>'

local PROFILE = '<?xml version="1.0" encoding="UTF-8"?>'
    .. '<ns1:GetUserProfileRequest xmlns:ns1="' .. RUM .. '" ' .. DECLARATIONS .. '>'
    .. '<userKey xsi:type="ns2:UserKey" xmlns:ns2="' .. COMMON .. '">'
    .. '<userID xsi:nil="true"/>'
    .. '<externalReferenceID xsi:type="xsd:string">BENCH-%06d</externalReferenceID>'
    .. '<companyID xsi:type="xsd:string">headwtr</companyID><loginID xsi:nil="true"/>'
    .. '<siteID xsi:type="xsd:string">headwtr</siteID></userKey>'
    .. '<sessionToken xsi:nil="true"/><extendedAttributes xsi:nil="true"/>'
    .. '</ns1:GetUserProfileRequest>'

local path, template, success_marker
if kind == "login" then
    path, template, success_marker = "/rum/login", LOGIN, "<successful>true</successful>"
else
    path, template, success_marker = "/rum/user-profile", PROFILE, "<errorMessage></errorMessage>"
end
local headers = {
    ["Content-Type"] = "text/xml; charset=UTF-8",
    ["Authorization"] = authorization,
}

local threads = {}
local thread_count = 0

function setup(thread)
    thread:set("thread_number", thread_count)
    thread_count = thread_count + 1
    table.insert(threads, thread)
end

function init(args)
    -- Threads start far apart in the user list, so they do not hit the same rows together.
    position = (thread_number * 7919) % user_count
    failures = 0
end

function request()
    position = (position + 1) % user_count
    return wrk.format("POST", path, headers, string.format(template, position))
end

function response(status, response_headers, body)
    if status ~= 200 or not string.find(body, success_marker, 1, true) then
        failures = failures + 1
    end
end

function done(summary, latency, requests)
    local failed = 0
    for _, thread in ipairs(threads) do
        failed = failed + thread:get("failures")
    end
    local errors = summary.errors
    io.write(string.format(
        'BENCH_JSON {"requests": %d, "duration_us": %d, "failures": %d, '
            .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
            .. '"latency_us": {"mean": %.1f, "p50": %d, "p90": %d, "p99": %d, "p999": %d, "max": %d}}\n',
        summary.requests, summary.duration, failed,
        errors.connect, errors.read, errors.write, errors.status, errors.timeout,
        latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
        latency:percentile(99.9), latency.max))
end
