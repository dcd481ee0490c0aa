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

bool contains_token(std::string v, const char* token) {
  std::transform(v.begin(), v.end(), v.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return v.find(token) != std::string::npos;
}

}  // namespace

bool HttpRequests::head_done(std::string& why) {
  Sniffed s = sniff(buf_);
  if (s.kind != Sniffed::Kind::Http) {
    why = "http-malformed";
    return false;
  }
  if (s.method == "PRI") {  // HTTP/2 with prior knowledge: hosts are in HPACK
    why = "unsupported-protocol";
    return false;
  }
  auto hosts = header_values(buf_, "host");
  if (hosts.size() > 1) {
    why = "http-smuggling";
    return false;
  }
  if (!hosts.empty() && !same_name(strip_port(hosts[0]), name_)) {
    why = "sni-mismatch";
    return false;
  }
  if (s.target.size() > 7 && strncasecmp(s.target.c_str(), "http://", 7) == 0) {
    size_t end = s.target.find_first_of("/?#", 7);
    std::string authority = s.target.substr(7, end == std::string::npos ? std::string::npos : end - 7);
    if (authority.find('@') != std::string::npos || !same_name(strip_port(authority), name_)) {
      why = "sni-mismatch";
      return false;
    }
  } else if (s.target.find("://") != std::string::npos) {
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
  buf_.clear();
  if (!encodings.empty()) {
    if (encodings.size() > 1 || !contains_token(encodings[0], "chunked")) {
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

bool HttpRequests::feed(const char* data, size_t len, std::string& why) {
  size_t i = 0;
  while (i < len) {
    switch (state_) {
      case State::Tunnel:
        return true;
      case State::MaybeTunnel:
        // After an upgrade request the server may switch protocols (a
        // WebSocket: frames never start with an upper-case method) or go
        // on with HTTP, whose next request is checked like the first.
        state_ = (data[i] >= 'A' && data[i] <= 'Z') ? State::Head : State::Tunnel;
        break;
      case State::Head: {
        size_t before = buf_.size();
        size_t take = std::min(len - i, kMaxHead + 4 - std::min(before, kMaxHead + 4));
        buf_.append(data + i, take);
        size_t end = buf_.find("\r\n\r\n", before >= 3 ? before - 3 : 0);
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
        if (!head_done(why)) return false;
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
        if (state_ == State::Trailers) {
          if (line.empty()) state_ = upgrade_ ? State::MaybeTunnel : State::Head;
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
