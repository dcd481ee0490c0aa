// Internal representation shared by the default policy, the Docker/OCI
// profile parser and the libseccomp compiler. Not part of the public API.
#pragma once
#include <seccomp.h>

#include <cstdint>
#include <string>
#include <vector>

#include "seccomp/seccomp.h"

namespace ultari::seccomp::detail {

struct ArgCmp {
  unsigned index = 0;
  scmp_compare op = SCMP_CMP_EQ;
  uint64_t a = 0;  // value (the mask for MASKED_EQ)
  uint64_t b = 0;  // valueTwo
};

struct Rule {
  std::vector<std::string> names;
  uint32_t action = SCMP_ACT_ALLOW;  // the real action (shadow program)
  std::vector<ArgCmp> args;          // ANDed
  // ERRNO actions become NOTIFY in the kernel program unless this is set
  // (clone3 → ENOSYS must reach glibc directly so it falls back to clone).
  bool errno_in_kernel = false;
  std::string origin;  // "syscalls[3]", for error messages
};

// "Deny when the low 32 bits of argument `arg` of `name` are one of
// `values`": the kernel reads these arguments as int, so the high word must
// not count. libseccomp cannot say this directly, so the compiler emits it
// as a short hand-written BPF prefix in front of libseccomp's program.
struct LowWordDenial {
  std::string name;
  unsigned arg = 0;
  std::vector<uint32_t> values;
  // >= 0: denied only when this (64-bit) argument is not zero as well
  // (prlimit64 with a new limit, not a read).
  int unless_zero = -1;
};

struct PolicySpec {
  std::string source;  // "default policy" or "seccomp profile <path>"
  uint32_t default_action = SCMP_ACT_ERRNO(1);
  std::vector<uint32_t> extra_arches;  // non-native arches to filter (X86, X32)
  std::vector<Rule> rules;
  // Names the policy knows without a rule of their own (denied by default);
  // they count towards max_known_nr.
  std::vector<std::string> known_denied;
  std::vector<LowWordDenial> low_word_denials;  // native arch only
};

// Bumped whenever the default list or the compiler changes, so cached
// programs are recompiled.
inline constexpr const char* kPolicyVersion = "ultari-seccomp-7";

// variant.setid_files: setuid/setgid mode bits may be set;
// variant.chown_noop: chown calls answer 0 and change nothing.
PolicySpec default_spec(Variant variant = {});

// `path` is used for messages only; `content` is the file's text.
PolicySpec parse_profile(const std::string& path, const std::string& content);

// Compiles with libseccomp (kernel + shadow programs).
CompiledPolicy compile_spec(const PolicySpec& spec);

// Kernel release from uname(2) as {major, minor}.
std::pair<int, int> kernel_version();

}  // namespace ultari::seccomp::detail
