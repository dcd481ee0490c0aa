// The audit log: one JSON line per connection, DNS query and dropped flow.
#pragma once
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
  std::vector<std::string> dlp;  // secret patterns seen in what the sandbox sent
};

class AuditLog {
 public:
  // Opens (creating its directory) `path`, or <state dir>/audit/<id>.jsonl
  // when empty. Throws Error when it cannot be written.
  AuditLog(std::string path, std::string sandbox_id);
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
};

// /var/lib/ultari as root, $XDG_STATE_HOME/ultari (~/.local/state/ultari)
// otherwise.
std::string state_dir();

}  // namespace ultari::net
