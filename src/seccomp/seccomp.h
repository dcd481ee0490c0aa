// Seccomp policy: Ultari's default-deny allowlist and Docker/OCI JSON
// profiles, compiled once with libseccomp into classic BPF and cached; plus
// the supervisor side that answers SECCOMP_RET_USER_NOTIF for denied calls so
// that each denial is counted by name.
#pragma once
#include <linux/filter.h>
#include <linux/seccomp.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace ultari::seccomp {

struct CompiledPolicy {
  // Installed in the sandbox. Every denying action (ERRNO) becomes
  // SECCOMP_RET_USER_NOTIF so the supervisor sees it; foreign ABIs also notify.
  std::vector<sock_filter> kernel;
  // The same rules with their real actions. The supervisor runs it in user
  // space on each notification to learn the errno to answer with.
  std::vector<sock_filter> shadow;
  // Highest native syscall number the policy knows; calls above it answer
  // ENOSYS instead of EPERM (so libc falls back, like runc does).
  uint32_t max_known_nr = 0;
};

// Returns the compiled policy for profile_path ("" = Ultari's default),
// reading it from cache_dir when a compiled copy for the same input exists,
// else compiling with libseccomp and storing it (atomically). Throws
// ultari::Error naming the profile problem (file, entry, field).
// variant: the default policy's variants (SeccompSpec::setid_files and
// ::chown_noop; ignored with a profile).
struct Variant {
  bool setid_files = false;  // setuid/setgid mode bits may be set
  bool chown_noop = false;   // chown and its family succeed without doing anything
};
CompiledPolicy load_policy(const std::string& profile_path, const std::string& cache_dir, Variant variant = {});

// A filter for a host program, not a sandbox: everything is allowed but
// the chown family, which answers 0 and changes nothing. For a program run
// with one id in its own user namespace (a rootless `ultari image build`'s
// debootstrap), where giving a file another owner fails (EINVAL).
std::vector<sock_filter> chown_noop_program();

// Compiles without touching any cache (tests, tools).
CompiledPolicy compile_policy(const std::string& profile_path);

// Runs a classic-BPF seccomp program in user space; returns the SECCOMP_RET_*
// value (action | data).
uint32_t evaluate(const std::vector<sock_filter>& prog, const seccomp_data& data);

// Counts denials and answers notifications. One per sandbox.
class Supervisor {
 public:
  Supervisor(const CompiledPolicy& policy, int listener_fd);
  ~Supervisor();
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  int fd() const { return fd_; }
  // Call when fd() is readable: receives one notification and answers it.
  // A native denied call gets -errno (EPERM, or ENOSYS above max_known_nr);
  // a foreign-ABI call (i386, x32) kills the caller with SIGSYS.
  void handle_one();
  // name -> count; names are libseccomp's, foreign ABIs are "abi:i386" and
  // "abi:x32", unknown numbers "nr:<n>"; past 512 names the rest count as
  // "other". A foreign-ABI caller that blocks, ignores or catches SIGSYS is
  // killed with SIGKILL instead.
  const std::map<std::string, uint64_t>& denied() const { return denied_; }

 private:
  void count(const std::string& name);
  const CompiledPolicy& policy_;
  int fd_;
  std::vector<char> req_buf_, resp_buf_;
  std::map<std::string, uint64_t> denied_;
};

}  // namespace ultari::seccomp
