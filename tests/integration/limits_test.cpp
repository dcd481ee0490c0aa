// Limits and verdicts: each bomb runs under a limit and must end with the
// right verdict and exit status; a negative control runs the same program
// with room to succeed, proving the limit (not the program) stopped it.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <string>
#include <vector>
#include <thread>

#include "harness.h"

namespace ultari::test {
namespace {

TEST(Verdict, ExitCodesFollowTheCommand) {
  Outcome ok = sh("exit 0");
  EXPECT_EQ(ok.status, 0);
  EXPECT_EQ(ok.report["verdict"], "ok");
  Outcome three = sh("exit 3");
  EXPECT_EQ(three.status, 3);
  EXPECT_EQ(three.report["verdict"], "nonzero_exit");
  EXPECT_EQ(three.report["exit_code"], 3);
}

TEST(Verdict, KilledBySignal) {
  Outcome r = sh("kill -TERM $$");
  EXPECT_EQ(r.status, 128 + 15);
  EXPECT_EQ(r.report["verdict"], "signaled");
  EXPECT_EQ(r.report["signal"], 15);
}

TEST(Verdict, CommandNotFoundAndNotExecutable) {
  Outcome missing = ultari({"run", "--", "no-such-command-xyz"});
  EXPECT_EQ(missing.status, 127) << missing.err;
  EXPECT_NE(missing.report["error"].get<std::string>().find("command not found: no-such-command-xyz"), std::string::npos);
  Outcome noexec = ultari({"run", "--", "/etc/hostname"});
  EXPECT_EQ(noexec.status, 126) << noexec.err;
}

TEST(Limits, WallClockTimeout) {
  Outcome r = sh("sleep 30", {"--timeout", "500ms"});
  EXPECT_EQ(r.status, 124);
  EXPECT_EQ(r.report["verdict"], "timeout");
  EXPECT_LT(r.report["wall_ms"].get<int>(), 5000);
  // Negative control: the same command finishes within a longer limit.
  Outcome ok = sh("sleep 0.2", {"--timeout", "10s"});
  EXPECT_EQ(ok.report["verdict"], "ok");
}

TEST(Limits, TimeoutKillsTheWholeTree) {
  // Background children that ignore SIGTERM and try to outlive the shell.
  // The sleeps carry a marker unique to this test process.
  std::string tag = "." + std::to_string(getpid()) + "1";
  Outcome r = sh("trap '' TERM; (sleep 60" + tag + " &) ; (setsid sleep 61" + tag + " &); sleep 62" + tag,
                 {"--timeout", "700ms"});
  EXPECT_EQ(r.report["verdict"], "timeout");
  EXPECT_EQ(processes_matching("sleep 60" + tag), 0);
  EXPECT_EQ(processes_matching("sleep 61" + tag), 0);
  EXPECT_EQ(processes_matching("sleep 62" + tag), 0);
}

TEST(Limits, CpuTime) {
  Outcome r = sh("while :; do :; done", {"--cpu-time", "1s", "--timeout", "20s"});
  EXPECT_EQ(r.report["verdict"], "cpu_time") << r.report.dump();
  EXPECT_EQ(r.status, 124);
  EXPECT_GE(r.report["cpu_ms"].get<int>(), 900);
  EXPECT_LT(r.report["cpu_ms"].get<int>(), 3000);
}

TEST(Limits, MemoryBombIsOomKilled) {
  std::string bomb = "python3 -c 'b=[]\nwhile True: b.append(bytearray(16<<20))'";
  Outcome r = sh(bomb, {"--memory", "64M", "--timeout", "30s"});
  EXPECT_EQ(r.report["verdict"], "oom") << r.report.dump() << r.err;
  EXPECT_EQ(r.status, 137);
  EXPECT_LE(r.report["peak_memory_bytes"].get<uint64_t>(), 64ull << 20);
  // Negative control: 48 MiB fit in 256M.
  Outcome ok = sh("python3 -c 'b=bytearray(48<<20); print(len(b))'", {"--memory", "256M"});
  EXPECT_EQ(ok.report["verdict"], "ok") << ok.err;
  EXPECT_GT(ok.report["peak_memory_bytes"].get<uint64_t>(), 48ull << 20);
}

// TCP socket buffers are kernel memory the v1 memory controller charges
// only once memory.kmem.tcp.limit_in_bytes is set: a sandbox limited to
// 64 MiB queued 2.2 GiB of the host's memory in loopback connections nobody
// reads (fifth core review). Control: with a larger limit the same probe
// queues more than the small one allows, so the limit is what stops it.
const char* const kTcpFill = R"PY(
import socket
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1000)
port = srv.getsockname()[1]
total = 0; keep = []
for i in range(300):
    c = socket.socket(); c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    c.connect(("127.0.0.1", port)); a, _ = srv.accept()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    c.setblocking(False); keep += [c, a]
    while True:
        try: total += c.send(b"x" * 65536)
        except OSError: break
print(total >> 20)
)PY";

