// The little of URLs Ultari reads: "scheme://[user[:password]@]host[:port]/...".
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace ultari {

// The host of a URL ("" when it has no "://", or an IPv6 literal, which
// never matches a name rule).
std::string host_of(const std::string& url);
// The port a URL names after its host (user:password@ skipped), or
// `default_port` when it names none; 0 when what it names is no port
// (1..65535, digits only).
uint16_t port_of(const std::string& url, uint16_t default_port);
// "1".."65535" as a number; 0 when `digits` is no port.
uint16_t port_number(std::string_view digits);

// A URL's user:password@, percent-decoded; both empty when it has none.
struct Userinfo {
  std::string user, password;
  bool present = false;
};
Userinfo userinfo_of(const std::string& url);
// The URL without its user:password@.
std::string without_userinfo(const std::string& url);
// "scheme://host[:port]" of the URL, without user:password@ ("" when it
// has no "://").
std::string origin_of(const std::string& url);
// The URL for messages and logs: a password in it replaced by "***" (a
// user without a password too: that is a token). Errs on hiding: an '@'
// after the authority hides everything from "://" to it.
std::string redacted(const std::string& url);

}  // namespace ultari
