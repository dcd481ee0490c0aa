#include <fcntl.h>
#include <sys/stat.h>
// Seccomp policy compiler, BPF interpreter, profile parser, cache, and the
// supervisor against the real kernel.
#include <gtest/gtest.h>
#include <linux/audit.h>
#include <sys/poll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "seccomp/policy_spec.h"
#include "seccomp/seccomp.h"
#include "util/error.h"

namespace ultari::seccomp {
namespace {

constexpr uint32_t kAllow = SECCOMP_RET_ALLOW;
constexpr uint32_t kNotify = SECCOMP_RET_USER_NOTIF;
constexpr uint32_t kEperm = SECCOMP_RET_ERRNO | EPERM;
constexpr uint32_t kEnosys = SECCOMP_RET_ERRNO | ENOSYS;

seccomp_data call(int nr, uint64_t a0 = 0, uint64_t a1 = 0, uint32_t arch = AUDIT_ARCH_X86_64) {
  seccomp_data d{};
  d.nr = nr;
  d.arch = arch;
  d.args[0] = a0;
  d.args[1] = a1;
  return d;
}

const CompiledPolicy& default_policy() {
  static const CompiledPolicy p = compile_policy("");
  return p;
}

struct Case {
  const char* what;
  seccomp_data data;
};

// --- default policy ---------------------------------------------------------

TEST(SeccompDefault, AllowsOrdinaryCalls) {
  const auto& p = default_policy();
  const Case cases[] = {
      {"read", call(SYS_read)},
      {"write", call(SYS_write)},
      {"openat", call(SYS_openat)},
      {"clone thread", call(SYS_clone, CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND |
                                           CLONE_THREAD | CLONE_SYSVSEM | CLONE_SETTLS |
                                           CLONE_PARENT_SETTID | CLONE_CHILD_CLEARTID)},
      {"clone fork", call(SYS_clone, SIGCHLD)},
      {"socket AF_INET", call(SYS_socket, AF_INET)},
      {"socket AF_UNIX", call(SYS_socket, AF_UNIX)},
      {"socket AF_NETLINK", call(SYS_socket, AF_NETLINK)},
      {"socket AF_INET6 high junk", call(SYS_socket, 0x10000000aULL)},
      {"ioctl TCGETS", call(SYS_ioctl, 1, 0x5401)},
      {"ioctl TIOCSTI+1", call(SYS_ioctl, 1, 0x5413)},
      {"ioctl 0xffffffff", call(SYS_ioctl, 1, 0xffffffffULL)},
      {"personality 0", call(SYS_personality, 0)},
      {"personality query", call(SYS_personality, 0xffffffffULL)},
      {"execve", call(SYS_execve)},
      {"futex", call(SYS_futex)},
      {"rseq", call(SYS_rseq)},
      {"statx", call(SYS_statx)},
      {"seccomp", call(SYS_seccomp)},
      {"landlock_create_ruleset", call(SYS_landlock_create_ruleset)},
      {"pidfd_open", call(SYS_pidfd_open)},
      {"memfd_create", call(SYS_memfd_create)},
      {"prctl", call(SYS_prctl)},
      {"vfork", call(SYS_vfork)},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(evaluate(p.kernel, c.data), kAllow) << c.what;
    EXPECT_EQ(evaluate(p.shadow, c.data), kAllow) << c.what;
  }
}

TEST(SeccompDefault, DeniesDangerousCalls) {
  const auto& p = default_policy();
  const Case cases[] = {
      {"mount", call(SYS_mount)},
      {"bpf", call(SYS_bpf)},
      {"keyctl", call(SYS_keyctl)},
      {"ptrace", call(SYS_ptrace)},
      {"io_uring_setup", call(SYS_io_uring_setup)},
      {"unshare", call(SYS_unshare)},
      {"setns", call(SYS_setns)},
      {"process_vm_readv", call(SYS_process_vm_readv)},
      {"name_to_handle_at", call(SYS_name_to_handle_at)},
      {"clone CLONE_NEWUSER", call(SYS_clone, CLONE_NEWUSER | SIGCHLD)},
      {"clone CLONE_NEWNET|THREAD", call(SYS_clone, CLONE_NEWNET | CLONE_THREAD | CLONE_VM)},
      {"socket AF_VSOCK", call(SYS_socket, 40)},
      {"socket AF_ALG", call(SYS_socket, 38)},
      {"socket AF_VSOCK high bits", call(SYS_socket, 0x100000028ULL)},
      {"ioctl TIOCSTI", call(SYS_ioctl, 0, 0x5412)},
      {"ioctl TIOCLINUX", call(SYS_ioctl, 0, 0x541C)},
      {"ioctl TIOCSTI high bits", call(SYS_ioctl, 0, 0xffffffff00005412ULL)},
      {"personality 0x1234", call(SYS_personality, 0x1234)},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(evaluate(p.kernel, c.data), kNotify) << c.what;
    EXPECT_EQ(evaluate(p.shadow, c.data), kEperm) << c.what;
  }
}

TEST(SeccompDefault, Clone3AndOpenat2AreEnosysInTheKernel) {
  const auto& p = default_policy();
  for (int nr : {SYS_clone3, SYS_openat2}) {
    EXPECT_EQ(evaluate(p.kernel, call(nr)), kEnosys) << nr;
    EXPECT_EQ(evaluate(p.shadow, call(nr)), kEnosys) << nr;
  }
}

seccomp_data args(int nr, std::initializer_list<uint64_t> values) {
  seccomp_data d = call(nr);
  size_t i = 0;
  for (uint64_t v : values) d.args[i++] = v;
  return d;
}

// No setuid/setgid bit can be set: a file planted in an idmapped workspace
// would run with its host owner's identity. Opening without creating never
// looks at the (garbage) mode argument.
TEST(SeccompDefault, SetidModeBitsAreDenied) {
  const auto& p = default_policy();
  const uint64_t junk = 0xdead0000ffffULL;  // a mode register nobody filled
  const uint64_t kAtFdcwd = static_cast<uint64_t>(AT_FDCWD);
  const Case allowed[] = {
      {"openat read, junk mode", args(SYS_openat, {kAtFdcwd, 0, O_RDONLY, junk})},
      {"openat create 0644", args(SYS_openat, {kAtFdcwd, 0, O_CREAT | O_WRONLY, 0644})},
      {"open create 0755", args(SYS_open, {0, O_CREAT | O_WRONLY, 0755})},
      {"chmod 0755", args(SYS_chmod, {0, 0755})},
      {"fchmod 01777", args(SYS_fchmod, {3, 01777})},
      {"fchmodat 0600", args(SYS_fchmodat, {kAtFdcwd, 0, 0600})},
      {"creat 0644", args(SYS_creat, {0, 0644})},
      {"mknodat fifo", args(SYS_mknodat, {kAtFdcwd, 0, S_IFIFO | 0644})},
  };
  for (const Case& c : allowed) EXPECT_EQ(evaluate(p.kernel, c.data), kAllow) << c.what;
  const Case denied[] = {
      {"openat create 04755", args(SYS_openat, {kAtFdcwd, 0, O_CREAT | O_WRONLY, 04755})},
      {"openat O_TMPFILE 02755", args(SYS_openat, {kAtFdcwd, 0, O_TMPFILE | O_RDWR, 02755})},
      {"open create 06755", args(SYS_open, {0, O_CREAT | O_WRONLY, 06755})},
      {"chmod u+s", args(SYS_chmod, {0, 04755})},
      {"fchmod g+s", args(SYS_fchmod, {3, 02755})},
      {"fchmodat u+s", args(SYS_fchmodat, {kAtFdcwd, 0, 04711})},
      {"creat 04755", args(SYS_creat, {0, 04755})},
      {"mknodat S_IFREG|04755", args(SYS_mknodat, {kAtFdcwd, 0, S_IFREG | 04755})},
  };
  for (const Case& c : denied) {
    EXPECT_EQ(evaluate(p.kernel, c.data), kNotify) << c.what;
    EXPECT_EQ(evaluate(p.shadow, c.data), kEperm) << c.what;
  }
}

// A rootless build's variant: the chown family answers 0 in the kernel
// (not reported as a denial) and changes nothing; everything else is the
// default policy's. Negative control: the default allows chown for real.
TEST(SeccompDefault, ChownNoopVariantAnswersZeroForTheChownFamilyOnly) {
  const CompiledPolicy noop = detail::compile_spec(detail::default_spec({.setid_files = true, .chown_noop = true}));
  const CompiledPolicy& plain = default_policy();
  constexpr uint32_t kZero = SECCOMP_RET_ERRNO | 0;
  for (int nr : {SYS_chown, SYS_fchown, SYS_lchown, SYS_fchownat}) {
    EXPECT_EQ(evaluate(noop.kernel, call(nr, 0, 1000)), kZero) << nr;
    EXPECT_EQ(evaluate(noop.shadow, call(nr, 0, 1000)), kZero) << nr;
    EXPECT_EQ(evaluate(plain.kernel, call(nr, 0, 1000)), kAllow) << nr;
  }
  EXPECT_EQ(evaluate(noop.kernel, call(SYS_read)), kAllow);
  EXPECT_EQ(evaluate(noop.kernel, call(SYS_mount)), kNotify);
  EXPECT_EQ(evaluate(noop.kernel, call(SYS_setuid, 1000)), evaluate(plain.kernel, call(SYS_setuid, 1000)));
  // The setid variant still holds: chmod u+s allowed there.
  EXPECT_EQ(evaluate(noop.kernel, args(SYS_chmod, {0, 04755})), kAllow);
  // The cache tells the variants apart.
  std::string dir = ::testing::TempDir() + "/ultari-seccomp-variants-" + std::to_string(getpid());
  CompiledPolicy a = load_policy("", dir, {.setid_files = true, .chown_noop = true});
  CompiledPolicy b = load_policy("", dir, {.setid_files = true});
  EXPECT_EQ(evaluate(a.kernel, call(SYS_chown, 0, 1000)), kZero);
  EXPECT_EQ(evaluate(b.kernel, call(SYS_chown, 0, 1000)), kAllow);
  std::filesystem::remove_all(dir);
}

TEST(SeccompDefault, ForeignAbisNotify) {
  const auto& p = default_policy();
  EXPECT_EQ(evaluate(p.kernel, call(20, 0, 0, AUDIT_ARCH_I386)), kNotify);  // i386 getpid
  EXPECT_EQ(evaluate(p.kernel, call(0x40000000 | 39)), kNotify);             // x32 getpid
  EXPECT_EQ(evaluate(p.kernel, call(0x40000000 | SYS_read)), kNotify);
  EXPECT_EQ(evaluate(p.kernel, call(SYS_read, 0, 0, AUDIT_ARCH_AARCH64)), kNotify);
  // The shadow program kills them, which is what the supervisor does.
  EXPECT_EQ(evaluate(p.shadow, call(20, 0, 0, AUDIT_ARCH_I386)), SECCOMP_RET_KILL_PROCESS);
}

TEST(SeccompDefault, MaxKnownNr) {
  const auto& p = default_policy();
  EXPECT_GE(p.max_known_nr, static_cast<uint32_t>(SYS_futex_waitv));
  EXPECT_LT(p.max_known_nr, 1000u);
  EXPECT_EQ(evaluate(p.kernel, call(p.max_known_nr + 100)), kNotify);
}

// The low-word denials (ioctl TIOCSTI/TIOCLINUX, socket AF_ALG/AF_VSOCK)
// are a hand-written prefix: check the compiled programs against the
// definition, on the edges and on random values with junk high words.
TEST(SeccompDefault, LowWordDenialsMatchTheirDefinition) {
  const auto& p = default_policy();
  struct Check {
    int nr;
    unsigned arg;
    std::vector<uint32_t> denied;
  };
  std::mt19937_64 rng(42);
  for (const Check& c : {Check{SYS_ioctl, 1, {0x5412, 0x541C}}, Check{SYS_socket, 0, {38, 40}}}) {
    std::vector<uint64_t> values = {0, 1, 0x5411, 0x5413, 0x541B, 0x541D, 37, 39, 41, 0xffffffff, 0x80000000};
    for (uint32_t x : c.denied) values.push_back(x);
    for (int i = 0; i < 20000; ++i) values.push_back(rng());
    for (uint64_t v : values) {
      for (uint64_t hi : {0ULL, 0xffffffff00000000ULL, v & 0xffffffff00000000ULL}) {
        seccomp_data d = call(c.nr);
        d.args[c.arg] = hi | (v & 0xffffffff);
        bool deny = std::find(c.denied.begin(), c.denied.end(), uint32_t(v)) != c.denied.end();
        ASSERT_EQ(evaluate(p.kernel, d), deny ? kNotify : kAllow) << c.nr << " " << std::hex << d.args[c.arg];
        ASSERT_EQ(evaluate(p.shadow, d), deny ? kEperm : kAllow) << c.nr << " " << std::hex << d.args[c.arg];
      }
    }
    // Other ABIs never take the native shortcut.
    EXPECT_EQ(evaluate(p.kernel, call(c.nr, 0, 0, AUDIT_ARCH_I386)), kNotify);
    EXPECT_EQ(evaluate(p.kernel, call(0x40000000 | c.nr)), kNotify);
  }
  EXPECT_LT(p.kernel.size(), 500u);  // libseccomp complement blocks made it 625
}

// --- BPF interpreter ---------------------------------------------------------

TEST(SeccompEvaluate, RejectsBadPrograms) {
  seccomp_data d = call(SYS_read);
  EXPECT_EQ(evaluate({}, d), SECCOMP_RET_KILL_PROCESS);
  EXPECT_EQ(evaluate({BPF_STMT(0xff, 0)}, d), SECCOMP_RET_KILL_PROCESS);
  EXPECT_EQ(evaluate({BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 2)}, d), SECCOMP_RET_KILL_PROCESS);
  EXPECT_EQ(evaluate({BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 64)}, d), SECCOMP_RET_KILL_PROCESS);
  EXPECT_EQ(evaluate({BPF_JUMP(BPF_JMP | BPF_JA, 5, 0, 0), BPF_STMT(BPF_RET | BPF_K, 0)}, d),
            SECCOMP_RET_KILL_PROCESS);
}

