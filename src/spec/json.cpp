#include "spec/json.h"

#include <limits>
#include <type_traits>

#include "util/error.h"

namespace ultari {
namespace {

using nlohmann::json;

template <class T>
json opt(const std::optional<T>& v) {
  return v ? json(*v) : json(nullptr);
}
json opt_ms(const std::optional<std::chrono::milliseconds>& v) { return v ? json(v->count()) : json(nullptr); }

template <class T>
T get(const json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end()) throw Error("spec: " + where + key + " is missing");
  // Integers must be integers in range: a float (1e300) or a negative
  // number converted to an unsigned field is undefined behaviour.
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    bool ok = std::is_unsigned_v<T> ? it->is_number_unsigned() : it->is_number_integer();
    if (ok && std::is_unsigned_v<T>)
      ok = it->template get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<T>::max());
    if (!ok) throw Error("spec: " + where + key + " must be an integer in range");
  }
  try {
    return it->get<T>();
  } catch (const json::exception&) {
    throw Error("spec: " + where + key + " has the wrong type");
  }
}

template <class T>
std::optional<T> get_opt(const json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  return get<T>(j, key, where);
}

const json& object(const json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_object()) throw Error("spec: " + where + key + " must be an object");
  return *it;
}

}  // namespace

json spec_to_json(const Spec& s) {
  json mounts = json::array();
  for (const auto& m : s.mounts)
    mounts.push_back({{"kind", m.kind == Mount::Kind::Bind ? "bind" : "tmpfs"},
                      {"source", m.source},
                      {"destination", m.destination},
                      {"read_only", m.read_only},
                      {"tmpfs_size", m.tmpfs_size}});
  const auto& l = s.limits;
  const auto& n = s.network;
  json secrets = json::array();
  for (const auto& x : n.secrets)
    secrets.push_back({{"name", x.name},
                       {"from", x.from},
                       {"hosts", x.hosts},
                       {"headers", x.headers},
                       {"placeholder", x.placeholder}});
  return {{"rootfs", s.rootfs},
          {"layers", s.layers},
          {"upper_dir", s.upper_dir},
          {"workspace", s.workspace},
          {"mounts", mounts},
          {"hostname", s.hostname},
          {"identity", {{"uid", s.identity.uid}, {"gid", s.identity.gid}, {"subids", s.identity.subids}}},
          {"limits",
           {{"memory_bytes", opt(l.memory_bytes)},
            {"pids", opt(l.pids)},
            {"cpus", opt(l.cpus)},
            {"wall_timeout_ms", opt_ms(l.wall_timeout)},
            {"cpu_time_ms", opt_ms(l.cpu_time)},
            {"output_bytes", opt(l.output_bytes)},
            {"tmp_bytes", l.tmp_bytes},
            {"nofile", opt(l.nofile)}}},
          {"seccomp", {{"profile_path", s.seccomp.profile_path}, {"setid_files", s.seccomp.setid_files},
                       {"chown_noop", s.seccomp.chown_noop}}},
          {"capabilities", s.capabilities},
          {"network",
           {{"mode", n.mode == NetworkSpec::Mode::None ? "none" : n.mode == NetworkSpec::Mode::Allow ? "allow" : "open"},
            {"allow", n.allow},
            {"deny", n.deny},
            {"ports", n.ports},
            {"resolver", n.resolver},
            {"audit_path", n.audit_path},
            {"ca_file", n.ca_file},
            {"inspect_tls", n.inspect_tls},
            {"upstream", n.upstream},
            {"upstream_auth", n.upstream_auth},
            {"secrets", secrets},
            {"dlp", {{"enabled", n.dlp.enabled}, {"block", n.dlp.block}, {"literals", n.dlp.literals}}}}},
          {"process", {{"argv", s.process.argv}, {"env", s.process.env}, {"cwd", s.process.cwd}, {"boot", s.process.boot}}}};
}

