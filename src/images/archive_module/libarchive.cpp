// libultari_archive.so: images::Unpacker on libarchive (see unpack.h). No
// exception leaves this module.
#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cstring>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <string_view>

#include "images/unpack.h"

namespace ultari::images {
namespace {

// Names are checked here first (clean_name): relative, no "..". They are
// written as dest + "/" + name (dest canonical); libarchive refuses to go
// through a symlink on the way (an earlier entry) or a ".." as well. Not
// chdir(dest) and relative names: reading a directory, libarchive changes
// the working directory itself.
constexpr int kFlags = ARCHIVE_EXTRACT_PERM | ARCHIVE_EXTRACT_TIME | ARCHIVE_EXTRACT_SECURE_SYMLINKS |
                       ARCHIVE_EXTRACT_SECURE_NODOTDOT;

struct Hash {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  explicit Hash(const EVP_MD* md = EVP_sha256()) { EVP_DigestInit_ex(ctx, md, nullptr); }
  ~Hash() { EVP_MD_CTX_free(ctx); }
  void add(const void* p, size_t n) { EVP_DigestUpdate(ctx, p, n); }
  void add(std::string_view s) {
    add(s.data(), s.size());
    add("\0", 1);
  }
  void add(uint64_t v) { add(std::to_string(v)); }
  // A length-prefixed field: no two different sequences of fields hash the
  // same bytes (file data cannot pass for the next entry's header).
  void field(std::string_view s) {
    uint64_t n = s.size();
    add(&n, sizeof n);
    add(s.data(), s.size());
  }
  void field(uint64_t v) { field(std::to_string(v)); }
  std::string hex() {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned len = 0;
    EVP_DigestFinal_ex(ctx, md, &len);
    std::string out;
    char b[3];
    for (unsigned i = 0; i < len; ++i) {
      std::snprintf(b, sizeof b, "%02x", md[i]);
      out += b;
    }
    return out;
  }
};

// Directories nested deeper than this are refused: removing or walking a
// layer must not need an fd (or a stack frame) per level without bound.
constexpr int kMaxDepth = 128;

// One more entry in the layer; false (and `error`) past o.max_entries.
bool count_entry(UnpackResult& r, const UnpackOptions& o, const std::string& name, std::string& error) {
  if (++r.entries > o.max_entries && o.max_entries) {
    error = "entry '" + name + "': the layer would hold more than " + std::to_string(o.max_entries) +
            " entries (the store's free inodes less a margin, at most " + std::to_string(ultari::images::kMaxEntries) +
            ")";
    return false;
  }
  return true;
}

// "./a/b/" -> "a/b"; "" for the root itself. False for what may not be
// in a layer: an absolute name, a ".." component, more than kMaxDepth
// components.
bool clean_name(std::string_view in, std::string& out) {
  if (in.starts_with("/")) return false;
  out.clear();
  int depth = 0;
  while (!in.empty()) {
    size_t slash = in.find('/');
    std::string_view part = in.substr(0, slash);
    in = slash == std::string_view::npos ? std::string_view() : in.substr(slash + 1);
    if (part.empty() || part == ".") continue;
    if (part == "..") return false;
    if (++depth > kMaxDepth) return false;
    if (!out.empty()) out += '/';
    out += part;
  }
  return true;
}

// One entry's header in a layer's digest.
void hash_entry(Hash& h, const std::string& name, mode_t type, unsigned perm, int64_t uid, int64_t gid,
                const std::string& hardlink, const char* symlink) {
  h.field("entry");
  h.field(name);
  h.field(static_cast<uint64_t>(type));
  h.field(static_cast<uint64_t>(perm));
  h.field(static_cast<uint64_t>(uid));
  h.field(static_cast<uint64_t>(gid));
  h.field(hardlink);
  h.field(symlink ? symlink : "");
}

// A file's data, passed to `sink` block by block, in the digest as its own
// SHA-256 and the list of its holes (not how reads split it: a
// compression's block sizes must not change a layer's id).
bool hash_data(archive* in, Hash& h, const std::function<bool(const void*, size_t, la_int64_t)>& sink,
               uint64_t& bytes) {
  Hash data;
  std::string holes;
  const void* buf;
  size_t size;
  la_int64_t offset, pos = 0;
  for (;;) {
    int rc = archive_read_data_block(in, &buf, &size, &offset);
    if (rc == ARCHIVE_EOF) break;
    if (rc < ARCHIVE_WARN) return false;
    if (offset != pos) holes += std::to_string(pos) + "-" + std::to_string(offset) + ";";
    pos = offset + static_cast<la_int64_t>(size);
    data.add(buf, size);
    bytes += size;
    if (sink && !sink(buf, size, offset)) return false;
  }
  h.field(data.hex());
  h.field(holes + "end:" + std::to_string(pos));
  return true;
}

class ArchiveUnpacker final : public Unpacker {
 public:
  std::string sha256(const std::string& data) override {
    Hash h;
    h.add(data.data(), data.size());
    return h.hex();
  }