TEST(SeccompEvaluate, RunsTheInstructionSet) {
  // nr==0 ? (arg0.lo & 0xf0) | 1 via scratch memory and X : 7
  std::vector<sock_filter> prog = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, 0),
      BPF_JUMP(BPF_JMP | BPF_JA, 7, 0, 0),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, args[0])),
      BPF_STMT(BPF_ALU | BPF_AND | BPF_K, 0xf0),
      BPF_STMT(BPF_ST, 3),
      BPF_STMT(BPF_LDX | BPF_IMM, 1),
      BPF_STMT(BPF_LD | BPF_MEM, 3),
      BPF_STMT(BPF_ALU | BPF_OR | BPF_X, 0),
      BPF_STMT(BPF_RET | BPF_A, 0),
      BPF_STMT(BPF_RET | BPF_K, 7),
  };
  EXPECT_EQ(evaluate(prog, call(0, 0x1234)), 0x31u);
  EXPECT_EQ(evaluate(prog, call(1, 0x1234)), 7u);
}

// --- Docker/OCI profiles -----------------------------------------------------

class SeccompProfile : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/ultari-seccomp-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string write(const std::string& json, const std::string& name = "p.json") {
    std::string path = dir_ + "/" + name;
    std::ofstream(path) << json;
    return path;
  }

  std::string error_of(const std::string& json) {
    std::string path = write(json);
    try {
      compile_policy(path);
    } catch (const Error& e) {
      return e.what();
    }
    return "(no error)";
  }

  std::string dir_;
};

