#include "net/sniff.h"

#include <strings.h>

#include <cstdint>

namespace ultari::net {
namespace {

using Kind = Sniffed::Kind;

uint32_t be(std::string_view d, size_t off, int bytes) {
  uint32_t v = 0;
  for (int i = 0; i < bytes; ++i) v = v << 8 | static_cast<uint8_t>(d[off + i]);
  return v;
}

// A ClientHello in one TLS record (what every client sends; a hello split
// over records is treated as having no name).
Sniffed tls(std::string_view d) {
  Sniffed s;
  if (d.size() < 5) return s;
  size_t rec = be(d, 3, 2);
  if (d.size() < 5 + rec) {
    if (5 + rec > kMaxHead + 5) s.kind = Kind::Other;
    return s;
  }
  s.kind = Kind::Tls;
  std::string_view h = d.substr(5, rec);
  if (h.size() < 4 || static_cast<uint8_t>(h[0]) != 1) return s;
  size_t hlen = be(h, 1, 3);
  if (h.size() < 4 + hlen) return s;
  size_t off = 4 + 2 + 32;  // version, random
  auto skip = [&](int len_bytes) {
    if (off + len_bytes > h.size()) return false;
    off += len_bytes + be(h, off, len_bytes);
    return off <= h.size();
  };
  if (!skip(1) || !skip(2) || !skip(1)) return s;  // session id, ciphers, compression
  if (off + 2 > h.size()) return s;
  size_t end = off + 2 + be(h, off, 2);
  off += 2;
  if (end > h.size()) return s;
  while (off + 4 <= end) {
    uint32_t type = be(h, off, 2), len = be(h, off + 2, 2);
    off += 4;
    if (off + len > end) return s;
    if (type == 0 && len >= 5) {  // server_name: list, then (type 0, name)
      size_t p = off + 2;
      if (static_cast<uint8_t>(h[p]) == 0) {
        size_t nlen = be(h, p + 1, 2);
        if (p + 3 + nlen <= off + len) s.name = std::string(h.substr(p + 3, nlen));
      }
      return s;
    }
    off += len;
  }
  return s;
}

Sniffed http(std::string_view d) {
  Sniffed s;
  size_t end = d.find("\r\n\r\n");
  if (end == std::string_view::npos) {
    if (d.size() > kMaxHead) s.kind = Kind::Other;
    return s;
  }
  s.kind = Kind::Http;
  s.head_len = end + 4;
  std::string_view head = d.substr(0, s.head_len);
  size_t sp1 = head.find(' ');
  size_t eol = head.find("\r\n");
  size_t sp2 = head.find(' ', sp1 + 1);
  if (sp1 == std::string_view::npos || sp2 == std::string_view::npos || sp2 > eol) {
    s.kind = Kind::Other;
    return s;
  }
  s.method = std::string(head.substr(0, sp1));
  s.target = std::string(head.substr(sp1 + 1, sp2 - sp1 - 1));
  s.name = strip_port(header_value(head, "host"));
  return s;
}

}  // namespace

std::string header_value(std::string_view head, std::string_view name) {
  size_t pos = head.find("\r\n");
  while (pos != std::string_view::npos && pos + 2 < head.size()) {
    size_t start = pos + 2;
    size_t eol = head.find("\r\n", start);
    if (eol == std::string_view::npos || eol == start) break;
    std::string_view line = head.substr(start, eol - start);
    size_t colon = line.find(':');
    if (colon == name.size() && strncasecmp(line.data(), name.data(), name.size()) == 0) {
      std::string_view v = line.substr(colon + 1);
      while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
      while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
      return std::string(v);
    }
    pos = eol;
  }
  return "";
}

std::string strip_port(std::string_view host) {
  if (host.starts_with('[')) {
    size_t close = host.find(']');
    return std::string(host.substr(1, close == std::string_view::npos ? std::string_view::npos : close - 1));
  }
  size_t colon = host.rfind(':');
  if (colon != std::string_view::npos && host.find(':') == colon) host = host.substr(0, colon);
  return std::string(host);
}

Sniffed sniff(std::string_view d) {
  if (d.empty()) return {};
  uint8_t first = static_cast<uint8_t>(d[0]);
  if (first == 0x16) {
    if (d.size() >= 3 && static_cast<uint8_t>(d[1]) != 3) return {Kind::Other};
    return tls(d);
  }
  // An HTTP method: upper-case letters up to the first space.
  for (size_t i = 0; i < d.size() && i < 16; ++i) {
    char c = d[i];
    if (c == ' ') return i > 0 ? http(d) : Sniffed{Kind::Other};
    if (c < 'A' || c > 'Z') return {Kind::Other};
  }
  return d.size() < 16 ? Sniffed{} : Sniffed{Kind::Other};
}

}  // namespace ultari::net
