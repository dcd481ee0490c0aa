// compile_policy / load_policy: the cache of compiled programs. A warm start
// reads one small file and never calls libseccomp.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "seccomp/policy_spec.h"
#include "util/error.h"
#include "util/fd.h"
#include "util/paths.h"

namespace ultari::seccomp {
namespace {

constexpr char kMagic[8] = {'U', 'L', 'T', 'S', 'E', 'C', 'C', '1'};

struct Header {
  char magic[8];
  uint64_t key;
  uint32_t max_known_nr;
  uint32_t kernel_len;  // instructions
  uint32_t shadow_len;
  uint32_t reserved;
};
static_assert(sizeof(Header) == 32);

// BPF_MAXINSNS; a bigger count in a header means a corrupt file.
constexpr uint32_t kMaxInsns = 4096;

std::string read_profile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_errno("seccomp profile " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw_errno("seccomp profile " + path);
  return ss.str();
}

uint64_t fnv1a(uint64_t h, const std::string& s) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  // Field separator so ("ab","c") and ("a","bc") differ.
  h ^= 0xff;
  h *= 0x100000001b3ULL;
  return h;
}

uint64_t cache_key(const std::string& input) {
  utsname u{};
  uname(&u);
  // The header's version macros: calling seccomp_version() would be a
  // libseccomp call on the warm path.
  std::string lib = std::to_string(SCMP_VER_MAJOR) + "." + std::to_string(SCMP_VER_MINOR) +
                    "." + std::to_string(SCMP_VER_MICRO);
  uint64_t h = 0xcbf29ce484222325ULL;
  for (const std::string& part : {input, std::string(detail::kPolicyVersion), lib, std::string(u.release)})
    h = fnv1a(h, part);
  return h;
}

std::string cache_path(const std::string& dir, uint64_t key) {
  char name[40];
  std::snprintf(name, sizeof name, "/seccomp-%016llx.bpf", static_cast<unsigned long long>(key));
  return dir + name;
}

bool read_all(int fd, void* buf, size_t len) {
  char* p = static_cast<char*>(buf);
  while (len > 0) {
    ssize_t r = read(fd, p, len);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    len -= r;
  }
  return true;
}

bool write_all(int fd, const void* buf, size_t len) {
  const char* p = static_cast<const char*>(buf);
  while (len > 0) {
    ssize_t r = write(fd, p, len);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    len -= r;
  }
  return true;
}

bool read_cache(const std::string& path, uint64_t key, CompiledPolicy& out) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd) return false;
  struct stat st{};
  Header h{};
  if (fstat(fd.get(), &st) != 0 || !read_all(fd.get(), &h, sizeof h)) return false;
  if (std::memcmp(h.magic, kMagic, sizeof kMagic) != 0 || h.key != key) return false;
  if (h.kernel_len == 0 || h.shadow_len == 0 || h.kernel_len > kMaxInsns || h.shadow_len > kMaxInsns)
    return false;
  size_t expect = sizeof h + (size_t{h.kernel_len} + h.shadow_len) * sizeof(sock_filter);
  if (static_cast<size_t>(st.st_size) != expect) return false;
  out.kernel.resize(h.kernel_len);
  out.shadow.resize(h.shadow_len);
  out.max_known_nr = h.max_known_nr;
  return read_all(fd.get(), out.kernel.data(), h.kernel_len * sizeof(sock_filter)) &&
         read_all(fd.get(), out.shadow.data(), h.shadow_len * sizeof(sock_filter));
}

// The cache's parent too (mode 0711, as the host root's cache makes it): a
// sandbox from an image may be the first start on a fresh machine.
void ensure_dir(const std::string& dir) {
  if (mkdir(dir.c_str(), 0700) == 0 || errno == EEXIST) return;
  if (errno == ENOENT && dir.rfind('/') != std::string::npos && dir.rfind('/') > 0) {
    make_dirs(dir.substr(0, dir.rfind('/')), 0711);
    if (mkdir(dir.c_str(), 0700) == 0 || errno == EEXIST) return;
  }
  throw_errno("creating seccomp cache " + dir);
}

// A failed store only costs the next start a recompile, so it is not fatal.
void write_cache(const std::string& dir, const std::string& path, uint64_t key, const CompiledPolicy& p) {
  std::string tmp = dir + "/.seccomp-XXXXXX";
  UniqueFd fd(mkostemp(tmp.data(), O_CLOEXEC));
  if (!fd) return;
  Header h{};
  std::memcpy(h.magic, kMagic, sizeof kMagic);
  h.key = key;
  h.max_known_nr = p.max_known_nr;
  h.kernel_len = static_cast<uint32_t>(p.kernel.size());
  h.shadow_len = static_cast<uint32_t>(p.shadow.size());
  bool ok = write_all(fd.get(), &h, sizeof h) &&
            write_all(fd.get(), p.kernel.data(), p.kernel.size() * sizeof(sock_filter)) &&
            write_all(fd.get(), p.shadow.data(), p.shadow.size() * sizeof(sock_filter)) &&
            fsync(fd.get()) == 0;
  fd.reset();
  if (!ok || rename(tmp.c_str(), path.c_str()) != 0) unlink(tmp.c_str());
}

}  // namespace

CompiledPolicy compile_policy(const std::string& profile_path) {
  if (profile_path.empty()) return detail::compile_spec(detail::default_spec());
  return detail::compile_spec(detail::parse_profile(profile_path, read_profile(profile_path)));
}

CompiledPolicy load_policy(const std::string& profile_path, const std::string& cache_dir, Variant variant) {
  std::string content = profile_path.empty() ? std::string() : read_profile(profile_path);
  std::string name = std::string("default") + (variant.setid_files ? "+setid" : "") +
                     (variant.chown_noop ? "+chown-noop" : "");
  uint64_t key = cache_key(profile_path.empty() ? name : "profile:" + content);
  ensure_dir(cache_dir);
  std::string path = cache_path(cache_dir, key);
  CompiledPolicy policy;
  if (read_cache(path, key, policy)) return policy;
  policy = profile_path.empty() ? detail::compile_spec(detail::default_spec(variant))
                                : detail::compile_spec(detail::parse_profile(profile_path, content));
  write_cache(cache_dir, path, key, policy);
  return policy;
}

}  // namespace ultari::seccomp