constexpr const char* kSmallProfile = R"({
  "defaultAction": "SCMP_ACT_ERRNO",
  "defaultErrnoRet": 1,
  "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_LOONGARCH64"],
  "archMap": [{"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
  "syscalls": [
    {"names": ["read", "write", "no_such_syscall_xyz", "socketcall"], "action": "SCMP_ACT_ALLOW"},
    {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
     "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
    {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
     "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
    {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
    {"names": ["getpid"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
    {"names": ["gettid"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "99.0"}},
    {"names": ["getppid"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "3.0"}},
    {"names": ["getuid"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm64"]}},
    {"names": ["getgid"], "action": "SCMP_ACT_ALLOW", "excludes": {"arches": ["amd64"]}},
    {"name": "mkdir", "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
    {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
    {"names": ["kill"], "action": "SCMP_ACT_KILL_PROCESS"}
  ]
})";

TEST_F(SeccompProfile, SmallProfileSemantics) {
  CompiledPolicy p = compile_policy(write(kSmallProfile));
  auto both = [&](const seccomp_data& d) {
    return std::pair{evaluate(p.kernel, d), evaluate(p.shadow, d)};
  };
  using P = std::pair<uint32_t, uint32_t>;
  EXPECT_EQ(both(call(SYS_read)), P(kAllow, kAllow));
  EXPECT_EQ(both(call(SYS_personality, 8)), P(kAllow, kAllow));
  EXPECT_EQ(both(call(SYS_personality, 9)), P(kNotify, kEperm));
  EXPECT_EQ(both(call(SYS_clone, SIGCHLD)), P(kAllow, kAllow));
  EXPECT_EQ(both(call(SYS_clone, CLONE_NEWPID)), P(kNotify, kEperm));
  EXPECT_EQ(both(call(SYS_mount)), P(kNotify, kEperm)) << "includes caps: dropped";
  EXPECT_EQ(both(call(SYS_getpid)), P(kAllow, kAllow)) << "excludes caps: kept";
  EXPECT_EQ(both(call(SYS_gettid)), P(kNotify, kEperm)) << "minKernel 99.0";
  EXPECT_EQ(both(call(SYS_getppid)), P(kAllow, kAllow)) << "minKernel 3.0";
  EXPECT_EQ(both(call(SYS_getuid)), P(kNotify, kEperm)) << "includes arches arm64";
  EXPECT_EQ(both(call(SYS_getgid)), P(kNotify, kEperm)) << "excludes arches amd64";
  EXPECT_EQ(both(call(SYS_mkdir)), P(kNotify, SECCOMP_RET_ERRNO | 13u));
  EXPECT_EQ(both(call(SYS_clone3)), P(kNotify, kEnosys));
  EXPECT_EQ(both(call(SYS_kill)), P(SECCOMP_RET_KILL_PROCESS, SECCOMP_RET_KILL_PROCESS));
  EXPECT_EQ(evaluate(p.kernel, call(20, 0, 0, AUDIT_ARCH_I386)), kNotify);
  EXPECT_EQ(p.max_known_nr, static_cast<uint32_t>(SYS_clone3));
}

TEST_F(SeccompProfile, DefaultAllowProfile) {
  CompiledPolicy p = compile_policy(write(R"({"defaultAction": "SCMP_ACT_ALLOW",
    "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 30},
                 {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"}]})"));
  EXPECT_EQ(evaluate(p.kernel, call(SYS_read)), kAllow);
  EXPECT_EQ(evaluate(p.kernel, call(SYS_mount)), kAllow);
  EXPECT_EQ(evaluate(p.kernel, call(SYS_mkdir)), kNotify);
  EXPECT_EQ(evaluate(p.shadow, call(SYS_mkdir)), SECCOMP_RET_ERRNO | 30u);
}

TEST_F(SeccompProfile, ListedForeignArchesAreFiltered) {
  CompiledPolicy p = compile_policy(write(R"({"defaultAction": "SCMP_ACT_ERRNO",
    "archMap": [{"architecture": "SCMP_ARCH_X86_64",
                 "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}],
    "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ALLOW"}]})"));
  EXPECT_EQ(evaluate(p.kernel, call(20, 0, 0, AUDIT_ARCH_I386)), kAllow);  // i386 getpid
  EXPECT_EQ(evaluate(p.shadow, call(21, 0, 0, AUDIT_ARCH_I386)), kEperm);  // i386 mount
  EXPECT_EQ(evaluate(p.kernel, call(0x40000000 | 39)), kAllow);            // x32 getpid
}

// The shape of moby's default.json: archMap with null entries, comments,
// names only other arches or newer libseccomp know, per-arch entries.
TEST_F(SeccompProfile, DockerShapedProfile) {
  CompiledPolicy p = compile_policy(write(R"({
    "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
    "archMap": [
      {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
      {"architecture": "SCMP_ARCH_RISCV64", "subArchitectures": null}],
    "syscalls": [
      {"names": ["read", "getpid", "mmap2", "_llseek", "socketcall", "uretprobe", "riscv_hwprobe"],
       "action": "SCMP_ACT_ALLOW"},
      {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64", "x32"]}},
      {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
       "args": [{"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}],
       "excludes": {"caps": ["CAP_SYS_ADMIN"], "arches": ["s390", "s390x"]}},
      {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
       "args": [{"index": 1, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}],
       "comment": "s390 parameter ordering", "includes": {"arches": ["s390", "s390x"]}},
      {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38,
       "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
      {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}}
    ]})"));
  EXPECT_EQ(evaluate(p.kernel, call(SYS_read)), kAllow);
  EXPECT_EQ(evaluate(p.kernel, call(SYS_arch_prctl)), kAllow);
  EXPECT_EQ(evaluate(p.kernel, call(SYS_ptrace)), kAllow);
  EXPECT_EQ(evaluate(p.kernel, call(SYS_clone, SIGCHLD, CLONE_NEWUSER)), kAllow);
  EXPECT_EQ(evaluate(p.shadow, call(SYS_clone, CLONE_NEWUSER, 0)), kEperm);
  EXPECT_EQ(evaluate(p.shadow, call(SYS_clone3)), kEnosys);
  EXPECT_EQ(evaluate(p.kernel, call(192, 0, 0, AUDIT_ARCH_I386)), kAllow);  // i386 mmap2
  EXPECT_EQ(evaluate(p.kernel, call(102, 0, 0, AUDIT_ARCH_I386)), kAllow);  // i386 socketcall
}

TEST_F(SeccompProfile, ErrorsNameFileAndField) {
  auto expect_error = [&](const std::string& json, const std::string& tail) {
    std::string msg = error_of(json);
    EXPECT_EQ(msg.rfind("seccomp profile " + dir_ + "/p.json: ", 0), 0u) << msg;
    EXPECT_NE(msg.find(tail), std::string::npos) << msg << "\n  expected: " << tail;
  };
  expect_error("{", "invalid JSON");
  expect_error(R"({"defaultAction": "SCMP_ACT_NOPE"})", "defaultAction: unknown action \"SCMP_ACT_NOPE\"");
  expect_error(R"({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
      {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
      {"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_FOO"}]}]})",
               ": syscalls[1].args[0].op: unknown operator \"SCMP_CMP_FOO\"");
  expect_error(R"({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
      {"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]})",
               ": syscalls[0].args[0].index: must be 0..5");
  expect_error(R"({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
      {"name": "read", "names": ["write"], "action": "SCMP_ACT_ALLOW"}]})",
               ": syscalls[0]: both \"name\" and \"names\" given");
  expect_error(R"({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"action": "SCMP_ACT_ALLOW"}]})",
               ": syscalls[0]: missing \"names\"");
  expect_error(R"({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_BOOM"}]})",
               ": syscalls[0].action: unknown action \"SCMP_ACT_BOOM\"");
  // A broken entry is an error even when it would be dropped on this host.
  expect_error(R"({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
      {"names": ["read"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]},
       "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_BAD"}]}]})",
               ": syscalls[0].args[0].op: unknown operator");
}

