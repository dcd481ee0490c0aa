#include "util/url.h"

namespace ultari {

namespace {

// host[:port] of a URL, its user:password@ off.
std::string authority_of(const std::string& url) {
  auto s = url.find("://");
  if (s == std::string::npos) return "";
  std::string rest = url.substr(s + 3);
  rest = rest.substr(0, rest.find_first_of("/?#"));
  if (auto at = rest.rfind('@'); at != std::string::npos) rest = rest.substr(at + 1);
  return rest;
}

}  // namespace

std::string host_of(const std::string& url) {
  std::string rest = authority_of(url);
  if (!rest.empty() && rest[0] == '[') return "";
  return rest.substr(0, rest.find(':'));
}

uint16_t port_of(const std::string& url, uint16_t default_port) {
  std::string rest = authority_of(url);
  if (!rest.empty() && rest[0] == '[') rest = rest.substr(rest.find(']') == std::string::npos ? rest.size() : rest.find(']') + 1);
  size_t colon = rest.rfind(':');
  return colon == std::string::npos ? default_port : port_number(std::string_view(rest).substr(colon + 1));
}

uint16_t port_number(std::string_view digits) {
  if (digits.empty() || digits.size() > 5 || digits.find_first_not_of("0123456789") != std::string_view::npos) return 0;
  unsigned long n = std::stoul(std::string(digits));
  return n >= 1 && n <= 65535 ? static_cast<uint16_t>(n) : 0;
}

}  // namespace ultari
