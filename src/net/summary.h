// What a run's report says about its network (the result's `network`).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace ultari::net {

struct Summary {
  std::string mode;  // allow, open
  uint64_t allowed = 0, denied = 0;
  std::vector<std::string> denied_names;
  std::string audit_log;
};

}  // namespace ultari::net
