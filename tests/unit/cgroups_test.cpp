// Cgroup tests against the real kernel (run as root). Every group a test makes
// is owned by an RAII object; the fixture checks that none is left behind.
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "cgroups/cgroups.h"
#include "cgroups/ops.h"
#include "util/error.h"

namespace ultari::cgroups {
namespace {

constexpr uint64_t kMiB = 1024 * 1024;
constexpr long kCgroupMagic = 0x27e0eb;
constexpr long kCgroup2Magic = 0x63677270;

std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string first_line(const std::string& path) {
  std::string s = slurp(path);
  return s.substr(0, s.find('\n'));
}

bool exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

long fs_magic(const std::string& path) {
  struct statfs s;
  return ::statfs(path.c_str(), &s) == 0 ? static_cast<long>(s.f_type) : 0;
}

bool usable(const ControllerMount& m) { return m.version != 0 && m.writable; }

// Controllers Cgroup::create puts a directory in (given no cpu limit).
std::vector<Controller> group_controllers(const Layout& l, bool cpu) {
  std::vector<Controller> out;
  for (Controller c : {Controller::Memory, Controller::Pids, Controller::Cpu,
                       Controller::Cpuacct, Controller::Freezer}) {
    const auto& m = l.get(c);
    if (!usable(m)) continue;
    if (c == Controller::Cpu && !cpu) continue;
    if ((c == Controller::Cpuacct || c == Controller::Freezer) && m.version != 1) continue;
    out.push_back(c);
  }
  return out;
}

std::string dir_of(const Layout& l, Controller c, const std::string& name) {
  return l.get(c).base + "/" + name;
}

std::vector<pid_t> procs_of(const std::string& dir) {
  std::vector<pid_t> out;
  std::istringstream in(slurp(dir + "/cgroup.procs"));
  for (pid_t p; in >> p;) out.push_back(p);
  return out;
}

// Removes directories made by hand (not by Cgroup) even when a test fails.
struct ManualDirs {
  std::vector<std::string> paths;
  void make(const std::string& p) {
    ASSERT_EQ(::mkdir(p.c_str(), 0755), 0) << p << ": " << std::strerror(errno);
    paths.push_back(p);
  }
  ~ManualDirs() {
    for (auto it = paths.rbegin(); it != paths.rend(); ++it) ::rmdir(it->c_str());
  }
};

// A forked child that waits for release() before running body (so it can be
// attached first). body runs in the child: async-signal-safe code only.
class Child {
 public:
  template <typename Body>
  explicit Child(Body body) {
    int go[2], out[2];
    if (::pipe2(go, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) std::abort();
    pid_ = ::fork();
    if (pid_ == 0) {
      ::close(go[1]);
      ::close(out[0]);
      char c;
      if (::read(go[0], &c, 1) != 1) ::_exit(100);
      ::_exit(body(out[1]));
    }
    ::close(go[0]);
    ::close(out[1]);
    go_ = go[1];
    out_ = out[0];
  }
  Child(const Child&) = delete;
  ~Child() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (go_ >= 0) ::close(go_);
    if (out_ >= 0) ::close(out_);
  }
  pid_t pid() const { return pid_; }
  void release() {
    char c = 'g';
    ASSERT_EQ(::write(go_, &c, 1), 1);
  }
  // Reads an int the child wrote to its out fd (-1 on EOF).
  int read_int() {
    int v = -1;
    return ::read(out_, &v, sizeof v) == sizeof v ? v : -1;
  }
  // Exit status; a child still running after 3 s is killed and reported as
  // -1, so a broken kill() fails the test instead of hanging it.
  int wait() {
    int st = 0;
    for (int i = 0; i < 3000; ++i) {
      if (::waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        return st;
      }
      ::usleep(1000);
    }
    return -1;
  }
  // True when the child is still running after `ms` milliseconds.
  bool alive_after_ms(int ms) {
    for (int i = 0; i < ms; ++i) {
      int st;
      if (::waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        return false;
      }
      ::usleep(1000);
    }
    return true;
  }

