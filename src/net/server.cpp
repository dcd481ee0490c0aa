#include "net/server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_log.h>
#include <linux/netfilter_ipv4.h>
#include <linux/netlink.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <netinet/ip6.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>

#include "net/dlp.h"
#include "net/dns.h"
#include "net/http_requests.h"
#include "net/policy.h"
#include "net/sniff.h"
#include "net/tls.h"
#include "net/upstream.h"
#include "util/error.h"

namespace ultari::net {
namespace {

using Clock = std::chrono::steady_clock;
enum Kind { kTransparent, kHttpProxy, kSocks };
constexpr int kMaxActive = 256;        // connections and queries served at once
constexpr auto kWorkerLinger = std::chrono::seconds(10);  // an idle worker waits this long for more
constexpr int kHeadTimeoutMs = 10000;  // for a client to say what it wants
constexpr int kFirstByteMs = 1000;     // silence: a protocol where the server speaks first
constexpr int kConnectTimeoutMs = 10000;
constexpr int kResolveTimeoutMs = 2500;
constexpr size_t kMaxRemembered = 65536;  // addresses whose names the gateway keeps
constexpr int kPipeBytes = 1 << 20;  // the default pipe-max-size
constexpr size_t kScratchBytes = 256 << 10;  // one read of an inspected direction

std::string ip_str(in_addr a) {
  char buf[INET_ADDRSTRLEN];
  inet_ntop(AF_INET, &a, buf, sizeof buf);
  return buf;
}

int64_t ms_since(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count();
}

void block_signals() {
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, nullptr);
}

// Waits for `fd` (or the stop eventfd); false on timeout or stop.
bool wait_fd(int fd, short events, int stop, int timeout_ms) {
  pollfd p[2] = {{fd, events, 0}, {stop, POLLIN, 0}};
  int n = poll(p, 2, timeout_ms);
  return n > 0 && !p[1].revents && p[0].revents;
}

bool send_all(int fd, std::string_view data, int stop) {
  while (!data.empty()) {
    ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n > 0) {
      data.remove_prefix(static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno != EAGAIN && errno != EINTR) return false;
    if (!wait_fd(fd, POLLOUT, stop, kHeadTimeoutMs)) return false;
  }
  return true;
}

bool recv_exact(int fd, void* buf, size_t len, int stop) {
  auto* p = static_cast<char*>(buf);
  while (len > 0) {
    if (!wait_fd(fd, POLLIN, stop, kHeadTimeoutMs)) return false;
    ssize_t n = recv(fd, p, len, 0);
    if (n <= 0) {
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      return false;
    }
    p += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

// Peeks at what the client sent until its first TLS record or HTTP head is
// complete. A client that stays silent for kFirstByteMs is one waiting for
// the server (ssh, smtp): Other.
Sniffed peek_sniff(int fd, int stop, int first_byte_ms = kFirstByteMs) {
  auto start = Clock::now();
  char buf[kMaxHead + 8];
  size_t have = 0;
  for (;;) {
    int wait = have == 0 ? first_byte_ms : static_cast<int>(std::max<int64_t>(0, kHeadTimeoutMs - ms_since(start)));
    if (!wait_fd(fd, POLLIN, stop, wait)) return Sniffed{Sniffed::Kind::Other};
    ssize_t n = recv(fd, buf, sizeof buf, MSG_PEEK);
    if (n <= 0) {
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      return Sniffed{Sniffed::Kind::Other};
    }
    if (static_cast<size_t>(n) == have) {
      // Nothing new yet: wait a little for the rest of the head, unless
      // the client has finished sending (it closed with half a head).
      pollfd s[2] = {{stop, POLLIN, 0}, {fd, POLLRDHUP, 0}};
      if (poll(s, 2, 5) > 0 && (s[0].revents || (s[1].revents & (POLLRDHUP | POLLHUP | POLLERR))))
        return Sniffed{Sniffed::Kind::Other};
      if (ms_since(start) > kHeadTimeoutMs) return Sniffed{Sniffed::Kind::Other};
      continue;
    }
    have = static_cast<size_t>(n);
    Sniffed s = sniff(std::string_view(buf, have));
    if (s.kind != Sniffed::Kind::NeedMore) return s;
  }
}

// A non-blocking connect under way (or none, and `error`).
UniqueFd start_connect(in_addr addr, uint16_t port, std::string& error) {
  UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) {
    error = std::string("socket: ") + std::strerror(errno);
    return fd;
  }
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(port);
  to.sin_addr = addr;
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&to), sizeof to) != 0 && errno != EINPROGRESS) {
    error = std::string("connect: ") + std::strerror(errno);
    return UniqueFd();
  }
  return fd;
}

// Waits for start_connect's connection: the fd, still non-blocking, or none.
UniqueFd finish_connect(UniqueFd fd, int stop, std::string& error) {
  if (!fd) return fd;
  if (!wait_fd(fd.get(), POLLOUT, stop, kConnectTimeoutMs)) {
    error = "connect: timed out";
    return UniqueFd();
  }
  int err = 0;
  socklen_t len = sizeof err;
  getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
  if (err != 0) {
    error = std::string("connect: ") + std::strerror(err);
    return UniqueFd();
  }
  return fd;
}

UniqueFd connect_to(in_addr addr, uint16_t port, int stop, std::string& error) {
  return finish_connect(start_connect(addr, port, error), stop, error);
}

// Sees what goes from a to b before it is passed on; false stops the relay.
// `unseen`, when set, says how many of the next bytes need not be seen
// (an HTTP body when only the framing is followed): those are spliced, and
// reported to `skipped`.
struct Inspect {
  // The bytes to pass on go to `out` (they may be held back or rewritten).
  std::function<bool(const char*, size_t, std::string& out)> see;
  std::function<uint64_t()> unseen;
  std::function<void(uint64_t)> skipped;
  explicit operator bool() const { return static_cast<bool>(see); }
};

