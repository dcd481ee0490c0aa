#include "util/memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

namespace ultari {

void trim_resident_code() {
  int fd = open("/proc/self/smaps", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  std::string smaps;
  char buf[16384];
  for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;) smaps.append(buf, static_cast<size_t>(n));
  close(fd);

  // One record per mapping: a header line "start-end perms offset dev inode
  // path" followed by "Key: value" lines. A file mapping without a single
  // anonymous (copied-on-write) page holds nothing but page-cache pages:
  // dropping them is lossless. Relocated data (RELRO, GOT) has copied pages
  // and stays. (Private_Dirty would not do: pages still shared copy-on-write
  // with the sandbox's init count as Shared_Dirty.)
  unsigned long start = 0, stop = 0;
  bool candidate = false;
  size_t pos = 0;
  while (pos < smaps.size()) {
    size_t end = smaps.find('\n', pos);
    if (end == std::string::npos) end = smaps.size();
    std::string line = smaps.substr(pos, end - pos);
    pos = end + 1;
    char* rest = nullptr;
    unsigned long a = std::strtoul(line.c_str(), &rest, 16);
    if (rest && *rest == '-' && line.find(':') > line.find(' ')) {
      stop = std::strtoul(rest + 1, &rest, 16);
      start = a;
      // Private, not writable, backed by a file.
      candidate = rest && rest[0] == ' ' && rest[2] != 'w' && rest[4] == 'p' && line.find(" /") != std::string::npos;
      continue;
    }
    if (candidate && line.rfind("Anonymous:", 0) == 0) {
      if (std::strtoul(line.c_str() + 10, nullptr, 10) == 0)
        madvise(reinterpret_cast<void*>(start), stop - start, MADV_DONTNEED);
      candidate = false;
    }
  }
}

}  // namespace ultari
