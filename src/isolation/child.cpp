// The child's recipe, top to bottom:
//   1. join the cgroups, wait for the supervisor (id maps written)
//   2. own cgroup namespace, new session, die with the supervisor
//   3. build the root filesystem and pivot into it
//   4. hostname, loopback up
//   5. no_new_privs + seccomp (listener fd to the supervisor)
//   6. report ready, receive the command (now or, from a warm pool, later)
//   7. fork the boot step (if any) as root and wait for it; then fork the
//      payload: identity, capabilities, rlimits, fds, cwd, exec
//   8. as pid 1: drop everything, forward signals, reap, report the payload's end
#include "isolation/child.h"

#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/close_range.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "isolation/channel.h"
#include "util/fd.h"

#ifndef SECBIT_NOROOT
#define SECBIT_NOROOT (1 << 0)
#define SECBIT_NOROOT_LOCKED (1 << 1)
#define SECBIT_NO_SETUID_FIXUP (1 << 2)
#define SECBIT_NO_SETUID_FIXUP_LOCKED (1 << 3)
#define SECBIT_KEEP_CAPS_LOCKED (1 << 5)
#define SECBIT_NO_CAP_AMBIENT_RAISE (1 << 6)
#define SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED (1 << 7)
#endif

namespace ultari::isolation {
namespace {

volatile pid_t g_payload = 0;

void send_msg(int sock, const Msg& m) {
  while (send(sock, &m, sizeof m, MSG_NOSIGNAL) < 0 && errno == EINTR) {
  }
}

// Ends init (or the payload before its exec) so that the supervisor reads
// what was sent last. Closing a SOCK_SEQPACKET socket with records still
// unread in it (a command blob init rejected after its first message, a
// second command) resets the connection, and the peer's next recv fails
// with ECONNRESET ahead of the records queued for it: a reader that takes
// that for the end never sees the SetupError or Exited. So: no more records
// may come (SHUT_RD: the peer's sends fail with EPIPE from now on), the
// unread ones are dropped, then exit.
[[noreturn]] void leave(int sock, int status) {
  shutdown(sock, SHUT_RD);
  char byte;
  ssize_t n;
  do n = recv(sock, &byte, sizeof byte, MSG_DONTWAIT | MSG_TRUNC);
  while (n > 0 || (n < 0 && errno == EINTR));
  _exit(status);
}

[[noreturn]] void fail(const ChildPlan& p, const char* step, const char* detail, int err) {
  Msg m{};
  m.type = MsgType::SetupError;
  m.err = err;
  copy_cstr(m.step, sizeof m.step, step);
  copy_cstr(m.detail, sizeof m.detail, detail);
  send_msg(p.sock, m);
  leave(p.sock, 125);
}

void send_fd(int sock, MsgType type, int fd) {
  Msg m{};
  m.type = type;
  ultari::send_fd(sock, &m, sizeof m, fd);
}

int loopback_up() {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return -errno;
  ifreq ifr{};
  copy_cstr(ifr.ifr_name, sizeof ifr.ifr_name, "lo");
  int rc = 0;
  if (ioctl(s, SIOCGIFFLAGS, &ifr) != 0) rc = -errno;
  ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
  if (rc == 0 && ioctl(s, SIOCSIFFLAGS, &ifr) != 0) rc = -errno;
  close(s);
  return rc;
}

// The bounding set goes first so that execve can never regain anything
// (but the capabilities kept, `keep`).
int drop_bounding_and_ambient(int cap_last, uint64_t keep) {
  for (int cap = 0; cap <= cap_last; ++cap)
    if (!(cap < 64 && (keep >> cap) & 1) && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL)
      return -errno;
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0) return -errno;
  return 0;
}

// Sets the effective, permitted and inheritable sets to `caps` (0: empties them).
int set_capabilities(uint64_t caps) {
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2] = {};
  for (int i = 0; i < 2; ++i) {
    auto word = static_cast<uint32_t>(caps >> (32 * i));
    data[i].effective = data[i].permitted = data[i].inheritable = word;
  }
  if (syscall(SYS_capset, &hdr, data) != 0) return -errno;
  return 0;
}
int clear_capabilities() { return set_capabilities(0); }

// A payload that runs as root with capabilities kept: they become ambient,
// so they survive execve (SECBIT_NOROOT gives root nothing by itself) and
// are lost, as usual, when it changes to another uid.
int keep_capabilities(uint64_t keep) {
  if (int rc = set_capabilities(keep); rc != 0) return rc;
  for (int cap = 0; cap < 64; ++cap)
    if ((keep >> cap) & 1 && prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) != 0) return -errno;
  return 0;
}

