// Attacks on `ultari run --cap-add NAME`: a command running as root inside
// keeps the named capabilities, in the sandbox's user namespace only. Each
// test uses them to reach something outside (host files, host ids, host
// processes, the kernel, the host's root directory, the host's file
// capabilities) and asserts that it fails; each also has a negative control
// showing that the same probe does succeed where it legitimately may (on
// what the sandbox owns, on the host itself, or with a protection lifted by
// an allow-all seccomp profile), so that a failure means "refused", not
// "the probe is broken".
#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <linux/capability.h>
#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "harness.h"

namespace ultari::test {
namespace {

using namespace std::chrono_literals;

// `--cap-add build`, as documented (docs, src/spec/spec.h kBuildCapabilities):
// the mask is computed from the names, not copied from the engine.
struct Cap {
  const char* name;
  int bit;
};
constexpr Cap kBuild[] = {{"CAP_CHOWN", CAP_CHOWN},
                          {"CAP_DAC_OVERRIDE", CAP_DAC_OVERRIDE},
                          {"CAP_FOWNER", CAP_FOWNER},
                          {"CAP_FSETID", CAP_FSETID},
                          {"CAP_KILL", CAP_KILL},
                          {"CAP_SETGID", CAP_SETGID},
                          {"CAP_SETUID", CAP_SETUID},
                          {"CAP_SETPCAP", CAP_SETPCAP},
                          {"CAP_SETFCAP", CAP_SETFCAP},
                          {"CAP_NET_BIND_SERVICE", CAP_NET_BIND_SERVICE},
                          {"CAP_SYS_CHROOT", CAP_SYS_CHROOT}};

uint64_t build_mask() {
  uint64_t m = 0;
  for (const auto& c : kBuild) m |= uint64_t{1} << c.bit;
  return m;
}

std::string hex16(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

// Python prelude of the probes. Every line they print is "name value":
//   t(name, fn)        errno of fn() (0: it succeeded)
//   sc(name, nr, ...)  errno of a raw system call (bytes pass as pointers)
//   iso(name, nr, ...) the same in a child process, so that a call that
//                      succeeds (unshare, chroot) does not change the next
//   caps()             the Cap* lines of /proc/self/status (hex)
const char* const kPy = R"PY(
import ctypes, os, sys, struct, socket, signal, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def out(name, value):
    print(name, value); sys.stdout.flush()
def t(name, fn):
    try:
        fn(); out(name, 0)
    except OSError as e:
        out(name, e.errno)
def arg(a):
    return a if isinstance(a, bytes) else ctypes.c_long(a)
def sc(name, nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[arg(a) for a in args])
    out(name, 0 if r >= 0 else ctypes.get_errno())
def iso(name, nr, *args):
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        sc(name, nr, *args); os._exit(0)
    os.waitpid(pid, 0)
def prctl(name, *args):
    ctypes.set_errno(0)
    r = libc.prctl(*[ctypes.c_ulong(a) for a in args])
    out(name, 0 if r >= 0 else ctypes.get_errno())
def caps(prefix=""):
    for line in open("/proc/self/status"):
        if line.startswith("Cap"):
            k, v = line.split(":")
            out(prefix + k, v.strip())
)PY";

// "name value" lines -> map (later lines win).
std::map<std::string, std::string> kv(const std::string& text) {
  std::map<std::string, std::string> m;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    auto sp = line.find(' ');
    if (sp != std::string::npos) m[line.substr(0, sp)] = line.substr(sp + 1);
  }
  return m;
}

std::string e(int err) { return std::to_string(err); }

Outcome py(const std::string& body, std::vector<std::string> flags, const Options& opt = {}) {
  std::vector<std::string> args = {"run"};
  args.insert(args.end(), flags.begin(), flags.end());
  args.insert(args.end(), {"--", "python3", "-c", std::string(kPy) + body});
  return ultari(args, opt);
}

std::map<std::string, int> denied(const nlohmann::json& report) {
  std::map<std::string, int> m;
  if (report.is_object() && report.contains("denied_syscalls"))
    for (const auto& d : report["denied_syscalls"]) m[d["name"]] = d["count"];
  return m;
}

// The unprivileged host user the workspace and bind sources belong to in
// these tests (the rootless tests' user, created when missing).
const passwd& test_user() {
  static const passwd pw = [] {
    rootless_options();  // creates the user
    const passwd* p = getpwnam(kRootlessUser);
    if (!p) throw std::runtime_error("no test user");
    return *p;
  }();
  return pw;
}

void give_to_test_user(const std::string& path) {
  ASSERT_EQ(lchown(path.c_str(), test_user().pw_uid, test_user().pw_gid), 0) << path;
}

// Output of a host shell command.
std::string host(const std::string& cmd) {
  std::string result;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return result;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) result.append(buf, n);
  pclose(p);
  return result;
}

// As the test user on the host: no capabilities of its own.
std::string as_test_user(const std::string& cmd) {
  return host("/usr/bin/setpriv --reuid=" + std::to_string(test_user().pw_uid) +
              " --regid=" + std::to_string(test_user().pw_gid) + " --clear-groups -- " + cmd + " 2>&1");
}

// ---------------------------------------------------------------------------
// 1. What is kept is exactly what was named.

