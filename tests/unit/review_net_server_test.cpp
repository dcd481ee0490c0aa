// Review of 45a8224 (the gateway's worker pool, kept pipes): net::Server
// driven for real through its SOCKS5 endpoint, in a network namespace of
// its own (a forked child per test, as root). A "public" upstream server
// listens on 203.0.113.10, an address added to lo after the Server was
// made (its list of the host's own addresses, read at construction, does
// not hold it), with a DNS responder there for names (the Server's
// host-side resolver).
//
//  - PoolThreadFailure* (FINDING on 45a8224, fixed): when a worker cannot
//    be started while another worker is busy (RLIMIT_NPROC of the gateway's
//    user; nobody is shared by every sandbox's gateway), Server::submit
//    leaves the task queued "for a running worker": the connection then
//    waits for that worker's connection to end (a relay may last hours).
//    Before 45a8224 it was dropped at once.
//  - KeptPipes* (passes; a mutant that keeps pipes holding bytes fails it):
//    a relay that ends with bytes in its pipes (the receiver reset, the
//    spliced body of a request) must not hand them to the next connection
//    the same worker serves.
//  - RelayDoesNotSpin* (FINDING, fixed; the root cause predated 45a8224):
//    relay() takes its pipes to hold kPipeBytes (1 MiB). A pipe made while
//    the user is over fs/pipe-user-pages-soft has 8 KiB and cannot be
//    grown; with a slow receiver relay() then polls the sender for input it
//    cannot take, and spins. Kept pipes make it last (a worker keeps such a
//    pipe for its life) and keep the user's pipe pages counted 10 s longer.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "net/audit.h"
#include "net/dns.h"
#include "net/netns.h"
#include "net/server.h"

namespace ultari::net {
namespace {

using Clock = std::chrono::steady_clock;
constexpr const char* kUpAddr = "203.0.113.10";
constexpr uint16_t kUpPort = 7000;

int64_t ms_since(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count();
}

// Runs `body` in a forked child; its result string (or why it died).
std::string in_child(const std::function<std::string()>& body, int timeout_s = 90) {
  int p[2];
  if (pipe(p) != 0) return "pipe failed";
  pid_t pid = fork();
  if (pid == 0) {
    close(p[0]);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    std::string r;
    try {
      r = body();
    } catch (const std::exception& e) {
      r = std::string("exception: ") + e.what();
    }
    if (write(p[1], r.data(), r.size()) < 0) {
    }
    _exit(0);
  }
  close(p[1]);
  // Until the child has ended (its helpers may hold the pipe open longer).
  std::string out;
  char buf[4096];
  auto start = Clock::now();
  int st = 0;
  bool ended = false;
  while (!ended) {
    ended = waitpid(pid, &st, WNOHANG) == pid;
    pollfd f{p[0], POLLIN, 0};
    while (poll(&f, 1, ended ? 0 : 200) > 0) {
      ssize_t n = read(p[0], buf, sizeof buf);
      if (n <= 0) break;
      out.append(buf, static_cast<size_t>(n));
    }
    if (!ended && ms_since(start) > timeout_s * 1000) {
      kill(pid, SIGKILL);
      waitpid(pid, &st, 0);
      out += " [child timed out]";
      break;
    }
  }
  close(p[0]);
  return out;
}

int listener(const char* addr, uint16_t port, int type = SOCK_STREAM) {
  int fd = socket(AF_INET, type | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  inet_pton(AF_INET, addr, &a.sin_addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) throw std::runtime_error("bind " + std::string(addr));
  if (type == SOCK_STREAM && listen(fd, 128) != 0) throw std::runtime_error("listen");
  return fd;
}

uint16_t port_of(int fd) {
  sockaddr_in a{};
  socklen_t l = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &l);
  return ntohs(a.sin_port);
}

int connect_local(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) throw std::runtime_error("connect");
  return fd;
}

bool send_all(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    ssize_t n = send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return false;
    off += static_cast<size_t>(n);
  }
  return true;
}

