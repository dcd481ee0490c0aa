#include "net/gateway.h"

#include <arpa/inet.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/close_range.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <sched.h>
#include <seccomp.h>
#include <sys/resource.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <memory>
#include <nlohmann/json.hpp>

#include "net/dns.h"
#include "net/server.h"
#include "util/caller.h"
#include "util/error.h"

namespace ultari::net {
namespace {

constexpr uid_t kNobody = 65534;
constexpr int kFinishTimeoutMs = 5000;

// Closes every fd but `keep` (sorted).
void close_all_but(std::vector<int> keep) {
  std::erase_if(keep, [](int fd) { return fd < 0; });  // (none)
  std::sort(keep.begin(), keep.end());
  unsigned from = 0;
  for (int fd : keep) {
    if (static_cast<unsigned>(fd) > from) syscall(SYS_close_range, from, static_cast<unsigned>(fd) - 1, 0);
    from = static_cast<unsigned>(fd) + 1;
  }
  syscall(SYS_close_range, from, ~0u, 0);
}

}  // namespace

// The gateway parses what the sandbox sends: if that code were taken over,
// it must not become a way out. On top of its own uid and no_new_privs, a
// filter (all threads) refuses what a serving process never needs: running
// programs, other processes' memory, new namespaces, mounts, kernel
// attack surface (bpf, io_uring, keyrings, userfaultfd, perf, modules),
// sockets other than IPv4, and opening or changing files for writing
// (the audit log is open already), and signals to any process but itself
// (each rootful gateway has a uid of its own, so this is a second wall:
// one taken over must not kill other sandboxes' gateways or processes).
// Throws Error.
void confine_gateway() {
  struct Ctx {
    scmp_filter_ctx c;
    ~Ctx() { seccomp_release(c); }
  } ctx{seccomp_init(SCMP_ACT_ALLOW)};
  if (!ctx.c) throw Error("seccomp_init failed");
  auto rule = [&](uint32_t action, const char* name, std::vector<scmp_arg_cmp> args = {}) {
    int nr = seccomp_syscall_resolve_name(name);
    if (nr == __NR_SCMP_ERROR) return;  // not on this architecture
    int rc = seccomp_rule_add_array(ctx.c, action, nr, static_cast<unsigned>(args.size()), args.data());
    if (rc != 0) throw Error(std::string("gateway filter: ") + name + ": " + std::strerror(-rc));
  };
  const uint32_t eperm = SCMP_ACT_ERRNO(EPERM);
  for (const char* n : {"execve", "execveat"}) rule(SCMP_ACT_KILL_PROCESS, n);
  for (const char* n :
       {"ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "mount", "umount2", "pivot_root", "chroot",
        "unshare", "setns", "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
        "bpf", "keyctl", "add_key", "request_key", "userfaultfd", "perf_event_open", "io_uring_setup",
        "io_uring_enter", "io_uring_register", "init_module", "finit_module", "delete_module", "kexec_load",
        "kexec_file_load", "open_by_handle_at", "name_to_handle_at", "personality", "creat", "unlink", "unlinkat",
        "rename", "renameat", "renameat2", "mkdir", "mkdirat", "rmdir", "symlink", "symlinkat", "link", "linkat",
        "chmod", "fchmod", "fchmodat", "chown", "fchown", "fchownat", "lchown", "truncate", "mknod", "mknodat",
        "setxattr", "lsetxattr", "fsetxattr", "memfd_create", "socketpair"})
    rule(eperm, n);
  rule(SCMP_ACT_ERRNO(ENOSYS), "clone3");  // glibc falls back to clone, checked below
  rule(SCMP_ACT_ERRNO(ENOSYS), "openat2");
  for (unsigned long flag : {CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWIPC, CLONE_NEWUTS,
                             CLONE_NEWCGROUP, CLONE_PARENT})
    rule(eperm, "clone", {SCMP_A0(SCMP_CMP_MASKED_EQ, flag, flag)});
  for (unsigned long flag : {static_cast<unsigned long>(O_WRONLY), static_cast<unsigned long>(O_RDWR),
                             static_cast<unsigned long>(O_CREAT), static_cast<unsigned long>(O_TRUNC)}) {
    rule(eperm, "open", {SCMP_A1(SCMP_CMP_MASKED_EQ, flag, flag)});
    rule(eperm, "openat", {SCMP_A2(SCMP_CMP_MASKED_EQ, flag, flag)});
  }
  rule(SCMP_ACT_ERRNO(EAFNOSUPPORT), "socket", {SCMP_A0(SCMP_CMP_NE, AF_INET)});
  // Its own pid only (glibc's raise and pthread_kill use tgkill on it). An
  // argument whose upper bits are not the pid's is refused too: fail-safe.
  const auto self = static_cast<scmp_datum_t>(getpid());
  for (const char* n : {"kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"})
    rule(eperm, n, {SCMP_A0(SCMP_CMP_NE, self)});
  for (const char* n : {"tkill", "pidfd_send_signal", "pidfd_open"}) rule(eperm, n);
  // Nor by the other ways to have the kernel signal, limit or slow down a
  // process the uid may reach (rootless: the caller's other processes):
  // SIGIO/SIGURG ownership, CPU-time limits, priorities, affinities.
  for (scmp_datum_t cmd : {F_SETOWN, F_SETSIG, F_SETOWN_EX}) rule(eperm, "fcntl", {SCMP_A1(SCMP_CMP_EQ, cmd)});
  rule(eperm, "prlimit64", {SCMP_A0(SCMP_CMP_NE, 0)});
  for (const char* n : {"setpriority", "ioprio_set"}) rule(eperm, n, {SCMP_A1(SCMP_CMP_NE, 0)});
  for (const char* n : {"sched_setaffinity", "sched_setscheduler", "sched_setparam", "sched_setattr"})
    rule(eperm, n, {SCMP_A0(SCMP_CMP_NE, 0)});
  // Terminals (it has none: fds 0-2 are /dev/null, and its own session),
  // and socket ownership (SIGURG): low 32 bits, as the kernel reads them.
  for (scmp_datum_t req : {TIOCSTI, TIOCLINUX, TIOCSPGRP, TIOCSCTTY, FIOSETOWN, SIOCSPGRP})
    rule(eperm, "ioctl", {SCMP_A1(SCMP_CMP_MASKED_EQ, 0xffffffffULL, req)});
  if (seccomp_attr_set(ctx.c, SCMP_FLTATR_CTL_TSYNC, 1) != 0) throw Error("gateway filter: TSYNC unavailable");
  int rc = seccomp_load(ctx.c);
  if (rc != 0) throw Error(std::string("gateway filter: seccomp_load: ") + std::strerror(-rc));
}

namespace {

constexpr rlim_t kGatewayFiles = 8192;

[[noreturn]] void gateway_main(const NetworkSpec& policy, std::vector<in_addr> servers, Endpoints ep, AuditLog& audit,
                               Inspection& inspection, int control, pid_t parent, uid_t uid, int lease) {
  // Terminal signals are for the supervisor, which forwards them to the
  // sandbox; the gateway ends when told (or with its parent).
  sigset_t all;
  sigfillset(&all);
  sigprocmask(SIG_BLOCK, &all, nullptr);
  close_all_but({0, 1, 2, control, audit.fd(), ep.transparent.get(), ep.http_proxy.get(), ep.socks.get(), ep.dns.get(),
                 ep.nflog.get(), lease});
  // No terminal: stdio may be the caller's (root's) terminal, which a
  // gateway taken over could type into (TIOCSTI) or signal through. It
  // writes nothing there (errors go through `control`).
  int null = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null < 0 || dup2(null, 0) != 0 || dup2(null, 1) != 1 || dup2(null, 2) != 2 || setsid() < 0) _exit(72);
  close(null);
  if (host_root()) {
    // Root: become its uid (of its own, or nobody) and nogroup, with no
    // supplementary groups.
    if (setgroups(0, nullptr) != 0 || setresgid(kNobody, kNobody, kNobody) != 0 || setresuid(uid, uid, uid) != 0)
      _exit(70);
  } else if (geteuid() == 0) {
    // Root of the image store's namespace (a rootless provisioning): the
    // caller's rights, none of that namespace's capabilities.
    __user_cap_header_struct head{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct none[2]{};
    if (syscall(SYS_capset, &head, none) != 0) _exit(70);
  }
  // A credential change clears the parent-death signal: set it after.
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 ||
      prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0 || getppid() != parent)
    _exit(71);
  prctl(PR_SET_NAME, "ultari-net", 0, 0, 0);
  // Up to 256 flows at once, each with two sockets (and an early upstream
  // one), and each worker keeps two pipes (four fds) for its next flow:
  // more than the usual soft limit of 1024. Raised within the hard limit.
  rlimit nofile{};
  if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < kGatewayFiles) {
    nofile.rlim_cur = std::min<rlim_t>(nofile.rlim_max, kGatewayFiles);
    setrlimit(RLIMIT_NOFILE, &nofile);
  }
  nlohmann::json summary;
  {
    std::unique_ptr<Server> server;
    try {
      server = std::make_unique<Server>(policy, std::move(servers), std::move(ep), audit, std::move(inspection));
      confine_gateway();  // after set-up (dlopen, getifaddrs), before the first flow
    } catch (const std::exception& e) {
      std::string msg = std::string("E") + e.what();
      if (send(control, msg.data(), msg.size(), MSG_NOSIGNAL) < 0) _exit(1);
      _exit(1);
    }
    if (send(control, "R", 1, MSG_NOSIGNAL) != 1) _exit(1);
    char c;
    while (read(control, &c, 1) < 0 && errno == EINTR) {
    }
    server->stop();
  }
  summary = {{"allowed", audit.allowed()}, {"denied", audit.denied()}, {"denied_names", audit.denied_names()}};
  std::string text = summary.dump();
  _exit(send(control, text.data(), text.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(text.size()) ? 0 : 1);
}

}  // namespace