 private:
  pid_t pid_ = -1;
  int go_ = -1;
  int out_ = -1;
};

void write_int(int fd, int v) {
  if (::write(fd, &v, sizeof v) != sizeof v) ::_exit(101);
}

// Forks up to `tries` children that just wait; reports how many forks worked,
// then waits to be killed.
int fork_bomb(int out, int tries) {
  int ok = 0;
  for (int i = 0; i < tries; ++i) {
    pid_t p = ::fork();
    if (p == 0) {
      for (;;) ::pause();
    }
    if (p > 0) ++ok;
  }
  write_int(out, ok);
  for (;;) ::pause();
}

int memory_bomb(int, size_t bytes) {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return 3;
  auto* c = static_cast<volatile char*>(p);
  for (size_t i = 0; i < bytes; i += 4096) c[i] = 1;
  return 0;
}

bool killed_by_sigkill(int st) { return WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL; }

class CgroupTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root";
    layout_ = detect();
    if (!usable(layout_.get(Controller::Memory)) || !usable(layout_.get(Controller::Pids)))
      GTEST_SKIP() << "memory and pids controllers needed";
    // Grandchildren of fork bombs come back to us, so we can reap them.
    ::prctl(PR_SET_CHILD_SUBREAPER, 1);
  }

  void TearDown() override {
    reap_orphans();
    EXPECT_EQ(leftovers(), std::vector<std::string>{});
  }

  // Every ultari-* group of this process (or registered as a test's) under
  // /sys/fs/cgroup/ and its subdirectories. Groups of other processes are
  // ignored: ctest may run other test processes at the same time.
  std::vector<std::string> leftovers() const {
    std::vector<std::string> bases = {"/sys/fs/cgroup"};
    if (DIR* d = ::opendir("/sys/fs/cgroup")) {
      while (dirent* e = ::readdir(d))
        if (e->d_type == DT_DIR && e->d_name[0] != '.')
          bases.push_back(std::string("/sys/fs/cgroup/") + e->d_name);
      ::closedir(d);
    }
    for (const auto& cm : layout_.controllers)
      if (!cm.base.empty()) bases.push_back(cm.base);
    std::string mine = "ultari-" + std::to_string(::getpid()) + "-";
    std::vector<std::string> found;
    for (const auto& base : bases) {
      DIR* d = ::opendir(base.c_str());
      if (!d) continue;
      while (dirent* e = ::readdir(d)) {
        std::string n = e->d_name;
        bool ours = n.rfind(mine, 0) == 0 ||
                    std::find(extra_names_.begin(), extra_names_.end(), n) != extra_names_.end();
        std::string path = base + "/" + n;
        if (ours && std::find(found.begin(), found.end(), path) == found.end())
          found.push_back(path);
      }
      ::closedir(d);
    }
    return found;
  }

  static void reap_orphans() {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    for (;;) {
      pid_t p = ::waitpid(-1, nullptr, WNOHANG);
      if (p < 0) return;  // ECHILD: nothing left
      if (p == 0) {
        if (std::chrono::steady_clock::now() > deadline) return;
        ::usleep(1000);
      }
    }
  }

  Layout layout_;
  std::vector<std::string> extra_names_;  // names not starting with our pid
};