TEST_F(SeccompProfile, MissingFileThrows) {
  EXPECT_THROW(compile_policy(dir_ + "/absent.json"), Error);
}

// --- cache --------------------------------------------------------------------

TEST_F(SeccompProfile, CacheRoundTripAndCorruption) {
  std::string cache = dir_ + "/cache";
  CompiledPolicy fresh = load_policy("", cache);
  struct stat st{};
  ASSERT_EQ(stat(cache.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);

  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(cache)) files.push_back(e.path());
  ASSERT_EQ(files.size(), 1u);

  auto same = [](const CompiledPolicy& a, const CompiledPolicy& b) {
    auto eq = [](const std::vector<sock_filter>& x, const std::vector<sock_filter>& y) {
      return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(sock_filter)) == 0;
    };
    return eq(a.kernel, b.kernel) && eq(a.shadow, b.shadow) && a.max_known_nr == b.max_known_nr;
  };
  EXPECT_TRUE(same(load_policy("", cache), fresh));
  EXPECT_TRUE(same(fresh, default_policy()));

  // Truncated file → recompiled and rewritten.
  std::filesystem::resize_file(files[0], 100);
  EXPECT_TRUE(same(load_policy("", cache), fresh));
  EXPECT_EQ(std::filesystem::file_size(files[0]),
            32 + (fresh.kernel.size() + fresh.shadow.size()) * sizeof(sock_filter));

  // Warm path really reads the file: patch one instruction and see it back.
  {
    std::fstream f(files[0], std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(32 + 4);  // k of kernel[0]
    uint32_t k = 0x12345678;
    f.write(reinterpret_cast<const char*>(&k), 4);
  }
  EXPECT_EQ(load_policy("", cache).kernel[0].k, 0x12345678u);

  // A different profile gets its own entry.
  std::string prof = write(R"({"defaultAction": "SCMP_ACT_ALLOW"})");
  CompiledPolicy allow = load_policy(prof, cache);
  EXPECT_EQ(evaluate(allow.kernel, call(SYS_mount)), kAllow);
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(cache)) ++n;
  EXPECT_EQ(n, 2u);
}

