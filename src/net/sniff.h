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
  // Http: non-empty (http-smuggling, http-malformed, unsupported-protocol)
  // when the head must be refused: leading whitespace, a bare LF or CR, a
  // request line that is not `METHOD SP target SP HTTP/1.x` (HTTP/0.9...),
  // obs-fold, whitespace before a header's colon, or no end within
  // kMaxHead. Classified Http all the same (so that the connection is
  // followed and refused, never relayed as opaque); `name` is then the
  // first Host a lenient server would see (lines ended by CRLF, LF or CR;
  // possibly empty), and method, target and head_len are empty (the
  // explicit proxy answers 400).
  std::string malformed;
};

inline constexpr size_t kMaxHead = 16384;
// Classifies `data` (the bytes the client sent so far). NeedMore until a
// TLS record or an HTTP request head is complete (bounded by kMaxHead).
// What starts (after optional SP/HT/CR/LF) with an upper-case method token
// and a space is Http; it is `malformed` as soon as the bytes so far show
// it must be refused (before the head is complete).
Sniffed sniff(std::string_view data);

// Why `line` (without its CRLF) is not a request line the gateway passes:
// nullptr when it is `METHOD SP target SP HTTP/1.<digit>` (METHOD: A-Z,
// then A-Z, '-', '_'; target: no controls or spaces), "unsupported-protocol"
// for HTTP/2's `PRI * HTTP/2.0`, "http-malformed" otherwise.
const char* request_line_error(std::string_view line);
// A header (or trailer) line, without its CRLF, that servers could read
// differently: a name that is not a token, whitespace before the colon,
// control characters in the value. nullptr when fine.
const char* header_line_error(std::string_view line);
// A method character: the first must be an upper-case letter.
inline bool method_char(char c) { return (c >= 'A' && c <= 'Z') || c == '-' || c == '_'; }

// The value of header `name` in an HTTP head (case-insensitive), or "".
std::string header_value(std::string_view head, std::string_view name);
// "host:port" / "[v6]:port" / "host" -> host.
std::string strip_port(std::string_view host);

}  // namespace ultari::net