void forward_signal(int sig) {
  if (g_payload > 0) kill(g_payload, sig);
}

constexpr int kForwarded[] = {SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH, SIGCONT, SIGALRM};

void reset_dispositions() {
  struct sigaction dfl{};
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig)
    if (sig != SIGKILL && sig != SIGSTOP) sigaction(sig, &dfl, nullptr);
}

// The command, parsed in place from the blob the supervisor sent.
struct Command {
  const CommandHead* head = nullptr;
  const char* cwd = "/";
  const char* const* argv = nullptr;   // nullptr-terminated
  const char* const* envp = nullptr;   // nullptr-terminated
  const char* const* candidates = nullptr;
  uint32_t uid = 0, gid = 0;
  const char* const* boot = nullptr;   // nullptr-terminated; nullptr: no boot step
};

struct Payload {
  const ChildPlan* plan;
  Command cmd;
  bool boot = false;  // the boot step: an exec failure is its exit status (127/126), not the command's
};

alignas(CommandHead) char g_blob[kMaxCommandBytes];
const char* g_strings[kMaxCommandStrings + 4];  // and each list's nullptr (4 lists)

// Receives the command: a Command message, then its blob as raw records.
// Returns false when the supervisor went away first.
bool receive_command(const ChildPlan& p, Command& out) {
  Msg m{};
  ssize_t n;
  do n = recv(p.sock, &m, sizeof m, 0);
  while (n < 0 && errno == EINTR);
  if (n != sizeof m || m.type != MsgType::Command) return false;
  if (m.value < static_cast<int64_t>(sizeof(CommandHead)) || m.value > static_cast<int64_t>(sizeof g_blob))
    fail(p, "receive command", "bad size", EINVAL);
  size_t total = static_cast<size_t>(m.value), have = 0;
  while (have < total) {
    do n = recv(p.sock, g_blob + have, total - have, 0);
    while (n < 0 && errno == EINTR);
    if (n <= 0) return false;
    have += static_cast<size_t>(n);
  }
  const auto* head = reinterpret_cast<const CommandHead*>(g_blob);
  size_t count = 1 + size_t{head->argc} + head->envc + head->candc + head->bootc;
  if (head->argc == 0 || count > kMaxCommandStrings || head->nlimits > 16) fail(p, "receive command", "bad header", EINVAL);
  // Split the strings; each list gets its terminating nullptr.
  const char* c = g_blob + sizeof(CommandHead);
  const char* end = g_blob + total;
  size_t slot = 0;
  auto take = [&](size_t k) {
    for (size_t i = 0; i < k; ++i) {
      if (c >= end) return false;
      g_strings[slot++] = c;
      while (c < end && *c) ++c;
      if (c == end) return false;
      ++c;
    }
    return true;
  };
  if (!take(1)) fail(p, "receive command", "truncated", EINVAL);
  out.cwd = g_strings[0];
  out.argv = g_strings + slot;
  if (!take(head->argc)) fail(p, "receive command", "truncated", EINVAL);
  g_strings[slot++] = nullptr;
  out.envp = g_strings + slot;
  if (!take(head->envc)) fail(p, "receive command", "truncated", EINVAL);
  g_strings[slot++] = nullptr;
  out.candidates = g_strings + slot;
  if (!take(head->candc)) fail(p, "receive command", "truncated", EINVAL);
  g_strings[slot++] = nullptr;
  if (head->bootc) {
    out.boot = g_strings + slot;
    if (!take(head->bootc)) fail(p, "receive command", "truncated", EINVAL);
    g_strings[slot++] = nullptr;
  }
  out.head = head;
  out.uid = head->uid;
  out.gid = head->gid;
  return true;
}