  std::string sha1(const std::string& data) override {
    Hash h(EVP_sha1());
    h.add(data.data(), data.size());
    return h.hex();
  }

  std::string sha256_file(const std::string& path, std::string& error) override {
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    struct stat st{};
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      error = "'" + path + "': " + (fd < 0 ? std::strerror(errno) : "not a regular file");
      if (fd >= 0) close(fd);
      return "";
    }
    Hash h;
    std::unique_ptr<char[]> buf(new char[1 << 16]);
    for (;;) {
      ssize_t n = read(fd, buf.get(), 1 << 16);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        error = "'" + path + "': " + std::strerror(errno);
        close(fd);
        return "";
      }
      if (n == 0) break;
      h.add(buf.get(), static_cast<size_t>(n));
    }
    close(fd);
    return h.hex();
  }

  bool scan(const std::string& dir, const UnpackOptions& o, UnpackResult& r, std::string& error) override {
    std::unique_ptr<archive, int (*)(archive*)> in(archive_read_disk_new(), archive_read_free);
    if (!in) {
      error = "out of memory";
      return false;
    }
    archive_read_disk_set_symlink_physical(in.get());
    archive_read_disk_set_behavior(in.get(), ARCHIVE_READDISK_NO_ACL | ARCHIVE_READDISK_NO_FFLAGS);
    if (archive_read_disk_open(in.get(), dir.c_str()) != ARCHIVE_OK) return fail(in.get(), dir, error);
    std::string prefix = dir;
    while (prefix.size() > 1 && prefix.ends_with("/")) prefix.pop_back();
    Hash hash;
    archive_entry* e = archive_entry_new();
    std::unique_ptr<archive_entry, void (*)(archive_entry*)> hold(e, archive_entry_free);
    std::string name;
    for (;;) {
      archive_entry_clear(e);
      int rc = archive_read_next_header2(in.get(), e);
      if (rc == ARCHIVE_EOF) break;
      if (rc < ARCHIVE_WARN) return fail(in.get(), dir, error);
      archive_read_disk_descend(in.get());
      std::string raw = archive_entry_pathname(e) ? archive_entry_pathname(e) : "";
      raw = raw == prefix ? "" : raw.starts_with(prefix + "/") ? raw.substr(prefix.size() + 1) : raw;
      if (!clean_name(raw, name)) {
        error = "entry '" + raw + "': not inside the layer";
        return false;
      }
      mode_t type = archive_entry_filetype(e);
      bool whiteout = type == AE_IFCHR && archive_entry_rdev(e) == 0;
      if ((type == AE_IFCHR || type == AE_IFBLK) && !whiteout) {
        error = "entry '" + name + "': a device node";
        return false;
      }
      int64_t uid = archive_entry_uid(e) - (o.shift_owner ? o.uid_base : 0);
      int64_t gid = archive_entry_gid(e) - (o.shift_owner ? o.gid_base : 0);
      if (o.shift_owner && (uid < 0 || gid < 0 || uid >= o.id_count || gid >= o.id_count)) {
        error = "entry '" + name + "': owner outside the sandbox's ids";
        return false;
      }
      if (name.empty()) continue;
      if (whiteout) {
        hash.field("whiteout");
        hash.field(name);
      } else {
        hash_entry(hash, name, type, archive_entry_perm(e), o.shift_owner ? uid : 0, o.shift_owner ? gid : 0, "",
                   archive_entry_symlink(e));
      }
      // Overlay's marks on directories (opaque) belong to the layer.
      const char* xname;
      const void* xvalue;
      size_t xsize;
      archive_entry_xattr_reset(e);
      while (archive_entry_xattr_next(e, &xname, &xvalue, &xsize) == ARCHIVE_OK)
        if (std::string_view(xname).starts_with("user.overlay.opaque")) {
          hash.field("opaque");
          hash.field(name);
          hash.field(std::string(static_cast<const char*>(xvalue), xsize));
        }
      ++r.entries;
      if (type == AE_IFREG && !hash_data(in.get(), hash, {}, r.bytes)) return fail(in.get(), name, error);
    }
    r.digest = hash.hex();
    return true;
  }