// Copies both ways until both sides are done (or stop): with splice, or,
// for a direction that is inspected, through a buffer in user space.
void relay(int a, int b, int stop, uint64_t& a_to_b, uint64_t& b_to_a, const Inspect& inspect = {}) {
  struct Dir {
    int from, to;
    int pipe[2] = {-1, -1};
    size_t queued = 0;
    bool eof = false;
    uint64_t* bytes;
    bool shut = false;
    const Inspect* inspect = nullptr;
    std::string buf;  // inspected bytes not yet written (buf.size() - queued written)
    bool spliced = false;  // what is queued is in the pipe (unseen bytes)
    size_t cap = 0;        // the pipe's size
  } dirs[2] = {{a, b, {-1, -1}, 0, false, &a_to_b}, {b, a, {-1, -1}, 0, false, &b_to_a}};
  if (inspect) dirs[0].inspect = &inspect;
  // A worker keeps its two pipes for its next connection (a relay that
  // ended with bytes still queued closes that pipe instead): four syscalls
  // fewer per connection, and the 1 MiB sizing is done once.
  struct Pipes {
    int fd[2][2] = {{-1, -1}, {-1, -1}};
    // What each holds: less than kPipeBytes when it could not be grown (all
    // of a gateway's relays share its uid's budget of pipe memory, and a
    // rootless gateway's is the caller's).
    size_t cap[2] = {0, 0};
    ~Pipes() {
      for (auto& p : fd)
        for (int f : p)
          if (f >= 0) close(f);
    }
  };
  thread_local Pipes kept;
  for (int i = 0; i < 2; ++i) {
    int* p = kept.fd[i];
    if (p[0] < 0) {
      if (pipe2(p, O_CLOEXEC | O_NONBLOCK) != 0) return;
      fcntl(p[1], F_SETPIPE_SZ, kPipeBytes);
      int cap = fcntl(p[1], F_GETPIPE_SZ);
      kept.cap[i] = cap > 0 ? static_cast<size_t>(cap) : 4096;
    }
    dirs[i].cap = kept.cap[i];
    dirs[i].pipe[0] = p[0];
    dirs[i].pipe[1] = p[1];
  }
  // a and b are non-blocking already (accept4, start_connect).
  std::unique_ptr<char[]> scratch;  // what an inspected direction reads into
  bool broken = false;
  while (!broken && !(dirs[0].eof && dirs[0].queued == 0 && dirs[1].eof && dirs[1].queued == 0)) {
    pollfd p[3] = {{a, 0, 0}, {b, 0, 0}, {stop, POLLIN, 0}};
    for (auto& d : dirs) {
      pollfd& from = p[d.from == a ? 0 : 1];
      pollfd& to = p[d.to == a ? 0 : 1];
      if (d.queued > 0) to.events |= POLLOUT;
      if (!d.eof && (d.inspect ? d.queued == 0 : d.queued < d.cap)) from.events |= POLLIN;
    }
    if (poll(p, 3, -1) < 0 && errno != EINTR) break;
    if (p[2].revents) break;
    // Move as much as both sides take before polling again.
    for (auto& d : dirs) {
      for (bool moved = true; moved && !broken;) {
        moved = false;
        if (d.inspect && d.queued == 0) {
          // Between inspected and unseen bytes: which come next?
          uint64_t unseen = d.inspect->unseen ? d.inspect->unseen() : 0;
          d.spliced = unseen > 0;
          if (d.spliced && !d.eof) {
            ssize_t n = splice(d.from, nullptr, d.pipe[1], nullptr, std::min<uint64_t>(unseen, d.cap),
                               SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n > 0) {
              d.queued = static_cast<size_t>(n);
              d.inspect->skipped(static_cast<uint64_t>(n));
              moved = true;
            } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
              d.eof = true;
            }
          }
        }
        if (d.inspect && !d.spliced) {
          if (!d.eof && d.queued == 0) {
            // Not d.buf: growing a string zero-fills it, on every read.
            if (!scratch) scratch = std::make_unique_for_overwrite<char[]>(kScratchBytes);
            ssize_t n = recv(d.from, scratch.get(), kScratchBytes, 0);
            if (n > 0) {
              moved = true;
              d.buf.clear();
              if (!d.inspect->see(scratch.get(), static_cast<size_t>(n), d.buf)) {
                broken = true;
                break;
              }
              d.queued = d.buf.size();
            } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
              d.eof = true;
            }
          }
          if (d.queued > 0) {
            ssize_t n = send(d.to, d.buf.data() + (d.buf.size() - d.queued), d.queued, MSG_NOSIGNAL);
            if (n > 0) {
              d.queued -= static_cast<size_t>(n);
              *d.bytes += static_cast<uint64_t>(n);
              moved = true;
            } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
              broken = true;
            }
          }
          if (d.eof && d.queued == 0 && !d.shut) {
            shutdown(d.to, SHUT_WR);
            d.shut = true;
          }
          continue;
        }
        if (!d.inspect && !d.eof && d.queued < d.cap) {
          ssize_t n = splice(d.from, nullptr, d.pipe[1], nullptr, d.cap - d.queued,
                             SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
          if (n > 0) {
            d.queued += static_cast<size_t>(n);
            moved = true;
          } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
            d.eof = true;
          }
        }
        if (d.queued > 0) {
          ssize_t n = splice(d.pipe[0], nullptr, d.to, nullptr, d.queued, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
          if (n > 0) {
            d.queued -= static_cast<size_t>(n);
            *d.bytes += static_cast<uint64_t>(n);
            moved = true;
          } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
            broken = true;  // the receiver is gone
          }
        }
        if (d.eof && d.queued == 0 && !d.shut) {
          shutdown(d.to, SHUT_WR);
          d.shut = true;
        }
      }
    }
  }
  for (int i = 0; i < 2; ++i)
    if (dirs[i].queued > 0) {
      close(kept.fd[i][0]);
      close(kept.fd[i][1]);
      kept.fd[i][0] = kept.fd[i][1] = -1;
    }
}

// Completes a TLS handshake on a non-blocking socket.
bool handshake(tls::Conn& c, int fd, int stop) {
  for (;;) {
    switch (c.handshake()) {
      case tls::Conn::kOk: return true;
      case tls::Conn::kWantRead:
        if (!wait_fd(fd, POLLIN, stop, kHeadTimeoutMs)) return false;
        break;
      case tls::Conn::kWantWrite:
        if (!wait_fd(fd, POLLOUT, stop, kHeadTimeoutMs)) return false;
        break;
      default: return false;
    }
  }
}

