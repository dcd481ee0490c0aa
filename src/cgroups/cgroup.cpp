// One sandbox's group across the v1 hierarchies and/or the v2 tree.
#include <fcntl.h>
#include <linux/magic.h>
#include <linux/sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <unistd.h>

#include <algorithm>
#include <mutex>
#include <cmath>
#include <string_view>
#include <utility>

#include "cgroups/cgroups.h"
#include "cgroups/io.h"
#include "cgroups/ops.h"
#include "util/caller.h"
#include "util/error.h"

namespace ultari::cgroups {
namespace {

using namespace std::string_view_literals;

bool usable(const ControllerMount& m) { return m.version != 0 && m.writable; }

constexpr uint64_t kCpuPeriodUs = 100000;

void write_or_throw(const std::string& path, std::string_view value) {
  if (int err = io::write_file(path, value)) throw_errno("cgroup: write " + path, err);
}

// Same as write_or_throw, but a missing file (an optional kernel feature) is fine.
void write_optional(const std::string& path, std::string_view value) {
  if (int err = io::write_file(path, value); err && err != ENOENT)
    throw_errno("cgroup: write " + path, err);
}

// Enables the v2 controllers the group needs in the parent, writing only the
// missing ones (an already enabled controller costs nothing but a read).
// Returns what it enabled ("+memory +pids"), "" when all were on already.
std::string enable_v2_controllers(const std::string& base, bool memory, bool pids, bool cpu) {
  std::string path = base + "/cgroup.subtree_control";
  std::string have;
  if (!io::read_file(path, have)) throw_errno("cgroup: read " + path);
  for (char& ch : have)
    if (ch == '\n') ch = ' ';
  have = " " + have + " ";
  std::string add;
  auto want = [&](bool needed, std::string_view name) {
    if (needed && have.find(" " + std::string(name) + " ") == std::string::npos)
      add += (add.empty() ? "+" : " +") + std::string(name);
  };
  want(memory, "memory");
  want(pids, "pids");
  want(cpu, "cpu");
  if (!add.empty()) write_or_throw(path, add);
  return add;
}

// Rootless on a delegated v2 subtree: controllers can only be enabled for
// children of a group without processes of its own. When we are the only
// process there (e.g. `systemd-run --user -p Delegate=yes --scope ultari
// ...`), we move into a leaf of our own (returned; "" when we cannot). The
// leaf's name carries our pid, so the sweep removes it if we die in it.
std::string evacuate_self(const std::string& base) {
  std::string procs;
  if (!io::read_file(base + "/cgroup.procs", procs)) return "";
  std::string self = io::u64_str(static_cast<uint64_t>(::getpid()));
  if (procs != self + "\n") return "";
  std::string leaf = base + "/" + make_group_name();
  if (::mkdir(leaf.c_str(), 0755) != 0) return "";
  if (io::write_file(leaf + "/cgroup.procs", "0") != 0) {
    ::rmdir(leaf.c_str());
    return "";
  }
  return leaf;
}

}  // namespace

std::string leave_for_own_leaf(const Layout& layout) {
  for (const auto& m : layout.controllers) {
    if (m.version != 2 || !m.writable) continue;
    std::string leaf = m.base + "/" + make_group_name();
    if (::mkdir(leaf.c_str(), 0755) != 0) return "";
    if (io::write_file(leaf + "/cgroup.procs", "0") != 0) {
      ::rmdir(leaf.c_str());
      return "";
    }
    return leaf;
  }
  return "";
}

Cgroup::Cgroup(Cgroup&& o) noexcept
    : dirs_(std::move(o.dirs_)),
      owner_(o.owner_),
      v2_fd_(std::move(o.v2_fd_)),
      unenforced_(std::move(o.unenforced_)),
      sampled_peak_pids_(o.sampled_peak_pids_),
      evacuated_leaf_(std::exchange(o.evacuated_leaf_, {})),
      evacuated_base_(std::move(o.evacuated_base_)),
      enabled_in_base_(std::move(o.enabled_in_base_)) {
  o.dirs_.clear();
}

Cgroup& Cgroup::operator=(Cgroup&& o) noexcept {
  if (this != &o) {
    try {
      destroy();
    } catch (...) {
    }
    dirs_ = std::move(o.dirs_);
    o.dirs_.clear();
    owner_ = o.owner_;
    v2_fd_ = std::move(o.v2_fd_);
    unenforced_ = std::move(o.unenforced_);
    sampled_peak_pids_ = o.sampled_peak_pids_;
    evacuated_leaf_ = std::exchange(o.evacuated_leaf_, {});
    evacuated_base_ = std::move(o.evacuated_base_);
    enabled_in_base_ = std::move(o.enabled_in_base_);
  }
  return *this;
}

Cgroup::~Cgroup() {
  try {
    destroy();
  } catch (...) {
  }
}

Cgroup Cgroup::create(const Layout& layout, const std::string& name, const Limits& limits) {
  if (limits.cpus && !(*limits.cpus > 0 && std::isfinite(*limits.cpus)))
    throw Error("cgroup: invalid cpu limit");
  if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..")
    throw Error("cgroup: invalid group name '" + name + "'");

  Cgroup cg;
  const auto& mem = layout.get(Controller::Memory);
  const auto& pids = layout.get(Controller::Pids);
  const auto& cpu = layout.get(Controller::Cpu);
  const auto& acct = layout.get(Controller::Cpuacct);
  const auto& frz = layout.get(Controller::Freezer);
  if (limits.memory_bytes && !usable(mem)) cg.unenforced_.push_back("memory");
  if (limits.pids && !usable(pids)) cg.unenforced_.push_back("pids");
  if (limits.cpus && !usable(cpu)) cg.unenforced_.push_back("cpus");

  // Order matters for destroy(): the freezer goes last so it is still there
  // when a busy group has to be frozen and killed.
  std::vector<const ControllerMount*> plan;
  if (usable(mem)) plan.push_back(&mem);
  if (usable(pids)) plan.push_back(&pids);
  if (limits.cpus && usable(cpu)) plan.push_back(&cpu);
  if (usable(acct) && acct.version == 1) plan.push_back(&acct);
  if (usable(frz) && frz.version == 1) plan.push_back(&frz);

  bool v2_mem = false, v2_pids = false, v2_cpu = false;
  std::string v2_base;
  for (const auto* m : plan) {
    if (m->version != 2) continue;
    v2_base = m->base;
    v2_mem |= m->controller == Controller::Memory;
    v2_pids |= m->controller == Controller::Pids;
    v2_cpu |= m->controller == Controller::Cpu;
  }
  if (!v2_base.empty()) {
    try {
      try {
        enable_v2_controllers(v2_base, v2_mem, v2_pids, v2_cpu);
      } catch (const Error&) {
        if (host_root()) throw;
        cg.evacuated_leaf_ = evacuate_self(v2_base);
        if (cg.evacuated_leaf_.empty()) throw;
        cg.evacuated_base_ = v2_base;
        cg.enabled_in_base_ = enable_v2_controllers(v2_base, v2_mem, v2_pids, v2_cpu);
      }
    } catch (const Error&) {
      if (host_root()) throw;
      // Rootless in a delegated cgroup that also holds other processes:
      // controllers cannot be enabled below it. Run without those limits
      // and name them.
      std::erase_if(plan, [](const ControllerMount* m) { return m->version == 2; });
      if (limits.memory_bytes && v2_mem) cg.unenforced_.push_back("memory");
      if (limits.pids && v2_pids) cg.unenforced_.push_back("pids");
      if (limits.cpus && v2_cpu) cg.unenforced_.push_back("cpus");
    }
  }

  // From here on a throw destroys cg, which removes the dirs made so far.
  for (const auto* m : plan) {
    std::string path = m->base + "/" + name;
    bool made = false;
    for (const auto& d : cg.dirs_) made |= d.path == path;
    if (!made && ::mkdir(path.c_str(), 0755) != 0) throw_errno("cgroup: mkdir " + path);
    cg.dirs_.push_back({m->controller, m->version, std::move(path)});
  }

  for (const auto& d : cg.dirs_) {
    const std::string& p = d.path;
    switch (d.controller) {
      case Controller::Memory:
        if (d.version == 1) {
          if (limits.memory_bytes) {
            // memsw must stay >= the plain limit, so the plain one goes first.
            std::string v = io::u64_str(*limits.memory_bytes);
            write_or_throw(p + "/memory.limit_in_bytes", v);
            write_optional(p + "/memory.memsw.limit_in_bytes", v);
            // v1 charges TCP socket buffers to a group only once this
            // limit is set (apart from memory.limit_in_bytes): without it a
            // sandbox could queue buffers on loopback connections bounded
            // by the host's tcp_mem alone. (Unix socket buffers are
            // charged to the group: a --memory 64M sandbox filling
            // socketpairs is OOM-killed at 64 MiB.)
            write_optional(p + "/memory.kmem.tcp.limit_in_bytes", v);
          }
        } else {
          if (limits.memory_bytes) {
            write_or_throw(p + "/memory.max", io::u64_str(*limits.memory_bytes));
            write_optional(p + "/memory.swap.max", "0");
          }
          // memory.oom.group stays 0: a group kill would take the sandbox's
          // init too, and with it the report of how the command ended.
        }
        break;
      case Controller::Pids:
        if (limits.pids) write_or_throw(p + "/pids.max", io::u64_str(*limits.pids));
        break;
      case Controller::Cpu: {
        auto quota = static_cast<uint64_t>(std::llround(*limits.cpus * kCpuPeriodUs));
        if (quota < 1000) quota = 1000;  // the kernel's minimum quota
        if (d.version == 1) {
          write_or_throw(p + "/cpu.cfs_period_us", io::u64_str(kCpuPeriodUs));
          write_or_throw(p + "/cpu.cfs_quota_us", io::u64_str(quota));
        } else {
          write_or_throw(p + "/cpu.max", io::u64_str(quota) + " " + io::u64_str(kCpuPeriodUs));
        }
        break;
      }
      case Controller::Cpuacct:
      case Controller::Freezer:
        break;
    }
  }

  bool all_v2 = !cg.dirs_.empty();
  for (const auto& d : cg.dirs_) all_v2 &= d.version == 2;
  if (all_v2) {
    const std::string& p = cg.dirs_.front().path;
    int fd = ::open(p.c_str(), O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) throw_errno("cgroup: open " + p);
    cg.v2_fd_.reset(fd);
  }
  return cg;
}

Cgroup Cgroup::view(std::vector<Dir> dirs) {
  for (const auto& d : dirs) {
    auto slash = d.path.rfind('/');
    if (d.path.empty() || d.path[0] != '/' || d.path.find("/../") != std::string::npos || slash == std::string::npos ||
        d.path.compare(slash + 1, 7, "ultari-") != 0 || (d.version != 1 && d.version != 2))
      throw Error("cgroup: '" + d.path + "' is not a sandbox's group");
    // On a cgroup filesystem, and the path is what it says (no symlink).
    struct statfs fs{};
    char real[PATH_MAX];
    if (::statfs(d.path.c_str(), &fs) != 0 || (fs.f_type != CGROUP_SUPER_MAGIC && fs.f_type != CGROUP2_SUPER_MAGIC) ||
        !::realpath(d.path.c_str(), real) || d.path != real)
      throw Error("cgroup: '" + d.path + "' is not a cgroup directory");
  }
  Cgroup cg;
  cg.dirs_ = std::move(dirs);
  cg.owner_ = false;
  return cg;
}

int Cgroup::v2_fd() const { return v2_fd_.get(); }

const std::vector<std::string>& Cgroup::unenforced() const { return unenforced_; }

void Cgroup::attach(pid_t pid, bool placed_by_clone, bool v1_joins_itself) const {
  std::string s = io::u64_str(static_cast<uint64_t>(pid));
  for_each_distinct(dirs_, [&](const Dir& d) {
    if ((d.version == 2 && placed_by_clone) || (d.version == 1 && v1_joins_itself)) return;
    write_or_throw(d.path + "/cgroup.procs", s);
  });
}

std::vector<UniqueFd> Cgroup::open_self_attach() const {
  std::vector<UniqueFd> fds;
  for_each_distinct(dirs_, [&](const Dir& d) {
    if (d.version != 1) return;
    std::string path = d.path + "/tasks";
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
    if (!fd) throw_errno("cgroup: open " + path);
    fds.push_back(std::move(fd));
  });
  return fds;
}

pid_t Cgroup::clone_into(int* pidfd) const {
  std::vector<UniqueFd> tasks = open_self_attach();
  clone_args args{};
  args.flags = CLONE_PIDFD;
  args.pidfd = reinterpret_cast<uint64_t>(pidfd);
  args.exit_signal = SIGCHLD;
  if (v2_fd() >= 0) {
    args.flags |= CLONE_INTO_CGROUP;
    args.cgroup = static_cast<uint64_t>(v2_fd());
  }
  long pid = syscall(SYS_clone3, &args, sizeof args);
  if (pid < 0) throw_errno("clone3 into cgroup " + (dirs_.empty() ? std::string("?") : dirs_.front().path));
  if (pid == 0) {
    // The only thread: "0" moves it (async-signal-safe from here on).
    for (const auto& fd : tasks)
      if (::write(fd.get(), "0", 1) != 1) _exit(72);
    return 0;
  }
  try {
    attach(static_cast<pid_t>(pid), v2_fd() >= 0, /*v1_joins_itself=*/true);
  } catch (...) {
    syscall(SYS_pidfd_send_signal, *pidfd, SIGKILL, nullptr, 0);
    while (::waitpid(static_cast<pid_t>(pid), nullptr, 0) < 0 && errno == EINTR) {
    }
    ::close(*pidfd);
    *pidfd = -1;
    throw;
  }
  return static_cast<pid_t>(pid);
}

Stats Cgroup::stats() const {
  Stats st;
  const Dir* v2 = nullptr;
  const Dir* by[5] = {};
  for (const auto& d : dirs_) {
    if (d.version == 2) v2 = &d;
    by[static_cast<size_t>(d.controller)] = &d;
  }
  const Dir* acct = by[static_cast<size_t>(Controller::Cpuacct)];
  std::optional<uint64_t> cpu;
  if (v2)
    cpu = io::read_keyed(v2->path + "/cpu.stat", "usage_usec");
  else if (acct)
    if (auto ns = io::read_u64(acct->path + "/cpuacct.usage")) cpu = *ns / 1000;
  if (cpu) st.cpu_usec = *cpu, st.cpu_known = true;

  if (const Dir* m = by[static_cast<size_t>(Controller::Memory)]) {
    auto peak = io::read_u64(m->path + (m->version == 2 ? "/memory.peak"
                                                         : "/memory.max_usage_in_bytes"));
    if (peak) st.peak_memory_bytes = *peak, st.memory_known = true;
    auto ooms = io::read_keyed(
        m->path + (m->version == 2 ? "/memory.events" : "/memory.oom_control"), "oom_kill");
    st.oom_kills = ooms.value_or(0);
  }
  if (const Dir* p = by[static_cast<size_t>(Controller::Pids)]) {
    if (auto peak = io::read_u64(p->path + "/pids.peak")) {
      // Some kernels only raise pids.peak on fork, not when a pid is attached.
      st.peak_pids = std::max(sampled_peak_pids_, *peak);
    } else {
      uint64_t cur = io::read_u64(p->path + "/pids.current").value_or(0);
      st.peak_pids = std::max(sampled_peak_pids_, cur);
    }
  }
  return st;
}

void Cgroup::sample_pids() {
  for (const auto& d : dirs_) {
    if (d.controller != Controller::Pids) continue;
    if (auto cur = io::read_u64(d.path + "/pids.current"))
      sampled_peak_pids_ = std::max(sampled_peak_pids_, *cur);
  }
}

void Cgroup::kill() const { kill_dirs(dirs_); }

void Cgroup::destroy() {
  if (!owner_) return;
  if (!dirs_.empty()) {
    v2_fd_.reset();
    std::string failed;
    if (int err = remove_dirs(dirs_, failed)) throw_errno("cgroup: rmdir " + failed, err);
  }
  restore_evacuation();
}

// Undoes evacuate_self(): the controllers we enabled go off again, we move
// back and our leaf goes away, leaving the delegated tree as we found it.
// Best effort: a leaf left behind is swept by the next start.
void Cgroup::restore_evacuation() {
  if (evacuated_leaf_.empty()) return;
  if (!enabled_in_base_.empty()) {
    std::string off = enabled_in_base_;
    std::replace(off.begin(), off.end(), '+', '-');
    io::write_file(evacuated_base_ + "/cgroup.subtree_control", off);
  }
  if (io::write_file(evacuated_base_ + "/cgroup.procs", "0") == 0) ::rmdir(evacuated_leaf_.c_str());
  evacuated_leaf_.clear();
}

std::string make_group_name() {
  // Cached per pid: a forked child calling this must not reuse its parent's
  // starttime.
  static std::mutex mu;
  static pid_t cached_pid = 0;
  static uint64_t start = 0;
  static uint64_t counter = 0;
  pid_t pid = ::getpid();
  std::lock_guard lock(mu);
  if (cached_pid != pid) {
    start = io::proc_starttime(0).value_or(0);
    cached_pid = pid;
  }
  return "ultari-" + io::u64_str(static_cast<uint64_t>(pid)) + "-" + io::u64_str(start) +
         "-" + io::u64_str(counter++);
}

}  // namespace ultari::cgroups
