// Resource limits and accounting through cgroups, on v1, v2 and hybrid hosts.
// Each controller is detected on its own: on a hybrid host memory may live on
// v1 while the unified v2 mount has no controllers at all.
#pragma once
#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "util/fd.h"

namespace ultari::cgroups {

enum class Controller { Memory, Pids, Cpu, Cpuacct, Freezer };

// Where one controller lives on this host.
struct ControllerMount {
  Controller controller;
  int version = 0;       // 1 or 2; 0 = not available
  std::string base;      // directory under which Ultari creates its groups
  bool writable = false; // can this process create groups there?
};

struct Layout {
  std::vector<ControllerMount> controllers;  // one entry per Controller
  std::string unified;  // the cgroup2 mount point ("" when none)
  const ControllerMount& get(Controller c) const;
};

// Reads /proc/self/mountinfo and /proc/self/cgroup. As root the groups go
// under each hierarchy's root; rootless, under the caller's own cgroup when it
// was delegated (v2) and writable.
Layout detect();

struct Limits {
  std::optional<uint64_t> memory_bytes;  // memory+swap together
  std::optional<uint64_t> pids;
  std::optional<double> cpus;
};

struct Stats {
  uint64_t cpu_usec = 0;          // user+sys of the whole group (0 when unknown)
  bool cpu_known = false;
  uint64_t peak_memory_bytes = 0;
  bool memory_known = false;
  uint64_t peak_pids = 0;         // pids.peak on v2, sampled maximum on v1
  uint64_t oom_kills = 0;         // memory.events oom_kill / memory.oom_control
};

// One sandbox's group, in every hierarchy that carries a controller it needs.
// Owns the directories: the destructor kills what is left inside and removes
// them.
class Cgroup {
 public:
  // name: "ultari-<id>". Throws ultari::Error naming the file that failed.
  static Cgroup create(const Layout& layout, const std::string& name, const Limits& limits);
  Cgroup(Cgroup&&) noexcept;
  Cgroup& operator=(Cgroup&&) noexcept;
  Cgroup(const Cgroup&) = delete;
  Cgroup& operator=(const Cgroup&) = delete;
  ~Cgroup();

  // fd of the v2 group when every controller in use is on v2 (for
  // clone3(CLONE_INTO_CGROUP)); -1 otherwise.
  int v2_fd() const;
  // Moves pid into every hierarchy; v2 is skipped when the pid was placed
  // at clone time, v1 when it joins itself (open_self_attach).
  void attach(pid_t pid, bool placed_by_clone, bool v1_joins_itself = false) const;
  // Opens the v1 `tasks` files through which a single-threaded child moves
  // itself by writing "0". Migrating only the calling thread skips the
  // global threadgroup lock, whose first writer after a quiet spell waits
  // for an RCU grace period (5-15 ms on this kind of host). The files are
  // opened by the supervisor, whose credentials the kernel checks.
  std::vector<UniqueFd> open_self_attach() const;
  // Starts a child (clone3, fork-like: returns 0 in the child, its pid in
  // the parent, with *pidfd set) that runs in the group from its start: on
  // v2 by CLONE_INTO_CGROUP; on v1 it moves itself before returning (see
  // open_self_attach; _exit(72) if it cannot); v2 groups of a mixed host are
  // joined by the parent before this returns. Throws in the parent (no
  // child is left).
  pid_t clone_into(int* pidfd) const;

  // Samples counters; call sample_pids() periodically on v1 for peak_pids.
  Stats stats() const;
  void sample_pids();
  // Kills every process in the group: cgroup.kill on v2, freeze + SIGKILL +
  // thaw on v1.
  void kill() const;
  // Removes the groups (kills first if anything is left). Idempotent.
  void destroy();
  // Limits the caller asked for that this host cannot enforce (e.g. "memory").
  const std::vector<std::string>& unenforced() const;

  // One directory of the group.
  struct Dir {
    Controller controller;
    int version;
    std::string path;
  };
  const std::vector<Dir>& directories() const { return dirs_; }
  // A group owned by another process of the same user (the warm pool hands
  // a sandbox to the client that supervises it): reads, samples and kills,
  // but never removes it. Paths must be groups named ultari-*.
  static Cgroup view(std::vector<Dir> dirs);

 private:
  Cgroup() = default;
  std::vector<Dir> dirs_;
  bool owner_ = true;
  UniqueFd v2_fd_;
  std::vector<std::string> unenforced_;
  uint64_t sampled_peak_pids_ = 0;
  // Rootless v2: where we moved ourselves to enable controllers (see
  // evacuate_self in cgroup.cpp), and what we enabled.
  std::string evacuated_leaf_, evacuated_base_, enabled_in_base_;
  void restore_evacuation();
};

// Removes groups named ultari-* whose owning supervisor is gone (it was
// SIGKILLed before it could clean up). The owner is encoded in the name.
// Returns how many groups were removed.
int sweep_orphans(const Layout& layout);

// Name for a new group owned by this process: "ultari-<pid>-<starttime>-<n>".
std::string make_group_name();

// Rootless, v2: moves this process out of the delegated group it shares
// with the caller (where Cgroup::create may need to be alone: see
// evacuate_self in cgroup.cpp) into a leaf of its own, named by
// make_group_name (the sweep removes it once the process is gone). For a
// long-lived helper (isolation's ultari-userns). Returns the leaf, or ""
// when no v2 controller is writable here or the move fails.
std::string leave_for_own_leaf(const Layout& layout);

}  // namespace ultari::cgroups
