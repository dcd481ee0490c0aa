// The Spec as JSON: how a Spec crosses a process boundary (the warm pool's
// requests today; the HTTP API and state files later). Field names follow
// the Spec's members; durations are milliseconds, sizes bytes, unset
// optionals null.
#pragma once
#include <nlohmann/json.hpp>

#include "spec/spec.h"

namespace ultari {

nlohmann::json spec_to_json(const Spec& spec);
// Throws ultari::Error naming the field that is missing or has the wrong type.
Spec spec_from_json(const nlohmann::json& j);

// "" when sandboxes made ahead from `made` can run `request` (they differ at
// most in take_request_fields' fields); else the first field that differs
// ("rootfs", "limits.memory_bytes", ...).
std::string request_mismatch(const Spec& made, const Spec& request);

}  // namespace ultari