TEST(AttackCaps, BuildSetIsExactlyTheNamedCapabilities) {
  const std::string mask = hex16(build_mask());
  ASSERT_EQ(mask, "00000000800405fb");  // the names of --cap-add build, on this kernel's numbering
  const std::string probe = R"PY(
caps()
for line in open("/proc/self/status"):
    if line.startswith(("NoNewPrivs", "Seccomp:")):
        k, v = line.split(":"); out(k, v.strip())
out("securebits", hex(libc.prctl(27, 0, 0, 0, 0)))
)PY";
  Outcome r = py(probe, {"--cap-add", "build"});
  auto m = kv(r.out);
  EXPECT_EQ(r.status, 0) << r.err;
  for (const char* k : {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"}) EXPECT_EQ(m[k], mask) << k << "\n" << r.out;
  EXPECT_EQ(m["NoNewPrivs"], "1");
  EXPECT_EQ(m["Seccomp"], "2");
  // NOROOT|NOROOT_LOCKED|KEEP_CAPS_LOCKED|NO_SETUID_FIXUP_LOCKED; ambient
  // raising stays possible (the kept capabilities are ambient).
  EXPECT_EQ(m["securebits"], "0x2b");

  // Two names: only those two, bounding set included.
  Outcome two = py(probe, {"--cap-add", "CAP_CHOWN", "--cap-add", "CAP_KILL"});
  auto t = kv(two.out);
  for (const char* k : {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"})
    EXPECT_EQ(t[k], hex16((1ull << CAP_CHOWN) | (1ull << CAP_KILL))) << k << "\n" << two.out << two.err;

  // Negative control: without --cap-add every set is empty and ambient
  // raising is locked off.
  Outcome none = py(probe, {});
  auto n = kv(none.out);
  for (const char* k : {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"}) EXPECT_EQ(n[k], hex16(0)) << k;
  EXPECT_EQ(n["securebits"], "0xeb");
}

// ---------------------------------------------------------------------------
// 2. CAP_DAC_OVERRIDE acts on what the sandbox's namespace owns, never on
// host files whose owner it does not map (host root's files among others).

TEST(AttackCaps, DacOverrideDoesNotReachHostOwnedFiles) {
  TempDir t;
  // A bind source owned by an unprivileged user (so it is idmapped: that
  // user is the sandbox's root inside) holding host root's private files.
  give_to_test_user(t.path());
  write_file(t / "secret", "host root secret\n", 0600);
  ASSERT_EQ(mkdir((t / "rootdir").c_str(), 0700), 0);
  write_file(t / "rootdir/inner", "inner secret\n", 0600);
  write_file(t / "world-writable", "unchanged\n", 0666);
  write_file(t / "own", "the owner's own file\n", 0600);
  give_to_test_user(t / "own");

  const std::string probe = R"PY(
t("read_secret", lambda: open("/ro/secret").read())
t("list_rootdir", lambda: os.listdir("/ro/rootdir"))
t("read_rootdir_inner", lambda: open("/ro/rootdir/inner").read())
t("read_rw_secret", lambda: open("/rw/secret").read())
t("write_world_writable", lambda: open("/rw/world-writable", "a").write("changed\n"))
t("unlink_secret", lambda: os.unlink("/rw/secret"))
t("rename_secret", lambda: os.rename("/rw/secret", "/rw/stolen"))
t("chmod_secret", lambda: os.chmod("/rw/secret", 0o644))
t("read_own", lambda: open("/ro/own").read())
open("/tmp/mode0", "w").write("x"); os.chmod("/tmp/mode0", 0)
t("read_mode0", lambda: open("/tmp/mode0").read())
os.mkdir("/tmp/dir0", 0)
t("list_dir0", lambda: os.listdir("/tmp/dir0"))
)PY";
  std::vector<std::string> binds = {"--ro-bind", t.path() + ":/ro", "--bind", t.path() + ":/rw"};
  std::vector<std::string> flags = {"--cap-add", "build"};
  flags.insert(flags.end(), binds.begin(), binds.end());
  Outcome r = py(probe, flags);
  auto m = kv(r.out);
  ASSERT_EQ(m.size(), 11u) << r.out << r.err;
  EXPECT_EQ(m["read_secret"], e(EACCES));
  EXPECT_EQ(m["list_rootdir"], e(EACCES));
  EXPECT_EQ(m["read_rootdir_inner"], e(EACCES));
  EXPECT_EQ(m["read_rw_secret"], e(EACCES));
  // A file whose owner the mount cannot map is never written (mode 0666 or not).
  EXPECT_EQ(m["write_world_writable"], e(EACCES));
  EXPECT_NE(m["unlink_secret"], "0");
  EXPECT_NE(m["rename_secret"], "0");
  EXPECT_NE(m["chmod_secret"], "0");
  // On the host nothing changed.
  EXPECT_EQ(read_file(t / "secret"), "host root secret\n");
  EXPECT_EQ(read_file(t / "world-writable"), "unchanged\n");
  EXPECT_FALSE(exists(t / "stolen"));
  struct stat st{};
  ASSERT_EQ(stat((t / "secret").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);

  // Negative controls: the capability is live (a mode-0 file and dir of the
  // sandbox's own are read), the bind works (the owner's 0600 file is read),
  // and without --cap-add the mode-0 file is refused.
  EXPECT_EQ(m["read_own"], "0");
  EXPECT_EQ(m["read_mode0"], "0");
  EXPECT_EQ(m["list_dir0"], "0");
  Outcome plain = py(probe, binds);
  auto p = kv(plain.out);
  EXPECT_EQ(p["read_mode0"], e(EACCES)) << plain.out << plain.err;
  EXPECT_EQ(p["list_dir0"], e(EACCES));
  EXPECT_EQ(p["read_own"], "0");
}

// ---------------------------------------------------------------------------
// 3. CAP_CHOWN / CAP_FOWNER: ids stay inside the sandbox's range, and what
// lands in the workspace belongs to the workspace's owner, never host root.

TEST(AttackCaps, ChownStaysInsideTheSandboxRange) {
  TempDir ws;
  give_to_test_user(ws.path());
  const std::string probe = R"PY(
open("/tmp/f", "w").write("x")
t("chown_tmp_5", lambda: os.chown("/tmp/f", 5, 5))
out("tmp_owner", "%d:%d" % (os.stat("/tmp/f").st_uid, os.stat("/tmp/f").st_gid))
t("chown_tmp_65536", lambda: os.chown("/tmp/f", 65536, 65536))
t("chown_tmp_2000000000", lambda: os.chown("/tmp/f", 2000000000, -1))
t("chown_tmp_host_root", lambda: os.chown("/tmp/f", 4294967294, 4294967294))
os.chdir("/workspace")
open("a", "w").write("x"); os.mkdir("d"); os.symlink("a", "l")
t("chown_ws_5", lambda: os.chown("a", 5, 5))
t("chown_ws_gid_5", lambda: os.chown("a", -1, 5))
t("chown_ws_nobody", lambda: os.chown("d", 65534, 65534))
t("lchown_ws_5", lambda: os.lchown("l", 5, 5))
t("chown_ws_0", lambda: os.chown("d", 0, 0))
# A process of another sandbox uid creating or taking files there.
sys.stdout.flush()
pid = os.fork()
if pid == 0:
    os.setgroups([]); os.setresgid(5, 5, 5); os.setresuid(5, 5, 5)
    t("create_as_5", lambda: open("/workspace/by5", "w").write("x"))
    t("mkdir_as_5", lambda: os.mkdir("/workspace/d5"))
    os._exit(0)
os.waitpid(pid, 0)
# A file owned by uid 5 elsewhere, copied in with its owner.
t("copy_keep_owner", lambda: (open("b", "w").write("y"), os.chown("b", 5, 5)))
)PY";
  Outcome r = py(probe, {"--cap-add", "build", "--workspace", ws.path()});
  auto m = kv(r.out);
  ASSERT_EQ(m.size(), 13u) << r.out << r.err;
  // Negative control: inside its own range chown works.
  EXPECT_EQ(m["chown_tmp_5"], "0");
  EXPECT_EQ(m["tmp_owner"], "5:5");
  EXPECT_EQ(m["chown_ws_0"], "0");
  // Ids the sandbox does not map do not exist for it.
  EXPECT_EQ(m["chown_tmp_65536"], e(EINVAL));
  EXPECT_EQ(m["chown_tmp_2000000000"], e(EINVAL));
  EXPECT_EQ(m["chown_tmp_host_root"], e(EINVAL));
  // In the workspace only the owner is mapped: nothing else can be stored.
  for (const char* k : {"chown_ws_5", "chown_ws_gid_5", "chown_ws_nobody", "lchown_ws_5", "create_as_5", "mkdir_as_5",
                        "copy_keep_owner"})
    EXPECT_NE(m[k], "0") << k;

  // On the host: everything there belongs to the workspace's owner.
  int seen = 0;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(ws.path())) {
    struct stat st{};
    ASSERT_EQ(lstat(entry.path().c_str(), &st), 0);
    ++seen;
    EXPECT_EQ(st.st_uid, test_user().pw_uid) << entry.path();
    EXPECT_EQ(st.st_gid, test_user().pw_gid) << entry.path();
  }
  EXPECT_GE(seen, 4) << "a, d, l, b";
}

// ---------------------------------------------------------------------------
// 4. CAP_SETUID: changing to another uid gives the capabilities up for good.

TEST(AttackCaps, ChangingUidDropsCapabilitiesForGood) {
  const std::string probe = R"PY(
open("/tmp/f", "w").write("x")
# Negative control: with the saved uid still 0 the way back is open.
t("to_1000_keep_saved", lambda: os.setresuid(1000, 1000, 0))
t("back_to_0", lambda: os.setresuid(0, 0, 0))
caps("back_")
# CAP_SETPCAP may not turn the setuid fixup off (the bit is locked at 0),
# which would keep the capabilities across the change; the same bits again
# are accepted (control).
bits = libc.prctl(27, 0, 0, 0, 0)
prctl("fixup_off", 28, bits | 0x4, 0, 0, 0)
prctl("same_bits", 28, bits, 0, 0, 0)
# The real change.
t("setgroups", lambda: os.setgroups([]))
t("setresgid", lambda: os.setresgid(1000, 1000, 1000))
t("setresuid", lambda: os.setresuid(1000, 1000, 1000))
caps("after_")
t("setresuid_0", lambda: os.setresuid(0, 0, 0))
t("setuid_0", lambda: os.setuid(0))
t("setresgid_0", lambda: os.setresgid(0, 0, 0))
prctl("ambient_raise", 47, 2, 0, 0, 0)  # PR_CAP_AMBIENT, RAISE, CAP_CHOWN
hdr = struct.pack("II", 0x20080522, 0)
data = ctypes.create_string_buffer(struct.pack("IIIIII", 0x1, 0x1, 0x1, 0, 0, 0))
ctypes.set_errno(0)
out("capset_raise", 0 if libc.capset(hdr, data) == 0 else ctypes.get_errno())
t("chown", lambda: os.chown("/tmp/f", 1000, 1000))
t("kill_init", lambda: os.kill(1, signal.SIGTERM))
sys.stdout.flush()
os.execv("/bin/sh", ["sh", "-c", "grep -E '^Cap(Prm|Eff|Amb)' /proc/self/status | sed 's/^/exec_/; s/:\t/ /'"])
)PY";
  Outcome r = py(probe, {"--cap-add", "build"});
  auto m = kv(r.out);
  const std::string mask = hex16(build_mask()), zero = hex16(0);
  ASSERT_EQ(m.count("exec_CapAmb"), 1u) << r.out << r.err;
  EXPECT_EQ(m["to_1000_keep_saved"], "0");
  EXPECT_EQ(m["back_to_0"], "0");
  EXPECT_EQ(m["back_CapEff"], mask);
  EXPECT_EQ(m["fixup_off"], e(EPERM));
  EXPECT_EQ(m["same_bits"], "0");
  EXPECT_EQ(m["setresuid"], "0");
  for (const char* k : {"after_CapPrm", "after_CapEff", "after_CapAmb", "exec_CapPrm", "exec_CapEff", "exec_CapAmb"})
    EXPECT_EQ(m[k], zero) << k;
  EXPECT_EQ(m["setresuid_0"], e(EPERM));
  EXPECT_EQ(m["setuid_0"], e(EPERM));
  EXPECT_EQ(m["setresgid_0"], e(EPERM));
  EXPECT_EQ(m["ambient_raise"], e(EPERM));
  EXPECT_EQ(m["capset_raise"], e(EPERM));
  EXPECT_EQ(m["chown"], e(EPERM));
  EXPECT_EQ(m["kill_init"], e(EPERM));
}

// ---------------------------------------------------------------------------
// 5. The seccomp policy still denies what capabilities would otherwise
// allow in a user namespace (mount, unshare, setns, chroot, ptrace,
// sethostname), the kernel refuses what needs host capabilities (modules,
// kexec, device nodes) and what was not kept stays refused (raw sockets).

const char* const kDeniedProbe = R"PY(
os.makedirs("/tmp/mnt", exist_ok=True)
iso("mount", 165, b"capsprobe", b"/tmp/mnt", b"tmpfs", 0, 0)
iso("unshare", 272, 0x10000000 | 0x00020000)
iso("unshare_mnt", 272, 0x00020000)
fd = os.open("/proc/self/ns/uts", os.O_RDONLY)
iso("setns", 308, fd, 0x04000000)
iso("finit_module", 313, 0, b"", 0)
iso("init_module", 175, 0, 0, b"")
iso("kexec_load", 246, 0, 0, 0, 0)
iso("sethostname", 170, b"capsprobe", 9)
iso("chroot", 161, b"/tmp")
sys.stdout.flush()
child = os.fork()
if child == 0:
    time.sleep(30); os._exit(0)
iso("ptrace_sibling", 101, 16, child, 0, 0)  # PTRACE_ATTACH
t("sibling_mem", lambda: os.close(os.open("/proc/%d/mem" % child, os.O_RDONLY)))
t("init_fd", lambda: os.listdir("/proc/1/fd"))
t("init_mem", lambda: os.close(os.open("/proc/1/mem", os.O_RDONLY)))
os.kill(child, 9); os.waitpid(child, 0)
t("sysctl_write", lambda: open("/proc/sys/kernel/domainname", "w").write("capsprobe"))
t("raw_socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close())
t("mknod_chr", lambda: os.mknod("/tmp/mem", 0o20666, os.makedev(1, 1)))
t("mknod_fifo", lambda: os.mknod("/tmp/fifo", 0o10666))
out("mounted", int("capsprobe" in open("/proc/self/mountinfo").read()))
)PY";

TEST(AttackCaps, DeniedCallsStayDeniedWithCapabilitiesKept) {
  std::string hostname_before = host("hostname");
  std::string domain_before = read_file("/proc/sys/kernel/domainname");
  Outcome r = py(kDeniedProbe, {"--cap-add", "build"});
  auto m = kv(r.out);
  ASSERT_EQ(m.size(), 18u) << r.out << r.err;
  auto d = denied(r.report);
  for (const char* k : {"mount", "unshare", "unshare_mnt", "setns", "finit_module", "init_module", "kexec_load",
                        "sethostname", "chroot", "ptrace_sibling"})
    EXPECT_EQ(m[k], e(EPERM)) << k;
  for (const char* k : {"mount", "unshare", "setns", "finit_module", "init_module", "kexec_load", "sethostname",
                        "chroot", "ptrace"})
    EXPECT_GE(d[k], 1) << k << " not reported as denied: " << r.report["denied_syscalls"].dump();
  EXPECT_EQ(m["init_fd"], e(EACCES));
  EXPECT_EQ(m["init_mem"], e(EACCES));
  EXPECT_EQ(m["sysctl_write"], e(EROFS));
  EXPECT_EQ(m["raw_socket"], e(EPERM));  // CAP_NET_RAW is not kept
  EXPECT_EQ(m["mknod_chr"], e(EPERM));   // CAP_MKNOD is not kept (and needs the host's)
  EXPECT_EQ(m["mounted"], "0");
  // Negative controls for the probes that can succeed in a sandbox: its
  // own child's memory and a fifo.
  EXPECT_EQ(m["sibling_mem"], "0");
  EXPECT_EQ(m["mknod_fifo"], "0");

  // Negative control: with the filter lifted (allow-all profile) and more
  // capabilities kept, the same probe gets through where the user namespace
  // allows it -- so the EPERMs above are the policy's -- yet the host is
  // untouched: its hostname, its domainname, its mount table, and the
  // calls that need host capabilities still fail.
  TempDir dir;
  Outcome open = py(kDeniedProbe, {"--cap-add", "build", "--cap-add", "CAP_SYS_ADMIN", "--cap-add", "CAP_NET_RAW",
                                   "--cap-add", "CAP_MKNOD", "--cap-add", "CAP_SYS_PTRACE", "--cap-add",
                                   "CAP_SYS_MODULE", "--seccomp-profile", allow_all_profile(dir)});
  auto o = kv(open.out);
  ASSERT_EQ(o.size(), 18u) << open.out << open.err;
  for (const char* k : {"unshare", "unshare_mnt", "setns", "sethostname", "chroot", "ptrace_sibling", "raw_socket"})
    EXPECT_EQ(o[k], "0") << k << "\n" << open.out;
  EXPECT_EQ(o["mount"], "0");
  EXPECT_EQ(o["mounted"], "1");
  EXPECT_TRUE(denied(open.report).empty()) << open.report.dump();
  for (const char* k : {"finit_module", "init_module", "kexec_load"}) EXPECT_NE(o[k], "0") << k;
  EXPECT_EQ(o["mknod_chr"], e(EPERM));
  EXPECT_EQ(o["init_fd"], e(EACCES));
  EXPECT_EQ(o["init_mem"], e(EACCES));
  EXPECT_EQ(host("hostname"), hostname_before);
  EXPECT_EQ(read_file("/proc/sys/kernel/domainname"), domain_before);
  EXPECT_EQ(read_file("/proc/self/mountinfo").find("capsprobe"), std::string::npos);
}

// --cap-add CAP_SYS_ADMIN is accepted (it is a capability name), but under
// the default policy it buys no mount, no namespace.
TEST(AttackCaps, SysAdminIsAcceptedButMountAndUnshareStayDenied) {
  const std::string probe = R"PY(
caps()
os.makedirs("/tmp/mnt", exist_ok=True)
iso("mount", 165, b"capsprobe", b"/tmp/mnt", b"tmpfs", 0, 0)
iso("umount_proc_mask", 166, b"/proc/acpi", 2)
iso("unshare", 272, 0x10000000 | 0x00020000)
iso("unshare_mnt", 272, 0x00020000)
iso("setns", 308, os.open("/proc/self/ns/mnt", os.O_RDONLY), 0)
iso("sethostname", 170, b"capsprobe", 9)
t("trusted_xattr", lambda: os.setxattr("/tmp/mnt", "trusted.capsprobe", b"x"))
t("immutable", lambda: __import__("fcntl").ioctl(os.open("/tmp/mnt", os.O_RDONLY), 0x40086602, struct.pack("l", 0x10)))
out("mounted", int("capsprobe" in open("/proc/self/mountinfo").read()))
)PY";
  Outcome r = py(probe, {"--cap-add", "CAP_SYS_ADMIN"});
  auto m = kv(r.out);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(m["CapEff"], hex16(1ull << CAP_SYS_ADMIN)) << r.out;
  for (const char* k : {"mount", "umount_proc_mask", "unshare", "unshare_mnt", "setns", "sethostname"})
    EXPECT_EQ(m[k], e(EPERM)) << k;
  EXPECT_NE(m["trusted_xattr"], "0");  // trusted.* needs the host's CAP_SYS_ADMIN
  EXPECT_NE(m["immutable"], "0");      // FS_IOC_SETFLAGS immutable needs the host's CAP_LINUX_IMMUTABLE
  EXPECT_EQ(m["mounted"], "0");
  auto d = denied(r.report);
  for (const char* k : {"mount", "umount2", "unshare", "setns", "sethostname"}) EXPECT_GE(d[k], 1) << k;
  // Negative control: the same capability without the filter mounts (in
  // the sandbox's own mount namespace only: the host's table never has it).
  TempDir dir;
  Outcome open = py(probe, {"--cap-add", "CAP_SYS_ADMIN", "--seccomp-profile", allow_all_profile(dir)});
  auto o = kv(open.out);
  EXPECT_EQ(o["mount"], "0") << open.out << open.err;
  EXPECT_EQ(o["mounted"], "1");
  EXPECT_EQ(read_file("/proc/self/mountinfo").find("capsprobe"), std::string::npos);
}

// ---------------------------------------------------------------------------
// 5b. CAP_SYS_CHROOT: chroot is denied by the default policy; with the
// policy lifted the classic chroot-escape loop leaves the chroot but stops
// at the sandbox's (pivoted, detached) root: host paths stay out of reach.

TEST(AttackCaps, ChrootEscapeStopsAtTheSandboxRoot) {
  TempDir marker_dir;
  write_file(marker_dir / "host-only-marker", "host\n");
  ASSERT_TRUE(exists(marker_dir / "host-only-marker"));  // negative control: the host sees it
  std::string probe = R"PY(
os.makedirs("/tmp/jail/inner", exist_ok=True)
open("/tmp/jail/inner/jailmark", "w").write("j")
def escape():
    os.chroot("/tmp/jail")
    out("in_jail", int(os.path.exists("/inner/jailmark")))
    for i in range(256): os.chdir("..")
    os.chroot(".")
    out("escaped_jail", int(os.path.exists("/tmp/jail/inner/jailmark")))
    out("host_marker", int(os.path.exists(MARKER)))
    out("host_marker_dir", int(os.path.exists(os.path.dirname(MARKER))))
    out("hostname_file", open("/etc/hostname").read().strip())
    fd = os.open("/", os.O_RDONLY)
    for i in range(64): fd2 = os.open("..", os.O_RDONLY, dir_fd=fd); os.close(fd); fd = fd2
    out("dotdot_fd_is_root", int(os.path.samestat(os.fstat(fd), os.stat("/"))))
t("chroot", escape)
)PY";
  probe = "MARKER = '" + (marker_dir / "host-only-marker") + "'\n" + probe;
  Outcome r = py(probe, {"--cap-add", "build"});
  auto m = kv(r.out);
  EXPECT_EQ(m["chroot"], e(EPERM)) << r.out << r.err;
  EXPECT_EQ(m.count("in_jail"), 0u);
  EXPECT_GE(denied(r.report)["chroot"], 1);

  TempDir dir;
  Outcome open = py(probe, {"--cap-add", "build", "--seccomp-profile", allow_all_profile(dir)});
  auto o = kv(open.out);
  // Negative control: the chroot happens and the escape loop does leave it.
  EXPECT_EQ(o["in_jail"], "1") << open.out << open.err;
  EXPECT_EQ(o["escaped_jail"], "1");
  // But it ends at the sandbox's root.
  EXPECT_EQ(o["host_marker"], "0");
  EXPECT_EQ(o["host_marker_dir"], "0");
  EXPECT_EQ(o["hostname_file"], "sandbox");
  EXPECT_EQ(o["dotdot_fd_is_root"], "1");
  EXPECT_EQ(o["chroot"], "0");
}

