// The warm pool: `ultari pool` makes sandboxes ahead, `ultari run --pool`
// takes one. Each promise of a cold run must hold for a warm one (fresh,
// isolated, verdicts, denials), a request the pool cannot serve falls back
// to a cold start, only the pool's own user may take its sandboxes, and
// nothing is left when a client or the pool goes away.
#include <dirent.h>
#include <pwd.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <set>
#include <thread>

#include "harness.h"

namespace ultari::test {
namespace {

using namespace std::chrono_literals;


// `ultari pool` in the background for one test; SIGTERM when it goes.
class PoolProcess {
 public:
  explicit PoolProcess(const std::string& socket, std::vector<std::string> flags = {}, int size = 2) : socket_(socket) {
    std::vector<std::string> args = {"pool", "--socket", socket, "--size", std::to_string(size)};
    args.insert(args.end(), flags.begin(), flags.end());
    pid_ = spawn_ultari(args);
    auto deadline = std::chrono::steady_clock::now() + 20s;
    while (!exists(socket) && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(5ms);
    wait_ready(size);
  }
  ~PoolProcess() { stop(SIGTERM); }
  // Until `n` sandboxes are made (their groups exist) and had time to set up.
  void wait_ready(int n) const {
    auto deadline = std::chrono::steady_clock::now() + 20s;
    while (groups_of(pid_) < n && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(5ms);
    std::this_thread::sleep_for(100ms);
  }
  // Signals the pool and returns its exit status.
  int stop(int sig) {
    if (pid_ <= 0) return -1;
    kill(pid_, sig);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  pid_t pid() const { return pid_; }
  const std::string& socket() const { return socket_; }

 private:
  std::string socket_;
  pid_t pid_ = -1;
};

std::vector<std::string> run_in(const PoolProcess& pool, std::vector<std::string> flags, std::vector<std::string> cmd) {
  std::vector<std::string> args = {"run", "--pool", pool.socket()};
  args.insert(args.end(), flags.begin(), flags.end());
  args.push_back("--");
  args.insert(args.end(), cmd.begin(), cmd.end());
  return args;
}

TEST(Pool, RunsTheCommandInASandboxMadeAhead) {
  TempDir dir;
  PoolProcess pool(dir / "pool.sock");
  Outcome r = ultari(run_in(pool, {}, {"/bin/sh", "-c",
                                       "echo out; echo err >&2; hostname; id -u; pwd; "
                                       "grep -E '^(NoNewPrivs|CapEff|CapBnd)' /proc/self/status; exit 3"}));
  EXPECT_EQ(r.status, 3) << r.err;
  EXPECT_EQ(r.out,
            "out\nsandbox\n0\n/root\nCapEff:\t0000000000000000\nCapBnd:\t0000000000000000\nNoNewPrivs:\t1\n");
  EXPECT_EQ(r.err, "err\n");
  EXPECT_EQ(r.report["warm"], true) << r.report.dump();
  EXPECT_EQ(r.report["verdict"], "nonzero_exit");
  EXPECT_EQ(r.report["stdout_bytes"], r.out.size());
  // Negative control: without --pool the same run is cold.
  Outcome cold = ultari({"run", "--", "/bin/true"});
  EXPECT_EQ(cold.report["warm"], false);
}

TEST(Pool, StdinReachesTheCommandAndEnds) {
  TempDir dir;
  PoolProcess pool(dir / "pool.sock", {}, 3);
  // With several sandboxes made by one process, none may hold another's
  // stdin pipe (cat would never see EOF).
  Options o;
  o.stdin_data = "line one\nline two\n";
  o.timeout_s = 10;
  Outcome r = ultari(run_in(pool, {}, {"/bin/sh", "-c", "cat; echo done"}), o);
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "line one\nline two\ndone\n");
  EXPECT_EQ(r.report["warm"], true);
}

TEST(Pool, EverySandboxIsFreshAndUsedOnce) {
  TempDir dir;
  PoolProcess pool(dir / "pool.sock");
  Outcome first = ultari(run_in(pool, {}, {"/bin/sh", "-c",
                                           "touch /tmp/mark /root/mark /etc/mark && echo $$ && sleep 60 &"
                                           " sleep 0.2; ls /tmp"}));
  ASSERT_EQ(first.status, 0) << first.err;
  EXPECT_EQ(first.report["warm"], true);
  Outcome second = ultari(run_in(pool, {}, {"/bin/sh", "-c",
                                            "ls /tmp /root; test -e /etc/mark && echo leaked; "
                                            "ps -e -o comm= 2>/dev/null | grep -c sleep || true"}));
  EXPECT_EQ(second.status, 0) << second.err;
  EXPECT_EQ(second.report["warm"], true);
  EXPECT_EQ(second.out.find("mark"), std::string::npos) << second.out;
  EXPECT_EQ(second.out.find("leaked"), std::string::npos) << second.out;
  EXPECT_NE(first.report["sandbox_id"], second.report["sandbox_id"]);
  // The first sandbox's background sleep died with it.
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(processes_matching("sleep 60"), 0);
}

TEST(Pool, VerdictsAndLimitsHoldForWarmRuns) {
  TempDir dir;
  PoolProcess pool(dir / "pool.sock", {}, 3);
  Outcome t = ultari(run_in(pool, {"--timeout", "300ms"}, {"/bin/sleep", "10"}));
  EXPECT_EQ(t.status, 124);
  EXPECT_EQ(t.report["verdict"], "timeout");
  EXPECT_EQ(t.report["warm"], true);
  EXPECT_LT(t.report["wall_ms"].get<int>(), 3000);

  Outcome o = ultari(run_in(pool, {"--output-limit", "1k"}, {"/bin/sh", "-c", "yes"}));
  EXPECT_EQ(o.status, 137);
  EXPECT_EQ(o.report["verdict"], "output_limit");
  EXPECT_EQ(o.report["stdout_bytes"], 1024);
  EXPECT_EQ(o.report["warm"], true);

  pool.wait_ready(3);
  Outcome n = ultari(run_in(pool, {}, {"no-such-command"}));
  EXPECT_EQ(n.status, 127);
  EXPECT_EQ(n.report["warm"], true);
  EXPECT_NE(n.err.find("command not found: no-such-command"), std::string::npos) << n.err;
}

TEST(Pool, DeniedSyscallsAreCountedForWarmRuns) {
  TempDir dir;
  PoolProcess pool(dir / "pool.sock");
  std::string script = std::string(kPySyscall) + "sc('unshare', 272, 0x20000)\nsc('unshare', 272, 0x20000)\n";
  Outcome r = ultari(run_in(pool, {}, {"python3", "-c", script}));
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.report["warm"], true);
  EXPECT_EQ(r.out, "unshare 1\nunshare 1\n");  // EPERM, answered by the client's supervisor
  ASSERT_EQ(r.report["denied_syscalls"].size(), 1u) << r.report.dump();
  EXPECT_EQ(r.report["denied_syscalls"][0]["name"], "unshare");
  EXPECT_EQ(r.report["denied_syscalls"][0]["count"], 2);
}

TEST(Pool, ARequestThePoolCannotServeStartsCold) {
  TempDir dir;
  PoolProcess pool(dir / "pool.sock");
  Outcome other = ultari(run_in(pool, {"--memory", "256M", "--hostname", "x"}, {"/bin/sh", "-c", "hostname"}));
  EXPECT_EQ(other.status, 0) << other.err;
  EXPECT_EQ(other.out, "x\n");
  EXPECT_EQ(other.report["warm"], false);
  EXPECT_NE(other.err.find("not used: its sandboxes differ in hostname"), std::string::npos) << other.err;
  // Per-request settings (env, cwd, timeout) do not make a request differ.
  Outcome same = ultari(run_in(pool, {"--env", "A=1", "--cwd", "/tmp", "--timeout", "5s"},
                               {"/bin/sh", "-c", "echo $A; pwd"}));
  EXPECT_EQ(same.out, "1\n/tmp\n");
  EXPECT_EQ(same.report["warm"], true) << same.err;

  Outcome gone = ultari({"run", "--pool", dir / "missing.sock", "--", "/bin/true"});
  EXPECT_EQ(gone.status, 0);
  EXPECT_EQ(gone.report["warm"], false);
  EXPECT_NE(gone.err.find("cannot connect to " + (dir / "missing.sock")), std::string::npos) << gone.err;
}

TEST(Pool, AWorkspaceIsCompared) {
  TempDir dir, ws, other;
  write_file(ws / "file", "from the workspace\n");
  PoolProcess pool(dir / "pool.sock", {"--workspace", ws.path()});
  Outcome r = ultari(run_in(pool, {"--workspace", ws.path()}, {"/bin/cat", "file"}));
  EXPECT_EQ(r.out, "from the workspace\n") << r.err;
  EXPECT_EQ(r.report["warm"], true);
  // Another workspace must never be served by these sandboxes.
  write_file(other / "file", "other\n");
  Outcome o = ultari(run_in(pool, {"--workspace", other.path()}, {"/bin/cat", "file"}));
  EXPECT_EQ(o.out, "other\n");
  EXPECT_EQ(o.report["warm"], false);
}

TEST(Pool, OnlyThePoolsUserMayTakeItsSandboxes) {
  TempDir dir;
  PoolProcess pool(dir / "pool.sock");
  struct stat st{};
  ASSERT_EQ(stat(pool.socket().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  Options user = rootless_options();
  Outcome denied = ultari(run_in(pool, {}, {"/bin/true"}), user);
  EXPECT_EQ(denied.status, 0) << denied.err;
  EXPECT_EQ(denied.report["warm"], false);
  EXPECT_NE(denied.err.find("Permission denied"), std::string::npos) << denied.err;
  // With the file mode opened up, the client itself refuses a pool of
  // another user (it would name processes and groups for it to kill) ...
  ASSERT_EQ(chmod(pool.socket().c_str(), 0666), 0);
  Outcome refused = ultari(run_in(pool, {}, {"/bin/true"}), user);
  EXPECT_EQ(refused.report["warm"], false);
  EXPECT_NE(refused.err.find("not a pool of this user: the peer runs as uid 0"), std::string::npos) << refused.err;
  // ... and the pool refuses another user's request (SO_PEERCRED), here
  // from a raw client that does not check.
  TempDir scripts;
  write_file(scripts / "ask.py",
             "import socket, sys\n"
             "s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); s.connect(sys.argv[1])\n"
             "s.send(b'{\"spec\": {}}'); print(s.recv(65536)[4:].decode())\n");
  const passwd* pw = getpwnam(kRootlessUser);
  ASSERT_NE(pw, nullptr);
  std::string cmd = "setpriv --reuid=" + std::to_string(pw->pw_uid) + " --regid=" + std::to_string(pw->pw_gid) +
                    " --clear-groups /usr/bin/python3 " + (scripts / "ask.py") + " " + pool.socket() + " > " +
                    (scripts / "answer");
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  EXPECT_NE(read_file(scripts / "answer").find("the pool serves only its own user"), std::string::npos)
      << read_file(scripts / "answer");
  // Negative control: the pool's own user is served through the same socket.
  Outcome own = ultari(run_in(pool, {}, {"/bin/true"}));
  EXPECT_EQ(own.report["warm"], true) << own.err;
}

TEST(Pool, AKilledClientsSandboxIsDestroyed) {
  TempDir dir;
  PoolProcess pool(dir / "pool.sock");
  // (The client's own command line must not match "sleep 77".)
  pid_t client = spawn_ultari(run_in(pool, {}, {"/bin/sh", "-c", "S=7; exec sleep 7$S"}));
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (processes_matching("sleep 77") == 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(10ms);
  ASSERT_EQ(processes_matching("sleep 77"), 1);
  kill(client, SIGKILL);
  waitpid(client, nullptr, 0);
  deadline = std::chrono::steady_clock::now() + 10s;
  while (processes_matching("sleep 77") > 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(10ms);
  EXPECT_EQ(processes_matching("sleep 77"), 0);
  // Its cgroup is gone too: the pool is back to the sandboxes it keeps ready.
  pool.wait_ready(2);
  EXPECT_EQ(groups_of(pool.pid()), 2);
}

TEST(Pool, StoppingThePoolLeavesNothing) {
  TempDir dir;
  auto pool = std::make_unique<PoolProcess>(dir / "pool.sock", std::vector<std::string>{}, 3);
  pid_t pool_pid = pool->pid();
  int out[2];
  ASSERT_EQ(pipe(out), 0);
  pid_t client = spawn_ultari(run_in(*pool, {}, {"/bin/sh", "-c", "echo started; S=8; exec sleep 7$S"}), out[1]);
  close(out[1]);
  char buf[16] = {};
  ASSERT_GT(read(out[0], buf, sizeof buf), 0);
  close(out[0]);
  EXPECT_EQ(pool->stop(SIGTERM), 0);
  int status = 0;
  waitpid(client, &status, 0);
  // The running command was killed with its sandbox, and the client says so.
  EXPECT_EQ(WEXITSTATUS(status), 137);
  EXPECT_FALSE(exists(dir / "pool.sock"));
  EXPECT_EQ(groups_of(pool_pid), 0);
  EXPECT_EQ(processes_matching("sleep 78"), 0);
}

TEST(Pool, BadPoolInputFailsCleanly) {
  TempDir dir;
  Outcome no_root = ultari({"pool", "--socket", dir / "a.sock", "--rootfs", dir / "missing"});
  EXPECT_EQ(no_root.status, 125);
  EXPECT_NE(no_root.err.find(dir / "missing"), std::string::npos) << no_root.err;
  EXPECT_FALSE(exists(dir / "a.sock"));

  Outcome size = ultari({"pool", "--socket", dir / "a.sock", "--size", "0"});
  EXPECT_EQ(size.status, 125);
  EXPECT_NE(size.err.find("--size"), std::string::npos) << size.err;

  write_file(dir / "file", "not a socket");
  Outcome file = ultari({"pool", "--socket", dir / "file"});
  EXPECT_EQ(file.status, 125);
  EXPECT_NE(file.err.find("exists and is not a socket"), std::string::npos) << file.err;
  EXPECT_EQ(read_file(dir / "file"), "not a socket");

  Outcome cmd = ultari({"pool", "--socket", dir / "a.sock", "--", "/bin/true"});
  EXPECT_EQ(cmd.status, 125);

  PoolProcess pool(dir / "b.sock");
  Outcome twice = ultari({"pool", "--socket", dir / "b.sock"});
  EXPECT_EQ(twice.status, 125);
  EXPECT_NE(twice.err.find("another pool is serving"), std::string::npos) << twice.err;
  // The first pool still serves.
  Outcome r = ultari(run_in(pool, {}, {"/bin/true"}));
  EXPECT_EQ(r.report["warm"], true) << r.err;
}

}  // namespace
}  // namespace ultari::test