// relay() for two terminated TLS connections: plaintext from the sandbox
// (a) goes through `inspect` to the server (b), the answers back as they
// are. Until both sides are done, or stop, or `inspect` refuses.
void relay_tls(tls::Conn& a, int afd, tls::Conn& b, int bfd, int stop, uint64_t& a_to_b, uint64_t& b_to_a,
               const Inspect& inspect) {
  struct Dir {
    tls::Conn* from;
    tls::Conn* to;
    int from_fd, to_fd;
    uint64_t* bytes;
    std::string buf;  // to write
    size_t off = 0;
    bool eof = false, shut = false;
    bool inspected;
  } dirs[2] = {{&a, &b, afd, bfd, &a_to_b, {}, 0, false, false, true},
               {&b, &a, bfd, afd, &b_to_a, {}, 0, false, false, false}};
  std::string chunk(16384, '\0');
  for (;;) {
    short ev_a = 0, ev_b = 0;
    auto need = [&](int fd, tls::Conn::Status st) {
      short e = st == tls::Conn::kWantRead ? POLLIN : POLLOUT;
      (fd == afd ? ev_a : ev_b) |= e;
    };
    bool moved = false;
    for (auto& d : dirs) {
      if (!d.eof && d.buf.size() == d.off) {
        size_t n = 0;
        auto st = d.from->read(chunk.data(), chunk.size(), n);
        if (st == tls::Conn::kOk) {
          moved = true;
          d.buf.clear();
          d.off = 0;
          if (d.inspected) {
            if (!inspect.see(chunk.data(), n, d.buf)) return;
          } else {
            d.buf.assign(chunk.data(), n);
          }
        } else if (st == tls::Conn::kClosed) {
          d.eof = moved = true;
        } else if (st == tls::Conn::kFailed) {
          return;
        } else {
          need(d.from_fd, st);
        }
      }
      if (d.buf.size() > d.off) {
        size_t n = 0;
        auto st = d.to->write(d.buf.data() + d.off, d.buf.size() - d.off, n);
        if (st == tls::Conn::kOk) {
          d.off += n;
          *d.bytes += n;
          moved = true;
        } else if (st == tls::Conn::kWantRead || st == tls::Conn::kWantWrite) {
          need(d.to_fd, st);
        } else {
          return;
        }
      }
      if (d.eof && d.buf.size() == d.off && !d.shut) {
        d.to->close_notify();
        shutdown(d.to_fd, SHUT_WR);
        d.shut = moved = true;
      }
    }
    if (dirs[0].shut && dirs[1].shut) return;
    if (moved) continue;
    pollfd p[3] = {{afd, ev_a, 0}, {bfd, ev_b, 0}, {stop, POLLIN, 0}};
    if (poll(p, 3, -1) < 0 && errno != EINTR) return;
    if (p[2].revents) return;
  }
}

std::string forbidden(const std::string& what, const std::string& reason) {
  std::string body = "ultari: " + what + " is blocked by the sandbox's network policy (" + reason + ")\n";
  return "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: " + std::to_string(body.size()) +
         "\r\nConnection: close\r\n\r\n" + body;
}

// An IPv4 address in any spelling a resolver takes for one (inet_aton:
// "10.99.10", "0xa.0x63.0.0xa", "012.0143.0.012", "174260234", a trailing
// dot): these must be checked as addresses, never passed on as names.
bool ipv4_any(std::string text, in_addr& out) {
  if (text.ends_with(".")) text.pop_back();
  if (text.empty() || text.find_first_not_of("0123456789abcdefABCDEFxX.") != std::string::npos) return false;
  return inet_aton(text.c_str(), &out) != 0;
}

// A DNS name in canonical form, or "" (an IP literal in any spelling, or
// a name whose last label is numeric, is no name).
std::string normalized_or_empty(const std::string& name) {
  in_addr a4;
  in6_addr a6;
  if (ipv4_any(name, a4) || inet_pton(AF_INET6, name.c_str(), &a6) == 1) return "";
  std::string n;
  try {
    n = normalize_name(name, false);
  } catch (const Error&) {
    return "";
  }
  std::string last = n.substr(n.rfind('.') == std::string::npos ? 0 : n.rfind('.') + 1);
  if (last.find_first_not_of("0123456789") == std::string::npos || last.starts_with("0x")) return "";
  return n;
}

}  // namespace

// One connection from the sandbox, from its first byte to its audit record.
struct Flow {
  Server& g;
  UniqueFd client;
  int kind;
  Record rec;
  Clock::time_point start = Clock::now();
  int stop;
  // The transparent path starts connecting to the address the sandbox asked
  // for while it waits for the client's first bytes, when that address is
  // one the connection may go to whatever the bytes say (one the sandbox
  // resolved through us, or a public one under --net open): the upstream
  // handshake overlaps the sniffing. Used only if the decision picks the
  // same address; otherwise closed unused.
  UniqueFd early;
  in_addr early_addr{};

  Flow(Server& gw, UniqueFd c, int k) : g(gw), client(std::move(c)), kind(k), stop(gw.stop_.get()) {}

  void deny(const std::string& reason) {
    rec.allow = false;
    rec.reason = reason;
  }

  void run();
  bool transparent(in_addr& dst, uint16_t& port, std::string& name);
  bool http_proxy(in_addr& dst, uint16_t& port, std::string& name, std::string& prefix, bool& tunnel);
  bool socks(in_addr& dst, uint16_t& port, std::string& name);
  bool decide_name(const std::string& name, in_addr literal, bool have_literal, in_addr& target);
  bool relay_terminated(int upstream, const Inspect& inspect);
};

