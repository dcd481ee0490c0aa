#include "images/store.h"

#include <dirent.h>
#include <fcntl.h>
#include <pwd.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <deque>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "filesystem/rootfs.h"
#include "images/unpack.h"
#include "isolation/identity.h"
#include "seccomp/seccomp.h"
#include "util/caller.h"
#include "util/error.h"
#include "util/paths.h"
#include "util/process.h"
#include "util/random.h"

namespace ultari::images {
namespace {

using nlohmann::json;

std::string now_iso() {
  time_t t = time(nullptr);
  tm u{};
  gmtime_r(&t, &u);
  char buf[32];
  strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &u);
  return buf;
}

std::string read_text(const std::string& path) {
  struct stat st{};
  if (stat(path.c_str(), &st) != 0) throw_errno("read " + path);
  if (!S_ISREG(st.st_mode)) throw Error("'" + path + "' is not a regular file");
  std::ifstream in(path);
  if (!in) throw_errno("read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Written aside, then renamed over `path`: readers see the old or the new.
void write_atomic(const std::string& path, const std::string& text) {
  std::string tmp = path + ".tmp-" + std::to_string(getpid()) + "-" + random_hex(8);
  {
    UniqueFd fd(open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644));
    if (!fd) throw_errno("write " + tmp);
    for (size_t done = 0; done < text.size();) {
      ssize_t n = write(fd.get(), text.data() + done, text.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        unlink(tmp.c_str());
        throw_errno("write " + tmp);
      }
      done += static_cast<size_t>(n);
    }
    if (fsync(fd.get()) != 0) {
      unlink(tmp.c_str());
      throw_errno("fsync " + tmp);
    }
  }
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    unlink(tmp.c_str());
    errno = e;
    throw_errno("rename " + tmp);
  }
}

bool is_layer_id(const std::string& s) {
  return s.size() == 64 && s.find_first_not_of("0123456789abcdef") == std::string::npos;
}

Image from_json(const json& j) {
  Image i;
  i.name = j.at("name").get<std::string>();
  i.id = j.at("id").get<std::string>();
  i.layers = j.at("layers").get<std::vector<std::string>>();
  i.size = j.value("size", uint64_t{0});
  i.created = j.value("created", "");
  i.source = j.value("source", "");
  i.parent = j.value("parent", "");
  i.user_data_sha256 = j.value("user_data_sha256", "");
  i.cache_key = j.value("cache_key", "");
  if (j.contains("provision_log") && j["provision_log"].is_array()) i.provision_log = j["provision_log"];
  if (j.contains("config") && j["config"].is_object()) i.config = j["config"];
  for (const auto& l : i.layers)
    if (!is_layer_id(l)) throw Error("image " + i.name + ": bad layer id '" + l + "'");
  return i;
}

json to_json(const Image& i) {
  return {{"name", i.name},       {"id", i.id},         {"layers", i.layers},
          {"size", i.size},       {"created", i.created}, {"source", i.source},
          {"parent", i.parent},   {"user_data_sha256", i.user_data_sha256}, {"cache_key", i.cache_key},
          {"provision_log", i.provision_log}, {"config", i.config}};
}

// An image's id: the SHA-256 of its layer ids, top first, one a line.
std::string image_id(Unpacker& u, const std::vector<std::string>& layers) {
  std::string text;
  for (const auto& l : layers) text += l + "\n";
  return u.sha256(text);
}

}  // namespace

namespace {

constexpr const char* kCallerMark = "caller";

// The `ids` file of a store whose owners are the caller's subordinate ids.
std::string subids_mark(const isolation::SubIds& s) {
  return "subids " + std::to_string(s.uid) + ":" + std::to_string(s.uid_start) + " " + std::to_string(s.gid) + ":" +
         std::to_string(s.gid_start);
}

std::string read_mark(const std::string& dir) {
  std::string have = read_or_empty(dir + "/ids");
  while (!have.empty() && have.back() == '\n') have.pop_back();
  return have;
}

}  // namespace

std::optional<isolation::SubIds> Store::rootless_subids(std::string dir) {
  if (dir.empty()) dir = default_dir();
  std::string have = read_mark(dir);
  if (have == kCallerMark) return std::nullopt;
  std::string why;
  std::optional<isolation::SubIds> now = isolation::caller_subids(&why);
  if (have.empty()) return now;  // a new store
  if (!have.starts_with("subids ")) return std::nullopt;  // not a rootless store: the constructor says so
  if (!now) throw Error("the image store " + dir + " keeps its files' owners in subordinate ids (" + have.substr(7) + "), but " + why);
  if (subids_mark(*now) != have)
    throw Error("the image store " + dir + " keeps its files' owners in the subordinate ids " + have.substr(7) +
                ", yours are now " + subids_mark(*now).substr(7) + " (uid:first-subuid gid:first-subgid; /etc/subuid changed?)");
  return now;
}