Spec spec_from_json(const json& j) {
  if (!j.is_object()) throw Error("spec: must be a JSON object");
  Spec s;
  s.rootfs = get<std::string>(j, "rootfs", "");
  if (j.contains("layers")) s.layers = get<std::vector<std::string>>(j, "layers", "");
  if (j.contains("upper_dir")) s.upper_dir = get<std::string>(j, "upper_dir", "");
  s.workspace = get<std::string>(j, "workspace", "");
  s.hostname = get<std::string>(j, "hostname", "");
  auto mounts = j.find("mounts");
  if (mounts == j.end() || !mounts->is_array()) throw Error("spec: mounts must be an array");
  for (size_t i = 0; i < mounts->size(); ++i) {
    const json& m = (*mounts)[i];
    std::string where = "mounts[" + std::to_string(i) + "].";
    if (!m.is_object()) throw Error("spec: " + where + " must be an object");
    Mount out;
    std::string kind = get<std::string>(m, "kind", where);
    if (kind != "bind" && kind != "tmpfs") throw Error("spec: " + where + "kind must be bind or tmpfs");
    out.kind = kind == "bind" ? Mount::Kind::Bind : Mount::Kind::Tmpfs;
    out.source = get<std::string>(m, "source", where);
    out.destination = get<std::string>(m, "destination", where);
    out.read_only = get<bool>(m, "read_only", where);
    out.tmpfs_size = get<uint64_t>(m, "tmpfs_size", where);
    s.mounts.push_back(std::move(out));
  }
  const json& id = object(j, "identity", "");
  s.identity.uid = get<uid_t>(id, "uid", "identity.");
  s.identity.gid = get<gid_t>(id, "gid", "identity.");
  if (id.contains("subids")) s.identity.subids = get<bool>(id, "subids", "identity.");
  const json& l = object(j, "limits", "");
  const std::string lw = "limits.";
  s.limits.memory_bytes = get_opt<uint64_t>(l, "memory_bytes", lw);
  s.limits.pids = get_opt<uint64_t>(l, "pids", lw);
  s.limits.cpus = get_opt<double>(l, "cpus", lw);
  if (auto ms = get_opt<int64_t>(l, "wall_timeout_ms", lw)) s.limits.wall_timeout = std::chrono::milliseconds(*ms);
  if (auto ms = get_opt<int64_t>(l, "cpu_time_ms", lw)) s.limits.cpu_time = std::chrono::milliseconds(*ms);
  s.limits.output_bytes = get_opt<uint64_t>(l, "output_bytes", lw);
  s.limits.tmp_bytes = get<uint64_t>(l, "tmp_bytes", lw);
  s.limits.nofile = get_opt<uint64_t>(l, "nofile", lw);
  s.seccomp.profile_path = get<std::string>(object(j, "seccomp", ""), "profile_path", "seccomp.");
  if (object(j, "seccomp", "").contains("setid_files"))
    s.seccomp.setid_files = get<bool>(object(j, "seccomp", ""), "setid_files", "seccomp.");
  if (object(j, "seccomp", "").contains("chown_noop"))
    s.seccomp.chown_noop = get<bool>(object(j, "seccomp", ""), "chown_noop", "seccomp.");
  if (j.contains("capabilities")) s.capabilities = get<std::vector<std::string>>(j, "capabilities", "");
  if (j.contains("network")) {
    const json& n = object(j, "network", "");
    const std::string nw = "network.";
    std::string mode = get<std::string>(n, "mode", nw);
    if (mode == "none") s.network.mode = NetworkSpec::Mode::None;
    else if (mode == "allow") s.network.mode = NetworkSpec::Mode::Allow;
    else if (mode == "open") s.network.mode = NetworkSpec::Mode::Open;
    else throw Error("spec: network.mode must be none, allow or open");
    s.network.allow = get<std::vector<std::string>>(n, "allow", nw);
    s.network.deny = get<std::vector<std::string>>(n, "deny", nw);
    s.network.ports = get<std::vector<uint16_t>>(n, "ports", nw);
    s.network.resolver = get<std::string>(n, "resolver", nw);
    s.network.audit_path = get<std::string>(n, "audit_path", nw);
    s.network.ca_file = get<std::string>(n, "ca_file", nw);
    s.network.inspect_tls = get<bool>(n, "inspect_tls", nw);
    s.network.upstream = get<std::string>(n, "upstream", nw);
    s.network.upstream_auth = get<std::string>(n, "upstream_auth", nw);
    auto secrets = n.find("secrets");
    if (secrets == n.end() || !secrets->is_array()) throw Error("spec: network.secrets must be an array");
    for (size_t i = 0; i < secrets->size(); ++i) {
      const json& x = (*secrets)[i];
      std::string where = "network.secrets[" + std::to_string(i) + "].";
      if (!x.is_object()) throw Error("spec: " + where + " must be an object");
      s.network.secrets.push_back({get<std::string>(x, "name", where), get<std::string>(x, "from", where),
                                   get<std::vector<std::string>>(x, "hosts", where),
                                   get<std::vector<std::string>>(x, "headers", where),
                                   get<std::string>(x, "placeholder", where)});
    }
    const json& d = object(n, "dlp", nw);
    s.network.dlp.enabled = get<bool>(d, "enabled", "network.dlp.");
    s.network.dlp.block = get<bool>(d, "block", "network.dlp.");
    s.network.dlp.literals = get<std::vector<std::string>>(d, "literals", "network.dlp.");
  }
  const json& p = object(j, "process", "");
  s.process.argv = get<std::vector<std::string>>(p, "argv", "process.");
  s.process.env = get<std::vector<std::string>>(p, "env", "process.");
  s.process.cwd = get<std::string>(p, "cwd", "process.");
  if (p.contains("boot")) s.process.boot = get<std::vector<std::string>>(p, "boot", "process.");  // (newer than the rest)
  return s;
}

std::string request_mismatch(const Spec& made, const Spec& request) {
  Spec a = made, b = request;
  // Only what the pool cannot change per request is compared.
  Spec blank;
  take_request_fields(a, blank);
  take_request_fields(b, blank);
  json ja = spec_to_json(a), jb = spec_to_json(b);
  if (ja == jb) return "";
  for (auto& [key, value] : ja.items()) {
    if (jb[key] == value) continue;
    if (value.is_object())
      for (auto& [sub, v] : value.items())
        if (jb[key][sub] != v) return key + "." + sub;
    return key;
  }
  return "spec";
}

}  // namespace ultari
