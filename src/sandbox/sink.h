// The caller's end of the command's stdout or stderr, written without ever
// blocking the supervisor (whose one thread also enforces limits and
// answers seccomp notifications).
#pragma once
#include <sys/types.h>

#include <cstddef>

#include "util/fd.h"

namespace ultari {

class CallerSink {
 public:
  // fd: the caller's descriptor. Terminals and pipes are reopened through
  // /proc/self/fd with O_NONBLOCK (a separate open file description, so the
  // caller's own flags stay untouched); sockets are written with
  // MSG_DONTWAIT; regular files never block for long and are written as
  // they are.
  explicit CallerSink(int fd);

  // Writes what the caller takes now: bytes written, 0 when it is full
  // (wait for POLLOUT on poll_fd()), -1 when it is gone (EPIPE, ...).
  ssize_t write_some(const char* data, size_t size);
  int poll_fd() const { return own_ ? own_.get() : fd_; }

 private:
  enum class Mode { Plain, Socket, Reopened, BoundedBlocking };
  int fd_;
  UniqueFd own_;
  Mode mode_ = Mode::Plain;
};

}  // namespace ultari
