// The sandbox's side of the network: what is set up inside its network
// namespace, from outside, before its command runs.
#pragma once
#include "util/fd.h"

namespace ultari::net {

// Ports of Ultari's listeners on the sandbox's loopback.
inline constexpr int kTransparentPort = 15001;  // every redirected TCP connection
inline constexpr int kHttpProxyPort = 3128;     // HTTP_PROXY / HTTPS_PROXY
inline constexpr int kSocksPort = 1080;         // ALL_PROXY (socks5h)
inline constexpr int kDnsPort = 53;             // every UDP/53 datagram
inline constexpr int kLogGroup = 7;             // NFLOG group of dropped packets

// Sockets that live in the sandbox's network namespace and are served from
// outside it.
struct Endpoints {
  UniqueFd transparent, http_proxy, socks, dns, nflog;
};

// Joins the user and network namespaces of the process behind `pidfd` in a
// short-lived helper process and there: routes every destination to
// loopback, installs the netfilter rules (libnftables) that redirect every
// outbound TCP connection and every DNS datagram to Ultari's listeners and
// drop (and log) everything else that leaves loopback, then opens the
// listeners and hands them back. Throws Error naming the failed step.
Endpoints attach(int pidfd);

}  // namespace ultari::net
