// Nothing left behind: counts processes, cgroups and mounts after thousands
// of runs, after bad input, and after ultari itself is SIGKILLed at random
// moments. These tests run alone (RUN_SERIAL) so other tests' sandboxes are
// not counted.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <random>
#include <thread>
#include <vector>

#include "../integration/harness.h"

namespace ultari::test {
namespace {

Leftovers settle() {
  // Killed sandboxes die asynchronously; give the kernel a moment.
  Leftovers l;
  for (int i = 0; i < 50; ++i) {
    l = leftovers();
    if (l.processes == 0 && l.cgroups == 0 && l.mounts == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return l;
}

// Starts `ultari ARGS` `times` times, each SIGKILLed after a random delay
// of up to max_delay_us; how many kills hit a running supervisor.
int kill_at_random_moments(const std::vector<const char*>& args, int times, int max_delay_us, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> delay_us(0, max_delay_us);
  std::vector<char*> argv = {const_cast<char*>("ultari")};
  for (const char* a : args) argv.push_back(const_cast<char*>(a));
  argv.push_back(nullptr);
  int killed_running = 0;
  for (int i = 0; i < times; ++i) {
    pid_t pid = fork();
    if (pid == 0) {
      int devnull = open("/dev/null", O_WRONLY);
      dup2(devnull, 1);
      dup2(devnull, 2);
      execv(ULTARI_BIN, argv.data());
      _exit(127);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(delay_us(rng)));
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
    if (WIFSIGNALED(status)) ++killed_running;
  }
  return killed_running;
}

TEST(Cleanup, NothingLeftAfterManyRuns) {
  ultari({"run", "--", "/bin/true"});  // sweeps what earlier killed supervisors left
  ASSERT_EQ(settle().cgroups, 0) << "leftovers before the test: " << leftovers().describe();
  for (int i = 0; i < 1000; ++i) {
    Outcome r = ultari({"run", "--report", "/dev/null", "--", "/bin/true"});
    ASSERT_EQ(r.status, 0) << "run " << i << ": " << r.err;
  }
  Leftovers l = leftovers();
  EXPECT_EQ(l.processes, 0) << l.describe();
  EXPECT_EQ(l.cgroups, 0) << l.describe();
  EXPECT_EQ(l.mounts, 0) << l.describe();
}

TEST(Cleanup, NothingLeftAfterKillsAndTimeouts) {
  for (const char* script : {"sleep 30 & sleep 30 & wait", "bomb() { bomb | bomb & }; bomb; sleep 5"}) {
    Outcome r = sh(script, {"--timeout", "300ms", "--pids", "64"});
    EXPECT_EQ(r.status, 124) << script << r.err;
  }
  Leftovers l = settle();
  EXPECT_EQ(l.processes, 0) << l.describe();
  EXPECT_EQ(l.cgroups, 0) << l.describe();
}

// After supervisors were SIGKILLed: no process or mount survives them, and
// the next start sweeps their groups. What was left before that sweep.
Leftovers expect_swept_by_next_start() {
  Leftovers before_sweep = settle();
  EXPECT_EQ(before_sweep.processes, 0) << before_sweep.describe();
  EXPECT_EQ(before_sweep.mounts, 0) << before_sweep.describe();
  Outcome r = ultari({"run", "--", "/bin/true"});
  EXPECT_EQ(r.status, 0) << r.err;
  Leftovers l = settle();
  EXPECT_EQ(l.processes, 0) << l.describe();
  EXPECT_EQ(l.cgroups, 0) << l.describe();
  EXPECT_EQ(l.mounts, 0) << l.describe();
  return before_sweep;
}

TEST(Cleanup, SigkillOfUltariAtRandomMomentsLeavesNothing) {
  int killed_running = kill_at_random_moments({"run", "--", "/bin/sh", "-c", "sleep 30 & sleep 30"}, 40, 30000, 12345);
  EXPECT_GT(killed_running, 30);  // the kills really hit running supervisors
  // Processes die with their supervisor (PDEATHSIG + pid namespace); the
  // cgroups of a killed supervisor are swept by the next start.
  expect_swept_by_next_start();
}

// With --net the supervisor also has a gateway process (in a cgroup of its
// own, rootful) and a short-lived helper that sets up the namespace: killed
// at any moment, none of them survives and the next start sweeps the groups.
TEST(Cleanup, SigkillOfANetworkedSandboxAtRandomMomentsLeavesNothing) {
  int killed_running = kill_at_random_moments({"run", "--net", "open", "--", "/bin/sh", "-c", "sleep 30"}, 30, 80000, 54321);
  EXPECT_GT(killed_running, 20);
  Leftovers before_sweep = expect_swept_by_next_start();
  // Control: the kills did leave groups (the sandbox's and the gateway's)
  // for the next start to sweep.
  EXPECT_GT(before_sweep.cgroups, 0) << before_sweep.describe();
}

TEST(Cleanup, HalfBuiltSkeletonOfADeadBuilderIsRemoved) {
  // A builder killed mid-way leaves hostroot-<fp>.tmp-<pid>; no pid can be
  // above PID_MAX_LIMIT (2^22), so this one is certainly dead.
  std::string stale = "/var/cache/ultari/hostroot-0123456789abcdef.tmp-99999999";
  ASSERT_EQ(std::system(("mkdir -p " + stale + "/etc").c_str()), 0);
  std::string live = "/var/cache/ultari/hostroot-0123456789abcdef.tmp-" + std::to_string(getpid());
  ASSERT_EQ(std::system(("mkdir -p " + live).c_str()), 0);  // negative control: a live builder's
  Outcome r = ultari({"run", "--", "/bin/true"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_FALSE(exists(stale));
  EXPECT_TRUE(exists(live));
  rmdir(live.c_str());
}

TEST(Cleanup, BadInputLeavesNothing) {
  TempDir dir;
  write_file(dir / "bad.json", "{not json");
  const std::vector<std::vector<std::string>> cases = {
      {"run", "--rootfs", "/nonexistent-root", "--", "true"},
      {"run", "--bind", "/nonexistent-src:/x", "--", "true"},
      {"run", "--seccomp-profile", dir / "bad.json", "--", "true"},
      {"run", "--memory", "lots", "--", "true"},
      {"run", "--workspace", "/nonexistent-ws", "--", "true"},
  };
  for (const auto& args : cases) {
    Outcome r = ultari(args);
    EXPECT_EQ(r.status, 125) << args[1] << ": " << r.err;
  }
  Leftovers l = settle();
  EXPECT_EQ(l.processes, 0) << l.describe();
  EXPECT_EQ(l.cgroups, 0) << l.describe();
  EXPECT_EQ(l.mounts, 0) << l.describe();
}

// A pool SIGKILLed while it holds ready sandboxes and serves requests: its
// sandboxes die with it (PDEATHSIG), its clients report the kill, and the
// next start (cold run or a new pool on the same socket) removes its
// cgroups and the stale socket.
TEST(Cleanup, SigkillOfAPoolLeavesNothingAfterTheNextStart) {
  TempDir dir;
  std::string sock = dir / "pool.sock";
  std::mt19937 rng(777);
  std::uniform_int_distribution<int> delay_us(0, 20000);
  for (int round = 0; round < 5; ++round) {
    pid_t pool = spawn_ultari({"pool", "--socket", sock, "--size", "3"});
    for (int i = 0; i < 200 && !exists(sock); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    ASSERT_TRUE(exists(sock));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    Outcome ok = ultari({"run", "--pool", sock, "--", "/bin/true"});
    EXPECT_EQ(ok.status, 0) << ok.err;
    pid_t client = spawn_ultari({"run", "--pool", sock, "--timeout", "2s", "--", "/bin/sleep", "30"});
    std::this_thread::sleep_for(std::chrono::microseconds(delay_us(rng)));
    kill(pool, SIGKILL);
    waitpid(pool, nullptr, 0);
    int status = 0;
    waitpid(client, &status, 0);
    // Served warm and killed with the pool (137), or started cold because
    // the pool was gone first (then its timeout ends it: 124).
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_TRUE(WEXITSTATUS(status) == 137 || WEXITSTATUS(status) == 124) << WEXITSTATUS(status);
  }
  // The stale socket is replaced and the dead pools' groups are swept.
  pid_t pool = spawn_ultari({"pool", "--socket", sock, "--size", "1"});
  for (int i = 0; i < 200; ++i) {
    Outcome r = ultari({"run", "--pool", sock, "--", "/bin/true"});
    if (r.report["warm"] == true) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  kill(pool, SIGTERM);
  int status = 0;
  waitpid(pool, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_FALSE(exists(sock));
  Leftovers l = settle();
  EXPECT_EQ(l.processes, 0) << l.describe();
  EXPECT_EQ(l.cgroups, 0) << l.describe();
  EXPECT_EQ(l.mounts, 0) << l.describe();
}

}  // namespace
}  // namespace ultari::test
