// Unpacking a layer: a directory or a rootfs tarball (tar, plain or gz, xz,
// zst, bz2) copied into an empty directory of the layer store, checked entry
// by entry. The work is done by libarchive in a module of its own
// (libultari_archive.so, loaded with dlopen by `ultari image` only):
// libarchive pulls in libxml2 and ICU, which every `ultari run` would
// otherwise pay for at start.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

namespace ultari::images {

// The most entries one import may create, whatever the disk's free inodes.
inline constexpr uint64_t kMaxEntries = 10'000'000;

struct UnpackOptions {
  // Rootful: ids are stored shifted into the sandboxes' host range
  // (base + id), so a layer is used as it is, without an idmapped mount;
  // an id at or above `id_count` is refused. Rootless: every file belongs
  // to the caller (root inside), ids are not kept.
  bool shift_owner = false;
  uint32_t uid_base = 0, gid_base = 0;
  uint32_t id_count = 65536;
  // An OCI/Docker image layer: ".wh.NAME" entries become overlay whiteouts
  // of NAME (a 0:0 character device; with xattr_whiteouts, for callers who
  // cannot make devices, an empty file marked user.overlay.whiteout, which
  // kernels from 6.7 read), ".wh..wh..opq" marks its directory opaque
  // (user.overlay.opaque: sandboxes mount overlayfs with userxattr).
  bool oci_whiteouts = false;
  bool xattr_whiteouts = false;
  // A directory read in the image store's user namespace: an entry owned
  // by these ids (the kernel's overflow uid and gid, which stand for a host
  // id the namespace does not map: host root, another user) is refused
  // rather than stored as that id. -1: no such check.
  int64_t unmapped_uid = -1, unmapped_gid = -1;
  // The most bytes of file data the layer may hold (0: no limit): a
  // decompression bomb stops there, with an error naming the limit.
  uint64_t max_bytes = 0;
  // The most entries the layer may hold (0: no limit): an archive of
  // millions of empty files, which max_bytes does not see, stops there
  // before it has used up the store's inodes.
  uint64_t max_entries = 0;
  // Called now and then with the source bytes read and their total (0 when
  // unknown: a directory).
  std::function<void(uint64_t done, uint64_t total)> progress;
};

struct UnpackResult {
  std::string digest;     // sha256 (hex) of the entries as read: names, types, modes, ids, targets, contents
  uint64_t bytes = 0;     // size of the files written
  uint64_t entries = 0;
  uint64_t skipped_devices = 0;  // device nodes under dev/ (the sandbox has its own /dev)
};

class Unpacker {
 public:
  virtual ~Unpacker() = default;
  // `dest` is an empty directory. Refused (false, `error` naming the entry):
  // absolute names or ".." in a name or a hard link's target, device nodes
  // outside dev/, ids that do not map; extraction never follows a symlink
  // (CVE-2021-30465's pattern: an entry that goes through an earlier one).
  // Extended attributes, ACLs and file flags are not kept.
  virtual bool unpack(const std::string& source, const std::string& dest, const UnpackOptions& options,
                      UnpackResult& result, std::string& error) = 0;
  // A sandbox's writable layer (overlayfs upper, in the store's ids) as a
  // layer as it is: hashed like unpack() hashes (ids relative to the
  // bases), its whiteouts (0:0 devices) and opaque marks kept. Refused:
  // other device nodes, owners outside the bases' 65536 ids.
  virtual bool scan(const std::string& dir, const UnpackOptions& options, UnpackResult& result,
                    std::string& error) = 0;
  // SHA-256 (hex) of `data` (ids of things made of layers).
  virtual std::string sha256(const std::string& data) = 0;
  // SHA-256 (hex) of a file's bytes ("" and `error` when it cannot be read).
  virtual std::string sha256_file(const std::string& path, std::string& error) = 0;
  // SHA-1 (hex) of `data`: OpenPGP v4 key fingerprints (apt keys fetched
  // by key ID are checked against the ID).
  virtual std::string sha1(const std::string& data) = 0;
  // Whether the archive at `path` is an uncompressed tar whose top level
  // holds `name` (an image archive's manifest.json or oci-layout). False
  // for compressed or unreadable files (a rootfs tarball).
  virtual bool tar_has(const std::string& path, const std::string& name) = 0;
};

// Loads the module (next to the ultari binary, then the installed library
// directory). Throws Error when it is missing.
std::unique_ptr<Unpacker> load_unpacker();

}  // namespace ultari::images
