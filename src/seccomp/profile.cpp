// Docker/OCI seccomp JSON profile → PolicySpec (moby/profiles semantics for a
// process that holds no capabilities, on x86_64).
#include <sys/utsname.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "seccomp/policy_spec.h"
#include "util/error.h"

namespace ultari::seccomp::detail {
namespace {

using nlohmann::json;

struct Ctx {
  std::string prefix;  // "seccomp profile <path>"
  [[noreturn]] void fail(const std::string& field, const std::string& msg) const {
    throw Error(prefix + ": " + field + ": " + msg);
  }
};

const json* member(const json& obj, const char* key) {
  auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}

std::string get_string(const Ctx& c, const json& v, const std::string& field) {
  if (!v.is_string()) c.fail(field, "expected a string");
  return v.get<std::string>();
}

uint64_t get_u64(const Ctx& c, const json& v, const std::string& field) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer() && v.get<int64_t>() >= 0) return v.get<int64_t>();
  c.fail(field, "expected a non-negative integer");
}

std::vector<std::string> get_strings(const Ctx& c, const json& v, const std::string& field) {
  if (!v.is_array()) c.fail(field, "expected an array of strings");
  std::vector<std::string> out;
  for (size_t i = 0; i < v.size(); ++i)
    out.push_back(get_string(c, v[i], field + "[" + std::to_string(i) + "]"));
  return out;
}

uint32_t parse_action(const Ctx& c, const std::string& name, uint32_t errno_ret,
                      const std::string& field) {
  if (name == "SCMP_ACT_KILL" || name == "SCMP_ACT_KILL_THREAD") return SCMP_ACT_KILL_THREAD;
  if (name == "SCMP_ACT_KILL_PROCESS") return SCMP_ACT_KILL_PROCESS;
  if (name == "SCMP_ACT_TRAP") return SCMP_ACT_TRAP;
  if (name == "SCMP_ACT_ERRNO") return SCMP_ACT_ERRNO(errno_ret);
  if (name == "SCMP_ACT_TRACE") return SCMP_ACT_TRACE(errno_ret);
  if (name == "SCMP_ACT_ALLOW") return SCMP_ACT_ALLOW;
  if (name == "SCMP_ACT_LOG") return SCMP_ACT_LOG;
  if (name == "SCMP_ACT_NOTIFY") return SCMP_ACT_NOTIFY;
  c.fail(field, "unknown action \"" + name + "\"");
}

scmp_compare parse_op(const Ctx& c, const std::string& name, const std::string& field) {
  static const std::pair<const char*, scmp_compare> ops[] = {
      {"SCMP_CMP_NE", SCMP_CMP_NE}, {"SCMP_CMP_LT", SCMP_CMP_LT},
      {"SCMP_CMP_LE", SCMP_CMP_LE}, {"SCMP_CMP_EQ", SCMP_CMP_EQ},
      {"SCMP_CMP_GE", SCMP_CMP_GE}, {"SCMP_CMP_GT", SCMP_CMP_GT},
      {"SCMP_CMP_MASKED_EQ", SCMP_CMP_MASKED_EQ}};
  for (const auto& [n, op] : ops)
    if (name == n) return op;
  c.fail(field, "unknown operator \"" + name + "\"");
}

uint32_t errno_value(const Ctx& c, const json& v, const std::string& field) {
  uint64_t e = get_u64(c, v, field);
  if (e > 0xffff) c.fail(field, "errno out of range");
  return static_cast<uint32_t>(e);
}

// "SCMP_ARCH_X86" → libseccomp token; 0 if unknown.
uint32_t arch_token(const std::string& name) {
  std::string n = name.rfind("SCMP_ARCH_", 0) == 0 ? name.substr(10) : name;
  for (char& ch : n) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (n == "x86_64" || n == "amd64") return SCMP_ARCH_X86_64;
  if (n == "x86" || n == "i386") return SCMP_ARCH_X86;
  if (n == "x32") return SCMP_ARCH_X32;
  return seccomp_arch_resolve_name(n.c_str());
}

void add_arch(PolicySpec& spec, uint32_t arch) {
  // Only ABIs this x86_64 kernel can run matter; rules for others are dead code.
  if (arch != SCMP_ARCH_X86 && arch != SCMP_ARCH_X32) return;
  for (uint32_t a : spec.extra_arches)
    if (a == arch) return;
  spec.extra_arches.push_back(arch);
}

void parse_arches(const Ctx& c, const json& root, PolicySpec& spec) {
  if (const json* arches = member(root, "architectures")) {
    auto names = get_strings(c, *arches, "architectures");
    // Names this libseccomp does not know are foreign to x86_64 anyway.
    for (const std::string& name : names) add_arch(spec, arch_token(name));
  }
  const json* map = member(root, "archMap");
  if (!map) return;
  if (!map->is_array()) c.fail("archMap", "expected an array");
  for (size_t i = 0; i < map->size(); ++i) {
    std::string field = "archMap[" + std::to_string(i) + "]";
    const json& e = (*map)[i];
    if (!e.is_object()) c.fail(field, "expected an object");
    const json* arch = member(e, "architecture");
    if (!arch) c.fail(field + ".architecture", "missing");
    if (arch_token(get_string(c, *arch, field + ".architecture")) != SCMP_ARCH_X86_64) continue;
    if (const json* subs = member(e, "subArchitectures"))
      for (const std::string& s : get_strings(c, *subs, field + ".subArchitectures"))
        add_arch(spec, arch_token(s));
  }
}

