// Messages between the pool and its clients: one SOCK_SEQPACKET record
// each, with fds as SCM_RIGHTS.
//   request  client -> pool: {"spec": Spec JSON}
//   reply    pool -> client: u32 length of a JSON head, the head
//            ({"ok": true, "id", "cgroup": [...], "warnings", "max_known_nr",
//              "listener": bool} or {"ok": false, "reason"}), then the
//            seccomp shadow program (sock_filter[]) the sandbox's filter
//            was made with; fds: control socket, stdin, stdout, stderr,
//            pidfd of init[, seccomp listener]
// The client keeps its connection open while it runs the sandbox; closing
// it (or dying) tells the pool to destroy the sandbox.
#pragma once
#include <string>
#include <vector>

#include "util/fd.h"

namespace ultari::pool::wire {

inline constexpr size_t kMaxRecord = 1u << 20;
inline constexpr size_t kMaxFds = 8;

// Whether the process at the other end of a connected unix socket is one
// this process may deal with: the same uid, in the same user and pid
// namespaces (a sandboxed process of the same host uid is not: it could
// reach a pool socket through a workspace and take or fake sandboxes).
// SO_PEERPIDFD (Linux 6.5+) pins the peer while its namespaces are read.
bool peer_is_trusted(int sock, std::string& why);

// Waits until sock is readable (or writable); false on timeout.
bool wait_for(int sock, short events, int timeout_ms);

// false when the peer is gone or the record is too large (errno set).
bool send_record(int sock, const std::string& data, const std::vector<int>& fds = {});
// 1: a record, 0: the peer closed, -1: error (errno) or a truncated record.
int recv_record(int sock, std::string& data, std::vector<UniqueFd>& fds, int flags = 0);

}  // namespace ultari::pool::wire
