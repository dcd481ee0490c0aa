// The image store: content-addressed layers and the names that point at
// stacks of them. Root: /var/lib/ultari/images; rootless:
// $XDG_DATA_HOME/ultari/images (~/.local/share/ultari/images).
//
//   layers/<sha256>/         a layer's tree (ids shifted into the sandboxes'
//                            host range when rootful: used as it is)
//   layers/<sha256>.json     {"id","size","entries","created","source"}
//   layers/<sha256>.lock     held shared by every sandbox using the layer
//   images/<name>.json       {"name","id","layers"(top first),"created",...}
//   tmp/<pid>-<random>/      a layer being unpacked (swept once its owner died)
//   lock                     exclusive while names or layers change
//
// Safe when several processes import, run and prune at once: a layer is
// unpacked aside and renamed into place (an identical one already there
// wins), a name is replaced with rename(), and prune removes only layers no
// name points to and no sandbox holds.
#pragma once
#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "isolation/identity.h"
#include "util/fd.h"

namespace ultari::images {

struct Image {
  std::string name;
  std::string id;                   // sha256 of its layer ids (one a line, top first)
  std::vector<std::string> layers;  // layer ids, top first
  uint64_t size = 0;                // bytes of all its layers
  std::string created;              // ISO 8601 UTC
  std::string source;               // what it was imported or built from
  std::string parent;               // the image it was built on ("" for a base)
  // Provisioned images (provision.h): what made the top layer.
  std::string user_data_sha256;
  std::string cache_key;            // sha256 of (base layers, user-data after templating, variables)
  nlohmann::json provision_log = nlohmann::json::array();
  nlohmann::json config = nlohmann::json::object();  // defaults for runs: hostname, limits, network
};

struct PruneResult {
  std::vector<std::string> removed;  // layer ids
  uint64_t bytes = 0;
  std::vector<std::string> in_use;   // unreferenced, but held by a running sandbox
};

class Store {
 public:
  // The store under `dir` ("" = the default place), created if missing.
  // `uid_base`/`gid_base`: the host ids that are root inside rootful
  // sandboxes (layers are stored shifted by them); `shift` false when
  // rootless. Throws Error.
  Store(std::string dir, bool shift, uid_t uid_base, gid_t gid_base);

  // The default store for this caller: rootful, layers shifted into the
  // sandboxes' range (isolation::plan_identity); rootless, the caller's,
  // which keeps owners in the caller's subordinate ids when it was made
  // so (rootless_subids).
  static Store open_default();
  static std::string default_dir();
  const std::string& dir() const { return dir_; }

  // Rootless: the subordinate ids the store at `dir` ("" = the default
  // place) keeps its files' owners in, or nullopt for a store whose files
  // all belong to the caller. What its `ids` file says; a store not made
  // yet keeps owners when the caller has subordinate ids
  // (isolation::caller_subids). Throws Error when the store was made for
  // other subordinate ids than the caller's now. Changing such a store
  // takes its user namespace (isolation::enter_store_namespace).
  static std::optional<isolation::SubIds> rootless_subids(std::string dir = "");
  // Its files' owners are the caller's subordinate ids (rootless): a
  // sandbox from it maps them (IdentitySpec::subids).
  bool keeps_subids() const { return subids_; }

  // NAME: letters, digits, '.', '_', '-' and ':', starting with a letter or
  // digit, up to 128 characters. Throws Error naming the problem.
  static void check_name(const std::string& name);

  std::vector<Image> list() const;
  std::optional<Image> find(const std::string& name) const;
  // The image or an Error that says how to get one.
  Image get(const std::string& name) const;
  std::string layer_path(const std::string& id) const;

  // Unpacks SOURCE (a directory or a rootfs tarball) as one layer and
  // points NAME at it. `progress(done, total)` as the unpacker reports.
  // On error nothing is left (no layer, no name change).
  // `max_bytes`: the most file data all its layers may hold; 0: the
  // store's free space less a margin (max of 1 GiB and 5 %), so that a
  // decompression bomb stops before the disk is full.
  Image import(const std::string& name, const std::string& source,
               const std::function<void(uint64_t, uint64_t)>& progress = {}, const std::string& label = "",
               uint64_t max_bytes = 0);
  // `ultari image build NAME --debian SUITE`: a base root from a Debian
  // mirror through debootstrap (root only), imported as NAME.
  struct DebianBuild {
    std::string suite;                 // bookworm, trixie, ...
    std::string variant;               // "" (debootstrap's default), minbase, buildd
    std::vector<std::string> include;  // extra packages
    std::string mirror;                // "": the host's apt sources (else deb.debian.org)
  };
  // `log` gets debootstrap's output, line by line. Throws Error (with the
  // end of the output when debootstrap fails); nothing is kept then.
  Image build_debian(const std::string& name, const DebianBuild& build,
                     const std::function<void(const std::string&)>& log = {});
  // The Debian mirror of the host's apt sources (deb822 .sources or
  // sources.list), or http://deb.debian.org/debian.
  static std::string host_mirror();

  // Bytes free on the store's disk, and how many of them an import or a
  // build may fill: those less a margin (the larger of 1 GiB and 5 % of
  // the disk), so a decompression bomb or a runaway build stops before the
  // disk is full. Throws Error.
  struct Space {
    uint64_t available = 0;
    uint64_t usable = 0;
    uint64_t inodes = 0;   // free inodes (0: the filesystem reports none)
    uint64_t entries = 0;  // free inodes less a margin, at most kMaxEntries
  };
  Space space() const;

  // A fresh directory in the store's tmp/ (same filesystem as the layers,
  // swept once this process is gone) for a sandbox's writable layer.
  std::string scratch_dir();
  // Makes `upper` (a sandbox's writable layer, in the store's ids, inside
  // a scratch_dir()) a layer on top of `top.parent`'s layers and points
  // `top.name` at the result; `top` carries the rest (provisioning's
  // fields). The directory is moved, not copied (the caller removes the
  // scratch directory, work/ and all, afterwards). Throws Error. Used by
  // provisioning (not yet exposed by the CLI).
  Image commit(Image top, const Image& parent, const std::string& upper);
  // Points `image.name` at `image`'s layers (the rest of it kept as it
  // is): a provisioning cache hit under another name. Throws Error.
  Image save_as(Image image);
  // The image whose cache_key is `key`, if one is named (the newest of them).
  std::optional<Image> find_by_cache_key(const std::string& key) const;

  // Removes the name (its layers stay until prune). Throws if unknown.
  // Returns the image's id as its entry said ("" for a damaged entry, which
  // is removed all the same).
  std::string remove(const std::string& name);
  PruneResult prune();

  // Holds the layers of `image` for a sandbox's life (prune skips them).
  std::vector<UniqueFd> hold(const Image& image) const;

 private:
  UniqueFd lock(bool exclusive) const;
  void write_image(const Image& image);
  void sweep_tmp();

  Store(std::string dir, bool shift, uid_t uid_base, gid_t gid_base, std::string mark, bool subids);
  // import(); `own_tree`: a tree this process made in the store's namespace
  // (debootstrap's), whose owners need no check for unmapped ids.
  Image import_tree(const std::string& name, const std::string& source,
                    const std::function<void(uint64_t, uint64_t)>& progress, const std::string& label,
                    uint64_t max_bytes, bool own_tree);

  std::string dir_;
  bool shift_;
  uid_t uid_base_;
  gid_t gid_base_;
  bool subids_ = false;
};

}  // namespace ultari::images
