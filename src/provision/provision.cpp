// Provisioning: user-data -> build sandboxes -> one committed layer
// (provision.h). The modules' work is done by small shell scripts inside
// the build sandbox; every value from the user-data reaches them as an
// environment variable or on stdin, never spliced into script text (runcmd
// and bootcmd items excepted: they are shell by definition).
#include "provision/provision.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/utsname.h>
#include <strings.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>

#include "images/unpack.h"
#include "isolation/identity.h"
#include "net/policy.h"
#include "provision/cloud_config.h"
#include "provision/kernel.h"
#include "provision/mime.h"
#include "provision/pgp.h"
#include "sandbox/sandbox.h"
#include "util/base64.h"
#include "util/caller.h"
#include "util/error.h"
#include "util/openat2.h"
#include "util/paths.h"
#include "util/fd.h"
#include "util/random.h"
#include "util/url.h"

namespace ultari::provision {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

using Clock = std::chrono::steady_clock;

// A file of an image as the sandbox would see it, read on the host: the
// first layer (top first) that has it, each layer searched as its own root
// (".." stays inside it); a whiteout or anything but a regular file or a
// symlink ends the search. A symlink found there is followed through the
// whole stack again (/etc/os-release -> ../usr/lib/os-release in a base
// layer, the file itself changed in a layer above), up to 8 of them, ".."
// never above the root. The layers are untrusted.
std::optional<std::string> image_file(const std::vector<std::string>& layers, const std::string& path, int hops = 0) {
  for (const auto& layer : layers) {
    UniqueFd dir(open(layer.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!dir) continue;
    open_how how{};
    how.flags = O_PATH | O_NOFOLLOW | O_CLOEXEC;
    how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV;
    UniqueFd fd(openat2_retrying(dir.get(), path.c_str(), how));
    if (!fd) continue;
    struct stat st{};
    if (fstat(fd.get(), &st) != 0) return std::nullopt;
    if (S_ISREG(st.st_mode)) return read_in_root(layer, path);
    if (!S_ISLNK(st.st_mode) || hops >= 8) return std::nullopt;  // hides the layers below
    char target[4096];
    ssize_t n = readlinkat(fd.get(), "", target, sizeof target);
    if (n <= 0 || n == static_cast<ssize_t>(sizeof target)) return std::nullopt;
    std::string link(target, static_cast<size_t>(n));
    std::string joined = link[0] == '/' ? link : path.substr(0, path.rfind('/') + 1) + link;
    std::vector<std::string> parts;
    std::istringstream words(joined);
    for (std::string part; std::getline(words, part, '/');) {
      if (part.empty() || part == ".") continue;
      if (part == "..") {
        if (!parts.empty()) parts.pop_back();
      } else {
        parts.push_back(part);
      }
    }
    std::string resolved;
    for (const auto& part : parts) resolved += (resolved.empty() ? "" : "/") + part;
    if (resolved.empty()) return std::nullopt;
    return image_file(layers, resolved, hops + 1);
  }
  return std::nullopt;
}

std::map<std::string, std::string> parse_os_release(const std::string& text) {
  std::map<std::string, std::string> m;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    auto eq = line.find('=');
    if (eq == std::string::npos || line[0] == '#') continue;
    std::string v = line.substr(eq + 1);
    if (v.size() >= 2 && (v.front() == '"' || v.front() == '\'') && v.back() == v.front()) v = v.substr(1, v.size() - 2);
    m[line.substr(0, eq)] = v;
  }
  return m;
}

// cloud-init's instance data, as far as it means something here (v1 keys),
// plus the --var values at the top level.
json instance_data(const Request& req, const std::map<std::string, std::string>& os) {
  utsname u{};
  uname(&u);
  auto get = [&](const char* k) {
    auto it = os.find(k);
    return it == os.end() ? std::string() : it->second;
  };
  json v1 = {{"cloud_name", "ultari"},
             {"platform", "ultari"},
             {"instance_id", req.name},
             {"local_hostname", "sandbox"},
             {"machine", u.machine},
             {"kernel_release", u.release},
             {"distro", get("ID")},
             {"distro_release", get("VERSION_CODENAME")},
             {"distro_version", get("VERSION_ID")},
             {"variant", get("ID")},
             {"region", nullptr},
             {"availability_zone", nullptr}};
  json data = {{"v1", v1}};
  for (const auto& [k, v] : req.vars) data[k] = v;
  return data;
}

// Shell single quotes around `s`.
std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// The end of a step's output for a message or the log: the last `lines`
// lines and at most 4 KiB of them, control characters (but \n and \t) and
// bytes that are not UTF-8-looking escaped as \xNN, so a hostile build
// cannot drive the caller's terminal.
std::string tail(const std::string& text, size_t lines) {
  size_t pos = text.size();
  if (pos && text[pos - 1] == '\n') --pos;
  for (size_t n = 0; n < lines && pos != std::string::npos && pos > 0; ++n) pos = text.rfind('\n', pos - 1);
  std::string t = pos == std::string::npos || pos == 0 ? text : text.substr(pos + 1);
  if (t.size() > 4096) t = "..." + t.substr(t.size() - 4096);
  std::string out;
  for (unsigned char c : t) {
    if (c == '\n' || c == '\t' || (c >= 0x20 && c != 0x7f && c < 0x80) || (c >= 0x80 && c < 0xf8 && c != 0xc0 && c != 0xc1)) {
      out.push_back(static_cast<char>(c));
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  return out;
}

// The build went past what it may take of the store's disk: never taken
// for a step's own failure (a write_files source falling back on its
// content).
struct OverLimits : Error {
  using Error::Error;
};

// The build: one writable layer, the sandboxes that run over it, the log.
class Build {
 public:
  explicit Build(const Request& req) : req_(req) {}

  std::string scratch;
  std::vector<std::string> layers;  // host dirs, top first (kernel layer last)
  uint64_t free_at_start = 0;       // bytes available on the store's disk before the build
  uint64_t max_bytes = 0;           // the most the build may take of it
  uint64_t inodes_at_start = 0;     // free inodes there (0: the filesystem reports none)
  uint64_t max_entries = 0;         // the most of them the build may take
  std::string instance_id;          // from the cache key
  NetworkSpec network;
  // Rootless with a store that keeps no owners: the build sandboxes have
  // one id (the caller, root inside), so chown does nothing there
  // (SeccompSpec::chown_noop) and apt downloads as root (kRootlessApt). A
  // store that keeps owners is changed from its namespace, whose ids the
  // build sandboxes have (images::Store::rootless_subids).
  bool one_id = !host_root() && !in_store_namespace();
  std::set<std::string> warnings;  // the sandboxes' own (limits not enforced, ...), once each
  json log = json::array();
  std::map<std::string, std::string> os;

  struct StepResult {
    int exit_code = 0;
    std::string output;
    Result result;
  };

  // One sandbox over the build's layers: argv as root with `env`, `input`
  // on stdin; stdout and stderr together.
  StepResult run(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                 const std::string& input = "", bool net = true) {
    Spec spec;
    spec.layers = layers;
    spec.upper_dir = scratch;
    spec.hostname = "ultari-build";
    spec.capabilities.assign(std::begin(kBuildCapabilities), std::end(kBuildCapabilities));
    spec.seccomp.setid_files = true;
    spec.seccomp.chown_noop = one_id;
    spec.limits.memory_bytes = req_.memory_bytes;
    spec.limits.pids = 4096;
    spec.limits.wall_timeout = req_.step_timeout;
    spec.limits.output_bytes = 64ull << 20;
    spec.limits.tmp_bytes = 1ull << 30;
    spec.limits.nofile = 65536;
    if (net) spec.network = network;
    spec.process.argv = argv;
    // INSTANCE_ID: the cache key's start, not the name (a cache hit may
    // give the layer another name).
    spec.process.env = {"DEBIAN_FRONTEND=noninteractive", "INSTANCE_ID=ultari-" + instance_id};
    spec.process.env.insert(spec.process.env.end(), env.begin(), env.end());
    spec.process.cwd = "/";
    UniqueFd out(memfd_create("ultari-build-out", MFD_CLOEXEC));
    UniqueFd in(memfd_create("ultari-build-in", MFD_CLOEXEC));
    if (!out || !in) throw_errno("memfd_create");
    for (size_t done = 0; done < input.size();) {
      ssize_t n = write(in.get(), input.data() + done, input.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) throw_errno("write build input");
      done += static_cast<size_t>(n);
    }
    lseek(in.get(), 0, SEEK_SET);
    Io io;
    io.stdin_fd = in.get();
    io.stdout_fd = out.get();
    io.stderr_fd = out.get();
    StepResult r;
    // The writable layer is on the store's disk, which has no quota: a
    // watcher kills the module when the build has taken more than its
    // share (statvfs every 100 ms; the kill lands within one interval).
    std::string full;  // what the build took too much of
    try {
      Prepared prepared = prepare(spec);
      auto sandbox = Sandbox::start(prepared, spec, io);
      // Stops and joins the watcher however wait() ends.
      struct Watcher {
        std::mutex m;
        std::condition_variable cv;
        bool done = false;
        std::thread thread;
        ~Watcher() {
          {
            std::lock_guard lock(m);
            done = true;
          }
          cv.notify_one();
          if (thread.joinable()) thread.join();
        }
      } w;
      w.thread = std::thread([&] {
        std::unique_lock lock(w.m);
        while (!w.cv.wait_for(lock, std::chrono::milliseconds(100), [&] { return w.done; })) {
          full = over_limits();
          if (!full.empty()) {
            sandbox->kill();
            return;
          }
        }
      });
      r.result = sandbox->wait();
    } catch (const std::exception& e) {
      r.result = Result{};
      r.result.verdict = Verdict::SetupError;
      r.result.error = e.what();
    }
    warnings.insert(r.result.warnings.begin(), r.result.warnings.end());
    if (!full.empty()) throw OverLimits("the build " + full + ": stopped");
    off_t size = lseek(out.get(), 0, SEEK_END);
    r.output.resize(static_cast<size_t>(std::max<off_t>(size, 0)));
    if (size > 0 && pread(out.get(), r.output.data(), r.output.size(), 0) != size) throw_errno("read build output");
    r.exit_code = r.result.exit_code;
    if (r.result.verdict == Verdict::SetupError) throw Error("build sandbox: " + r.result.error);
    if (r.result.verdict == Verdict::Timeout) r.output += "\n(ultari: timed out after " +
                                                           std::to_string(req_.step_timeout.count() / 1000) + " s)\n";
    if (r.result.verdict == Verdict::Oom) r.output += "\n(ultari: out of memory)\n";
    return r;
  }

  // What the build took of the store's disk so far, past its limits: ""
  // when within them. Bytes, and inodes (a build of millions of empty files
  // takes no bytes to speak of).
  std::string over_limits() const {
    struct statvfs fs{};
    if (statvfs(scratch.c_str(), &fs) != 0) return "";
    uint64_t avail = static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize;
    if (avail < free_at_start && free_at_start - avail > max_bytes)
      return "wrote more than " + std::to_string(max_bytes >> 20) + " MiB to the image store's disk (--max-size, " +
             "default: its free space less a margin)";
    uint64_t inodes = static_cast<uint64_t>(fs.f_favail);
    if (inodes_at_start && inodes < inodes_at_start && inodes_at_start - inodes > max_entries)
      return "made more than " + std::to_string(max_entries) + " files on the image store's disk (its free inodes " +
             "less a margin)";
    return "";
  }

  // A module: `what` runs, its time and changes go into the log; a failure
  // throws with the output's end.
  template <typename F>
  void module(const std::string& name, const std::string& summary, F&& body) {
    if (req_.progress) req_.progress(name + ": " + summary);
    auto start = Clock::now();
    json entry = {{"module", name}, {"summary", summary}};
    body(entry);
    entry["ms"] = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
    log.push_back(entry);
  }

  // `script` with sh -e; fails the module on a non-zero exit.
  std::string script(const std::string& module, const std::string& text, const std::vector<std::string>& env,
                     const std::string& input = "", bool net = true) {
    StepResult r = run({"/bin/sh", "-ec", "exec 2>&1\n" + text, "ultari-" + module}, env, input, net);
    if (r.exit_code != 0)
      throw Error(module + " failed (exit status " + std::to_string(r.exit_code) + "):\n" + tail(r.output, 20));
    return r.output;
  }

 private:
  const Request& req_;
};

// Whether the base image shows the top-level entry `name` (its layers top
// first: the first one that has it decides; an overlay whiteout hides it,
// an opaque layer root hides what is below).
bool base_has(const images::Image& base, const images::Store& store, const std::string& name) {
  for (const auto& id : base.layers) {
    std::string layer = store.layer_path(id);
    struct stat st{};
    if (lstat((layer + "/" + name).c_str(), &st) == 0) {
      bool whiteout = (S_ISCHR(st.st_mode) && st.st_rdev == 0) ||
                      lgetxattr((layer + "/" + name).c_str(), "user.overlay.whiteout", nullptr, 0) >= 0;
      return !whiteout;
    }
    char opaque[4];
    if (lgetxattr(layer.c_str(), "user.overlay.opaque", opaque, sizeof opaque) > 0 && opaque[0] == 'y') return false;
  }
  return false;
}

// What the build's sandboxes, not the user-data, put in the writable layer:
// the mount points /proc, /sys and /dev (made when the base lacks them;
// nothing written there reaches the layer), HOME (/root) when the base
// lacks it and the build left it empty, and /tmp, which the image gets as
// the base has it: a machine provisioned once and started fresh finds /tmp
// as it booted, not what the build left there (the modules of one build
// share it). Runs from the image make what is missing.
void drop_engine_scaffolding(const std::string& upper, const images::Image& base, const images::Store& store) {
  for (const char* dir : {"proc", "sys", "dev", "tmp"}) remove_beneath(upper, dir);
  if (!base_has(base, store, "root")) {
    UniqueFd top(open(upper.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (top) unlinkat(top.get(), "root", AT_REMOVEDIR);  // only an empty directory, never through a link
  }
}

// What the build sandbox's root has: package managers, mirrors, os-release.
struct Probe {
  std::string manager;  // apt, apk, dnf or ""
  std::vector<std::string> mirror_hosts;
  bool has_shell = true;
  bool cloud_scripts = false;  // the base has files in /var/lib/cloud/scripts/per-*/
};

// A rootless build's apt cannot switch to its `_apt` user (one id): it
// downloads as root. The file is the build's, not the image's: dropped at
// commit.
constexpr const char* kRootlessApt = "etc/apt/apt.conf.d/00ultari-rootless-build";

constexpr const char* kProbe = R"SH(
if [ -n "$PROBE_APT_CONF" ] && [ -d /etc/apt/apt.conf.d ]; then
  echo 'APT::Sandbox::User "root";' >"/$PROBE_APT_CONF"
fi
for m in apt-get apk dnf; do command -v $m >/dev/null 2>&1 && { echo "manager $m"; break; }; done
for f in /var/lib/cloud/scripts/per-once/* /var/lib/cloud/scripts/per-boot/* /var/lib/cloud/scripts/per-instance/*; do
  [ -f "$f" ] && { echo "cloud-scripts"; break; }
done
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources /etc/apk/repositories; do
  [ -f "$f" ] || continue
  grep -oE '(https?|ftp)://[^ /"]+' "$f" | sed 's/^/mirror /' || true
done
)SH";

Probe probe(Build& b) {
  Build::StepResult r =
      b.run({"/bin/sh", "-c", kProbe}, {std::string("PROBE_APT_CONF=") + (b.one_id ? kRootlessApt : "")}, "", false);
  if (r.exit_code == 127 || r.exit_code == 126)
    throw Error("the base image has no usable /bin/sh, which provisioning needs: " + tail(r.output, 3));
  Probe p;
  std::istringstream in(r.output);
  std::string line;
  std::set<std::string> hosts;
  while (std::getline(in, line)) {
    if (line.rfind("manager ", 0) == 0) p.manager = line.substr(8) == "apt-get" ? "apt" : line.substr(8);
    if (line == "cloud-scripts") p.cloud_scripts = true;
    if (line.rfind("mirror ", 0) == 0) {
      std::string h = host_of(line.substr(7));
      if (!h.empty()) hosts.insert(h);
    }
  }
  p.mirror_hosts.assign(hosts.begin(), hosts.end());
  return p;
}

// --- the modules' scripts --------------------------------------------------

constexpr const char* kWriteFile = R"SH(
p=$WF_PATH
mkdir -p -- "$(dirname -- "$p")"
tmp=$(mktemp /tmp/ultari-write.XXXXXX)
trap 'rm -f -- "$tmp" "$tmp.d"' EXIT
cat >"$tmp"
if [ "$WF_GZIP" = 1 ]; then
  gzip -t <"$tmp" 2>/dev/null || { echo "content is not valid gzip data" >&2; exit 2; }
  gzip -dc <"$tmp" | head -c "$((WF_MAX + 1))" >"$tmp.d" || true
  mv -f -- "$tmp.d" "$tmp"
fi
if [ "$(wc -c <"$tmp")" -gt "$WF_MAX" ]; then echo "decompressed content is larger than $WF_MAX bytes" >&2; exit 2; fi
if [ "$WF_APPEND" = 1 ]; then cat "$tmp" >>"$p"; else cat "$tmp" >"$p"; fi
chown -- "$WF_OWNER" "$p"
chmod -- "$WF_MODE" "$p"
)SH";

constexpr const char* kGroup = R"SH(
getent group "$G_NAME" >/dev/null 2>&1 || groupadd -- "$G_NAME"
for m in $G_MEMBERS; do
  if getent passwd "$m" >/dev/null 2>&1; then usermod -a -G "$G_NAME" -- "$m"; else echo "group $G_NAME: no user $m (skipped)"; fi
done
)SH";

constexpr const char* kUser = R"SH(
if [ -n "$U_GROUPS" ] && [ "$U_CREATE_GROUPS" = 1 ]; then
  for g in $(echo "$U_GROUPS" | tr ',' ' '); do getent group "$g" >/dev/null 2>&1 || groupadd -- "$g"; done
fi
if getent passwd "$U_NAME" >/dev/null 2>&1; then
  echo "user $U_NAME exists: groups added only"
  [ -z "$U_GROUPS" ] || usermod -a -G "$U_GROUPS" -- "$U_NAME"
else
  set --
  [ -z "$U_GECOS" ] || set -- "$@" --comment "$U_GECOS"
  [ -z "$U_SHELL" ] || set -- "$@" --shell "$U_SHELL"
  [ -z "$U_HOME" ] || set -- "$@" --home-dir "$U_HOME"
  [ -z "$U_PGROUP" ] || set -- "$@" --gid "$U_PGROUP"
  [ -z "$U_UID" ] || set -- "$@" --uid "$U_UID"
  [ -z "$U_GROUPS" ] || set -- "$@" --groups "$U_GROUPS"
  [ -z "$U_EXPIRE" ] || set -- "$@" --expiredate "$U_EXPIRE"
  [ -z "$U_INACTIVE" ] || set -- "$@" --inactive "$U_INACTIVE"
  [ "$U_SYSTEM" != 1 ] || set -- "$@" --system
  [ "$U_NO_USER_GROUP" != 1 ] || set -- "$@" --no-user-group
  if [ "$U_NO_CREATE_HOME" = 1 ] || [ "$U_SYSTEM" = 1 ]; then set -- "$@" --no-create-home; else set -- "$@" --create-home; fi
  useradd "$@" -- "$U_NAME"
fi
if [ -n "$U_HASHED" ]; then usermod --password "$U_HASHED" -- "$U_NAME"
elif [ -n "$U_PLAIN" ]; then printf '%s:%s\n' "$U_NAME" "$U_PLAIN" | chpasswd
fi
[ "$U_LOCK" != 1 ] || usermod --lock -- "$U_NAME"
if [ -n "$U_SUDO" ]; then
  f=/etc/sudoers.d/90-cloud-init-users
  mkdir -p /etc/sudoers.d
  [ -e "$f" ] || printf '# Created by Ultari provisioning (cloud-init users module)\n' >"$f"
  printf '%s\n' "$U_SUDO" | while IFS= read -r rule; do printf '%s %s\n' "$U_NAME" "$rule" >>"$f"; done
  chmod 0440 "$f"
  if [ ! -e /etc/sudoers ]; then printf '@includedir /etc/sudoers.d\n' >/etc/sudoers; chmod 0440 /etc/sudoers
  elif ! grep -qE '^[#@]includedir[[:space:]]+/etc/sudoers.d' /etc/sudoers; then printf '\n@includedir /etc/sudoers.d\n' >>/etc/sudoers
  fi
fi
if [ -n "$U_KEYS" ]; then
  home=$(getent passwd "$U_NAME" | cut -d: -f6)
  group=$(id -gn -- "$U_NAME")
  mkdir -p -- "$home/.ssh"
  printf '%s\n' "$U_KEYS" >>"$home/.ssh/authorized_keys"
  chmod 700 -- "$home/.ssh"
  chmod 600 -- "$home/.ssh/authorized_keys"
  chown -R -- "$U_NAME:$group" "$home/.ssh"
fi
id -- "$U_NAME"
)SH";

// `s` with each `from` replaced by `to`, once: the search goes on after
// the text put in, which may hold `from` again (a key file named
// $KEY_FILE.gpg, a base whose VERSION_CODENAME is "$RELEASE").
std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t p = 0; (p = s.find(from, p)) != std::string::npos; p += to.size()) s.replace(p, from.size(), to);
  return s;
}

// Files given in the environment: F_COUNT, F<i>_PATH, F<i>_DATA, F<i>_MODE,
// F<i>_APPEND, F<i>_B64 (small generated files: apt configuration, keys,
// certificates; a binary one travels as base64, written as it decodes).
constexpr const char* kEnvFiles = R"SH(
i=0
while [ "$i" -lt "$F_COUNT" ]; do
  eval "p=\$F${i}_PATH d=\$F${i}_DATA m=\$F${i}_MODE a=\$F${i}_APPEND b=\$F${i}_B64"
  mkdir -p -- "$(dirname -- "$p")"
  if [ "$b" = 1 ]; then printf '%s' "$d" | base64 -d >"$p"
  elif [ "$a" = 1 ]; then printf '%s\n' "$d" >>"$p"; else printf '%s\n' "$d" >"$p"; fi
  chmod -- "$m" "$p"
  echo "wrote $p"
  i=$((i + 1))
done
)SH";

struct EnvFile {
  std::string path, data;
  std::string mode = "0644";
  bool append = false;
  bool binary = false;  // written exactly as `data` is (no newline added)
};
std::vector<std::string> env_files(const std::vector<EnvFile>& files) {
  std::vector<std::string> env = {"F_COUNT=" + std::to_string(files.size())};
  for (size_t i = 0; i < files.size(); ++i) {
    std::string p = "F" + std::to_string(i) + "_";
    std::string data = files[i].binary ? base64_encode(files[i].data) : files[i].data;
    while (!files[i].binary && !data.empty() && data.back() == '\n') data.pop_back();
    if (data.size() > (100u << 10)) throw Error(files[i].path + ": more than 100 KiB");
    env.push_back(p + "PATH=" + files[i].path);
    env.push_back(p + "DATA=" + data);
    env.push_back(p + "MODE=" + files[i].mode);
    env.push_back(p + "APPEND=" + std::string(files[i].append ? "1" : "0"));
    env.push_back(p + "B64=" + std::string(files[i].binary ? "1" : "0"));
  }
  return env;
}

constexpr const char* kAptPackages = R"SH(
export DEBIAN_FRONTEND=noninteractive
o="-o Dpkg::Options::=--force-confold -o Dpkg::Options::=--force-unsafe-io -o APT::Color=0 -y -q"
if [ "$P_UPDATE" = 1 ]; then apt-get $o update; fi
if [ "$P_UPGRADE" = 1 ]; then apt-get $o dist-upgrade; fi
if [ -n "$P_LIST" ]; then apt-get $o install $P_LIST; fi
apt-get clean
rm -rf /var/lib/apt/lists/partial
)SH";
constexpr const char* kApkPackages = R"SH(
if [ "$P_UPDATE" = 1 ]; then apk update; fi
if [ "$P_UPGRADE" = 1 ]; then apk upgrade; fi
if [ -n "$P_LIST" ]; then apk add $P_LIST; fi
)SH";
constexpr const char* kDnfPackages = R"SH(
if [ "$P_UPDATE" = 1 ]; then dnf -y makecache; fi
if [ "$P_UPGRADE" = 1 ]; then dnf -y upgrade; fi
if [ -n "$P_LIST" ]; then dnf -y install $P_LIST; fi
dnf clean all
)SH";

constexpr const char* kLocale = R"SH(
l=$L_NAME
lang=${l%%.*}
case "$l" in *.*) charset=${l#*.}; charset=${charset%%@*} ;; *) charset=ISO-8859-1 ;; esac
if ! command -v locale-gen >/dev/null 2>&1 && [ ! -e "/usr/share/i18n/locales/$lang" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing the locales package"
  apt-get -q update && DEBIAN_FRONTEND=noninteractive apt-get -y -q install locales && apt-get clean
fi
if command -v locale-gen >/dev/null 2>&1 && [ -f /etc/locale.gen ]; then
  if grep -qE "^[# ]*$L_RE[[:space:]]" /etc/locale.gen; then
    sed -i -E "s/^[# ]*($L_RE[[:space:]])/\1/" /etc/locale.gen
  else
    printf '%s %s\n' "$l" "$charset" >>/etc/locale.gen
  fi
  locale-gen
elif command -v localedef >/dev/null 2>&1; then
  if [ ! -e "/usr/share/i18n/locales/$lang" ]; then echo "locale $l: /usr/share/i18n/locales/$lang is missing (install the locales package)" >&2; exit 3; fi
  localedef -i "$lang" -f "$charset" "$l"
else
  echo "locale $l: the image has neither locale-gen nor localedef (install the locales package)" >&2; exit 3
fi
mkdir -p /etc/default
printf 'LANG=%s\n' "$l" >/etc/default/locale
[ ! -e /etc/locale.conf ] || printf 'LANG=%s\n' "$l" >/etc/locale.conf
norm=$(printf '%s' "$l" | tr 'A-Z' 'a-z' | sed 's/utf-8/utf8/')
if command -v locale >/dev/null 2>&1 && ! locale -a | tr 'A-Z' 'a-z' | grep -qxF "$norm"; then
  echo "locale $l was not generated" >&2; exit 3
fi
)SH";

constexpr const char* kTimezone = R"SH(
f=/usr/share/zoneinfo/$TZ_NAME
if [ ! -f "$f" ]; then echo "timezone $TZ_NAME: $f is missing (install tzdata)" >&2; exit 3; fi
ln -sf -- "$f" /etc/localtime
printf '%s\n' "$TZ_NAME" >/etc/timezone
)SH";

constexpr const char* kCaCerts = R"SH(
if ! command -v update-ca-certificates >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    apt-get -q update && DEBIAN_FRONTEND=noninteractive apt-get -y -q install ca-certificates && apt-get clean
  elif command -v apk >/dev/null 2>&1; then apk add ca-certificates
  else echo "ca_certs: the image has no update-ca-certificates" >&2; exit 3; fi
fi
if [ "$CA_REMOVE_DEFAULTS" = 1 ] && [ -f /etc/ca-certificates.conf ]; then
  sed -i -E 's/^([^#!])/!\1/' /etc/ca-certificates.conf
fi
update-ca-certificates --fresh
)SH";

// A bootcmd/runcmd list as one script run by one shell (as cloud-init
// does: `cd` and variables carry from item to item), with a marker line
// after each item carrying its exit status; strict: the first failing item
// ends the script.
// A bootcmd/runcmd item as shell text, cloud-init's way: a list quoted
// into a line, a string as it is.
std::string shell_text(const Command& item) {
  if (item.argv.empty()) return item.shell;
  std::string s;
  for (size_t k = 0; k < item.argv.size(); ++k) s += (k ? " " : "") + quote(item.argv[k]);
  return s;
}

std::string command_script(const std::vector<Command>& items, const std::string& marker, bool strict) {
  // One stream: stderr through its own pipe could arrive after the
  // marker line that follows it (a shell writes an error in pieces).
  std::string s = "exec 2>&1\n";
  for (size_t i = 0; i < items.size(); ++i) {
    s += shell_text(items[i]);
    s += "\n__ultari_rc=$?; printf '\\n" + marker + " " + std::to_string(i) + " %s\\n' \"$__ultari_rc\"";
    s += strict ? "; [ \"$__ultari_rc\" -eq 0 ] || exit \"$__ultari_rc\"\n" : "\n";
  }
  return s;
}

struct ItemResult {
  int status = -1;  // -1: did not finish (or did not run)
  std::string output;
};
std::vector<ItemResult> split_items(const std::string& output, const std::string& marker, size_t count) {
  std::vector<ItemResult> items(count);
  size_t pos = 0, index = 0;
  while (index < count) {
    size_t m = output.find("\n" + marker + " ", pos);
    if (m == std::string::npos) {
      items[index].output = output.substr(pos);
      break;
    }
    items[index].output = output.substr(pos, m - pos);
    size_t eol = output.find('\n', m + 1);
    std::istringstream line(output.substr(m + 1 + marker.size(), eol - m - 1 - marker.size()));
    size_t i = 0;
    int status = -1;
    line >> i >> status;
    if (i == index) items[index].status = status;
    pos = eol == std::string::npos ? output.size() : eol + 1;
    ++index;
  }
  return items;
}

// Runs the items; returns what each did for the log, or throws naming the
// item that failed.
json run_commands(Build& b, const std::string& module, const std::vector<Command>& items, bool strict) {
  std::string marker = "ultari-item-" + random_hex(8);
  Build::StepResult r = b.run({"/bin/sh", "-c", command_script(items, marker, strict), "ultari-" + module}, {});
  std::vector<ItemResult> results = split_items(r.output, marker, items.size());
  json done = json::array();
  for (size_t i = 0; i < items.size(); ++i) {
    if (results[i].status < 0 && i > 0 && results[i - 1].status != 0 && strict) break;
    done.push_back({{"item", items[i].describe()}, {"status", results[i].status}, {"line", items[i].line}});
    bool failed = results[i].status != 0 && (strict || i + 1 == items.size());
    if (failed || (results[i].status < 0)) {
      std::string status = results[i].status < 0 ? "did not finish (sandbox exit status " +
                                                        std::to_string(r.exit_code) + ")"
                                                  : "exit status " + std::to_string(results[i].status);
      throw Error(module + "[" + std::to_string(i) + "] (" + items[i].where + ") '" + items[i].describe() +
                  "' failed: " + status + "; its output:\n" + tail(results[i].output, 20));
    }
  }
  return done;
}

// A script part as cloud-init runs it: an executable file (here in a
// directory of its own under /tmp, removed afterwards: nothing of it is
// committed), stdin /dev/null, INSTANCE_ID set. Its exit status is the
// sandbox's.
constexpr const char* kScript = R"SH(
d=$(mktemp -d /tmp/ultari-script.XXXXXX) || exit 125
trap 'rm -rf -- "$d"' EXIT
cat >"$d/$S_NAME" && chmod 700 -- "$d/$S_NAME" || exit 125
"$d/$S_NAME" </dev/null
)SH";

// Runs the scripts one by one, each in its own sandbox; returns what each
// did for the log, or throws naming the first that failed (its part, output
// and exit status).
json run_scripts(Build& b, const std::string& module, const std::vector<Script>& scripts) {
  json done = json::array();
  for (const auto& s : scripts) {
    Build::StepResult r = b.run({"/bin/sh", "-c", kScript, "ultari-" + module}, {"S_NAME=" + s.name}, s.content);
    done.push_back({{"script", s.name}, {"part", s.part}, {"status", r.exit_code}});
    if (r.exit_code != 0)
      throw Error(module + ": script '" + s.name + "' (" + s.part + ") failed: exit status " +
                  std::to_string(r.exit_code) + "; its output:\n" + tail(r.output, 20));
  }
  return done;
}

// Part handlers, as cloud-init's walker runs them while it reads the
// user-data: each text/part-handler part is written to
// /var/lib/cloud/instance/handlers/part-handler-NNN.py (and stays there, as
// cloud-init leaves it), imported, its list_types() registered (a later
// handler of a type replaces an earlier one) and handle_part(data,
// "__begin__", ...) called; each later part of a registered type goes to
// its handle_part (version 2: with the frequency); at the end, "__end__".
// `data` is None (cloud-init passes its Cloud object). The frequency is
// once-per-instance: a handler whose own frequency is neither that nor
// "always" is skipped, as cloud-init skips it. A handler that lists a type
// Ultari runs itself fails the build. A handler that fails to load or
// raises, and a part no handler takes, fail the build (cloud-init logs and
// goes on; so does Ultari with ultari: {runcmd_strict: false}).
constexpr const char* kPartHandlers = R"PY(
import base64, importlib.util, json, os, sys, traceback
req = json.loads(sys.stdin.buffer.read())
own, strict = set(req["own"]), req["strict"]
FREQ = "once-per-instance"
hdir = "/var/lib/cloud/instance/handlers"
os.makedirs(hdir, mode=0o700, exist_ok=True)
sys.path.insert(0, hdir)
registered, begun = {}, []

def fail(msg):
    print("ultari: " + msg)
    if strict:
        sys.exit(1)

def call(mod, ctype, filename, payload, part):
    freq = getattr(mod, "frequency", FREQ)
    if freq not in ("always", FREQ):
        print("skipped %s for %s: its frequency is %r" % (mod.__name__, ctype, freq))
        return
    try:
        version = int(getattr(mod, "handler_version", 1))
    except Exception:
        version = 1
    try:
        if version >= 2:
            mod.handle_part(None, ctype, filename, payload, FREQ)
        else:
            mod.handle_part(None, ctype, filename, payload)
    except Exception:
        traceback.print_exc(file=sys.stdout)
        fail("%s (%s) raised in handle_part for %s" % (mod.__name__, part, ctype))

count = 0
for p in req["parts"]:
    if p["handler"]:
        name = "part-handler-%03d" % count
        count += 1
        path = os.path.join(hdir, name + ".py")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64decode(p["content"]))
        try:
            spec = importlib.util.spec_from_file_location(name, path)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            types = [str(t) for t in mod.list_types()] if hasattr(mod, "list_types") else []
        except Exception:
            traceback.print_exc(file=sys.stdout)
            fail("%s (%s) failed to load" % (name, p["part"]))
            continue
        if not hasattr(mod, "handle_part"):
            mod.handle_part = lambda *args: None
        claimed = sorted(t for t in types if t in own)
        if claimed:
            print("ultari: %s (%s) lists %s, which Ultari runs itself" % (name, p["part"], ", ".join(claimed)))
            sys.exit(1)
        for t in types:
            registered[t] = (mod, name)
        print("%s (%s) takes: %s" % (name, p["part"], ", ".join(types) or "nothing"))
        call(mod, "__begin__", None, None, p["part"])
        begun.append(mod)
    else:
        if p["type"] not in registered:
            fail("no part handler before %s takes %s" % (p["part"], p["type"]))
            continue
        mod, name = registered[p["type"]]
        payload = base64.b64decode(p["content"])
        if p["type"].startswith("text/"):  # text as str (cloud-init decodes text parts), the rest as bytes
            try:
                payload = payload.decode("utf-8")
            except UnicodeDecodeError:
                fail("%s is not UTF-8 text" % p["part"])
                continue
        call(mod, p["type"], p["filename"], payload, p["part"])
        print("%s: handled by %s" % (p["part"], name))
for mod in begun:
    call(mod, "__end__", None, None, "the end")
)PY";

// Runs the part handlers (kPartHandlers) in one sandbox with the image's
// python3; throws with its output when one fails.
std::string run_part_handlers(Build& b, const std::vector<HandlerPart>& parts, bool strict) {
  json req = {{"strict", strict}, {"parts", json::array()}, {"own", json::array()}};
  for (const char* t : kOwnTypes) req["own"].push_back(t);
  for (const auto& p : parts)
    req["parts"].push_back({{"handler", p.handler}, {"type", p.type}, {"filename", p.filename},
                            {"content", base64_encode(p.content)}, {"part", p.part}});
  Build::StepResult r = b.run({"/bin/sh", "-c",
                               "command -v python3 >/dev/null 2>&1 || { echo 'part handlers are Python: the image has "
                               "no python3 (give a base that has it)'; exit 127; }\n"
                               "exec python3 -I -B -u -c \"$PH_DRIVER\" 2>&1",
                               "ultari-part-handlers"},
                              {std::string("PH_DRIVER=") + kPartHandlers},
                              req.dump(-1, ' ', true, json::error_handler_t::replace));
  if (r.exit_code != 0)
    throw Error("part_handlers failed (exit status " + std::to_string(r.exit_code) + "): " + tail(r.output, 20));
  return r.output;
}

// cloud-init's scripts_per_once, _per_boot and _per_instance: the parts of
// that frequency are put in /var/lib/cloud/scripts/per-FREQ/ (mode 0700),
// then every executable file there (the image's, write_files' too) runs in
// name order, each in its own sandbox, stdin /dev/null; the first to fail
// fails the build. The scripts stay in the image, as cloud-init leaves
// them.
constexpr const char* kPutScript = R"SH(
mkdir -p -- "$S_DIR" && cat >"$S_DIR/$S_NAME" && chmod 700 -- "$S_DIR/$S_NAME"
)SH";
constexpr const char* kListScripts = R"SH(
for f in "$S_DIR"/*; do
  [ -f "$f" ] && [ -x "$f" ] || continue
  n=${f##*/}
  case "$n" in *"
"*) continue ;; esac
  printf 'script %s\n' "$n"
done
)SH";
constexpr const char* kRunScript = R"SH(
"$S_DIR/$S_NAME" </dev/null
)SH";

json run_script_dir(Build& b, const std::string& module, const std::string& dir, const std::vector<Script>& parts) {
  for (const auto& s : parts) {
    Build::StepResult r = b.run({"/bin/sh", "-c", kPutScript, "ultari-" + module}, {"S_DIR=" + dir, "S_NAME=" + s.name},
                                s.content, false);
    if (r.exit_code != 0)
      throw Error(module + ": cannot put " + s.part + " in " + dir + ": " + tail(r.output, 5));
  }
  Build::StepResult list = b.run({"/bin/sh", "-c", kListScripts, "ultari-" + module}, {"S_DIR=" + dir}, "", false);
  std::vector<std::string> names;
  std::istringstream lines(list.output);
  for (std::string l; std::getline(lines, l);)
    if (l.rfind("script ", 0) == 0) names.push_back(l.substr(7));
  json done = json::array();
  for (const auto& name : names) {
    Build::StepResult r = b.run({"/bin/sh", "-c", kRunScript, "ultari-" + module}, {"S_DIR=" + dir, "S_NAME=" + name});
    done.push_back({{"script", dir + "/" + name}, {"status", r.exit_code}});
    if (r.exit_code != 0)
      throw Error(module + ": " + dir + "/" + name + " failed (exit status " + std::to_string(r.exit_code) +
                  "); its output:\n" + tail(r.output, 20));
  }
  return done;
}

// cloud-init runs boot hooks, bootcmd and per-boot scripts at every boot,
// and each sandbox started from the image is a boot. So they are kept in
// the image: the boot hooks and bootcmd of this user-data under kBootDir
// (the base's are dropped there: the new user-data is the instance's), the
// per-boot scripts where they are, and kBootScript, which `ultari run
// --image` runs as root before the command (ProcessSpec::boot). Their
// output goes where cloud-init puts it; a failure is reported, and the
// command runs anyway, as a machine boots on after a failed bootcmd.
constexpr const char* kBootDir = "/var/lib/cloud/ultari";
constexpr const char* kBootScript = R"SH(#!/bin/sh
# What cloud-init runs at every boot: `ultari run --image` runs this as
# root before the command (written by `ultari image provision`).
[ -d /var/log ] || mkdir -p /var/log 2>/dev/null
exec </dev/null >>/var/log/cloud-init-output.log 2>&1
rc=0
for f in /var/lib/cloud/ultari/boothooks/*; do
  [ -f "$f" ] && [ -x "$f" ] || continue
  "$f" || rc=$?
done
# (a subshell, no exec: each start pays for this script; on a line of its
# own, so that bash keeps a `set -e` in it)
if [ -f /var/lib/cloud/ultari/bootcmd ]; then
  (. /var/lib/cloud/ultari/bootcmd)
  s=$?; [ "$s" -eq 0 ] || rc=$s
fi
for f in /var/lib/cloud/scripts/per-boot/*; do
  [ -f "$f" ] && [ -x "$f" ] || continue
  "$f" || rc=$?
done
exit $rc
)SH";
// Per-boot scripts count as the build left them (runcmd or a package may
// have added one after the scripts module ran). Without boot steps, a
// base's kept ones are dropped (dead files otherwise).
constexpr const char* kPutBoot = R"SH(
keep=$S_KEEP
if [ -z "$keep" ]; then
  for f in /var/lib/cloud/scripts/per-boot/*; do
    [ -f "$f" ] && [ -x "$f" ] && { keep=1; break; }
  done
fi
[ -n "$keep" ] || { rm -rf -- "$S_DIR"; echo ultari-no-boot-steps; exit 0; }
rm -rf -- "$S_DIR" && mkdir -p -- "$S_DIR" && cat >"$S_DIR/boot" && chmod 700 -- "$S_DIR/boot"
)SH";

// bootcmd items as one script for one shell.
std::string bootcmd_script(const std::vector<Command>& items) {
  std::string s;
  for (const auto& item : items) s += shell_text(item) + "\n";
  return s;
}

// Writes the boot steps into the build's layer; false when there are none
// (nothing written: the image has no boot step).
bool keep_boot_steps(Build& b, const CloudConfig& cfg) {
  auto put = [&](const std::vector<std::string>& argv, const std::vector<std::string>& env, const std::string& input,
                 const std::string& what) {
    Build::StepResult r = b.run(argv, env, input, false);
    if (r.exit_code != 0) throw Error("keeping the per-boot steps: cannot write " + what + ": " + tail(r.output, 5));
    return r.output;
  };
  std::string script = std::string(kBootScript);
  // The instance id the steps saw at provisioning.
  script.insert(script.find("rc=0"), "export INSTANCE_ID=ultari-" + b.instance_id + "\n");
  bool own = !cfg.boothooks.empty() || !cfg.bootcmd.empty();
  std::string out = put({"/bin/sh", "-c", kPutBoot, "ultari-boot"},
                        {std::string("S_DIR=") + kBootDir, std::string("S_KEEP=") + (own ? "1" : "")}, script,
                        std::string(kBootDir) + "/boot");
  if (out.find("ultari-no-boot-steps") != std::string::npos) return false;
  for (size_t i = 0; i < cfg.boothooks.size(); ++i) {
    std::string prefix = std::to_string(i);  // 000-, 001-, ...: run in the user-data's order
    prefix = std::string(prefix.size() < 3 ? 3 - prefix.size() : 0, '0') + prefix + "-";
    put({"/bin/sh", "-c", kPutScript, "ultari-boot"},
        {std::string("S_DIR=") + kBootDir + "/boothooks", "S_NAME=" + prefix + cfg.boothooks[i].name},
        cfg.boothooks[i].content, cfg.boothooks[i].part);
  }
  if (!cfg.bootcmd.empty())
    put({"/bin/sh", "-c", kPutScript, "ultari-boot"}, {std::string("S_DIR=") + kBootDir, "S_NAME=bootcmd"},
        bootcmd_script(cfg.bootcmd), "bootcmd");
  return true;
}

// The built-in modules a kernel layer lists.
std::set<std::string> layer_builtin(const std::string& layer, const std::string& release) {
  std::set<std::string> names;
  std::istringstream in(read_or_empty(layer + "/lib/modules/" + release + "/modules.builtin"));
  for (std::string line; std::getline(in, line);) {
    std::string base = line.substr(line.rfind('/') + 1);
    if (base.size() > 3 && base.ends_with(".ko")) base.resize(base.size() - 3);
    std::replace(base.begin(), base.end(), '-', '_');
    if (!base.empty()) names.insert(base);
  }
  return names;
}

std::string cache_key(images::Unpacker& u, const images::Image& base, const std::string& rendered,
                      const Request& req, const std::string& host_inputs) {
  // The version names what a build makes of the same inputs: it changes
  // when that does (2: /tmp and the engine's mount points left out; 3: the
  // per-boot steps kept for every start).
  std::string text = "ultari-provision-3\n";
  for (const auto& l : base.layers) text += "layer " + l + "\n";
  std::vector<std::pair<std::string, std::string>> vars = req.vars;
  std::sort(vars.begin(), vars.end());
  for (const auto& [k, v] : vars) text += "var " + std::to_string(k.size()) + ":" + k + "=" + std::to_string(v.size()) + ":" + v + "\n";
  text += "user-data " + std::to_string(rendered.size()) + "\n" + rendered;
  if (!host_inputs.empty()) text += "\nhost " + host_inputs;
  return u.sha256(text);
}

// The image's run defaults: the base's, overridden by this user-data.
json image_config(const images::Image& base, const CloudConfig& cfg, const std::set<std::string>& kernel_modules) {
  json c = base.config.is_object() ? base.config : json::object();
  std::string hostname = !cfg.hostname.empty() ? cfg.hostname : cfg.fqdn.substr(0, cfg.fqdn.find('.'));
  if (!hostname.empty()) c["hostname"] = hostname;
  if (!cfg.locale.empty()) c["env"]["LANG"] = cfg.locale;
  if (!cfg.ultari.limits.empty()) c["limits"] = cfg.ultari.limits;
  if (!cfg.ultari.network.empty()) c["network"] = cfg.ultari.network;
  std::set<std::string> modules;
  if (c.contains("kernel_modules")) modules = c["kernel_modules"].get<std::set<std::string>>();
  modules.insert(kernel_modules.begin(), kernel_modules.end());
  if (!modules.empty()) c["kernel_modules"] = modules;
  return c;
}

// The modules a user-data runs, in Ultari's order.
std::vector<std::string> plan_of(const CloudConfig& c) {
  std::vector<std::string> p;
  auto deferred = [&](bool d) {
    return std::any_of(c.write_files.begin(), c.write_files.end(), [&](const WriteFile& f) { return f.defer == d; });
  };
  if (std::any_of(c.handler_parts.begin(), c.handler_parts.end(), [](const HandlerPart& h) { return h.handler; }))
    p.push_back("part_handlers");
  if (!c.boothooks.empty()) p.push_back("boothooks");
  if (!c.bootcmd.empty()) p.push_back("bootcmd");
  if (deferred(false)) p.push_back("write_files");
  if (!c.groups.empty()) p.push_back("groups");
  if (!c.users.empty()) p.push_back("users");
  if (c.apt.present) p.push_back("apt");
  if (c.package_update || c.package_upgrade || !c.packages.empty()) p.push_back("packages");
  if (!c.locale.empty()) p.push_back("locale");
  if (!c.timezone.empty()) p.push_back("timezone");
  if (!c.hostname.empty() || !c.fqdn.empty()) p.push_back("hostname");
  if (c.ca_certs.present) p.push_back("ca_certs");
  if (deferred(true)) p.push_back("write_files (deferred)");
  if (!c.per_once.empty()) p.push_back("scripts_per_once");
  if (!c.per_boot.empty()) p.push_back("scripts_per_boot");
  if (!c.per_instance.empty()) p.push_back("scripts_per_instance");
  if (!c.runcmd.empty()) p.push_back("runcmd");
  if (!c.scripts.empty()) p.push_back("scripts_user");
  return p;
}

// A URL fetched in a build sandbox, through the egress policy it runs
// with, by the first of curl, wget (busybox's too) and apt's apt-helper the
// image has (an https:// URL needs the image's CA certificates); at most
// kMaxUserData bytes. Throws Error naming `what`, the URL and the output.
// A user:password@ in the URL is sent as cloud-init sends it (Basic
// authentication): curl and wget get the header, apt-helper an auth.conf
// entry; the request names the URL without it (the gateway refuses a
// request target holding one), and no message shows the password.
constexpr const char* kFetch = R"SH(
d=$(mktemp -d /tmp/ultari-fetch.XXXXXX) || exit 125
trap 'rm -rf -- "$d"' EXIT
chmod 755 "$d"
if command -v curl >/dev/null 2>&1; then
  set --
  if [ -n "$F_HEADERS" ]; then
    while IFS= read -r h; do [ -n "$h" ] && set -- "$@" -H "$h"; done <<HEADERS
$F_HEADERS
HEADERS
  fi
  [ -z "$F_AUTH" ] || set -- "$@" -H "$F_AUTH"
  curl -fsSLg --max-filesize "$F_MAX" "$@" -o "$d/got" -- "$F_URL" >"$d/log" 2>&1 || { cat "$d/log" >&2; exit 4; }
elif command -v wget >/dev/null 2>&1; then
  set --
  if [ -n "$F_HEADERS" ]; then
    while IFS= read -r h; do [ -n "$h" ] && set -- "$@" "--header=$h"; done <<HEADERS
$F_HEADERS
HEADERS
  fi
  [ -z "$F_AUTH" ] || set -- "$@" "--header=$F_AUTH"
  wget -q "$@" -O "$d/got" -- "$F_URL" >"$d/log" 2>&1 || { cat "$d/log" >&2; exit 4; }
elif [ -n "$F_HEADERS" ]; then
  echo "the image has neither curl nor wget to send the request's headers with" >&2; exit 3
elif [ -x /usr/lib/apt/apt-helper ]; then
  set --
  if [ -n "$F_AUTH" ]; then
    [ -n "$F_APT_AUTH" ] || { echo "apt-helper cannot send an empty user or password, nor one holding white space" >&2; exit 3; }
    # apt's own place for credentials (readable by the _apt user it downloads as)
    printf '%s\n' "$F_APT_AUTH" >"$d/auth.conf" && chmod 644 "$d/auth.conf" || exit 125
    set -- -o "Dir::Etc::netrc=$d/auth.conf"
  fi
  /usr/lib/apt/apt-helper "$@" download-file "$F_URL" "$d/got" >"$d/log" 2>&1 || { cat "$d/log" >&2; exit 4; }
else
  echo "the image has none of curl, wget and apt-helper (package apt) to fetch it with" >&2; exit 3
fi
[ "$(wc -c <"$d/got")" -le "$F_MAX" ] || { echo "it is larger than $F_MAX bytes" >&2; exit 5; }
echo ultari-fetch-begin
base64 -w0 "$d/got"
echo
echo ultari-fetch-end
)SH";

std::string fetch_url(Build& b, const std::string& url, const std::string& what,
                      const std::vector<std::pair<std::string, std::string>>& headers = {},
                      size_t max = kMaxUserData) {
  std::string lines;
  for (const auto& [name, value] : headers) lines += name + ": " + value + "\n";
  const std::string shown = redacted(url);
  Userinfo auth = userinfo_of(url);
  std::vector<std::string> env = {"F_URL=" + without_userinfo(url), "F_MAX=" + std::to_string(max),
                                  "F_HEADERS=" + lines};
  bool own_header = std::any_of(headers.begin(), headers.end(),
                                [](const auto& h) { return strcasecmp(h.first.c_str(), "authorization") == 0; });
  if (auth.present && !(auth.user.empty() && auth.password.empty()) && !own_header) {
    env.push_back("F_AUTH=Authorization: Basic " + base64_encode(auth.user + ":" + auth.password));
    auto blank = [](const std::string& s) {
      return s.empty() || std::any_of(s.begin(), s.end(), [](unsigned char c) { return std::isspace(c) || c < 0x20; });
    };
    // (apt matches a plain-http entry only when it names its scheme)
    if (!blank(auth.user) && !blank(auth.password))
      env.push_back("F_APT_AUTH=machine " + origin_of(url) + "/ login " + auth.user + " password " + auth.password);
  }
  Build::StepResult r = b.run({"/bin/sh", "-c", kFetch, "ultari-fetch"}, env);
  if (r.exit_code != 0)
    throw Error(what + ": fetching " + shown + " failed (exit status " + std::to_string(r.exit_code) + "):\n" +
                tail(r.output, 10));
  size_t begin = r.output.find("ultari-fetch-begin\n"), end = r.output.find("\nultari-fetch-end");
  if (begin == std::string::npos || end == std::string::npos || end < begin)
    throw Error(what + ": fetching " + shown + " printed nothing: " + tail(r.output, 5));
  begin += std::strlen("ultari-fetch-begin\n");
  // (the fetcher is the image's: its own size check is not this one's)
  if (end - begin > (max / 3 + 1) * 4 + (max / 57 + 2))
    throw Error(what + ": " + shown + " is larger than " + std::to_string(max) + " bytes");
  try {
    std::string data = base64_decode(std::string_view(r.output).substr(begin, end - begin));
    if (data.size() > max) throw Error("it is larger than " + std::to_string(max) + " bytes");
    return data;
  } catch (const Error& e) {
    throw Error(what + ": fetching " + shown + ": " + e.what());
  }
}

// A URL fetched as fetch_url does, by a sandbox whose egress policy allows
// that URL's host and port alone (the request's resolver and upstream
// proxy kept): an #include list's or a write_files source's, which the
// modules that run later do not get.
std::string fetch_alone(Build& b, const NetworkSpec& request, const std::string& url, const std::string& what,
                        const std::vector<std::pair<std::string, std::string>>& headers = {},
                        size_t max = kMaxUserData) {
  NetworkSpec only = request;
  only.mode = NetworkSpec::Mode::Allow;
  std::string host = host_of(url);
  if (host.empty() || host.find('*') != std::string::npos)
    throw Error(what + ": '" + redacted(url) + "' names no host a policy can allow by name");
  only.allow = {host};
  only.deny.clear();
  only.secrets.clear();  // the user-data's own headers, never a placeholder's swap
  uint16_t port = port_of(url, url.rfind("https://", 0) == 0 ? 443 : 80);
  if (port == 0) throw Error(what + ": '" + redacted(url) + "' has no valid port");
  only.ports = {port};
  net::validate(only);
  NetworkSpec saved = b.network;
  struct Restore {
    Build& b;
    NetworkSpec& saved;
    ~Restore() { b.network = saved; }
  } restore{b, saved};
  b.network = only;
  return fetch_url(b, url, what, headers, max);
}

// `ppa:OWNER/NAME` sources as add-apt-repository writes them: the PPA's
// archive for the base's Ubuntu release, signed by the PPA's key alone
// (its file, $KEY_FILE; fetch_keys() gets it). A PPA is built for
// Ubuntu's releases: a base that names none (UBUNTU_CODENAME, or ID=ubuntu
// with VERSION_CODENAME) is refused, where add-apt-repository would write
// a source for a release the PPA does not have.
void resolve_ppas(Apt& apt, const HostConfig& host, const std::map<std::string, std::string>& os) {
  auto field = [&](const char* key) {
    auto it = os.find(key);
    return it == os.end() ? std::string() : it->second;
  };
  // (the base's words in a message: printable characters only)
  auto shown = [](std::string v) {
    for (char& c : v)
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-' && c != '_') c = '?';
    return v.substr(0, 64);
  };
  for (auto& s : apt.sources) {
    if (s.ppa_owner.empty()) continue;
    std::string ppa = "ppa:" + s.ppa_owner + "/" + s.ppa_name;
    std::string series = !field("UBUNTU_CODENAME").empty() ? field("UBUNTU_CODENAME")
                         : field("ID") == "ubuntu"          ? field("VERSION_CODENAME")
                                                            : "";
    if (series.empty())
      throw Error("apt.sources." + s.name + ": " + ppa + " is built for Ubuntu's releases, and the base (" +
                  (field("ID").empty() ? std::string("no ID") : shown(field("ID"))) + " " +
                  shown(field("VERSION_CODENAME")) +
                  ") names none (UBUNTU_CODENAME in its os-release); give a deb line for the archive instead");
    if (series.size() > 32 || !std::all_of(series.begin(), series.end(), [](char c) { return c >= 'a' && c <= 'z'; }))
      throw Error("apt.sources." + s.name + ": " + ppa + ": the base's Ubuntu release '" + shown(series) +
                  "' is not a release name (a-z)");
    s.source = "deb [signed-by=$KEY_FILE] " + host.ppa_archive + "/" + s.ppa_owner + "/" + s.ppa_name + "/ubuntu " +
               series + " main";
    if (s.key.empty() && s.keyserver_url.empty()) set_keyserver(host.ppa_keyserver, s);
  }
}

// apt keys given by `keyid`: fetched in a build sandbox whose egress
// policy allows the key server alone (the modules do not get it), then
// checked here: the one key
// whose fingerprint is the ID is kept (what `gpg --recv-keys` keeps),
// whatever else the server sent.
//
// A PPA with neither key nor keyid: its key's fingerprint first, from
// Launchpad's API (what add-apt-repository asks), fetched the same way.
void fetch_keys(Build& b, const NetworkSpec& network, images::Unpacker& hashes, std::vector<AptSource>& sources,
                const HostConfig& host, json& entry) {
  json fetched = json::array();
  for (auto& s : sources) {
    if (!s.ppa_owner.empty() && s.key.empty() && s.keyid.empty()) {
      const std::string what = "apt.sources." + s.name + " (ppa:" + s.ppa_owner + "/" + s.ppa_name + ")";
      std::string url = host.ppa_api + "/~" + s.ppa_owner + "/+archive/ubuntu/" + s.ppa_name;
      std::string answer = fetch_alone(b, network, url, what, {}, 1 << 20);
      try {
        s.keyid = pgp::normalize_key_id(json::parse(answer).at("signing_key_fingerprint").get<std::string>());
      } catch (const std::exception& e) {
        throw Error(what + ": Launchpad's answer (" + redacted(url) + ") names no signing key fingerprint: " +
                    e.what());
      }
      if (s.keyid.size() < 40)  // Launchpad names the whole fingerprint; a long ID alone is refused
        throw Error(what + ": Launchpad's answer (" + redacted(url) + ") names a key ID, not a fingerprint");
      fetched.push_back({{"source", s.name}, {"ppa", s.ppa_owner + "/" + s.ppa_name}, {"fingerprint_from", redacted(url)}});
    }
    if (s.keyid.empty() || !s.keyring.empty()) continue;
    std::string url = s.keyserver_url + "/pks/lookup?op=get&options=mr&search=0x" + s.keyid;
    const std::string what = "apt.sources." + s.name + ".keyid " + s.keyid;
    std::string answer = fetch_alone(b, network, url, what);
    try {
      s.keyring = pgp::select_key(pgp::dearmor(answer), s.keyid,
                                  [&](const std::string& data) { return hashes.sha1(data); });
    } catch (const Error& e) {
      throw Error(what + ": the key server's answer (" + url + ") " + e.what());
    }
    fetched.push_back({{"source", s.name}, {"keyid", s.keyid}, {"from", s.keyserver_url}});
  }
  if (!fetched.empty()) entry["keys_fetched"] = fetched;
}

}  // namespace

Outcome provision(images::Store& store, const Request& req) {
  images::Store::check_name(req.name);
  images::Image base = store.get(req.base);
  Outcome out;

  // 1. The user-data after gzip, MIME and templates: what the cache sees.
  std::vector<std::string> base_dirs;
  for (const auto& id : base.layers) base_dirs.push_back(store.layer_path(id));
  auto os = parse_os_release(image_file(base_dirs, "etc/os-release").value_or(""));
  CloudConfig cfg = parse_user_data(req.user_data, instance_data(req, os));
  if (!cfg.templated && !req.vars.empty())
    throw Error("--var is given, but the user-data is not a template (neither it nor a part of it starts with the "
                "line '## template: jinja')");
  const std::string& text = cfg.canonical;
  out.warnings = cfg.warnings;
  out.parts = cfg.parts;

  // 2. The kernel modules it asks for must be allowed, whatever the cache says.
  HostConfig host = load_host_config();
  auto check_modules = [&](const CloudConfig& c) {
    for (const auto& m : c.ultari.kernel_modules)
      if (!module_allowed(host, m))
        throw Error("ultari.kernel_modules: module '" + m + "' is not on the allowlist (" +
                    (host.path.empty() ? std::string("the default one; an administrator sets [kernel_modules] allow "
                                                     "in /etc/ultari/config.toml")
                                       : "kernel_modules.allow in " + host.path) +
                    ")");
  };
  check_modules(cfg);

  if (req.check_only) {
    out.plan = plan_of(cfg);
    for (const auto& url : cfg.includes) out.includes.push_back(redacted(url));
    return out;
  }

  std::unique_ptr<images::Unpacker> unpacker = images::load_unpacker();
  // The host configuration's part in what is built: where PPAs come from.
  std::string host_inputs;
  if (std::any_of(cfg.apt.sources.begin(), cfg.apt.sources.end(), [](const AptSource& s) { return !s.ppa_owner.empty(); }))
    host_inputs = "ppa " + host.ppa_archive + " " + host.ppa_api + " " + host.ppa_keyserver;
  std::string key = cache_key(*unpacker, base, text, req, host_inputs);
  if (!req.no_cache && !req.refresh) {
    std::optional<images::Image> hit = store.find(req.name);
    if (!hit || hit->cache_key != key) hit = store.find_by_cache_key(key);
    if (hit) {
      if (hit->name != req.name) {
        images::Image named = *hit;
        named.name = req.name;
        out.image = store.save_as(named);
      } else {
        out.image = *hit;
      }
      out.cache_hit = true;
      return out;
    }
  }

  // 3. Build.
  std::vector<UniqueFd> holds = store.hold(base);
  Build b(req);
  b.os = os;
  b.instance_id = key.substr(0, 16);
  struct Scratch {
    std::string path;
    ~Scratch() {
      if (!path.empty()) remove_tree(path);  // rootless, work/work is mode 0
    }
  } scratch{store.scratch_dir()};
  b.scratch = scratch.path;
  for (const auto& id : base.layers) b.layers.push_back(store.layer_path(id));
  {
    images::Store::Space sp = store.space();
    b.free_at_start = sp.available;
    b.max_bytes = req.max_bytes ? std::min(req.max_bytes, sp.usable) : sp.usable;
    b.inodes_at_start = sp.inodes;
    b.max_entries = sp.entries;
    if (b.max_bytes == 0)
      throw Error("the image store " + store.dir() + " has too little free space to provision (" +
                  std::to_string(b.free_at_start >> 20) + " MiB free)");
  }

  // #include lists: fetched now (the cache key covers the URLs, not what
  // they hold: --refresh fetches again), each in a build sandbox whose
  // egress policy allows that URL's host and port only, then the user-data
  // read again with what they held.
  if (!cfg.includes.empty()) {
    std::vector<std::string> fetched_urls;
    b.module("include", std::to_string(cfg.includes.size()) + " URLs", [&](json& entry) {
      Fetcher fetch = [&](const std::string& url) {
        fetched_urls.push_back(redacted(url));
        return fetch_alone(b, req.network, url, "#include");
      };
      CloudConfig full = parse_user_data(req.user_data, instance_data(req, os), fetch);
      check_modules(full);
      out.warnings = full.warnings;
      out.parts = full.parts;
      cfg = std::move(full);
      entry["urls"] = fetched_urls;
    });
  }

  std::set<std::string> wanted(cfg.ultari.kernel_modules.begin(), cfg.ultari.kernel_modules.end());
  std::set<std::string> from_commands;
  for (const auto* list : {&cfg.bootcmd, &cfg.runcmd})
    for (const auto& c : *list)
      for (const auto& m : modprobe_names(c.argv.empty() ? c.shell : [&] {
             std::string s;
             for (const auto& a : c.argv) s += a + " ";
             return s;
           }()))
        from_commands.insert(m);
  for (const auto* list : {&cfg.boothooks, &cfg.scripts})
    for (const auto& script : *list) {
      std::istringstream lines(script.content);
      for (std::string line; std::getline(lines, line);)
        for (const auto& m : modprobe_names(line)) from_commands.insert(m);
    }
  std::string release;
  std::set<std::string> present;  // modules the image's sandboxes will find in the kernel
  if (!wanted.empty() || !from_commands.empty()) {
    b.module("kernel_modules", "on the host", [&](json& entry) {
      RunningKernel kernel = running_kernel();
      release = kernel.release;
      isolation::Identity id = isolation::plan_identity(0, 0);
      KernelLayer kl = kernel_layer(store.dir() + "/kernel", id.host_root_uid, id.host_root_gid);
      std::string layer = kl.path;
      holds.push_back(std::move(kl.hold));
      std::set<std::string> builtin = layer_builtin(layer, release);
      for (const auto& m : wanted) ensure_module(kernel, builtin, host, m);
      present = wanted;
      json missing = json::object();
      for (const auto& m : from_commands) {
        if (wanted.count(m)) continue;
        if (!module_allowed(host, m)) {
          missing[m] = "not on the allowlist";
          continue;
        }
        try {
          ensure_module(kernel, builtin, host, m);
          present.insert(m);
        } catch (const Error& e) {  // an alias the image defines, say: its modprobe decides
          missing[m] = e.what();
        }
      }
      entry["present"] = present;
      if (!missing.empty()) entry["not_in_kernel"] = missing;
      b.layers.push_back(layer);
    });
  }

  Probe probe_result = probe(b);
  if (cfg.apt.present && probe_result.manager == "apt") resolve_ppas(cfg.apt, host, os);
  b.network = req.network;
  if (b.network.mode == NetworkSpec::Mode::None) b.network.mode = NetworkSpec::Mode::Allow;
  std::vector<std::string> mirrors = probe_result.mirror_hosts;
  for (const auto& uri : {cfg.apt.primary_uri, cfg.apt.security_uri})
    if (!uri.empty()) mirrors.push_back(host_of(uri));
  for (const auto& s : cfg.apt.sources) {
    std::istringstream words(s.source);
    for (std::string w; words >> w;)
      if (w.find("://") != std::string::npos && w.find('$') == std::string::npos) mirrors.push_back(host_of(w));
  }
  // The base is untrusted: only plain names (no pattern, no address, not
  // localhost) become allowed mirrors.
  for (const auto& h : mirrors) {
    std::string name = net::plain_host_name(h);
    if (name.empty()) continue;
    if (std::find(b.network.allow.begin(), b.network.allow.end(), name) == b.network.allow.end())
      b.network.allow.push_back(name);
  }
  if (b.network.mode == NetworkSpec::Mode::Allow && b.network.allow.empty()) b.network.mode = NetworkSpec::Mode::None;
  net::validate(b.network);

  auto write_files = [&](bool deferred) {
    std::vector<const WriteFile*> files;
    for (const auto& f : cfg.write_files)
      if (f.defer == deferred) files.push_back(&f);
    if (files.empty()) return;
    std::string paths;
    for (const auto* f : files) paths += (paths.empty() ? "" : ", ") + f->path;
    b.module(deferred ? "write_files (deferred)" : "write_files", paths, [&](json& entry) {
      json changed = json::array();
      for (const auto* f : files) {
        char mode[8];
        std::snprintf(mode, sizeof mode, "%04o", f->permissions);
        // cloud-init 23.1's `source`: the URL's bytes as they are; the
        // content (and its encoding) only when the fetch fails.
        std::string fetched;
        bool from_source = false;
        if (!f->source_uri.empty()) {
          try {
            // (at most half of content's limit: the bytes come back base64
            // on the build sandbox's output, whose limit is 64 MiB)
            fetched = fetch_alone(b, req.network, f->source_uri, "write_files: " + f->path + " (" + f->where + ")",
                                  f->source_headers, kMaxFileContent / 2);
            from_source = true;
          } catch (const OverLimits&) {
            throw;
          } catch (const Error& e) {
            if (!f->has_content) throw;
            out.warnings.push_back(std::string(e.what()) + "; its content is written instead, as cloud-init does");
          }
        }
        Build::StepResult r = b.run({"/bin/sh", "-ec", kWriteFile, "ultari-write_files"},
                                    {"WF_PATH=" + f->path, "WF_OWNER=" + f->owner, std::string("WF_MODE=") + mode,
                                     std::string("WF_APPEND=") + (f->append ? "1" : "0"),
                                     std::string("WF_GZIP=") + (f->gzip && !from_source ? "1" : "0"),
                                     "WF_MAX=" + std::to_string(kMaxFileContent)},
                                    from_source ? fetched : f->content, false);
        if (r.exit_code != 0)
          throw Error("write_files: " + f->path + " (" + f->where + ") failed (exit status " +
                      std::to_string(r.exit_code) + "): " + tail(r.output, 10));
        changed.push_back({{"path", f->path}, {"owner", f->owner}, {"permissions", mode}, {"append", f->append}});
        if (from_source) changed.back()["source"] = redacted(f->source_uri);
      }
      entry["files"] = changed;
    });
  };

  // Part handlers and boot hooks (cloud-init runs them as it reads the
  // user-data), then bootcmd: once, first.
  if (!cfg.handler_parts.empty()) {
    size_t handlers = std::count_if(cfg.handler_parts.begin(), cfg.handler_parts.end(),
                                    [](const HandlerPart& p) { return p.handler; });
    b.module("part_handlers",
             std::to_string(handlers) + " handlers, " + std::to_string(cfg.handler_parts.size() - handlers) + " parts",
             [&](json& entry) { entry["output"] = tail(run_part_handlers(b, cfg.handler_parts, cfg.ultari.runcmd_strict), 20); });
  }
  if (!cfg.boothooks.empty())
    b.module("boothooks", std::to_string(cfg.boothooks.size()) + " scripts",
             [&](json& entry) { entry["items"] = run_scripts(b, "boothooks", cfg.boothooks); });
  if (!cfg.bootcmd.empty())
    b.module("bootcmd", std::to_string(cfg.bootcmd.size()) + " commands",
             [&](json& entry) { entry["items"] = run_commands(b, "bootcmd", cfg.bootcmd, true); });
  write_files(false);

  // groups, then users (the default user first, as cloud-init does).
  if (!cfg.groups.empty()) {
    std::string names;
    for (const auto& g : cfg.groups) names += (names.empty() ? "" : ", ") + g.name;
    b.module("groups", names, [&](json&) {
      for (const auto& g : cfg.groups) {
        std::string members;
        for (const auto& m : g.members) members += m + " ";
        b.script("groups", kGroup, {"G_NAME=" + g.name, "G_MEMBERS=" + members}, "", false);
      }
    });
  }
  std::vector<User> users;
  for (const auto& u : cfg.users) {
    if (!u.is_default) {
      users.push_back(u);
      continue;
    }
    User d;
    std::string distro = os.count("ID") ? os["ID"] : "";
    d.name = distro == "ubuntu" ? "ubuntu" : distro == "fedora" ? "fedora" : distro == "alpine" ? "alpine" : "debian";
    d.gecos = distro.empty() ? "Debian" : std::string(1, static_cast<char>(std::toupper(d.name[0]))) + d.name.substr(1);
    d.groups = distro == "ubuntu" ? std::vector<std::string>{"adm", "cdrom", "dip", "lxd", "sudo"}
                                  : std::vector<std::string>{"adm", "audio", "cdrom", "dialout", "dip", "floppy",
                                                             "netdev", "plugdev", "sudo", "video"};
    d.sudo = {"ALL=(ALL) NOPASSWD:ALL"};
    d.shell = "/bin/bash";
    if (cfg.default_user) {  // `user:` overrides the default user's fields it sets
      const User& o = *cfg.default_user;
      d.name = o.name;
      if (!o.gecos.empty()) d.gecos = o.gecos;
      if (!o.groups.empty()) d.groups = o.groups;
      if (!o.sudo.empty()) d.sudo = o.sudo;
      if (!o.shell.empty()) d.shell = o.shell;
      d.homedir = o.homedir;
      d.uid = o.uid;
      d.ssh_authorized_keys = o.ssh_authorized_keys;
      d.hashed_passwd = o.hashed_passwd;
      d.plain_text_passwd = o.plain_text_passwd;
      d.lock_passwd = o.lock_passwd;
    }
    users.insert(users.begin(), d);
  }
  if (!users.empty()) {
    std::string names;
    for (const auto& u : users) names += (names.empty() ? "" : ", ") + u.name;
    b.module("users", names, [&](json& entry) {
      json made = json::array();
      for (const auto& u : users) {
        std::string groups, sudo, keys;
        for (const auto& g : u.groups) groups += (groups.empty() ? "" : ",") + g;
        for (const auto& s : u.sudo) sudo += (sudo.empty() ? "" : "\n") + s;
        for (const auto& k : u.ssh_authorized_keys) keys += (keys.empty() ? "" : "\n") + k;
        std::string id = b.script("users", kUser,
                                  {"U_NAME=" + u.name, "U_GECOS=" + u.gecos, "U_SHELL=" + u.shell,
                                   "U_HOME=" + u.homedir, "U_PGROUP=" + u.primary_group,
                                   "U_UID=" + (u.uid ? std::to_string(*u.uid) : std::string()), "U_GROUPS=" + groups,
                                   "U_EXPIRE=" + u.expiredate,
                                   "U_INACTIVE=" + (u.inactive ? std::to_string(*u.inactive) : std::string()),
                                   std::string("U_SYSTEM=") + (u.system ? "1" : "0"),
                                   std::string("U_NO_USER_GROUP=") + (u.no_user_group ? "1" : "0"),
                                   std::string("U_NO_CREATE_HOME=") + (u.no_create_home ? "1" : "0"),
                                   std::string("U_CREATE_GROUPS=") + (u.create_groups ? "1" : "0"),
                                   "U_HASHED=" + u.hashed_passwd, "U_PLAIN=" + u.plain_text_passwd,
                                   std::string("U_LOCK=") + (u.lock_passwd ? "1" : "0"), "U_SUDO=" + sudo,
                                   "U_KEYS=" + keys},
                                  "", false);
        made.push_back({{"name", u.name}, {"id", tail(id, 1)}});
      }
      entry["users"] = made;
    });
  }

  // apt sources, then packages.
  if (cfg.apt.present) {
    if (probe_result.manager != "apt") {
      out.warnings.push_back("apt: the base image has no apt-get: the apt key is ignored");
    } else {
      b.module("apt", "sources and configuration", [&](json& entry) {
        fetch_keys(b, req.network, *unpacker, cfg.apt.sources, host, entry);
        std::vector<EnvFile> files;
        std::string release = os.count("VERSION_CODENAME") ? os["VERSION_CODENAME"] : "";
        std::string mirror = cfg.apt.primary_uri.empty() ? std::string() : cfg.apt.primary_uri;
        auto subst = [&](std::string s) {
          for (auto [from, to] : {std::pair<std::string, std::string>{"$MIRROR", mirror}, {"$PRIMARY", mirror},
                                  {"$SECURITY", cfg.apt.security_uri.empty() ? mirror : cfg.apt.security_uri},
                                  {"$RELEASE", release}})
            s = replace_all(std::move(s), from, to);
          return s;
        };
        if (!cfg.apt.preserve_sources_list && !cfg.apt.sources_list.empty()) {
          if (mirror.empty() && cfg.apt.sources_list.find("$MIRROR") != std::string::npos)
            throw Error("apt.sources_list uses $MIRROR, but apt.primary has no uri");
          files.push_back({"/etc/apt/sources.list", subst(cfg.apt.sources_list)});
        }
        // cloud-init names a key file by the stem of its source's file name,
        // so sources whose file names share a stem share it, and the last
        // key overwrites the others (the other sources then fail to
        // verify). Here a source whose key differs from the one already in
        // that file gets a file of its own, STEM-NAME.gpg: each source's
        // signed-by still trusts its own key alone.
        std::map<std::string, std::string> keyrings;  // file -> key
        for (const auto& s : cfg.apt.sources) {
          // cloud-init's places: a key the source names as $KEY_FILE (its
          // signed-by) in cloud-init.gpg.d, any other in trusted.gpg.d.
          bool signed_by = s.source.find("$KEY_FILE") != std::string::npos;
          std::string dir = signed_by ? "/etc/apt/cloud-init.gpg.d/" : "/etc/apt/trusted.gpg.d/";
          std::string key_file = dir + s.key_stem + ".gpg";
          if (!s.keyring.empty()) {
            auto taken = [&](const std::string& f) {
              auto held = keyrings.find(f);
              return held != keyrings.end() && held->second != s.keyring;
            };
            if (taken(key_file)) key_file = dir + s.key_stem + "-" + s.name + ".gpg";
            if (taken(key_file))
              throw Error("apt.sources." + s.name + ": its key's file " + key_file +
                          " holds another source's key; give the source another 'filename'");
            keyrings.emplace(key_file, s.keyring);
          }
          // $KEY_FILE last: the key's path (of the source's file name) is
          // not substituted again.
          std::string source = subst(s.source);
          if (signed_by) source = replace_all(std::move(source), "$KEY_FILE", key_file);
          if (!source.empty()) files.push_back({"/etc/apt/sources.list.d/" + s.filename, source, "0644", s.append});
        }
        for (const auto& [file, key] : keyrings) files.push_back({file, key, "0644", false, true});
        if (!cfg.apt.conf.empty()) files.push_back({"/etc/apt/apt.conf.d/94cloud-init-config", cfg.apt.conf});
        std::string proxy;
        for (auto [kind, value] : {std::pair<const char*, std::string>{"http", cfg.apt.http_proxy},
                                   {"https", cfg.apt.https_proxy}, {"ftp", cfg.apt.ftp_proxy}})
          if (!value.empty()) proxy += std::string("Acquire::") + kind + "::Proxy \"" + value + "\";\n";
        if (!proxy.empty()) files.push_back({"/etc/apt/apt.conf.d/90cloud-init-aptproxy", proxy});
        std::string text = kEnvFiles;
        std::vector<std::string> env = env_files(files);
        if (!cfg.apt.preserve_sources_list && cfg.apt.sources_list.empty() && !mirror.empty()) {
          // Point the existing entries of the primary archive at the new mirror.
          text += R"SH(
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  sed -i -E "/security/!s#(https?|ftp)://[^ ]+#$A_MIRROR#" "$f"
  echo "mirror of $f: $A_MIRROR_SHOWN"
done
)SH";
          env.push_back("A_MIRROR=" + mirror);
          env.push_back("A_MIRROR_SHOWN=" + redacted(mirror));  // the log's: no password
        }
        if (!cfg.apt.debconf_selections.empty()) {
          std::string sel;
          for (const auto& l : cfg.apt.debconf_selections) sel += l + "\n";
          text += "printf '%s' \"$A_DEBCONF\" | debconf-set-selections\n";
          env.push_back("A_DEBCONF=" + sel);
        }
        entry["output"] = tail(b.script("apt", text, env, "", false), 10);
      });
    }
  }
  bool packages = cfg.package_update || cfg.package_upgrade || !cfg.packages.empty();
  if (packages) {
    if (probe_result.manager.empty())
      throw Error("packages: the base image has none of apt-get, apk, dnf");
    std::string list, names;
    for (const auto& p : cfg.packages) {
      std::string spec = p.name;
      if (!p.version.empty()) spec += (probe_result.manager == "dnf" ? "-" : "=") + p.version;
      list += (list.empty() ? "" : " ") + spec;
    }
    std::string summary = probe_result.manager + ":";
    if (cfg.package_update || !cfg.packages.empty()) summary += " update";
    if (cfg.package_upgrade) summary += " upgrade";
    if (!list.empty()) summary += " install " + list;
    b.module("packages", summary, [&](json& entry) {
      const char* text = probe_result.manager == "apt" ? kAptPackages : probe_result.manager == "apk" ? kApkPackages
                                                                                                   : kDnfPackages;
      // cloud-init updates the package lists whenever it installs.
      std::string output = b.script(
          "packages", text,
          {std::string("P_UPDATE=") + (cfg.package_update || !cfg.packages.empty() || cfg.package_upgrade ? "1" : "0"),
           std::string("P_UPGRADE=") + (cfg.package_upgrade ? "1" : "0"), "P_LIST=" + list});
      entry["packages"] = list;
      entry["output"] = tail(output, 5);
    });
  }

  if (!cfg.locale.empty()) {
    std::string re;
    for (char c : cfg.locale) re += c == '.' ? std::string("\\.") : std::string(1, c);
    b.module("locale", cfg.locale, [&](json& entry) {
      entry["output"] = tail(b.script("locale", kLocale, {"L_NAME=" + cfg.locale, "L_RE=" + re}), 5);
    });
  }
  if (!cfg.timezone.empty())
    b.module("timezone", cfg.timezone, [&](json&) { b.script("timezone", kTimezone, {"TZ_NAME=" + cfg.timezone}, "", false); });
  if (!cfg.hostname.empty() || !cfg.fqdn.empty()) {
    std::string h = !cfg.hostname.empty() ? cfg.hostname : cfg.fqdn.substr(0, cfg.fqdn.find('.'));
    b.module("hostname", h, [&](json&) {
      b.script("hostname", kEnvFiles, env_files({{"/etc/hostname", h}}), "", false);
    });
  }
  if (cfg.ca_certs.present) {
    b.module("ca_certs", std::to_string(cfg.ca_certs.trusted.size()) + " certificates", [&](json&) {
      std::vector<EnvFile> files;
      for (size_t i = 0; i < cfg.ca_certs.trusted.size(); ++i)
        files.push_back({"/usr/local/share/ca-certificates/cloud-init-ca-cert-" + std::to_string(i + 1) + ".crt",
                         cfg.ca_certs.trusted[i]});
      std::vector<std::string> env = env_files(files);
      env.push_back(std::string("CA_REMOVE_DEFAULTS=") + (cfg.ca_certs.remove_defaults ? "1" : "0"));
      b.script("ca_certs", std::string(kEnvFiles) + kCaCerts, env);
    });
  }
  write_files(true);
  // Scripts by frequency (cloud-init runs them in its final stage, before
  // runcmd's script): at provisioning, the image's one boot.
  bool cloud_scripts = probe_result.cloud_scripts;
  for (const auto& f : cfg.write_files)
    if (f.path.rfind("/var/lib/cloud/scripts/", 0) == 0) cloud_scripts = true;
  struct Frequency {
    const char* name;
    const std::vector<Script>* parts;
  };
  for (auto [freq, parts] : {Frequency{"once", &cfg.per_once}, {"boot", &cfg.per_boot}, {"instance", &cfg.per_instance}}) {
    if (parts->empty() && !cloud_scripts) continue;
    std::string module = std::string("scripts_per_") + freq;
    b.module(module, std::string("/var/lib/cloud/scripts/per-") + freq, [&](json& entry) {
      entry["items"] = run_script_dir(b, module, std::string("/var/lib/cloud/scripts/per-") + freq, *parts);
    });
  }
  if (!cfg.runcmd.empty()) {
    b.module("runcmd", std::to_string(cfg.runcmd.size()) + " commands",
             [&](json& entry) { entry["items"] = run_commands(b, "runcmd", cfg.runcmd, cfg.ultari.runcmd_strict); });
  }
  // User scripts: cloud-init's scripts_user, after runcmd, in file name order.
  if (!cfg.scripts.empty())
    b.module("scripts_user", std::to_string(cfg.scripts.size()) + " scripts",
             [&](json& entry) { entry["items"] = run_scripts(b, "scripts_user", cfg.scripts); });
  bool boot = keep_boot_steps(b, cfg);

  // 4. Commit: the host's modules tree is the host's, never the image's.
  // The build wrote this tree: never follow its symlinks on the host.
  if (!release.empty())
    for (const char* dir : {"lib/modules/", "usr/lib/modules/"}) remove_beneath(b.scratch + "/upper", dir + release);
  if (b.one_id) {
    remove_beneath(b.scratch + "/upper", kRootlessApt);
    std::string lost;
    for (const auto& f : cfg.write_files)
      if (f.owner != "root" && f.owner != "root:root") lost += (lost.empty() ? "" : ", ") + f.path + " (" + f.owner + ")";
    for (const auto& u : users)
      if (!u.no_create_home) lost += (lost.empty() ? "" : ", ") + ("the home of " + u.name);
    if (!lost.empty())
      out.warnings.push_back("a rootless build keeps no owners (its sandboxes have one id: yours, root inside), so "
                             "these belong to root in the image: " + lost);
  }
  drop_engine_scaffolding(b.scratch + "/upper", base, store);
  out.warnings.insert(out.warnings.end(), b.warnings.begin(), b.warnings.end());
  images::Image top;
  top.name = req.name;
  top.source = "provision " + (req.user_data_label.empty() ? std::string("user-data") : req.user_data_label);
  top.user_data_sha256 = unpacker->sha256(req.user_data);
  top.cache_key = key;
  top.provision_log = b.log;
  top.config = image_config(base, cfg, present);
  if (boot) top.config["boot"] = {"/bin/sh", std::string(kBootDir) + "/boot"};
  else top.config.erase("boot");
  out.image = store.commit(top, base, b.scratch + "/upper");
  return out;
}

namespace {

// The fields of the line for `key` (field `column`) of the image's
// etc/passwd or etc/group.
std::vector<std::string> image_entry(const std::vector<std::string>& layers, const char* file, size_t column,
                                     const std::string& key) {
  std::istringstream in(image_file(layers, file).value_or(""));
  for (std::string line; std::getline(in, line);) {
    std::vector<std::string> f;
    std::istringstream fields(line);
    for (std::string x; std::getline(fields, x, ':');) f.push_back(x);
    if (f.size() > column && f[column] == key) return f;
  }
  return {};
}

bool is_id(const std::string& v) {
  return !v.empty() && v.size() < 10 && std::all_of(v.begin(), v.end(), ::isdigit);
}

// OCI's User: "uid", "uid:gid", "name" or "name:group" (names from the image).
void image_user(const std::string& user, Spec& spec) {
  std::string u = user.substr(0, user.find(':'));
  std::string g = user.find(':') == std::string::npos ? "" : user.substr(user.find(':') + 1);
  auto id = [&](const std::string& v, const char* file, const char* what) -> long {
    if (is_id(v)) return std::stol(v);
    auto f = image_entry(spec.layers, file, 0, v);
    if (f.size() < 3 || !is_id(f[2]))
      throw Error("the image's " + std::string(what) + " '" + v + "' is not in its /" + file + " (give --user)");
    return std::stol(f[2]);
  };
  long uid = id(u, "etc/passwd", "user");
  long gid = g.empty() ? -1 : id(g, "etc/group", "group");
  if (gid < 0) {  // the user's primary group, or the uid
    auto f = image_entry(spec.layers, "etc/passwd", 2, std::to_string(uid));
    gid = f.size() >= 4 && is_id(f[3]) ? std::stol(f[3]) : uid;
  }
  if (uid > 65534 || gid > 65534) throw Error("the image's user '" + user + "' is outside the sandbox's ids (0-65534)");
  spec.identity.uid = static_cast<uid_t>(uid);
  spec.identity.gid = static_cast<gid_t>(gid);
}

}  // namespace

namespace {

void apply_config(const images::Image& image, const std::string& cache_dir, Spec& spec,
                  const std::vector<std::string>& explicit_fields, std::vector<std::string>& warnings,
                  std::vector<UniqueFd>& holds) {
  const json& c = image.config;
  auto given = [&](const std::string& f) {
    return std::find(explicit_fields.begin(), explicit_fields.end(), f) != explicit_fields.end();
  };
  std::vector<std::string> relaxed;  // what the image opens beyond the defaults
  if (c.contains("hostname") && !given("hostname")) spec.hostname = c["hostname"].get<std::string>();
  if (c.contains("boot") && !given("boot")) spec.process.boot = c["boot"].get<std::vector<std::string>>();
  if (c.contains("env") && c["env"].contains("LANG") && !given("env:LANG"))
    spec.process.env.insert(spec.process.env.begin(), "LANG=" + c["env"]["LANG"].get<std::string>());
  // An imported image's own configuration (OCI Env, WorkingDir, User).
  if (c.contains("oci_env"))
    for (const auto& kv : c["oci_env"].get<std::vector<std::string>>()) {
      auto eq = kv.find('=');
      if (eq == std::string::npos || eq == 0 || given("env:" + kv.substr(0, eq))) continue;
      spec.process.env.insert(spec.process.env.begin(), kv);
    }
  if (c.contains("workdir") && !given("cwd") && spec.process.cwd.empty()) spec.process.cwd = c["workdir"].get<std::string>();
  if (c.contains("user") && !given("user")) image_user(c["user"].get<std::string>(), spec);
  if (c.contains("limits")) {
    const json& l = c["limits"];
    auto& s = spec.limits;
    auto more = [&](const char* what, uint64_t value, uint64_t usual) {
      if (value > usual) relaxed.push_back(std::string(what) + " " + std::to_string(value));
    };
    if (l.contains("memory_bytes") && !given("memory")) {
      s.memory_bytes = l["memory_bytes"].get<uint64_t>();
      more("memory", *s.memory_bytes, kDefaultMemoryBytes);
    }
    if (l.contains("pids") && !given("pids")) {
      s.pids = l["pids"].get<uint64_t>();
      more("pids", *s.pids, kDefaultPids);
    }
    if (l.contains("cpus") && !given("cpus")) s.cpus = l["cpus"].get<double>();
    if (l.contains("wall_timeout_ms") && !given("timeout"))
      s.wall_timeout = std::chrono::milliseconds(l["wall_timeout_ms"].get<int64_t>());
    if (l.contains("cpu_time_ms") && !given("cpu_time"))
      s.cpu_time = std::chrono::milliseconds(l["cpu_time_ms"].get<int64_t>());
    if (l.contains("output_bytes") && !given("output_limit")) s.output_bytes = l["output_bytes"].get<uint64_t>();
    if (l.contains("tmp_bytes") && !given("tmp_size")) {
      s.tmp_bytes = l["tmp_bytes"].get<uint64_t>();
      more("tmp_size", s.tmp_bytes, kDefaultTmpBytes);
    }
    if (l.contains("nofile") && !given("nofile")) {
      s.nofile = l["nofile"].get<uint64_t>();
      more("nofile", *s.nofile, kDefaultNofile);
    }
  }
  if (c.contains("network") && !given("net")) {
    const json& n = c["network"];
    NetworkSpec& w = spec.network;
    if (n.value("open", false)) w.mode = NetworkSpec::Mode::Open;
    for (const auto& a : n.value("allow", std::vector<std::string>{})) {
      w.allow.push_back(net::normalize_name(a, true));
      if (w.mode == NetworkSpec::Mode::None) w.mode = NetworkSpec::Mode::Allow;
    }
    for (const auto& d : n.value("deny", std::vector<std::string>{})) w.deny.push_back(net::normalize_name(d, true));
    if (n.contains("ports")) {
      w.ports.clear();
      for (int64_t p : n["ports"].get<std::vector<int64_t>>()) {
        if (p < 1 || p > 65535) throw Error("port " + std::to_string(p) + " is not 1 to 65535");
        w.ports.push_back(static_cast<uint16_t>(p));
      }
    }
    if (w.mode == NetworkSpec::Mode::Open) relaxed.push_back("network open to every public address");
    else if (w.mode == NetworkSpec::Mode::Allow) {
      std::string names;
      for (const auto& a : w.allow) names += (names.empty() ? "" : ",") + a;
      relaxed.push_back("network to " + names);
    }
  }
  if (!relaxed.empty()) {
    std::string what;
    for (const auto& r : relaxed) what += (what.empty() ? "" : "; ") + r;
    warnings.push_back("image " + image.name + " gives its runs more than the defaults: " + what +
                       " (flags such as --net none or --memory override it)");
  }
  if (c.contains("kernel_modules")) {
    // The kernel layer belongs to the sandboxes' root: the store's ids.
    isolation::Identity id = isolation::plan_identity(0, 0);
    RunningKernel kernel = running_kernel();
    KernelLayer kl = kernel_layer(cache_dir, id.host_root_uid, id.host_root_gid, kernel);
    std::string layer = kl.path;
    holds.push_back(std::move(kl.hold));
    std::set<std::string> builtin = layer_builtin(layer, kernel.release);
    HostConfig host;
    bool have_host = false;
    for (const auto& m : c["kernel_modules"].get<std::vector<std::string>>()) {
      std::string name = normalize_module(m);
      if (builtin.count(name) || access(("/sys/module/" + name + "/initstate").c_str(), F_OK) == 0) continue;
      if (!have_host) host = load_host_config(), have_host = true;
      ensure_module(kernel, builtin, host, name);
    }
    spec.layers.push_back(layer);
  }
}

}  // namespace

void apply_image_config(const images::Image& image, const std::string& cache_dir, Spec& spec,
                        const std::vector<std::string>& explicit_fields, std::vector<std::string>& warnings,
                        std::vector<UniqueFd>& holds) {
  if (!image.config.is_object() || image.config.empty()) return;
  try {
    apply_config(image, cache_dir, spec, explicit_fields, warnings, holds);
  } catch (const json::exception& e) {
    throw Error("image " + image.name + ": damaged run defaults (" + e.what() + ")");
  } catch (const Error& e) {
    throw Error("image " + image.name + ": " + e.what());
  }
}

KernelPrune prune_kernel_cache(const std::string& cache_dir) {
  if (access(cache_dir.c_str(), F_OK) != 0) return {};  // no image had kernel modules
  // The current layer: the one apply_image_config() would take now.
  isolation::Identity id = isolation::plan_identity(0, 0);
  return prune_kernel_layers(cache_dir, kernel_layer_path(cache_dir, id.host_root_uid, id.host_root_gid, running_kernel()));
}

}  // namespace ultari::provision
