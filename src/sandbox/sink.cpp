#include "sandbox/sink.h"

#include <fcntl.h>
#include <limits.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <string>

namespace ultari {

CallerSink::CallerSink(int fd) : fd_(fd) {
  struct stat st{};
  if (fd < 0 || fstat(fd, &st) != 0) return;
  if (S_ISSOCK(st.st_mode)) {
    mode_ = Mode::Socket;
  } else if (S_ISFIFO(st.st_mode) || S_ISCHR(st.st_mode)) {
    std::string path = "/proc/self/fd/" + std::to_string(fd);
    own_.reset(open(path.c_str(), O_WRONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
    // Could not reopen (no /proc, a pipe without reader yet, ...): writes of
    // at most PIPE_BUF after POLLOUT do not block on a pipe.
    mode_ = own_ ? Mode::Reopened : Mode::BoundedBlocking;
  }
}

ssize_t CallerSink::write_some(const char* data, size_t size) {
  for (;;) {
    ssize_t n;
    switch (mode_) {
      case Mode::Socket:
        n = send(fd_, data, size, MSG_DONTWAIT | MSG_NOSIGNAL);
        break;
      case Mode::Reopened:
        n = write(own_.get(), data, size);
        break;
      case Mode::BoundedBlocking:
        n = write(fd_, data, std::min<size_t>(size, PIPE_BUF));
        break;
      default:
        n = write(fd_, data, size);
    }
    if (n >= 0) return n;
    if (errno == EINTR) continue;
    return errno == EAGAIN ? 0 : -1;
  }
}

}  // namespace ultari
