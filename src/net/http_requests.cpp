#include "net/http_requests.h"

#include <strings.h>

#include <algorithm>
#include <cctype>
#include <string_view>

#include "net/policy.h"
#include "net/sniff.h"
#include "util/error.h"

namespace ultari::net {
namespace {

constexpr size_t kMaxLine = 8192;

// Every value of header `name` in `head`.
std::vector<std::string> header_values(std::string_view head, std::string_view name) {
  std::vector<std::string> out;
  size_t pos = head.find("\r\n");
  while (pos != std::string_view::npos && pos + 2 < head.size()) {
    size_t start = pos + 2;
    size_t eol = head.find("\r\n", start);
    if (eol == std::string_view::npos || eol == start) break;
    std::string_view line = head.substr(start, eol - start);
    size_t colon = line.find(':');
    if (colon != std::string_view::npos) {
      std::string_view key = line.substr(0, colon);
      while (!key.empty() && (key.back() == ' ' || key.back() == '\t')) key.remove_suffix(1);
      if (key.size() == name.size() && strncasecmp(key.data(), name.data(), name.size()) == 0) {
        std::string_view v = line.substr(colon + 1);
        while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
        while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
        out.emplace_back(v);
      }
    }
    pos = eol;
  }
  return out;
}

bool same_name(const std::string& a, const std::string& b) {
  try {
    return normalize_name(a, false) == b;
  } catch (const Error&) {
    return false;
  }
}

// The first byte of a client's first WebSocket frame: a data opcode
// (text, binary; RSV1 allowed for permessage-deflate) or a
// control opcode (close, ping, pong) with FIN and without RSV1; RSV2 and
// RSV3 clear.
bool websocket_first_byte(uint8_t b) {
  uint8_t op = b & 0x0f;
  if (b & 0x30) return false;
  if (op == 1 || op == 2) return true;  // never a continuation (0): nothing to continue yet
  return op >= 8 && op <= 10 && (b & 0x80) && !(b & 0x40);
}

// Where an absolute http:// request line's scheme and authority are
// ("http://user@host:port", the part the origin form drops), and whether
// the authority holds a userinfo; {0, 0} for another form.
struct AbsoluteSpan {
  size_t begin = 0, end = 0;
  bool userinfo = false;
};
AbsoluteSpan absolute_span(std::string_view head) {
  size_t sp = head.find(' ');
  if (sp == std::string_view::npos || head.size() < sp + 8 || strncasecmp(head.data() + sp + 1, "http://", 7) != 0)
    return {};
  size_t end = head.find_first_of("/?# \r", sp + 8);
  if (end == std::string_view::npos) return {};
  return {sp + 1, end, head.substr(sp + 8, end - sp - 8).find('@') != std::string_view::npos};
}

}  // namespace

bool strip_userinfo(std::string& authority) {
  size_t at = authority.find('@');
  if (at == std::string::npos) return true;
  if (authority.find('@', at + 1) != std::string::npos) return false;
  authority.erase(0, at + 1);
  return true;
}

bool HttpRequests::head_done(std::string& why) {
  Sniffed s = sniff(buf_);
  if (s.kind != Sniffed::Kind::Http || !s.malformed.empty()) {
    // HTTP/2 with prior knowledge (unsupported-protocol: hosts are in
    // HPACK), obs-fold...
    why = s.malformed.empty() ? "http-malformed" : s.malformed;
    return false;
  }
  auto hosts = header_values(buf_, "host");
  if (hosts.size() > 1) {
    why = "http-smuggling";
    return false;
  }
  // No name (a proxy request to an address): the framing alone is followed.
  if (!hosts.empty() && !name_.empty() && !same_name(strip_port(hosts[0]), name_)) {
    why = "sni-mismatch";
    return false;
  }
  if (s.target.size() > 7 && strncasecmp(s.target.c_str(), "http://", 7) == 0) {
    size_t end = s.target.find_first_of("/?#", 7);
    std::string authority = s.target.substr(7, end == std::string::npos ? std::string::npos : end - 7);
    if (!strip_userinfo(authority) || (!name_.empty() && !same_name(strip_port(authority), name_))) {
      why = "sni-mismatch";
      return false;
    }
  } else if (s.target.find("://") != std::string::npos) {
    why = "sni-mismatch";
    return false;
  } else if (s.method == "CONNECT" && !name_.empty() && !same_name(strip_port(s.target), name_)) {
    // A CONNECT to the allowed server names where it should go next: the
    // same host only (that server may itself be a proxy).
    why = "sni-mismatch";
    return false;
  }
  auto lengths = header_values(buf_, "content-length");
  auto encodings = header_values(buf_, "transfer-encoding");
  // Both, or lengths that disagree: how would the server frame it?
  if (!encodings.empty() && !lengths.empty()) {
    why = "http-smuggling";
    return false;
  }
  for (const auto& l : lengths)
    if (l != lengths[0] || l.empty() || l.size() > 18 || l.find_first_not_of("0123456789") != std::string::npos) {
      why = "http-smuggling";
      return false;
    }
  upgrade_ = !header_values(buf_, "upgrade").empty() || s.method == "CONNECT";
  connect_ = s.method == "CONNECT";
  buf_.clear();
  line_seen_ = false;
  if (!encodings.empty()) {
    // Exactly "chunked": "xchunked", "chunked, gzip", "gzip, chunked"...
    // are framed differently by different servers.
    if (encodings.size() > 1 || strcasecmp(encodings[0].c_str(), "chunked") != 0) {
      why = "http-smuggling";
      return false;
    }
    state_ = State::ChunkSize;
  } else if (!lengths.empty() && std::stoull(lengths[0]) > 0) {
    left_ = std::stoull(lengths[0]);
    state_ = State::Body;
  } else {
    state_ = upgrade_ ? State::MaybeTunnel : State::Head;
  }
  return true;
}

uint64_t HttpRequests::unseen() const {
  return state_ == State::Body || state_ == State::ChunkData ? left_ : 0;
}

void HttpRequests::skip(uint64_t n) {
  left_ -= std::min(n, left_);
  if (left_ > 0) return;
  if (state_ == State::Body) {
    state_ = upgrade_ ? State::MaybeTunnel : State::Head;
  } else if (state_ == State::ChunkData) {
    state_ = State::ChunkEnd;
    left_ = 2;
  }
}

bool HttpRequests::feed(const char* data, size_t len, std::string& why, std::string* out) {
  size_t i = 0;
  while (i < len) {
    size_t from = i;
    bool head = state_ == State::Head;
    if (!step(data, len, i, why, out)) return false;
    if (out && !head) out->append(data + from, i - from);
  }
  return true;
}

bool HttpRequests::step(const char* data, size_t len, size_t& i, std::string& why, std::string* out) {
  {
    switch (state_) {
      case State::Tunnel:
        i = len;
        return true;
      case State::MaybeTunnel:
        // After an upgrade request the server may switch protocols or go
        // on with HTTP, whose next request is checked like the first. An
        // upper-case letter starts a request; the first byte of a client
        // WebSocket frame (or, after CONNECT, of a TLS record) a tunnel;
        // anything else (a request after whitespace...) is refused.
        if (data[i] >= 'A' && data[i] <= 'Z') {
          state_ = State::Head;
        } else if (websocket_first_byte(static_cast<uint8_t>(data[i])) || (connect_ && data[i] == 0x16)) {
          state_ = State::Tunnel;
        } else {
          why = "http-malformed";
          return false;
        }
        break;
      case State::Head: {
        size_t before = buf_.size();
        if (before == 0 && !(data[i] >= 'A' && data[i] <= 'Z')) {
          why = "http-malformed";  // leading whitespace (skipped by servers), not HTTP
          return false;
        }
        size_t take = std::min(len - i, kMaxHead + 4 - std::min(before, kMaxHead + 4));
        buf_.append(data + i, take);
        size_t end = buf_.find("\r\n\r\n", before >= 3 ? before - 3 : 0);
        // Checked as bytes arrive (the relay passes partial heads on):
        // only the new bytes, and the one before them (a CR at the end).
        size_t limit = end == std::string::npos ? buf_.size() : end + 4;
        for (size_t p = before > 0 ? before - 1 : 0; p < limit; ++p) {
          char c = buf_[p];
          if ((c == '\n' && (p == 0 || buf_[p - 1] != '\r')) || (c == '\r' && p + 1 < limit && buf_[p + 1] != '\n')) {
            why = "http-smuggling";  // bare LF or CR: servers disagree on where lines end
            return false;
          }
        }
        if (!line_seen_) {
          size_t eol = buf_.find("\r\n", before > 0 ? before - 1 : 0);
          if (eol != std::string::npos && eol < limit) {
            line_seen_ = true;
            if (const char* bad = request_line_error(std::string_view(buf_).substr(0, eol))) {
              why = bad;  // HTTP/0.9, a lower-case method, HTTP/2...
              return false;
            }
          }
        }
        if (end == std::string::npos) {
          if (buf_.size() > kMaxHead) {
            why = "http-malformed";
            return false;
          }
          i += take;
          break;
        }
        size_t used = end + 4 - before;  // bytes of this call that belong to the head
        buf_.resize(end + 4);
        i += used;
        std::string complete = out ? buf_ : std::string();
        AbsoluteSpan absolute = absolute_span(buf_);
        if (absolute.userinfo && !out) {
          why = "sni-mismatch";  // a userinfo is passed on only when it can be dropped
          return false;
        }
        if (!head_done(why)) return false;
        if (out) {
          if (absolute.end > 0) {
            // Origin form (RFC 9112 3.2.1: what an origin server is sent),
            // the host checked above; a userinfo never reaches the server.
            std::string authority = complete.substr(absolute.begin + 7, absolute.end - absolute.begin - 7);
            complete.erase(absolute.begin, absolute.end - absolute.begin);
            if (complete[absolute.begin] != '/') complete.insert(absolute.begin, "/");
            // A request without Host (HTTP/1.0) gets the target's (RFC
            // 9112 3.2.2), which is what was checked.
            if (header_values(complete, "host").empty() && strip_userinfo(authority) && !authority.empty())
              complete.insert(complete.find("\r\n") + 2, "Host: " + authority + "\r\n");
          }
          if (on_head && !on_head(complete, why)) return false;
          out->append(complete);
        }
        break;
      }
      case State::Body: {
        uint64_t take = std::min<uint64_t>(left_, len - i);
        left_ -= take;
        i += take;
        if (left_ == 0) state_ = upgrade_ ? State::MaybeTunnel : State::Head;
        break;
      }
      case State::ChunkSize:
      case State::Trailers: {
        char c = data[i++];
        buf_ += c;
        if (buf_.size() > kMaxLine) {
          why = "http-malformed";
          return false;
        }
        if (c != '\n') break;
        if (buf_.size() < 2 || buf_[buf_.size() - 2] != '\r') {
          why = "http-smuggling";  // bare LF: servers disagree on it
          return false;
        }
        std::string line = buf_.substr(0, buf_.size() - 2);
        buf_.clear();
        if (line.find('\r') != std::string::npos) {
          why = "http-smuggling";  // bare CR
          return false;
        }
        if (state_ == State::Trailers) {
          if (line.empty()) {
            state_ = upgrade_ ? State::MaybeTunnel : State::Head;
          } else if (const char* bad = header_line_error(line)) {
            why = bad;  // a request line among the trailers: a server reading one line would see a request
            return false;
          }
          break;
        }
        std::string hex = line.substr(0, line.find(';'));
        while (!hex.empty() && (hex.back() == ' ' || hex.back() == '\t')) hex.pop_back();
        if (hex.empty() || hex.size() > 15 || hex.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos) {
          why = "http-smuggling";
          return false;
        }
        left_ = std::stoull(hex, nullptr, 16);
        state_ = left_ == 0 ? State::Trailers : State::ChunkData;
        break;
      }
      case State::ChunkData: {
        uint64_t take = std::min<uint64_t>(left_, len - i);
        left_ -= take;
        i += take;
        if (left_ == 0) {
          state_ = State::ChunkEnd;
          left_ = 2;
        }
        break;
      }
      case State::ChunkEnd: {
        char c = data[i++];
        if ((left_ == 2 && c != '\r') || (left_ == 1 && c != '\n')) {
          why = "http-smuggling";
          return false;
        }
        if (--left_ == 0) state_ = State::ChunkSize;
        break;
      }
    }
  }
  return true;
}

}  // namespace ultari::net