Gateway::Gateway(const NetworkSpec& policy, const std::string& sandbox_id, Endpoints endpoints, Inspection inspection,
                 const cgroups::Cgroup* group, uid_t uid, int lease) {
  mode_ = policy.mode == NetworkSpec::Mode::Open ? "open" : "allow";
  std::vector<in_addr> servers;
  if (!policy.resolver.empty()) {
    in_addr a;
    if (inet_pton(AF_INET, policy.resolver.c_str(), &a) != 1) throw Error("bad resolver address " + policy.resolver);
    servers.push_back(a);
  } else {
    servers = dns::system_servers();
  }
  AuditLog audit(policy.audit_path, sandbox_id);
  audit_path_ = audit.path();
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) throw_errno("socketpair");
  control_.reset(sv[0]);
  UniqueFd theirs(sv[1]);
  pid_t parent = getpid();
  int pidfd = -1;
  long pid;
  if (group) {
    pid = group->clone_into(&pidfd);  // runs in the group from its start
  } else {
    clone_args args{};
    args.flags = CLONE_PIDFD;
    args.pidfd = reinterpret_cast<uint64_t>(&pidfd);
    args.exit_signal = SIGCHLD;
    pid = syscall(SYS_clone3, &args, sizeof args);
    if (pid < 0) throw_errno("clone3 (network gateway)");
  }
  if (pid == 0) {
    control_.reset();
    gateway_main(policy, std::move(servers), std::move(endpoints), audit, inspection, theirs.get(), parent,
                 uid ? uid : kNobody, lease);
  }
  // The CA's key, the secrets' values and the proxy's credentials live on
  // in the gateway only.
  inspection.wipe();
  pid_ = static_cast<pid_t>(pid);
  pidfd_.reset(pidfd);
  theirs.reset();
  // Serving, or why not (Hyperscan missing, ...).
  char buf[1024];
  pollfd p{control_.get(), POLLIN, 0};
  ssize_t n = poll(&p, 1, kFinishTimeoutMs) > 0 ? recv(control_.get(), buf, sizeof buf, MSG_DONTWAIT) : -1;
  if (n == 1 && buf[0] == 'R') return;
  syscall(SYS_pidfd_send_signal, pidfd_.get(), SIGKILL, nullptr, 0);
  while (waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
  }
  pid_ = -1;
  if (n > 1 && buf[0] == 'E') throw Error("network gateway: " + std::string(buf + 1, static_cast<size_t>(n - 1)));
  throw Error("the network gateway did not start");
}

