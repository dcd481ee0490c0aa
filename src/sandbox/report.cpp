#include <nlohmann/json.hpp>

#include "sandbox/sandbox.h"

namespace ultari {

std::string result_json(const Result& r) {
  nlohmann::json j;
  j["sandbox_id"] = r.sandbox_id;
  j["verdict"] = verdict_name(r.verdict);
  j["exit_code"] = r.exit_code;
  j["signal"] = r.signal;
  j["wall_ms"] = r.wall_ms;
  j["cpu_ms"] = r.cpu_ms;
  j["peak_memory_bytes"] = r.peak_memory_bytes;
  j["peak_pids"] = r.peak_pids;
  j["stdout_bytes"] = r.stdout_bytes;
  j["stderr_bytes"] = r.stderr_bytes;
  j["truncated"] = r.truncated;
  j["denied_syscalls"] = nlohmann::json::array();
  for (const auto& d : r.denied_syscalls) j["denied_syscalls"].push_back({{"name", d.name}, {"count", d.count}});
  j["error"] = r.error;
  j["warnings"] = r.warnings;
  j["warm"] = r.warm;
  if (r.boot_exit_code) j["boot"] = {{"exit_code", *r.boot_exit_code}};
  else j["boot"] = nullptr;
  if (r.network) {
    const auto& n = *r.network;
    j["network"] = {{"mode", n.mode},
                    {"allowed", n.allowed},
                    {"denied", n.denied},
                    {"denied_names", n.denied_names},
                    {"audit_log", n.audit_log}};
    auto or_null = [](const std::optional<uint64_t>& v) { return v ? nlohmann::json(*v) : nlohmann::json(nullptr); };
    j["network"]["gateway"] = n.gateway_cpu_ms || n.gateway_peak_memory_bytes
                                  ? nlohmann::json{{"cpu_ms", or_null(n.gateway_cpu_ms)},
                                                   {"peak_memory_bytes", or_null(n.gateway_peak_memory_bytes)}}
                                  : nlohmann::json(nullptr);
  } else {
    j["network"] = nullptr;
  }
  return j.dump(2) + "\n";
}

}  // namespace ultari
