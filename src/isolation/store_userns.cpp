// The user namespace of a rootless image store that keeps owners: the
// caller is root there, its subordinate ids are 1..65535
// (enter_store_namespace).
//
// Only newuidmap and newgidmap, two setuid programs, may write such maps,
// and each start would pay their two execs (about 6 ms here). So, as
// podman's pause process does, one small process per store holds the
// namespace: the first command makes it, later ones ask it over a unix
// socket in the store's 0700 directory for an fd of the namespace and
// setns into it. It leaves when nobody asked for a while (default 60 s;
// ULTARI_USERNS_IDLE_SECONDS, 0: no holder).
//
//   store dir/userns.sock   the holder's listening socket
//   store dir/userns.lock   shared by askers, exclusive to make a holder or
//                           to leave (so none leaves while one is asked)

#include <fcntl.h>
#include <grp.h>
#include <linux/nsfs.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>

#include "isolation/identity.h"
#include "util/caller.h"
#include "util/error.h"
#include "util/paths.h"
#include "util/process.h"

namespace ultari::isolation {
namespace {

constexpr char kSocket[] = "userns.sock";
constexpr char kLock[] = "userns.lock";
constexpr char kName[] = "ultari-userns";
constexpr int kDefaultIdleSeconds = 60;

Identity store_maps(const SubIds& ids) {
  Identity map;
  map.uid_map = {{0, ids.uid, 1}, {1, ids.uid_start, kRangeSize - 1}};
  map.gid_map = {{0, ids.gid, 1}, {1, ids.gid_start, kRangeSize - 1}};
  map.helper_maps = true;
  return map;
}

// "inside outside count" lines, as /proc/PID/uid_map shows them.
std::string format_map(const std::vector<IdRange>& map) {
  std::string out;
  for (const auto& r : map)
    out += std::to_string(r.inside) + " " + std::to_string(r.outside) + " " + std::to_string(r.count) + "\n";
  return out;
}

std::string normalized(const std::string& proc_map) {
  std::string out;
  size_t pos = 0;
  while (pos < proc_map.size()) {
    size_t nl = proc_map.find('\n', pos);
    if (nl == std::string::npos) nl = proc_map.size();
    std::string line = proc_map.substr(pos, nl - pos), words;
    for (size_t i = 0; i < line.size();) {
      while (i < line.size() && line[i] == ' ') ++i;
      size_t j = i;
      while (j < line.size() && line[j] != ' ') ++j;
      if (j > i) words += (words.empty() ? "" : " ") + line.substr(i, j - i);
      i = j;
    }
    if (!words.empty()) out += words + "\n";
    pos = nl + 1;
  }
  return out;
}

// How long a holder waits unasked before it leaves; 0: no holder (each
// command makes a namespace of its own).
int idle_seconds() {
  const char* env = std::getenv("ULTARI_USERNS_IDLE_SECONDS");
  if (!env || !*env) return kDefaultIdleSeconds;
  char* end = nullptr;
  long v = std::strtol(env, &end, 10);
  if (*end || v < 0 || v > 86400)
    throw Error("ULTARI_USERNS_IDLE_SECONDS='" + std::string(env) + "': seconds from 0 (no holder) to 86400");
  return static_cast<int>(v);
}

// The socket's address through the directory's fd: short whatever the
// store's path, and never resolved again from the path.
sockaddr_un address(int dir) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof a.sun_path, "/proc/self/fd/%d/%s", dir, kSocket);
  return a;
}

