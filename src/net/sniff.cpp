#include "net/sniff.h"

#include <cctype>
#include <cstring>

#include <strings.h>

#include <algorithm>
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

bool ws(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

// A LF not after a CR, or a CR not before a LF (a CR at the very end is
// not known yet): servers disagree on where such lines end.
bool bare_eol(std::string_view head) {
  for (size_t p = 0; p < head.size(); ++p) {
    if (head[p] == '\n' && (p == 0 || head[p - 1] != '\r')) return true;
    if (head[p] == '\r' && p + 1 < head.size() && head[p + 1] != '\n') return true;
  }
  return false;
}

// What is wrong with the header lines of a complete head (CRLF lines):
// one that continues the previous one (obs-fold: servers either join it or
// take it as a header of its own), whitespace between a name and its colon
// (servers differ on whether "Host :" is Host).
const char* header_lines_error(std::string_view head) {
  for (size_t pos = head.find("\r\n"); pos != std::string_view::npos && pos + 2 < head.size();) {
    size_t start = pos + 2, eol = head.find("\r\n", start);
    if (eol == std::string_view::npos || eol == start) break;
    std::string_view line = head.substr(start, eol - start);
    if (line[0] == ' ' || line[0] == '\t') return "http-malformed";
    if (const char* bad = header_line_error(line)) return bad;
    pos = eol;
  }
  return nullptr;
}

// The first Host header as the most lenient server would read it: lines
// end at CRLF, LF or CR, the head at the first empty line.
std::string lenient_host(std::string_view d) {
  size_t pos = 0;
  while (pos < d.size() && ws(d[pos])) ++pos;  // leading whitespace
  bool first = true;
  while (pos < d.size()) {
    size_t eol = d.find_first_of("\r\n", pos);
    std::string_view line = d.substr(pos, eol == std::string_view::npos ? std::string_view::npos : eol - pos);
    if (!first && line.empty()) break;
    first = false;
    size_t colon = line.find(':');
    if (colon != std::string_view::npos) {
      std::string_view key = line.substr(0, colon);
      while (!key.empty() && (key.front() == ' ' || key.front() == '\t')) key.remove_prefix(1);
      while (!key.empty() && (key.back() == ' ' || key.back() == '\t')) key.remove_suffix(1);
      if (key.size() == 4 && strncasecmp(key.data(), "host", 4) == 0) {
        std::string_view v = line.substr(colon + 1);
        while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
        while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
        return strip_port(v);
      }
    }
    if (eol == std::string_view::npos) break;
    pos = eol + (d.substr(eol, 2) == "\r\n" ? 2 : 1);
  }
  return "";
}

// `lead`: the whitespace bytes before the method.
Sniffed http(std::string_view d, size_t lead) {
  Sniffed s;
  size_t end = d.find("\r\n\r\n");
  std::string_view head = d.substr(0, end == std::string_view::npos ? d.size() : end + 4);
  const char* why = nullptr;
  if (lead > 0) {
    why = "http-malformed";
  } else if (bare_eol(head)) {
    why = "http-smuggling";
  } else if (size_t eol = head.find("\r\n"); eol != std::string_view::npos && (why = request_line_error(head.substr(0, eol)))) {
  } else if (end == std::string_view::npos) {
    if (d.size() > kMaxHead) why = "http-malformed";  // servers take longer heads: refused, not opaque
  } else {
    why = header_lines_error(head);
  }
  if (why) {
    s.kind = Kind::Http;
    s.malformed = why;
    s.name = lenient_host(d.substr(0, std::min(d.size(), kMaxHead + 8)));
    return s;
  }
  if (end == std::string_view::npos) return s;  // NeedMore
  s.kind = Kind::Http;
  s.head_len = end + 4;
  size_t sp1 = head.find(' ');
  size_t sp2 = head.find(' ', sp1 + 1);
  s.method = std::string(head.substr(0, sp1));
  s.target = std::string(head.substr(sp1 + 1, sp2 - sp1 - 1));
  s.name = strip_port(header_value(head, "host"));
  return s;
}

}  // namespace

const char* header_line_error(std::string_view line) {
  size_t colon = line.find(':');
  if (colon != std::string_view::npos && colon > 0 && (line[colon - 1] == ' ' || line[colon - 1] == '\t'))
    return "http-smuggling";
  // The name a token, the value without control characters but tab: a
  // server that strips "whitespace" such as \v from a name would read
  // another header than we did.
  if (colon == std::string_view::npos || colon == 0) return "http-malformed";
  for (size_t i = 0; i < colon; ++i) {
    unsigned char c = static_cast<unsigned char>(line[i]);
    if (!(std::isalnum(c) || std::strchr("!#$%&'*+-.^_`|~", c))) return "http-smuggling";
  }
  for (size_t i = colon + 1; i < line.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(line[i]);
    if ((c < 0x20 && c != '\t') || c == 0x7f) return "http-smuggling";
  }
  return nullptr;
}


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

const char* request_line_error(std::string_view line) {
  if (line == "PRI * HTTP/2.0") return "unsupported-protocol";  // HTTP/2 with prior knowledge
  size_t sp1 = line.find(' ');
  if (sp1 == 0 || sp1 == std::string_view::npos || line[0] < 'A' || line[0] > 'Z') return "http-malformed";
  for (size_t i = 0; i < sp1; ++i)
    if (!method_char(line[i])) return "http-malformed";
  size_t sp2 = line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || sp2 == sp1 + 1) return "http-malformed";
  for (size_t i = sp1 + 1; i < sp2; ++i) {
    auto c = static_cast<uint8_t>(line[i]);
    if (c <= 0x20 || c == 0x7f) return "http-malformed";
  }
  std::string_view version = line.substr(sp2 + 1);
  if (version.size() != 8 || !version.starts_with("HTTP/1.") || version[7] < '0' || version[7] > '9') return "http-malformed";
  return nullptr;
}

Sniffed sniff(std::string_view d) {
  if (d.empty()) return {};
  uint8_t first = static_cast<uint8_t>(d[0]);
  if (first == 0x16) {
    if (d.size() >= 3 && static_cast<uint8_t>(d[1]) != 3) return {Kind::Other};
    return tls(d);
  }
  // HTTP: a method (an upper-case letter, then upper-case letters, '-' or
  // '_') and a space, possibly after whitespace servers skip (refused).
  size_t lead = 0;
  while (lead < d.size() && ws(d[lead])) ++lead;
  for (size_t i = lead; i < d.size(); ++i) {
    char c = d[i];
    if (c == ' ' && i > lead) return http(d, lead);
    if (!method_char(c) || (i == lead && (c < 'A' || c > 'Z'))) return {Kind::Other};
    if (i > kMaxHead) break;
  }
  if (d.size() <= kMaxHead) return {};  // NeedMore
  // Only whitespace, or a method token longer than a head: nothing sane.
  return lead < d.size() ? Sniffed{Kind::Http, "", "", "", 0, "http-malformed"} : Sniffed{Kind::Other};
}

}  // namespace ultari::net
