#include "pool/wire.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace ultari::pool::wire {

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif

namespace {
bool same_ns(pid_t pid, const char* name) {
  struct stat mine{}, theirs{};
  std::string self = std::string("/proc/self/ns/") + name;
  std::string peer = "/proc/" + std::to_string(pid) + "/ns/" + name;
  return stat(self.c_str(), &mine) == 0 && stat(peer.c_str(), &theirs) == 0 && mine.st_ino == theirs.st_ino &&
         mine.st_dev == theirs.st_dev;
}
}  // namespace

bool peer_is_trusted(int sock, std::string& why) {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    why = std::string("SO_PEERCRED: ") + std::strerror(errno);
    return false;
  }
  if (cred.uid != geteuid()) {
    why = "the peer runs as uid " + std::to_string(cred.uid) + ", not as this user";
    return false;
  }
  int pidfd = -1;
  len = sizeof pidfd;
  bool pinned = getsockopt(sock, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) == 0 && pidfd >= 0;
  bool same = cred.pid > 0 && same_ns(cred.pid, "user") && same_ns(cred.pid, "pid");
  // The pid still names the peer (not a process that took the number since).
  if (pinned) {
    same = same && syscall(SYS_pidfd_send_signal, pidfd, 0, nullptr, 0) == 0;
    close(pidfd);
  }
  if (!same) why = "the peer is in another user or pid namespace (a sandboxed process?)";
  return same;
}

bool wait_for(int sock, short events, int timeout_ms) {
  pollfd p{sock, events, 0};
  int rc;
  do rc = poll(&p, 1, timeout_ms);
  while (rc < 0 && errno == EINTR);
  return rc > 0;
}

bool send_record(int sock, const std::string& data, const std::vector<int>& fds) {
  if (data.size() > kMaxRecord || fds.size() > kMaxFds) {
    errno = EMSGSIZE;
    return false;
  }
  iovec iov{const_cast<char*>(data.data()), data.size()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (!fds.empty()) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  ssize_t n;
  do n = sendmsg(sock, &msg, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  return n == static_cast<ssize_t>(data.size());
}

int recv_record(int sock, std::string& data, std::vector<UniqueFd>& fds, int flags) {
  // The record's length first, so the buffer is only as large as needed.
  ssize_t len;
  do len = recv(sock, nullptr, 0, MSG_PEEK | MSG_TRUNC | flags);
  while (len < 0 && errno == EINTR);
  if (len < 0) return -1;
  data.resize(std::min(static_cast<size_t>(len), kMaxRecord) + 1);
  iovec iov{data.data(), data.size()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n;
  do n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | flags);
  while (n < 0 && errno == EINTR);
  fds.clear();
  take_fds(msg, fds);
  if (n < 0) return -1;
  if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
    errno = EMSGSIZE;
    return -1;
  }
  data.resize(static_cast<size_t>(n));
  return n == 0 && fds.empty() ? 0 : 1;
}

}  // namespace ultari::pool::wire
