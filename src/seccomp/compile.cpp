// PolicySpec → classic BPF with libseccomp, twice: the kernel program (every
// ERRNO becomes USER_NOTIF so the supervisor sees and counts it) and the
// shadow program (real actions, evaluated by the supervisor).
#include <sys/mman.h>
#include <unistd.h>

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

std::vector<sock_filter> build(const PolicySpec& spec, bool kernel, uint32_t& max_nr) {
  Ctx ctx = make_ctx(spec, kernel);
  uint32_t def = kernel ? kernel_action(spec.default_action) : spec.default_action;
  for (const Rule& rule : spec.rules) {
    uint32_t action = kernel ? kernel_action(rule.action, rule.errno_in_kernel) : rule.action;
    add_rule(ctx.get(), spec, rule, action, def, max_nr);
  }
  return export_bpf(ctx.get(), spec);
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