TEST_F(CgroupTest, DetectReportsThisHost) {
  if (fs_magic("/sys/fs/cgroup/memory") == kCgroupMagic &&
      fs_magic("/sys/fs/cgroup/unified") == kCgroup2Magic) {
    // Hybrid: every controller on its own v1 hierarchy, an empty cgroup2.
    EXPECT_EQ(layout_.unified, "/sys/fs/cgroup/unified");
    for (auto [c, dir] : {std::pair{Controller::Memory, "memory"}, {Controller::Pids, "pids"},
                          {Controller::Cpu, "cpu"}, {Controller::Cpuacct, "cpuacct"},
                          {Controller::Freezer, "freezer"}}) {
      const auto& m = layout_.get(c);
      EXPECT_EQ(m.version, 1) << dir;
      EXPECT_EQ(m.base, std::string("/sys/fs/cgroup/") + dir);
      EXPECT_TRUE(m.writable) << dir;
    }
  } else if (fs_magic("/sys/fs/cgroup") == kCgroup2Magic) {
    EXPECT_EQ(layout_.unified, "/sys/fs/cgroup");
    std::string avail = " " + first_line("/sys/fs/cgroup/cgroup.controllers") + " ";
    for (auto [c, name] : {std::pair{Controller::Memory, "memory"}, {Controller::Pids, "pids"},
                           {Controller::Cpu, "cpu"}}) {
      bool listed = avail.find(std::string(" ") + name + " ") != std::string::npos;
      EXPECT_EQ(layout_.get(c).version, listed ? 2 : 0) << name;
      if (listed) {
        EXPECT_EQ(layout_.get(c).base, "/sys/fs/cgroup");
      }
    }
    EXPECT_EQ(layout_.get(Controller::Cpuacct).version, 0);
    EXPECT_EQ(layout_.get(Controller::Freezer).version, 0);
  } else {
    GTEST_SKIP() << "neither the expected hybrid nor a pure v2 layout";
  }
  EXPECT_EQ(layout_.controllers.size(), 5u);
  // A cached, equal copy.
  Layout again = detect();
  ASSERT_EQ(again.controllers.size(), layout_.controllers.size());
  for (size_t i = 0; i < again.controllers.size(); ++i)
    EXPECT_EQ(again.controllers[i].base, layout_.controllers[i].base);
}

TEST_F(CgroupTest, AttachPlacesChildAndWritesLimits) {
  std::string name = make_group_name();
  Cgroup cg = Cgroup::create(layout_, name, {.memory_bytes = 64 * kMiB, .pids = 16});
  EXPECT_TRUE(cg.unenforced().empty());
  Child child([](int) { return 0; });
  cg.attach(child.pid(), false);

  std::string own = slurp("/proc/" + std::to_string(child.pid()) + "/cgroup");
  for (Controller c : group_controllers(layout_, false)) {
    std::string dir = dir_of(layout_, c, name);
    ASSERT_TRUE(exists(dir)) << dir;
    auto procs = procs_of(dir);
    EXPECT_NE(std::find(procs.begin(), procs.end(), child.pid()), procs.end()) << dir;
  }
  // /proc/<pid>/cgroup names the group on every hierarchy the group uses.
  size_t lines = 0;
  std::istringstream in(own);
  for (std::string line; std::getline(in, line);)
    if (line.size() > name.size() && line.ends_with("/" + name)) ++lines;
  EXPECT_GE(lines, 1u) << own;
  // Negative control: this test process is not in the group.
  EXPECT_EQ(slurp("/proc/self/cgroup").find(name), std::string::npos);

  const auto& mem = layout_.get(Controller::Memory);
  std::string md = dir_of(layout_, Controller::Memory, name);
  if (mem.version == 1) {
    EXPECT_EQ(first_line(md + "/memory.limit_in_bytes"), std::to_string(64 * kMiB));
    if (exists(md + "/memory.memsw.limit_in_bytes")) {
      EXPECT_EQ(first_line(md + "/memory.memsw.limit_in_bytes"), std::to_string(64 * kMiB));
    }
    if (exists(md + "/memory.kmem.tcp.limit_in_bytes")) {  // TCP buffers are charged too
      EXPECT_EQ(first_line(md + "/memory.kmem.tcp.limit_in_bytes"), std::to_string(64 * kMiB));
    }
  } else {
    EXPECT_EQ(first_line(md + "/memory.max"), std::to_string(64 * kMiB));
    if (exists(md + "/memory.swap.max")) {
      EXPECT_EQ(first_line(md + "/memory.swap.max"), "0");
    }
    EXPECT_EQ(first_line(md + "/memory.oom.group"), "0");  // init must survive a group OOM
  }
  EXPECT_EQ(first_line(dir_of(layout_, Controller::Pids, name) + "/pids.max"), "16");
  // clone3(CLONE_INTO_CGROUP) is only possible when every group is on v2.
  bool all_v2 = true;
  for (Controller c : group_controllers(layout_, false)) all_v2 &= layout_.get(c).version == 2;
  if (all_v2) {
    EXPECT_GE(cg.v2_fd(), 0);
  } else {
    EXPECT_EQ(cg.v2_fd(), -1);
  }

  child.release();
  EXPECT_EQ(child.wait(), 0);
  cg.destroy();
  for (Controller c : group_controllers(layout_, false))
    EXPECT_FALSE(exists(dir_of(layout_, c, name))) << dir_of(layout_, c, name);
}