// ---------------------------------------------------------------------------
// 6. CAP_KILL: host processes, even one running as the very host uid that
// is the sandbox's root, are out of reach (pid namespace).

pid_t spawn_sleep(uid_t uid, gid_t gid) {
  pid_t p = fork();
  if (p == 0) {
    if (setgroups(0, nullptr) != 0 || setresgid(gid, gid, gid) != 0 || setresuid(uid, uid, uid) != 0) _exit(126);
    execl("/bin/sleep", "sleep", "30", static_cast<char*>(nullptr));
    _exit(127);
  }
  return p;
}

TEST(AttackCaps, KillDoesNotReachHostProcesses) {
  // The host uid of the sandbox's root (first line of its uid_map).
  Outcome map = sh("cat /proc/self/uid_map", {"--cap-add", "build"});
  std::istringstream in(map.out);
  uint64_t inside = 1, outside = 0, count = 0;
  in >> inside >> outside >> count;
  ASSERT_EQ(inside, 0u) << map.out;
  ASSERT_GT(outside, 0u) << map.out;

  pid_t same_uid = spawn_sleep(static_cast<uid_t>(outside), static_cast<gid_t>(outside));
  pid_t root_owned = spawn_sleep(0, 0);
  ASSERT_GT(same_uid, 0);
  ASSERT_GT(root_owned, 0);
  std::this_thread::sleep_for(50ms);
  ASSERT_EQ(kill(same_uid, 0), 0);
  ASSERT_EQ(kill(root_owned, 0), 0);

  std::string probe = R"PY(
sys.stdout.flush()
child = os.fork()
if child == 0:
    time.sleep(30); os._exit(0)
for i, pid in enumerate(HOST):
    t("see_%d" % i, lambda: os.kill(pid, 0))
    sc("pidfd_%d" % i, 434, pid, 0)
    t("kill_%d" % i, lambda: os.kill(pid, signal.SIGKILL))
out("procs", len([p for p in os.listdir("/proc") if p.isdigit()]))
t("kill_all", lambda: os.kill(-1, signal.SIGKILL))
pid, st = os.waitpid(child, 0)
out("sibling_killed", int(os.WIFSIGNALED(st) and os.WTERMSIG(st) == 9))
)PY";
  probe = "HOST = [" + std::to_string(same_uid) + ", " + std::to_string(root_owned) + "]\n" + probe;
  Outcome r = py(probe, {"--cap-add", "build"});
  auto m = kv(r.out);
  std::this_thread::sleep_for(50ms);
  // Still there: running, not reaped, not a zombie.
  int s1 = 0, s2 = 0;
  pid_t w1 = waitpid(same_uid, &s1, WNOHANG), w2 = waitpid(root_owned, &s2, WNOHANG);
  EXPECT_EQ(w1, 0) << "the host process with the sandbox root's uid was killed";
  EXPECT_EQ(w2, 0) << "the host root process was killed";
  // Negative control: from the host (where they are visible) a kill works.
  for (auto [p, w] : {std::pair{same_uid, w1}, std::pair{root_owned, w2}}) {
    if (w != 0) continue;  // already gone (reported above)
    int status = 0;
    EXPECT_EQ(kill(p, SIGKILL), 0);
    ASSERT_EQ(waitpid(p, &status, 0), p);
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  }

  ASSERT_EQ(m.count("sibling_killed"), 1u) << r.out << r.err;
  for (const char* k : {"see_0", "see_1", "pidfd_0", "pidfd_1", "kill_0", "kill_1"}) EXPECT_EQ(m[k], e(ESRCH)) << k;
  EXPECT_EQ(m["procs"], "3");  // init, python, its child
  // Negative control inside: kill(-1) does kill what the sandbox may kill.
  EXPECT_EQ(m["kill_all"], "0");
  EXPECT_EQ(m["sibling_killed"], "1");
}