TEST(Limits, TcpBuffersCountAgainstTheMemoryLimit) {
  Outcome small = ultari({"run", "--memory", "64M", "--timeout", "60s", "--", "python3", "-c", kTcpFill});
  ASSERT_EQ(small.status, 0) << small.err;
  EXPECT_LE(std::stol(small.out), 64) << "MiB queued in TCP buffers under --memory 64M";
  Outcome large = ultari({"run", "--memory", "256M", "--timeout", "60s", "--", "python3", "-c", kTcpFill});
  ASSERT_EQ(large.status, 0) << large.err;
  EXPECT_GT(std::stol(large.out), 64) << "MiB queued under --memory 256M";
}

TEST(Limits, ForkBombIsContained) {
  // The classic bomb, bounded by the pids limit and a timeout.
  Outcome r = sh("bomb() { bomb | bomb & }; bomb; sleep 2; exit 0", {"--pids", "64", "--timeout", "5s"});
  EXPECT_LE(r.report["peak_pids"].get<int>(), 64) << r.report.dump();
  EXPECT_NE(r.report["verdict"], "setup_error");
}

TEST(Limits, PidsLimitCountsEveryProcess) {
  std::string spawn = "python3 -c '\nimport subprocess\nps=[]\ntry:\n  for i in range(100): ps.append(subprocess.Popen([\"sleep\",\"5\"]))\n"
                      "except OSError as e: pass\nprint(len(ps))\nfor p in ps: p.kill()\n'";
  Outcome limited = sh(spawn, {"--pids", "20"});
  int n = std::stoi(limited.out.empty() ? "0" : limited.out);
  EXPECT_LT(n, 20) << limited.out << limited.err;
  // Negative control: with room, all 100 start.
  Outcome roomy = sh(spawn, {"--pids", "200"});
  EXPECT_EQ(roomy.out, "100\n") << roomy.err;
}

TEST(Limits, OutputLimit) {
  Outcome r = sh("yes", {"--output-limit", "1000", "--timeout", "10s"});
  EXPECT_EQ(r.status, 137);
  EXPECT_EQ(r.report["verdict"], "output_limit");
  EXPECT_EQ(r.report["truncated"], true);
  EXPECT_EQ(r.out.size(), 1000u);
  EXPECT_EQ(r.report["stdout_bytes"].get<int>() + r.report["stderr_bytes"].get<int>(), 1000);
  // stdout and stderr count together.
  Outcome both = sh("head -c 600 /dev/zero; head -c 600 /dev/zero >&2", {"--output-limit", "1000"});
  EXPECT_EQ(both.report["verdict"], "output_limit");
  EXPECT_EQ(both.out.size() + both.err.size(), 1000u);
  // Negative control: under the limit nothing is cut.
  Outcome ok = sh("head -c 999 /dev/zero", {"--output-limit", "1000"});
  EXPECT_EQ(ok.report["verdict"], "ok");
  EXPECT_EQ(ok.report["truncated"], false);
  EXPECT_EQ(ok.out.size(), 999u);
}

