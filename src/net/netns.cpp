#include "net/netns.h"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_log.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <nftables/libnftables.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "util/fd.h"
#include "util/error.h"

namespace ultari::net {
namespace {

// The rules, in the sandbox's own namespace. Redirected flows are marked
// by conntrack (status dnat) and pass; loopback-to-loopback passes (the
// sandbox's own servers); anything else leaving the namespace is logged
// (rate-limited) and dropped, so the sending call fails with EPERM (IPv6
// is rejected: its TCP connects would otherwise wait for a timeout).
constexpr const char* kRuleset = R"(
table inet ultari {
  chain nat_out {
    type nat hook output priority -100; policy accept;
    udp dport 53 redirect to :53
    ip daddr 127.0.0.0/8 return
    meta nfproto ipv4 meta l4proto tcp redirect to :15001
  }
  chain filter_out {
    type filter hook output priority 0; policy drop;
    ct status dnat accept
    ip saddr 127.0.0.0/8 ip daddr 127.0.0.0/8 accept
    ip6 saddr ::1 ip6 daddr ::1 accept
    limit rate 100/second burst 100 packets log group 7
    meta nfproto ipv6 reject with icmpx type admin-prohibited
  }
}
)";

struct StepError {
  const char* step;
  int err;
  std::string detail;
};

void check(bool ok, const char* step) {
  if (!ok) throw StepError{step, errno, ""};
}

void addattr(nlmsghdr* n, int type, const void* data, int len) {
  auto* rta = reinterpret_cast<rtattr*>(reinterpret_cast<char*>(n) + NLMSG_ALIGN(n->nlmsg_len));
  rta->rta_type = static_cast<unsigned short>(type);
  rta->rta_len = static_cast<unsigned short>(RTA_LENGTH(len));
  std::memcpy(RTA_DATA(rta), data, static_cast<size_t>(len));
  n->nlmsg_len = NLMSG_ALIGN(n->nlmsg_len) + RTA_ALIGN(rta->rta_len);
}

// Sends one request and reads its acknowledgement; false with errno set.
bool netlink_request(int fd, nlmsghdr* req) {
  sockaddr_nl to{};
  to.nl_family = AF_NETLINK;
  if (sendto(fd, req, req->nlmsg_len, 0, reinterpret_cast<sockaddr*>(&to), sizeof to) < 0) return false;
  alignas(nlmsghdr) char buf[4096];
  ssize_t n = recv(fd, buf, sizeof buf, 0);
  if (n < 0) return false;
  auto* h = reinterpret_cast<nlmsghdr*>(buf);
  if (NLMSG_OK(h, static_cast<unsigned>(n)) && h->nlmsg_type == NLMSG_ERROR) {
    auto* e = static_cast<nlmsgerr*>(NLMSG_DATA(h));
    if (e->error != 0) {
      errno = -e->error;
      return false;
    }
  }
  return true;
}

// default dev lo: a connect() to any address finds a route and reaches the
// netfilter hooks, where it is redirected (IPv4) or dropped and logged.
void add_default_route(int family) {
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  check(fd >= 0, "netlink socket");
  struct {
    nlmsghdr n;
    rtmsg r;
    char attrs[64];
  } req{};
  req.n.nlmsg_len = NLMSG_LENGTH(sizeof(rtmsg));
  req.n.nlmsg_type = RTM_NEWROUTE;
  req.n.nlmsg_flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK;
  req.r.rtm_family = static_cast<unsigned char>(family);
  req.r.rtm_table = RT_TABLE_MAIN;
  req.r.rtm_protocol = RTPROT_BOOT;
  req.r.rtm_scope = family == AF_INET ? RT_SCOPE_LINK : RT_SCOPE_UNIVERSE;
  req.r.rtm_type = RTN_UNICAST;
  int lo = static_cast<int>(if_nametoindex("lo"));
  addattr(&req.n, RTA_OIF, &lo, sizeof lo);
  if (family == AF_INET) {
    in_addr src{htonl(INADDR_LOOPBACK)};
    addattr(&req.n, RTA_PREFSRC, &src, sizeof src);
  }
  bool ok = netlink_request(fd, &req.n);
  int err = errno;
  close(fd);
  errno = err;
  check(ok, family == AF_INET ? "default route (IPv4)" : "default route (IPv6)");
}

void bring_up_lo() {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  check(fd >= 0, "socket");
  ifreq ifr{};
  std::strcpy(ifr.ifr_name, "lo");
  bool ok = ioctl(fd, SIOCGIFFLAGS, &ifr) == 0;
  ifr.ifr_flags |= IFF_UP;
  ok = ok && ioctl(fd, SIOCSIFFLAGS, &ifr) == 0;
  int err = errno;
  close(fd);
  errno = err;
  check(ok, "bring up lo");
}

// libnftables is loaded here, in the helper, only: see CMakeLists.txt.
void install_rules() {
  void* lib = dlopen("libnftables.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) throw StepError{"netfilter rules", 0, std::string("cannot load libnftables: ") + dlerror()};
  auto sym = [lib](const char* name) {
    void* f = dlsym(lib, name);
    if (!f) throw StepError{"netfilter rules", 0, std::string("libnftables lacks ") + name};
    return f;
  };
  auto ctx_new = reinterpret_cast<decltype(&nft_ctx_new)>(sym("nft_ctx_new"));
  auto buffer_error = reinterpret_cast<decltype(&nft_ctx_buffer_error)>(sym("nft_ctx_buffer_error"));
  auto run = reinterpret_cast<decltype(&nft_run_cmd_from_buffer)>(sym("nft_run_cmd_from_buffer"));
  auto get_error = reinterpret_cast<decltype(&nft_ctx_get_error_buffer)>(sym("nft_ctx_get_error_buffer"));
  nft_ctx* ctx = ctx_new(NFT_CTX_DEFAULT);
  if (!ctx) throw StepError{"nft_ctx_new", ENOMEM, ""};
  buffer_error(ctx);
  int rc = run(ctx, kRuleset);
  const char* error = get_error(ctx);
  // The helper exits right after: the context is not freed.
  if (rc != 0) throw StepError{"netfilter rules", 0, error ? error : "rejected"};
}

int listener(int type, int port) {
  int fd = socket(AF_INET, type | SOCK_CLOEXEC, 0);
  check(fd >= 0, "socket");
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  check(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0, "bind a listener on the sandbox's loopback");
  if (type == SOCK_STREAM) check(listen(fd, 512) == 0, "listen");
  return fd;
}

// A netlink socket that receives the packets the rules log (NFLOG group).
int nflog_socket() {
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
  check(fd >= 0, "nflog socket");
  sockaddr_nl local{};
  local.nl_family = AF_NETLINK;
  check(bind(fd, reinterpret_cast<sockaddr*>(&local), sizeof local) == 0, "nflog bind");
  auto config = [fd](uint16_t family, uint16_t group, int attr, const void* data, int len) {
    struct {
      nlmsghdr n;
      nfgenmsg g;
      char attrs[64];
    } req{};
    req.n.nlmsg_len = NLMSG_LENGTH(sizeof(nfgenmsg));
    req.n.nlmsg_type = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG;
    req.n.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
    req.g.nfgen_family = static_cast<uint8_t>(family);
    req.g.version = NFNETLINK_V0;
    req.g.res_id = htons(group);
    addattr(&req.n, attr, data, len);
    check(netlink_request(fd, &req.n), "nflog config");
  };
  nfulnl_msg_config_cmd bind_cmd{NFULNL_CFG_CMD_BIND};
  config(AF_UNSPEC, kLogGroup, NFULA_CFG_CMD, &bind_cmd, sizeof bind_cmd);
  nfulnl_msg_config_mode mode{};
  mode.copy_mode = NFULNL_COPY_PACKET;
  mode.copy_range = htonl(64);  // headers are enough to name the flow
  config(AF_UNSPEC, kLogGroup, NFULA_CFG_MODE, &mode, sizeof mode);
  uint32_t one = htonl(1);  // deliver each packet at once, no batching
  config(AF_UNSPEC, kLogGroup, NFULA_CFG_QTHRESH, &one, sizeof one);
  return fd;
}

[[noreturn]] void helper(int pidfd, int sock) {
  int fds[5] = {-1, -1, -1, -1, -1};
  std::string error;
  try {
    check(setns(pidfd, CLONE_NEWUSER | CLONE_NEWNET) == 0, "join the sandbox's namespaces");
    bring_up_lo();
    add_default_route(AF_INET);
    try {
      add_default_route(AF_INET6);
    } catch (const StepError&) {
      // No IPv6 in this kernel or namespace: IPv6 connects fail with
      // ENETUNREACH instead of being logged.
    }
    install_rules();
    fds[0] = listener(SOCK_STREAM, kTransparentPort);
    fds[1] = listener(SOCK_STREAM, kHttpProxyPort);
    fds[2] = listener(SOCK_STREAM, kSocksPort);
    fds[3] = listener(SOCK_DGRAM, kDnsPort);
    fds[4] = nflog_socket();
  } catch (const StepError& e) {
    error = std::string(e.step) + ": " + (e.detail.empty() ? std::strerror(e.err) : e.detail);
  }
  if (!error.empty()) {
    if (send(sock, error.data(), error.size(), MSG_NOSIGNAL) < 0) _exit(1);
    _exit(1);
  }
  char ok = 0;
  _exit(send_fds(sock, &ok, 1, fds, std::size(fds)) == 1 ? 0 : 1);
}

}  // namespace

Endpoints attach(int pidfd) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) throw_errno("socketpair");
  UniqueFd mine(sv[0]), theirs(sv[1]);
  pid_t pid = fork();
  if (pid < 0) throw_errno("fork (network setup)");
  if (pid == 0) helper(pidfd, theirs.get());
  theirs.reset();

  char buf[1024];
  iovec iov{buf, sizeof buf};
  alignas(cmsghdr) char control[CMSG_SPACE(5 * sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  pollfd p{mine.get(), POLLIN, 0};
  ssize_t n = poll(&p, 1, 10000) > 0 ? recvmsg(mine.get(), &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT) : -1;
  int recv_errno = errno;
  Endpoints e;
  UniqueFd* slots[5] = {&e.transparent, &e.http_proxy, &e.socks, &e.dns, &e.nflog};
  int got = 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); n > 0 && c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    int fds[5];
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    std::memcpy(fds, CMSG_DATA(c), std::min(count, size_t{5}) * sizeof(int));
    for (size_t i = 0; i < count && i < 5; ++i) slots[got++]->reset(fds[i]);
  }
  if (n <= 0) kill(pid, SIGKILL);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (n == 1 && got == 5 && WIFEXITED(status) && WEXITSTATUS(status) == 0) return e;
  if (n > 1) throw Error("network setup: " + std::string(buf, static_cast<size_t>(n)));
  throw Error(std::string("network setup: the helper ") + (n < 0 ? std::string("did not answer: ") + std::strerror(recv_errno) : "failed"));
}

}  // namespace ultari::net