// ---------------------------------------------------------------------------
// 7/8. A command that does not run as root keeps nothing, and cannot raise
// an ambient capability (it has none in its permitted set).

TEST(AttackCaps, NonRootCommandKeepsNothingAndCannotRaiseAmbient) {
  const std::string probe = R"PY(
caps()
open("/tmp/f", "w").write("x")
prctl("ambient_raise", 47, 2, 0, 0, 0)  # PR_CAP_AMBIENT, RAISE, CAP_CHOWN
t("chown", lambda: os.chown("/tmp/f", 5, 5))
t("setresuid_0", lambda: os.setresuid(0, 0, 0))
open("/tmp/mode0", "w").write("x"); os.chmod("/tmp/mode0", 0)
t("read_mode0", lambda: open("/tmp/mode0").read())
# last: for root this drops all but CAP_CHOWN
hdr = struct.pack("II", 0x20080522, 0)
data = ctypes.create_string_buffer(struct.pack("IIIIII", 0x1, 0x1, 0x1, 0, 0, 0))
ctypes.set_errno(0)
out("capset_raise", 0 if libc.capset(hdr, data) == 0 else ctypes.get_errno())
)PY";
  Outcome r = py(probe, {"--cap-add", "build", "--user", "1000"});
  auto m = kv(r.out);
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  for (const char* k : {"CapInh", "CapPrm", "CapEff", "CapAmb"}) EXPECT_EQ(m[k], hex16(0)) << k;
  EXPECT_EQ(m["CapBnd"], hex16(build_mask()));  // the bound, for the root the command is not
  EXPECT_EQ(m["ambient_raise"], e(EPERM));
  EXPECT_EQ(m["capset_raise"], e(EPERM));
  EXPECT_EQ(m["chown"], e(EPERM));
  EXPECT_EQ(m["setresuid_0"], e(EPERM));
  EXPECT_EQ(m["read_mode0"], e(EACCES));
  // Negative control: the same probe as root does hold and raise them.
  Outcome root = py(probe, {"--cap-add", "build"});
  auto o = kv(root.out);
  EXPECT_EQ(o["CapEff"], hex16(build_mask())) << root.out << root.err;
  EXPECT_EQ(o["ambient_raise"], "0");
  EXPECT_EQ(o["capset_raise"], "0");
  EXPECT_EQ(o["chown"], "0");
  EXPECT_EQ(o["read_mode0"], "0");
}