// --- the supervisor against the kernel ---------------------------------------

struct ChildOutcome {
  int keyctl_errno = -1;
  int unshare_errno = -1;
};

// Sends fd over sock; only async-signal-safe calls (runs in the child).
void send_fd(int sock, int fd) {
  char byte = 'f';
  iovec iov{&byte, 1};
  alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = ctrl;
  msg.msg_controllen = sizeof ctrl;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
  sendmsg(sock, &msg, 0);
}

int recv_fd(int sock) {
  char byte;
  iovec iov{&byte, 1};
  alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = ctrl;
  msg.msg_controllen = sizeof ctrl;
  if (recvmsg(sock, &msg, MSG_CMSG_CLOEXEC) != 1) return -1;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  if (!c || c->cmsg_type != SCM_RIGHTS) return -1;
  int fd;
  std::memcpy(&fd, CMSG_DATA(c), sizeof fd);
  return fd;
}

// In the child: no core dumps (SIGSYS would write one), then the filter.
void child_install(const std::vector<sock_filter>* prog, int sock) {
  rlimit no_core{0, 0};
  setrlimit(RLIMIT_CORE, &no_core);
  prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  if (!prog) return;
  sock_fprog fprog{static_cast<unsigned short>(prog->size()), const_cast<sock_filter*>(prog->data())};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) _exit(90);
  long lfd = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &fprog);
  if (lfd < 0) _exit(91);
  send_fd(sock, static_cast<int>(lfd));
  close(static_cast<int>(lfd));
}

