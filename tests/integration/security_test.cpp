// Attack tests: each tries something the sandbox must refuse, checks that it
// failed and was reported, and reruns the probe with the protection lifted
// (an allow-all seccomp profile, or the host itself) to show the probe can
// tell the difference.
#include <fcntl.h>
#include <sys/mount.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <csignal>
#include <map>
#include <sstream>

#include "harness.h"

namespace ultari::test {
namespace {

// Every denied family, called with harmless arguments. Prints "name errno".
const std::string kSyscallProbe = std::string(kPySyscall) + R"PY(
sc("keyctl", 250, 0, -3, 0)
sc("add_key", 248, 0, 0, 0, 0, 0)
sc("request_key", 249, 0, 0, 0, 0)
sc("bpf", 321, 0, 0, 0)
sc("perf_event_open", 298, 0, 0, -1, -1, 0)
sc("userfaultfd", 323, 0)
sc("io_uring_setup", 425, 1, 0)
sc("finit_module", 313, -1, 0, 0)
sc("kexec_load", 246, 0, 0, 0, 0)
sc("open_by_handle_at", 304, -1, 0, 0)
sc("mount", 165, 0, 0, 0, 0, 0)
sc("umount2", 166, 0, 0)
sc("pivot_root", 155, 0, 0)
sc("unshare", 272, 0x10000000)
sc("setns", 308, -1, 0)
sc("fsopen", 430, 0, 0)
sc("open_tree", 428, -1, 0, 0)
sc("ptrace", 101, 0x4206, 1, 0, 0)
sc("clone", 56, 0x10000000 | 17, 0, 0, 0, 0)
sc("clone3", 435, 0, 0)
sc("socket_vsock", 41, 40, 1, 0)
sc("socket_alg", 41, 38, 5, 0)
sc("socket_vsock_high", 41, 0x100000028, 1, 0)
sc("socket_inet", 41, 2, 1, 0)
)PY";

std::map<std::string, int> denied(const nlohmann::json& report) {
  std::map<std::string, int> m;
  for (const auto& d : report["denied_syscalls"]) m[d["name"]] = d["count"];
  return m;
}

TEST(Seccomp, DeniedFamiliesFailWithEpermAndAreReported) {
  Outcome r = ultari({"run", "--", "python3", "-c", kSyscallProbe});
  auto e = parse_pairs(r.out);
  ASSERT_EQ(e.size(), 24u) << r.out << r.err;
  for (const char* name : {"keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup",
                           "finit_module", "kexec_load", "open_by_handle_at", "mount", "umount2", "pivot_root",
                           "unshare", "setns", "fsopen", "open_tree", "ptrace", "clone", "socket_vsock", "socket_alg",
                           "socket_vsock_high"})
    EXPECT_EQ(e[name], EPERM) << name;
  EXPECT_EQ(e["clone3"], ENOSYS);
  EXPECT_EQ(e["socket_inet"], 0);
  auto d = denied(r.report);
  for (const char* name : {"keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup",
                           "finit_module", "kexec_load", "open_by_handle_at", "mount", "umount2", "pivot_root",
                           "unshare", "setns", "fsopen", "open_tree", "ptrace", "clone"})
    EXPECT_EQ(d[name], 1) << name << " in " << r.report["denied_syscalls"].dump();
  EXPECT_EQ(d["socket"], 3) << r.report["denied_syscalls"].dump();
  EXPECT_EQ(d.count("clone3"), 0u);  // ENOSYS so libc falls back: not a denial

  // Negative control: without the filter the same calls are not reported
  // and several succeed or fail differently.
  TempDir dir;
  Outcome open = ultari({"run", "--seccomp-profile", allow_all_profile(dir), "--", "python3", "-c", kSyscallProbe});
  auto eo = parse_pairs(open.out);
  EXPECT_EQ(open.report["denied_syscalls"].size(), 0u) << open.report.dump();
  EXPECT_NE(eo["keyctl"], EPERM);
  EXPECT_NE(eo["clone3"], ENOSYS);
  EXPECT_NE(eo["socket_vsock"], EPERM);
}

// A core_pattern that pipes to a helper (systemd-coredump, apport) ignores
// RLIMIT_CORE 0 and runs the helper as host root for a crash inside: the
// engine sets soft = hard = 1 (the one value the kernel honours for a pipe)
// and no call may set RLIMIT_CORE again (a payload lowering it to 0 would
// bring the helper back), whichever way it spells the resource. Reading it
// and setting other limits still work. Control: without the filter the
// same calls succeed, the high-word spelling too.
const std::string kCoreLimitProbe = std::string(kPySyscall) + R"PY(
lim = (ctypes.c_ulong * 2)(0, 1)
nof = (ctypes.c_ulong * 2)(100, 100)
cur = (ctypes.c_ulong * 2)()
sc("prlimit_core_get", 302, 0, 4, 0, ctypes.addressof(cur))
print("core_soft", cur[0])
print("core_hard", cur[1])
sc("setrlimit_core", 160, 4, ctypes.addressof(lim))
sc("prlimit_core_set", 302, 0, 4, ctypes.addressof(lim), 0)
sc("prlimit_core_set_high", 302, 0, 0x100000004, ctypes.addressof(lim), 0)
sc("prlimit_nofile_set", 302, 0, 7, ctypes.addressof(nof), 0)
)PY";

