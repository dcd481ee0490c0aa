// The requesting side: take a sandbox from the pool and supervise it here,
// exactly as a sandbox this process had made itself.
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>

#include "isolation/channel.h"
#include "pool/pool.h"
#include "pool/wire.h"
#include "sandbox/state.h"
#include "spec/json.h"
#include "util/error.h"

namespace ultari::pool {
namespace {

using nlohmann::json;

std::string absolute(const std::string& path) {
  if (path.empty()) return path;
  char buf[PATH_MAX];
  if (realpath(path.c_str(), buf)) return buf;
  return path;
}

UniqueFd connect_to(const std::string& path, std::string& why) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) {
    why = "socket path too long";
    return {};
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size());
  // Non-blocking: a pool whose backlog is full is busy, not waited for.
  UniqueFd sock(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!sock || connect(sock.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    why = std::string("cannot connect to ") + path + ": " + std::strerror(errno);
    return {};
  }
  // Whoever answers gets to name processes and cgroups this process will
  // kill: it must be this user's own pool, not another user's socket or a
  // sandboxed program's.
  std::string untrusted;
  if (!wire::peer_is_trusted(sock.get(), untrusted)) {
    why = "not a pool of this user: " + untrusted;
    return {};
  }
  return sock;
}

bool is_kind(int fd, mode_t kind) {
  struct stat st{};
  return fstat(fd, &st) == 0 && (st.st_mode & S_IFMT) == kind;
}

}  // namespace

void canonicalize_paths(Spec& spec) {
  spec.rootfs = absolute(spec.rootfs);
  spec.workspace = absolute(spec.workspace);
  for (auto& m : spec.mounts)
    if (m.kind == Mount::Kind::Bind) m.source = absolute(m.source);
  spec.seccomp.profile_path = absolute(spec.seccomp.profile_path);
}

std::optional<Result> run(const std::string& socket_path, const Spec& request, const Io& io, std::string& why) {
  Spec spec = request;
  canonicalize_paths(spec);
  UniqueFd conn = connect_to(socket_path, why);
  if (!conn) return std::nullopt;
  // The pool compares only what it cannot change per request: the command,
  // its environment and the per-request limits stay here.
  Spec shape = spec;
  take_request_fields(shape, Spec{});
  // Talking to the pool is bounded: a stopped or wedged pool must not hold
  // a run past its --timeout (then the run starts cold).
  auto budget = std::chrono::milliseconds(5000);
  if (spec.limits.wall_timeout) budget = std::min(budget, *spec.limits.wall_timeout);
  auto deadline = std::chrono::steady_clock::now() + budget;
  auto left_ms = [&] {
    auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
    return static_cast<int>(std::max<int64_t>(left, 0));
  };
  // A pool that refuses at once (another user) has closed the connection
  // by the time the request goes out: its reason is still there to read.
  bool sent = wire::wait_for(conn.get(), POLLOUT, left_ms()) &&
              wire::send_record(conn.get(), json{{"spec", spec_to_json(shape)},
                                                 {"command_layout", sizeof(isolation::CommandHead)}}
                                                    .dump());
  int send_errno = errno;
  std::string reply;
  std::vector<UniqueFd> fds;
  if (sent && !wire::wait_for(conn.get(), POLLIN, left_ms())) {
    why = "no answer within " + std::to_string(budget.count()) + " ms";
    return std::nullopt;
  }
  if (wire::recv_record(conn.get(), reply, fds, MSG_DONTWAIT) <= 0 || reply.size() < 4) {
    if (!sent) {
      why = std::string("cannot send the request: ") + std::strerror(send_errno);
      return std::nullopt;
    }
    why = "the pool closed the connection";
    return std::nullopt;
  }
  uint32_t head_len;
  std::memcpy(&head_len, reply.data(), sizeof head_len);
  if (head_len > reply.size() - 4) {
    why = "malformed reply from the pool";
    return std::nullopt;
  }
  json head = json::parse(reply.begin() + 4, reply.begin() + 4 + head_len, nullptr, false);
  if (!head.is_object() || !head.value("ok", false)) {
    why = head.is_object() ? head.value("reason", "refused") : "malformed reply from the pool";
    return std::nullopt;
  }
  bool has_listener = head.value("listener", false);
  if (fds.size() != (has_listener ? 6u : 5u)) {
    why = "the pool sent " + std::to_string(fds.size()) + " fds";
    return std::nullopt;
  }
  bool kinds = is_kind(fds[0].get(), S_IFSOCK) && is_kind(fds[1].get(), S_IFIFO) && is_kind(fds[2].get(), S_IFIFO) &&
               is_kind(fds[3].get(), S_IFIFO) && syscall(SYS_pidfd_send_signal, fds[4].get(), 0, nullptr, 0) == 0;
  if (!kinds) {
    why = "the pool sent fds of the wrong kinds";
    return std::nullopt;
  }

  // From here on this process supervises the sandbox: it is killed if we
  // fail, and the pool removes it when the connection closes.
  seccomp::CompiledPolicy policy;
  size_t shadow_bytes = reply.size() - 4 - head_len;
  policy.shadow.resize(shadow_bytes / sizeof(sock_filter));
  std::memcpy(policy.shadow.data(), reply.data() + 4 + head_len, policy.shadow.size() * sizeof(sock_filter));
  policy.max_known_nr = head.value("max_known_nr", 0u);

  auto st = std::make_unique<Sandbox::State>();
  st->id = head.value("id", "");
  st->spec = spec;
  st->policy = &policy;
  st->ready = true;
  st->sock = std::move(fds[0]);
  st->in_w = std::move(fds[1]);
  st->out.pipe = std::move(fds[2]);
  st->err.pipe = std::move(fds[3]);
  st->pidfd = std::move(fds[4]);
  if (has_listener) st->listener = std::move(fds[5]);
  Result r;
  try {
    std::vector<cgroups::Cgroup::Dir> dirs;
    for (const auto& d : head.at("cgroup"))
      dirs.push_back({static_cast<cgroups::Controller>(d.at("controller").get<int>()), d.at("version").get<int>(),
                      d.at("path").get<std::string>()});
    st->cgroup.emplace(cgroups::Cgroup::view(std::move(dirs)));
    for (const auto& w : head.value("warnings", std::vector<std::string>{})) st->warnings.push_back(w);
    auto sandbox = Sandbox::adopt(std::move(st));
    sandbox->exec(request, io);
    r = sandbox->wait();
  } catch (const std::exception& e) {
    r = Result{};
    r.verdict = Verdict::SetupError;
    r.exit_code = 125;
    r.error = e.what();
  }
  r.warm = true;
  return r;
}

}  // namespace ultari::pool