  bool tar_has(const std::string& path, const std::string& want) override {
    std::unique_ptr<archive, int (*)(archive*)> in(archive_read_new(), archive_read_free);
    if (!in) return false;
    archive_read_support_filter_none(in.get());
    archive_read_support_format_tar(in.get());
    archive_read_support_format_gnutar(in.get());
    if (archive_read_open_filename(in.get(), path.c_str(), 1 << 16) != ARCHIVE_OK) return false;
    archive_entry* e;
    std::string name;
    while (archive_read_next_header(in.get(), &e) == ARCHIVE_OK) {
      const char* p = archive_entry_pathname(e);
      if (p && clean_name(p, name) && name == want) return true;
    }
    return false;
  }

  bool unpack(const std::string& source, const std::string& dest, const UnpackOptions& o, UnpackResult& r,
              std::string& error) override {
    struct stat st{};
    if (stat(source.c_str(), &st) != 0) {
      error = "'" + source + "': " + std::strerror(errno);
      return false;
    }
    bool dir = S_ISDIR(st.st_mode);
    uint64_t total = dir ? 0 : static_cast<uint64_t>(st.st_size);
    std::unique_ptr<archive, int (*)(archive*)> in(dir ? archive_read_disk_new() : archive_read_new(), archive_read_free);
    std::unique_ptr<archive, int (*)(archive*)> out(archive_write_disk_new(), archive_write_free);
    if (!in || !out) {
      error = "out of memory";
      return false;
    }
    std::string prefix;
    if (dir) {
      archive_read_disk_set_symlink_physical(in.get());
      archive_read_disk_set_behavior(in.get(), ARCHIVE_READDISK_NO_XATTR | ARCHIVE_READDISK_NO_ACL |
                                                   ARCHIVE_READDISK_NO_FFLAGS);
      if (archive_read_disk_open(in.get(), source.c_str()) != ARCHIVE_OK) return fail(in.get(), source, error);
      prefix = source;
      while (prefix.size() > 1 && prefix.ends_with("/")) prefix.pop_back();
    } else {
      archive_read_support_filter_all(in.get());
      archive_read_support_format_tar(in.get());
      archive_read_support_format_gnutar(in.get());
      if (archive_read_open_filename(in.get(), source.c_str(), 1 << 16) != ARCHIVE_OK) return fail(in.get(), source, error);
    }
    archive_write_disk_set_options(out.get(), kFlags | (o.shift_owner ? ARCHIVE_EXTRACT_OWNER : 0));
    return copy(in.get(), out.get(), dir, prefix, dest, total, o, r, error);
  }

 private:
  static bool fail(archive* a, const std::string& what, std::string& error) {
    const char* e = archive_error_string(a);
    error = "'" + what + "': " + (e ? e : "cannot be read");
    return false;
  }

  // A directory of the layer (and its parents) for a whiteout to go in,
  // made if the archive has not made it yet.
  static bool make_parent(const std::string& dest, const std::string& parent, const std::string& entry,
                          const UnpackOptions& o, std::string& error) {
    std::string path = dest;
    size_t i = 0;
    while (i < parent.size()) {
      size_t j = parent.find('/', i);
      if (j == std::string::npos) j = parent.size();
      path += "/" + parent.substr(i, j - i);
      struct stat st{};
      if (lstat(path.c_str(), &st) == 0) {
        if (!S_ISDIR(st.st_mode)) {
          error = "entry '" + entry + "': '" + path.substr(dest.size() + 1) + "' on the way is not a directory (a symlink?)";
          return false;
        }
      } else if (mkdir(path.c_str(), 0755) != 0 ||
                 (o.shift_owner && lchown(path.c_str(), o.uid_base, o.gid_base) != 0)) {
        error = "'" + path + "': " + std::strerror(errno);
        return false;
      }
      i = j + 1;
    }
    return true;
  }

