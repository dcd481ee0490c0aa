// Chaining to an upstream HTTP proxy (--net-upstream), for networks where
// the host itself reaches the web only through one. The gateway then
// resolves nothing itself: the sandbox's DNS answers are synthetic
// addresses (198.18.0.0/15, kept per name) that stand for the allowed
// names, and every connection goes through the proxy by name: a CONNECT
// tunnel for TLS and other protocols, absolute-form requests for plain
// HTTP (proxies commonly refuse CONNECT to port 80). The policy is decided
// here first, exactly as without an upstream; the proxy's own rules come
// on top.
#pragma once
#include <netinet/in.h>

#include <cstdint>
#include <string>
#include <string_view>

namespace ultari::net {

struct UpstreamUrl {
  std::string host;  // a name or an IPv4 address
  uint16_t port = 0;
};
// "http://HOST:PORT" (a trailing "/" allowed). Throws Error naming the
// problem: another scheme, no port, credentials in the URL (they would show
// in process listings: --net-upstream-auth takes them), a path.
UpstreamUrl parse_upstream(const std::string& url);

// The Proxy-Authorization value for "user:password": "Basic <base64>".
// Throws Error when there is no colon.
std::string basic_credentials(std::string_view user_password);

// `head`, a complete request head that HttpRequests checked for `name`,
// rewritten into the absolute form a proxy takes: its target becomes
// http://name[:port]/path (an absolute target keeps only its path: the
// authority is the flow's, so no other port can be named), Host becomes
// the flow's name[:port], the sandbox's own Proxy-*, Connection,
// Keep-Alive and Max-Forwards headers go, `auth` (when not empty) is added
// as Proxy-Authorization, and "Connection: close" ends it: one request per
// proxy connection, so no later request rides on what a lenient proxy made
// of this one (the caller refuses a second). False (and `why`) for what a
// proxy would take as more than a request to that host: CONNECT (a tunnel
// to any port), TRACE (answered by the proxy with the request echoed,
// credentials included), Upgrade, the asterisk form.
bool to_proxy_form(std::string& head, const std::string& name, uint16_t port, const std::string& auth,
                   std::string& why);

// The request that opens a tunnel to host:port.
std::string connect_request(const std::string& host, uint16_t port, const std::string& auth);

// The status code of a response head ("HTTP/1.1 200 ..."), or -1.
int response_status(std::string_view head);

// The n-th synthetic address (n from 0; up to kSyntheticCount): 198.18.0.1
// on; network byte order.
inline constexpr uint32_t kSyntheticCount = (1u << 17) - 2;
in_addr synthetic_address(uint32_t n);

}  // namespace ultari::net
