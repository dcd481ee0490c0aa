// Internal to libultari: what the supervisor holds for one sandbox. The
// sandbox/ and pool/ code share it (the pool hands a sandbox made ahead to
// the client that supervises it); front ends use sandbox.h only.
#pragma once
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "isolation/child.h"
#include "net/gateway.h"
#include "sandbox/sandbox.h"
#include "sandbox/sink.h"
#include "seccomp/seccomp.h"
#include "util/fd.h"

namespace ultari {

struct Sandbox::State {
  using Clock = std::chrono::steady_clock;
  // Rootful: the leases on the user namespace's owner uid and on the
  // sandbox's block of ids (first: released after everything else is gone).
  UniqueFd owner_lease;
  UniqueFd block_lease;
  isolation::Identity identity;  // prepared's, moved to the sandbox's own block (rootful)
  UniqueFd gateway_lease;  // rootful with a network: the gateway's uid (isolation::lease_gateway)
  std::string id;
  Spec spec;
  const Prepared* prepared = nullptr;
  const seccomp::CompiledPolicy* policy = nullptr;  // for the denial answers
  Io io;
  std::optional<cgroups::Cgroup> cgroup;
  std::vector<UniqueFd> trees;  // idmapped mounts made ahead (rootful)
  filesystem::RootPlan root;
  isolation::ChildPlan plan;

  UniqueFd sock;       // control socket (supervisor end)
  UniqueFd in_w;
  std::string stdin_pending;  // read from the caller, not yet in the pipe
  bool stdin_eof = false;
  UniqueFd pidfd;
  pid_t pid = -1;      // -1 when this process is not init's parent (adopted)
  bool reaped = false;
  bool ready = false;  // init reported its setup done
  bool ended = false;  // init is gone
  bool started_command = false;
  Clock::time_point started;
  UniqueFd listener;   // seccomp listener until the supervisor takes it
  std::unique_ptr<seccomp::Supervisor> notify;
  // Rootful --net: the gateway's own group (declared first: removed after
  // the gateway is gone).
  std::optional<cgroups::Cgroup> gateway_cgroup;
  std::unique_ptr<net::Gateway> gateway;  // serves the sandbox's network (--net)

  // What happened.
  std::optional<Verdict> kill_reason;
  std::string setup_error;
  int exec_errno = 0;
  std::optional<int> payload_status;
  std::optional<int> boot_status;  // wait status of ProcessSpec::boot
  int boot_stopped_by = 0;         // the signal that ended the sandbox during it
  uint64_t oom_kills_in_boot = 0;  // the group's OOM kills when the boot step ended
  // The command's stdout and stderr, on their way to the caller. The
  // supervisor never blocks on a slow reader: it reads from the sandbox only
  // what it can pass on, so limits and timeouts keep running.
  struct Output {
    UniqueFd pipe;                 // read end; the sandbox writes the other
    std::optional<CallerSink> dest;
    std::string pending;           // read, not yet written
    bool eof = false;              // the sandbox side is closed
    bool dest_gone = false;        // the caller's side failed (EPIPE ...)
    uint64_t bytes = 0;            // accepted for delivery
    Clock::time_point next_read;   // paces a command that writes in dribbles
  } out, err;
  bool truncated = false;
  std::vector<std::string> warnings;

  ~State() { destroy(); }

  void kill_all() {
    if (cgroup) cgroup->kill();
    if (pidfd && !reaped) syscall(SYS_pidfd_send_signal, pidfd.get(), SIGKILL, nullptr, 0);
  }
  void reap(rusage* ru) {
    if (reaped || pid <= 0) return;
    int status;
    while (wait4(pid, &status, 0, ru) < 0 && errno == EINTR) {
    }
    reaped = true;
  }
  // Init's parent kills, reaps and removes the cgroup; a supervisor that
  // adopted the sandbox only kills what still runs (its owner removes it).
  // SIGKILL to init: the kernel then kills every process of the pid
  // namespace before init's exit completes. (No freezer cycle: on v1 each
  // one patches kernel text on every CPU.) The cgroup kill is kept for
  // limits and timeouts, and for a group that still holds processes at rmdir.
  void kill_init() {
    if (pidfd && !reaped) syscall(SYS_pidfd_send_signal, pidfd.get(), SIGKILL, nullptr, 0);
  }
  void destroy() {
    if (pid > 0 && !reaped) {
      kill_init();
      reap(nullptr);
    } else if (pid <= 0 && !ended) {
      kill_all();
    }
    // A destructor must not throw (in a pool that would end every sandbox);
    // a group left behind is removed by the next start's sweep.
    try {
      if (cgroup) cgroup->destroy();
    } catch (const std::exception&) {
    }
  }
};

}  // namespace ultari
