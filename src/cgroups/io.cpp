#include "cgroups/io.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>

namespace ultari::cgroups::io {

bool read_file(const std::string& path, std::string& out) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  out.clear();
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      errno = err;
      return false;
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return true;
}

int write_file(const std::string& path, std::string_view s) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  ssize_t n;
  do {
    n = ::write(fd, s.data(), s.size());
  } while (n < 0 && errno == EINTR);
  int err = n < 0 ? errno : (static_cast<size_t>(n) == s.size() ? 0 : EIO);
  ::close(fd);
  return err;
}

std::optional<uint64_t> parse_u64(std::string_view s) {
  uint64_t v = 0;
  if (s.empty()) return std::nullopt;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

std::string u64_str(uint64_t v) {
  char buf[24];
  auto [p, ec] = std::to_chars(buf, buf + sizeof buf, v);
  (void)ec;
  return std::string(buf, p);
}

static std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.remove_suffix(1);
  return s;
}

std::optional<uint64_t> read_u64(const std::string& path) {
  std::string s;
  if (!read_file(path, s)) return std::nullopt;
  return parse_u64(trim(s));
}

std::optional<uint64_t> read_keyed(const std::string& path, std::string_view key) {
  std::string s;
  if (!read_file(path, s)) return std::nullopt;
  std::string_view rest = s;
  while (!rest.empty()) {
    size_t nl = rest.find('\n');
    std::string_view line = rest.substr(0, nl);
    rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
    if (line.size() > key.size() && line.substr(0, key.size()) == key &&
        line[key.size()] == ' ')
      return parse_u64(trim(line.substr(key.size() + 1)));
  }
  return std::nullopt;
}

std::vector<pid_t> read_pids(const std::string& path) {
  std::vector<pid_t> pids;
  std::string s;
  if (!read_file(path, s)) return pids;
  std::string_view rest = s;
  while (!rest.empty()) {
    size_t nl = rest.find('\n');
    if (auto v = parse_u64(rest.substr(0, nl))) pids.push_back(static_cast<pid_t>(*v));
    rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
  }
  return pids;
}

std::optional<uint64_t> proc_starttime(pid_t pid) {
  std::string path = pid == 0 ? std::string("/proc/self/stat")
                              : "/proc/" + u64_str(static_cast<uint64_t>(pid)) + "/stat";
  std::string s;
  if (!read_file(path, s)) return std::nullopt;
  // comm (field 2) may contain spaces and parentheses: count from the last ')'.
  size_t close = s.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::string_view rest = std::string_view(s).substr(close + 1);
  // After ")" comes field 3 (state); starttime is field 22.
  for (int field = 3; field <= 22; ++field) {
    size_t start = rest.find_first_not_of(' ');
    if (start == std::string_view::npos) return std::nullopt;
    rest = rest.substr(start);
    size_t end = rest.find(' ');
    if (field == 22) return parse_u64(trim(rest.substr(0, end)));
    if (end == std::string_view::npos) return std::nullopt;
    rest = rest.substr(end);
  }
  return std::nullopt;
}

}  // namespace ultari::cgroups::io
