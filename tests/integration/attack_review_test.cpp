// Independent attack review: untrusted code inside `ultari run` tries to
// break out or hurt the host. Each test runs the attack in a real sandbox
// and asserts that it fails; where cheap, a negative control shows that the
// probe can tell (the host itself, or an allow-all seccomp profile).
//
// Tests marked VULNERABILITY / WEAKNESS in their comment fail on the code as
// reviewed: the attack works. They describe what a fix must achieve.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <termios.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <map>
#include <sstream>
#include <thread>

#include <cstdlib>

#include "harness.h"

namespace ultari::test {
namespace {

// Opens init's magic links and memory, and tries to reach it with the
// cross-process syscalls. Prints "name errno" (0 = it worked).
const std::string kInitProbe = std::string(kPySyscall) + R"PY(
def op(name, path, flags=os.O_RDONLY):
    try:
        os.close(os.open(path, flags)); print(name, 0)
    except OSError as e:
        print(name, e.errno)
op("root", "/proc/1/root/.")
op("cwd", "/proc/1/cwd/.")
op("exe", "/proc/1/exe")
op("fd3", "/proc/1/fd/3")
op("fddir", "/proc/1/fd/.")
op("mem", "/proc/1/mem")
op("memw", "/proc/1/mem", os.O_RDWR)
op("environ", "/proc/1/environ")
op("ns_mnt", "/proc/1/ns/mnt")
op("ns_user", "/proc/1/ns/user")
op("map_files", "/proc/1/map_files/.")
op("self_mem", "/proc/self/mem")
op("self_ns_mnt", "/proc/self/ns/mnt")
sc("ptrace_seize", 101, 0x4206, 1, 0, 0)
sc("ptrace_attach", 101, 16, 1, 0, 0)
buf = ctypes.create_string_buffer(8)
iov = (ctypes.c_long * 2)(ctypes.addressof(buf), 8)
riov = (ctypes.c_long * 2)(0x400000, 8)
sc("process_vm_readv", 310, 1, ctypes.addressof(iov), 1, ctypes.addressof(riov), 1, 0)
sc("pidfd_getfd", 438, os.pidfd_open(1), 3, 0)
sc("kcmp", 312, 1, os.getpid(), 0, 0, 0)
)PY";

TEST(AttackReview, InitIsUnreachableThroughProcAndCrossProcessCalls) {
  TempDir dir;
  for (bool filtered : {true, false}) {
    // Without seccomp (allow-all profile), the kernel must still refuse:
    // init is non-dumpable and its mm belongs to the host's user namespace.
    std::vector<std::string> args = {"run"};
    if (!filtered) args.insert(args.end(), {"--seccomp-profile", allow_all_profile(dir)});
    args.insert(args.end(), {"--", "python3", "-c", kInitProbe});
    Outcome r = ultari(args);
    auto e = parse_pairs(r.out);
    ASSERT_EQ(e.size(), 18u) << r.out << r.err;
    for (const char* name : {"root", "cwd", "exe", "fd3", "fddir", "mem", "memw", "environ", "ns_mnt", "ns_user",
                             "map_files"})
      EXPECT_EQ(e[name], EACCES) << name << (filtered ? "" : " (no seccomp)");
    for (const char* name : {"ptrace_seize", "ptrace_attach", "process_vm_readv", "pidfd_getfd", "kcmp"})
      EXPECT_EQ(e[name], EPERM) << name << (filtered ? "" : " (no seccomp)");
    // Negative control: the same opens on the caller's own process work.
    EXPECT_EQ(e["self_mem"], 0);
    EXPECT_EQ(e["self_ns_mnt"], 0);
  }
}

TEST(AttackReview, ProcSelfRootWritesStayInsideTheSandbox) {
  std::string name = "ultari-attack-" + std::to_string(getpid());
  Outcome r = sh("echo pwned > /proc/self/root/etc/" + name + " && echo pwned > /proc/self/root/root/" + name +
                 " && cat /proc/self/cwd/" + name + " && echo wrote");
  EXPECT_NE(r.out.find("wrote"), std::string::npos) << r.out << r.err;  // it did write: inside
  EXPECT_FALSE(exists("/etc/" + name));
  EXPECT_FALSE(exists("/root/" + name));
  unlink(("/etc/" + name).c_str());
  unlink(("/root/" + name).c_str());
}

TEST(AttackReview, SignalsToInitNeitherKillItNorFakeTheResult) {
  // Uncatchable and fatal-by-default signals sent to pid 1 from inside its
  // namespace are dropped; SIGTERM is forwarded to the payload (ignored here).
  Outcome r = sh("trap '' TERM; for s in KILL STOP SEGV ABRT BUS TSTP TERM; do kill -$s 1; done; sleep 0.2; "
                 "echo state=$(cut -d' ' -f3 /proc/1/stat); exit 7");
  EXPECT_EQ(r.status, 7) << r.err;
  EXPECT_EQ(r.out, "state=S\n") << r.err;
  EXPECT_EQ(r.report["exit_code"], 7) << r.report.dump();
  EXPECT_EQ(r.report["verdict"], "nonzero_exit") << r.report.dump();
}

TEST(AttackReview, KernelKnobsAreReadOnlyAndCgroupfsIsEmpty) {
  std::string before = read_file("/proc/sys/kernel/core_pattern");
  Outcome r = sh("for f in /proc/sys/kernel/core_pattern /proc/sys/vm/drop_caches /proc/sys/kernel/modprobe "
                 "/sys/kernel/uevent_helper /proc/sys/kernel/hostname; do "
                 "(echo '|/tmp/x' > $f) 2>/dev/null && echo wrote $f; done; "
                 "echo cgroupfs=$(ls -A /sys/fs/cgroup | wc -l); "
                 "(echo c > /proc/sysrq-trigger) 2>/dev/null && echo wrote sysrq; "
                 "echo kcore=$(stat -c %s /proc/kcore 2>/dev/null || echo absent)");
  EXPECT_EQ(r.out.find("wrote"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("cgroupfs=0\n"), std::string::npos) << r.out;
  EXPECT_TRUE(r.out.find("kcore=0\n") != std::string::npos || r.out.find("kcore=absent\n") != std::string::npos)
      << r.out;
  EXPECT_EQ(read_file("/proc/sys/kernel/core_pattern"), before);
}

TEST(AttackReview, MknodOfDevicesIsRefused) {
  Outcome r = ultari({"run", "--", "python3", "-c",
                      "import os, stat\n"
                      "for name, mode, dev in [('blk', stat.S_IFBLK, os.makedev(8, 0)), ('chr', stat.S_IFCHR, os.makedev(1, 1)),"
                      " ('fifo', stat.S_IFIFO, 0)]:\n"
                      "  try: os.mknod('/tmp/' + name, mode | 0o666, dev); print(name, 0)\n"
                      "  except OSError as e: print(name, e.errno)\n"});
  auto e = parse_pairs(r.out);
  EXPECT_EQ(e["blk"], EPERM) << r.out << r.err;
  EXPECT_EQ(e["chr"], EPERM) << r.out;
  EXPECT_EQ(e["fifo"], 0) << r.out;  // negative control: mknod itself is reachable
}

TEST(AttackReview, NoNestedNamespacesFromTheShell) {
  Outcome r = sh("unshare -U true 2>/dev/null && echo userns; unshare -Ur true 2>/dev/null && echo userns-root; "
                 "unshare -m true 2>/dev/null && echo mntns; nsenter -t 1 -m true 2>/dev/null && echo nsenter; "
                 "echo done");
  EXPECT_EQ(r.out, "done\n") << r.err;
  // Negative control: with seccomp lifted the kernel itself allows a userns,
  // so the policy is what holds the line.
  TempDir dir;
  Outcome open = sh("unshare -U true && echo userns", {"--seccomp-profile", allow_all_profile(dir)});
  EXPECT_EQ(open.out, "userns\n") << open.err;
}

TEST(AttackReview, PersonalityOnlyAllowsHarmlessValues) {
  Outcome r = ultari({"run", "--", "python3", "-c",
                      "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                      "for name, v in [('read_implies_exec', 0x0400000), ('addr_no_randomize', 0x0040000),"
                      " ('addr_compat_layout', 0x0200000), ('query', 0xffffffff), ('linux', 0)]:\n"
                      "  ctypes.set_errno(0); r = libc.personality(ctypes.c_ulong(v))\n"
                      "  print(name, 0 if r != -1 else ctypes.get_errno())\n"});
  auto e = parse_pairs(r.out);
  EXPECT_EQ(e["read_implies_exec"], EPERM) << r.out << r.err;
  EXPECT_EQ(e["addr_no_randomize"], EPERM) << r.out;
  EXPECT_EQ(e["addr_compat_layout"], EPERM) << r.out;
  EXPECT_EQ(e["query"], 0) << r.out;
  EXPECT_EQ(e["linux"], 0) << r.out;
}

TEST(AttackReview, HostnameOfTheHostIsUntouched) {
  char before[256] = {};
  gethostname(before, sizeof before - 1);
  Outcome r = sh("hostname pwned 2>/dev/null; echo pwned > /proc/sys/kernel/hostname 2>/dev/null; hostname");
  EXPECT_EQ(r.out, "sandbox\n") << r.err;
  char after[256] = {};
  gethostname(after, sizeof after - 1);
  EXPECT_STREQ(before, after);
}

TEST(AttackReview, HostEnvironmentDoesNotLeak) {
  Options o;
  o.env = {"ULTARI_ATTACK_CANARY=c4n4ry-secret"};
  Outcome r = sh("env; cat /proc/1/environ /proc/self/environ 2>/dev/null; "
                 "grep -ao 'c4n4ry-secre[t]' /proc/1/cmdline /proc/*/environ 2>/dev/null; echo end",
                 {}, o);
  EXPECT_NE(r.out.find("end"), std::string::npos);
  EXPECT_EQ(r.out.find("c4n4ry-secret"), std::string::npos) << r.out;
}

// WEAKNESS (low): init is a fork of the host-side `ultari` and never execs,
// so its world-readable /proc/1/cmdline is the host's full command line:
// the ultari binary's host path, --report/--workspace/--bind host paths and
// everything else the caller typed.
TEST(AttackReview, HostCommandLineIsNotVisibleAsInitCmdline) {
  TempDir hostonly;
  Outcome r = ultari({"run", "--ro-bind", hostonly.path() + ":/data", "--", "cat", "/proc/1/cmdline"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out.find(hostonly.path()), std::string::npos) << "host argv visible: " << r.out;
  EXPECT_EQ(r.out.find(ULTARI_BIN), std::string::npos) << "host argv visible: " << r.out;
}

TEST(AttackReview, SymlinkPlantedInWorkspaceIsNotMountedThrough) {
  TempDir ws, host, src;
  chown(ws.path().c_str(), 1234, 1234);
  write_file(src / "f", "data");
  // Run 1 (untrusted) plants links to host paths in its workspace.
  Outcome plant = sh("ln -s " + host.path() + " /workspace/link && ln -s /etc /workspace/etc && echo ok",
                     {"--workspace", ws.path()});
  ASSERT_EQ(plant.out, "ok\n") << plant.err;
  ASSERT_TRUE(exists(ws / "link/."));  // negative control: on the host the link resolves
  // Run 2 binds into those paths: must be refused, never land on the host.
  for (const std::string& dst : {std::string("/workspace/link/x"), std::string("/workspace/etc/x"),
                                 std::string("/workspace/link")}) {
    Outcome r = ultari({"run", "--workspace", ws.path(), "--bind", src.path() + ":" + dst, "--", "true"});
    EXPECT_EQ(r.status, 125) << dst << r.err;
    EXPECT_NE(r.err.find("symlink"), std::string::npos) << r.err;
  }
  EXPECT_FALSE(exists(host / "x"));
  EXPECT_FALSE(exists("/etc/x") && !exists(src / "f"));
}

// Was a HIGH vulnerability: a root-owned workspace was idmapped to the
// sandbox's root, so untrusted code created setuid-root files on the host.
// Now a writable root-owned tree is mounted without id mapping (the sandbox
// cannot write there) and no setid bit can be set anywhere.
TEST(AttackReview, SetuidFilePlantedInWorkspaceGivesNoHostPrivilege) {
  TempDir ws;
  chmod(ws.path().c_str(), 0755);
  Outcome r = sh("cp /usr/bin/id /workspace/id; chmod 4755 /workspace/id; cp /usr/bin/id /workspace/gid; "
                 "chmod 2755 /workspace/gid; mkdir /workspace/d; chmod 6777 /workspace/d; echo done",
                 {"--workspace", ws.path()});
  EXPECT_EQ(r.out, "done\n") << r.err;
  for (const char* f : {"id", "gid", "d"}) {
    struct stat st{};
    if (stat((ws / f).c_str(), &st) != 0) continue;  // could not even be created
    EXPECT_NE(st.st_uid, 0u) << f;
    EXPECT_EQ(st.st_mode & (S_ISUID | S_ISGID), 0u)
        << f << " on the host: mode " << std::oct << st.st_mode << std::dec << " uid " << st.st_uid;
  }
  // Negative control for the detector: the host itself can make such a file.
  ASSERT_EQ(std::system(("cp /usr/bin/id " + (ws / "host-id") + " && chmod 4755 " + (ws / "host-id")).c_str()), 0);
  struct stat st{};
  ASSERT_EQ(stat((ws / "host-id").c_str(), &st), 0);
  EXPECT_NE(st.st_mode & S_ISUID, 0u);
}

// Same through --bind, and with --user: the sandbox user maps to the owner.
TEST(AttackReview, SetuidFilePlantedThroughBindAsNonRootUser) {
  TempDir dir;
  chmod(dir.path().c_str(), 0777);
  Outcome r = sh("cp /bin/true /data/t && chmod 4755 /data/t; stat -c %a /data/t",
                 {"--user", "1000:1000", "--bind", dir.path() + ":/data"});
  struct stat st{};
  ASSERT_EQ(stat((dir / "t").c_str(), &st), 0) << r.out << r.err;
  EXPECT_FALSE(st.st_uid == 0 && (st.st_mode & S_ISUID)) << "setuid-root file planted on the host: " << r.out;
}

TEST(AttackReview, FileCapabilitiesCannotBeSetInWorkspace) {
  TempDir ws;
  chown(ws.path().c_str(), 1234, 1234);
  // VFS_CAP_REVISION_2 with CAP_SYS_ADMIN permitted+effective.
  Outcome r = ultari({"run", "--workspace", ws.path(), "--", "python3", "-c",
                      "import os, struct\nopen('/workspace/f', 'w').close()\n"
                      "v = struct.pack('<IIIII', 0x02000001, 1 << 21, 0, 0, 0)\n"
                      "try: os.setxattr('/workspace/f', 'security.capability', v); print('set 0')\n"
                      "except OSError as e: print('set', e.errno)\n"});
  EXPECT_EQ(r.out, "set 1\n") << r.err;
  char v[64];
  EXPECT_LT(getxattr((ws / "f").c_str(), "security.capability", v, sizeof v), 0);
}

// VULNERABILITY (medium): when the caller's stdin is a terminal, it is
// handed to the payload as fd 0 (child.cpp: stdin_fd -1 = inherit;
// sandbox.cpp: plan.stdin_fd = io.stdin_fd == 0 ? -1 : ...). setsid() only
// removes the controlling tty; the fd still reaches the caller's terminal.
// The payload writes to it directly (escape sequences, bypassing
// --output-limit and the stdout/stderr pumps) and changes its modes with
// TCSETS (stty -echo persists after the run), TIOCSWINSZ, TIOCSETD, ...
TEST(AttackReview, CallerTerminalIsNotReachableFromTheSandbox) {
  int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
  ASSERT_GE(m, 0);
  ASSERT_EQ(grantpt(m), 0);
  ASSERT_EQ(unlockpt(m), 0);
  int s = open(ptsname(m), O_RDWR | O_NOCTTY | O_CLOEXEC);
  ASSERT_GE(s, 0);
  termios before{};
  ASSERT_EQ(tcgetattr(s, &before), 0);
  ASSERT_TRUE(before.c_lflag & ECHO);
  pid_t pid = fork();
  if (pid == 0) {
    setsid();
    ioctl(s, TIOCSCTTY, 0);  // as in an interactive shell
    dup2(s, 0);
    int null = open("/dev/null", O_WRONLY);
    dup2(null, 1);
    dup2(null, 2);
    execl(ULTARI_BIN, ULTARI_BIN, "run", "--output-limit", "1", "--", "sh", "-c",
          "printf INJECTED >&0; stty -echo <&0", static_cast<char*>(nullptr));
    _exit(127);
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  int status = 0;
  while (waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      break;
    }
    usleep(10000);
  }
  std::string seen;
  pollfd pf{m, POLLIN, 0};
  while (poll(&pf, 1, 100) > 0 && (pf.revents & POLLIN)) {
    char buf[256];
    ssize_t n = read(m, buf, sizeof buf);
    if (n <= 0) break;
    seen.append(buf, static_cast<size_t>(n));
  }
  termios after{};
  tcgetattr(s, &after);
  tcsetattr(s, TCSANOW, &before);
  close(s);
  close(m);
  EXPECT_EQ(seen.find("INJECTED"), std::string::npos) << "the sandbox wrote to the caller's terminal: " << seen;
  EXPECT_TRUE(after.c_lflag & ECHO) << "the sandbox turned off echo on the caller's terminal";
}

// VULNERABILITY (medium, host DoS): every denied syscall is a USER_NOTIF
// counted by the supervisor in a map keyed by name, and numbers unknown to
// libseccomp get their own key "nr:<n>" (supervisor.cpp native_name). The
// sandbox grows the host-side supervisor's memory (outside its memory
// cgroup) and the report without bound: ~40k keys/s, 2^31 possible keys.
TEST(AttackReview, DeniedSyscallBookkeepingIsBounded) {
  Outcome r = ultari({"run", "--", "python3", "-c",
                      "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                      "for i in range(20000): libc.syscall(ctypes.c_long(100000 + i))\nprint('done')\n"});
  EXPECT_EQ(r.out, "done\n") << r.err;
  EXPECT_LE(r.report["denied_syscalls"].size(), 1000u)
      << "supervisor state grew to " << r.report["denied_syscalls"].size() << " entries";
}

// WEAKNESS (low, fifth core review): every denied call is answered by the
// supervisor, whose CPU no limit of the sandbox counts; threads looping on
// a denied call kept it busy on a core (about 57,000 answers a second here)
// while the sandbox itself ran under --cpus. Answers are now paced, 250 per
// 50 ms tick: the threads wait on the sandbox's clock. The bound is a count
// (ticks the run lasted, plus two), not a time. Control by hand: without
// the pacing the same run gets about 115,000 answers in 2 s.
TEST(AttackReview, DeniedCallsAreAnsweredAtAPacedRate) {
  Outcome r = ultari({"run", "--timeout", "2s", "--", "python3", "-c",
                      "import ctypes, threading\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                      "def spin():\n  while True: libc.syscall(165, 0, 0, 0, 0, 0)\n"
                      "for i in range(3): threading.Thread(target=spin, daemon=True).start()\nspin()\n"});
  EXPECT_EQ(r.report["verdict"], "timeout") << r.err;
  ASSERT_EQ(r.report["denied_syscalls"].size(), 1u) << r.report.dump();
  long count = r.report["denied_syscalls"][0]["count"];
  long ticks = r.report["wall_ms"].get<long>() / 50 + 2;
  EXPECT_GT(count, 0);
  EXPECT_LE(count, ticks * 250) << "answered " << count << " denials in " << r.report["wall_ms"] << " ms";
}

// WEAKNESS (low): foreign ABIs are "killed" by the supervisor sending SIGSYS
// (supervisor.cpp signal_caller) after a USER_NOTIF, not by the kernel's
// SECCOMP_RET_KILL_PROCESS. An ignored SIGSYS (inherited across exec) lets
// the process carry on with ENOSYS and the run is reported "ok". The call
// itself is not executed, so this is no filter bypass.
TEST(AttackReview, ForeignAbiKillCannotBeIgnored) {
  for (const char* abi : {"i386", "x32"}) {
    if (std::string(abi) == "i386" && !host_has_i386()) continue;  // faults before any filter
    Outcome r = ultari({"run", "--ro-bind", helpers_dir() + ":/helpers", "--", "sh", "-c",
                        std::string("trap '' SYS; exec /helpers/abi_probe ") + abi});
    EXPECT_EQ(r.out.find("survived"), std::string::npos) << abi << ": " << r.out;
    // It ignores SIGSYS, so the supervisor kills it with SIGKILL instead.
    EXPECT_EQ(r.status, 128 + SIGKILL) << abi;
    EXPECT_EQ(r.report["denied_syscalls"][0]["name"], std::string("abi:") + abi);
  }
}

// WEAKNESS (low, fifth core review): the supervisor read "SigBlk:" anywhere
// in /proc/TID/status, whose first line is the name the thread chose: named
// "SigBlk:0", a thread that blocks SIGSYS was taken for one that does not,
// got SIGSYS (left pending) instead of SIGKILL, and lived on. Keys are now
// read at the start of a line. Control: blocking alone, undisguised, is
// caught as before (the test above); here the disguise must not help.
TEST(AttackReview, ForeignAbiKillSeesThroughADisguisedName) {
  for (const char* abi : {"i386", "x32"}) {
    if (std::string(abi) == "i386" && !host_has_i386()) continue;  // faults before any filter
    Outcome r = ultari({"run", "--ro-bind", helpers_dir() + ":/helpers", "--", "/helpers/abi_probe", abi, "disguise"});
    EXPECT_EQ(r.out.find("survived"), std::string::npos) << abi << ": " << r.out;
    EXPECT_EQ(r.status, 128 + SIGKILL) << abi << r.err;
  }
}

// VULNERABILITY (medium, host DoS): user-namespace ucounts are hierarchical,
// so inotify instances made in the sandbox are charged to the uid that
// created its user namespace (host root) in the initial namespace. The
// sandbox can take all fs.inotify.max_user_instances (128) of host root:
// systemd, udev, tail -f ... running as root get EMFILE for as long as the
// sandbox lives. (fanotify_init is denied; inotify_init1 is allowed.)
TEST(AttackReview, SandboxCannotExhaustHostRootsInotifyInstances) {
  int control = inotify_init1(IN_CLOEXEC);  // negative control: the host can
  ASSERT_GE(control, 0) << strerror(errno);
  close(control);
  TempDir ws;
  chmod(ws.path().c_str(), 0777);
  Outcome r;
  std::thread t([&] {
    r = ultari({"run", "--workspace", ws.path(), "--timeout", "10s", "--", "python3", "-c",
                "import ctypes, os, time\nlibc = ctypes.CDLL(None, use_errno=True)\nfds = []\n"
                "for i in range(1000):\n  fd = libc.inotify_init1(0)\n  if fd < 0: break\n  fds.append(fd)\n"
                "print('got', len(fds))\nopen('/workspace/full', 'w').close()\n"
                "end = time.time() + 5\n"
                "while not os.path.exists('/workspace/done') and time.time() < end: time.sleep(0.01)\n"});
  });
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(8);
  while (!exists(ws / "full") && std::chrono::steady_clock::now() < deadline) usleep(5000);
  bool full = exists(ws / "full");
  int fd = inotify_init1(IN_CLOEXEC);
  int err = errno;
  if (fd >= 0) close(fd);
  write_file(ws / "done", "");
  t.join();
  ASSERT_TRUE(full) << r.out << r.err;
  EXPECT_GE(fd, 0) << "host root's inotify_init1 failed while the sandbox ran: " << strerror(err) << " (sandbox "
                   << r.out << ")";
}

TEST(AttackReview, ThreadsCountAgainstThePidsLimit) {
  Outcome r = ultari({"run", "--pids", "16", "--", "python3", "-c",
                      "import threading\nev = threading.Event()\nn = 0\n"
                      "try:\n  for i in range(64):\n    threading.Thread(target=ev.wait).start(); n += 1\n"
                      "except RuntimeError: pass\nprint(n)\nev.set()\n"});
  ASSERT_FALSE(r.out.empty()) << r.err;
  EXPECT_LT(std::stoi(r.out), 16) << r.out;
}

TEST(AttackReview, TmpSizeBoundsShmOverlayAndHome) {
  // Each writable tmpfs stops at --tmp-size. (Note: /dev/shm and the overlay
  // upper are separate tmpfs of that size each, so the total is twice it.)
  Outcome r = sh("for f in /dev/shm/big /tmp/big /root/big /var/tmp/big; do "
                 "dd if=/dev/zero of=$f bs=1M count=16 2>/dev/null; echo $(($(stat -c %s $f) / 1048576)); rm -f $f; done",
                 {"--tmp-size", "4M"});
  std::istringstream in(r.out);
  int mb, lines = 0;
  while (in >> mb) {
    EXPECT_LE(mb, 4) << r.out;
    ++lines;
  }
  EXPECT_EQ(lines, 4) << r.out << r.err;
}

TEST(AttackReview, PtyInsideIsPrivateAndDevTtyHasNoTerminal) {
  // /dev/pts is a new instance; /dev/tty has no controlling terminal behind it.
  Outcome r = sh("ls /dev/pts | grep -v ptmx | wc -l; (: < /dev/tty) 2>/dev/null && echo tty-open; "
                 "ls /dev | tr '\\n' ' '");
  EXPECT_TRUE(r.out.starts_with("0\n")) << r.out;
  EXPECT_EQ(r.out.find("tty-open"), std::string::npos) << r.out;
  for (const char* d : {"sda", "vda", "mem", "kmem", "port", "kmsg", "console"})
    EXPECT_EQ(r.out.find(std::string(" ") + d + " "), std::string::npos) << d << " in /dev: " << r.out;
}

}  // namespace
}  // namespace ultari::test