// Terminates TLS on both sides (the server's certificate checked first, so
// a sandbox never talks to an unverified server through us) and relays.
// False when a handshake failed (rec.error says which).
bool Flow::relay_terminated(int upstream, const Inspect& inspect) {
  int c = client.get();
  fcntl(c, F_SETFL, fcntl(c, F_GETFL) | O_NONBLOCK);
  // TLS writes whole records: Nagle could hold a flight's last one back
  // for the peer's delayed ACK.
  int one = 1;
  setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  setsockopt(upstream, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  std::string error;
  std::unique_ptr<tls::Conn> up = g.inspection_.engine->connect(upstream, rec.name, error);
  if (!up || !handshake(*up, upstream, stop)) {
    rec.error = "upstream TLS: " + (!up ? error : up->error().empty() ? "no handshake in time" : up->error());
    return false;
  }
  std::unique_ptr<tls::Conn> down = g.inspection_.engine->accept(c, rec.name, error);
  if (!down || !handshake(*down, c, stop)) {
    rec.error = "sandbox TLS: " + (!down ? error : down->error().empty() ? "no handshake in time" : down->error());
    return false;
  }
  relay_tls(*down, c, *up, upstream, stop, rec.bytes_out, rec.bytes_in, inspect);
  return true;
}

// Decides for `name` (or, with no name, for the address the sandbox asked
// for) and picks the public address to connect to. False when denied.
bool Flow::decide_name(const std::string& name, in_addr literal, bool have_literal, in_addr& target) {
  rec.name = name;
  if (name.empty()) {
    // An address the sandbox never resolved through us: IP literals never
    // match a domain rule; only --net open reaches them.
    if (!have_literal || g.policy_.mode != NetworkSpec::Mode::Open) {
      deny("no-rule");
      return false;
    }
    if (!g.reachable(literal)) {
      deny("private-address");
      return false;
    }
    rec.allow = true;
    rec.reason = "open";
    target = literal;
    return true;
  }
  Decision d = decide(g.policy_, name);
  rec.reason = d.reason;
  rec.allow = d.allow;
  if (!d.allow) return false;
  // Through an upstream proxy the name is what is asked for: the proxy
  // resolves it (this side may not even be able to).
  if (g.inspection_.upstream) return true;
  dns::Answer ans = g.resolve(name);
  std::vector<in_addr> usable;
  for (const auto& a : ans.addrs)
    if (g.reachable(a)) usable.push_back(a);
  if (usable.empty()) {
    if (!ans.addrs.empty()) {
      rec.addr = ip_str(ans.addrs.front());
      deny("private-address");
    } else {
      rec.error = "the name does not resolve on the host side";
    }
    return false;
  }
  // Rebinding-safe: only an address the host side resolved now is used;
  // the one the sandbox asked for when it is among them.
  target = usable.front();
  if (have_literal)
    for (const auto& a : usable)
      if (a.s_addr == literal.s_addr) target = a;
  return true;
}

bool Flow::transparent(in_addr& dst, uint16_t& port, std::string& name) {
  sockaddr_in orig{};
  socklen_t len = sizeof orig;
  if (getsockopt(client.get(), SOL_IP, SO_ORIGINAL_DST, &orig, &len) != 0) return false;
  dst = orig.sin_addr;
  port = ntohs(orig.sin_port);
  rec.kind = "tcp";
  rec.addr = ip_str(dst);
  rec.port = port;
  if (dst.s_addr == htonl(INADDR_LOOPBACK) && port == kTransparentPort) return false;  // not redirected
  std::set<std::string> names = g.names_of(dst);
  if (!port_allowed(g.policy_, port)) {
    rec.name = names.empty() ? "" : *names.begin();
    deny("port");
    return false;
  }
  if (!g.inspection_.upstream && g.reachable(dst) &&
      (g.policy_.mode == NetworkSpec::Mode::Open || g.resolves_now(names, dst))) {
    std::string ignored;
    early = start_connect(dst, port, ignored);
    early_addr = dst;
  }
  // On the web's ports a client speaks first, TLS or HTTP, and is checked
  // as such: anything else there (or a client that waits) is refused, so
  // no trick that hides a request from the sniffer gets through unchecked.
  bool web = port == 80 || port == 443;
  Sniffed s = peek_sniff(client.get(), stop, web ? kHeadTimeoutMs : kFirstByteMs);
  if (s.kind == Sniffed::Kind::Tls) rec.kind = "tls";
  if (s.kind == Sniffed::Kind::Http) rec.kind = "http";
  if (web && s.kind != Sniffed::Kind::Tls && s.kind != Sniffed::Kind::Http) {
    rec.name = names.empty() ? "" : *names.begin();
    deny("unsupported-protocol");
    return false;
  }
  std::string said = normalized_or_empty(s.name);
  if (!said.empty()) {
    // The name in the connection must be one the sandbox resolved for
    // this address: no domain fronting, no IP literal with a borrowed name.
    if (names.empty() ? g.policy_.mode != NetworkSpec::Mode::Open : !names.count(said)) {
      rec.name = said;
      deny(names.empty() ? "no-rule" : "sni-mismatch");
      return false;
    }
    name = said;
  } else if (s.kind == Sniffed::Kind::Tls || s.kind == Sniffed::Kind::Http) {
    // TLS without a server name, HTTP whose Host is an address: the
    // client addressed an IP, whatever names resolve to it. Only --net
    // open reaches IP literals (decide_name, with no name).
  } else if (!names.empty()) {
    name = *names.begin();  // another protocol: the name it resolved
  }
  return true;
}

bool Flow::http_proxy(in_addr& dst, uint16_t& port, std::string& name, std::string& prefix, bool& tunnel) {
  rec.kind = "http";
  std::string head;
  char buf[4096];
  size_t end;
  while ((end = head.find("\r\n\r\n")) == std::string::npos) {
    if (head.size() > kMaxHead || !wait_fd(client.get(), POLLIN, stop, kHeadTimeoutMs)) return false;
    ssize_t n = recv(client.get(), buf, sizeof buf, 0);
    if (n <= 0) return false;
    head.append(buf, static_cast<size_t>(n));
  }
  std::string rest = head.substr(end + 4);
  head.resize(end + 4);
  Sniffed s = sniff(head);
  if (s.kind != Sniffed::Kind::Http) {
    deny("http-malformed");  // run() answers 403, naming it
    return false;
  }
  std::string hostport;
  if (s.method == "CONNECT") {
    rec.kind = "tcp";
    tunnel = true;
    hostport = s.target;
    if (!rest.empty()) {
      // Bytes sent before the tunnel exists would skip the tunnel's checks.
      rec.name = strip_port(hostport);
      deny("http-smuggling");  // run() answers 403
      return false;
    }
  } else if (s.target.size() > 7 && strncasecmp(s.target.c_str(), "http://", 7) == 0) {
    size_t slash = s.target.find('/', 7);
    hostport = s.target.substr(7, slash == std::string::npos ? std::string::npos : slash - 7);
    // apt sends a source's user:password@ in the target as well as in an
    // Authorization header. The target is rewritten to origin-form below,
    // so they go no further, and the name checked is the host after them.
    // Two '@', or a '?' or '#' before the '@', leave parsers disagreeing
    // about the host: refused.
    if (size_t at = hostport.find('@');
        at != std::string::npos && (hostport.find_first_of("?#") < at || !strip_userinfo(hostport))) {
      deny("http-malformed");
      return false;
    }
    std::string path = slash == std::string::npos ? "/" : s.target.substr(slash);
    // Origin-form request line; the proxy's own headers stay here.
    size_t eol = head.find("\r\n");
    std::string line = head.substr(0, eol);
    std::string version = line.substr(line.rfind(' '));
    prefix = s.method + " " + path + version + "\r\n";
    size_t pos = eol + 2;
    while (pos < head.size()) {
      size_t next = head.find("\r\n", pos);
      std::string h = head.substr(pos, next - pos + 2);
      if (strncasecmp(h.c_str(), "proxy-", 6) != 0) prefix += h;
      pos = next + 2;
    }
  } else {
    deny("http-malformed");
    return false;
  }
  prefix += rest;
  std::string host = strip_port(hostport);
  size_t colon = hostport.rfind(':'), bracket = hostport.rfind(']');
  long p = tunnel ? 443 : 80;
  if (colon != std::string::npos && (bracket == std::string::npos || colon > bracket))
    p = std::strtol(hostport.c_str() + colon + 1, nullptr, 10);
  port = static_cast<uint16_t>(p > 0 && p < 65536 ? p : 0);
  rec.port = port;
  name = normalized_or_empty(host);
  in_addr literal{};
  if (ipv4_any(host, literal)) {
    name.clear();
    dst = literal;
    rec.addr = ip_str(literal);
  }
  if (name.empty() && dst.s_addr == 0) rec.name = host;
  if (!tunnel && !s.name.empty() && normalized_or_empty(s.name) != normalized_or_empty(host)) {
    rec.name = host;
    deny("sni-mismatch");
    return false;
  }
  if (!port_allowed(g.policy_, port)) {
    rec.name = name;
    deny("port");
    return false;
  }
  return true;
}

bool Flow::socks(in_addr& dst, uint16_t& port, std::string& name) {
  rec.kind = "tcp";
  uint8_t hello[2];
  if (!recv_exact(client.get(), hello, 2, stop) || hello[0] != 5) return false;
  uint8_t methods[255];
  if (!recv_exact(client.get(), methods, hello[1], stop)) return false;
  bool noauth = std::find(methods, methods + hello[1], 0) != methods + hello[1];
  if (!send_all(client.get(), std::string("\x05", 1) + (noauth ? '\0' : '\xff'), stop) || !noauth) return false;
  uint8_t req[4];
  if (!recv_exact(client.get(), req, 4, stop) || req[0] != 5) return false;
  auto fail = [&](char code) {
    send_all(client.get(), std::string("\x05", 1) + code + std::string("\0\x01\0\0\0\0\0\0", 8), stop);
  };
  if (req[1] != 1) {  // only CONNECT
    fail('\x07');
    return false;
  }
  if (req[3] == 1) {
    if (!recv_exact(client.get(), &dst, 4, stop)) return false;
    rec.addr = ip_str(dst);
    std::set<std::string> names = g.names_of(dst);
    if (!names.empty()) name = *names.begin();
  } else if (req[3] == 3) {
    uint8_t len;
    char host[256];
    if (!recv_exact(client.get(), &len, 1, stop) || !recv_exact(client.get(), host, len, stop)) return false;
    std::string h(host, len);
    in_addr literal{};
    if (ipv4_any(h, literal)) {
      dst = literal;
      rec.addr = ip_str(literal);
    } else {
      name = normalized_or_empty(h);
      if (name.empty()) rec.name = h;
    }
  } else {
    uint8_t skip[18];
    recv_exact(client.get(), skip, 18, stop);
    rec.addr = "ipv6";
    fail('\x08');
    deny("no-rule");
    return false;
  }
  uint8_t pb[2];
  if (!recv_exact(client.get(), pb, 2, stop)) return false;
  port = static_cast<uint16_t>(pb[0] << 8 | pb[1]);
  rec.port = port;
  if (!port_allowed(g.policy_, port)) {
    rec.name = name;
    deny("port");
    fail('\x02');
    return false;
  }
  return true;
}

void Flow::run() {
  in_addr dst{};
  uint16_t port = 0;
  std::string name, prefix;
  bool tunnel = kind == kSocks;
  bool go = kind == kTransparent ? transparent(dst, port, name)
            : kind == kHttpProxy ? http_proxy(dst, port, name, prefix, tunnel)
                                 : socks(dst, port, name);
  in_addr target{};
  if (go) go = decide_name(name, dst, dst.s_addr != 0, target);
  if (!go && rec.reason.empty() && rec.kind.empty()) return;  // not a connection worth a record
  if (!go && rec.reason.empty()) rec.reason = rec.error.empty() ? "no-rule" : rec.reason;
  UniqueFd upstream;
  // Through an upstream proxy, plain HTTP to a name goes as requests in the
  // absolute form (proxies commonly refuse CONNECT to port 80); the rest
  // through a CONNECT tunnel.
  const auto& proxy = g.inspection_.upstream;
  bool forward = proxy && rec.kind == "http" && !tunnel && !rec.name.empty();
  if (go && proxy) {
    rec.via = proxy->label;
    rec.addr = rec.name.empty() ? ip_str(target) : "";
    upstream = forward ? connect_to(proxy->addr, proxy->port, stop, rec.error)
                       : g.tunnel(rec.name.empty() ? ip_str(target) : rec.name, port, stop, rec.error);
    if (forward && !upstream) rec.error = "upstream proxy " + proxy->label + ": " + rec.error;
    go = static_cast<bool>(upstream);
  } else if (go) {
    rec.addr = ip_str(target);
    upstream = early && early_addr.s_addr == target.s_addr ? finish_connect(std::move(early), stop, rec.error)
                                                           : connect_to(target, port, stop, rec.error);
    go = static_cast<bool>(upstream);
  }
  if (early) rec.unused_handshake = ip_str(early_addr) + ":" + std::to_string(port);
  early.reset();
  if (kind == kHttpProxy) {
    if (!go && rec.error.empty())
      send_all(client.get(),
               forbidden(!rec.name.empty() ? rec.name : !rec.addr.empty() ? rec.addr : "this request", rec.reason),
               stop);
    else if (!go) send_all(client.get(), "HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n\r\n", stop);
    else if (tunnel) go = send_all(client.get(), "HTTP/1.1 200 Connection established\r\n\r\n", stop);
  }
  if (kind == kSocks) {
    char code = go ? '\0' : rec.error.empty() ? '\x02' : '\x05';
    send_all(client.get(), std::string("\x05", 1) + code + std::string("\0\x01\0\0\0\0\0\0", 8), stop);
  }
  if (go && tunnel) {
    // What goes through a tunnel must be for the name it was opened for;
    // on the web's ports it must be TLS or HTTP, as on the transparent path
    // (a client that waits would otherwise pass unchecked).
    bool web = port == 80 || port == 443;
    Sniffed s = peek_sniff(client.get(), stop, web ? kHeadTimeoutMs : kFirstByteMs);
    if (s.kind == Sniffed::Kind::Tls) rec.kind = "tls";
    if (s.kind == Sniffed::Kind::Http) rec.kind = "http";
    if (web && s.kind != Sniffed::Kind::Tls && s.kind != Sniffed::Kind::Http) {
      deny("unsupported-protocol");
      go = false;
    }
    std::string said = normalized_or_empty(s.name);
    if (!said.empty() && said != name && !(name.empty() && rec.reason == "open")) {
      deny("sni-mismatch");
      if (s.kind == Sniffed::Kind::Http) send_all(client.get(), forbidden(said, "sni-mismatch"), stop);
      go = false;
    }
  }
  // With --inspect-tls a TLS flow is terminated here: what it carries is
  // then followed like plaintext HTTP.
  bool terminate = go && rec.kind == "tls" && g.inspection_.engine;
  if (terminate && rec.name.empty()) {
    deny("no-rule");
    rec.error = "TLS without a server name cannot be inspected (--inspect-tls)";
    go = false;
  }
  // Every request of an HTTP connection must name the host it was allowed
  // for (keep-alive and pipelining included); what goes out is scanned for
  // secrets ([dlp]), the explicit proxy's request head (prefix) too; in
  // terminated TLS to a secret's host, its placeholder becomes its value in
  // its headers (swap_secrets).
  std::unique_ptr<Dlp::Stream> scan;
  std::unique_ptr<HttpRequests> requests;
  Inspect inspect;
  if (go && (rec.kind == "http" || terminate)) {
    // Through the proxy to an address, too: its later requests are
    // followed (framing, origin form) without a name to check.
    if (!rec.name.empty() || kind == kHttpProxy) requests = std::make_unique<HttpRequests>(rec.name);
    if (g.dlp_) scan = g.dlp_->open();
    std::vector<const SecretValue*> secrets;
    for (const auto& v : g.inspection_.secrets)
      for (const auto& h : v.hosts)
        if (!rec.name.empty() && pattern_matches(h, rec.name)) {
          secrets.push_back(&v);
          break;
        }
    // Only into TLS the gateway terminated and verified: never cleartext.
    if (requests && terminate && !secrets.empty())
      requests->on_head = [secrets](std::string& head, std::string&) {
        head = swap_secrets(head, secrets);
        return true;
      };
    if (forward)
      requests->on_head = [name = rec.name, port, &proxy, heads = 0](std::string& head, std::string& why) mutable {
        if (++heads > 1) {
          why = "http-smuggling";  // the proxy was told "Connection: close": a second request is not the client's
          return false;
        }
        return to_proxy_form(head, name, port, proxy->auth, why);
      };
    if (requests || scan) {
      inspect.see = [this, &scan, &requests](const char* data, size_t len, std::string& out) {
        std::string why;
        if (requests && !requests->feed(data, len, why, &out)) deny(why);
        if (!requests) out.append(data, len);
        if (scan)
          for (auto& found : scan->scan(data, len)) {
            if (std::find(rec.dlp.begin(), rec.dlp.end(), found) == rec.dlp.end()) rec.dlp.push_back(found);
            if (g.policy_.dlp.block && rec.allow) deny("dlp:" + found);
          }
        return rec.allow;
      };
    }
    if (requests && !scan && !terminate) {
      // Only the framing is followed: bodies are spliced, unseen.
      inspect.unseen = [&requests] { return requests->unseen(); };
      inspect.skipped = [&requests](uint64_t n) { requests->skip(n); };
    }
    if (inspect && !prefix.empty()) {
      std::string out;
      if (!inspect.see(prefix.data(), prefix.size(), out)) go = false;
      prefix = std::move(out);
    }
  }
  if (go && !prefix.empty()) go = send_all(upstream.get(), prefix, stop), rec.bytes_out += prefix.size();
  if (go && terminate) {
    go = relay_terminated(upstream.get(), inspect);
  } else if (go) {
    relay(client.get(), upstream.get(), stop, rec.bytes_out, rec.bytes_in, inspect);
  }
  bool blocked_midway = !rec.allow && go;
  if (blocked_midway) go = false;  // reset below
  rec.duration_ms = ms_since(start);
  if (!go && (kind == kTransparent || blocked_midway)) {
    // Refused: the client sees a reset, not an orderly end of stream.
    linger l{1, 0};
    setsockopt(client.get(), SOL_SOCKET, SO_LINGER, &l, sizeof l);
  }
  g.audit_.write(rec);
}

Server::Server(const NetworkSpec& policy, std::vector<in_addr> servers, Endpoints endpoints, AuditLog& audit,
               Inspection inspection)
    : policy_(policy), inspection_(std::move(inspection)), servers_(std::move(servers)), ep_(std::move(endpoints)),
      audit_(audit) {
  if (policy_.dlp.enabled) dlp_ = std::make_unique<Dlp>(policy_.dlp.literals);
  if (inspection_.engine) {
    std::string error;
    if (!inspection_.engine->serve_with(inspection_.ca, inspection_.extra_ca_pem, error)) throw Error(error);
    explicit_bzero(inspection_.ca.key_pem.data(), inspection_.ca.key_pem.size());
  }
  // The host's own addresses are no destination, whatever they are.
  ifaddrs* ifs = nullptr;
  if (getifaddrs(&ifs) == 0) {
    for (ifaddrs* i = ifs; i; i = i->ifa_next)
      if (i->ifa_addr && i->ifa_addr->sa_family == AF_INET)
        local_.push_back(reinterpret_cast<sockaddr_in*>(i->ifa_addr)->sin_addr);
    freeifaddrs(ifs);
  }
  stop_.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stop_) throw_errno("eventfd");
  for (int fd : {ep_.transparent.get(), ep_.http_proxy.get(), ep_.socks.get(), ep_.dns.get(), ep_.nflog.get()})
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  loop_thread_ = std::thread([this] { loop(); });
}

