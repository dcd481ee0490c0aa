// Ultari's default policy: a default-deny allowlist modelled on Docker's
// default profile (moby/profiles seccomp/default.json) for a process without
// capabilities, with the known gaps closed (ptrace, process_vm_*, ioctl
// TIOCSTI/TIOCLINUX, name_to_handle_at, foreign ABIs, ...).
#include <linux/sched.h>

#include <cerrno>
#include <string>
#include <string_view>
#include <utility>

#include "seccomp/policy_spec.h"

namespace ultari::seccomp::detail {
namespace {

// Names libseccomp does not know are skipped by the compiler, so newer
// calls can be listed here before libseccomp learns them.
const char* const kAllowed[] = {
    // process lifetime, threads, signals
    "exit", "exit_group", "fork", "vfork", "execve", "execveat", "wait4", "waitid",
    "kill", "tkill", "tgkill", "getpid", "gettid", "getppid", "getpgid", "getpgrp",
    "setpgid", "getsid", "setsid", "set_tid_address", "set_robust_list",
    "get_robust_list", "rseq", "futex", "futex_time64", "futex_waitv", "futex_wake",
    "futex_wait", "futex_requeue", "restart_syscall", "arch_prctl", "modify_ldt",
    "set_thread_area", "get_thread_area", "prctl", "seccomp", "membarrier",
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending",
    "rt_sigsuspend", "rt_sigtimedwait", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
    "sigaltstack", "signalfd", "signalfd4", "pause", "alarm", "pidfd_open",
    "pidfd_send_signal", "process_mrelease",
    // identity and capabilities (changing them is governed by the kernel)
    "getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid",
    "getgroups", "setuid", "setgid", "setreuid", "setregid", "setresuid",
    "setresgid", "setfsuid", "setfsgid", "setgroups", "capget", "capset",
    // memory
    "brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "msync", "mincore",
    "mlock", "mlock2", "munlock", "mlockall", "munlockall", "memfd_create",
    "memfd_secret", "pkey_alloc", "pkey_free", "pkey_mprotect", "remap_file_pages",
    "map_shadow_stack", "get_mempolicy", "mseal",
    // files and directories
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev",
    "preadv2", "pwritev2", "close",
    "close_range", "dup", "dup2", "dup3", "lseek", "fcntl", "flock", "fsync",
    "fdatasync", "sync", "syncfs", "sync_file_range", "truncate", "ftruncate",
    "fallocate", "fadvise64", "readahead", "stat", "fstat", "lstat", "newfstatat",
    "statx", "statfs", "fstatfs", "access", "faccessat", "faccessat2", "getdents",
    "getdents64", "getcwd", "chdir", "fchdir", "mkdir", "mkdirat", "rmdir",
    "rename", "renameat", "renameat2", "link", "linkat", "unlink", "unlinkat",
    "symlink", "symlinkat", "readlink", "readlinkat", "chown", "fchown", "fchownat", "lchown",
    "umask", "utime", "utimes", "utimensat", "futimesat", "copy_file_range",
    "sendfile", "splice", "tee", "vmsplice", "pipe", "pipe2", "getxattr",
    "lgetxattr", "fgetxattr", "setxattr", "lsetxattr", "fsetxattr", "listxattr",
    "llistxattr", "flistxattr", "removexattr", "lremovexattr", "fremovexattr",
    "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch",
    "fanotify_mark", "cachestat",
    // async I/O (not io_uring)
    "io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents",
    "io_pgetevents", "ioprio_get", "ioprio_set",
    // polling, timers, clocks
    "poll", "ppoll", "select", "pselect6", "epoll_create", "epoll_create1",
    "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2",
    "timerfd_create", "timerfd_settime", "timerfd_gettime", "timer_create",
    "timer_settime", "timer_gettime", "timer_getoverrun", "timer_delete",
    "getitimer", "setitimer", "nanosleep", "clock_nanosleep", "clock_gettime",
    "clock_getres", "gettimeofday", "time", "times",
    // scheduling, limits, system info
    "sched_yield", "sched_getaffinity", "sched_setaffinity", "sched_getparam",
    "sched_setparam", "sched_getscheduler", "sched_setscheduler",
    "sched_get_priority_max", "sched_get_priority_min", "sched_rr_get_interval",
    "sched_getattr", "sched_setattr", "getpriority", "setpriority", "getrlimit",
    "setrlimit", "prlimit64", "getrusage", "getcpu", "getrandom", "uname",
    "sysinfo",
    // sockets (socket and ioctl are conditional, see default_spec)
    "socketpair", "bind", "connect", "listen", "accept", "accept4", "getsockname",
    "getpeername", "getsockopt", "setsockopt", "shutdown", "sendto", "recvfrom",
    "sendmsg", "recvmsg", "sendmmsg", "recvmmsg",
    // System V and POSIX IPC
    "shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semtimedop", "semctl",
    "msgget", "msgsnd", "msgrcv", "msgctl", "mq_open", "mq_unlink", "mq_timedsend",
    "mq_timedreceive", "mq_notify", "mq_getsetattr",
    // sandboxing the sandbox further
    "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
};

const char* const kDenied[] = {
    "io_uring_setup", "io_uring_enter", "io_uring_register", "keyctl", "add_key",
    "request_key", "bpf", "perf_event_open", "userfaultfd", "init_module",
    "finit_module", "delete_module", "create_module", "query_module",
    "get_kernel_syms", "kexec_load", "kexec_file_load", "open_by_handle_at",
    "name_to_handle_at", "ptrace", "process_vm_readv", "process_vm_writev", "mount",
    "umount2", "pivot_root", "chroot", "fsopen", "fsconfig", "fsmount", "fspick",
    "move_mount", "open_tree", "mount_setattr", "unshare", "setns", "quotactl",
    "quotactl_fd", "acct", "swapon", "swapoff", "reboot", "settimeofday",
    "clock_settime", "clock_adjtime", "adjtimex", "syslog", "lookup_dcookie",
    "vhangup", "iopl", "ioperm", "uselib", "ustat", "sysfs", "_sysctl",
    "nfsservctl", "fanotify_init", "sethostname", "setdomainname", "kcmp",
    "pidfd_getfd", "process_madvise", "mbind", "set_mempolicy", "migrate_pages",
    "move_pages", "set_mempolicy_home_node", "lsm_get_self_attr",
    "lsm_set_self_attr", "lsm_list_modules", "tuxcall", "security", "afs_syscall",
    "vserver", "getpmsg", "putpmsg", "epoll_ctl_old", "epoll_wait_old",
};

constexpr uint64_t kCloneNamespaceFlags = CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS |
                                          CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID |
                                          CLONE_NEWNET;  // 0x7E020000
static_assert(kCloneNamespaceFlags == 0x7E020000);

constexpr uint32_t kTIOCSTI = 0x5412;
constexpr uint32_t kTIOCLINUX = 0x541C;
constexpr uint32_t kAF_ALG = 38;
constexpr uint32_t kAF_VSOCK = 40;
constexpr uint32_t kRLIMIT_CORE = 4;

Rule allow(std::string name, std::vector<ArgCmp> args = {}) {
  Rule r;
  r.names = {std::move(name)};
  r.action = SCMP_ACT_ALLOW;
  r.args = std::move(args);
  r.origin = "default rule for " + r.names[0];
  return r;
}

// Answered in the kernel and not reported: "not implemented" makes libc and
// runtimes fall back to an older call whose arguments the filter can check.
Rule enosys(std::string name) {
  Rule r;
  r.names = {std::move(name)};
  r.action = SCMP_ACT_ERRNO(ENOSYS);
  r.errno_in_kernel = true;
  r.origin = "default rule for " + r.names[0];
  return r;
}

}  // namespace

PolicySpec default_spec(Variant variant) {
  bool setid_files = variant.setid_files;
  PolicySpec spec;
  spec.source = std::string("default seccomp policy") + (setid_files ? " (setid files allowed)" : "") +
                (variant.chown_noop ? " (chown does nothing)" : "");
  spec.default_action = SCMP_ACT_ERRNO(EPERM);
  for (const char* name : kAllowed) {
    std::string_view n = name;
    bool chown = n == "chown" || n == "fchown" || n == "fchownat" || n == "lchown";
    if (!(chown && variant.chown_noop)) {
      spec.rules.push_back(allow(name));
      continue;
    }
    // A sandbox with one id (a rootless build: the caller, root inside) can
    // give a file no other owner; dpkg, useradd and install(1) try and fail
    // with EINVAL. Answered 0 in the kernel (not a denial to report): the
    // file keeps its owner, as every file of a rootless store does.
    Rule r = allow(name);
    r.action = SCMP_ACT_ERRNO(0);
    r.errno_in_kernel = true;
    spec.rules.push_back(r);
  }
  for (const char* name : kDenied) spec.known_denied.emplace_back(name);

  // clone without namespace flags (threads, fork); CLONE_NEW* is denied.
  spec.rules.push_back(allow("clone", {{0, SCMP_CMP_MASKED_EQ, kCloneNamespaceFlags, 0}}));

  // clone3 flags live in memory BPF cannot read: ENOSYS makes glibc fall back
  // to clone, whose flags are checked above.
  spec.rules.push_back(enosys("clone3"));

  // socket and ioctl are allowed except for a few values of an int argument
  // (compared on its low 32 bits only, as the kernel reads it).
  spec.rules.push_back(allow("socket"));
  spec.rules.push_back(allow("ioctl"));
  spec.low_word_denials.push_back({"socket", 0, {kAF_ALG, kAF_VSOCK}});
  spec.low_word_denials.push_back({"ioctl", 1, {kTIOCSTI, kTIOCLINUX}});

  // RLIMIT_CORE stays as the engine set it (soft = hard = 1): a pipe
  // core_pattern helper (systemd-coredump, apport) ignores the limit,
  // except for 1, and would run as host root, outside the sandbox's limits,
  // for every crash. Lowering it to 0 would bring the helper back, so no
  // call may set it; reading it (prlimit64 with no new limit) still works.
  spec.low_word_denials.push_back({"setrlimit", 0, {kRLIMIT_CORE}});
  spec.low_word_denials.push_back({"prlimit64", 1, {kRLIMIT_CORE}, 2});

  // No setuid or setgid bit may be set on any file. The sandbox's root
  // writes to an idmapped workspace as the directory's owner on the host; a
  // setuid file planted there would run with that owner's identity for
  // every host user (root's, for a root-owned workspace). Every call that
  // sets a mode carries it in a register: open/openat only when creating.
  constexpr uint64_t kSetid = 06000;                    // S_ISUID | S_ISGID
  constexpr uint64_t kCreates = 0100 | 020000000;       // O_CREAT | __O_TMPFILE
  struct ModeArg {
    const char* name;
    unsigned flags_index;  // 6 = the call always creates or sets a mode
    unsigned mode_index;
  };
  for (auto [name, flags_index, mode_index] :
       {ModeArg{"open", 1, 2}, {"openat", 2, 3}, {"creat", 6, 1}, {"mknod", 6, 1}, {"mknodat", 6, 2},
        {"chmod", 6, 1}, {"fchmod", 6, 1}, {"fchmodat", 6, 2}, {"fchmodat2", 6, 2}}) {
    if (setid_files) {  // a build sandbox: no workspace, no read-write bind (checked by the engine)
      spec.rules.push_back(allow(name));
      continue;
    }
    if (flags_index < 6) spec.rules.push_back(allow(name, {{flags_index, SCMP_CMP_MASKED_EQ, kCreates, 0}}));
    spec.rules.push_back(allow(name, {{mode_index, SCMP_CMP_MASKED_EQ, kSetid, 0}}));
  }
  // openat2's mode lives in memory BPF cannot read: ENOSYS, so callers fall
  // back to openat (checked above), as for clone3.
  spec.rules.push_back(enosys("openat2"));

  for (uint64_t persona : {0x0ULL, 0x8ULL, 0x20000ULL, 0x20008ULL, 0xffffffffULL})
    spec.rules.push_back(allow("personality", {{0, SCMP_CMP_EQ, persona, 0}}));
  return spec;
}

}  // namespace ultari::seccomp::detail

namespace ultari::seccomp {

std::vector<sock_filter> chown_noop_program() {
  detail::PolicySpec spec;
  spec.source = "chown no-op filter";
  spec.default_action = SCMP_ACT_ALLOW;
  detail::Rule r;
  r.names = {"chown", "fchown", "lchown", "fchownat"};
  r.action = SCMP_ACT_ERRNO(0);
  r.errno_in_kernel = true;
  r.origin = "chown no-op rule";
  spec.rules.push_back(r);
  return detail::compile_spec(spec).kernel;
}

}  // namespace ultari::seccomp