[[noreturn]] void payload_main(const Payload& pl) {
  const ChildPlan& p = *pl.plan;
  const CommandHead& h = *pl.cmd.head;
  // Init already reset the signal dispositions and emptied the bounding
  // and ambient sets (before its seccomp filter, where each call is
  // cheaper); what is left is the signal mask and the identity switch,
  // after which the remaining capability sets are emptied.
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  if (setresgid(pl.cmd.gid, pl.cmd.gid, pl.cmd.gid) != 0) fail(p, "setresgid", "", errno);
  if (p.setgroups_allowed && setgroups(0, nullptr) != 0) fail(p, "setgroups", "", errno);
  if (setresuid(pl.cmd.uid, pl.cmd.uid, pl.cmd.uid) != 0) fail(p, "setresuid", "", errno);
  if (p.keep_caps && pl.cmd.uid == 0) {
    if (int rc = keep_capabilities(p.keep_caps); rc != 0) fail(p, "keep capabilities", "", -rc);
  } else if (int rc = clear_capabilities(); rc != 0) {
    fail(p, "drop capabilities", "", -rc);
  }
  for (uint32_t i = 0; i < h.nlimits && i < 16; ++i) {
    auto res = static_cast<__rlimit_resource>(h.limits[i].resource);
    if (res == RLIMIT_CORE) continue;  // init's, fixed before its filter
    rlimit cur{};
    if (getrlimit(res, &cur) != 0) fail(p, "setrlimit", "", errno);
    rlimit want{h.limits[i].soft, h.limits[i].hard};
    if (want.rlim_max > cur.rlim_max) want.rlim_max = cur.rlim_max;  // cannot be raised here
    if (want.rlim_cur > want.rlim_max) want.rlim_cur = want.rlim_max;
    if ((want.rlim_cur != cur.rlim_cur || want.rlim_max != cur.rlim_max) && setrlimit(res, &want) != 0)
      fail(p, "setrlimit", "", errno);
  }
  // Only ever nicer than init: raising the priority needs CAP_SYS_NICE on the host.
  if (h.nice > getpriority(PRIO_PROCESS, 0)) setpriority(PRIO_PROCESS, 0, h.nice);

  // The working directory is entered after pivot_root and checked: a cwd
  // outside the root (CVE-2024-21626) has no path and getcwd fails.
  if (chdir(pl.cmd.cwd) != 0) fail(p, "chdir", pl.cmd.cwd, errno);
  char cwd[4096];
  if (syscall(SYS_getcwd, cwd, sizeof cwd) <= 0 || cwd[0] != '/') fail(p, "verify working directory", pl.cmd.cwd, ENOENT);

  // Nothing but stdio crosses exec; the control socket stays until then so
  // an exec failure can be reported.
  syscall(SYS_close_range, 3, ~0U, CLOSE_RANGE_CLOEXEC);

  int err = ENOENT;
  for (const char* const* path = pl.cmd.candidates; *path; ++path) {
    execve(*path, const_cast<char* const*>(pl.cmd.argv), const_cast<char* const*>(pl.cmd.envp));
    if (errno != ENOENT && errno != ENOTDIR) err = errno;
  }
  if (pl.boot) _exit(err == ENOENT ? 127 : 126);  // its status tells (BootExited)
  Msg m{};
  m.type = MsgType::ExecFailed;
  m.err = err;
  copy_cstr(m.detail, sizeof m.detail, pl.cmd.argv[0]);
  send_msg(p.sock, m);
  _exit(err == ENOENT ? 127 : 126);
}

int payload_entry(void* payload) { payload_main(*static_cast<const Payload*>(payload)); }

// The boot step (ProcessSpec::boot): started as the payload is, but in "/"
// with the boot ids, on `stack_top`. Init waits for its end with every
// signal still blocked, taking them one by one: SIGCHLD reaps (whatever
// else ends meanwhile too), a forwarded signal is passed on to the step.
// Reports the step's status (BootExited). Returns 0, or the signal
// (SIGHUP, SIGINT, SIGQUIT, SIGTERM) that asked the sandbox to end during
// the boot: then the command must not start, and the step is not waited
// for.
int run_boot_step(const ChildPlan& p, const Payload& payload, char* stack_top) {
  static Payload boot;
  static const char* boot_path[2];
  boot_path[0] = payload.cmd.boot[0];
  boot = payload;
  boot.boot = true;
  boot.cmd.argv = payload.cmd.boot;
  boot.cmd.candidates = boot_path;
  boot.cmd.cwd = "/";
  boot.cmd.uid = payload.cmd.head->boot_uid;
  boot.cmd.gid = payload.cmd.head->boot_gid;
  pid_t step = clone(payload_entry, stack_top, CLONE_VM | CLONE_VFORK | SIGCHLD, &boot);
  if (step < 0) fail(p, "clone", "boot step", errno);
  sigset_t wanted;
  sigemptyset(&wanted);
  sigaddset(&wanted, SIGCHLD);
  for (int sig : kForwarded) sigaddset(&wanted, sig);
  int status = -1, stop = 0;
  while (status < 0) {
    siginfo_t si{};
    long sig = syscall(SYS_rt_sigtimedwait, &wanted, &si, nullptr, _NSIG / 8);
    if (sig < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      // Cannot wait for signals: wait for the step alone.
      int st = 0;
      pid_t pid;
      do pid = wait4(step, &st, 0, nullptr);
      while (pid < 0 && errno == EINTR);
      status = pid == step ? st : 0x7f00;  // (unknown: reported as exit status 127)
      break;
    }
    if (sig == SIGCHLD) {
      for (;;) {
        int st = 0;
        pid_t pid = wait4(-1, &st, WNOHANG, nullptr);
        if (pid <= 0) break;
        if (pid == step) status = st;
      }
      continue;
    }
    kill(step, static_cast<int>(sig));
    if (sig == SIGHUP || sig == SIGINT || sig == SIGQUIT || sig == SIGTERM) {
      // The sandbox is to end: no waiting for a step that may ignore it
      // (init's exit takes it along).
      stop = static_cast<int>(sig);
      status = stop;  // as if it ended by that signal
    }
  }
  Msg done{};
  done.type = MsgType::BootExited;
  done.value = status;
  done.err = stop;
  send_msg(p.sock, done);
  return stop;
}

}  // namespace