TEST(Seccomp, TheCoreLimitStaysAtOne) {
  Outcome r = ultari({"run", "--", "python3", "-c", kCoreLimitProbe});
  auto e = parse_pairs(r.out);
  EXPECT_EQ(e["core_soft"], 1) << r.out << r.err;
  EXPECT_EQ(e["core_hard"], 1) << r.out;
  EXPECT_EQ(e["prlimit_core_get"], 0) << r.out;
  EXPECT_EQ(e["setrlimit_core"], EPERM) << r.out;
  EXPECT_EQ(e["prlimit_core_set"], EPERM) << r.out;
  EXPECT_EQ(e["prlimit_core_set_high"], EPERM) << r.out;
  EXPECT_EQ(e["prlimit_nofile_set"], 0) << r.out;
  auto d = denied(r.report);
  EXPECT_EQ(d["setrlimit"], 1) << r.report["denied_syscalls"].dump();
  EXPECT_EQ(d["prlimit64"], 2) << r.report["denied_syscalls"].dump();
  TempDir dir;
  Outcome open = ultari({"run", "--seccomp-profile", allow_all_profile(dir), "--", "python3", "-c", kCoreLimitProbe});
  auto eo = parse_pairs(open.out);
  EXPECT_EQ(eo["setrlimit_core"], 0) << open.out << open.err;
  EXPECT_EQ(eo["prlimit_core_set"], 0) << open.out;
  EXPECT_EQ(eo["prlimit_core_set_high"], 0) << open.out;
}

TEST(Seccomp, ForeignAbisAreKilled) {
  for (const char* abi : {"i386", "x32"}) {
    if (std::string(abi) == "i386" && !host_has_i386()) continue;  // faults before any filter
    Outcome r = ultari({"run", "--ro-bind", helpers_dir() + ":/helpers", "--", "/helpers/abi_probe", abi});
    EXPECT_EQ(r.status, 128 + SIGSYS) << abi << r.out << r.err;
    EXPECT_EQ(r.report["signal"], SIGSYS) << abi;
    EXPECT_EQ(r.out.find("survived"), std::string::npos) << abi;
    EXPECT_EQ(denied(r.report)[std::string("abi:") + abi], 1) << r.report.dump();
  }
  // Negative control: a profile that allows both ABIs lets the call through.
  if (!host_has_i386()) GTEST_SKIP() << "i386 part skipped: no IA32 emulation on this kernel (x32 checked)";
  TempDir dir;
  Outcome ok = ultari({"run", "--seccomp-profile", allow_all_profile(dir, true), "--ro-bind", helpers_dir() + ":/helpers", "--",
                   "/helpers/abi_probe", "i386"});
  EXPECT_EQ(ok.status, 0) << ok.err;
  EXPECT_NE(ok.out.find("survived"), std::string::npos);
}