Gateway::~Gateway() {
  if (pid_ <= 0) return;
  syscall(SYS_pidfd_send_signal, pidfd_.get(), SIGKILL, nullptr, 0);
  while (waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
  }
}

Summary Gateway::finish(std::string& error) {
  Summary s;
  s.mode = mode_;
  s.audit_log = audit_path_;
  if (pid_ <= 0) return s;
  char stop = 's';
  char buf[65536];
  ssize_t n = -1;
  if (send(control_.get(), &stop, 1, MSG_NOSIGNAL) == 1) {
    pollfd p{control_.get(), POLLIN, 0};
    if (poll(&p, 1, kFinishTimeoutMs) > 0) n = recv(control_.get(), buf, sizeof buf, MSG_DONTWAIT);
  }
  if (n <= 0) {
    error = "the network gateway ended unexpectedly: the network counts are incomplete";
  } else {
    try {
      auto j = nlohmann::json::parse(std::string(buf, static_cast<size_t>(n)));
      s.allowed = j.at("allowed").get<uint64_t>();
      s.denied = j.at("denied").get<uint64_t>();
      s.denied_names = j.at("denied_names").get<std::vector<std::string>>();
    } catch (const nlohmann::json::exception&) {
      error = "the network gateway sent a malformed summary";
    }
  }
  syscall(SYS_pidfd_send_signal, pidfd_.get(), SIGKILL, nullptr, 0);
  while (waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
  }
  pid_ = -1;
  return s;
}

std::vector<std::string> Gateway::proxy_env() {
  std::string http = "http://127.0.0.1:" + std::to_string(kHttpProxyPort);
  std::string socks = "socks5h://127.0.0.1:" + std::to_string(kSocksPort);
  return {"HTTP_PROXY=" + http, "HTTPS_PROXY=" + http, "http_proxy=" + http, "https_proxy=" + http,
          "ALL_PROXY=" + socks, "all_proxy=" + socks, "NO_PROXY=localhost,127.0.0.1,::1",
          "no_proxy=localhost,127.0.0.1,::1"};
}

}  // namespace ultari::net
