#include "util/url.h"

#include <algorithm>
#include <cctype>

namespace ultari {

namespace {

// Where the parts of a URL are: the authority is [begin, end), its
// user:password@ (if any) [begin, at]; npos when there is no "://".
struct Span {
  size_t begin = std::string::npos, end = std::string::npos, at = std::string::npos;
  bool has_userinfo() const { return at != std::string::npos; }
};
Span span_of(const std::string& url) {
  Span sp;
  auto s = url.find("://");
  if (s == std::string::npos) return sp;
  sp.begin = s + 3;
  sp.end = std::min(url.find_first_of("/?#", sp.begin), url.size());
  size_t at = url.find_last_of('@', sp.end == sp.begin ? sp.begin : sp.end - 1);
  if (at != std::string::npos && at >= sp.begin && at < sp.end) sp.at = at;
  return sp;
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
  Span sp = span_of(url);
  if (sp.begin == std::string::npos) return "";
  size_t from = sp.has_userinfo() ? sp.at + 1 : sp.begin;
  return url.substr(from, sp.end - from);
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
  Span sp = span_of(url);
  if (!sp.has_userinfo()) return u;
  std::string_view info = std::string_view(url).substr(sp.begin, sp.at - sp.begin);
  size_t colon = info.find(':');
  u.present = true;
  u.user = percent_decoded(info.substr(0, colon));
  if (colon != std::string_view::npos) u.password = percent_decoded(info.substr(colon + 1));
  return u;
}

std::string without_userinfo(const std::string& url) {
  Span sp = span_of(url);
  return sp.has_userinfo() ? url.substr(0, sp.begin) + url.substr(sp.at + 1) : url;
}

std::string origin_of(const std::string& url) {
  Span sp = span_of(url);
  if (sp.begin == std::string::npos) return "";
  return url.substr(0, sp.begin) + authority_of(url);
}

std::string redacted(const std::string& url) {
  Span sp = span_of(url);
  if (sp.begin == std::string::npos) return url;
  if (!sp.has_userinfo()) {
    // No userinfo in the authority; but a password holding an unencoded
    // '/', '?' or '#' ends the authority early (a malformed URL): any '@'
    // further on hides what comes before it.
    size_t later = url.rfind('@');
    if (later == std::string::npos || later < sp.begin) return url;
    return url.substr(0, sp.begin) + "***" + url.substr(later);
  }
  size_t colon = url.find(':', sp.begin);
  if (colon > sp.at) return url.substr(0, sp.begin) + "***" + url.substr(sp.at);  // a user alone: a token
  return url.substr(0, colon + 1) + "***" + url.substr(sp.at);
}

uint16_t port_number(std::string_view digits) {
  if (digits.empty() || digits.size() > 5 || digits.find_first_not_of("0123456789") != std::string_view::npos) return 0;
  unsigned long n = std::stoul(std::string(digits));
  return n >= 1 && n <= 65535 ? static_cast<uint16_t>(n) : 0;
}

}  // namespace ultari
