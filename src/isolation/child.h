// What runs inside the sandbox between clone and exec: the tiny init (pid 1)
// and the payload it forks. Everything here is prepared by the supervisor;
// the child only makes syscalls (async-signal-safe, no allocation).
#pragma once
#include <linux/filter.h>
#include <sys/types.h>

#include <vector>

#include "filesystem/rootfs.h"

namespace ultari::isolation {

struct ChildPlan {
  int sock = -1;          // child's end of the control socket (CLOEXEC)
  int stdin_fd = -1;      // dup2'd onto 0 (-1: inherit)
  int stdout_fd = -1;     // dup2'd onto 1
  int stderr_fd = -1;     // dup2'd onto 2
  // The only fds the child keeps of the supervisor's (sorted): its own
  // socket and pipe ends, the cgroup files, the mount trees of the root
  // recipe. Everything else the clone inherited (another sandbox's pipes,
  // a pool's listening socket, ...) is closed first thing.
  std::vector<int> keep_fds;
  std::vector<int> cgroup_tasks;    // v1 `tasks` files: write "0" to join

  char* argv_area = nullptr;  // the supervisor's command line (/proc/self/cmdline)
  size_t argv_area_len = 0;   // overwritten so pid 1 does not show host paths

  const filesystem::RootPlan* root = nullptr;
  const char* hostname = "sandbox";

  bool become_root = false;      // rootful: setresuid(0) before setup
  bool setgroups_allowed = false;
  int cap_last = 40;             // /proc/sys/kernel/cap_last_cap
  // Capabilities (bit = CAP_*) a payload running as uid 0 keeps, as
  // ambient capabilities in the sandbox's user namespace (Spec::capabilities).
  // 0: none, the bounding set is emptied.
  uint64_t keep_caps = 0;

  sock_fprog filter{};           // seccomp program (installed by init)

  // The command itself (argv, environment, identity, rlimits, cwd) is not
  // here: init receives it on `sock` once its setup is done (MsgType::Command),
  // so a sandbox can be made ahead of the request that uses it.
};

// Entry point of the cloned child. Never returns.
[[noreturn]] void child_main(const ChildPlan& plan);

}  // namespace ultari::isolation
