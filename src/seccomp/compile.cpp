// PolicySpec → classic BPF with libseccomp, twice: the kernel program (every
// ERRNO becomes USER_NOTIF so the supervisor sees and counts it) and the
// shadow program (real actions, evaluated by the supervisor).
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>
#include <memory>

#include "seccomp/policy_spec.h"
#include "util/error.h"
#include "util/fd.h"

namespace ultari::seccomp::detail {
namespace {

struct CtxDeleter {
  void operator()(void* ctx) const { seccomp_release(ctx); }
};
using Ctx = std::unique_ptr<void, CtxDeleter>;

bool is_errno(uint32_t action) { return (action & 0xffff0000U) == SCMP_ACT_ERRNO(0); }

uint32_t kernel_action(uint32_t action, bool errno_in_kernel = false) {
  return is_errno(action) && !errno_in_kernel ? SCMP_ACT_NOTIFY : action;
}

void check(int rc, const PolicySpec& spec, const std::string& what) {
  if (rc < 0) throw Error(spec.source + ": " + what + ": " + std::strerror(-rc));
}

Ctx make_ctx(const PolicySpec& spec, bool kernel) {
  uint32_t def = kernel ? kernel_action(spec.default_action) : spec.default_action;
  Ctx ctx(seccomp_init(def));
  if (!ctx) throw Error(spec.source + ": libseccomp rejected the default action");
  // Foreign ABIs notify so the supervisor can kill and report them; the
  // shadow program kills, which is what the supervisor then does.
  uint32_t badarch = kernel ? SCMP_ACT_NOTIFY : SCMP_ACT_KILL_PROCESS;
  check(seccomp_attr_set(ctx.get(), SCMP_FLTATR_ACT_BADARCH, badarch), spec, "bad-arch action");
  check(seccomp_attr_set(ctx.get(), SCMP_FLTATR_CTL_NNP, 0), spec, "no_new_privs attribute");
  // Binary tree; older libseccomp lacks it, which only costs speed.
  (void)seccomp_attr_set(ctx.get(), SCMP_FLTATR_CTL_OPTIMIZE, 2);
  for (uint32_t arch : spec.extra_arches) {
    int rc = seccomp_arch_add(ctx.get(), arch);
    if (rc != -EEXIST) check(rc, spec, "adding architecture");
  }
  return ctx;
}

void add_rule(void* ctx, const PolicySpec& spec, const Rule& rule, uint32_t action,
              uint32_t def, uint32_t& max_nr) {
  std::vector<scmp_arg_cmp> cmps;
  for (const ArgCmp& a : rule.args) cmps.push_back({a.index, a.op, a.a, a.b});
  for (const std::string& name : rule.names) {
    int nr = seccomp_syscall_resolve_name(name.c_str());
    if (nr == __NR_SCMP_ERROR) continue;  // unknown to this libseccomp
    if (nr >= 0 && static_cast<uint32_t>(nr) > max_nr) max_nr = nr;
    // Same as the default: nothing to add (libseccomp would refuse it).
    if (action == def) continue;
    int rc = seccomp_rule_add_array(ctx, action, nr, cmps.size(), cmps.data());
    if (rc == -EEXIST) continue;  // an equal rule is already there
    check(rc, spec, rule.origin + " (" + name + ")");
  }
}

std::vector<sock_filter> export_bpf(void* ctx, const PolicySpec& spec) {
  UniqueFd fd(memfd_create("ultari-seccomp-bpf", MFD_CLOEXEC));
  if (!fd) throw_errno("memfd_create");
  check(seccomp_export_bpf(ctx, fd.get()), spec, "exporting BPF");
  off_t size = lseek(fd.get(), 0, SEEK_END);
  if (size <= 0 || size % sizeof(sock_filter) != 0)
    throw Error(spec.source + ": libseccomp exported a malformed program");
  std::vector<sock_filter> prog(size / sizeof(sock_filter));
  if (pread(fd.get(), prog.data(), size, 0) != size) throw_errno("reading exported BPF");
  return prog;
}

// The LowWordDenial checks, in front of libseccomp's program:
//     ld arch; jne native -> lib; ld nr
//     per entry: jne nr -> next entry; ld low word of arg; jeq v -> deny ...; ja lib
//       (with unless_zero, jeq v -> match; match: ld low word of that arg;
//        jne 0 -> deny; ld its high word; jeq 0 -> lib, else deny)
//     ja lib; deny: ret <deny>; lib: ...
// Anything not denied here falls through to libseccomp's program, which
// decides as if the prefix were not there.
std::vector<sock_filter> low_word_prefix(const PolicySpec& spec, uint32_t deny) {
  if (spec.low_word_denials.empty()) return {};
  constexpr uint32_t kArgs = offsetof(seccomp_data, args);  // low word first (little endian)
  std::vector<sock_filter> p;
  p.push_back(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)));
  size_t arch_jump = p.size();
  p.push_back(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 0, 0));  // jf patched
  p.push_back(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)));
  std::vector<size_t> to_deny, to_lib, false_to_deny, true_to_lib;
  for (const LowWordDenial& d : spec.low_word_denials) {
    int nr = seccomp_syscall_resolve_name(d.name.c_str());
    if (nr < 0) throw Error(spec.source + ": unknown syscall " + d.name);
    bool unless = d.unless_zero >= 0;
    // jeq nr, ld arg, jeq values..., ja lib (, the match block)
    size_t size = d.values.size() + 3 + (unless ? 4 : 0);
    if (size > 255) throw Error(spec.source + ": too many values for " + d.name);
    p.push_back(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, static_cast<uint32_t>(nr), 0, static_cast<uint8_t>(size - 1)));
    p.push_back(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, kArgs + 8 * d.arg));
    for (size_t i = 0; i < d.values.size(); ++i) {
      if (!unless) to_deny.push_back(p.size());
      // (with unless_zero: to the match block, past the values left and the ja)
      uint8_t jt = unless ? static_cast<uint8_t>(d.values.size() - i) : 0;
      p.push_back(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, d.values[i], jt, 0));  // jt patched when 0
    }
    to_lib.push_back(p.size());
    p.push_back(BPF_STMT(BPF_JMP | BPF_JA, 0));  // k patched
    if (unless) {
      p.push_back(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, kArgs + 8 * static_cast<unsigned>(d.unless_zero)));
      false_to_deny.push_back(p.size());
      p.push_back(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 0));  // jf patched
      p.push_back(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, kArgs + 8 * static_cast<unsigned>(d.unless_zero) + 4));
      false_to_deny.push_back(p.size());
      true_to_lib.push_back(p.size());
      p.push_back(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 0));  // jt, jf patched
    }
  }
  to_lib.push_back(p.size());
  p.push_back(BPF_STMT(BPF_JMP | BPF_JA, 0));
  size_t deny_at = p.size();
  p.push_back(BPF_STMT(BPF_RET | BPF_K, deny));
  size_t lib_at = p.size();
  p[arch_jump].jf = static_cast<uint8_t>(lib_at - arch_jump - 1);
  for (size_t i : to_deny) {
    if (deny_at - i - 1 > 255) throw Error(spec.source + ": low-word prefix too long");
    p[i].jt = static_cast<uint8_t>(deny_at - i - 1);
  }
  for (size_t i : false_to_deny) {
    if (deny_at - i - 1 > 255) throw Error(spec.source + ": low-word prefix too long");
    p[i].jf = static_cast<uint8_t>(deny_at - i - 1);
  }
  for (size_t i : true_to_lib) {
    if (lib_at - i - 1 > 255) throw Error(spec.source + ": low-word prefix too long");
    p[i].jt = static_cast<uint8_t>(lib_at - i - 1);
  }
  for (size_t i : to_lib) p[i].k = static_cast<uint32_t>(lib_at - i - 1);
  return p;
}

