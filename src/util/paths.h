// Host directories Ultari keeps its own files in.
#pragma once
#include <optional>
#include <string>

namespace ultari {

// Compiled seccomp policies and the default root's skeleton.
// Root: /var/cache/ultari; rootless: $XDG_CACHE_HOME/ultari (~/.cache/ultari).
std::string cache_dir();
// The caller's home: $HOME when absolute, else the password database.
// Throws Error when there is none.
std::string home_dir();
// Creates dir and its parents (mode 0755 for parents, `mode` for the leaf).
void make_dirs(const std::string& dir, unsigned mode = 0700);
// The whole file's bytes; "" when it cannot be read (a missing index file,
// an image without os-release).
std::string read_or_empty(const std::string& path);
// Everything `fd` gives until EOF or an error (EINTR retried); the stack
// buffer is wiped after (what came may be a key).
std::string read_fd(int fd);

// A regular file of the tree at `root` as a process chrooted there would
// read it: symlinks and ".." resolve inside `root` (openat2 RESOLVE_IN_ROOT,
// no magic links, no other mount), opened without blocking. nullopt when
// it is missing, not a regular file (an overlay whiteout, a FIFO) or larger
// than `max_bytes`. For files of untrusted trees (image layers).
std::optional<std::string> read_in_root(const std::string& root, const std::string& path, size_t max_bytes = 1 << 20);

// Removes `rel` (relative, '/'-separated) beneath the directory `root`,
// never following a symlink on the way or inside: when a component of
// `rel` is a symlink or not a directory, nothing is removed. For trees an
// untrusted party wrote (a build sandbox's writable layer).
void remove_beneath(const std::string& root, const std::string& rel);
// A directory beneath `root` opened the same way (O_RDONLY | O_DIRECTORY);
// -1 when a component is a symlink, missing or not a directory.
int open_dir_beneath(const std::string& root, const std::string& rel);
// Replaces the file `rel` beneath `root` with `content` (a new file of
// `mode`), its parent reached as remove_beneath reaches it. Throws Error.
void write_beneath(const std::string& root, const std::string& rel, const std::string& content, unsigned mode = 0644);

// Removes the tree at `path` (a file: unlinks it) without following links or
// leaving its filesystem, opening up directories without write or search
// permission on the way (a rootless caller's own layers and build
// directories: overlayfs leaves its work/work at mode 0), however deep (a
// build's tree deeper than PATH_MAX too: through fds, directories below 64
// levels moved up first). Best effort.
void remove_tree(const std::string& path);

// The half-made entries of processes that are gone: in `dir`, entries named
// "<prefix>...tmp-<pid>..." (a "<final name>.tmp-<pid>-<random>" made then
// renamed into place) whose process no longer exists, removed with
// remove_tree(). Returns how many.
size_t remove_dead_temps(const std::string& dir, const std::string& prefix);

}  // namespace ultari