// An fd of the holder's namespace, or nothing when no holder answers. The
// namespace must be a child of ours made by our uid: a namespace made
// inside a sandbox (also our uid on the host) is refused.
std::optional<UniqueFd> ask_holder(int dir) {
  UniqueFd s(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!s) throw_errno("socket (asking for the image store's user namespace)");
  sockaddr_un a = address(dir);
  if (connect(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return std::nullopt;
  char byte = 0;
  iovec iov{&byte, 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  pollfd p{s.get(), POLLIN, 0};
  if (poll(&p, 1, 2000) != 1) return std::nullopt;  // a holder that hangs is no holder
  ssize_t n;
  do n = recvmsg(s.get(), &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  while (n < 0 && errno == EINTR);
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  if (n != 1 || !c || c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS || c->cmsg_len != CMSG_LEN(sizeof(int)))
    return std::nullopt;
  int fd;
  std::memcpy(&fd, CMSG_DATA(c), sizeof fd);
  UniqueFd ns(fd);
  uid_t owner = static_cast<uid_t>(-1);
  if (ioctl(ns.get(), NS_GET_OWNER_UID, &owner) != 0 || owner != geteuid())
    throw Error("the image store's user namespace holder sent a namespace of uid " + std::to_string(owner) +
                ", not yours: is something else listening on " + std::string(kSocket) + "?");
  UniqueFd parent(ioctl(ns.get(), NS_GET_PARENT));
  struct stat got{}, ours{};
  if (!parent || fstat(parent.get(), &got) != 0 || stat("/proc/self/ns/user", &ours) != 0 || got.st_ino != ours.st_ino ||
      got.st_dev != ours.st_dev)
    throw Error("the image store's user namespace holder sent a namespace that is not a child of this one");
  return ns;
}

// The holder, in its own session, with no fd but `listener` and `dir`.
// Answers each connection with an fd of its namespace; leaves after
// `idle` seconds without one, unless an asker holds the lock.
[[noreturn]] void serve(int listener, int dir, ino_t socket_ino, int idle) {
  int ns = open("/proc/self/ns/user", O_RDONLY | O_CLOEXEC);
  if (ns < 0) _exit(1);
  for (;;) {
    pollfd p{listener, POLLIN, 0};
    int r = poll(&p, 1, idle * 1000);
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) {
      int lock = openat(dir, kLock, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
      if (lock >= 0 && flock(lock, LOCK_EX | LOCK_NB) != 0) {
        close(lock);
        continue;  // being asked right now
      }
      struct stat st{};
      if (fstatat(dir, kSocket, &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_ino == socket_ino) unlinkat(dir, kSocket, 0);
      _exit(0);
    }
    int c = accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) continue;
    char byte = 'n';
    iovec iov{&byte, 1};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    cmsghdr* cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(cm), &ns, sizeof ns);
    sendmsg(c, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    close(c);
  }
}

// Makes a holder (the lock is held exclusively): binds the socket, starts
// the holder twice forked (not our child: it outlives us), has its maps
// written. Throws Error; on any failure no holder stays.
void make_holder(int dir, const SubIds& ids, int idle) {
  UniqueFd listener(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!listener) throw_errno("socket (the image store's user namespace holder)");
  if (unlinkat(dir, kSocket, 0) != 0 && errno != ENOENT) throw_errno(std::string("remove a stale ") + kSocket);
  sockaddr_un a = address(dir);
  if (bind(listener.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) throw_errno(std::string("bind ") + kSocket);
  struct stat st{};
  if (fstatat(dir, kSocket, &st, AT_SYMLINK_NOFOLLOW) != 0) throw_errno(std::string("stat ") + kSocket);
  struct Unbind {
    int dir;
    bool armed = true;
    ~Unbind() {
      if (armed) unlinkat(dir, kSocket, 0);
    }
  } unbind{dir};
  if (listen(listener.get(), 64) != 0) throw_errno(std::string("listen ") + kSocket);
  int up[2], down[2];
  if (pipe2(up, O_CLOEXEC) != 0) throw_errno("pipe");
  UniqueFd up_r(up[0]), up_w(up[1]);
  if (pipe2(down, O_CLOEXEC) != 0) throw_errno("pipe");
  UniqueFd down_r(down[0]), down_w(down[1]);
  pid_t middle = fork();
  if (middle < 0) throw_errno("fork (the image store's user namespace holder)");
  if (middle == 0) {
    // Its own session, away from our terminal and process group; then the
    // holder itself, whose parent is gone at once.
    setsid();
    pid_t h = fork();
    if (h != 0) _exit(h < 0 ? 1 : 0);
    prctl(PR_SET_NAME, kName, 0, 0, 0);
    int32_t self = unshare(CLONE_NEWUSER) == 0 ? static_cast<int32_t>(getpid()) : -errno;
    if (write(up_w.get(), &self, sizeof self) != sizeof self || self < 0) _exit(1);
    char go = 0;
    if (read(down_r.get(), &go, 1) != 1 || go != 'm') _exit(1);  // the maps were not written
    // Not dumpable (its /proc files become root's) only now: newuidmap
    // checks that the target is the caller's.
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    if (chdir("/") != 0) _exit(1);
    // It lives on: neither the caller's command line (host paths) nor its
    // environment (credentials, perhaps) stays with it.
    if (auto [area, len] = argv_area(); area && len > sizeof kName) {
      std::memset(area, 0, len);
      std::memcpy(area, kName, sizeof kName);
    }
    for (char** e = environ; e && *e; ++e) std::memset(*e, 0, std::strlen(*e));
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    for (int fd = 0; fd < 3; ++fd)  // no terminal, no caller's pipes kept open
      if (null < 0 || dup2(null, fd) < 0) close(fd);
    // Everything else of ours goes (other fds, a caller's pipes): only the
    // listener and the directory stay.
    int l = fcntl(listener.get(), F_DUPFD_CLOEXEC, 3), d = fcntl(dir, F_DUPFD_CLOEXEC, 3);
    int lo = l < d ? l : d, hi = l < d ? d : l;
    syscall(SYS_close_range, 3U, static_cast<unsigned>(lo - 1), 0U);
    syscall(SYS_close_range, static_cast<unsigned>(lo + 1), static_cast<unsigned>(hi - 1), 0U);
    syscall(SYS_close_range, static_cast<unsigned>(hi + 1), ~0U, 0U);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    serve(l, d, st.st_ino, idle);
  }
  up_w.reset();
  down_r.reset();
  int mstatus = 0;
  while (waitpid(middle, &mstatus, 0) < 0 && errno == EINTR) {
  }
  int32_t holder = 0;
  ssize_t n;
  do n = read(up_r.get(), &holder, sizeof holder);
  while (n < 0 && errno == EINTR);
  if (n != sizeof holder) throw Error("the image store's user namespace holder died before it started");
  if (holder < 0) throw_errno("unshare(CLONE_NEWUSER) for the image store's owners", -holder);
  // Its namespace gets the caller's ids; on failure the closed pipe ends it.
  write_maps(holder, store_maps(ids));
  if (write(down_w.get(), "m", 1) != 1) throw_errno("start the image store's user namespace holder");
  unbind.armed = false;
}

void become_root_of(int ns, const SubIds& ids) {
  if (setns(ns, CLONE_NEWUSER) != 0) throw_errno("setns into the image store's user namespace");
  Identity want = store_maps(ids);
  std::string uid_map = normalized(read_or_empty("/proc/self/uid_map"));
  std::string gid_map = normalized(read_or_empty("/proc/self/gid_map"));
  if (uid_map != format_map(want.uid_map) || gid_map != format_map(want.gid_map))
    throw Error("the image store's user namespace maps uids " + uid_map + " and gids " + gid_map + ", not " +
                format_map(want.uid_map) + " and " + format_map(want.gid_map) +
                " (did /etc/subuid change? end the ultari-userns process)");
}

// The old way, each time: unshare, and the helpers map us from a child
// made before (in our namespace their setuid bit means nothing).
void unshare_and_map(const SubIds& ids) {
  Identity map = store_maps(ids);
  int go[2], result[2];
  if (pipe2(go, O_CLOEXEC) != 0) throw_errno("pipe");
  UniqueFd go_r(go[0]), go_w(go[1]);
  if (pipe2(result, O_CLOEXEC) != 0) throw_errno("pipe");
  UniqueFd result_r(result[0]), result_w(result[1]);
  const pid_t self = getpid();
  pid_t child = fork();
  if (child < 0) throw_errno("fork");
  if (child == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    go_w.reset();
    result_r.reset();
    char c;
    std::string msg;
    if (read(go_r.get(), &c, 1) != 1) _exit(1);  // the parent gave up
    try {
      write_maps(self, map);
    } catch (const std::exception& e) {
      msg = e.what();
    }
    if (msg.empty()) msg = "ok";
    ssize_t n = write(result_w.get(), msg.data(), msg.size());
    _exit(n == static_cast<ssize_t>(msg.size()) ? 0 : 1);
  }
  go_r.reset();
  result_w.reset();
  auto reap = [child] {
    while (waitpid(child, nullptr, 0) < 0 && errno == EINTR) {
    }
  };
  if (unshare(CLONE_NEWUSER) != 0) {
    int err = errno;
    go_w.reset();
    reap();
    throw_errno("unshare(CLONE_NEWUSER) for the image store's owners", err);
  }
  std::string msg;
  char buf[4096];
  if (write(go_w.get(), "g", 1) == 1) {
    for (ssize_t n; (n = read(result_r.get(), buf, sizeof buf)) != 0;) {
      if (n > 0) msg.append(buf, static_cast<size_t>(n));
      else if (errno != EINTR) break;
    }
  }
  reap();
  if (msg != "ok")
    throw Error("entering the image store's user namespace (it keeps owners in your subordinate ids): " +
                (msg.empty() ? std::string("the helper died") : msg));
}

}  // namespace

void enter_store_namespace(const SubIds& ids, const std::string& store_dir) {
  if (in_store_namespace()) return;
  // The holder's socket is trusted only in a directory of ours that no
  // one else may write to; otherwise (or before the store exists) the
  // namespace is made for this process alone.
  const int idle = idle_seconds();
  UniqueFd dir(open(store_dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW));
  struct stat st{};
  if (idle > 0 && dir && fstat(dir.get(), &st) == 0 && st.st_uid == geteuid() && !(st.st_mode & 022)) {
    UniqueFd lock(openat(dir.get(), kLock, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (!lock) throw_errno("open " + store_dir + "/" + kLock);
    while (flock(lock.get(), LOCK_SH) != 0)
      if (errno != EINTR) throw_errno("lock " + store_dir + "/" + kLock);
    std::optional<UniqueFd> ns = ask_holder(dir.get());
    if (!ns) {
      // Converted to exclusive (not atomically: ask again under it).
      while (flock(lock.get(), LOCK_EX) != 0)
        if (errno != EINTR) throw_errno("lock " + store_dir + "/" + kLock);
      ns = ask_holder(dir.get());
      if (!ns) {
        make_holder(dir.get(), ids, idle);
        ns = ask_holder(dir.get());
        if (!ns) throw Error("the image store's user namespace holder does not answer on " + store_dir + "/" + kSocket);
      }
    }
    lock.reset();
    become_root_of(ns->get(), ids);
  } else {
    unshare_and_map(ids);
  }
  // Root there (the caller's own uid maps to 0); none of the caller's
  // supplementary groups (they are not mapped: they would show as nogroup).
  if (setresgid(0, 0, 0) != 0 || setresuid(0, 0, 0) != 0) throw_errno("become root of the image store's namespace");
  if (setgroups(0, nullptr) != 0) throw_errno("setgroups in the image store's namespace");
  note_store_namespace(ids.uid, ids.gid);
}

}  // namespace ultari::isolation
