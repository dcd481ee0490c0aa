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

struct UnpackOptions {
  // Rootful: ids are stored shifted into the sandboxes' host range
  // (base + id), so a layer is used as it is, without an idmapped mount;
  // an id at or above `id_count` is refused. Rootless: every file belongs
  // to the caller (root inside), ids are not kept.
  bool shift_owner = false;
  uint32_t uid_base = 0, gid_base = 0;
  uint32_t id_count = 65536;
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
  // SHA-256 (hex) of `data` (ids of things made of layers).
  virtual std::string sha256(const std::string& data) = 0;
};

// Loads the module (next to the ultari binary, then the installed library
// directory). Throws Error when it is missing.
std::unique_ptr<Unpacker> load_unpacker();

}  // namespace ultari::images