Server::~Server() { stop(); }

void Server::stop() {
  uint64_t one = 1;
  if (write(stop_.get(), &one, sizeof one) < 0) {
  }
  if (loop_thread_.joinable()) loop_thread_.join();
  std::unique_lock lock(mu_);
  stopping_ = true;
  for (int fd : open_fds_) shutdown(fd, SHUT_RDWR);
  work_.notify_all();
  idle_.wait(lock, [this] { return active_ == 0 && workers_ == 0; });
}

dns::Answer Server::resolve(const std::string& name) {
  auto now = Clock::now();
  {
    std::lock_guard lock(mu_);
    auto it = cache_.find(name);
    if (it != cache_.end() && it->second.expires > now) return it->second.answer;
  }
  dns::Answer a = dns::resolve_a(name, servers_, kResolveTimeoutMs);
  if (a.rcode == dns::kNoError || a.rcode == dns::kNxDomain) {
    // Kept for the record's TTL, between 1 and 30 seconds: a sandbox's
    // burst of connections costs one host-side query, and a name that
    // changes is seen again soon.
    auto ttl = std::chrono::seconds(std::clamp<uint32_t>(a.ttl, 1, 30));
    std::lock_guard lock(mu_);
    if (cache_.size() >= 4096) cache_.clear();
    cache_[name] = {a, now + ttl};
  }
  return a;
}

