// Builds the cached skeleton of the default root: a sanitised copy of /etc,
// the merged-/usr symlinks and empty mount points.
#include <dirent.h>
#include <fcntl.h>
#include <sys/sendfile.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <memory>
#include <cstdio>
#include <string>

#include "filesystem/rootfs.h"
#include "util/error.h"
#include "util/fd.h"
#include "util/paths.h"

namespace ultari::filesystem {
namespace {

constexpr const char* kSkeletonVersion = "skeleton-v1";

// Paths under /etc never copied: password hashes, host keys, credentials.
// (Files that are not world-readable are skipped anyway.)
constexpr std::array kEtcDenied = {
    "shadow", "shadow-", "gshadow", "gshadow-", "ssh", "sudoers", "sudoers.d", "subuid", "subuid-",
    "subgid", "subgid-", "machine-id", "ssl/private", "apt/auth.conf", "apt/auth.conf.d", "docker",
    "containers/auth.json", "NetworkManager/system-connections", "wpa_supplicant", "ipsec.secrets",
    "ppp", "krb5.keytab", "libvirt", "letsencrypt", "credstore", "credstore.encrypted",
    "security/opasswd", ".pwd.lock", "hostname", "hosts", "resolv.conf", "mtab", "ultari",
};

// Files whose change means the skeleton is stale.
constexpr std::array kFingerprintPaths = {
    "/etc", "/etc/passwd", "/etc/group", "/etc/ld.so.cache", "/etc/alternatives", "/etc/ssl/certs",
    "/etc/ld.so.conf.d", "/etc/profile.d",
};

constexpr std::array kTopDirs = {"bin", "sbin", "lib", "lib32", "lib64", "libx32"};

uint64_t fnv1a(uint64_t h, const void* data, size_t n) {
  auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

std::string fingerprint(uid_t uid, gid_t gid) {
  uint64_t h = 14695981039346656037ull;
  h = fnv1a(h, kSkeletonVersion, std::char_traits<char>::length(kSkeletonVersion));
  h = fnv1a(h, &uid, sizeof uid);
  h = fnv1a(h, &gid, sizeof gid);
  for (const char* p : kFingerprintPaths) {
    struct stat st{};
    if (lstat(p, &st) != 0) continue;
    h = fnv1a(h, &st.st_mtim, sizeof st.st_mtim);
    h = fnv1a(h, &st.st_ino, sizeof st.st_ino);
  }
  for (const char* d : kTopDirs) {
    struct stat st{};
    int kind = lstat((std::string("/") + d).c_str(), &st) != 0 ? 0 : S_ISLNK(st.st_mode) ? 1 : 2;
    h = fnv1a(h, &kind, sizeof kind);
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

bool denied(const std::string& rel) {
  for (const char* d : kEtcDenied)
    if (rel == d) return true;
  return false;
}

void copy_file(const std::string& from, const std::string& to, const struct stat& st) {
  UniqueFd in(open(from.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!in) return;  // vanished or unreadable: leave it out
  UniqueFd out(open(to.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, st.st_mode & 07777));
  if (!out) throw_errno("create " + to);
  off_t left = st.st_size;
  while (left > 0) {
    ssize_t n = sendfile(out.get(), in.get(), nullptr, static_cast<size_t>(left));
    if (n <= 0) break;
    left -= n;
  }
  fchmod(out.get(), st.st_mode & 0777);
}

// Copies the world-readable part of `from` to `to`, skipping denied paths.
void copy_tree(const std::string& from, const std::string& to, const std::string& rel, uid_t uid, gid_t gid) {
  std::unique_ptr<DIR, int (*)(DIR*)> dir(opendir(from.c_str()), closedir);
  if (!dir) return;
  while (dirent* e = readdir(dir.get())) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    std::string r = rel.empty() ? name : rel + "/" + name;
    if (denied(r)) continue;
    std::string src = from + "/" + name, dst = to + "/" + name;
    struct stat st{};
    if (lstat(src.c_str(), &st) != 0) continue;
    if (S_ISLNK(st.st_mode)) {
      char target[4096];
      ssize_t n = readlink(src.c_str(), target, sizeof target - 1);
      if (n <= 0) continue;
      target[n] = '\0';
      if (symlink(target, dst.c_str()) != 0) throw_errno("symlink " + dst);
    } else if (S_ISDIR(st.st_mode)) {
      if ((st.st_mode & 05) != 05) continue;
      if (mkdir(dst.c_str(), st.st_mode & 0777) != 0) throw_errno("mkdir " + dst);
      copy_tree(src, dst, r, uid, gid);
      chmod(dst.c_str(), st.st_mode & 0777);
    } else if (S_ISREG(st.st_mode)) {
      if (!(st.st_mode & S_IROTH)) continue;
      copy_file(src, dst, st);
    } else {
      continue;  // no devices, fifos or sockets
    }
    lchown(dst.c_str(), uid, gid);
  }
}

void write_file(const std::string& path, const std::string& content, uid_t uid, gid_t gid) {
  UniqueFd fd(open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd || write(fd.get(), content.data(), content.size()) != static_cast<ssize_t>(content.size()))
    throw_errno("write " + path);
  fchown(fd.get(), uid, gid);
}

void build_skeleton(const std::string& dir, uid_t uid, gid_t gid) {
  if (mkdir(dir.c_str(), 0755) != 0) throw_errno("mkdir " + dir);
  struct DirSpec {
    const char* name;
    unsigned mode;
  };
  for (auto [name, mode] : {DirSpec{"usr", 0755}, {"proc", 0555}, {"sys", 0555}, {"dev", 0755}, {"tmp", 01777},
                            {"root", 0700}, {"home", 0755}, {"run", 0755}, {"var", 0755}, {"var/tmp", 01777},
                            {"var/lib", 0755}, {"var/cache", 0755}, {"var/log", 0755}, {"mnt", 0755},
                            {"opt", 0755}, {"srv", 0755}, {"workspace", 0755}, {"etc", 0755}}) {
    std::string p = dir + "/" + name;
    if (mkdir(p.c_str(), mode) != 0) throw_errno("mkdir " + p);
    chmod(p.c_str(), mode);
    lchown(p.c_str(), uid, gid);
  }
  for (const char* d : kTopDirs) {
    std::string host = std::string("/") + d;
    char target[4096];
    ssize_t n = readlink(host.c_str(), target, sizeof target - 1);
    std::string p = dir + "/" + d;
    if (n > 0) {
      target[n] = '\0';
      if (symlink(target, p.c_str()) != 0) throw_errno("symlink " + p);
      lchown(p.c_str(), uid, gid);
    } else if (access(host.c_str(), F_OK) == 0) {
      if (mkdir(p.c_str(), 0755) != 0) throw_errno("mkdir " + p);
    }
  }
  copy_tree("/etc", dir + "/etc", "", uid, gid);
  write_file(dir + "/etc/hostname", "sandbox\n", uid, gid);
  write_file(dir + "/etc/hosts", "127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n", uid, gid);
  write_file(dir + "/etc/resolv.conf", "", uid, gid);
  std::string mtab = dir + "/etc/mtab";
  if (symlink("../proc/self/mounts", mtab.c_str()) != 0) throw_errno("symlink " + mtab);
  lchown(mtab.c_str(), uid, gid);
  lchown(dir.c_str(), uid, gid);
}

void remove_tree(const std::string& path) {
  // Only our own temporary build directories reach here.
  std::unique_ptr<DIR, int (*)(DIR*)> dir(opendir(path.c_str()), closedir);
  if (dir) {
    while (dirent* e = readdir(dir.get())) {
      std::string name = e->d_name;
      if (name == "." || name == "..") continue;
      std::string p = path + "/" + name;
      struct stat st{};
      if (lstat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) remove_tree(p);
      else unlink(p.c_str());
    }
  }
  rmdir(path.c_str());
}

}  // namespace

void sweep_dead_builds(const std::string& cache) { remove_dead_temps(cache, "hostroot-"); }

HostRoot prepare_host_root(const std::string& cache, uid_t uid, gid_t gid) {
  HostRoot root;
  root.skeleton = cache + "/hostroot-" + fingerprint(uid, gid);
  root.system_dirs.push_back("/usr");
  for (const char* d : kTopDirs) {
    std::string host = std::string("/") + d;
    struct stat st{};
    if (lstat(host.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) root.system_dirs.push_back(host);
  }
  // The sandbox's root is an unprivileged host uid: it must be able to
  // reach the skeleton to use it as an overlay layer.
  struct stat st{};
  if (stat(cache.c_str(), &st) != 0) make_dirs(cache, 0711);
  if (stat(cache.c_str(), &st) == 0 && (st.st_mode & 0111) != 0111) chmod(cache.c_str(), st.st_mode | 0111);
  if (stat(root.skeleton.c_str(), &st) == 0) return root;
  std::string tmp = root.skeleton + ".tmp-" + std::to_string(getpid());
  remove_tree(tmp);
  try {
    build_skeleton(tmp, uid, gid);
  } catch (...) {
    remove_tree(tmp);
    throw;
  }
  if (rename(tmp.c_str(), root.skeleton.c_str()) != 0) {
    int err = errno;
    remove_tree(tmp);
    // Another process built it at the same time: use theirs.
    if (err != EEXIST && err != ENOTEMPTY) throw_errno("rename " + tmp, err);
  }
  return root;
}

}  // namespace ultari::filesystem