// A child started by clone_into is in the group from its start (v2:
// clone3 CLONE_INTO_CGROUP; v1: it moved itself before clone_into returned
// to it): its first look at /proc/self/cgroup names the group everywhere.
TEST_F(CgroupTest, CloneIntoPlacesTheChildFromItsStart) {
  std::string name = make_group_name();
  Cgroup cg = Cgroup::create(layout_, name, {.memory_bytes = 64 * kMiB, .pids = 16});
  std::vector<std::string> hierarchies;
  for (const auto& d : cg.directories())
    if (std::find(hierarchies.begin(), hierarchies.end(), d.path) == hierarchies.end()) hierarchies.push_back(d.path);
  ASSERT_FALSE(hierarchies.empty());
  // Lines of /proc/self/cgroup that end with "/<name>" (read with syscalls
  // only: the child of a fork).
  auto lines_naming = [](const std::string& group) {
    char buf[4096];
    int fd = ::open("/proc/self/cgroup", O_RDONLY | O_CLOEXEC);
    ssize_t n = fd < 0 ? -1 : ::read(fd, buf, sizeof buf - 1);
    if (fd >= 0) ::close(fd);
    if (n <= 0) return -1;
    buf[n] = '\0';
    int count = 0;
    for (char* line = buf; *line;) {
      char* end = std::strchr(line, '\n');
      size_t len = end ? static_cast<size_t>(end - line) : std::strlen(line);
      if (len > group.size() && line[len - group.size() - 1] == '/' &&
          std::memcmp(line + len - group.size(), group.data(), group.size()) == 0)
        ++count;
      if (!end) break;
      line = end + 1;
    }
    return count;
  };
  int pidfd = -1;
  pid_t pid = cg.clone_into(&pidfd);
  if (pid == 0) _exit(lines_naming(name));
  ASSERT_GT(pid, 0);
  EXPECT_GE(pidfd, 0);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ::close(pidfd);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), static_cast<int>(hierarchies.size()));
  // Negative control: a plain fork's child is in none of them.
  pid = ::fork();
  if (pid == 0) _exit(lines_naming(name));
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_EQ(WEXITSTATUS(status), 0);
  cg.destroy();
}

TEST_F(CgroupTest, CpuLimitIsWritten) {
  if (!usable(layout_.get(Controller::Cpu))) GTEST_SKIP() << "no cpu controller";
  std::string name = make_group_name();
  Cgroup cg = Cgroup::create(layout_, name, {.cpus = 0.5});
  std::string d = dir_of(layout_, Controller::Cpu, name);
  if (layout_.get(Controller::Cpu).version == 1) {
    EXPECT_EQ(first_line(d + "/cpu.cfs_period_us"), "100000");
    EXPECT_EQ(first_line(d + "/cpu.cfs_quota_us"), "50000");
  } else {
    EXPECT_EQ(first_line(d + "/cpu.max"), "50000 100000");
  }
  // Without a cpu limit no cpu group is made (unless cpu shares a directory).
  std::string other = make_group_name();
  Cgroup plain = Cgroup::create(layout_, other, {});
  if (layout_.get(Controller::Cpu).base != layout_.get(Controller::Memory).base &&
      layout_.get(Controller::Cpu).base != layout_.get(Controller::Cpuacct).base) {
    EXPECT_FALSE(exists(dir_of(layout_, Controller::Cpu, other)));
  }
  EXPECT_THROW(Cgroup::create(layout_, make_group_name(), {.cpus = -1.0}), Error);
}