bool Server::resolves_now(const std::set<std::string>& names, in_addr addr) {
  auto now = Clock::now();
  std::lock_guard lock(mu_);
  for (const auto& n : names) {
    auto it = cache_.find(n);
    if (it == cache_.end() || it->second.expires <= now) continue;
    for (const auto& a : it->second.answer.addrs)
      if (a.s_addr == addr.s_addr) return true;
  }
  return false;
}

bool Server::reachable(in_addr addr) const {
  if (!is_public(addr)) return false;
  for (const auto& l : local_)
    if (l.s_addr == addr.s_addr) return false;
  return true;
}

bool Server::synthetic(const std::string& name, in_addr& addr) {
  std::lock_guard lock(mu_);
  auto it = synthetic_.find(name);
  if (it == synthetic_.end()) {
    // No more than remember() keeps: an address it forgets would lead nowhere.
    if (synthetic_.size() >= std::min<size_t>(kSyntheticCount, kMaxRemembered)) return false;
    it = synthetic_.emplace(name, static_cast<uint32_t>(synthetic_.size())).first;
  }
  addr = synthetic_address(it->second);
  return true;
}

UniqueFd Server::tunnel(const std::string& host, uint16_t port, int stop, std::string& error) {
  const UpstreamProxy& proxy = *inspection_.upstream;
  std::string what = "upstream proxy " + proxy.label;
  UniqueFd fd = connect_to(proxy.addr, proxy.port, stop, error);
  if (!fd) {
    error = what + ": " + error;
    return fd;
  }
  if (!send_all(fd.get(), connect_request(host, port, proxy.auth), stop)) {
    error = what + ": the request could not be sent";
    return UniqueFd();
  }
  // The response head, and not a byte more: what follows is the server's.
  // One deadline for all of it; a proxy that closes mid-head is seen
  // (POLLRDHUP) rather than peeked at forever.
  char buf[kMaxHead];
  size_t end = std::string::npos;
  auto deadline = Clock::now() + std::chrono::milliseconds(kConnectTimeoutMs);
  for (ssize_t have = 0; end == std::string::npos;) {
    int left = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count());
    if (left <= 0 || !wait_fd(fd.get(), POLLIN, stop, left)) {
      error = what + ": no answer to CONNECT in time";
      return UniqueFd();
    }
    ssize_t n = recv(fd.get(), buf, sizeof buf, MSG_PEEK);
    if (n <= 0 && !(n < 0 && (errno == EAGAIN || errno == EINTR))) {
      error = what + ": closed without answering CONNECT";
      return UniqueFd();
    }
    if (n == have) {
      if (static_cast<size_t>(n) == sizeof buf) {
        error = what + ": its answer to CONNECT is too long";
        return UniqueFd();
      }
      pollfd p[2] = {{fd.get(), POLLRDHUP, 0}, {stop, POLLIN, 0}};
      if (poll(p, 2, 5) > 0 && (p[1].revents || (p[0].revents & (POLLRDHUP | POLLHUP | POLLERR)))) {
        error = what + ": closed in the middle of its answer to CONNECT";
        return UniqueFd();
      }
      continue;
    }
    have = n;
    end = std::string_view(buf, static_cast<size_t>(n)).find("\r\n\r\n");
  }
  if (!recv_exact(fd.get(), buf, end + 4, stop)) {
    error = what + ": closed while answering CONNECT";
    return UniqueFd();
  }
  std::string_view head(buf, end);
  int status = response_status(head);
  if (status < 200 || status > 299) {
    std::string line(head.substr(0, std::min<size_t>(head.find("\r\n"), 120)));
    for (char& c : line)
      if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) > 0x7e) c = '?';
    error = what + " refused CONNECT " + host + ":" + std::to_string(port) + ": " + line;
    if (status == 407) error += proxy.auth.empty() ? " (give --net-upstream-auth)" : " (check --net-upstream-auth)";
    return UniqueFd();
  }
  return fd;
}