// ---------------------------------------------------------------------------
// Every capability this kernel has, kept at once: under the default policy
// what they would allow in a user namespace is denied, and what they would
// allow on the host needs the host's own capabilities, which no sandbox has.

const char* const kAllCaps[] = {
    "CAP_CHOWN",       "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER",         "CAP_FSETID",
    "CAP_KILL",        "CAP_SETGID",       "CAP_SETUID",          "CAP_SETPCAP",        "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",        "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",   "CAP_SYS_MODULE",   "CAP_SYS_RAWIO",       "CAP_SYS_CHROOT",     "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",   "CAP_SYS_ADMIN",    "CAP_SYS_BOOT",        "CAP_SYS_NICE",       "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",    "CAP_SYS_TTY_CONFIG", "CAP_MKNOD",         "CAP_LEASE",          "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP",    "CAP_MAC_OVERRIDE",    "CAP_MAC_ADMIN",      "CAP_SYSLOG",
    "CAP_WAKE_ALARM",  "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",     "CAP_PERFMON",        "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE"};

TEST(AttackCaps, EveryCapabilityKeptStillStaysInside) {
  int cap_last = std::atoi(read_file("/proc/sys/kernel/cap_last_cap").c_str());
  int known = static_cast<int>(std::size(kAllCaps)) - 1;
  int last = std::min(cap_last, known);
  std::vector<std::string> flags;
  for (int i = 0; i <= last; ++i) flags.insert(flags.end(), {"--cap-add", kAllCaps[i]});
  TempDir ws, t;
  give_to_test_user(ws.path());
  give_to_test_user(t.path());
  write_file(t / "secret", "host root secret\n", 0600);
  write_file(ws / "file", "workspace file\n", 0644);
  give_to_test_user(ws / "file");
  std::vector<std::string> mounts = {"--workspace", ws.path(), "--ro-bind", t.path() + ":/t"};
  const std::string probe = R"PY(
caps()
t("nice_-20", lambda: os.setpriority(os.PRIO_PROCESS, 0, -20))
t("sched_fifo", lambda: os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10)))
sc("rlimit_raise", 160, 7, struct.pack("QQ", 1 << 24, 1 << 24))   # setrlimit NOFILE
sc("ioprio_rt", 251, 1, 0, 1 << 13)
sc("settimeofday", 164, struct.pack("qq", 0, 0), 0)
t("sys_write", lambda: open("/sys/kernel/mm/transparent_hugepage/enabled", "w").write("never"))
t("read_secret", lambda: open("/t/secret").read())
t("security_xattr", lambda: os.setxattr("/workspace/file", "security.capsprobe", b"1"))
t("trusted_xattr", lambda: os.setxattr("/workspace/file", "trusted.capsprobe", b"1"))
import fcntl
t("immutable", lambda: fcntl.ioctl(os.open("/workspace/file", os.O_RDONLY), 0x40086602, struct.pack("l", 0x10)))
t("kcore", lambda: open("/proc/kcore", "rb").read(1))
t("init_environ", lambda: open("/proc/1/environ", "rb").read())
iso("mount", 165, b"capsprobe", b"/tmp", b"tmpfs", 0, 0)
iso("unshare", 272, 0x10000000)
iso("bpf", 321, 0, 0, 0)
iso("perf_event_open", 298, 0, 0, -1, -1, 0)
iso("reboot", 169, 0xfee1dead, 672274793, 0x4321fedc, 0)
iso("syslog", 103, 3, 0, 0)
iso("iopl", 172, 3)
iso("sethostname", 170, b"capsprobe", 9)
out("interfaces", ",".join(sorted(os.listdir("/sys/class/net"))))
open("/tmp/mode0", "w").write("x"); os.chmod("/tmp/mode0", 0)
t("read_mode0", lambda: open("/tmp/mode0").read())
)PY";
  flags.insert(flags.end(), mounts.begin(), mounts.end());
  std::string hostname_before = read_file("/proc/sys/kernel/hostname");
  Outcome r = py(probe, flags);
  auto m = kv(r.out);
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  uint64_t all = last >= 63 ? ~0ull : (uint64_t{1} << (last + 1)) - 1;
  EXPECT_EQ(m["CapEff"], hex16(all));
  EXPECT_EQ(m["CapBnd"], hex16(all));
  EXPECT_EQ(m["nice_-20"], e(EACCES));
  EXPECT_EQ(m["sched_fifo"], e(EPERM));
  EXPECT_EQ(m["rlimit_raise"], e(EPERM));
  EXPECT_EQ(m["ioprio_rt"], e(EPERM));
  EXPECT_EQ(m["settimeofday"], e(EPERM));
  EXPECT_EQ(m["sys_write"], e(EROFS));
  EXPECT_EQ(m["read_secret"], e(EACCES));
  EXPECT_EQ(m["security_xattr"], e(EPERM));
  EXPECT_EQ(m["trusted_xattr"], e(EPERM));
  EXPECT_EQ(m["immutable"], e(EPERM));
  EXPECT_NE(m["kcore"], "0");
  EXPECT_EQ(m["init_environ"], e(EACCES));
  for (const char* k : {"mount", "unshare", "bpf", "perf_event_open", "reboot", "syslog", "iopl", "sethostname"})
    EXPECT_EQ(m[k], e(EPERM)) << k;
  EXPECT_EQ(m["interfaces"], "lo");
  EXPECT_EQ(m["read_mode0"], "0");  // negative control: the sandbox's own capabilities work
  EXPECT_EQ(read_file(t / "secret"), "host root secret\n");
  char names[256];
  EXPECT_EQ(listxattr((ws / "file").c_str(), names, sizeof names), 0);  // no xattr got there
  EXPECT_EQ(read_file(ws / "file"), "workspace file\n");
  EXPECT_EQ(read_file("/proc/sys/kernel/hostname"), hostname_before);
  // Negative control: without --cap-add the mode-0 file is refused.
  Outcome plain = py(probe, mounts);
  EXPECT_EQ(kv(plain.out)["read_mode0"], e(EACCES)) << plain.out << plain.err;
}

