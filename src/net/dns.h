// DNS messages: the sandbox-side responder's parsing and answers, and the
// host-side stub resolver the proxy uses (A records over UDP).
#pragma once
#include <netinet/in.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace ultari::net::dns {

inline constexpr uint16_t kTypeA = 1;
inline constexpr uint16_t kTypeAAAA = 28;
inline constexpr uint8_t kNoError = 0, kServFail = 2, kNxDomain = 3, kNotImp = 4, kRefused = 5;

struct Question {
  uint16_t id = 0;
  std::string name;  // as asked, without the trailing dot
  uint16_t type = 0;
  uint16_t klass = 0;
  size_t end = 0;    // offset just past the question section
};
// A standard query with exactly one question; nothing otherwise.
std::optional<Question> parse_query(const uint8_t* msg, size_t len);
// The reply to `query`: its question, then one A record per address.
std::string reply(const uint8_t* query, const Question& q, uint8_t rcode, const std::vector<in_addr>& addrs,
                  uint32_t ttl);

struct Answer {
  uint8_t rcode = kServFail;
  std::vector<in_addr> addrs;
  uint32_t ttl = 0;
};
// Asks `servers` in turn (UDP port 53), each for up to timeout_ms.
Answer resolve_a(const std::string& name, const std::vector<in_addr>& servers, int timeout_ms);
// nameserver lines of /etc/resolv.conf (IPv4); 127.0.0.1 when none.
std::vector<in_addr> system_servers();

}  // namespace ultari::net::dns