TEST(Seccomp, TiocstiAndTioclinuxAreDeniedOnLow32Bits) {
  Outcome r = ultari({"run", "--ro-bind", helpers_dir() + ":/helpers", "--", "/helpers/ioctl_probe"});
  EXPECT_NE(r.out.find("TIOCSTI errno=1\n"), std::string::npos) << r.out << r.err;
  EXPECT_NE(r.out.find("TIOCSTI-high errno=1\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("TIOCLINUX errno=1\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("TCGETS errno=0\n"), std::string::npos) << r.out;
  EXPECT_EQ(denied(r.report)["ioctl"], 3) << r.report.dump();
  // Negative control: unfiltered, the ioctls reach the kernel (not reported).
  TempDir dir;
  Outcome open = ultari({"run", "--seccomp-profile", allow_all_profile(dir), "--ro-bind", helpers_dir() + ":/helpers", "--",
                     "/helpers/ioctl_probe"});
  EXPECT_EQ(denied(open.report).count("ioctl"), 0u);
}

TEST(Seccomp, DockerProfileWithArgsAndErrno) {
  TempDir dir;
  std::string p = dir / "profile.json";
  write_file(p, R"({
    "defaultAction": "SCMP_ACT_ALLOW",
    "syscalls": [
      {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
      {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 97,
       "args": [{"index": 0, "value": 10, "op": "SCMP_CMP_EQ"}]}
    ]})");
  std::string py = "import os, socket\n"
                   "try: os.mkdir('/tmp/d'); print('mkdir ok')\nexcept OSError as e: print('mkdir', e.errno)\n"
                   "try: socket.socket(socket.AF_INET6); print('inet6 ok')\nexcept OSError as e: print('inet6', e.errno)\n"
                   "socket.socket(socket.AF_INET); print('inet ok')\n";
  Outcome r = ultari({"run", "--seccomp-profile", p, "--", "python3", "-c", py});
  EXPECT_EQ(r.out, "mkdir 13\ninet6 97\ninet ok\n") << r.err;
  auto d = denied(r.report);
  EXPECT_EQ(d["mkdir"] + d["mkdirat"], 1) << r.report.dump();
  EXPECT_EQ(d["socket"], 1);
}

// tests/data/docker-shaped.json has the structure of Docker's default
// profile: an archMap for many architectures, names this libseccomp may not
// know, conditional socket/personality/clone rules, includes and excludes by
// arch, caps and minKernel, clone3 answered with ENOSYS.
TEST(Seccomp, DockerShapedProfileRunsEverydayPrograms) {
  std::string profile = std::string(ULTARI_TEST_DATA) + "/docker-shaped.json";
  Outcome r = sh("python3 -c 'import subprocess, threading; print(subprocess.run([\"echo\", \"sub\"], "
                 "capture_output=True).stdout.decode().strip())'; cd /tmp && git init -q r && echo git-ok; "
                 "unshare -U true 2>/dev/null || echo unshare-denied",
                 {"--seccomp-profile", profile});
  EXPECT_EQ(r.out, "sub\ngit-ok\nunshare-denied\n") << r.err;
  EXPECT_EQ(r.report["verdict"], "ok");
  bool unshare_reported = false;
  for (const auto& d : r.report["denied_syscalls"]) unshare_reported |= d["name"] == "unshare";
  EXPECT_TRUE(unshare_reported) << r.report.dump();
  // Docker's semantics: the profile's archMap admits the i386 ABI.
  if (!host_has_i386()) GTEST_SKIP() << "i386 part skipped: no IA32 emulation on this kernel";
  Outcome abi = ultari({"run", "--seccomp-profile", profile, "--ro-bind", helpers_dir() + ":/helpers", "--",
                        "/helpers/abi_probe", "i386"});
  EXPECT_NE(abi.out.find("survived"), std::string::npos) << abi.err;
}

TEST(Seccomp, BadProfileIsRejectedClearly) {
  TempDir dir;
  std::string p = dir / "bad.json";
  write_file(p, R"({"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_MAYBE"}]})");
  Outcome r = ultari({"run", "--seccomp-profile", p, "--", "true"});
  EXPECT_EQ(r.status, 125);
  EXPECT_NE(r.err.find("SCMP_ACT_MAYBE"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("syscalls[0]"), std::string::npos) << r.err;
}

TEST(Privileges, NoCapabilitiesNoNewPrivsSeccompOn) {
  Outcome r = sh("grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp):' /proc/self/status | tr -s '\\t ' ' '");
  EXPECT_EQ(r.out,
            "CapInh: 0000000000000000\nCapPrm: 0000000000000000\nCapEff: 0000000000000000\n"
            "CapBnd: 0000000000000000\nCapAmb: 0000000000000000\nNoNewPrivs: 1\nSeccomp: 2\n")
      << r.out;
  // Negative control: the test itself (root on the host) holds capabilities.
  EXPECT_EQ(read_file("/proc/self/status").find("CapEff:\t0000000000000000"), std::string::npos);
}

TEST(Privileges, SetuidBinariesGainNothing) {
  // su/passwd are setuid root on the host; inside they must not gain caps.
  Outcome r = sh("cp /bin/busybox /tmp/bb 2>/dev/null; ls -l /usr/bin/passwd | cut -c1-10; "
             "grep CapEff /proc/self/status | tr -s '\\t ' ' '");
  EXPECT_NE(r.out.find("CapEff: 0000000000000000"), std::string::npos) << r.out;
}

TEST(Privileges, NewSessionSoNoControllingTerminal) {
  Outcome r = sh("cat /proc/self/stat | cut -d' ' -f6,7");  // session, tty_nr
  ASSERT_FALSE(r.out.empty());
  EXPECT_TRUE(r.out.ends_with(" 0\n")) << "tty_nr must be 0: " << r.out;
}

TEST(Cve, FdLeakToHostIsClosed) {
  // CVE-2024-21626: a host directory fd leaked into the sandbox lets
  // cwd=/proc/self/fd/N reach the host. Open one without O_CLOEXEC.
  int fd = open("/root", O_RDONLY | O_DIRECTORY);
  ASSERT_GE(fd, 3);
  ASSERT_TRUE(exists("/proc/self/fd/" + std::to_string(fd)));  // negative control: we do hold it
  Outcome r = ultari({"run", "--ro-bind", helpers_dir() + ":/helpers", "--", "/helpers/fd_probe"});
  EXPECT_EQ(r.out, "fds: 0 1 2\n") << r.err;
  Outcome cwd = ultari({"run", "--cwd", "/proc/self/fd/" + std::to_string(fd), "--", "/bin/pwd"});
  EXPECT_NE(cwd.status, 0);
  EXPECT_EQ(cwd.out.find("/root"), std::string::npos) << cwd.out;
  close(fd);
}

TEST(Cve, SymlinkedMountTargetIsNotFollowed) {
  // CVE-2021-30465: a mount target inside the root that is a symlink to a
  // host path. The mount must never land on the host.
  TempDir host, root, src;
  for (const char* d : {"bin", "etc"}) mkdir((root / d).c_str(), 0755);
  ASSERT_EQ(std::system(("cp /bin/busybox " + root / "bin/busybox").c_str()), 0);
  symlink(host.path().c_str(), (root / "mnt").c_str());
  ASSERT_TRUE(exists(root / "mnt/."));  // negative control: from the host the link resolves
  Outcome r = ultari({"run", "--rootfs", root.path(), "--ro-bind", src.path() + ":/mnt/x", "--", "/bin/busybox", "true"});
  EXPECT_EQ(r.status, 125) << r.err;
  EXPECT_NE(r.err.find("/mnt/x"), std::string::npos) << r.err;
  EXPECT_FALSE(exists(host / "x"));
}

// A clone of a shared host mount is a peer of it: mounts the setup made
// beneath the workspace (a --tmpfs, a bind) were copied onto the host, where
// they outlived the sandbox, and into every other sandbox over the same
// tree. systemd makes / rshared; this VM's / is private, so the test makes
// its own shared mount. Control: the host mount is shared, and a bind made
// beneath it on the host does reach its peer.
TEST(Cve, MountsBeneathASharedWorkspaceStayInTheSandbox) {
  if (geteuid() != 0) GTEST_SKIP() << "rootful: a rootless sandbox's clones are slaves already";
  TempDir dir;
  const std::string shared = dir / "shared", ws = shared + "/ws", peer = dir / "peer";
  ASSERT_EQ(mkdir(shared.c_str(), 0755), 0);
  ASSERT_EQ(mount("ultari-prop", shared.c_str(), "tmpfs", 0, "mode=0755"), 0) << shared;
  struct Unmount {
    std::vector<std::string> at;
    ~Unmount() {
      for (const auto& a : at) umount2(a.c_str(), MNT_DETACH);
    }
  } unmount{{shared}};
  ASSERT_EQ(mount(nullptr, shared.c_str(), nullptr, MS_SHARED, nullptr), 0);
  ASSERT_EQ(mkdir(ws.c_str(), 0755), 0);
  ASSERT_EQ(chown(ws.c_str(), 1000, 1000), 0);  // (a user's workspace: mapped to the sandbox's root)
  ASSERT_EQ(mkdir(peer.c_str(), 0755), 0);
  auto under = [&](const std::string& top) {
    int n = 0;
    std::istringstream info(read_file("/proc/self/mountinfo"));
    for (std::string line; std::getline(info, line);) {
      std::istringstream f(line);
      std::string id, parent, devno, root, point;
      f >> id >> parent >> devno >> root >> point;
      if (point.rfind(top + "/", 0) == 0) ++n;
    }
    return n;
  };
  Outcome r = ultari({"run", "--workspace", ws, "--tmpfs", "/workspace/t", "--ro-bind", "/etc/ssl:/workspace/ssl", "--",
                      "/bin/sh", "-c", "test -d /workspace/ssl/certs && grep -c ' /workspace/t ' /proc/self/mountinfo"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "1\n") << r.err;
  EXPECT_EQ(under(ws), 0) << read_file("/proc/self/mountinfo");
  // Control: the host mount is shared, so a peer sees a bind beneath it.
  ASSERT_EQ(mount(shared.c_str(), peer.c_str(), nullptr, MS_BIND, nullptr), 0);
  unmount.at.push_back(peer);
  ASSERT_EQ(mount("/etc/ssl", (shared + "/ws").c_str(), nullptr, MS_BIND, nullptr), 0);
  EXPECT_EQ(under(peer), 1) << read_file("/proc/self/mountinfo");
}

TEST(Cve, SymlinkedProcInRootfsIsRefused) {
  TempDir host, root;
  for (const char* d : {"bin", "etc"}) mkdir((root / d).c_str(), 0755);
  ASSERT_EQ(std::system(("cp /bin/busybox " + root / "bin/busybox").c_str()), 0);
  symlink(host.path().c_str(), (root / "proc").c_str());
  Outcome r = ultari({"run", "--rootfs", root.path(), "--", "/bin/busybox", "true"});
  EXPECT_EQ(r.status, 125);
  EXPECT_NE(r.err.find("/proc"), std::string::npos) << r.err;
}

// Host root is never mapped into a sandbox: a read-only bind of a root-owned
// tree shows its files as nobody's, so what only host root may read stays
// unreadable (found by the capability review: --ro-bind /etc exposed the
// host's shadow file).
TEST(Privileges, ReadOnlyBindOfARootOwnedTreeKeepsRootOnlyFilesClosed) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root (idmapped binds are rootful)";
  TempDir root_tree, user_tree;
  write_file(root_tree / "secret", "root only\n", 0600);
  write_file(root_tree / "public", "everyone\n", 0644);
  write_file(user_tree / "secret", "owner only\n", 0600);
  ASSERT_EQ(chown(user_tree.path().c_str(), 1000, 1000), 0);
  ASSERT_EQ(chown((user_tree / "secret").c_str(), 1000, 1000), 0);
  for (const char* user : {"0", "1000"}) {
    Outcome r = sh("cat /r/secret 2>&1; cat /r/public; stat -c %U /r/public",
                   {"--user", user, "--ro-bind", root_tree.path() + ":/r", "--cap-add", "CAP_DAC_OVERRIDE"});
    EXPECT_EQ(r.out, "cat: /r/secret: Permission denied\neveryone\nnobody\n") << "user " << user << r.err;
  }
  // Negative control: the tree of an unprivileged owner is still mapped to
  // the sandbox's user, who reads its owner-only file.
  Outcome mapped = sh("cat /u/secret", {"--ro-bind", user_tree.path() + ":/u"});
  EXPECT_EQ(mapped.out, "owner only\n") << mapped.err;
}

}  // namespace
}  // namespace ultari::test