TEST(Limits, DiskFillOfTmpStopsAtTmpSize) {
  Outcome r = sh("dd if=/dev/zero of=/tmp/fill bs=1M count=64 2>&1 | grep -o 'No space left on device'; "
                 "df -k /tmp | tail -1 | awk '{print $2}'",
             {"--tmp-size", "16M", "--memory", "512M"});
  EXPECT_EQ(r.out, "No space left on device\n16384\n") << r.out << r.err;
  // Negative control: 8 MiB fit.
  Outcome ok = sh("dd if=/dev/zero of=/tmp/fill bs=1M count=8 2>/dev/null && echo fits", {"--tmp-size", "16M"});
  EXPECT_EQ(ok.out, "fits\n");
}

TEST(Limits, NofileAndCpus) {
  EXPECT_EQ(sh("ulimit -n", {"--nofile", "64"}).out, "64\n");
  Outcome r = sh("true", {"--cpus", "0.5"});
  EXPECT_EQ(r.report["verdict"], "ok") << r.err;
}

TEST(Report, HasEveryField) {
  Outcome r = sh("echo hi");
  for (const char* k : {"verdict", "exit_code", "signal", "wall_ms", "cpu_ms", "peak_memory_bytes", "peak_pids",
                        "stdout_bytes", "stderr_bytes", "truncated", "denied_syscalls", "error"})
    EXPECT_TRUE(r.report.contains(k)) << k;
  EXPECT_GT(r.report["peak_memory_bytes"].get<uint64_t>(), 0u);
  EXPECT_GE(r.report["peak_pids"].get<int>(), 1);
}

// SIGTERM to `ultari` reaches the command through init; a command that
// handles it decides its own exit.
TEST(Signals, TermIsForwardedToTheCommand) {
  std::string report = "/tmp/ultari-test-sig-" + std::to_string(getpid()) + ".json";
  pid_t pid = spawn_ultari({"run", "--report", report, "--", "/bin/sh", "-c",
                            "trap 'echo got-term >&2; exit 7' TERM; sleep 30 & wait"});
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the trap is set
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 7);
  auto r = nlohmann::json::parse(read_file(report));
  EXPECT_EQ(r["verdict"], "nonzero_exit");
  unlink(report.c_str());
  // Negative control: without a trap the command dies of the signal.
  pid = spawn_ultari({"run", "--", "/bin/sleep", "30"});
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  kill(pid, SIGTERM);
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 128 + SIGTERM);
}

// A caller that stops reading must not stall the supervisor: the timeout
// still fires while the output pipe is full.
TEST(Limits, TimeoutHoldsWhileTheReaderStalls) {
  std::string report = "/tmp/ultari-test-stall-" + std::to_string(getpid()) + ".json";
  int out[2];
  ASSERT_EQ(pipe2(out, O_CLOEXEC), 0);
  pid_t pid = spawn_ultari({"run", "--report", report, "--timeout", "1s", "--", "yes"}, out[1]);
  close(out[1]);
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));  // nobody reads
  char buf[65536];
  while (read(out[0], buf, sizeof buf) > 0) {
  }
  close(out[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 124);
  auto r = nlohmann::json::parse(read_file(report));
  EXPECT_EQ(r["verdict"], "timeout");
  EXPECT_LT(r["wall_ms"].get<int>(), 2000);
  unlink(report.c_str());
}

// The kernel charges per-user quotas (inotify instances, POSIX message
// queue bytes; processes and pending signals alike) to a user namespace's
// owner, at every level above it. A sandbox that takes all it may must
// leave the next sandbox, and host root, their own.
std::string probe_bind() { return helpers_dir() + "/quota_probe:/quota_probe"; }

// "KIND N errno E" -> N (-1 when absent).
int probe_count(const std::string& out, const std::string& kind) {
  auto at = out.find(kind + " ");
  return at == std::string::npos ? -1 : std::atoi(out.c_str() + at + kind.size() + 1);
}

