// The sandbox's root filesystem. The supervisor turns a Spec into a RootPlan
// (all strings and decisions made ahead); the child executes the plan with
// raw syscalls only, between clone and exec.
#pragma once
#include <sys/types.h>

#include <deque>
#include <string>
#include <vector>

#include "spec/spec.h"

namespace ultari::filesystem {

// The lowest layer of the default root: a cached directory with a sanitised
// copy of the host's /etc, the merged-/usr symlinks and empty mount points,
// owned by the sandbox's root. Rebuilt when the host's /etc changes.
struct HostRoot {
  std::string skeleton;                   // path of the cached skeleton
  std::vector<std::string> system_dirs;   // host dirs bound read-only (e.g. "/usr")
};

// owner_uid/gid: host ids that appear as root inside the sandbox.
HostRoot prepare_host_root(const std::string& cache_dir, uid_t owner_uid, gid_t owner_gid);

// Removes skeleton build directories ("hostroot-*.tmp-<pid>") left by
// builders that died before finishing.
void sweep_dead_builds(const std::string& cache_dir);

// Image layers a root may stack (overlayfs takes up to 500; the lowerdir
// list must fit in a page of mount options).
inline constexpr size_t kMaxLayers = 64;

// One step of the recipe the child follows.
struct Step {
  enum Op {
    StagingTmpfs,  // tmpfs on `target` (a host path in the child's own mount ns)
    MkdirStaging,  // mkdir of a host path on the staging tmpfs
    StagingFile,   // a file on the staging tmpfs holding `data` (mode)
    Overlay,       // overlay root on `target`: lower layer `source` (or the
                   // detached tree `tree_fd`), data = the other options
    BindInRoot,    // bind host `source` onto `target` inside the root
    AttachInRoot,  // attach the detached mount `tree_fd` onto `target`
    StagingBindInRoot,  // bind `source` (on the staging tmpfs) onto `target`
    TmpfsInRoot,   // tmpfs on `target` inside the root, data = options
    ProcInRoot,
    SysfsInRoot,
    DevptsInRoot,
    MaskInRoot,    // hide `target` with an empty read-only file or directory
    ReadOnlyInRoot,  // bind `target` over itself read-only
    SymlinkInRoot,   // symlink `source` at `target`
    DeviceInRoot,    // bind the host device `source` onto file `target`
    RemountRoRoot,   // make the mount at `target` read-only
    MkdirInRoot,     // create directory `target` (mode) owned by uid/gid
    PivotRoot,
  };
  Op op;
  const char* source = nullptr;
  const char* target = nullptr;
  const char* data = nullptr;
  bool read_only = false;
  bool optional = false;  // a missing target is skipped, not an error (MkdirInRoot: an existing one)
  bool is_dir = true;     // bind/mask: directory or file
  unsigned mode = 0755;
  int tree_fd = -1;
  uid_t uid = 0;  // MkdirInRoot: owner inside the sandbox
  gid_t gid = 0;
  bool user_path = false;  // a workspace or --bind source (candidate for idmapping)
  // Overlay with image layers: each of layer_paths (host paths) is taken
  // as an fd into layer_fds before the staging tmpfs may hide it, and the
  // lowerdir list names those fds; or, with tree_count > 0, each of
  // tree_fds is attached at tree_paths[i] on the staging tmpfs first and
  // `source` is the list of those.
  bool lower_list = false;
  const char* const* layer_paths = nullptr;
  int* layer_fds = nullptr;
  size_t layer_count = 0;
  // Overlay with a writable layer on disk: the host directory holding
  // upper/ and work/. Rootful, the supervisor makes it a detached tree
  // (*upper_fd, upper_tree; the child, an unprivileged id, may not reach
  // the path), attached at upper_staged; rootless, the child opens
  // upper_path before the staging tmpfs. Overlay takes an upper layer
  // only from a mount of the mounter's own namespace: never an fd of the
  // supervisor's.
  const char* upper_path = nullptr;
  const char* upper_staged = nullptr;
  int* upper_fd = nullptr;
  bool upper_tree = false;
  const int* tree_fds = nullptr;
  const char* const* tree_paths = nullptr;
  size_t tree_count = 0;
};

// Human name of a step, for error messages ("mount proc").
const char* step_name(Step::Op op);

struct RootPlan {
  std::vector<Step> steps;
  std::deque<std::string> strings;  // owns every string the steps point into
  // One slot per step for the fd the child takes of a host path before the
  // staging tmpfs can hide it (sized by plan_root; written in the child's
  // own copy of memory only).
  mutable std::vector<int> host_fds;
  const char* staged_lower = nullptr;  // where a detached lower layer is attached
  const char* intern(std::string s) { return strings.emplace_back(std::move(s)).c_str(); }
  // The overlay's lower layer becomes the detached tree `tree_fd` (made and
  // idmapped by the supervisor); the child attaches it on the staging tmpfs.
  void use_lower_tree(int tree_fd);
  // The overlay's lower layers become the detached trees `fds` (top first,
  // made by the supervisor), attached on the staging tmpfs by the child.
  void use_lower_trees(const std::vector<int>& fds);
  // The overlay's lower directories on the host (canonical paths, top first).
  std::vector<std::string> lower_dirs;
  std::vector<int> lower_tree_fds;
  std::vector<const char*> lower_tree_paths;
  // The layers' host paths and the child's fds of them (the Overlay step
  // points into these: a RootPlan is moved, never copied, once made).
  std::vector<const char*> layer_paths;
  mutable std::vector<int> layer_fds;
  mutable std::vector<int> upper_fd;  // one slot, with Spec::upper_dir
  // Rootful: the writable layer's directory becomes the detached tree `fd`.
  void use_upper_tree(int fd);
  // A read-only file at `destination` inside the root holding `content`
  // (on the staging tmpfs, so it counts against --tmp-size), mounted after
  // every other mount. Missing parent directories are created.
  void add_file(const std::string& destination, std::string content);
};

// The root is the default one (the host's system directories).
inline bool uses_host_root(const Spec& spec) { return spec.rootfs.empty() && spec.layers.empty(); }

// Builds the recipe. Checks every host path now (missing rootfs, bad bind
// source) and throws ultari::Error naming it.
// Bind steps for the workspace and --bind/--ro-bind carry user_path; the
// supervisor may turn them into AttachInRoot steps with idmapped trees.
RootPlan plan_root(const Spec& spec, const HostRoot* host_root, const std::string& home);

// Child side. Returns 0, or -errno with *failed set to the step that failed.
int execute(const RootPlan& plan, const Step** failed);

}  // namespace ultari::filesystem
