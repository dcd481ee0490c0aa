// Kernel modules on the host side (kernel.h).
#include "provision/kernel.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <toml++/toml.h>

#include "provision/cloud_config.h"
#include "net/policy.h"
#include "util/caller.h"
#include "util/error.h"
#include "util/paths.h"
#include "util/process.h"
#include "util/random.h"
#include "util/url.h"

namespace ultari::provision {
namespace fs = std::filesystem;

namespace {

bool exists(const std::string& p) {
  struct stat st{};
  return lstat(p.c_str(), &st) == 0;
}

// A short stable hash (FNV-1a, 64 bits) for a cache directory's name.
std::string short_hash(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

const std::vector<std::string> kToolEnv = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"};

std::string find_tool(const char* name) {
  for (const char* dir : {"/usr/sbin/", "/sbin/", "/usr/bin/", "/bin/"}) {
    std::string p = std::string(dir) + name;
    if (access(p.c_str(), X_OK) == 0) return p;
  }
  return "";
}

}  // namespace

HostConfig load_host_config() {
  HostConfig c;
  const char* env = std::getenv("ULTARI_CONFIG");
  std::string path = env && *env ? env : "/etc/ultari/config.toml";
  c.module_allow.assign(std::begin(kDefaultModuleAllow), std::end(kDefaultModuleAllow));
  if (!exists(path)) {
    if (env && *env) throw Error("ULTARI_CONFIG: no file at '" + path + "'");
    return c;
  }
  c.path = path;
  // Root loads what this file allows: it must be root's and not writable by
  // others (a root wrapper keeping a user's environment could point here).
  struct stat st{};
  if (host_root() && (stat(path.c_str(), &st) != 0 || st.st_uid != 0 || (st.st_mode & 022)))
    throw Error(path + ": Ultari's host configuration (its kernel module allowlist) must belong to root and be writable by root only");
  toml::table t;
  try {
    t = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    throw Error(path + " line " + std::to_string(e.source().begin.line) + ": " + std::string(e.description()));
  }
  for (auto&& [key, value] : t)
    if (key.str() != "kernel_modules" && key.str() != "ppa")
      throw Error(path + ": unknown key '" + std::string(key.str()) + "' (known: kernel_modules, ppa)");
  if (t.contains("ppa") && !t["ppa"].as_table()) throw Error(path + ": ppa is a table ([ppa])");
  if (auto* ppa = t["ppa"].as_table()) {
    for (auto&& [key, value] : *ppa) {
      std::string k(key.str());
      auto s = value.value<std::string>();
      std::string* into = k == "archive" ? &c.ppa_archive : k == "api" ? &c.ppa_api : k == "keyserver" ? &c.ppa_keyserver : nullptr;
      if (!into) throw Error(path + ": unknown key 'ppa." + k + "' (known: archive, api, keyserver)");
      if (!s) throw Error(path + ": ppa." + k + " is a URL (a string)");
      std::string v = *s;
      while (!v.empty() && v.back() == '/') v.pop_back();
      std::string host;
      if (k == "keyserver") {
        try {
          AptSource probe;
          set_keyserver(v, probe);
          host = probe.keyserver_host;
        } catch (const Error& e) {
          throw Error(path + ": ppa.keyserver: " + e.what());
        }
      } else {
        host = host_of(v);
        if ((v.rfind("http://", 0) != 0 && v.rfind("https://", 0) != 0) || host.empty() ||
            v.find_first_of(" \t\n\"'") != std::string::npos)
          throw Error(path + ": ppa." + k + " must be an http:// or https:// URL with a host, not '" + v + "'");
        std::string authority = v.substr(v.find("://") + 3);
        authority = authority.substr(0, authority.find('/'));
        if (authority.find('@') != std::string::npos)
          throw Error(path + ": ppa." + k + " holds a user or password: an apt source in the image would show it");
      }
      // The build's egress policy allows names: a host name with a dot, not
      // an address nor localhost.
      if (net::plain_host_name(host).empty())
        throw Error(path + ": ppa." + k + ": '" + host + "' is not a host name a build's egress policy can allow (a name with a dot, not an address)");
      *into = v;
    }
  }
  if (auto* km = t["kernel_modules"].as_table()) {
    for (auto&& [key, value] : *km)
      if (key.str() != "allow")
        throw Error(path + ": unknown key 'kernel_modules." + std::string(key.str()) + "' (known: allow)");
    if (auto* allow = (*km)["allow"].as_array()) {
      c.module_allow.clear();
      for (auto& v : *allow) {
        auto s = v.value<std::string>();
        if (!s) throw Error(path + ": kernel_modules.allow holds module names (strings)");
        std::string name = *s;
        bool prefix = !name.empty() && name.back() == '*';
        if (prefix) name.pop_back();
        try {
          if (!(prefix && name.empty())) normalize_module(name);
        } catch (const Error& e) {
          throw Error(path + ": kernel_modules.allow: " + e.what());
        }
        if (prefix && name.empty()) throw Error(path + ": kernel_modules.allow: a bare '*' is refused; name the modules");
        c.module_allow.push_back(*s);
      }
    } else if ((*km).contains("allow")) {
      throw Error(path + ": kernel_modules.allow must be a list of module names");
    }
  }
  return c;
}

bool module_allowed(const HostConfig& config, const std::string& name) {
  for (const auto& pattern : config.module_allow) {
    std::string p = pattern;
    std::replace(p.begin(), p.end(), '-', '_');
    if (!p.empty() && p.back() == '*') {
      if (name.compare(0, p.size() - 1, p, 0, p.size() - 1) == 0) return true;
    } else if (p == name) {
      return true;
    }
  }
  return false;
}

RunningKernel running_kernel() {
  utsname u{};
  uname(&u);
  RunningKernel k;
  k.release = u.release;
  k.identity = std::string(u.release) + " " + u.version;
  for (const char* base : {"/lib/modules/", "/usr/lib/modules/"}) {
    std::string dir = base + k.release;
    if (exists(dir + "/modules.dep")) {
      k.host_tree = dir;
      break;
    }
  }
  k.can_load = exists("/proc/modules");
  return k;
}

std::set<std::string> builtin_from_config(const std::string& config) {
  // kbuild names a module after its object, which for most options is the
  // option's name in lower case; these are named otherwise.
  static const std::map<std::string, std::string> kNamed = {
      {"NF_CT_NETLINK", "nf_conntrack_netlink"},
      {"NF_CT_NETLINK_TIMEOUT", "nfnetlink_cttimeout"},
      {"NF_CT_NETLINK_HELPER", "nfnetlink_cthelper"},
      {"NETFILTER_NETLINK", "nfnetlink"},
      {"NETFILTER_NETLINK_QUEUE", "nfnetlink_queue"},
      {"NETFILTER_NETLINK_LOG", "nfnetlink_log"},
      {"NETFILTER_NETLINK_ACCT", "nfnetlink_acct"},
      {"NETFILTER_NETLINK_OSF", "nfnetlink_osf"},
      {"NETFILTER_CONNCOUNT", "nf_conncount"},
      {"NF_CONNTRACK_IPV4", "nf_conntrack_ipv4"},
      {"NF_CONNTRACK_IPV6", "nf_conntrack_ipv6"},
      {"NF_NAT_MASQUERADE", "nf_nat_masquerade"},
      {"NFT_COMPAT", "nft_compat"},
      {"NF_TABLES", "nf_tables"},
      {"IP_NF_IPTABLES", "ip_tables"},
      {"IP6_NF_IPTABLES", "ip6_tables"},
      {"IP_NF_FILTER", "iptable_filter"},
      {"IP_NF_NAT", "iptable_nat"},
      {"IP_NF_MANGLE", "iptable_mangle"},
      {"IP_NF_RAW", "iptable_raw"},
      {"IP6_NF_FILTER", "ip6table_filter"},
      {"IP6_NF_NAT", "ip6table_nat"},
      {"IP6_NF_MANGLE", "ip6table_mangle"},
      {"BRIDGE_NETFILTER", "br_netfilter"},
      {"EXT4_FS", "ext4"},
      {"XFS_FS", "xfs"},
      {"BTRFS_FS", "btrfs"},
      {"FUSE_FS", "fuse"},
      {"OVERLAY_FS", "overlay"},
      {"SQUASHFS", "squashfs"},
      {"ISO9660_FS", "isofs"},
      {"VFAT_FS", "vfat"},
      {"NFS_FS", "nfs"},
      {"TUN", "tun"},
      {"VETH", "veth"},
      {"BRIDGE", "bridge"},
      {"VXLAN", "vxlan"},
      {"WIREGUARD", "wireguard"},
      {"BLK_DEV_LOOP", "loop"},
      {"BLK_DEV_NBD", "nbd"},
      {"VIRTIO_NET", "virtio_net"},
      {"VIRTIO_BLK", "virtio_blk"},
  };
  std::set<std::string> names;
  std::istringstream in(config);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("CONFIG_", 0) != 0 || line.size() < 10 || line.substr(line.size() - 2) != "=y") continue;
    std::string option = line.substr(7, line.size() - 9);
    auto named = kNamed.find(option);
    if (named != kNamed.end()) {
      names.insert(named->second);
      continue;
    }
    // xt_ matches are lower case, targets upper case (xt_MASQUERADE).
    if (option.rfind("NETFILTER_XT_MATCH_", 0) == 0 || option.rfind("NETFILTER_XT_TARGET_", 0) == 0) {
      bool target = option.rfind("NETFILTER_XT_TARGET_", 0) == 0;
      std::string rest = option.substr(target ? 20 : 19);
      if (!target) std::transform(rest.begin(), rest.end(), rest.begin(), ::tolower);
      names.insert("xt_" + rest);
      continue;
    }
    std::string name = option;
    std::transform(name.begin(), name.end(), name.begin(), ::tolower);
    names.insert(name);
  }
  return names;
}