TEST_F(CgroupTest, MemoryBombIsOomKilled) {
  Cgroup cg = Cgroup::create(layout_, make_group_name(), {.memory_bytes = 64 * kMiB});
  Child bomb([](int out) { return memory_bomb(out, 200 * kMiB); });
  cg.attach(bomb.pid(), false);
  bomb.release();
  int st = bomb.wait();
  EXPECT_TRUE(killed_by_sigkill(st)) << "status " << st;
  Stats s = cg.stats();
  EXPECT_GE(s.oom_kills, 1u);
  ASSERT_TRUE(s.memory_known);
  EXPECT_GE(s.peak_memory_bytes, 48 * kMiB);
  EXPECT_LE(s.peak_memory_bytes, 65 * kMiB);

  // Negative control: a smaller bomb, still well over 64 MiB, in a group
  // without a memory limit (128 MiB keeps small test VMs happy).
  Cgroup free_cg = Cgroup::create(layout_, make_group_name(), {});
  Child ok([](int out) { return memory_bomb(out, 128 * kMiB); });
  free_cg.attach(ok.pid(), false);
  ok.release();
  EXPECT_EQ(ok.wait(), 0);
  Stats fs = free_cg.stats();
  EXPECT_EQ(fs.oom_kills, 0u);
  EXPECT_GE(fs.peak_memory_bytes, 120 * kMiB);
}

TEST_F(CgroupTest, ForkBombIsCappedByPidsMax) {
  auto run = [&](uint64_t max) {
    Cgroup cg = Cgroup::create(layout_, make_group_name(), {.pids = max});
    Child bomb([](int out) { return fork_bomb(out, 100); });
    cg.attach(bomb.pid(), false);
    bomb.release();
    int forks = bomb.read_int();
    cg.sample_pids();
    Stats s = cg.stats();
    cg.kill();
    EXPECT_TRUE(killed_by_sigkill(bomb.wait()));
    return std::pair{forks, s.peak_pids};
  };
  auto [forks, peak] = run(16);
  EXPECT_GE(forks, 1);
  EXPECT_LT(forks, 20);
  EXPECT_LE(forks, 15);  // the bomb itself is the 16th
  EXPECT_LE(peak, 16u);
  EXPECT_GE(peak, 2u);
  // Negative control: the same bomb with room to grow.
  auto [free_forks, free_peak] = run(1000);
  EXPECT_EQ(free_forks, 100);
  EXPECT_GT(free_peak, 20u);
}

TEST_F(CgroupTest, KillStopsSleepingChild) {
  Cgroup cg = Cgroup::create(layout_, make_group_name(), {.pids = 16});
  Child inside([](int) {
    for (;;) ::pause();
    return 0;
  });
  Child outside([](int) {
    for (;;) ::pause();
    return 0;
  });
  cg.attach(inside.pid(), false);
  inside.release();
  outside.release();
  cg.kill();
  EXPECT_TRUE(killed_by_sigkill(inside.wait()));
  // Negative control: a process outside the group is untouched.
  EXPECT_TRUE(outside.alive_after_ms(20));
}