std::vector<sock_filter> build(const PolicySpec& spec, bool kernel, uint32_t& max_nr) {
  Ctx ctx = make_ctx(spec, kernel);
  uint32_t def = kernel ? kernel_action(spec.default_action) : spec.default_action;
  for (const Rule& rule : spec.rules) {
    uint32_t action = kernel ? kernel_action(rule.action, rule.errno_in_kernel) : rule.action;
    add_rule(ctx.get(), spec, rule, action, def, max_nr);
  }
  std::vector<sock_filter> prog = low_word_prefix(spec, kernel ? SECCOMP_RET_USER_NOTIF : SECCOMP_RET_ERRNO | EPERM);
  std::vector<sock_filter> lib = export_bpf(ctx.get(), spec);
  prog.insert(prog.end(), lib.begin(), lib.end());
  if (prog.size() > BPF_MAXINSNS) throw Error(spec.source + ": the filter is too long");
  return prog;
}

}  // namespace

CompiledPolicy compile_spec(const PolicySpec& spec) {
  CompiledPolicy out;
  uint32_t max_nr = 0;
  out.kernel = build(spec, true, max_nr);
  out.shadow = build(spec, false, max_nr);
  for (const std::string& name : spec.known_denied) {
    int nr = seccomp_syscall_resolve_name(name.c_str());
    if (nr >= 0 && static_cast<uint32_t>(nr) > max_nr) max_nr = nr;
  }
  out.max_known_nr = max_nr;
  return out;
}

}  // namespace ultari::seccomp::detail
