#include "spec/spec.h"

#include <cctype>
#include <cmath>
#include <cstdlib>

#include "util/error.h"

namespace ultari {
namespace {

// Splits "1.5G" into 1.5 and "G". Throws when there is no number.
std::pair<double, std::string> split_number(const std::string& text, const char* what) {
  size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.')) ++i;
  if (i == 0) throw Error("invalid " + std::string(what) + " '" + text + "'");
  char* end = nullptr;
  std::string num = text.substr(0, i);
  double value = std::strtod(num.c_str(), &end);
  if (end != num.c_str() + num.size() || !std::isfinite(value) || value < 0)
    throw Error("invalid " + std::string(what) + " '" + text + "'");
  std::string unit = text.substr(i);
  for (auto& c : unit) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return {value, unit};
}

}  // namespace

uint64_t parse_size(const std::string& text) {
  auto [value, unit] = split_number(text, "size");
  double mult = 1;
  if (unit.empty() || unit == "b") mult = 1;
  else if (unit == "k" || unit == "kb" || unit == "kib") mult = 1024.0;
  else if (unit == "m" || unit == "mb" || unit == "mib") mult = 1024.0 * 1024;
  else if (unit == "g" || unit == "gb" || unit == "gib") mult = 1024.0 * 1024 * 1024;
  else if (unit == "t" || unit == "tb" || unit == "tib") mult = 1024.0 * 1024 * 1024 * 1024;
  else throw Error("invalid size '" + text + "' (use a number with an optional k, M, G or T suffix)");
  double bytes = value * mult;
  if (bytes >= 1.8e19) throw Error("size '" + text + "' is too large");
  return static_cast<uint64_t>(bytes);
}

std::chrono::milliseconds parse_duration(const std::string& text) {
  auto [value, unit] = split_number(text, "duration");
  double ms = 0;
  if (unit.empty() || unit == "s") ms = value * 1000;
  else if (unit == "ms") ms = value;
  else if (unit == "m" || unit == "min") ms = value * 60'000;
  else if (unit == "h") ms = value * 3'600'000;
  else throw Error("invalid duration '" + text + "' (use e.g. 500ms, 10s, 2m, 1h)");
  if (ms < 1) throw Error("duration '" + text + "' is shorter than 1 ms");
  if (ms > 1e12) throw Error("duration '" + text + "' is too long");
  return std::chrono::milliseconds(static_cast<int64_t>(ms));
}

double parse_cpus(const std::string& text) {
  auto [value, unit] = split_number(text, "cpu count");
  if (!unit.empty() || value < 0.01 || value > 4096)
    throw Error("invalid cpu count '" + text + "' (use a number such as 0.5 or 2)");
  return value;
}

void take_request_fields(Spec& into, const Spec& from) {
  into.process = from.process;
  into.limits.wall_timeout = from.limits.wall_timeout;
  into.limits.cpu_time = from.limits.cpu_time;
  into.limits.output_bytes = from.limits.output_bytes;
  into.limits.nofile = from.limits.nofile;
}

}  // namespace ultari
