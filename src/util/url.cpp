#include "util/url.h"

#include <cctype>
#include <utility>

namespace ultari {

namespace {

// Where the authority of `url` is: [begin, end); npos when no "://".
std::pair<size_t, size_t> authority_span(const std::string& url) {
  auto s = url.find("://");
  if (s == std::string::npos) return {std::string::npos, std::string::npos};
  size_t begin = s + 3;
  size_t end = url.find_first_of("/?#", begin);
  return {begin, end == std::string::npos ? url.size() : end};
}

std::string percent_decoded(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    auto hex = [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; };
    if (s[i] == '%' && i + 2 < s.size() && hex(s[i + 1]) && hex(s[i + 2])) {
      out.push_back(static_cast<char>(std::stoi(std::string(s.substr(i + 1, 2)), nullptr, 16)));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

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

Userinfo userinfo_of(const std::string& url) {
  Userinfo u;
  auto [begin, end] = authority_span(url);
  if (begin == std::string::npos) return u;
  size_t at = url.rfind('@', end - 1);
  if (at == std::string::npos || at < begin) return u;
  std::string_view info = std::string_view(url).substr(begin, at - begin);
  size_t colon = info.find(':');
  u.present = true;
  u.user = percent_decoded(info.substr(0, colon));
  if (colon != std::string_view::npos) u.password = percent_decoded(info.substr(colon + 1));
  return u;
}

std::string without_userinfo(const std::string& url) {
  auto [begin, end] = authority_span(url);
  if (begin == std::string::npos) return url;
  size_t at = url.rfind('@', end - 1);
  if (at == std::string::npos || at < begin) return url;
  return url.substr(0, begin) + url.substr(at + 1);
}

std::string redacted(const std::string& url) {
  auto [begin, end] = authority_span(url);
  if (begin == std::string::npos) return url;
  size_t at = url.rfind('@', end - 1);
  if (at == std::string::npos || at < begin) {
    // No userinfo in the authority; but a password holding an unencoded
    // '/', '?' or '#' ends the authority early (a malformed URL): any '@'
    // further on hides what comes before it.
    size_t later = url.rfind('@');
    if (later == std::string::npos || later < begin) return url;
    return url.substr(0, begin) + "***" + url.substr(later);
  }
  size_t colon = url.find(':', begin);
  if (colon == std::string::npos || colon > at) return url.substr(0, begin) + "***" + url.substr(at);  // a token
  return url.substr(0, colon + 1) + "***" + url.substr(at);
}

uint16_t port_number(std::string_view digits) {
  if (digits.empty() || digits.size() > 5 || digits.find_first_not_of("0123456789") != std::string_view::npos) return 0;
  unsigned long n = std::stoul(std::string(digits));
  return n >= 1 && n <= 65535 ? static_cast<uint16_t>(n) : 0;
}

}  // namespace ultari