std::set<std::string> builtin_modules(const RunningKernel& kernel) {
  std::set<std::string> names;
  if (!kernel.host_tree.empty()) {
    std::istringstream in(read_or_empty(kernel.host_tree + "/modules.builtin"));
    std::string line;
    while (std::getline(in, line)) {
      std::string base = line.substr(line.rfind('/') + 1);
      if (base.size() > 3 && base.substr(base.size() - 3) == ".ko") base.resize(base.size() - 3);
      std::replace(base.begin(), base.end(), '-', '_');
      if (!base.empty()) names.insert(base);
    }
    return names;
  }
  // Built-in modules with parameters show in /sys/module, without the
  // initstate a loaded one has.
  if (std::unique_ptr<DIR, int (*)(DIR*)> d(opendir("/sys/module"), closedir); d) {
    while (dirent* e = readdir(d.get())) {
      std::string n = e->d_name;
      if (n[0] != '.' && !exists("/sys/module/" + n + "/initstate")) names.insert(n);
    }
  }
  if (exists("/proc/config.gz")) {
    std::string gzip = find_tool("gzip");
    if (gzip.empty()) throw Error("reading /proc/config.gz needs gzip on the host");
    std::string config;
    ProgramResult r = run_program({gzip, "-dc", "/proc/config.gz"}, kToolEnv,
                                  [&](const std::string& l) { config += l + "\n"; }, 1);
    if (r.status != 0) throw Error("gzip -dc /proc/config.gz failed: " + r.tail_text());
    auto more = builtin_from_config(config);
    names.insert(more.begin(), more.end());
  }
  return names;
}