// Without a freezer (v2 before cgroup.kill, v1 without one) the kill goes
// by the pids a procs file lists, and a pid may have been freed and taken
// by another process of the host by the time the signal is sent. Each is
// checked to be in the group (through a pidfd) first: a listing that names
// a process outside the group (a stale pid, here a file that says so) kills
// nothing. Control: the group's own procs file kills its member. (Fifth
// core review, L5.)
TEST_F(CgroupTest, KillByPidsSparesAProcessOutsideTheGroup) {
  std::string name = make_group_name();
  Cgroup cg = Cgroup::create(layout_, name, {.pids = 16});
  Child inside([](int) {
    for (;;) ::pause();
    return 0;
  });
  Child outside([](int) {
    for (;;) ::pause();
    return 0;
  });
  cg.attach(inside.pid(), false);
  inside.release();
  outside.release();
  char dir[] = "/tmp/ultari-stale-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  std::string stale = std::string(dir) + "/cgroup.procs";
  std::ofstream(stale) << outside.pid() << "\n";
  kill_until_empty({stale});  // (returns after its bound: the file keeps listing it)
  EXPECT_TRUE(outside.alive_after_ms(20));
  ::unlink(stale.c_str());
  ::rmdir(dir);
  std::string procs = dir_of(layout_, Controller::Pids, name) + "/cgroup.procs";
  kill_until_empty({procs});
  EXPECT_TRUE(killed_by_sigkill(inside.wait()));
}

TEST_F(CgroupTest, KillStopsForkingChild) {
  std::string name = make_group_name();
  Cgroup cg = Cgroup::create(layout_, name, {.pids = 64});
  // Keeps forking short-lived children (which also fork) as fast as it can.
  Child forker([](int) {
    for (;;) {
      pid_t p = ::fork();
      if (p == 0) {
        if (::fork() == 0) ::_exit(0);
        ::_exit(0);
      }
      if (p > 0) ::waitpid(p, nullptr, 0);
    }
    return 0;
  });
  cg.attach(forker.pid(), false);
  forker.release();
  ::usleep(20000);
  cg.kill();
  EXPECT_TRUE(killed_by_sigkill(forker.wait()));
  std::string pd = dir_of(layout_, Controller::Pids, name);
  for (int i = 0; i < 1000 && !procs_of(pd).empty(); ++i) ::usleep(1000);
  EXPECT_TRUE(procs_of(pd).empty());
  // The group is not left frozen (v1 kill freezes, kills, thaws).
  if (usable(layout_.get(Controller::Freezer)) && layout_.get(Controller::Freezer).version == 1) {
    EXPECT_EQ(first_line(dir_of(layout_, Controller::Freezer, name) + "/freezer.state"),
              "THAWED");
  }
}

TEST_F(CgroupTest, DestroyKillsAndRemovesAndIsIdempotent) {
  std::string name = make_group_name();
  std::vector<std::string> dirs;
  Child child([](int) {
    for (;;) ::pause();
    return 0;
  });
  {
    Cgroup cg = Cgroup::create(layout_, name, {.memory_bytes = 64 * kMiB, .pids = 16});
    for (Controller c : group_controllers(layout_, false)) dirs.push_back(dir_of(layout_, c, name));
    for (const auto& d : dirs) ASSERT_TRUE(exists(d)) << d;
    cg.attach(child.pid(), false);
    child.release();
    Cgroup moved = std::move(cg);
    cg.destroy();  // moved-from: nothing to do
    for (const auto& d : dirs) EXPECT_TRUE(exists(d)) << d;
    moved.destroy();
    for (const auto& d : dirs) EXPECT_FALSE(exists(d)) << d;
    moved.destroy();
  }
  EXPECT_TRUE(killed_by_sigkill(child.wait()));
}

TEST_F(CgroupTest, UnavailableControllerIsUnenforced) {
  Layout lay = layout_;
  for (auto& cm : lay.controllers)
    if (cm.controller == Controller::Memory || cm.controller == Controller::Cpu)
      cm = {cm.controller, 0, "", false};
  std::string name = make_group_name();
  Cgroup cg = Cgroup::create(lay, name, {.memory_bytes = 64 * kMiB, .pids = 16, .cpus = 0.5});
  EXPECT_EQ(cg.unenforced(), (std::vector<std::string>{"memory", "cpus"}));
  EXPECT_EQ(first_line(dir_of(lay, Controller::Pids, name) + "/pids.max"), "16");
  if (layout_.get(Controller::Memory).base != layout_.get(Controller::Pids).base) {
    EXPECT_FALSE(exists(dir_of(layout_, Controller::Memory, name)));
  }
  // Negative control: on the real layout everything is enforced.
  Cgroup real = Cgroup::create(layout_, make_group_name(), {.memory_bytes = 64 * kMiB,
                                                             .pids = 16});
  EXPECT_TRUE(real.unenforced().empty());
}

