#include "net/dns.h"

#include <arpa/inet.h>
#include <poll.h>
#include <sys/random.h>
#include <sys/socket.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>

#include "util/fd.h"

namespace ultari::net::dns {
namespace {

uint16_t be16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }
void put16(std::string& out, uint16_t v) {
  out += static_cast<char>(v >> 8);
  out += static_cast<char>(v & 0xff);
}

// Skips a (possibly compressed) name; 0 on a malformed one.
size_t skip_name(const uint8_t* msg, size_t len, size_t off) {
  for (int guard = 0; off < len && guard < 128; ++guard) {
    uint8_t l = msg[off];
    if (l == 0) return off + 1;
    if ((l & 0xc0) == 0xc0) return off + 2 <= len ? off + 2 : 0;
    if (l & 0xc0) return 0;
    off += 1 + l;
  }
  return 0;
}

void put_name(std::string& out, const std::string& name) {
  size_t start = 0;
  while (start < name.size()) {
    size_t dot = name.find('.', start);
    if (dot == std::string::npos) dot = name.size();
    out += static_cast<char>(dot - start);
    out.append(name, start, dot - start);
    start = dot + 1;
  }
  out += '\0';
}

}  // namespace

std::optional<Question> parse_query(const uint8_t* msg, size_t len) {
  if (len < 12) return std::nullopt;
  uint16_t flags = be16(msg + 2);
  if ((flags & 0x8000) || ((flags >> 11) & 0xf) != 0) return std::nullopt;  // a reply, or not QUERY
  if (be16(msg + 4) != 1) return std::nullopt;
  Question q;
  q.id = be16(msg);
  size_t off = 12;
  while (off < len) {
    uint8_t l = msg[off++];
    if (l == 0) break;
    if (l > 63 || off + l > len) return std::nullopt;  // no compression in a question
    if (!q.name.empty()) q.name += '.';
    for (size_t i = 0; i < l; ++i) {
      char c = static_cast<char>(msg[off + i]);
      if (c == '.' || c == '\0') return std::nullopt;
      q.name += c;
    }
    off += l;
    if (q.name.size() > 253) return std::nullopt;
  }
  if (off + 4 > len || q.name.empty()) return std::nullopt;
  q.type = be16(msg + off);
  q.klass = be16(msg + off + 2);
  q.end = off + 4;
  return q;
}

std::string reply(const uint8_t* query, const Question& q, uint8_t rcode, const std::vector<in_addr>& addrs,
                  uint32_t ttl) {
  std::string out;
  put16(out, q.id);
  uint16_t flags = 0x8000 | (be16(query + 2) & 0x0100) | 0x0080 | rcode;  // QR, RD copied, RA
  put16(out, flags);
  put16(out, 1);
  put16(out, static_cast<uint16_t>(addrs.size()));
  put16(out, 0);
  put16(out, 0);
  out.append(reinterpret_cast<const char*>(query) + 12, q.end - 12);
  for (const auto& a : addrs) {
    put16(out, 0xc00c);  // the name of the question
    put16(out, kTypeA);
    put16(out, 1);
    put16(out, static_cast<uint16_t>(ttl >> 16));
    put16(out, static_cast<uint16_t>(ttl & 0xffff));
    put16(out, 4);
    out.append(reinterpret_cast<const char*>(&a.s_addr), 4);
  }
  return out;
}

Answer resolve_a(const std::string& name, const std::vector<in_addr>& servers, int timeout_ms) {
  Answer result;
  std::string query;
  uint16_t id;
  if (getrandom(&id, sizeof id, 0) != sizeof id) return result;
  put16(query, id);
  put16(query, 0x0100);  // RD
  put16(query, 1);
  put16(query, 0);
  put16(query, 0);
  put16(query, 0);
  put_name(query, name);
  put16(query, kTypeA);
  put16(query, 1);
  for (const auto& server : servers) {
    UniqueFd fd(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!fd) return result;
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(53);
    to.sin_addr = server;
    // connect: replies from any other address are not taken.
    if (connect(fd.get(), reinterpret_cast<sockaddr*>(&to), sizeof to) != 0) continue;
    if (send(fd.get(), query.data(), query.size(), 0) < 0) continue;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      pollfd p{fd.get(), POLLIN, 0};
      if (left.count() <= 0 || poll(&p, 1, static_cast<int>(left.count())) <= 0) break;
      uint8_t buf[4096];
      ssize_t n = recv(fd.get(), buf, sizeof buf, 0);
      if (n < 12) break;
      size_t len = static_cast<size_t>(n);
      if (be16(buf) != id || !(be16(buf + 2) & 0x8000) || be16(buf + 4) != 1) continue;
      // The question must be ours (compared case-insensitively).
      if (len < query.size() || strncasecmp(reinterpret_cast<char*>(buf) + 12, query.data() + 12, query.size() - 12) != 0)
        continue;
      result.rcode = buf[3] & 0x0f;
      size_t off = query.size();
      uint16_t count = be16(buf + 6);
      result.ttl = UINT32_MAX;
      for (uint16_t i = 0; i < count; ++i) {
        off = skip_name(buf, len, off);
        if (off == 0 || off + 10 > len) break;
        uint16_t type = be16(buf + off), klass = be16(buf + off + 2), rdlen = be16(buf + off + 8);
        uint32_t ttl = static_cast<uint32_t>(be16(buf + off + 4)) << 16 | be16(buf + off + 6);
        off += 10;
        if (off + rdlen > len) break;
        // CNAME chains come with their A records in the same answer; A
        // records for the final name are what we connect to.
        if (type == kTypeA && klass == 1 && rdlen == 4) {
          in_addr a;
          std::memcpy(&a.s_addr, buf + off, 4);
          result.addrs.push_back(a);
          result.ttl = std::min(result.ttl, ttl);
        }
        off += rdlen;
      }
      if (result.ttl == UINT32_MAX) result.ttl = 0;
      return result;
    }
  }
  return result;
}

std::vector<in_addr> system_servers() {
  std::vector<in_addr> out;
  std::ifstream in("/etc/resolv.conf");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::string key, value;
    words >> key >> value;
    in_addr a;
    if (key == "nameserver" && inet_pton(AF_INET, value.c_str(), &a) == 1) out.push_back(a);
  }
  if (out.empty()) {
    in_addr a;
    inet_pton(AF_INET, "127.0.0.1", &a);
    out.push_back(a);
  }
  return out;
}

}  // namespace ultari::net::dns
