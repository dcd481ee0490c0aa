// Supervisor: answers SECCOMP_RET_USER_NOTIF from the kernel program. The
// shadow program says what the real answer is; each denial is counted.
#include <fcntl.h>
#include <linux/audit.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "seccomp/policy_spec.h"
#include "util/error.h"
#include "util/fd.h"

#ifndef PIDFD_THREAD
#define PIDFD_THREAD O_EXCL
#endif

namespace ultari::seccomp {
namespace {

constexpr uint32_t kX32Bit = 0x40000000;  // __X32_SYSCALL_BIT

std::string abi_name(const seccomp_data& d) {
  if (d.arch == AUDIT_ARCH_I386) return "abi:i386";
  if (d.arch == AUDIT_ARCH_X86_64 && (d.nr & kX32Bit)) return "abi:x32";
  char buf[32];
  std::snprintf(buf, sizeof buf, "abi:%x", d.arch);
  return buf;
}

bool foreign_abi(const seccomp_data& d) {
  return d.arch != AUDIT_ARCH_X86_64 || (d.nr & kX32Bit) != 0;
}

std::string native_name(int nr) {
  char* name = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, nr);
  if (!name) return "nr:" + std::to_string(nr);
  std::string out(name);
  std::free(name);
  return out;
}

// True when the thread blocks, ignores or catches SIGSYS (it would survive
// the signal that is meant to kill it).
bool dodges_sigsys(pid_t tid) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/status", tid);
  UniqueFd fd(::open(path, O_RDONLY | O_CLOEXEC));
  if (!fd) return false;
  char buf[4096];
  ssize_t n = ::read(fd.get(), buf, sizeof buf - 1);
  if (n <= 0) return false;
  buf[n] = '\0';
  const uint64_t bit = uint64_t{1} << (SIGSYS - 1);
  // Keys at the start of a line only: the first line holds the thread's
  // name, which it chooses (PR_SET_NAME "SigBlk:0"); the kernel escapes a
  // newline in it.
  for (const char* key : {"\nSigBlk:", "\nSigIgn:", "\nSigCgt:"}) {
    const char* line = std::strstr(buf, key);
    if (!line) return true;  // (unreadable: taken as dodging, so SIGKILL)
    if (std::strtoull(line + std::strlen(key), nullptr, 16) & bit) return true;
  }
  return false;
}

// Kills the caller with SIGSYS (SIGKILL if it dodges SIGSYS), but only while
// the notification (and so the pid) is still valid: a pid reused after the
// caller died must not be hit.
void signal_caller(int listener, const seccomp_notif& req) {
  int pidfd = static_cast<int>(syscall(SYS_pidfd_open, req.pid, 0));
  if (pidfd < 0 && errno == EINVAL)  // a thread that is not the group leader
    pidfd = static_cast<int>(syscall(SYS_pidfd_open, req.pid, PIDFD_THREAD));
  if (pidfd < 0) return;  // already gone
  UniqueFd guard(pidfd);
  uint64_t id = req.id;
  if (ioctl(listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) != 0) return;
  syscall(SYS_pidfd_send_signal, pidfd, dodges_sigsys(static_cast<pid_t>(req.pid)) ? SIGKILL : SIGSYS, nullptr, 0);
}

void respond(int listener, seccomp_notif_resp* resp, uint64_t id, int error) {
  resp->id = id;
  resp->val = 0;
  resp->error = error;
  resp->flags = 0;
  while (ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, resp) != 0) {
    if (errno == EINTR) continue;
    // ENOENT: the caller died or was interrupted (by our SIGSYS, say).
    if (errno == ENOENT) return;
    throw_errno("SECCOMP_IOCTL_NOTIF_SEND");
  }
}

bool is_kill(uint32_t ret) {
  uint32_t action = ret & SECCOMP_RET_ACTION_FULL;
  return action == SECCOMP_RET_KILL_PROCESS || action == SECCOMP_RET_KILL_THREAD;
}

}  // namespace

Supervisor::Supervisor(const CompiledPolicy& policy, int listener_fd)
    : policy_(policy), fd_(listener_fd) {
  seccomp_notif_sizes sizes{};
  if (syscall(SYS_seccomp, SECCOMP_GET_NOTIF_SIZES, 0, &sizes) != 0) {
    int err = errno;
    ::close(fd_);
    throw_errno("seccomp(SECCOMP_GET_NOTIF_SIZES)", err);
  }
  req_buf_.resize(std::max<size_t>(sizes.seccomp_notif, sizeof(seccomp_notif)));
  resp_buf_.resize(std::max<size_t>(sizes.seccomp_notif_resp, sizeof(seccomp_notif_resp)));
}

Supervisor::~Supervisor() {
  if (fd_ >= 0) ::close(fd_);
}

// The sandbox chooses the syscall numbers: bound what it can make the
// supervisor remember.
void Supervisor::count(const std::string& name) {
  constexpr size_t kMaxNames = 512;
  auto it = denied_.find(name);
  if (it != denied_.end()) ++it->second;
  else if (denied_.size() < kMaxNames) denied_.emplace(name, 1);
  else ++denied_["other"];
}

void Supervisor::handle_one() {
  std::fill(req_buf_.begin(), req_buf_.end(), 0);  // RECV requires a zeroed buffer
  auto* req = reinterpret_cast<seccomp_notif*>(req_buf_.data());
  auto* resp = reinterpret_cast<seccomp_notif_resp*>(resp_buf_.data());
  std::fill(resp_buf_.begin(), resp_buf_.end(), 0);
  if (ioctl(fd_, SECCOMP_IOCTL_NOTIF_RECV, req) != 0) {
    if (errno == ENOENT || errno == EINTR) return;  // vanished before we looked
    throw_errno("SECCOMP_IOCTL_NOTIF_RECV");
  }
  const seccomp_data& d = req->data;
  const uint32_t verdict = evaluate(policy_.shadow, d);

  if (foreign_abi(d)) {
    count(abi_name(d));
    // A profile that lists the ABI yields an errno; otherwise the ABI is
    // unsupported and the caller is killed.
    if ((verdict & SECCOMP_RET_ACTION_FULL) == SECCOMP_RET_ERRNO) {
      respond(fd_, resp, req->id, -static_cast<int>(verdict & SECCOMP_RET_DATA));
      return;
    }
    signal_caller(fd_, *req);
    respond(fd_, resp, req->id, -ENOSYS);
    return;
  }

  count(native_name(d.nr));
  if ((verdict & SECCOMP_RET_ACTION_FULL) == SECCOMP_RET_ERRNO) {
    int e = static_cast<int>(verdict & SECCOMP_RET_DATA);
    // Calls newer than the policy get ENOSYS so libc falls back (as runc).
    if (d.nr > static_cast<int>(policy_.max_known_nr) && e == EPERM) e = ENOSYS;
    respond(fd_, resp, req->id, -e);
  } else if (is_kill(verdict)) {
    signal_caller(fd_, *req);
    respond(fd_, resp, req->id, -ENOSYS);
  } else {
    respond(fd_, resp, req->id, -EPERM);
  }
}

}  // namespace ultari::seccomp