  // ".wh..wh..opq": `parent` is opaque; ".wh.NAME": NAME is deleted.
  static bool whiteout(const std::string& dest, const std::string& parent, const std::string& base,
                       const UnpackOptions& o, std::string& error) {
    if (!make_parent(dest, parent, parent.empty() ? base : parent + "/" + base, o, error)) return false;
    std::string dir = parent.empty() ? dest : dest + "/" + parent;
    if (base == ".wh..wh..opq") {
      if (lsetxattr(dir.c_str(), "user.overlay.opaque", "y", 1, 0) != 0) {
        error = "entry '" + parent + "/.wh..wh..opq': " + std::strerror(errno);
        return false;
      }
      return true;
    }
    std::string gone = base.substr(4);
    if (gone.empty() || gone == "." || gone == ".." || gone.starts_with(".wh.")) {
      error = "entry '" + base + "': not a whiteout of a name";
      return false;
    }
    std::string path = dir + "/" + gone;
    unlink(path.c_str());  // an earlier entry of this layer by that name
    if (!o.xattr_whiteouts) {
      if (mknod(path.c_str(), S_IFCHR | 0, makedev(0, 0)) != 0 ||
          (o.shift_owner && lchown(path.c_str(), o.uid_base, o.gid_base) != 0)) {
        error = "whiteout '" + path + "': " + std::strerror(errno);
        return false;
      }
      return true;
    }
    // The directory is marked as holding such whiteouts: opaque "x" (kernels
    // from 6.8; never over a real opaque "y"), and "whiteouts" (6.7).
    int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);  // user.* xattrs need write permission
    char opaque[2] = {};
    bool is_opaque = lgetxattr(dir.c_str(), "user.overlay.opaque", opaque, 1) == 1 && opaque[0] == 'y';
    bool ok = fd >= 0 && fsetxattr(fd, "user.overlay.whiteout", "", 0, 0) == 0 &&
              lsetxattr(dir.c_str(), "user.overlay.whiteouts", "", 0, 0) == 0 &&
              (is_opaque || lsetxattr(dir.c_str(), "user.overlay.opaque", "x", 1, 0) == 0);
    if (fd >= 0) close(fd);
    if (!ok) error = "whiteout '" + path + "': " + std::strerror(errno);
    return ok;
  }

  bool copy(archive* in, archive* out, bool dir, const std::string& prefix, const std::string& dest, uint64_t total,
            const UnpackOptions& o, UnpackResult& r, std::string& error) {
    Hash hash;
    archive_entry* e = archive_entry_new();
    std::unique_ptr<archive_entry, void (*)(archive_entry*)> hold(e, archive_entry_free);
    std::string name, link;
    std::set<std::string> ensured;  // directories known to exist in the layer
    uint64_t last_report = 0;
    for (;;) {
      archive_entry_clear(e);
      int rc = archive_read_next_header2(in, e);
      if (rc == ARCHIVE_EOF) break;
      if (rc < ARCHIVE_WARN) return fail(in, "archive", error);
      if (dir) archive_read_disk_descend(in);
      std::string raw = archive_entry_pathname(e) ? archive_entry_pathname(e) : "";
      if (dir) {
        if (raw == prefix) raw.clear();
        else if (raw.starts_with(prefix + "/")) raw = raw.substr(prefix.size() + 1);
      }
      if (!clean_name(raw, name)) {
        error = "entry '" + raw.substr(0, 200) + "': absolute names, '..' and nesting deeper than " +
                std::to_string(kMaxDepth) + " are not allowed in a layer";
        return false;
      }
      if (name.empty()) continue;  // the root: the layer's own directory
      mode_t type = archive_entry_filetype(e);
      if (o.oci_whiteouts) {
        size_t slash = name.rfind('/');
        std::string parent = slash == std::string::npos ? "" : name.substr(0, slash);
        std::string base = name.substr(slash == std::string::npos ? 0 : slash + 1);
        if (base.starts_with(".wh.")) {
          if (!whiteout(dest, parent, base, o, error)) return false;
          hash.field(base == ".wh..wh..opq" ? "opaque" : "whiteout");
          hash.field(base == ".wh..wh..opq" ? parent : (parent.empty() ? "" : parent + "/") + base.substr(4));
          if (!count_entry(r, o, name, error)) return false;
          continue;
        }
      }
      if (type == AE_IFCHR || type == AE_IFBLK) {
        if (name == "dev" || name.starts_with("dev/")) {
          ++r.skipped_devices;
          continue;
        }
        error = "entry '" + name + "': device nodes are not allowed in a layer";
        return false;
      }
      if (type == AE_IFSOCK) continue;
      const char* hl = archive_entry_hardlink(e);
      if (hl) {
        if (!clean_name(hl, link) || link.empty()) {
          error = "entry '" + name + "': hard link to '" + hl + "' outside the layer";
          return false;
        }
      }
      int64_t uid = archive_entry_uid(e), gid = archive_entry_gid(e);
      if (dir && ((o.unmapped_uid >= 0 && uid == o.unmapped_uid) || (o.unmapped_gid >= 0 && gid == o.unmapped_gid))) {
        error = "entry '" + name + "': its owner is not one of your ids (host root's or another user's file; " +
                "chown the tree to yourself, or import it as a tarball)";
        return false;
      }
      if (o.shift_owner && (uid < 0 || gid < 0 || uid >= o.id_count || gid >= o.id_count)) {
        error = "entry '" + name + "': owner " + std::to_string(uid) + ":" + std::to_string(gid) +
                " is outside the sandbox's " + std::to_string(o.id_count) + " ids";
        return false;
      }
      hash_entry(hash, name, type, archive_entry_perm(e), o.shift_owner ? uid : 0, o.shift_owner ? gid : 0,
                 hl ? link : "", archive_entry_symlink(e));
      // Parents the archive does not list are made here, the layer root's
      // (libarchive would make them as the importing user: host root).
      size_t slash = name.rfind('/');
      if (slash != std::string::npos && !ensured.count(name.substr(0, slash))) {
        if (!make_parent(dest, name.substr(0, slash), name, o, error)) return false;
        ensured.insert(name.substr(0, slash));
      }
      archive_entry_set_pathname(e, (dest + "/" + name).c_str());
      if (hl) archive_entry_set_hardlink(e, (dest + "/" + link).c_str());
      archive_entry_xattr_clear(e);
      archive_entry_acl_clear(e);
      archive_entry_set_fflags(e, 0, 0);
      if (o.shift_owner) {
        archive_entry_set_uid(e, o.uid_base + uid);
        archive_entry_set_gid(e, o.gid_base + gid);
      }
      archive_entry_set_uname(e, nullptr);
      archive_entry_set_gname(e, nullptr);
      if (!count_entry(r, o, name, error)) return false;
      if (archive_write_header(out, e) < ARCHIVE_WARN) return fail(out, name, error);
      if (type == AE_IFREG && !hl) {
        bool wrote = true, too_big = false;
        auto sink = [&](const void* buf, size_t size, la_int64_t offset) {
          if (o.max_bytes && r.bytes > o.max_bytes) {
            too_big = true;
            return false;
          }
          wrote = archive_write_data_block(out, buf, size, offset) >= ARCHIVE_WARN;
          return wrote;
        };
        if (!hash_data(in, hash, sink, r.bytes)) {
          if (too_big) {
            error = "entry '" + name + "': the layer would hold more than " + std::to_string(o.max_bytes) +
                    " bytes (--max-size; by default the store's free space less a margin)";
            return false;
          }
          return wrote ? fail(in, name, error) : fail(out, name, error);
        }
      }
      if (archive_write_finish_entry(out) < ARCHIVE_WARN) return fail(out, name, error);
      if (o.progress) {
        uint64_t done = dir ? r.bytes : static_cast<uint64_t>(archive_filter_bytes(in, -1));
        if (done - last_report >= (4u << 20)) {
          o.progress(done, total);
          last_report = done;
        }
      }
    }
    if (archive_write_close(out) < ARCHIVE_WARN) return fail(out, "layer", error);
    if (o.progress) o.progress(total ? total : r.bytes, total);
    r.digest = hash.hex();
    return true;
  }
};

}  // namespace
}  // namespace ultari::images

extern "C" __attribute__((visibility("default"))) ultari::images::Unpacker* ultari_unpacker_create() {
  try {
    return new ultari::images::ArchiveUnpacker();
  } catch (...) {
    return nullptr;
  }
}
