#include "net/audit.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <ctime>
#include <nlohmann/json.hpp>

#include "util/caller.h"
#include "util/error.h"

namespace ultari::net {
namespace {

void make_dirs(const std::string& path) {
  for (size_t i = 1; i <= path.size(); ++i) {
    if (i != path.size() && path[i] != '/') continue;
    std::string part = path.substr(0, i);
    if (mkdir(part.c_str(), 0700) != 0 && errno != EEXIST) throw_errno("audit log directory '" + part + "'");
  }
}

std::string now_iso() {
  auto now = std::chrono::system_clock::now();
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
  time_t secs = static_cast<time_t>(ms / 1000);
  tm t{};
  gmtime_r(&secs, &t);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", t.tm_year + 1900, t.tm_mon + 1, t.tm_mday,
                t.tm_hour, t.tm_min, t.tm_sec, static_cast<int>(ms % 1000));
  return buf;
}

}  // namespace

std::string state_dir() {
  if (host_root()) return "/var/lib/ultari";
  if (const char* x = std::getenv("XDG_STATE_HOME"); x && x[0] == '/') return std::string(x) + "/ultari";
  const char* home = std::getenv("HOME");
  return std::string(home && home[0] == '/' ? home : "/tmp") + "/.local/state/ultari";
}

AuditLog::AuditLog(std::string path, std::string sandbox_id, AuditLimits limits)
    : path_(std::move(path)),
      sandbox_(std::move(sandbox_id)),
      limits_(limits),
      tokens_(limits.burst),
      refilled_(std::chrono::steady_clock::now()) {
  if (path_.empty()) {
    std::string dir = state_dir() + "/audit";
    make_dirs(dir);
    path_ = dir + "/" + sandbox_ + ".jsonl";
  }
  fd_.reset(open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!fd_) throw_errno("audit log '" + path_ + "'");
}

AuditLog::~AuditLog() {
  std::lock_guard lock(mu_);
  if (suppressed_ > 0 && !truncated_ && emit(meta("rate-limited"))) suppressed_ = 0;
}

namespace {
std::string dump(const nlohmann::json& j) {
  // Names come from the sandbox: never let invalid UTF-8 break the line.
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}
}  // namespace

// A record about the log itself, with the fields of every record.
std::string AuditLog::meta(const char* reason) const {
  nlohmann::json j = {{"ts", now_iso()}, {"sandbox", sandbox_}, {"kind", "audit"},  {"name", ""},
                      {"addr", ""},      {"port", 0},           {"decision", "deny"}, {"reason", reason},
                      {"bytes_out", 0},  {"bytes_in", 0},       {"duration_ms", 0},   {"suppressed", suppressed_}};
  return dump(j);
}

bool AuditLog::emit(const std::string& line) {
  if (truncated_) return false;
  // Room is kept for the final record.
  constexpr uint64_t kFinal = 512;
  const std::string* out = &line;
  std::string final_record;
  if (written_ + line.size() + kFinal > limits_.max_bytes) {
    truncated_ = true;
    final_record = meta("truncated");
    out = &final_record;
  }
  written_ += out->size();
  // One write per line (O_APPEND): lines never interleave.
  if (::write(fd_.get(), out->data(), out->size()) < 0) {
  }
  return !truncated_;
}

void AuditLog::write(const Record& r) {
  nlohmann::json j = {{"ts", now_iso()},
                      {"sandbox", sandbox_},
                      {"kind", r.kind},
                      {"name", r.name},
                      {"addr", r.addr},
                      {"port", r.port},
                      {"decision", r.allow ? "allow" : "deny"},
                      {"reason", r.reason},
                      {"bytes_out", r.bytes_out},
                      {"bytes_in", r.bytes_in},
                      {"duration_ms", r.duration_ms}};
  if (!r.error.empty()) j["error"] = r.error;
  if (!r.dlp.empty()) j["dlp"] = r.dlp;
  if (!r.via.empty()) j["via"] = r.via;
  if (!r.unused_handshake.empty()) j["unused_handshake"] = r.unused_handshake;
  std::string line = dump(j);
  std::lock_guard lock(mu_);
  (r.allow ? allowed_ : denied_) += 1;
  if (!r.allow && denied_names_.size() < 256) denied_names_.insert(r.name.empty() ? r.addr : r.name);
  if (truncated_) return;
  if (!r.allow) {
    auto now = std::chrono::steady_clock::now();
    double secs = std::chrono::duration<double>(now - refilled_).count();
    refilled_ = now;
    tokens_ = std::min(limits_.burst, tokens_ + secs * limits_.per_second);
    if (tokens_ < 1) {
      ++suppressed_;
      return;
    }
    tokens_ -= 1;
  }
  if (suppressed_ > 0) {
    if (!emit(meta("rate-limited"))) return;
    suppressed_ = 0;
  }
  emit(line);
}

uint64_t AuditLog::allowed() const {
  std::lock_guard lock(mu_);
  return allowed_;
}
uint64_t AuditLog::denied() const {
  std::lock_guard lock(mu_);
  return denied_;
}
std::vector<std::string> AuditLog::denied_names() const {
  std::lock_guard lock(mu_);
  return {denied_names_.begin(), denied_names_.end()};
}

}  // namespace ultari::net