TEST_F(CgroupTest, FailedWriteThrowsAndLeavesNothing) {
  char tmpl[] = "/tmp/ultari-cgtest-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  std::string fake = tmpl;
  struct RmTmp {
    std::string p;
    ~RmTmp() { ::rmdir(p.c_str()); }
  } rm{fake};
  // pids "hierarchy" that is a plain directory: mkdir works, pids.max does not exist.
  Layout lay = layout_;
  for (auto& cm : lay.controllers)
    if (cm.controller == Controller::Pids) cm = {Controller::Pids, 1, fake, true};
  std::string name = make_group_name();
  try {
    Cgroup::create(lay, name, {.memory_bytes = 64 * kMiB, .pids = 16});
    ADD_FAILURE() << "no throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("pids.max"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(exists(fake + "/" + name));
  EXPECT_FALSE(exists(dir_of(layout_, Controller::Memory, name)));

  // A missing hierarchy: mkdir fails after the memory group was made.
  for (auto& cm : lay.controllers)
    if (cm.controller == Controller::Pids) cm.base = fake + "/missing";
  EXPECT_THROW(Cgroup::create(lay, name, {.pids = 16}), Error);
  EXPECT_FALSE(exists(dir_of(layout_, Controller::Memory, name)));

  // A name already taken is an error and the existing group is left alone.
  Cgroup first = Cgroup::create(layout_, name, {});
  EXPECT_THROW(Cgroup::create(layout_, name, {}), Error);
  EXPECT_TRUE(exists(dir_of(layout_, Controller::Memory, name)));
}

TEST_F(CgroupTest, SweepRemovesOrphansOnly) {
  sweep_orphans(layout_);  // whatever a crashed earlier run left
  pid_t dead = ::fork();
  if (dead == 0) ::_exit(0);
  ASSERT_GT(dead, 0);
  ::waitpid(dead, nullptr, 0);
  std::string self_stat = slurp("/proc/self/stat");
  std::string live = make_group_name();  // this process: must stay
  uint64_t start = std::stoull(live.substr(live.find('-', 7) + 1));
  std::string of_dead = "ultari-" + std::to_string(dead) + "-" + std::to_string(start) + "-0";
  std::string stale = "ultari-" + std::to_string(::getpid()) + "-" + std::to_string(start + 1) + "-0";
  std::string odd = "ultari-" + std::to_string(::getpid()) + "-x-0";  // not ours to judge
  extra_names_.push_back(of_dead);

  Cgroup g_live = Cgroup::create(layout_, live, {});
  Cgroup g_dead = Cgroup::create(layout_, of_dead, {.pids = 16});
  Cgroup g_stale = Cgroup::create(layout_, stale, {});
  Cgroup g_odd = Cgroup::create(layout_, odd, {});
  // An orphan still holding a process: the sweep must kill it.
  Child inside([](int) {
    for (;;) ::pause();
    return 0;
  });
  g_dead.attach(inside.pid(), false);
  inside.release();

  // >= because other Ultari processes on this host may leave orphans too.
  EXPECT_GE(sweep_orphans(layout_), 2);
  EXPECT_TRUE(killed_by_sigkill(inside.wait()));
  for (Controller c : group_controllers(layout_, false)) {
    EXPECT_FALSE(exists(dir_of(layout_, c, of_dead)));
    EXPECT_FALSE(exists(dir_of(layout_, c, stale)));
    EXPECT_TRUE(exists(dir_of(layout_, c, live)));
    EXPECT_TRUE(exists(dir_of(layout_, c, odd)));
  }
  sweep_orphans(layout_);
  EXPECT_TRUE(exists(dir_of(layout_, Controller::Memory, live)));
}

TEST_F(CgroupTest, StatsReportCpuAndPids) {
  Cgroup cg = Cgroup::create(layout_, make_group_name(), {.pids = 16});
  Child burn([](int) {
    timespec t0, t;
    // CPU time, not wall time: the host may be busy with other work.
    ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t0);
    do ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    while ((t.tv_sec - t0.tv_sec) * 1000000000L + (t.tv_nsec - t0.tv_nsec) < 60000000L);
    return 0;
  });
  cg.attach(burn.pid(), false);
  cg.sample_pids();
  Stats before = cg.stats();
  burn.release();
  EXPECT_EQ(burn.wait(), 0);
  Stats s = cg.stats();
  ASSERT_TRUE(s.cpu_known);
  EXPECT_LT(before.cpu_usec, 10000u);  // negative control: nothing ran yet
  EXPECT_GE(s.cpu_usec, 40000u);
  EXPECT_LT(s.cpu_usec, 2000000u);
  EXPECT_EQ(s.peak_pids, 1u);
}

