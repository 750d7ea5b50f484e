//! Upstream response heads, shared by the benches that need them.

/// What OpenAI's API sends with a stream (values made up, sizes alike): 25 fields, 1,287 bytes
/// (rate-limit figures, Cloudflare cookies, tracing ids).
pub const PROVIDER_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\n\
date: Sat, 05 Dec 2026 06:40:00 GMT\r\n\
content-type: text/event-stream; charset=utf-8\r\n\
transfer-encoding: chunked\r\n\
connection: keep-alive\r\n\
access-control-expose-headers: X-Request-ID\r\n\
openai-organization: user-abcdefghijklmnopqrstuvwx\r\n\
openai-processing-ms: 187\r\n\
openai-project: proj_AbCdEfGhIjKlMnOpQrStUvWx\r\n\
openai-version: 2020-10-01\r\n\
x-envoy-upstream-service-time: 191\r\n\
x-ratelimit-limit-requests: 10000\r\n\
x-ratelimit-limit-tokens: 30000000\r\n\
x-ratelimit-remaining-requests: 9999\r\n\
x-ratelimit-remaining-tokens: 29999978\r\n\
x-ratelimit-reset-requests: 6ms\r\n\
x-ratelimit-reset-tokens: 0s\r\n\
x-request-id: req_0123456789abcdef0123456789abcdef\r\n\
strict-transport-security: max-age=31536000; includeSubDomains; preload\r\n\
cf-cache-status: DYNAMIC\r\n\
set-cookie: __cf_bm=AbCdEfGhIjKlMnOpQrStUvWxYz0123456789AbCdEfGh-1733380800-1.0.1.1-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789AbCdEfGhIjKlMnOpQrStUvWxYz0123456789; path=/; expires=Sat, 05-Dec-26 07:10:00 GMT; domain=.api.openai.com; HttpOnly; Secure; SameSite=None\r\n\
x-content-type-options: nosniff\r\n\
set-cookie: _cfuvid=AbCdEfGhIjKlMnOpQrStUvWxYz0123456789.AbCd-1733380800000-0.0.1.1-604800000; path=/; domain=.api.openai.com; HttpOnly; Secure; SameSite=None\r\n\
server: cloudflare\r\n\
cf-ray: 8ec0123456789abc-SJC\r\n\
alt-svc: h3=\":443\"; ma=86400\r\n\
\r\n";

/// Three fields: the load harness's head before 2026-12-05.
pub const MINIMAL_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";