Store Store::open_default() {
  if (host_root()) {
    isolation::Identity id = isolation::plan_identity(0, 0);
    return Store("", true, id.host_root_uid, id.host_root_gid);
  }
  std::optional<isolation::SubIds> sub = rootless_subids();
  if (!sub) return Store("", false, 0, 0, kCallerMark, false);
  // In its namespace, ids are stored as they are (base 0); outside, the
  // store is only read (a sandbox maps the ids itself).
  return Store("", in_store_namespace(), 0, 0, subids_mark(*sub), true);
}

std::string Store::default_dir() {
  if (const char* env = std::getenv("ULTARI_DATA_DIR"); env && *env == '/') return std::string(env) + "/images";
  if (host_root()) return "/var/lib/ultari/images";
  if (const char* xdg = std::getenv("XDG_DATA_HOME"); xdg && *xdg == '/') return std::string(xdg) + "/ultari/images";
  return home_dir() + "/.local/share/ultari/images";
}

Store::Store(std::string dir, bool shift, uid_t uid_base, gid_t gid_base)
    : Store(std::move(dir), shift, uid_base, gid_base,
            shift ? std::to_string(uid_base) + ":" + std::to_string(gid_base) : kCallerMark, false) {}

Store::Store(std::string dir, bool shift, uid_t uid_base, gid_t gid_base, std::string want, bool subids)
    : dir_(dir.empty() ? default_dir() : std::move(dir)), shift_(shift), uid_base_(uid_base), gid_base_(gid_base),
      subids_(subids) {
  make_dirs(dir_, 0700);
  for (const char* sub : {"/layers", "/images", "/tmp"}) make_dirs(dir_ + sub, 0700);
  // 0700 whoever made them first (a layer's setuid files must be out of
  // other users' reach), and ours.
  for (const std::string& d : {dir_, dir_ + "/layers", dir_ + "/images", dir_ + "/tmp"}) {
    struct stat st{};
    if ((d == dir_ ? stat(d.c_str(), &st) : lstat(d.c_str(), &st)) != 0) throw_errno("image store " + d);
    if (!S_ISDIR(st.st_mode)) throw Error("the image store's " + d + " is not a directory");
    if (st.st_uid != geteuid())
      throw Error("the image store's " + d + " belongs to uid " + std::to_string(st.st_uid) + ", not to this user");
    if ((st.st_mode & 077) && chmod(d.c_str(), 0700) != 0) throw_errno("chmod 0700 " + d);
  }
  UniqueFd l(open((dir_ + "/lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!l) throw_errno("image store lock " + dir_ + "/lock");
  // The ids layers are stored in: a store made for another range (or
  // rootless) would give the sandbox the wrong owners.
  std::string mark = dir_ + "/ids";
  struct stat st{};
  if (lstat(mark.c_str(), &st) != 0) {
    write_atomic(mark, want + "\n");
  } else {
    std::string have = read_text(mark);
    while (!have.empty() && have.back() == '\n') have.pop_back();
    if (have != want)
      throw Error("the image store " + dir_ + " holds layers owned by ids " + have + ", this ultari uses " + want +
                  " (the subordinate id range changed?)");
  }
}

void Store::check_name(const std::string& name) {
  bool ok = !name.empty() && name.size() <= 128 && std::isalnum(static_cast<unsigned char>(name[0]));
  for (char c : name) ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-' || c == ':');
  if (!ok)
    throw Error("image name '" + name + "': use letters, digits, '.', '_', '-' and ':' (starting with a letter or digit, at most 128)");
}

UniqueFd Store::lock(bool exclusive) const {
  UniqueFd l(open((dir_ + "/lock").c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW));
  if (!l) throw_errno("image store lock");
  while (flock(l.get(), exclusive ? LOCK_EX : LOCK_SH) != 0)
    if (errno != EINTR) throw_errno("flock image store");
  return l;
}

std::vector<Image> Store::list() const {
  std::vector<Image> out;
  UniqueFd l = lock(false);
  std::unique_ptr<DIR, int (*)(DIR*)> d(opendir((dir_ + "/images").c_str()), closedir);
  if (!d) throw_errno("list " + dir_ + "/images");
  while (dirent* e = readdir(d.get())) {
    std::string n = e->d_name;
    if (!n.ends_with(".json")) continue;
    try {
      out.push_back(from_json(json::parse(read_text(dir_ + "/images/" + n))));
    } catch (const std::exception&) {
      // A damaged entry is skipped, not fatal for the listing.
    }
  }
  std::sort(out.begin(), out.end(), [](const Image& a, const Image& b) { return a.name < b.name; });
  return out;
}

std::optional<Image> Store::find(const std::string& name) const {
  check_name(name);
  UniqueFd l = lock(false);
  std::string path = dir_ + "/images/" + name + ".json";
  struct stat st{};
  if (lstat(path.c_str(), &st) != 0) return std::nullopt;
  try {
    return from_json(json::parse(read_text(path)));
  } catch (const json::exception& e) {
    throw Error("image " + name + ": damaged entry " + path + ": " + e.what());
  }
}

Image Store::get(const std::string& name) const {
  auto i = find(name);
  if (!i) throw Error("no image named '" + name + "' (ultari image ls lists them; ultari image import makes one)");
  for (const auto& l : i->layers) {
    struct stat st{};
    if (lstat(layer_path(l).c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
      throw Error("image " + name + ": layer " + l + " is missing from " + dir_ + "/layers");
  }
  return *i;
}

std::string Store::layer_path(const std::string& id) const { return dir_ + "/layers/" + id; }

// Invalid UTF-8 (a provisioning step's output) becomes U+FFFD: the entry
// must stay readable JSON.
void Store::write_image(const Image& image) {
  write_atomic(dir_ + "/images/" + image.name + ".json",
               to_json(image).dump(2, ' ', false, json::error_handler_t::replace) + "\n");
}

void Store::sweep_tmp() {
  std::unique_ptr<DIR, int (*)(DIR*)> d(opendir((dir_ + "/tmp").c_str()), closedir);
  if (!d) return;
  std::vector<std::string> dead;
  while (dirent* e = readdir(d.get())) {
    std::string n = e->d_name;
    if (n == "." || n == "..") continue;
    pid_t pid = static_cast<pid_t>(std::atol(n.c_str()));
    if (!pid_alive(pid)) dead.push_back(n);
  }
  for (const auto& n : dead) remove_tree(dir_ + "/tmp/" + n);
}

namespace {

// A directory of the store removed when it goes out of scope, unless kept.
struct TmpDir {
  std::string path;
  TmpDir() = default;
  TmpDir(const TmpDir&) = delete;
  TmpDir(TmpDir&& o) noexcept : path(std::move(o.path)) { o.path.clear(); }
  TmpDir& operator=(TmpDir&& o) noexcept {
    std::swap(path, o.path);
    return *this;
  }
  ~TmpDir() {
    if (!path.empty()) remove_tree(path);
  }
};

std::string digest_hex(const std::string& digest, const std::string& what) {
  if (!digest.starts_with("sha256:") || !is_layer_id(digest.substr(7)))
    throw Error(what + ": unsupported digest '" + digest + "' (sha256 only)");
  return digest.substr(7);
}

// A file of an image archive unpacked at `root` (or an image layout
// directory): the path, resolved, must stay inside it. Symlinks inside are
// fine (docker save links a layer shared by two images); one that leads out
// (a blob linked to a host file) is refused.
std::string confined(const std::string& root, const std::string& path, const std::string& what) {
  char real_root[PATH_MAX], real[PATH_MAX];
  if (!realpath(root.c_str(), real_root)) throw_errno(what + ": " + root);
  if (!realpath(path.c_str(), real)) throw_errno(what + ": " + path.substr(root.size() + 1));
  std::string r = real;
  if (!r.starts_with(std::string(real_root) + "/")) throw Error(what + ": '" + path.substr(root.size() + 1) + "' leaves the archive");
  struct stat st{};
  if (stat(r.c_str(), &st) != 0 || !S_ISREG(st.st_mode))  // a FIFO would block the import for ever
    throw Error(what + ": '" + path.substr(root.size() + 1) + "' is not a regular file");
  return r;
}

// A path named by an image archive's manifest: inside the archive.
std::string inside(const std::string& root, const std::string& rel, const std::string& what) {
  if (rel.empty() || rel[0] == '/' || rel.find("..") != std::string::npos)
    throw Error(what + ": path '" + rel + "' leaves the archive");
  return confined(root, root + "/" + rel, what);
}

// What a run of the image starts with unless told otherwise, from the
// image's configuration (OCI image spec "config": Env, Entrypoint, Cmd,
// WorkingDir, User); strings only, anything else dropped.
json run_config(const json& image_config) {
  json out = json::object();
  if (!image_config.is_object() || !image_config.contains("config") || !image_config["config"].is_object()) return out;
  const json& c = image_config["config"];
  auto strings = [&](const char* key) {
    std::vector<std::string> v;
    if (c.contains(key) && c[key].is_array())
      for (const auto& e : c[key])
        if (e.is_string()) v.push_back(e.get<std::string>());
    return v;
  };
  if (auto env = strings("Env"); !env.empty()) out["oci_env"] = env;
  if (auto ep = strings("Entrypoint"); !ep.empty()) out["entrypoint"] = ep;
  if (auto cmd = strings("Cmd"); !cmd.empty()) out["cmd"] = cmd;
  if (c.contains("WorkingDir") && c["WorkingDir"].is_string() && !c["WorkingDir"].get<std::string>().empty())
    out["workdir"] = c["WorkingDir"];
  if (c.contains("User") && c["User"].is_string() && !c["User"].get<std::string>().empty()) out["user"] = c["User"];
  return out;
}

// The layer blobs of an image archive unpacked at `root`, bottom first,
// and in *config the image's configuration (run_config).
// OCI: index.json -> (an index for linux/amd64, or the first) -> manifest
// -> layers, each blob checked against its digest. Docker (docker save,
// podman save): manifest.json[0].Layers and .Config.
std::vector<std::string> layer_blobs(const std::string& root, bool oci, Unpacker& u, json* config) {
  std::vector<std::string> out;
  auto load = [&root](const std::string& path) {
    try {
      return json::parse(read_text(confined(root, path, "image archive")));
    } catch (const json::exception& e) {
      throw Error("'" + path + "': " + e.what());
    }
  };
  if (!oci) {
    json m = load(root + "/manifest.json");
    if (!m.is_array() || m.empty() || !m[0].contains("Layers") || !m[0]["Layers"].is_array())
      throw Error("manifest.json: expected a list of images with Layers");
    if (m.size() > 1) throw Error("manifest.json holds " + std::to_string(m.size()) + " images; import one at a time");
    for (const auto& l : m[0]["Layers"]) out.push_back(inside(root, l.get<std::string>(), "manifest.json"));
    if (m[0].contains("Config") && m[0]["Config"].is_string())
      *config = run_config(load(inside(root, m[0]["Config"].get<std::string>(), "manifest.json")));
    return out;
  }
  auto blob = [&](const json& desc, const std::string& what) {
    std::string hex = digest_hex(desc.value("digest", ""), what);
    std::string path = confined(root, root + "/blobs/sha256/" + hex, what);
    std::string error, got = u.sha256_file(path, error);
    if (got.empty()) throw Error(what + ": " + error);
    if (got != hex) throw Error(what + ": blob " + hex + " does not match its digest (" + got + ")");
    return path;
  };
  json index = load(root + "/index.json");
  json manifest;
  for (int depth = 0; depth < 4; ++depth) {
    if (!index.contains("manifests") || !index["manifests"].is_array() || index["manifests"].empty())
      throw Error("index.json: no manifests");
    const json* pick = &index["manifests"][0];
    for (const auto& m : index["manifests"])
      if (m.contains("platform") && m["platform"].value("os", "") == "linux" &&
          m["platform"].value("architecture", "") == "amd64") {
        pick = &m;
        break;
      }
    json next = load(blob(*pick, "index.json"));
    if (next.contains("manifests")) {
      index = next;  // an index of indexes (multi-platform)
      continue;
    }
    manifest = next;
    break;
  }
  if (!manifest.contains("layers") || !manifest["layers"].is_array()) throw Error("OCI manifest: no layers");
  for (const auto& l : manifest["layers"]) out.push_back(blob(l, "OCI manifest"));
  if (manifest.contains("config") && manifest["config"].is_object())
    *config = run_config(load(blob(manifest["config"], "OCI manifest config")));
  return out;
}

}  // namespace

Image Store::import(const std::string& name, const std::string& source,
                    const std::function<void(uint64_t, uint64_t)>& progress, const std::string& label,
                    uint64_t max_bytes) {
  return import_tree(name, source, progress, label, max_bytes, false);
}

Image Store::import_tree(const std::string& name, const std::string& source,
                         const std::function<void(uint64_t, uint64_t)>& progress, const std::string& label,
                         uint64_t max_bytes, bool own_tree) {
  check_name(name);
  struct stat st{};
  if (stat(source.c_str(), &st) != 0) throw_errno("import source '" + source + "'");
  if (!S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode))
    throw Error("import source '" + source + "' is neither a directory nor an archive file");
  char real[PATH_MAX];
  if (!realpath(source.c_str(), real)) throw_errno("import source '" + source + "'");
  if (std::string(real) == "/") throw Error("import source '/' would copy the whole host");
  std::unique_ptr<Unpacker> unpacker = load_unpacker();
  sweep_tmp();
  // Everything is unpacked aside, as this process's: removed on any error.
  auto fresh = [&](bool owned) {
    TmpDir t;
    t.path = dir_ + "/tmp/" + std::to_string(getpid()) + "-" + random_hex(8);
    if (mkdir(t.path.c_str(), 0755) != 0) throw_errno("mkdir " + t.path);
    if (owned && shift_ && chown(t.path.c_str(), uid_base_, gid_base_) != 0) throw_errno("chown " + t.path);
    return t;
  };
  UnpackOptions o;
  o.shift_owner = shift_;
  o.uid_base = uid_base_;
  o.gid_base = gid_base_;
  o.progress = progress;
  if (in_store_namespace() && !own_tree) {
    // A directory of the host seen from the store's namespace: what is not
    // the caller's or a subordinate id's shows as the overflow ids.
    auto overflow = [](const char* file) {
      std::string v = read_or_empty(file);
      return v.empty() ? int64_t{65534} : static_cast<int64_t>(std::stoll(v));
    };
    o.unmapped_uid = overflow("/proc/sys/kernel/overflowuid");
    o.unmapped_gid = overflow("/proc/sys/kernel/overflowgid");
  }
  Space space_now = space();
  if (max_bytes == 0) {
    max_bytes = space_now.usable;
    if (max_bytes == 0) throw Error("the image store " + dir_ + " has too little free space");
  }
  uint64_t max_entries = space_now.entries;
  if (max_entries == 0) throw Error("the image store " + dir_ + " has too few free inodes");
  std::string error;

  // An image archive (docker save, podman save, an OCI layout) or a root.
  bool is_dir = S_ISDIR(st.st_mode);
  std::string src = real;
  bool oci = is_dir ? access((src + "/oci-layout").c_str(), F_OK) == 0 : unpacker->tar_has(src, "oci-layout");
  bool docker = !oci && (is_dir ? access((src + "/manifest.json").c_str(), F_OK) == 0 && access((src + "/repositories").c_str(), F_OK) == 0
                                : unpacker->tar_has(src, "manifest.json"));
  TmpDir outer;
  std::vector<std::string> sources = {src};
  json config = json::object();
  if (oci || docker) {
    std::string root = src;
    if (!is_dir) {
      outer = fresh(false);
      UnpackOptions plain;  // the archive's own files: blobs, manifests
      plain.max_bytes = max_bytes;
      plain.max_entries = max_entries;
      UnpackResult ignored;
      if (!unpacker->unpack(src, outer.path, plain, ignored, error)) throw Error("import " + source + ": " + error);
      root = outer.path;
    }
    try {
      sources = layer_blobs(root, oci, *unpacker, &config);
    } catch (const Error& e) {
      throw Error("import " + source + ": " + e.what());
    }
    if (sources.empty()) throw Error("import " + source + ": the image has no layers");
    if (sources.size() > filesystem::kMaxLayers)
      throw Error("import " + source + ": " + std::to_string(sources.size()) + " layers; at most " +
                  std::to_string(filesystem::kMaxLayers) + " are supported");
    o.oci_whiteouts = true;
    o.xattr_whiteouts = !shift_;  // rootless cannot make the 0:0 device
  }

  struct Unpacked {
    TmpDir dir;
    UnpackResult r;
  };
  std::vector<Unpacked> unpacked;  // bottom first
  uint64_t total = 0, total_entries = 0;
  for (size_t i = 0; i < sources.size(); ++i) {
    Unpacked u{fresh(true), {}};
    o.max_bytes = max_bytes - std::min(max_bytes - 1, total);  // what the layers before left
    o.max_entries = max_entries - std::min(max_entries - 1, total_entries);
    std::string what = sources.size() > 1 ? " (layer " + std::to_string(i + 1) + " of " + std::to_string(sources.size()) + ")" : "";
    if (!unpacker->unpack(sources[i], u.dir.path, o, u.r, error)) throw Error("import " + source + what + ": " + error);
    total += u.r.bytes;
    total_entries += u.r.entries;
    unpacked.push_back(std::move(u));
  }

  Image image;
  image.name = name;
  for (auto it = unpacked.rbegin(); it != unpacked.rend(); ++it) image.layers.push_back(it->r.digest);
  image.id = image_id(*unpacker, image.layers);
  image.size = total;
  image.created = now_iso();
  image.source = label.empty() ? std::string(real) : label;
  image.config = config;
  UniqueFd l = lock(true);
  for (auto& u : unpacked) {
    std::string dest = layer_path(u.r.digest);
    if (lstat(dest.c_str(), &st) == 0) continue;  // the same content is there already; ours goes
    json meta = {{"id", u.r.digest}, {"size", u.r.bytes}, {"entries", u.r.entries}, {"created", image.created}, {"source", real}};
    write_atomic(dest + ".json", meta.dump(2) + "\n");
    if (rename(u.dir.path.c_str(), dest.c_str()) != 0) throw_errno("rename " + u.dir.path + " to " + dest);
    u.dir.path.clear();
  }
  write_image(image);
  return image;
}

std::string Store::host_mirror() {
  // deb822 (Debian 12's default) first, then one-line sources.
  std::vector<std::string> files;
  if (std::unique_ptr<DIR, int (*)(DIR*)> d(opendir("/etc/apt/sources.list.d"), closedir); d)
    while (dirent* e = readdir(d.get()))
      if (std::string n = e->d_name; n.ends_with(".sources") || n.ends_with(".list"))
        files.push_back("/etc/apt/sources.list.d/" + n);
  std::sort(files.begin(), files.end());
  files.insert(files.begin(), "/etc/apt/sources.list");
  for (const auto& f : files) {
    std::ifstream in(f);
    std::string line;
    bool deb822_deb = false;
    while (std::getline(in, line)) {
      std::istringstream words(line);
      std::string w;
      words >> w;
      if (f.ends_with(".sources")) {
        if (line.empty()) deb822_deb = false;
        if (w == "Types:") deb822_deb = line.find(" deb") != std::string::npos || line.find("\tdeb") != std::string::npos;
        if (w == "URIs:" && deb822_deb) {
          std::string uri;
          words >> uri;
          if (uri.find("security") == std::string::npos && uri.starts_with("http")) return uri;
        }
      } else if (w == "deb") {
        std::string uri;
        while (words >> uri && uri.starts_with("[")) {
          while (!uri.ends_with("]") && words >> uri) {
          }
        }
        if (uri.find("security") == std::string::npos && uri.starts_with("http")) return uri;
      }
    }
  }
  return "http://deb.debian.org/debian";
}

Image Store::build_debian(const std::string& name, const DebianBuild& b,
                          const std::function<void(const std::string&)>& log) {
  check_name(name);
  auto word = [](const std::string& v, const char* what, const char* extra) {
    bool ok = !v.empty() && v.size() <= 64 && std::isalnum(static_cast<unsigned char>(v[0]));
    for (char c : v) ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || std::strchr(extra, c));
    if (!ok) throw Error(std::string(what) + " '" + v + "' is not valid");
  };
  word(b.suite, "--debian", "-");
  if (!b.variant.empty() && b.variant != "minbase" && b.variant != "buildd")
    throw Error("--variant '" + b.variant + "': expected minbase or buildd");
  for (const auto& p : b.include) word(p, "--include package", ".+-");
  std::string mirror = b.mirror.empty() ? host_mirror() : b.mirror;
  if (!(mirror.starts_with("http://") || mirror.starts_with("https://")) ||
      mirror.find_first_of(" \t\n'\"") != std::string::npos)
    throw Error("--mirror '" + mirror + "': expected an http:// or https:// URL");
  if (access("/usr/sbin/debootstrap", X_OK) != 0)
    throw Error("ultari image build needs debootstrap (apt-get install debootstrap)");

  sweep_tmp();
  TmpDir root;
  root.path = dir_ + "/tmp/" + std::to_string(getpid()) + "-" + random_hex(8) + "-debootstrap";
  std::vector<std::string> argv = {"/usr/sbin/debootstrap"};
  if (!b.variant.empty()) argv.push_back("--variant=" + b.variant);
  if (!b.include.empty()) {
    std::string list;
    for (const auto& p : b.include) list += (list.empty() ? "" : ",") + p;
    argv.push_back("--include=" + list);
  }
  argv.insert(argv.end(), {b.suite, root.path, mirror});
  // Contained: its chroot's /proc and the processes it starts never outlive
  // it, nor a killed ultari. Rootless, in a user namespace where the caller
  // is root: chown does nothing there (one id: dpkg and tar would fail
  // giving files their owners; a rootless store keeps none), and
  // debootstrap, told it runs in a container, binds the host's /dev nodes
  // instead of making them.
  Containment where{.namespaces = true};
  std::vector<std::string> env = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive"};
  if (in_store_namespace()) {
    // Root of the store's namespace: chown works (owners are kept), device
    // nodes cannot be made.
    env.push_back("container=lxc");
  } else if (!host_root()) {
    where.own_user = true;
    where.filter = seccomp::chown_noop_program();
    env.push_back("container=lxc");
  }
  ProgramResult r = run_program(argv, env, log, 5, where);
  if (r.status != 0)
    throw Error("debootstrap " + b.suite + " from " + mirror + " failed (status " + std::to_string(r.status) +
                "): " + r.tail_text());
  // What debootstrap copied from the host is not the image's business; the
  // downloaded packages are only weight.
  // (Never through a symlink of the tree: it comes from a mirror.)
  write_beneath(root.path, "etc/hostname", "localhost\n");
  write_beneath(root.path, "etc/resolv.conf", "");
  if (int fd = open_dir_beneath(root.path, "var/cache/apt/archives"); fd >= 0) {
    if (std::unique_ptr<DIR, int (*)(DIR*)> d(fdopendir(fd), closedir); d) {
      std::vector<std::string> debs;
      while (dirent* e = readdir(d.get()))
        if (e->d_type == DT_REG && std::string(e->d_name).ends_with(".deb")) debs.emplace_back(e->d_name);
      for (const auto& n : debs) unlinkat(dirfd(d.get()), n.c_str(), 0);
    } else {
      close(fd);
    }
  }
  std::string label = "debootstrap " + (b.variant.empty() ? "" : "--variant=" + b.variant + " ") + b.suite + " " + mirror;
  if (!b.include.empty()) label += " (+" + std::to_string(b.include.size()) + " packages)";
  // The tree is debootstrap's, made in this namespace: its ids are all
  // mapped, and nobody (65534) is one of them.
  return import_tree(name, root.path, {}, label, 0, true);
}

Store::Space Store::space() const {
  struct statvfs fs{};
  if (statvfs(dir_.c_str(), &fs) != 0) throw_errno("statvfs " + dir_);
  Space sp;
  sp.available = static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize;
  uint64_t margin = std::max<uint64_t>(1ull << 30, static_cast<uint64_t>(fs.f_blocks) * fs.f_frsize / 20);
  sp.usable = sp.available > margin ? sp.available - margin : 0;
  // Filesystems with inodes made on demand (btrfs) report none: the fixed
  // cap alone holds there.
  uint64_t inodes = fs.f_files == 0 ? 0 : static_cast<uint64_t>(fs.f_favail);
  sp.inodes = inodes;
  uint64_t inode_margin = std::max<uint64_t>(100000, static_cast<uint64_t>(fs.f_files) / 20);
  sp.entries = fs.f_files == 0 ? kMaxEntries
                               : std::min<uint64_t>(kMaxEntries, inodes > inode_margin ? inodes - inode_margin : 0);
  return sp;
}

std::string Store::scratch_dir() {
  sweep_tmp();
  std::string path = dir_ + "/tmp/" + std::to_string(getpid()) + "-" + random_hex(8);
  if (mkdir(path.c_str(), 0700) != 0) throw_errno("mkdir " + path);
  // The sandbox's root reaches upper/ and work/ through it.
  if (shift_ && chown(path.c_str(), uid_base_, gid_base_) != 0) throw_errno("chown " + path);
  return path;
}

Image Store::commit(Image top, const Image& parent, const std::string& upper) {
  check_name(top.name);
  std::unique_ptr<Unpacker> unpacker = load_unpacker();
  UnpackOptions o;
  o.shift_owner = shift_;
  o.uid_base = uid_base_;
  o.gid_base = gid_base_;
  UnpackResult r;
  std::string error;
  if (!unpacker->scan(upper, o, r, error)) throw Error("commit: " + error);
  // overlayfs cannot stack one directory twice. The same changes again
  // right on top of themselves change nothing: the parent's stack is the
  // image. Deeper down they would mean something: refused.
  auto again = std::find(parent.layers.begin(), parent.layers.end(), r.digest);
  if (again != parent.layers.end() && again != parent.layers.begin())
    throw Error("commit: the changes equal layer " + r.digest.substr(0, 12) + " further down in " + parent.name +
                ", and overlayfs cannot stack a layer twice");
  top.layers = {};
  if (again == parent.layers.end()) top.layers.push_back(r.digest);
  top.layers.insert(top.layers.end(), parent.layers.begin(), parent.layers.end());
  if (top.layers.size() > filesystem::kMaxLayers)
    throw Error("image " + top.name + " would have " + std::to_string(top.layers.size()) + " layers; at most " +
                std::to_string(filesystem::kMaxLayers));
  top.id = image_id(*unpacker, top.layers);
  top.size = parent.size + (again == parent.layers.end() ? r.bytes : 0);
  top.parent = parent.name;
  top.created = now_iso();
  UniqueFd l = lock(true);
  std::string dest = layer_path(r.digest);
  struct stat st{};
  if (lstat(dest.c_str(), &st) != 0) {
    json meta = {{"id", r.digest}, {"size", r.bytes}, {"entries", r.entries}, {"created", top.created},
                 {"source", "commit of " + top.name}};
    write_atomic(dest + ".json", meta.dump(2) + "\n");
    if (rename(upper.c_str(), dest.c_str()) != 0) throw_errno("rename " + upper + " to " + dest);
  }
  write_image(top);
  return top;
}

Image Store::save_as(Image image) {
  check_name(image.name);
  UniqueFd l = lock(true);
  for (const auto& id : image.layers) {
    struct stat st{};
    if (lstat(layer_path(id).c_str(), &st) != 0) throw Error("layer " + id + " of image " + image.name + " is missing");
  }
  image.created = now_iso();
  write_image(image);
  return image;
}

std::optional<Image> Store::find_by_cache_key(const std::string& key) const {
  std::optional<Image> newest;  // --no-cache makes more than one: the last build wins
  for (const auto& i : list())
    if (!key.empty() && i.cache_key == key && (!newest || i.created > newest->created)) newest = i;
  return newest;
}

std::string Store::remove(const std::string& name) {
  check_name(name);
  UniqueFd l = lock(true);
  std::string path = dir_ + "/images/" + name + ".json";
  std::string id;
  try {
    id = json::parse(read_text(path)).value("id", "");
  } catch (const std::exception&) {  // missing (said below) or damaged (removed all the same)
  }
  if (unlink(path.c_str()) != 0) {
    if (errno == ENOENT) throw Error("no image named '" + name + "'");
    throw_errno("remove " + path);
  }
  return id;
}

std::vector<UniqueFd> Store::hold(const Image& image) const {
  std::vector<UniqueFd> out;
  for (const auto& id : image.layers) {
    UniqueFd fd(open((layer_path(id) + ".lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (!fd) throw_errno("layer lock " + id);
    while (flock(fd.get(), LOCK_SH) != 0)
      if (errno != EINTR) throw_errno("flock layer " + id);
    out.push_back(std::move(fd));
  }
  return out;
}

PruneResult Store::prune() {
  PruneResult result;
  UniqueFd l = lock(true);
  sweep_tmp();
  std::set<std::string> used;
  std::unique_ptr<DIR, int (*)(DIR*)> names(opendir((dir_ + "/images").c_str()), closedir);
  if (!names) throw_errno("list " + dir_ + "/images");
  while (dirent* e = readdir(names.get())) {
    std::string n = e->d_name;
    if (!n.ends_with(".json")) continue;
    try {
      for (const auto& id : from_json(json::parse(read_text(dir_ + "/images/" + n))).layers) used.insert(id);
    } catch (const std::exception& ex) {
      throw Error("prune: image entry " + n + " is damaged (" + ex.what() + "); nothing was removed");
    }
  }
  std::unique_ptr<DIR, int (*)(DIR*)> layers(opendir((dir_ + "/layers").c_str()), closedir);
  if (!layers) throw_errno("list " + dir_ + "/layers");
  std::vector<std::string> ids;
  while (dirent* e = readdir(layers.get()))
    if (is_layer_id(e->d_name)) ids.emplace_back(e->d_name);
  for (const auto& id : ids) {
    if (used.count(id)) continue;
    std::string path = layer_path(id);
    UniqueFd hold(open((path + ".lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (hold && flock(hold.get(), LOCK_EX | LOCK_NB) != 0) {
      result.in_use.push_back(id);
      continue;
    }
    uint64_t size = 0;
    try {
      size = json::parse(read_text(path + ".json")).value("size", uint64_t{0});
    } catch (const std::exception&) {
    }
    remove_tree(path);
    unlink((path + ".json").c_str());
    unlink((path + ".lock").c_str());
    result.removed.push_back(id);
    result.bytes += size;
  }
  return result;
}

}  // namespace ultari::images
