// Host directories Ultari keeps its own files in.
#pragma once
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

}  // namespace ultari
