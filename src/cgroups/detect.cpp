// Host cgroup layout detection from /proc/self/mountinfo and /proc/self/cgroup.
#include <unistd.h>

#include <array>
#include <string_view>

#include "cgroups/cgroups.h"
#include "cgroups/io.h"
#include "util/caller.h"

namespace ultari::cgroups {
namespace {

constexpr std::array<std::pair<Controller, std::string_view>, 5> kNames = {{
    {Controller::Memory, "memory"},
    {Controller::Pids, "pids"},
    {Controller::Cpu, "cpu"},
    {Controller::Cpuacct, "cpuacct"},
    {Controller::Freezer, "freezer"},
}};

struct Mount {
  std::string root;        // path of the mount inside its hierarchy
  std::string mountpoint;
  std::string fstype;
  std::string superopts;
};

// Splits on sep, calling fn(token) for each non-empty token; stops when fn
// returns false.
template <typename Fn>
void split(std::string_view s, char sep, Fn fn) {
  while (!s.empty()) {
    size_t i = s.find(sep);
    std::string_view tok = s.substr(0, i);
    if (!tok.empty() && !fn(tok)) return;
    if (i == std::string_view::npos) break;
    s = s.substr(i + 1);
  }
}

bool has_token(std::string_view list, char sep, std::string_view want) {
  bool found = false;
  split(list, sep, [&](std::string_view t) {
    found = t == want;
    return !found;
  });
  return found;
}

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string unescape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '3') {
      out.push_back(static_cast<char>((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 +
                                      (s[i + 3] - '0')));
      i += 3;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

std::vector<Mount> cgroup_mounts() {
  std::vector<Mount> mounts;
  std::string text;
  if (!io::read_file("/proc/self/mountinfo", text)) return mounts;
  split(text, '\n', [&](std::string_view line) {
    std::vector<std::string_view> f;
    split(line, ' ', [&](std::string_view t) {
      f.push_back(t);
      return true;
    });
    size_t dash = 6;
    while (dash < f.size() && f[dash] != "-") ++dash;
    if (f.size() < 5 || dash + 3 >= f.size()) return true;
    std::string_view type = f[dash + 1];
    if (type == "cgroup" || type == "cgroup2")
      mounts.push_back({unescape(f[3]), unescape(f[4]), std::string(type),
                        std::string(f[dash + 3])});
    return true;
  });
  return mounts;
}

// /proc/self/cgroup: "id:controllers:path". Returns the path of the line whose
// controller list contains `controller` ("" = the v2 line "0::").
std::optional<std::string> own_path(const std::string& text, std::string_view controller) {
  std::optional<std::string> out;
  split(text, '\n', [&](std::string_view line) {
    size_t a = line.find(':');
    size_t b = a == std::string_view::npos ? a : line.find(':', a + 1);
    if (b == std::string_view::npos) return true;
    std::string_view ctrls = line.substr(a + 1, b - a - 1);
    bool match = controller.empty() ? ctrls.empty() : has_token(ctrls, ',', controller);
    if (match) out = std::string(line.substr(b + 1));
    return !match;
  });
  return out;
}

std::string strip_slash(std::string s) {
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  return s;
}

// The directory of the caller's own group inside a mounted hierarchy.
std::optional<std::string> own_dir(const Mount& m, const std::string& cg_path) {
  std::string_view rel = cg_path;
  if (m.root != "/") {
    if (rel.substr(0, m.root.size()) != m.root) return std::nullopt;
    rel.remove_prefix(m.root.size());
  }
  return strip_slash(m.mountpoint + std::string(rel));
}

bool writable(const std::string& dir) { return ::access(dir.c_str(), W_OK) == 0; }

Layout detect_uncached() {
  Layout layout;
  for (auto [c, name] : kNames) layout.controllers.push_back({c, 0, "", false});

  const bool root = host_root();
  std::string self_cgroup;
  if (!root) io::read_file("/proc/self/cgroup", self_cgroup);

  const std::vector<Mount> mounts = cgroup_mounts();
  const Mount* v2 = nullptr;
  for (const Mount& m : mounts) {
    if (m.fstype == "cgroup2") {
      if (!v2) v2 = &m;
      continue;
    }
    for (auto& cm : layout.controllers) {
      std::string_view name = kNames[static_cast<size_t>(cm.controller)].second;
      if (cm.version != 0 || !has_token(m.superopts, ',', name)) continue;
      std::string base = m.mountpoint;
      if (!root) {
        auto p = own_path(self_cgroup, name);
        auto dir = p ? own_dir(m, *p) : std::nullopt;
        if (!dir || !writable(*dir)) continue;  // rootless v1: only when delegated
        base = *dir;
      }
      cm = {cm.controller, 1, base, writable(base)};
    }
  }
  if (v2) {
    const Mount& m = *v2;
    layout.unified = m.mountpoint;
    std::string base = m.mountpoint;
    bool ok = true;
    if (!root) {
      auto p = own_path(self_cgroup, "");
      auto dir = p ? own_dir(m, *p) : std::nullopt;
      ok = dir.has_value();
      if (ok) base = *dir;
    }
    std::string avail;
    if (ok && io::read_file(base + "/cgroup.controllers", avail)) {
      for (char& ch : avail)
        if (ch == '\n') ch = ' ';
      bool w = writable(base);
      for (auto& cm : layout.controllers) {
        std::string_view name = kNames[static_cast<size_t>(cm.controller)].second;
        if (cm.version != 0 || !has_token(avail, ' ', name)) continue;
        if (!root && !w) continue;
        cm = {cm.controller, 2, base, w};
      }
    }
  }
  return layout;
}

}  // namespace

const ControllerMount& Layout::get(Controller c) const {
  for (const auto& cm : controllers)
    if (cm.controller == c) return cm;
  static const ControllerMount kNone[5] = {
      {Controller::Memory}, {Controller::Pids}, {Controller::Cpu},
      {Controller::Cpuacct}, {Controller::Freezer}};
  return kNone[static_cast<size_t>(c)];
}

Layout detect() {
  // mountinfo is read once per process; sandboxes start many times.
  static const Layout cached = detect_uncached();
  return cached;
}

}  // namespace ultari::cgroups