// ---------------------------------------------------------------------------
// CAP_SETFCAP: file capabilities written inside are namespaced (v3, with the
// workspace owner as their root id), so on the host they grant nothing --
// and inside, no_new_privs keeps exec from granting more than is held.

TEST(AttackCaps, FileCapabilitiesWrittenInsideGrantNothingOnTheHost) {
  TempDir ws;
  give_to_test_user(ws.path());
  // v2 file capabilities: effective, permitted = DAC_OVERRIDE | SYS_ADMIN.
  const uint32_t wanted = (1u << CAP_DAC_OVERRIDE) | (1u << CAP_SYS_ADMIN);
  std::string probe = R"PY(
import shutil
shutil.copy("/usr/bin/grep", "/workspace/g")
shutil.copy("/usr/bin/grep", "/workspace/g3")
v2 = struct.pack("<IIIII", 0x02000001, WANTED, WANTED, 0, 0)
t("setfcap_v2", lambda: os.setxattr("/workspace/g", "security.capability", v2))
# v3 naming a root id of its choice: only its own root maps.
t("setfcap_v3_root0", lambda: os.setxattr("/workspace/g3", "security.capability", struct.pack("<IIIIII", 0x03000001, WANTED, 0, 0, 0, 0)))
t("setfcap_v3_root5", lambda: os.setxattr("/workspace/g3", "security.capability", struct.pack("<IIIIII", 0x03000001, WANTED, 0, 0, 0, 5)))
sys.stdout.flush()
r = os.popen("/workspace/g CapEff /proc/self/status").read().split()
out("exec_CapEff", r[1] if len(r) > 1 else "none")
shutil.copy("/usr/bin/grep", "/tmp/g")
t("setfcap_tmp", lambda: os.setxattr("/tmp/g", "security.capability", v2))
r = os.popen("/tmp/g CapEff /proc/self/status").read().split()
out("exec_tmp_CapEff", r[1] if len(r) > 1 else "none")
)PY";
  probe = "WANTED = " + std::to_string(wanted) + "\n" + probe;
  Outcome r = py(probe, {"--cap-add", "build", "--workspace", ws.path()});
  auto m = kv(r.out);
  ASSERT_EQ(m.count("exec_tmp_CapEff"), 1u) << r.out << r.err;
  // Negative control: CAP_SETFCAP works inside.
  EXPECT_EQ(m["setfcap_v2"], "0");
  EXPECT_EQ(m["setfcap_v3_root0"], "0");
  EXPECT_EQ(m["setfcap_tmp"], "0");
  EXPECT_EQ(m["setfcap_v3_root5"], e(EINVAL));  // a root id the mount cannot store
  // no_new_privs (and nosuid mounts): exec gains nothing beyond what is held.
  for (const char* k : {"exec_CapEff", "exec_tmp_CapEff"}) {
    uint64_t eff = std::stoull(m[k], nullptr, 16);
    EXPECT_EQ(eff & ~build_mask(), 0u) << k << " " << m[k];
    EXPECT_EQ(eff & (1ull << CAP_SYS_ADMIN), 0u) << k;
  }

  // On the host: the xattr is v3 and names the workspace's owner as its
  // root, so outside that owner's own user namespaces it is ignored.
  for (const char* f : {"g", "g3"}) {
    uint32_t raw[6] = {};  // struct vfs_ns_cap_data: magic_etc, 2 x {permitted, inheritable}, rootid
    ssize_t n = getxattr((ws / f).c_str(), "security.capability", raw, sizeof raw);
    ASSERT_EQ(n, 24) << f << ": not a v3 (namespaced) file capability";
    EXPECT_EQ(raw[0] & 0xff000000u, 0x03000000u) << f;  // VFS_CAP_REVISION_3
    EXPECT_EQ(raw[1], wanted) << f;
    EXPECT_EQ(raw[5], test_user().pw_uid) << f << ": root id";
    // Run on the host by an unprivileged user: no capability.
    EXPECT_EQ(as_test_user(ws / f + " CapEff /proc/self/status"), "CapEff:\t0000000000000000\n") << f;
  }
  // Negative control: the same v2 capabilities written by host root do
  // grant them to the same unprivileged user (so the probe would see it).
  std::string h = ws / "host-g";
  ASSERT_EQ(std::system(("cp /usr/bin/grep " + h).c_str()), 0);
  const uint32_t v2[5] = {0x02000001u, wanted, wanted, 0, 0};  // VFS_CAP_REVISION_2 | effective
  ASSERT_EQ(setxattr(h.c_str(), "security.capability", v2, sizeof v2, 0), 0);
  EXPECT_EQ(as_test_user(h + " CapEff /proc/self/status"), "CapEff:\t" + hex16(wanted) + "\n");
}