TEST(CgroupName, FormatAndUniqueness) {
  std::string a = make_group_name(), b = make_group_name();
  EXPECT_NE(a, b);
  std::string prefix = "ultari-" + std::to_string(::getpid()) + "-";
  ASSERT_EQ(a.rfind(prefix, 0), 0u) << a;
  std::string stat = slurp("/proc/self/stat");
  std::istringstream in(stat.substr(stat.rfind(')') + 2));
  std::string f;
  for (int i = 3; i <= 22; ++i) in >> f;
  EXPECT_EQ(a.substr(prefix.size(), f.size() + 1), f + "-") << a;
}

// Prints the median cost of create + attach + destroy (not an assertion).
TEST_F(CgroupTest, BenchLifecycle) {
  Child child([](int) {
    for (;;) ::pause();
    return 0;
  });
  std::string pid = std::to_string(child.pid());
  std::vector<std::string> roots;
  for (Controller c : group_controllers(layout_, false))
    if (std::find(roots.begin(), roots.end(), layout_.get(c).base) == roots.end())
      roots.push_back(layout_.get(c).base);
  using us_t = std::chrono::duration<double, std::micro>;
  std::vector<double> total, create, attach, destroy;
  for (int i = 0; i < 200; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    Cgroup cg = Cgroup::create(layout_, make_group_name(), {.memory_bytes = 64 * kMiB,
                                                           .pids = 16});
    auto t1 = std::chrono::steady_clock::now();
    cg.attach(child.pid(), false);
    auto t2 = std::chrono::steady_clock::now();
    // Moving the child out again is not part of the measured cost.
    for (const auto& r : roots) std::ofstream(r + "/cgroup.procs") << pid;
    auto t3 = std::chrono::steady_clock::now();
    cg.destroy();
    auto t4 = std::chrono::steady_clock::now();
    create.push_back(us_t(t1 - t0).count());
    attach.push_back(us_t(t2 - t1).count());
    destroy.push_back(us_t(t4 - t3).count());
    total.push_back(create.back() + attach.back() + destroy.back());
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  auto t0 = std::chrono::steady_clock::now();
  int swept = sweep_orphans(layout_);
  double sweep_us = us_t(std::chrono::steady_clock::now() - t0).count();
  std::sort(total.begin(), total.end());
  std::printf("create+attach+destroy: median %.0f us (create %.0f, attach %.0f, destroy %.0f), "
              "p90 %.0f us, max %.0f us; sweep (%d removed) %.0f us\n",
              median(total), median(create), median(attach), median(destroy),
              total[total.size() * 9 / 10], total.back(), swept, sweep_us);
}

}  // namespace
}  // namespace ultari::cgroups