void ensure_module(const RunningKernel& kernel, const std::set<std::string>& builtin, const HostConfig& config,
                   const std::string& name) {
  if (builtin.count(name)) return;
  if (exists("/sys/module/" + name + "/initstate")) return;  // loaded
  if (!module_allowed(config, name))
    throw Error("kernel module '" + name + "' is not on the allowlist (" +
                (config.path.empty() ? std::string("the default; set [kernel_modules] allow in /etc/ultari/config.toml")
                                     : "kernel_modules.allow in " + config.path) +
                ")");
  if (!kernel.can_load)
    throw Error("kernel module '" + name + "' is not built into the running kernel (" + kernel.release +
                "), and this kernel cannot load modules");
  if (!host_root()) throw Error("kernel module '" + name + "' is not loaded, and only root may load it");
  std::string modprobe = find_tool("modprobe");
  if (modprobe.empty()) throw Error("loading kernel module '" + name + "' needs the host's modprobe (apt-get install kmod)");
  ProgramResult r = run_program({modprobe, "--", name}, kToolEnv);
  if (r.status != 0) throw Error("modprobe " + name + " on the host failed: " + r.tail_text());
}

namespace {

enum class Placed { Link, Copy, Skipped };

// `to` as a hard link of `from` (no copy, no space: the store and the host's
// tree on one filesystem, a caller allowed to link the file), else a copy;
// a file that cannot be read is left out.
Placed link_or_copy(const fs::path& from, const fs::path& to) {
  if (link(from.c_str(), to.c_str()) == 0) return Placed::Link;
  std::error_code ec;
  if (fs::copy_file(from, to, ec)) return Placed::Copy;
  fs::remove(to, ec);
  return Placed::Skipped;
}

}  // namespace