[[noreturn]] void child_main(const ChildPlan& p) {
  // 0-2 stay until the pipes replace them (a new fd must not take their numbers).
  unsigned next = 3;
  for (int fd : p.keep_fds) {
    if (fd < 3) continue;
    if (static_cast<unsigned>(fd) > next) syscall(SYS_close_range, next, static_cast<unsigned>(fd) - 1, 0);
    next = static_cast<unsigned>(fd) + 1;
  }
  syscall(SYS_close_range, next, ~0U, 0);
  if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) _exit(125);
  // We are a copy of the supervisor: its command line (host paths) would be
  // pid 1's /proc/1/cmdline inside.
  static const char kName[] = "ultari-init";
  if (p.argv_area && p.argv_area_len > sizeof kName) {
    for (size_t i = 0; i < p.argv_area_len; ++i) p.argv_area[i] = '\0';
    for (size_t i = 0; i < sizeof kName; ++i) p.argv_area[i] = kName[i];
  }
  prctl(PR_SET_NAME, kName, 0, 0, 0);
  // The supervisor's environment (the caller's, with whatever credentials
  // it holds, --secret env: values among them) is no business of pid 1:
  // the command gets the environment it is given.
  for (char** e = environ; e && *e; ++e)
    for (char* c = *e; *c; ++c) *c = '\0';
  // Join the v1 cgroups first thing, moving ourselves (see Cgroup::open_self_attach).
  for (int fd : p.cgroup_tasks) {
    if (write(fd, "0", 1) != 1) fail(p, "join cgroup", "tasks", errno);
    close(fd);
  }
  sigset_t all;
  sigfillset(&all);
  sigprocmask(SIG_SETMASK, &all, nullptr);

  // 1. The supervisor writes our id maps, then says go. EOF means it died:
  // leave quietly.
  Msg go{};
  ssize_t n;
  do n = recv(p.sock, &go, sizeof go, 0);
  while (n < 0 && errno == EINTR);
  if (n != sizeof go || go.type != MsgType::Go) _exit(125);

  if (p.become_root) {
    if (setresgid(0, 0, 0) != 0) fail(p, "setresgid", "0", errno);
    if (setgroups(0, nullptr) != 0) fail(p, "setgroups", "", errno);
    if (setresuid(0, 0, 0) != 0) fail(p, "setresuid", "0", errno);
    // A credential change clears the parent-death signal: arm it again, then
    // make sure the supervisor did not die in between.
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) _exit(125);
    pollfd alive{p.sock, POLLRDHUP, 0};
    if (poll(&alive, 1, 0) != 0) _exit(125);
  }
  // 2. A cgroup namespace rooted at the sandbox's own group.
  if (unshare(CLONE_NEWCGROUP) != 0) fail(p, "unshare", "cgroup namespace", errno);
  if (setsid() < 0) fail(p, "setsid", "", errno);
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) fail(p, "prctl", "PR_SET_DUMPABLE", errno);

  // 3. Root filesystem.
  const filesystem::Step* failed = nullptr;
  if (int rc = filesystem::execute(*p.root, &failed); rc != 0) {
    fail(p, filesystem::step_name(failed->op), failed->target, -rc);
  }

  // 4. Identity of the machine.
  const char* h = p.hostname;
  size_t hlen = 0;
  while (h[hlen]) ++hlen;
  if (sethostname(h, hlen) != 0) fail(p, "sethostname", h, errno);
  if (int rc = loopback_up(); rc != 0) fail(p, "bring up loopback", "lo", -rc);

  if (p.stdin_fd >= 0 && dup2(p.stdin_fd, 0) < 0) fail(p, "dup2", "stdin", errno);
  if (p.stdout_fd >= 0 && dup2(p.stdout_fd, 1) < 0) fail(p, "dup2", "stdout", errno);
  if (p.stderr_fd >= 0 && dup2(p.stderr_fd, 2) < 0) fail(p, "dup2", "stderr", errno);

  // Prepared for the payload, which inherits both: default signal
  // dispositions (the supervisor's, e.g. SIGPIPE ignored, would survive
  // exec) and an empty bounding set, so execve can never regain anything.
  reset_dispositions();
  if (int rc = drop_bounding_and_ambient(p.cap_last, p.keep_caps); rc != 0)
    fail(p, "drop capabilities", "bounding set", -rc);

  // No core dump, whatever the command asks: a core_pattern that pipes to
  // a helper (systemd-coredump, apport) would run it as host root for a
  // crash inside, outside every limit of the sandbox. The kernel ignores
  // RLIMIT_CORE for a pipe except for exactly 1, its own guard, and 1 byte
  // is too small for a core file. Set before the filter: the default policy
  // lets no call set RLIMIT_CORE again (0 would bring the helper back). A
  // host hard limit of 0 cannot be raised here and stays.
  rlimit one_byte{1, 1};
  (void)setrlimit(RLIMIT_CORE, &one_byte);

  // 5. From here on the seccomp policy applies to init and everything it
  // starts. The listener goes to the supervisor, which answers denials.
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) fail(p, "prctl", "PR_SET_NO_NEW_PRIVS", errno);
  // Root gains nothing by being root (NOROOT), and a uid change always
  // drops what is kept (the setuid fixup stays on, locked: CAP_SETPCAP
  // cannot turn it off); without capabilities to keep, none can be made
  // ambient either.
  unsigned long bits = SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_KEEP_CAPS_LOCKED | SECBIT_NO_SETUID_FIXUP_LOCKED;
  if (!p.keep_caps) bits |= SECBIT_NO_CAP_AMBIENT_RAISE | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
  if (prctl(PR_SET_SECUREBITS, bits, 0, 0, 0) != 0)
    fail(p, "prctl", "PR_SET_SECUREBITS", errno);
  if (p.filter.len) {
    long listener = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &p.filter);
    if (listener < 0) fail(p, "install seccomp filter", "", errno);
    send_fd(p.sock, MsgType::Listener, static_cast<int>(listener));
    close(static_cast<int>(listener));
  }

  // 6. Ready: the sandbox exists. Its command may come now or much later
  // (a warm pool); EOF means nobody will use it.
  Msg ready{};
  ready.type = MsgType::Ready;
  send_msg(p.sock, ready);
  static Payload payload;
  payload.plan = &p;
  if (!receive_command(p, payload.cmd)) leave(p.sock, 0);

  // 7. The payload, started like posix_spawn does: sharing our memory on
  // its own stack, with init suspended until it has called execve. The
  // boot step first, the same way, in "/" (as root); init waits for its end
  // (reaping whatever else ends meanwhile: what it started and left keeps
  // running) and reports its status.
  static char stack[64 * 1024] __attribute__((aligned(16)));
  if (payload.cmd.boot) {
    if (int stop = run_boot_step(p, payload, stack + sizeof stack); stop != 0) {
      // Interrupted during the boot: the command never starts, and the
      // run ends as that signal would have ended it.
      Msg done{};
      done.type = MsgType::Exited;
      done.value = stop;  // a wait status: "killed by signal `stop`"
      send_msg(p.sock, done);
      leave(p.sock, 0);
    }
  }
  pid_t child = clone(payload_entry, stack + sizeof stack, CLONE_VM | CLONE_VFORK | SIGCHLD, &payload);
  if (child < 0) fail(p, "clone", "payload", errno);
  g_payload = child;

  // 8. pid 1: nothing privileged is left to do, and no fd but the control
  // socket stays open (the payload's pipes must reach EOF without us).
  clear_capabilities();
  syscall(SYS_close_range, 0, p.sock - 1, 0);
  syscall(SYS_close_range, p.sock + 1, ~0U, 0);
  struct sigaction fwd{};
  fwd.sa_handler = forward_signal;
  fwd.sa_flags = SA_RESTART;
  for (int sig : kForwarded) sigaction(sig, &fwd, nullptr);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);

  for (;;) {
    int status = 0;
    pid_t pid = wait4(-1, &status, 0, nullptr);
    if (pid == child) {
      Msg done{};
      done.type = MsgType::Exited;
      done.value = status;
      send_msg(p.sock, done);
      // Our exit makes the kernel kill whatever is left in the namespace.
      leave(p.sock, 0);
    }
    if (pid < 0 && errno == ECHILD) leave(p.sock, 0);
  }
}

}  // namespace ultari::isolation
