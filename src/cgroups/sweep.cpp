// Killing and removal helpers, and the sweep of groups left behind by a
// supervisor that died without cleaning up.
#include <dirent.h>
#include <signal.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <string_view>

#include "cgroups/cgroups.h"
#include "cgroups/io.h"
#include "cgroups/ops.h"

namespace ultari::cgroups {

uint64_t now_ns() {
  timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

void sleep_us(long us) {
  timespec ts{0, us * 1000};
  ::nanosleep(&ts, nullptr);
}

int write_file_errno(const std::string& path, const char* value) {
  return io::write_file(path, value);
}

namespace {

// Whether /proc/PID/cgroup puts the process in `group_dir` (a directory of
// a mounted hierarchy: it ends with the path a line names).
bool in_group(pid_t pid, const std::string& group_dir) {
  std::string lines;
  if (!io::read_file("/proc/" + std::to_string(pid) + "/cgroup", lines)) return false;
  size_t at = 0;
  while (at < lines.size()) {
    size_t end = lines.find('\n', at);
    if (end == std::string::npos) end = lines.size();
    std::string_view line(lines.data() + at, end - at);
    at = end + 1;
    size_t second = line.find(':', line.find(':') + 1);
    if (second == std::string_view::npos) continue;
    std::string_view path = line.substr(second + 1);
    if (path.size() > 1 && std::string_view(group_dir).ends_with(path)) return true;
  }
  return false;
}

// SIGKILL to `pid` if it is (still) in `group_dir`: pinned by a pidfd
// first, so a pid that was freed after the listing and taken by another
// process of the host is left alone.
void kill_member(pid_t pid, const std::string& group_dir) {
  int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) return;
  if (in_group(pid, group_dir)) ::syscall(SYS_pidfd_send_signal, fd, SIGKILL, nullptr, 0);
  ::close(fd);
}

}  // namespace

void kill_until_empty(const std::vector<std::string>& procs_files) {
  uint64_t deadline = 0;
  for (long pause_us = 50;; pause_us = std::min(pause_us * 2, 2000L)) {
    bool any = false;
    for (const auto& f : procs_files) {
      std::string dir = f.substr(0, f.rfind('/'));
      for (pid_t pid : io::read_pids(f)) {
        any = true;
        kill_member(pid, dir);
      }
    }
    if (!any) return;
    if (deadline == 0) deadline = now_ns() + kWaitNs;
    if (now_ns() > deadline) return;
    sleep_us(pause_us);
  }
}

void freeze_and_kill(const std::string& freezer_dir,
                     const std::vector<std::string>& procs_files) {
  // Frozen processes cannot fork, so one SIGKILL pass reaches all of them;
  // they die once thawed.
  std::string state = freezer_dir + "/freezer.state";
  if (io::write_file(state, "FROZEN") != 0) return;
  uint64_t deadline = now_ns() + kWaitNs;
  std::string s;
  for (long pause_us = 20; io::read_file(state, s) && s.rfind("FROZEN", 0) != 0 &&
                           now_ns() < deadline;
       pause_us = std::min(pause_us * 2, 1000L))
    sleep_us(pause_us);
  for (const auto& f : procs_files)
    for (pid_t pid : io::read_pids(f)) ::kill(pid, SIGKILL);
  io::write_file(state, "THAWED");
}

namespace {

struct OrphanDir {
  Controller controller;
  int version;
  std::string path;
};

// "ultari-<pid>-<starttime>-<n>" → pid and starttime.
bool parse_name(std::string_view name, pid_t& pid, uint64_t& start) {
  constexpr std::string_view prefix = "ultari-";
  if (name.substr(0, prefix.size()) != prefix) return false;
  name.remove_prefix(prefix.size());
  uint64_t parts[3];
  for (int i = 0; i < 3; ++i) {
    size_t dash = i < 2 ? name.find('-') : name.size();
    if (dash == std::string_view::npos) return false;
    auto v = io::parse_u64(name.substr(0, dash));
    if (!v) return false;
    parts[i] = *v;
    name.remove_prefix(i < 2 ? dash + 1 : dash);
  }
  if (parts[0] == 0 || parts[0] > 0x7fffffff) return false;
  pid = static_cast<pid_t>(parts[0]);
  start = parts[1];
  return true;
}

bool owner_gone(pid_t pid, uint64_t start) {
  auto actual = io::proc_starttime(pid);
  return !actual || *actual != start;
}

void collect_orphans(const std::string& base, std::vector<std::string>& names) {
  DIR* dir = ::opendir(base.c_str());
  if (!dir) return;
  while (dirent* e = ::readdir(dir)) {
    if (e->d_type != DT_DIR && e->d_type != DT_UNKNOWN) continue;
    pid_t pid;
    uint64_t start;
    if (!parse_name(e->d_name, pid, start) || !owner_gone(pid, start)) continue;
    if (std::find(names.begin(), names.end(), e->d_name) == names.end())
      names.emplace_back(e->d_name);
  }
  ::closedir(dir);
}

}  // namespace

int sweep_orphans(const Layout& layout) {
  // Same order as Cgroup::create, so the freezer is removed last.
  std::vector<const ControllerMount*> mounts;
  for (Controller c : {Controller::Memory, Controller::Pids, Controller::Cpu,
                       Controller::Cpuacct, Controller::Freezer}) {
    const auto& m = layout.get(c);
    if (m.version != 0 && m.writable) mounts.push_back(&m);
  }
  std::vector<std::string> names;
  for (size_t i = 0; i < mounts.size(); ++i) {
    bool seen = false;
    for (size_t j = 0; j < i; ++j) seen |= mounts[j]->base == mounts[i]->base;
    if (!seen) collect_orphans(mounts[i]->base, names);
  }
  int removed = 0;
  for (const auto& name : names) {
    std::vector<OrphanDir> dirs;
    for (const auto* m : mounts) dirs.push_back({m->controller, m->version, m->base + "/" + name});
    std::string failed;
    if (remove_dirs(dirs, failed) == 0) ++removed;
  }
  return removed;
}

}  // namespace ultari::cgroups