// ---------------------------------------------------------------------------
// CAP_FSETID / CAP_FOWNER: a setuid or setgid file already in the workspace
// cannot be rewritten with its bit kept (it would then run as the
// workspace's owner for every host user), nor the bit set again.

TEST(AttackCaps, SetidFileInWorkspaceLosesItsBitWhenWritten) {
  TempDir ws;
  give_to_test_user(ws.path());
  for (const char* f : {"suid", "sgid", "chowned", "untouched"}) {
    ASSERT_EQ(std::system(("cp /usr/bin/id " + (ws / f)).c_str()), 0);
    give_to_test_user(ws / f);
  }
  chmod((ws / "suid").c_str(), 04755);
  chmod((ws / "sgid").c_str(), 02755);
  chmod((ws / "chowned").c_str(), 04755);
  chmod((ws / "untouched").c_str(), 04755);
  const std::string probe = R"PY(
payload = open("/usr/bin/whoami", "rb").read()
def rewrite(path):
    fd = os.open(path, os.O_WRONLY)
    os.write(fd, payload); os.close(fd)
t("write_suid", lambda: rewrite("/workspace/suid"))
t("truncate_sgid", lambda: os.truncate("/workspace/sgid", 10))
t("chmod_suid", lambda: os.chmod("/workspace/suid", 0o4755))
t("chmod_sgid", lambda: os.chmod("/workspace/sgid", 0o2755))
t("chown_to_itself", lambda: os.chown("/workspace/chowned", 0, 0))
out("chowned_mode", oct(os.stat("/workspace/chowned").st_mode & 0o7777))
out("untouched_mode", oct(os.stat("/workspace/untouched").st_mode & 0o7777))
)PY";
  Outcome r = py(probe, {"--cap-add", "build", "--workspace", ws.path()});
  auto m = kv(r.out);
  ASSERT_EQ(m.size(), 7u) << r.out << r.err;
  EXPECT_EQ(m["write_suid"], "0");
  EXPECT_EQ(m["truncate_sgid"], "0");
  EXPECT_EQ(m["chmod_suid"], e(EPERM));  // the seccomp policy: no setid mode, capabilities or not
  EXPECT_EQ(m["chmod_sgid"], e(EPERM));
  EXPECT_EQ(m["chown_to_itself"], "0");
  EXPECT_EQ(m["chowned_mode"], "0o755");  // a chown always clears the bits
  for (const char* f : {"suid", "sgid", "chowned"}) {
    struct stat st{};
    ASSERT_EQ(stat((ws / f).c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & (S_ISUID | S_ISGID), 0u) << f << ": mode " << std::oct << st.st_mode;
    EXPECT_EQ(st.st_uid, test_user().pw_uid);
  }
  // Negative control: the detector sees a setuid bit where one is -- the
  // file the sandbox left alone keeps it, inside and on the host.
  EXPECT_EQ(m["untouched_mode"], "0o4755");
  struct stat st{};
  ASSERT_EQ(stat((ws / "untouched").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 04755u);
}

// ---------------------------------------------------------------------------
// 9. Bad names are refused before anything is made.

TEST(AttackCaps, BadCapabilityNamesAreRefusedAndLeaveNothing) {
  Leftovers before = leftovers();
  std::string cap_last = read_file("/proc/sys/kernel/cap_last_cap");
  int beyond = std::atoi(cap_last.c_str()) + 1;
  for (const std::string& bad :
       std::vector<std::string>{"CAP_BOGUS", "", "CAP_CHOWNX", "all", "ALL", "CAP_LAST_CAP", "-1", "64",
                                std::to_string(beyond), "21", "cap_sys_admin", "CAP_SYS_ADMIN ", "CAP_CHOWN,CAP_SYS_ADMIN"}) {
    Outcome r = sh("echo ran", {"--cap-add", "CAP_CHOWN", "--cap-add", bad});
    EXPECT_EQ(r.status, 125) << "[" << bad << "] " << r.err;
    EXPECT_EQ(r.out, "") << bad;
    EXPECT_NE(r.err.find("'" + bad + "'"), std::string::npos) << "[" << bad << "] " << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
  // Negative control: a good name runs.
  Outcome ok = sh("grep CapEff /proc/self/status", {"--cap-add", "CAP_CHOWN"});
  EXPECT_EQ(ok.status, 0) << ok.err;
  EXPECT_EQ(ok.out, "CapEff:\t" + hex16(1ull << CAP_CHOWN) + "\n");
  // Nothing left: other test processes may run sandboxes meanwhile, so
  // wait for the counts to come back to what they were.
  Leftovers after;
  for (int i = 0; i < 100; ++i) {
    after = leftovers();
    if (after.processes <= before.processes && after.cgroups <= before.cgroups && after.mounts <= before.mounts) break;
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_LE(after.processes, before.processes) << before.describe() << " -> " << after.describe();
  EXPECT_LE(after.cgroups, before.cgroups) << before.describe() << " -> " << after.describe();
  EXPECT_LE(after.mounts, before.mounts) << before.describe() << " -> " << after.describe();
}

// ---------------------------------------------------------------------------
// A warm pool never hands a sandbox made with capabilities to a request
// without them (nor the reverse): the request starts cold instead.

class PoolOf {
 public:
  PoolOf(const std::string& socket, std::vector<std::string> flags) : socket_(socket) {
    std::vector<std::string> args = {"pool", "--socket", socket, "--size", "1"};
    args.insert(args.end(), flags.begin(), flags.end());
    pid_ = spawn_ultari(args);
    auto deadline = std::chrono::steady_clock::now() + 20s;
    while (!exists(socket) && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(5ms);
    while (groups_of(pid_) < 1 && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(5ms);
    std::this_thread::sleep_for(100ms);
  }
  ~PoolOf() {
    kill(pid_, SIGTERM);
    waitpid(pid_, nullptr, 0);
  }
  const std::string& socket() const { return socket_; }

 private:
  std::string socket_;
  pid_t pid_ = -1;
};

TEST(AttackCaps, PoolNeverMixesCapabilities) {
  TempDir dir;
  PoolOf with(dir / "with.sock", {"--cap-add", "build"});
  PoolOf without(dir / "without.sock", {});
  auto run = [](const PoolOf& pool, std::vector<std::string> flags) {
    std::vector<std::string> args = {"run", "--pool", pool.socket()};
    args.insert(args.end(), flags.begin(), flags.end());
    args.insert(args.end(), {"--", "grep", "CapEff", "/proc/self/status"});
    return ultari(args);
  };
  const std::string none = "CapEff:\t" + hex16(0) + "\n", build = "CapEff:\t" + hex16(build_mask()) + "\n";
  Outcome a = run(with, {});
  EXPECT_EQ(a.out, none) << a.err;
  EXPECT_NE(a.err.find("differ in capabilities"), std::string::npos) << a.err;
  Outcome b = run(without, {"--cap-add", "build"});
  EXPECT_EQ(b.out, build) << b.err;
  EXPECT_NE(b.err.find("differ in capabilities"), std::string::npos) << b.err;
  // Negative control: a matching request is served warm (no warning).
  Outcome c = run(with, {"--cap-add", "build"});
  EXPECT_EQ(c.out, build) << c.err;
  EXPECT_EQ(c.err.find("not used"), std::string::npos) << c.err;
}

// ---------------------------------------------------------------------------
// 10. Rootless: the same capabilities inside, and they are the caller's
// own user namespace's -- on the host everything stays the caller's.

TEST(AttackCaps, RootlessCapabilitiesStayWithTheCaller) {
  Options as_user = rootless_options();
  const passwd& pw = test_user();
  TempDir ws, t;
  give_to_test_user(ws.path());
  write_file(t / "secret", "host root secret\n", 0600);
  const std::string probe = R"PY(
caps()
os.chdir("/workspace")
open("f", "w").write("x")
t("chown_0", lambda: os.chown("f", 0, 0))
t("chown_5", lambda: os.chown("f", 5, 5))
t("setresuid_1000", lambda: os.setresuid(1000, 1000, 1000))
t("setgroups", lambda: os.setgroups([0]))
t("read_secret", lambda: open("/t/secret").read())
open("/tmp/mode0", "w").write("x"); os.chmod("/tmp/mode0", 0)
t("read_mode0", lambda: open("/tmp/mode0").read())
import shutil
shutil.copy("/usr/bin/grep", "g")
t("setfcap", lambda: os.setxattr("g", "security.capability", struct.pack("<IIIII", 0x02000001, 2, 2, 0, 0)))
iso("mount", 165, b"capsprobe", b"/tmp", b"tmpfs", 0, 0)
iso("unshare", 272, 0x10000000)
)PY";
  std::vector<std::string> args = {"run", "--quiet", "--cap-add", "build", "--workspace", ws.path(), "--ro-bind",
                                   t.path() + ":/t", "--", "python3", "-c", std::string(kPy) + probe};
  Outcome r = ultari(args, as_user);
  auto m = kv(r.out);
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_EQ(m["CapEff"], hex16(build_mask()));
  EXPECT_EQ(m["CapAmb"], hex16(build_mask()));
  EXPECT_EQ(m["chown_0"], "0");
  EXPECT_EQ(m["chown_5"], e(EINVAL));         // only the caller is mapped
  EXPECT_EQ(m["setresuid_1000"], e(EINVAL));
  EXPECT_EQ(m["setgroups"], e(EPERM));        // setgroups is denied in a rootless map
  EXPECT_EQ(m["read_secret"], e(EACCES));     // host root's file: unmapped
  EXPECT_EQ(m["read_mode0"], "0");            // negative control: DAC_OVERRIDE is live
  EXPECT_EQ(m["setfcap"], "0");
  EXPECT_EQ(m["mount"], e(EPERM));
  EXPECT_EQ(m["unshare"], e(EPERM));
  // On the host, all of it is the caller's, and the file capability's root
  // id is the caller: it grants nothing outside the caller's namespaces.
  for (const auto& entry : std::filesystem::recursive_directory_iterator(ws.path())) {
    struct stat st{};
    ASSERT_EQ(lstat(entry.path().c_str(), &st), 0);
    EXPECT_EQ(st.st_uid, pw.pw_uid) << entry.path();
    EXPECT_EQ(st.st_gid, pw.pw_gid) << entry.path();
  }
  EXPECT_EQ(as_test_user(ws / "g CapEff /proc/self/status"), "CapEff:\t0000000000000000\n");
  EXPECT_EQ(read_file(t / "secret"), "host root secret\n");
  // Negative control: without --cap-add the same caller holds nothing.
  args.erase(args.begin() + 2, args.begin() + 4);  // no --cap-add
  Outcome plain = ultari(args, as_user);
  auto p = kv(plain.out);
  EXPECT_EQ(p["CapEff"], hex16(0)) << plain.out << plain.err;
  EXPECT_EQ(p["read_mode0"], e(EACCES));
}

}  // namespace
}  // namespace ultari::test