// Reads until EOF or error or `ms` of silence / in total.
std::string read_all(int fd, int ms) {
  std::string out;
  char buf[65536];
  auto start = Clock::now();
  while (ms_since(start) < ms) {
    pollfd f{fd, POLLIN, 0};
    if (poll(&f, 1, 100) <= 0) continue;
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

// "reply" (2 bytes), "closed" (EOF or reset) or "hang" within `ms`.
std::string await_hello(int fd, int ms) {
  pollfd f{fd, POLLIN, 0};
  if (poll(&f, 1, ms) <= 0) return "hang";
  char b[2];
  ssize_t n = recv(fd, b, 2, MSG_WAITALL);
  return n == 2 && b[0] == 5 && b[1] == 0 ? "reply" : "closed";
}

// A SOCKS5 tunnel through the gateway to host:port ("" on failure).
int socks_to(uint16_t socks_port, const std::string& host, uint16_t port) {
  int fd = connect_local(socks_port);
  send_all(fd, std::string("\x05\x01\x00", 3));
  if (await_hello(fd, 5000) != "reply") return close(fd), -1;
  std::string req("\x05\x01\x00", 3);
  in_addr a{};
  if (inet_pton(AF_INET, host.c_str(), &a) == 1) {
    req += '\x01';
    req.append(reinterpret_cast<char*>(&a), 4);
  } else {
    req += '\x03';
    req += static_cast<char>(host.size());
    req += host;
  }
  req += static_cast<char>(port >> 8);
  req += static_cast<char>(port & 0xff);
  send_all(fd, req);
  char r[10];
  pollfd f{fd, POLLIN, 0};
  if (poll(&f, 1, 8000) <= 0 || recv(fd, r, 10, MSG_WAITALL) != 10 || r[1] != 0) return close(fd), -1;
  return fd;
}

void rst_close(int fd) {
  linger l{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  close(fd);
}

// The gateway's world, in the calling (forked) process.
struct World {
  std::string dir;
  std::unique_ptr<AuditLog> audit;
  std::unique_ptr<Server> server;
  uint16_t socks_port = 0;
  std::vector<pid_t> helpers;

  // `upstream` serves each accepted connection (its index and fd) in a
  // process of its own, still root.
  explicit World(const std::function<void(int, int)>& upstream) {
    upstream_fn = upstream;  // before the helpers are forked
    if (unshare(CLONE_NEWNET) != 0) throw std::runtime_error("unshare");
    if (system("ip link set lo up") != 0) throw std::runtime_error("lo");
    char tmpl[] = "/tmp/review-net-XXXXXX";
    dir = mkdtemp(tmpl);
    chmod(dir.c_str(), 0777);
    audit = std::make_unique<AuditLog>(dir + "/audit.jsonl", "review");
    Endpoints ep;
    ep.transparent.reset(listener("127.0.0.1", 0));
    ep.http_proxy.reset(listener("127.0.0.1", 0));
    ep.socks.reset(listener("127.0.0.1", 0));
    socks_port = port_of(ep.socks.get());
    ep.dns.reset(listener("127.0.0.1", 0, SOCK_DGRAM));
    ep.nflog.reset(listener("127.0.0.1", 0, SOCK_DGRAM));
    NetworkSpec policy;
    policy.mode = NetworkSpec::Mode::Open;
    policy.ports = {kUpPort};
    in_addr up{};
    inet_pton(AF_INET, kUpAddr, &up);
    server = std::make_unique<Server>(policy, std::vector<in_addr>{up}, std::move(ep), *audit);
    // Only now: the Server's own addresses do not hold it.
    if (system("ip addr add 203.0.113.10/32 dev lo") != 0) throw std::runtime_error("addr");
    int l = listener(kUpAddr, kUpPort);
    int d = listener(kUpAddr, 53, SOCK_DGRAM);
    // Helpers stay root and this process may not: they end when it does
    // (the lifeline's write end closes), not by a signal from it.
    if (pipe2(life, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
    helpers.push_back(spawn([l, this] {
      for (int i = 0;; ++i) {
        await(l, life[0]);
        int c = accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
        if (c < 0) continue;
        if (fork() == 0) {
          prctl(PR_SET_PDEATHSIG, SIGKILL);  // the acceptor stays root: this works
          upstream_fn(i, c);
          _exit(0);
        }
        close(c);
      }
    }));
    helpers.push_back(spawn([d, this] {
      for (;;) {
        await(d, life[0]);
        uint8_t b[1500];
        sockaddr_in from{};
        socklen_t fl = sizeof from;
        ssize_t n = recvfrom(d, b, sizeof b, 0, reinterpret_cast<sockaddr*>(&from), &fl);
        if (n <= 0) continue;
        auto q = dns::parse_query(b, static_cast<size_t>(n));
        if (!q) continue;
        in_addr a{};
        inet_pton(AF_INET, kUpAddr, &a);
        std::string r = dns::reply(b, *q, dns::kNoError, {a}, 60);
        sendto(d, r.data(), r.size(), 0, reinterpret_cast<sockaddr*>(&from), fl);
      }
    }));
    // The world's directory goes with it, removed as root (this process
    // may have become another user by then).
    helpers.push_back(spawn([this] {
      char c;
      while (read(life[0], &c, 1) != 0) {
      }
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }));
    close(l);
    close(d);
    close(life[0]);
  }
  // Waits for `fd`; ends the helper when the lifeline closes.
  static void await(int fd, int lifeline) {
    pollfd p[2] = {{fd, POLLIN, 0}, {lifeline, POLLIN, 0}};
    while (poll(p, 2, -1) < 0) {
    }
    if (p[1].revents) _exit(0);
  }
  int life[2] = {-1, -1};
  ~World() {
    server.reset();
    close(life[1]);
    for (pid_t p : helpers) waitpid(p, nullptr, 0);
  }
  static inline std::function<void(int, int)> upstream_fn;
  static inline int life_w = -1;
  pid_t spawn(const std::function<void()>& f) {
    life_w = life[1];
    pid_t p = fork();
    if (p == 0) {
      signal(SIGCHLD, SIG_IGN);
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      close(life_w);
      f();
      _exit(0);
    }
    return p;
  }
};

// Drops to a uid of its own (no other process has it) with at most `nproc`
// tasks, the threads already running included. 0: no limit.
void become_user(uid_t uid, rlim_t nproc) {
  if (setresgid(uid, uid, uid) != 0 || setresuid(uid, uid, uid) != 0) throw std::runtime_error("setresuid");
  if (nproc) {
    rlimit r{nproc, nproc};
    if (setrlimit(RLIMIT_NPROC, &r) != 0) throw std::runtime_error("setrlimit");
  }
}

uid_t private_uid() { return 1900000000u + static_cast<uid_t>(getpid() % 100000) * 10 + 1; }

// Connection A holds the one worker (a SOCKS5 hello that dribbles in: one
// method byte a second of 255); connection B then needs a second worker.
std::string starve(rlim_t nproc) {
  World w([](int, int c) { close(c); });
  become_user(private_uid(), nproc);
  int a = connect_local(w.socks_port);
  send_all(a, std::string("\x05\xff", 2));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  int b = connect_local(w.socks_port);
  send_all(b, std::string("\x05\x01\x00", 3));
  std::string first;
  auto start = Clock::now();
  pollfd f{b, POLLIN, 0};
  while (ms_since(start) < 4000) {
    send_all(a, "\x01");  // A stays busy
    if (poll(&f, 1, 500) > 0) break;
  }
  first = await_hello(b, 0);
  int64_t waited = ms_since(start);
  close(a);  // A's worker is free now
  std::string later = first == "hang" ? await_hello(b, 3000) : "-";
  close(b);
  return "B=" + first + " after_ms=" + std::to_string(waited) + " once_A_closed=" + later;
}

TEST(ReviewNetServer, PoolThreadFailureNeverLeavesAConnectionWaitingForAnother) {
  // Negative control: with threads to spare, B is answered at once.
  std::string control = in_child([] { return starve(0); });
  EXPECT_TRUE(control.starts_with("B=reply")) << control;
  // 3 tasks: the test's main thread, the Server's loop and one worker. B
  // must be answered or dropped (as before 45a8224), not left waiting for
  // A, whose connection may last hours.
  std::string limited = in_child([] { return starve(3); });
  EXPECT_FALSE(limited.starts_with("B=hang")) << limited;
  std::cout << "control: " << control << "\nlimited: " << limited << "\n";
}

// Kept pipes. The upstream: even connections leave bytes in the gateway's
// pipes (it sends 4 MiB to a client that does not read and resets; or it
// reads nothing of what it is sent and resets), odd ones report exactly
// what they received and end.
void upstream_for_pipes(int i, int c) {
  if (i % 2 == 0) {
    if (i == 0) {
      std::string big(4 << 20, 'X');
      send_all(c, big);  // blocks, then fails when the client resets
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // reads nothing
    }
    rst_close(c);
    return;
  }
  std::string got = read_all(c, 600);
  send_all(c, "GOT[" + got + "]");
  shutdown(c, SHUT_WR);
  read_all(c, 200);
  close(c);
}

// Sends `data` on `c` (made non-blocking) for at most 1.2 s: what a peer
// that stops reading leaves queued.
void send_for_a_while(int c, const std::string& data) {
  fcntl(c, F_SETFL, O_NONBLOCK);
  size_t off = 0;
  for (auto start = Clock::now(); ms_since(start) < 1200 && off < data.size();) {
    ssize_t n = send(c, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n > 0) off += static_cast<size_t>(n);
    else std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

std::string pipes_story() {
  World w(upstream_for_pipes);
  std::string out;
  auto pause = [] { std::this_thread::sleep_for(std::chrono::milliseconds(400)); };
  // 0: server -> client bytes left in the pipe: the client resets unread.
  int c = socks_to(w.socks_port, kUpAddr, kUpPort);
  if (c < 0) return "socks 0 failed";
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  rst_close(c);
  pause();
  // 1: what reaches this client and this server.
  c = socks_to(w.socks_port, kUpAddr, kUpPort);
  if (c < 0) return "socks 1 failed";
  send_all(c, "PING1");
  out += "1:" + read_all(c, 3000) + "\n";
  close(c);
  pause();
  // 2: client -> server bytes left in the pipe: the server reads none, resets.
  c = socks_to(w.socks_port, kUpAddr, kUpPort);
  if (c < 0) return "socks 2 failed";
  send_for_a_while(c, std::string(4 << 20, 'Y'));
  read_all(c, 1000);
  close(c);
  pause();
  c = socks_to(w.socks_port, kUpAddr, kUpPort);
  if (c < 0) return "socks 3 failed";
  send_all(c, "PING3");
  out += "3:" + read_all(c, 3000) + "\n";
  close(c);
  pause();
  // 4: the spliced body of a request (HTTP followed, no DLP: bodies unseen).
  c = socks_to(w.socks_port, "x.test", kUpPort);
  if (c < 0) return "socks 4 failed";
  send_for_a_while(c, "POST /4 HTTP/1.1\r\nHost: x.test\r\nContent-Length: 4000000\r\n\r\n" + std::string(4000000, 'Z'));
  read_all(c, 1000);
  close(c);
  pause();
  c = socks_to(w.socks_port, "x.test", kUpPort);
  if (c < 0) return "socks 5 failed";
  send_all(c, "GET /5 HTTP/1.1\r\nHost: x.test\r\n\r\n");
  out += "5:" + read_all(c, 3000) + "\n";
  close(c);
  return out;
}

TEST(ReviewNetServer, KeptPipesNeverCarryBytesToTheNextConnection) {
  std::string out = in_child(pipes_story);
  // What each client got: exactly the server's report of exactly its bytes.
  EXPECT_NE(out.find("1:GOT[PING1]\n"), std::string::npos) << out.substr(0, 400);
  EXPECT_NE(out.find("3:GOT[PING3]\n"), std::string::npos) << out.substr(0, 400);
  EXPECT_NE(out.find("5:GOT[GET /5 HTTP/1.1\r\nHost: x.test\r\n\r\n]\n"), std::string::npos) << out.substr(0, 400);
  for (char leak : {'X', 'Y', 'Z'}) EXPECT_EQ(out.find(leak), std::string::npos) << leak << ": " << out.substr(0, 400);
}

// A relay from a fast server to a client that reads 4 KiB every 50 ms, for
// 3 s: the CPU time the gateway process used meanwhile.
std::string spin(bool small_pipes) {
  World w([](int, int c) {
    std::string big(64 << 20, 'S');
    send_all(c, big);
    close(c);
  });
  become_user(private_uid(), 0);
  std::vector<int> hog;
  if (small_pipes) {
    // Over fs/pipe-user-pages-soft for this uid: its new pipes get 2 pages.
    for (int i = 0; i < 4096; ++i) {
      int p[2];
      if (pipe2(p, O_CLOEXEC) != 0) break;
      hog.push_back(p[0]), hog.push_back(p[1]);
      if (fcntl(p[1], F_SETPIPE_SZ, 1 << 20) < 0) break;
    }
  }
  int probe[2];
  if (pipe2(probe, O_CLOEXEC) != 0) return "pipe2 failed";
  int cap = fcntl(probe[1], F_GETPIPE_SZ);
  int grown = fcntl(probe[1], F_SETPIPE_SZ, 1 << 20);
  close(probe[0]), close(probe[1]);
  int c = socks_to(w.socks_port, kUpAddr, kUpPort);
  if (c < 0) return "socks failed";
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  rusage before{}, after{};
  getrusage(RUSAGE_SELF, &before);
  char buf[4096];
  for (auto start = Clock::now(); ms_since(start) < 3000;) {
    if (recv(c, buf, sizeof buf, MSG_DONTWAIT) == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  getrusage(RUSAGE_SELF, &after);
  auto us = [](const timeval& t) { return t.tv_sec * 1000000L + t.tv_usec; };
  long cpu_ms = (us(after.ru_utime) - us(before.ru_utime) + us(after.ru_stime) - us(before.ru_stime)) / 1000;
  close(c);
  for (int fd : hog) close(fd);
  return "pipe=" + std::to_string(cap) + (grown < 0 ? " (cannot grow)" : " (grows)") + " cpu_ms=" + std::to_string(cpu_ms);
}

long cpu_of(const std::string& r) {
  auto p = r.find("cpu_ms=");
  return p == std::string::npos ? -1 : std::stol(r.substr(p + 7));
}

TEST(ReviewNetServer, RelayDoesNotSpinWhenItsPipesAreSmall) {
  // A spinning relay burns about 2.3 s of CPU in these 3 s; one that sleeps
  // uses a few ms. The bound is far from both, so a loaded machine's
  // accounting cannot flip it. Negative control: 1 MiB pipes.
  std::string control = in_child([] { return spin(false); });
  ASSERT_GE(cpu_of(control), 0) << control;
  EXPECT_LT(cpu_of(control), 1000) << control;
  std::string small = in_child([] { return spin(true); });
  ASSERT_GE(cpu_of(small), 0) << small;
  EXPECT_LT(cpu_of(small), 1000) << small;
  std::cout << "control: " << control << "\nsmall pipes: " << small << "\n";
}

}  // namespace
}  // namespace ultari::net