int int80_getpid() {
  int ret;
  asm volatile("int $0x80" : "=a"(ret) : "a"(20) : "memory", "cc");
  return ret;
}

enum class Probe { KeyctlUnshare, Int80, X32, UnknownNr };

constexpr long kUnknownNr = 1000;  // above every syscall libseccomp 2.5 knows

pid_t spawn(const std::vector<sock_filter>* prog, int sock, Probe probe) {
  pid_t pid = fork();
  if (pid != 0) return pid;
  child_install(prog, sock);
  ChildOutcome out;
  if (probe == Probe::KeyctlUnshare) {
    // KEYCTL op 9999 does not exist: unfiltered it fails EOPNOTSUPP.
    out.keyctl_errno = syscall(SYS_keyctl, 9999, 0, 0, 0, 0) == 0 ? 0 : errno;
    out.unshare_errno = unshare(CLONE_NEWUSER) == 0 ? 0 : errno;
  } else if (probe == Probe::Int80) {
    out.keyctl_errno = int80_getpid() == getpid() ? 0 : 1;
  } else if (probe == Probe::X32) {
    out.keyctl_errno = syscall(0x40000000 | SYS_getpid) >= 0 ? 0 : errno;
  } else {
    out.keyctl_errno = syscall(kUnknownNr, 0, 0, 0) == 0 ? 0 : errno;
  }
  (void)!write(sock, &out, sizeof out);
  _exit(0);
}