std::pair<int, int> parse_version(const Ctx& c, const std::string& s, const std::string& field) {
  int major = 0, minor = 0;
  if (std::sscanf(s.c_str(), "%d.%d", &major, &minor) != 2) c.fail(field, "bad kernel version \"" + s + "\"");
  return {major, minor};
}

bool native_in(const std::vector<std::string>& arches) {
  for (const std::string& a : arches)
    if (a == "amd64" || a == "x86_64") return true;
  return false;
}

// Docker's includes/excludes filter for a process without capabilities.
bool entry_applies(const Ctx& c, const json& entry, const std::string& field) {
  auto kernel = kernel_version();
  if (const json* inc = member(entry, "includes")) {
    std::string f = field + ".includes";
    if (!inc->is_object()) c.fail(f, "expected an object");
    if (const json* a = member(*inc, "arches"))
      if (auto v = get_strings(c, *a, f + ".arches"); !v.empty() && !native_in(v)) return false;
    if (const json* caps = member(*inc, "caps"))
      if (!get_strings(c, *caps, f + ".caps").empty()) return false;
    if (const json* mk = member(*inc, "minKernel"))
      if (kernel < parse_version(c, get_string(c, *mk, f + ".minKernel"), f + ".minKernel")) return false;
  }
  if (const json* exc = member(entry, "excludes")) {
    std::string f = field + ".excludes";
    if (!exc->is_object()) c.fail(f, "expected an object");
    if (const json* a = member(*exc, "arches"))
      if (native_in(get_strings(c, *a, f + ".arches"))) return false;
    if (const json* caps = member(*exc, "caps")) (void)get_strings(c, *caps, f + ".caps");
    if (const json* mk = member(*exc, "minKernel"))
      if (kernel >= parse_version(c, get_string(c, *mk, f + ".minKernel"), f + ".minKernel")) return false;
  }
  return true;
}

ArgCmp parse_arg(const Ctx& c, const json& a, const std::string& field) {
  if (!a.is_object()) c.fail(field, "expected an object");
  ArgCmp cmp;
  const json* index = member(a, "index");
  if (!index) c.fail(field + ".index", "missing");
  uint64_t i = get_u64(c, *index, field + ".index");
  if (i > 5) c.fail(field + ".index", "must be 0..5, got " + std::to_string(i));
  cmp.index = static_cast<unsigned>(i);
  const json* value = member(a, "value");
  if (!value) c.fail(field + ".value", "missing");
  cmp.a = get_u64(c, *value, field + ".value");
  if (const json* two = member(a, "valueTwo")) cmp.b = get_u64(c, *two, field + ".valueTwo");
  const json* op = member(a, "op");
  if (!op) c.fail(field + ".op", "missing");
  cmp.op = parse_op(c, get_string(c, *op, field + ".op"), field + ".op");
  return cmp;
}

std::vector<std::string> entry_names(const Ctx& c, const json& entry, const std::string& field) {
  const json* names = member(entry, "names");
  const json* name = member(entry, "name");
  if (names && name) c.fail(field, "both \"name\" and \"names\" given");
  if (name) return {get_string(c, *name, field + ".name")};
  if (!names) c.fail(field, "missing \"names\"");
  return get_strings(c, *names, field + ".names");
}

void parse_entry(const Ctx& c, const json& entry, size_t index, PolicySpec& spec) {
  std::string field = "syscalls[" + std::to_string(index) + "]";
  if (!entry.is_object()) c.fail(field, "expected an object");
  Rule rule;
  rule.origin = field;
  rule.names = entry_names(c, entry, field);
  uint32_t errno_ret = EPERM;
  if (const json* e = member(entry, "errnoRet")) errno_ret = errno_value(c, *e, field + ".errnoRet");
  const json* action = member(entry, "action");
  if (!action) c.fail(field + ".action", "missing");
  rule.action = parse_action(c, get_string(c, *action, field + ".action"), errno_ret, field + ".action");
  if (const json* args = member(entry, "args")) {
    if (!args->is_array()) c.fail(field + ".args", "expected an array");
    for (size_t i = 0; i < args->size(); ++i)
      rule.args.push_back(parse_arg(c, (*args)[i], field + ".args[" + std::to_string(i) + "]"));
  }
  // Validate the whole entry before deciding whether it applies, so a broken
  // entry is reported on every host.
  if (entry_applies(c, entry, field)) spec.rules.push_back(std::move(rule));
}

}  // namespace

std::pair<int, int> kernel_version() {
  utsname u{};
  int major = 0, minor = 0;
  if (uname(&u) == 0) std::sscanf(u.release, "%d.%d", &major, &minor);
  return {major, minor};
}

PolicySpec parse_profile(const std::string& path, const std::string& content) {
  Ctx c{"seccomp profile " + path};
  json root;
  try {
    root = json::parse(content);
  } catch (const json::exception& e) {
    throw Error(c.prefix + ": invalid JSON: " + e.what());
  }
  if (!root.is_object()) c.fail("(top level)", "expected an object");

  PolicySpec spec;
  spec.source = c.prefix;
  uint32_t default_errno = EPERM;
  if (const json* e = member(root, "defaultErrnoRet")) default_errno = errno_value(c, *e, "defaultErrnoRet");
  const json* def = member(root, "defaultAction");
  if (!def) c.fail("defaultAction", "missing");
  spec.default_action = parse_action(c, get_string(c, *def, "defaultAction"), default_errno, "defaultAction");

  parse_arches(c, root, spec);
  if (const json* calls = member(root, "syscalls")) {
    if (!calls->is_array()) c.fail("syscalls", "expected an array");
    for (size_t i = 0; i < calls->size(); ++i) parse_entry(c, (*calls)[i], i, spec);
  }
  return spec;
}

}  // namespace ultari::seccomp::detail
