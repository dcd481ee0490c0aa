// What a run's report says about its network (the result's `network`).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace ultari::net {

struct Summary {
  std::string mode;  // allow, open
  uint64_t allowed = 0, denied = 0;
  std::vector<std::string> denied_names;
  std::string audit_log;
  // What the gateway itself used (relaying, TLS, scanning), from its own
  // group: rootful only (rootless, it runs in the caller's group); unset
  // when the group does not say.
  std::optional<uint64_t> gateway_cpu_ms, gateway_peak_memory_bytes;
};

}  // namespace ultari::net
