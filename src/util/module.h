// Ultari's own modules (libultari_tls.so, libultari_archive.so): code with
// heavy dependencies, loaded with dlopen only by the runs that need it.
#pragma once
#include <string>

namespace ultari {

// dlopen of `file` next to the running program, then in the installed
// library directory; never a path from the environment or one above the
// program's directory (ultari runs as root: /tmp/x/ultari must not load
// /tmp/libultari_*.so). Returns the
// symbol `entry` (the module's factory); never closed. Throws Error, saying
// `purpose` needs the module, when none loads or has `entry`.
void* module_entry(const std::string& file, const char* entry, const std::string& purpose);

}  // namespace ultari
