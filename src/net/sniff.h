// Learning the name a connection is for from its first bytes: the TLS
// ClientHello's server_name, or an HTTP request's Host header.
#pragma once
#include <string>
#include <string_view>

namespace ultari::net {

struct Sniffed {
  enum class Kind { NeedMore, Other, Tls, Http } kind = Kind::NeedMore;
  std::string name;    // SNI or Host (port removed); empty when absent
  std::string method;  // Http: the request line's method and target
  std::string target;
  size_t head_len = 0; // Http: bytes up to and including the blank line
};

inline constexpr size_t kMaxHead = 16384;
// Classifies `data` (the bytes the client sent so far). NeedMore until a
// TLS record or an HTTP request head is complete (bounded by kMaxHead).
Sniffed sniff(std::string_view data);

// The value of header `name` in an HTTP head (case-insensitive), or "".
std::string header_value(std::string_view head, std::string_view name);
// "host:port" / "[v6]:port" / "host" -> host.
std::string strip_port(std::string_view host);

}  // namespace ultari::net
