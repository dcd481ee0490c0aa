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

#include <dirent.h>
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
#include <vector>

#include "isolation/identity.h"
#include "util/caller.h"
#include "util/error.h"
#include "util/paths.h"
#include "util/process.h"
#include "cgroups/cgroups.h"

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77  // Linux 6.5
#endif

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

// /proc's text (a map, a status line) with its blanks made single spaces:
// comparable with format_map.
std::string normalized(const std::string& proc_map) {
  std::string out;
  size_t pos = 0;
  while (pos < proc_map.size()) {
    size_t nl = proc_map.find('\n', pos);
    if (nl == std::string::npos) nl = proc_map.size();
    std::string line = proc_map.substr(pos, nl - pos), words;
    for (size_t i = 0; i < line.size();) {
      while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
      size_t j = i;
      while (j < line.size() && line[j] != ' ' && line[j] != '\t') ++j;
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

bool same_file(const struct stat& a, const struct stat& b) { return a.st_ino == b.st_ino && a.st_dev == b.st_dev; }

// What asking the holder gave.
struct Answer {
  enum Kind {
    None,      // no holder answers (no socket, a dead or stuck one)
    Foreign,   // a namespace not made from ours (the holder of a caller in
               // another user or pid namespace: a container sharing $HOME),
               // or one /proc will not let us check (hidepid=)
    Unusable,  // a holder answered with a namespace that is not the store's
    Ok,
  } kind = None;
  std::string why;  // Unusable: what differs
  UniqueFd ns;      // Ok
};

// Asks the holder on the store's socket for its namespace, and checks it
// before anything joins it: made by our uid, a child of our namespace,
// served by a process of our pid namespace (a sandbox's processes are in
// namespaces of their own) whose maps are exactly the caller and its
// subordinate ids (that the namespace sent is that process's own is seen
// once joined: become_root_of).
Answer ask_holder(int dir, const SubIds& ids) {
  Answer a;
  UniqueFd s(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!s) throw_errno("socket (asking for the image store's user namespace)");
  sockaddr_un addr = address(dir);
  // Non-blocking: a full backlog (a stopped holder, or many askers at
  // once) is EAGAIN, not an endless wait; tried again for up to 2 s.
  for (int i = 0;; ++i) {
    if (connect(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) break;
    if ((errno != EAGAIN && errno != EINTR) || i == 200) return a;
    poll(nullptr, 0, 10);
  }
  pollfd p{s.get(), POLLIN, 0};
  int r;
  do r = poll(&p, 1, 2000);  // a holder that hangs is no holder
  while (r < 0 && errno == EINTR);
  if (r != 1) return a;
  char byte = 0;
  iovec iov{&byte, 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n;
  do n = recvmsg(s.get(), &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  while (n < 0 && errno == EINTR);
  // Every fd that came is ours to close; exactly one is wanted.
  std::vector<UniqueFd> fds;
  if (n >= 0) take_fds(msg, fds);
  if (n != 1 || fds.size() != 1 || (msg.msg_flags & MSG_CTRUNC)) {
    a.kind = Answer::Unusable;
    a.why = "it sent no namespace";
    return a;
  }
  UniqueFd ns = std::move(fds.front());
  UniqueFd parent(ioctl(ns.get(), NS_GET_PARENT));
  struct stat got{}, ours{};
  if (!parent || fstat(parent.get(), &got) != 0 || stat("/proc/self/ns/user", &ours) != 0 || !same_file(got, ours)) {
    a.kind = Answer::Foreign;
    return a;
  }
  a.kind = Answer::Unusable;
  uid_t owner = static_cast<uid_t>(-1);
  if (ioctl(ns.get(), NS_GET_OWNER_UID, &owner) != 0 || owner != geteuid()) {
    a.why = "its namespace belongs to uid " + std::to_string(static_cast<int>(owner)) + ", not to you";
    return a;
  }
  // The peer: the process that listens (SO_PEERCRED at listen time: the
  // holder binds and listens itself), pinned by a pidfd.
  ucred cred{};
  socklen_t len = sizeof cred;
  int pidfd = -1;
  socklen_t pidfd_len = sizeof pidfd;
  if (getsockopt(s.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || cred.pid <= 0) {
    a.kind = Answer::Foreign;  // not in our pid namespace
    return a;
  }
  UniqueFd pin;
  if (getsockopt(s.get(), SOL_SOCKET, SO_PEERPIDFD, &pidfd, &pidfd_len) == 0) {
    pin.reset(pidfd);
  } else if (errno == ESRCH) {
    a.kind = Answer::None;  // the listener is gone (its pid may be another's now)
    return a;
  }  // ENOPROTOOPT, EINVAL: a kernel before 6.5, no pin
  // Its pid namespace is ours: NSpid lists one pid. Read from the pidfd's
  // fdinfo where there is one (our own fd: a hidepid /proc cannot hide
  // it), else from /proc/PID/status (its /proc/PID/ns links are closed to
  // us either way: the holder is not dumpable).
  const std::string proc = "/proc/" + std::to_string(cred.pid);
  std::string status = read_or_empty(pin ? "/proc/self/fdinfo/" + std::to_string(pin.get()) : proc + "/status");
  size_t nspid = status.find("\nNSpid:");
  size_t eol = nspid == std::string::npos ? nspid : status.find('\n', nspid + 1);
  std::string pids = nspid == std::string::npos ? "" : normalized(status.substr(nspid + 7, eol - nspid - 7));
  if (pids.find(' ') != std::string::npos) {
    a.why = "the process serving it is in another pid namespace (a sandbox's?)";
    return a;
  }
  // Its maps are read here; that the namespace it sent is its own is
  // checked once joined (become_root_of).
  Identity want = store_maps(ids);
  std::string uid_map = normalized(read_or_empty(proc + "/uid_map"));
  std::string gid_map = normalized(read_or_empty(proc + "/gid_map"));
  if (pids.empty() || uid_map.empty() || gid_map.empty()) {
    // /proc will not tell (hidepid=, ProtectProc=): nothing can be checked,
    // so nothing is joined nor replaced.
    a.kind = Answer::Foreign;
    return a;
  }
  // Still the process the pid named when its files were read.
  if (pin && syscall(SYS_pidfd_send_signal, pin.get(), 0, nullptr, 0) != 0) {
    a.why = "the process serving it is gone";
    return a;
  }
  if (uid_map != format_map(want.uid_map) || gid_map != format_map(want.gid_map)) {
    a.why = "its namespace maps uids " + uid_map + " and gids " + gid_map + ", not " + format_map(want.uid_map) +
            " and " + format_map(want.gid_map) + " (did /etc/subuid or /etc/subgid change?)";
    return a;
  }
  a.kind = Answer::Ok;
  a.ns = std::move(ns);
  return a;
}

// Are processes other than this one in the user namespace `ns`? (A warm
// pool, a long run: the holder stays while they live, so that later
// commands join the namespace they are in.)
bool others_inside(const struct stat& ns) {
  DIR* d = opendir("/proc");
  if (!d) return false;
  bool found = false;
  const pid_t self = getpid();
  char link[300];
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] < '1' || e->d_name[0] > '9' || std::atoi(e->d_name) == self) continue;
    std::snprintf(link, sizeof link, "/proc/%s/ns/user", e->d_name);
    struct stat st{};
    if (stat(link, &st) == 0 && same_file(st, ns)) {
      found = true;
      break;
    }
  }
  closedir(d);
  return found;
}

// The holder, in its own session, with no fd but `listener` and `dir`.
// Answers each connection with an fd of its namespace; leaves after
// `idle` seconds without one, unless an asker holds the lock or a process
// still runs in the namespace.
[[noreturn]] void serve(int listener, int dir, const struct stat& socket_st, int idle) {
  int ns = open("/proc/self/ns/user", O_RDONLY | O_CLOEXEC);
  struct stat ns_st{};
  if (ns < 0 || fstat(ns, &ns_st) != 0) _exit(1);
  for (;;) {
    pollfd p{listener, POLLIN, 0};
    int r = poll(&p, 1, idle * 1000);
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) {
      if (others_inside(ns_st)) continue;
      int lock = openat(dir, kLock, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
      if (lock >= 0 && flock(lock, LOCK_EX | LOCK_NB) != 0) {
        close(lock);
        continue;  // being asked right now
      }
      struct stat st{};
      if (fstatat(dir, kSocket, &st, AT_SYMLINK_NOFOLLOW) == 0 && same_file(st, socket_st)) unlinkat(dir, kSocket, 0);
      _exit(0);
    }
    int c = accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) {
      poll(nullptr, 0, 100);  // out of fds, say: no busy loop
      continue;
    }
    const char byte = 'n';
    send_fd(c, &byte, 1, ns, MSG_DONTWAIT);
    close(c);
  }
}

// Makes a holder (the lock is held exclusively): the holder, twice forked
// (not our child: it outlives us), unshares, has its maps written by the
// helpers we run, then binds and listens on the socket itself (so that a
// client's SO_PEERCRED names it). Returns its pid. Throws Error; on any
// failure no holder stays and the socket is gone.
pid_t make_holder(int dir, const SubIds& ids, int idle) {
  if (unlinkat(dir, kSocket, 0) != 0 && errno != ENOENT) throw_errno(std::string("remove a stale ") + kSocket);
  struct Unbind {
    int dir;
    bool armed = true;
    ~Unbind() {
      if (armed) unlinkat(dir, kSocket, 0);
    }
  } unbind{dir};
  // Where the holder goes in a delegated cgroup v2 tree: out of the
  // caller's group, which a command may need to have to itself.
  const cgroups::Layout layout = cgroups::detect();
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
    setsid();  // a session of its own, its id its pid
    prctl(PR_SET_NAME, kName, 0, 0, 0);
    auto report = [&](int32_t v) { return write(up_w.get(), &v, sizeof v) == sizeof v; };
    int32_t self = unshare(CLONE_NEWUSER) == 0 ? static_cast<int32_t>(getpid()) : -errno;
    if (!report(self) || self < 0) _exit(1);
    char go = 0;
    if (read(down_r.get(), &go, 1) != 1 || go != 'm') _exit(1);  // the maps were not written
    // Not dumpable (its /proc files become root's) only now: newuidmap
    // checks that the target is the caller's.
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    // Default dispositions (an ignored SIGTERM, say, would survive from the
    // caller) and no signal blocked.
    struct sigaction dfl{};
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; ++sig)
      if (sig != SIGKILL && sig != SIGSTOP) sigaction(sig, &dfl, nullptr);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    cgroups::leave_for_own_leaf(layout);
    int listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a = address(dir);
    struct stat socket_st{};
    if (listener < 0 || bind(listener, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        fstatat(dir, kSocket, &socket_st, AT_SYMLINK_NOFOLLOW) != 0 || listen(listener, 64) != 0) {
      report(-errno);
      _exit(1);
    }
    if (chdir("/") != 0) _exit(1);
    // It lives on: neither the caller's command line (host paths) nor its
    // environment (credentials, perhaps) stays with it.
    if (auto [area, len] = argv_area(); area && len > sizeof kName) {
      std::memset(area, 0, len);
      std::memcpy(area, kName, sizeof kName);
    }
    for (char** e = environ; e && *e; ++e) std::memset(*e, 0, std::strlen(*e));
    if (!report(0)) _exit(1);
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    for (int fd = 0; fd < 3; ++fd)  // no terminal, no caller's pipes kept open
      if (null < 0 || dup2(null, fd) < 0) close(fd);
    // Everything else of ours goes (other fds, a caller's pipes, the lock
    // we hold): only the listener and the directory stay.
    int l = fcntl(listener, F_DUPFD_CLOEXEC, 3), d = fcntl(dir, F_DUPFD_CLOEXEC, 3);
    if (l < 0 || d < 0) _exit(1);
    int lo = l < d ? l : d, hi = l < d ? d : l;
    syscall(SYS_close_range, 3U, static_cast<unsigned>(lo - 1), 0U);
    syscall(SYS_close_range, static_cast<unsigned>(lo + 1), static_cast<unsigned>(hi - 1), 0U);
    syscall(SYS_close_range, static_cast<unsigned>(hi + 1), ~0U, 0U);
    serve(l, d, socket_st, idle);
  }
  up_w.reset();
  down_r.reset();
  while (waitpid(middle, nullptr, 0) < 0 && errno == EINTR) {
  }
  auto receive = [&](int32_t& v) {
    ssize_t n;
    do n = read(up_r.get(), &v, sizeof v);
    while (n < 0 && errno == EINTR);
    return n == sizeof v;
  };
  int32_t holder = 0;
  if (!receive(holder)) throw Error("the image store's user namespace holder died before it started");
  if (holder < 0) throw_errno("unshare(CLONE_NEWUSER) for the image store's owners", -holder);
  // Its namespace gets the caller's ids; on failure the closed pipe ends it.
  write_maps(holder, store_maps(ids));
  if (write(down_w.get(), "m", 1) != 1) throw_errno("start the image store's user namespace holder");
  int32_t ready = 1;
  if (!receive(ready)) throw Error("the image store's user namespace holder died before it listened");
  if (ready < 0) throw_errno(std::string("the image store's user namespace holder: bind ") + kSocket, -ready);
  unbind.armed = false;
  return holder;
}

// Joins `ns` (checked by ask_holder). A namespace that turns out other
// than checked leaves this process in it: nothing more may run.
void become_root_of(int ns, const SubIds& ids) {
  if (setns(ns, CLONE_NEWUSER) != 0) throw_errno("setns into the image store's user namespace");
  Identity want = store_maps(ids);
  if (normalized(read_or_empty("/proc/self/uid_map")) != format_map(want.uid_map) ||
      normalized(read_or_empty("/proc/self/gid_map")) != format_map(want.gid_map)) {
    static const char msg[] = "ultari: error: the image store's user namespace changed while it was joined\n";
    (void)!write(2, msg, sizeof msg - 1);
    _exit(125);
  }
}

// flock with a bound on the wait (a stopped holder may hold it): false
// when it was not had within about three seconds.
bool lock_within(int fd, int op) {
  for (int i = 0; i < 300; ++i) {
    if (flock(fd, op | LOCK_NB) == 0) return true;
    if (errno != EWOULDBLOCK && errno != EINTR) return false;
    poll(nullptr, 0, 10);
  }
  return false;
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
  // one else may enter; otherwise (or before the store exists, or when
  // the holder's namespace is not for us) the namespace is this
  // process's own.
  const int idle = idle_seconds();
  UniqueFd dir(open(store_dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW));
  struct stat st{};
  bool joined = false;
  if (idle > 0 && dir && fstat(dir.get(), &st) == 0 && st.st_uid == geteuid() && !(st.st_mode & 077)) {
    UniqueFd lock(openat(dir.get(), kLock, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (!lock) throw_errno("open " + store_dir + "/" + kLock);
    Answer a;
    if (lock_within(lock.get(), LOCK_SH)) {
      a = ask_holder(dir.get(), ids);
      // None or unusable: converted to exclusive (not atomically: ask
      // again under it), then a holder is made, in place of an unusable one.
      if ((a.kind == Answer::None || a.kind == Answer::Unusable) && lock_within(lock.get(), LOCK_EX)) {
        a = ask_holder(dir.get(), ids);
        if (a.kind == Answer::None || a.kind == Answer::Unusable) {
          if (a.kind == Answer::Unusable)
            std::fprintf(stderr, "ultari: warning: replacing the holder of the image store's user namespace on %s/%s: %s\n",
                         store_dir.c_str(), kSocket, a.why.c_str());
          pid_t made = make_holder(dir.get(), ids, idle);
          a = ask_holder(dir.get(), ids);
          if (a.kind != Answer::Ok) {
            // Our own holder fails our checks (a /proc that hides it, say):
            // it goes, and this command makes a namespace of its own.
            kill(made, SIGKILL);
            unlinkat(dir.get(), kSocket, 0);
            std::fprintf(stderr, "ultari: warning: the image store's user namespace holder cannot be checked (%s); "
                         "this command maps a namespace of its own\n", a.why.empty() ? "/proc hides it" : a.why.c_str());
            a.kind = Answer::None;
          }
        }
      }
    }
    lock.reset();
    if (a.kind == Answer::Ok) {
      become_root_of(a.ns.get(), ids);
      joined = true;
    }
  }
  if (!joined) unshare_and_map(ids);
  // Root there (the caller's own uid maps to 0). The caller's supplementary
  // groups stay: unmapped there (they show as nogroup), they still grant
  // what they grant on the host (a --net-policy or --report path, a bind
  // source), to this process and to the programs it runs outside a
  // sandbox (debootstrap); each sandbox's init drops them.
  if (setresgid(0, 0, 0) != 0 || setresuid(0, 0, 0) != 0) throw_errno("become root of the image store's namespace");
  note_store_namespace(ids.uid, ids.gid);
}

}  // namespace ultari::isolation
