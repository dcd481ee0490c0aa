// Kill and removal of a set of group directories, shared by Cgroup and
// sweep_orphans. Templates over the directory record (anything with
// controller, version and path members) so Cgroup's private Dir works as is.
#pragma once
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <string>
#include <vector>

#include "cgroups/cgroups.h"

namespace ultari::cgroups {

uint64_t now_ns();
void sleep_us(long us);
inline constexpr uint64_t kWaitNs = 1000000000ull;  // bound of every wait below

// Sends SIGKILL to every process in the given cgroup.procs files until none
// is listed any more (killed processes stay listed until they have exited).
// Each is pinned by a pidfd and checked to be in the group before the
// signal: without a freezer, a listed pid may be reused by then.
void kill_until_empty(const std::vector<std::string>& procs_files);
// Freezes the v1 freezer group, SIGKILLs what the procs files list, thaws.
void freeze_and_kill(const std::string& freezer_dir,
                     const std::vector<std::string>& procs_files);

// Calls fn(dir) once per distinct directory (co-mounted v1 controllers and
// all v2 controllers share one).
template <typename D, typename Fn>
void for_each_distinct(const std::vector<D>& dirs, Fn fn) {
  for (size_t i = 0; i < dirs.size(); ++i) {
    bool seen = false;
    for (size_t j = 0; j < i && !seen; ++j) seen = dirs[j].path == dirs[i].path;
    if (!seen) fn(dirs[i]);
  }
}

int write_file_errno(const std::string& path, const char* value);

template <typename D>
void kill_dirs(const std::vector<D>& dirs) {
  std::vector<std::string> procs;  // groups still needing a SIGKILL sweep
  std::string freezer;
  for_each_distinct(dirs, [&](const D& d) {
    if (d.version == 2 && write_file_errno(d.path + "/cgroup.kill", "1") == 0) return;
    if (d.controller == Controller::Freezer) freezer = d.path;
    procs.push_back(d.path + "/cgroup.procs");
  });
  if (procs.empty()) return;
  if (!freezer.empty()) freeze_and_kill(freezer, procs);
  kill_until_empty(procs);
}

// rmdir of every directory, killing the processes inside on the first EBUSY
// and retrying while they are reaped. Directories that could not be removed
// stay in dirs; returns the first errno (0 = all gone) and its path.
template <typename D>
int remove_dirs(std::vector<D>& dirs, std::string& failed_path) {
  bool killed = false;
  uint64_t deadline = 0;
  std::vector<D> left;
  int first_err = 0;
  for_each_distinct(dirs, [&](const D& d) {
    for (long pause_us = 100;; pause_us = pause_us < 5000 ? pause_us * 2 : 5000) {
      if (::rmdir(d.path.c_str()) == 0 || errno == ENOENT) return;
      int err = errno;
      if (err == EBUSY) {
        if (deadline == 0) deadline = now_ns() + kWaitNs;
        if (!killed) {
          kill_dirs(dirs);  // processes are still inside
          killed = true;
          continue;
        }
        if (now_ns() < deadline) {
          sleep_us(pause_us);
          continue;
        }
      }
      if (!first_err) first_err = err, failed_path = d.path;
      for (const auto& same : dirs)
        if (same.path == d.path) left.push_back(same);
      return;
    }
  });
  dirs = std::move(left);
  return first_err;
}

}  // namespace ultari::cgroups