std::set<std::string> Server::names_of(in_addr addr) {
  std::lock_guard lock(mu_);
  auto it = resolved_.find(addr.s_addr);
  return it == resolved_.end() ? std::set<std::string>{} : it->second;
}

void Server::remember(const std::string& name, const std::vector<in_addr>& addrs) {
  std::lock_guard lock(mu_);
  for (const auto& a : addrs) {
    if (resolved_.size() >= kMaxRemembered && !resolved_.count(a.s_addr)) return;
    auto& names = resolved_[a.s_addr];
    if (names.size() < 64) names.insert(name);
  }
}

void Server::loop() {
  block_signals();
  for (;;) {
    pollfd p[6] = {{stop_.get(), POLLIN, 0},       {ep_.transparent.get(), POLLIN, 0}, {ep_.http_proxy.get(), POLLIN, 0},
                   {ep_.socks.get(), POLLIN, 0}, {ep_.dns.get(), POLLIN, 0},         {ep_.nflog.get(), POLLIN, 0}};
    if (poll(p, 6, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (p[0].revents) {
      // What the rules logged before the sandbox ended still counts.
      while (true) {
        pollfd last{ep_.nflog.get(), POLLIN, 0};
        if (poll(&last, 1, 0) <= 0) return;
        read_nflog();
      }
    }
    if (p[1].revents) accept_one(ep_.transparent.get(), kTransparent);
    if (p[2].revents) accept_one(ep_.http_proxy.get(), kHttpProxy);
    if (p[3].revents) accept_one(ep_.socks.get(), kSocks);
    if (p[4].revents) answer_dns();
    if (p[5].revents) read_nflog();
  }
}

void Server::accept_one(int listener, int kind) {
  UniqueFd c(accept4(listener, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
  if (!c) {
    // EMFILE and friends: back off instead of spinning on a ready listener.
    if (errno != EAGAIN && errno != EINTR) poll(nullptr, 0, 10);
    return;
  }
  spawn(std::move(c), kind);
}

void Server::spawn(UniqueFd fd, int kind) {
  int raw = fd.get();
  {
    std::lock_guard lock(mu_);
    if (active_ >= kMaxActive || stopping_) return;  // dropped: the client sees a reset
    ++active_;
    if (fd) open_fds_.insert(raw);
  }
  // std::function holds copyable callables only: the fd rides in a shared_ptr.
  auto end = [this, raw] {
    std::lock_guard lock(mu_);
    open_fds_.erase(raw);
    if (--active_ == 0) idle_.notify_all();
  };
  bool taken = submit([this, fd = std::make_shared<UniqueFd>(std::move(fd)), kind, end] {
    try {
      serve(std::move(*fd), kind);
    } catch (const std::exception&) {
    }
    end();
  });
  if (!taken) end();  // the fd was closed with the task
}

// Runs a task (already counted in active_) on an idle worker, or on a new
// one; false when no thread can take it (the task was dropped: the caller
// undoes its count). Workers stay for kWorkerLinger after their last task:
// a new thread's stack and malloc arena are fresh pages, and their faults
// would be paid by the connection that waits for it.
bool Server::submit(std::function<void()> task) {
  std::unique_lock lock(mu_);
  tasks_.push_back(std::move(task));
  if (tasks_.size() <= static_cast<size_t>(idle_workers_)) {
    work_.notify_one();
    return true;
  }
  ++workers_;
  try {
    std::thread([this] { work(); }).detach();
  } catch (const std::system_error&) {
    // Dropped (the client sees a close), never left waiting for a busy
    // worker, whose connection may last hours.
    --workers_;
    std::function<void()> dropped = std::move(tasks_.back());
    tasks_.pop_back();
    lock.unlock();  // what the task holds (an fd) goes without the lock
    return false;
  }
  return true;
}

void Server::work() {
  block_signals();
  std::unique_lock lock(mu_);
  for (;;) {
    if (tasks_.empty()) {
      ++idle_workers_;
      bool more = work_.wait_for(lock, kWorkerLinger, [this] { return !tasks_.empty() || stopping_; });
      --idle_workers_;
      if (!more || tasks_.empty()) {
        --workers_;
        idle_.notify_all();
        return;
      }
    }
    auto task = std::move(tasks_.front());
    tasks_.pop_front();
    lock.unlock();
    task();
    task = nullptr;  // what it holds goes before the lock is taken again
    lock.lock();
  }
}

void Server::serve(UniqueFd client, int kind) {
  Flow flow(*this, std::move(client), kind);
  flow.run();
}

void Server::answer_dns() {
  uint8_t buf[1500];
  sockaddr_in from{};
  socklen_t flen = sizeof from;
  ssize_t n = recvfrom(ep_.dns.get(), buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&from), &flen);
  if (n <= 0) return;
  auto q = dns::parse_query(buf, static_cast<size_t>(n));
  if (!q) return;
  std::string query(reinterpret_cast<char*>(buf), q->end);
  // Resolving may take a while: off the loop.
  {
    std::lock_guard lock(mu_);
    if (active_ >= kMaxActive || stopping_) return;
    ++active_;
  }
  auto work = [this, query, q = *q, from] {
    auto* raw = reinterpret_cast<const uint8_t*>(query.data());
    auto start = Clock::now();
    Record rec;
    rec.kind = "dns";
    rec.name = normalized_or_empty(q.name);
    bool no_name = rec.name.empty();  // an address in disguise ("10.99.0.10"), or not a name at all
    if (no_name) rec.name = q.name;
    rec.port = 53;
    Decision d = no_name ? Decision{false, "no-rule"} : decide(policy_, rec.name);
    rec.allow = d.allow;
    rec.reason = d.reason;
    uint8_t rcode = dns::kNxDomain;
    std::vector<in_addr> answer;
    uint32_t ttl = 0;
    if (d.allow && q.klass == 1 && q.type == dns::kTypeA && inspection_.upstream) {
      // The proxy resolves: the sandbox gets an address that stands for the name.
      in_addr addr;
      rcode = synthetic(rec.name, addr) ? dns::kNoError : dns::kServFail;
      if (rcode == dns::kNoError) {
        answer.push_back(addr);
        rec.addr = ip_str(addr);
        rec.via = inspection_.upstream->label;
        remember(rec.name, answer);
      }
      ttl = 300;
    } else if (d.allow && q.klass == 1 && q.type == dns::kTypeA) {
      dns::Answer a = resolve(rec.name);
      rcode = a.rcode;
      for (const auto& addr : a.addrs)
        if (reachable(addr)) answer.push_back(addr);
      if (!a.addrs.empty() && answer.empty()) {
        // Only private addresses: as if the name did not exist.
        rec.allow = false;
        rec.reason = "private-address";
        rec.addr = ip_str(a.addrs.front());
        rcode = dns::kNxDomain;
      } else if (!answer.empty()) {
        rec.addr = ip_str(answer.front());
        remember(rec.name, answer);
      }
      ttl = std::min<uint32_t>(a.ttl, 300);
    } else if (d.allow) {
      rcode = dns::kNoError;  // AAAA and other types: no data (IPv6 is not routed)
    }
    std::string reply = dns::reply(raw, q, rcode, answer, ttl);
    sendto(ep_.dns.get(), reply.data(), reply.size(), 0, reinterpret_cast<const sockaddr*>(&from), sizeof from);
    rec.bytes_out = query.size();
    rec.bytes_in = reply.size();
    rec.duration_ms = ms_since(start);
    audit_.write(rec);
    std::lock_guard lock(mu_);
    if (--active_ == 0) idle_.notify_all();
  };
  if (!submit(std::move(work))) {
    std::lock_guard lock(mu_);
    if (--active_ == 0) idle_.notify_all();
  }
}

// Packets the rules dropped: one record per flow (the rules rate-limit).
void Server::read_nflog() {
  alignas(nlmsghdr) char buf[8192];
  ssize_t n = recv(ep_.nflog.get(), buf, sizeof buf, 0);
  if (n <= 0) return;
  for (auto* h = reinterpret_cast<nlmsghdr*>(buf); NLMSG_OK(h, static_cast<unsigned>(n)); h = NLMSG_NEXT(h, n)) {
    if (h->nlmsg_type != ((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET)) continue;
    auto* attr = reinterpret_cast<nlattr*>(static_cast<char*>(NLMSG_DATA(h)) + NLMSG_ALIGN(sizeof(nfgenmsg)));
    int left = static_cast<int>(h->nlmsg_len) - NLMSG_LENGTH(sizeof(nfgenmsg));
    while (left >= static_cast<int>(sizeof(nlattr)) && attr->nla_len >= sizeof(nlattr) && attr->nla_len <= left) {
      if ((attr->nla_type & NLA_TYPE_MASK) == NFULA_PAYLOAD) {
        auto* pkt = reinterpret_cast<const uint8_t*>(attr) + NLA_HDRLEN;
        size_t len = attr->nla_len - NLA_HDRLEN;
        Record rec;
        int proto = -1;
        size_t l4 = 0;
        char addr[INET6_ADDRSTRLEN] = "";
        if (len >= 20 && (pkt[0] >> 4) == 4) {
          proto = pkt[9];
          l4 = static_cast<size_t>(pkt[0] & 0xf) * 4;
          inet_ntop(AF_INET, pkt + 16, addr, sizeof addr);
        } else if (len >= 40 && (pkt[0] >> 4) == 6) {
          proto = pkt[6];
          l4 = 40;
          inet_ntop(AF_INET6, pkt + 24, addr, sizeof addr);
        }
        rec.kind = proto == 17 ? "udp" : proto == 6 ? "tcp" : (proto == 1 || proto == 58) ? "icmp" : "ip";
        if ((proto == 6 || proto == 17) && len >= l4 + 4) rec.port = pkt[l4 + 2] << 8 | pkt[l4 + 3];
        rec.addr = addr;
        rec.reason = "no-rule";
        std::string flow = rec.kind + " " + rec.addr + " " + std::to_string(rec.port);
        bool fresh;
        {
          std::lock_guard lock(mu_);
          fresh = dropped_flows_.size() < 4096 && dropped_flows_.insert(flow).second;
        }
        if (fresh) audit_.write(rec);
      }
      left -= NLA_ALIGN(attr->nla_len);
      attr = reinterpret_cast<nlattr*>(reinterpret_cast<char*>(attr) + NLA_ALIGN(attr->nla_len));
    }
  }
}

}  // namespace ultari::net
