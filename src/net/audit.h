// The audit log: one JSON line per connection, DNS query and dropped flow.
#pragma once
#include <chrono>
#include <cstdint>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "util/fd.h"

namespace ultari::net {

struct Record {
  std::string kind;      // dns, tcp, http, tls, udp, icmp
  std::string name;      // empty when the flow had none
  std::string addr;      // destination address (dns: the first answer)
  int port = 0;
  bool allow = false;
  std::string reason;    // the rule, or private-address, sni-mismatch, port, no-rule
  uint64_t bytes_out = 0, bytes_in = 0;
  int64_t duration_ms = 0;
  std::string error;     // an allowed connection that could not be made
  std::string via;       // the upstream proxy (host:port) it went through, if any
  std::vector<std::string> dlp;  // secret patterns seen in what the sandbox sent
  // The proxy's early handshake to `unused_handshake` (host:port) was made
  // while the flow was sniffed, and closed unused: a refused flow, or one
  // decided for another address. Empty otherwise.
  std::string unused_handshake;
};

// Bounds on what one sandbox can make the gateway write to the host's disk.
// Denied records are rate-limited by a token bucket (`per_second`, up to
// `burst` at once); the records dropped are summed up in one record
//   {"kind":"audit","decision":"deny","reason":"rate-limited","suppressed":N,...}
// written before the next line that passes (or when the log is closed).
// Allowed records are not rate-limited. All lines written by this log
// (allowed, denied, audit) count towards `max_bytes`: the line that would
// pass it is replaced by one final record
//   {"kind":"audit","decision":"deny","reason":"truncated","suppressed":N,...}
// (N: denied records still pending from the rate limit) and nothing more is
// written. allowed(), denied() and denied_names() count every record,
// written or not.
struct AuditLimits {
  double per_second = 50;
  double burst = 200;
  uint64_t max_bytes = 64ull << 20;
};

class AuditLog {
 public:
  // Opens (creating its directory) `path`, or <state dir>/audit/<id>.jsonl
  // when empty. Throws Error when it cannot be written.
  AuditLog(std::string path, std::string sandbox_id, AuditLimits limits = {});
  ~AuditLog();
  AuditLog(const AuditLog&) = delete;
  AuditLog& operator=(const AuditLog&) = delete;
  void write(const Record& r);
  const std::string& path() const { return path_; }
  int fd() const { return fd_.get(); }
  uint64_t allowed() const;
  uint64_t denied() const;
  std::vector<std::string> denied_names() const;

 private:
  std::string path_, sandbox_;
  UniqueFd fd_;
  mutable std::mutex mu_;
  uint64_t allowed_ = 0, denied_ = 0;
  std::set<std::string> denied_names_;
  AuditLimits limits_;
  double tokens_;                 // for denied records
  std::chrono::steady_clock::time_point refilled_;
  uint64_t suppressed_ = 0;       // denied records dropped since the last line written
  uint64_t written_ = 0;          // bytes this log wrote
  bool truncated_ = false;        // max_bytes reached: nothing more is written
  // Writes `line` (with mu_ held), or the final record when it would pass
  // max_bytes. False when nothing was written.
  bool emit(const std::string& line);
  std::string meta(const char* reason) const;
};

// /var/lib/ultari as root, $XDG_STATE_HOME/ultari (~/.local/state/ultari)
// otherwise.
std::string state_dir();

}  // namespace ultari::net