struct ChildRun {
  ChildOutcome outcome;
  bool got_outcome = false;
  int status = 0;
  std::map<std::string, uint64_t> denied;
};

// Parent side: answer notifications until the child has exited.
ChildRun run_child(const CompiledPolicy* policy, Probe probe) {
  int sv[2];
  EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  pid_t pid = spawn(policy ? &policy->kernel : nullptr, sv[1], probe);
  close(sv[1]);
  ChildRun run;
  std::unique_ptr<Supervisor> sup;
  if (policy) {
    int lfd = recv_fd(sv[0]);
    EXPECT_GE(lfd, 0);
    if (lfd >= 0) sup = std::make_unique<Supervisor>(*policy, lfd);
  }
  bool sock_open = true;
  for (int i = 0; i < 400 && sock_open; ++i) {
    pollfd fds[2] = {{sv[0], POLLIN, 0}, {sup ? sup->fd() : -1, POLLIN, 0}};
    if (poll(fds, 2, 10) < 0) break;
    if (fds[1].revents & POLLIN) sup->handle_one();
    if (fds[0].revents & (POLLIN | POLLHUP)) {
      ChildOutcome got;
      ssize_t n = read(sv[0], &got, sizeof got);
      if (n == sizeof got) run.outcome = got, run.got_outcome = true;
      if (n <= 0) sock_open = false;
    }
  }
  close(sv[0]);
  // The socket closes while the child is still exiting; give it a moment.
  pid_t done = 0;
  for (int i = 0; i < 200 && done == 0; ++i) {
    done = waitpid(pid, &run.status, WNOHANG);
    if (done == 0) usleep(10000);
  }
  if (done == 0) {
    kill(pid, SIGKILL);
    waitpid(pid, &run.status, 0);
    ADD_FAILURE() << "child hung";
  }
  if (sup) run.denied = sup->denied();
  return run;
}