// The probe itself (its supervisor's command line holds the tag too).
pid_t probe_pid(const std::string& tag) {
  for (pid_t pid : pids_matching(tag))
    if (read_file("/proc/" + std::to_string(pid) + "/comm") == "quota_probe\n") return pid;
  return 0;
}

uint32_t namespace_owner_of(const std::string& tag) {
  pid_t pid = probe_pid(tag);
  if (pid <= 0) return 0;
  Outcome o = host(helpers_dir() + "/quota_probe owner " + std::to_string(pid));
  auto at = o.out.find("owner ");
  return at == std::string::npos ? 0 : static_cast<uint32_t>(std::strtoul(o.out.c_str() + at + 6, nullptr, 10));
}

TEST(Limits, SandboxesHaveTheirOwnKernelQuotas) {
  if (geteuid() != 0) GTEST_SKIP() << "rootful sandboxes only (rootless ones are all the caller's)";
  int inotify_limit = std::atoi(read_file("/proc/sys/fs/inotify/max_user_instances").c_str());
  if (inotify_limit <= 0 || inotify_limit > 900) GTEST_SKIP() << "fs.inotify.max_user_instances is " << inotify_limit;
  TempDir dir;
  for (std::string kind : {"inotify", "mqueue"}) {
    SCOPED_TRACE(kind);
    std::string tag = "quota-hold-" + kind + "-" + std::to_string(getpid());
    std::vector<pid_t> holders;
    std::vector<std::string> logs;
    for (const char* which : {"A", "B"}) {
      logs.push_back(dir / (kind + which + ".log"));
      int fd = open(logs.back().c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      ASSERT_GE(fd, 0);
      holders.push_back(spawn_ultari({"run", "--quiet", "--timeout", "60s", "--ro-bind", probe_bind(), "--",
                                      "/quota_probe", kind, "hold", tag + which},
                                     fd));
      close(fd);
      // The first holds all its quota before the second starts.
      ASSERT_TRUE(wait_for_text(logs.back(), holders.back(), kind + " ")) << read_file(logs.back());
    }
    // Each got the whole quota: the first did not take the second's.
    int a_count = probe_count(read_file(logs[0]), kind), b_count = probe_count(read_file(logs[1]), kind);
    EXPECT_GT(a_count, 0) << read_file(logs[0]);
    EXPECT_EQ(b_count, a_count) << read_file(logs[1]);
    if (kind == "inotify") {
      EXPECT_EQ(a_count, inotify_limit);
      // Host root keeps its own.
      Outcome root = host(helpers_dir() + "/quota_probe inotify");
      EXPECT_EQ(probe_count(root.out, kind), inotify_limit) << root.out;
    }
    // Two owners, neither root nor the sandboxes' own root uid.
    uint32_t a = namespace_owner_of(tag + "A"), b = namespace_owner_of(tag + "B");
    EXPECT_NE(a, 0u);
    EXPECT_NE(b, 0u);
    EXPECT_NE(a, b);
    Outcome uid_a = host("awk '/^Uid:/ {print $3}' /proc/" + std::to_string(probe_pid(tag + "A")) + "/status");
    EXPECT_NE(uid_a.out, "");
    EXPECT_NE(std::to_string(a) + "\n", uid_a.out);
    for (pid_t pid : holders) {
      kill(pid, SIGTERM);
      waitpid(pid, nullptr, 0);
    }
    // Negative control: two processes under one owner (the same sandbox)
    // share the quota, and the probe sees the second one get nothing.
    Outcome shared = sh("/quota_probe " + kind + " hold " + tag + "C > /tmp/first & while ! grep -q " + kind +
                            " /tmp/first; do sleep 0.05; done; /quota_probe " + kind + "; kill $!",
                        {"--ro-bind", probe_bind()});
    EXPECT_EQ(probe_count(shared.out, kind), 0) << shared.out << shared.err;
  }
}
}  // namespace
}  // namespace ultari::test
