// Small raw-syscall file helpers for cgroupfs and procfs. The cgroup code runs
// on every sandbox start, so these avoid iostreams and extra syscalls: one
// open, one read or write, one close.
#pragma once
#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ultari::cgroups::io {

// Reads a whole (small, pseudo-)file. Returns false and sets errno on failure.
bool read_file(const std::string& path, std::string& out);
// Writes s with a single write(2). Returns 0 or the errno.
int write_file(const std::string& path, std::string_view s);
// First unsigned number in the file ("max" and garbage give nullopt).
std::optional<uint64_t> read_u64(const std::string& path);
// Value N of a "key N" line (memory.events, cpu.stat, memory.oom_control).
std::optional<uint64_t> read_keyed(const std::string& path, std::string_view key);
// Pids listed in a cgroup.procs file (empty when missing or empty).
std::vector<pid_t> read_pids(const std::string& path);
// Field 22 of /proc/<pid>/stat (pid 0 = self); nullopt when pid is gone.
std::optional<uint64_t> proc_starttime(pid_t pid);

// Unsigned decimal parse of the whole of s; nullopt on anything else.
std::optional<uint64_t> parse_u64(std::string_view s);
std::string u64_str(uint64_t v);

}  // namespace ultari::cgroups::io