TEST(SeccompKernel, SupervisorAnswersDeniedCalls) {
  ChildRun run = run_child(&default_policy(), Probe::KeyctlUnshare);
  ASSERT_TRUE(run.got_outcome);
  ASSERT_TRUE(WIFEXITED(run.status) && WEXITSTATUS(run.status) == 0) << run.status;
  EXPECT_EQ(run.outcome.keyctl_errno, EPERM);
  EXPECT_EQ(run.outcome.unshare_errno, EPERM);
  std::map<std::string, uint64_t> expected = {{"keyctl", 1}, {"unshare", 1}};
  EXPECT_EQ(run.denied, expected);
}

TEST(SeccompKernel, NegativeControlWithoutFilter) {
  ChildRun run = run_child(nullptr, Probe::KeyctlUnshare);
  ASSERT_TRUE(run.got_outcome);
  EXPECT_EQ(run.outcome.keyctl_errno, EOPNOTSUPP);
  // As root unshare(CLONE_NEWUSER) succeeds unless the host forbids user
  // namespaces; either way it is not our filter answering.
  if (run.outcome.unshare_errno != 0) GTEST_LOG_(INFO) << "unshare errno " << run.outcome.unshare_errno;
}

TEST(SeccompKernel, I386SyscallIsKilled) {
  ChildRun control = run_child(nullptr, Probe::Int80);
  if (!control.got_outcome || control.outcome.keyctl_errno != 0)
    GTEST_SKIP() << "no IA32 emulation on this kernel";

  ChildRun run = run_child(&default_policy(), Probe::Int80);
  EXPECT_FALSE(run.got_outcome);
  ASSERT_TRUE(WIFSIGNALED(run.status)) << run.status;
  EXPECT_EQ(WTERMSIG(run.status), SIGSYS);
  std::map<std::string, uint64_t> expected = {{"abi:i386", 1}};
  EXPECT_EQ(run.denied, expected);
}

TEST(SeccompKernel, X32SyscallIsKilled) {
  ChildRun run = run_child(&default_policy(), Probe::X32);
  EXPECT_FALSE(run.got_outcome);
  ASSERT_TRUE(WIFSIGNALED(run.status)) << run.status;
  EXPECT_EQ(WTERMSIG(run.status), SIGSYS);
  std::map<std::string, uint64_t> expected = {{"abi:x32", 1}};
  EXPECT_EQ(run.denied, expected);
}

TEST(SeccompKernel, UnknownSyscallGetsEnosys) {
  ChildRun run = run_child(&default_policy(), Probe::UnknownNr);
  ASSERT_TRUE(run.got_outcome);
  EXPECT_EQ(run.outcome.keyctl_errno, ENOSYS);
  std::map<std::string, uint64_t> expected = {{"nr:" + std::to_string(kUnknownNr), 1}};
  EXPECT_EQ(run.denied, expected);
}

}  // namespace
}  // namespace ultari::seccomp