std::string kernel_layer_path(const std::string& cache_dir, uid_t uid, gid_t gid, const RunningKernel& kernel) {
  // "tree": the layer holds the host tree's modules, not only its indexes.
  std::string key = kernel.identity + " tree";
  struct stat st{};
  if (!kernel.host_tree.empty() && stat((kernel.host_tree + "/modules.dep").c_str(), &st) == 0)
    key += " " + std::to_string(st.st_mtim.tv_sec) + " " + std::to_string(st.st_size);
  return cache_dir + "/kernel-" + short_hash(key + " " + std::to_string(uid) + ":" + std::to_string(gid));
}

namespace {

UniqueFd open_layer_lock(const std::string& path) {
  UniqueFd fd(open((path + ".lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!fd) throw_errno("kernel layer lock " + path + ".lock");
  return fd;
}

// Whether the lock `fd` (locked now) is still the file at <path>.lock: a
// prune that let go of it has unlinked it, and a new one may be there.
bool still_the_lock(int fd, const std::string& path) {
  struct stat held{}, named{};
  return fstat(fd, &held) == 0 && held.st_nlink > 0 && lstat((path + ".lock").c_str(), &named) == 0 &&
         held.st_dev == named.st_dev && held.st_ino == named.st_ino;
}

void make_kernel_layer(const std::string& path, const std::string& cache_dir, uid_t uid, gid_t gid,
                       const RunningKernel& kernel);

}  // namespace

KernelLayer kernel_layer(const std::string& cache_dir, uid_t uid, gid_t gid) {
  return kernel_layer(cache_dir, uid, gid, running_kernel());
}

KernelLayer kernel_layer(const std::string& cache_dir, uid_t uid, gid_t gid, const RunningKernel& kernel) {
  std::string path = kernel_layer_path(cache_dir, uid, gid, kernel);
  // A prune takes the lock exclusively, moves the layer away and unlinks
  // the lock before it lets go: a layer still there, held by the lock
  // still at its name, stays until the hold ends.
  for (int tries = 0; tries < 4; ++tries) {
    if (!exists(path)) make_kernel_layer(path, cache_dir, uid, gid, kernel);
    UniqueFd hold = open_layer_lock(path);
    while (flock(hold.get(), LOCK_SH) != 0)
      if (errno != EINTR) throw_errno("flock " + path + ".lock");
    if (still_the_lock(hold.get(), path) && exists(path)) return {path, std::move(hold)};
  }
  throw Error("the kernel layer " + path + " was removed each time it was made (a prune running in a loop?)");
}

KernelPrune prune_kernel_layers(const std::string& cache_dir, const std::string& keep) {
  KernelPrune result;
  remove_dead_temps(cache_dir, "kernel-");  // half-made or half-removed
  std::unique_ptr<DIR, int (*)(DIR*)> d(opendir(cache_dir.c_str()), closedir);
  if (!d) {
    if (errno == ENOENT) return result;
    throw_errno("list " + cache_dir);
  }
  std::vector<std::string> layers;
  while (dirent* e = readdir(d.get())) {
    std::string name = e->d_name;
    if (name.rfind("kernel-", 0) == 0 && name.find('.') == std::string::npos) layers.push_back(name);
  }
  for (const auto& name : layers) {
    std::string path = cache_dir + "/" + name;
    if (path == keep) continue;
    UniqueFd lock = open_layer_lock(path);
    if (flock(lock.get(), LOCK_EX | LOCK_NB) != 0) {
      ++result.in_use;
      continue;
    }
    if (!still_the_lock(lock.get(), path)) continue;  // another prune had it
    // Out of the way first (a name a later prune removes if this one dies
    // half-way), then the lock: a sandbox that waited for it finds it
    // unlinked, and the layer gone, and makes one.
    std::string doomed = path + ".tmp-" + std::to_string(getpid()) + "-" + random_hex(4);
    if (rename(path.c_str(), doomed.c_str()) != 0) {
      if (errno != ENOENT) throw_errno("prune: moving " + path + " away");
      unlink((path + ".lock").c_str());  // another prune moved it: the lock this one made
      continue;
    }
    unlink((path + ".lock").c_str());
    // What removing it frees: files whose every link is in the layer.
    uint64_t freed = 0;
    std::map<std::pair<dev_t, ino_t>, std::pair<nlink_t, uint64_t>> seen;
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(doomed, ec); !ec && it != fs::recursive_directory_iterator();
         it.increment(ec)) {
      struct stat st{};
      if (lstat(it->path().c_str(), &st) != 0 || S_ISDIR(st.st_mode)) continue;
      auto& [links, bytes] = seen[{st.st_dev, st.st_ino}];
      if (links++ == 0) bytes = static_cast<uint64_t>(st.st_blocks) * 512;
      if (links == st.st_nlink) freed += bytes;
    }
    remove_tree(doomed);
    if (!exists(doomed)) {
      ++result.removed;
      result.bytes += freed;
    } else {
      ++result.left;  // (remove_tree is best effort; a later prune tries again: the name is a dead process's)
    }
  }
  return result;
}

namespace {

void make_kernel_layer(const std::string& path, const std::string& cache_dir, uid_t uid, gid_t gid,
                       const RunningKernel& kernel) {
  fs::create_directories(cache_dir);
  std::string tmp = path + ".tmp-" + std::to_string(getpid()) + "-" + random_hex(4);
  struct Cleanup {
    std::string p;
    ~Cleanup() {
      std::error_code ec;
      if (!p.empty()) fs::remove_all(p, ec);
    }
  } cleanup{tmp};
  std::string modules = tmp + "/lib/modules/" + kernel.release;
  fs::create_directories(modules);
  // Files that are the host's own (hard links, by device and inode): never
  // chowned.
  std::set<std::pair<dev_t, ino_t>> hosts;
  if (!kernel.host_tree.empty()) {
    // The whole tree, modules included: `depmod -a` inside rebuilds the
    // indexes from the modules it finds, so with the indexes alone it
    // would write empty ones and a later `modprobe` of a loaded module
    // would fail. Hard links where allowed (root, one filesystem), else
    // copies; symlinks (build, source: into the host's headers) are left
    // out, and so is anything but files and directories.
    for (auto it = fs::recursive_directory_iterator(kernel.host_tree); it != fs::recursive_directory_iterator(); ++it) {
      fs::path rel = fs::relative(it->path(), kernel.host_tree);
      fs::path to = fs::path(modules) / rel;
      if (it->is_symlink()) {
        it.disable_recursion_pending();
        continue;
      }
      if (it->is_directory()) {
        fs::create_directory(to);
      } else if (it->is_regular_file() && link_or_copy(it->path(), to) == Placed::Link) {
        struct stat st{};
        if (lstat(to.c_str(), &st) != 0) throw_errno("stat " + to.string());
        hosts.insert({st.st_dev, st.st_ino});
      }
    }
  } else {
    std::string builtin, modinfo;
    for (const auto& name : builtin_modules(kernel)) {
      builtin += "kernel/builtin/" + name + ".ko\n";
      modinfo += name + ".file=builtin/" + name;
      modinfo.push_back('\0');
    }
    std::ofstream(modules + "/modules.builtin", std::ios::binary) << builtin;
    std::ofstream(modules + "/modules.builtin.modinfo", std::ios::binary) << modinfo;
    std::ofstream(modules + "/modules.order", std::ios::binary);
    std::string depmod = find_tool("depmod");
    if (depmod.empty())
      throw Error("making a modules tree for kernel " + kernel.release + " needs the host's depmod (apt-get install kmod)");
    ProgramResult r = run_program({depmod, "-b", tmp, kernel.release}, kToolEnv);
    if (r.status != 0) throw Error("depmod for the synthesized modules tree failed: " + r.tail_text());
  }
  for (const auto& e : fs::recursive_directory_iterator(tmp)) {
    struct stat st{};
    if (lstat(e.path().c_str(), &st) != 0) throw_errno("stat " + e.path().string());
    if (!hosts.count({st.st_dev, st.st_ino}) && lchown(e.path().c_str(), uid, gid) != 0)
      throw_errno("chown " + e.path().string());
  }
  // The same files under usr/lib/modules (links within the layer): an
  // image whose /lib is a symlink to usr/lib hides this layer's lib/.
  const fs::path usr = fs::path(tmp) / "usr/lib/modules" / kernel.release;
  fs::create_directories(usr);
  for (auto it = fs::recursive_directory_iterator(modules); it != fs::recursive_directory_iterator(); ++it) {
    fs::path to = usr / fs::relative(it->path(), modules);
    if (it->is_directory()) fs::create_directory(to);
    else if (link_or_copy(it->path(), to) == Placed::Copy && lchown(to.c_str(), uid, gid) != 0)
      throw_errno("chown " + to.string());
  }
  for (const fs::path& d : {fs::path(tmp) / "usr", fs::path(tmp) / "usr/lib"})
    if (lchown(d.c_str(), uid, gid) != 0) throw_errno("chown " + d.string());
  for (auto it = fs::recursive_directory_iterator(fs::path(tmp) / "usr/lib/modules"); it != fs::recursive_directory_iterator(); ++it)
    if (it->is_directory() && lchown(it->path().c_str(), uid, gid) != 0) throw_errno("chown " + it->path().string());
  if (lchown((fs::path(tmp) / "usr/lib/modules").c_str(), uid, gid) != 0) throw_errno("chown usr/lib/modules");
  if (lchown(tmp.c_str(), uid, gid) != 0 || chmod(tmp.c_str(), 0755) != 0) throw_errno("chown " + tmp);
  if (rename(tmp.c_str(), path.c_str()) != 0 && !exists(path)) throw_errno("rename " + tmp);
}

}  // namespace

std::vector<std::string> modprobe_names(const std::string& command) {
  std::vector<std::string> names;
  std::istringstream in(command);
  std::vector<std::string> words;
  for (std::string w; in >> w;) {
    // "modprobe x;" and "modprobe x&&": the separator glued to the name.
    size_t end = w.find_first_of(";&|)");
    if (end != std::string::npos && end > 0) {
      words.push_back(w.substr(0, end));
      words.push_back(";");
    } else {
      words.push_back(w);
    }
  }
  for (size_t i = 0; i < words.size(); ++i) {
    std::string w = words[i];
    std::string base = w.substr(w.rfind('/') + 1);
    if (base != "modprobe") continue;
    bool all = false, remove = false;
    size_t j = i + 1;
    for (; j < words.size(); ++j) {
      const std::string& a = words[j];
      if (a == "&&" || a == "||" || a == ";" || a == "|" || a[0] == ';' || a[0] == '&' || a[0] == '|') break;
      if (a == "-a" || a == "--all") all = true;
      else if (a == "-r" || a == "--remove") remove = true;
      else if (a[0] == '-') continue;
      else {
        if (!remove) {
          try {
            names.push_back(normalize_module(a));
          } catch (const Error&) {
          }
        }
        if (!all) break;  // the rest are the module's parameters
      }
    }
    i = j;
  }
  return names;
}

}  // namespace ultari::provision
