// The pool process: keeps sandboxes ready and hands each to one request.
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/resource.h>
#include <sys/un.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
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
using Clock = std::chrono::steady_clock;

void log(const std::string& line) { std::fprintf(stderr, "ultari pool: %s\n", line.c_str()); }

UniqueFd listen_on(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr.sun_path)
    throw Error("--socket '" + path + "' must be a path of 1 to " + std::to_string(sizeof addr.sun_path - 1) + " bytes");
  std::memcpy(addr.sun_path, path.c_str(), path.size());
  struct stat st{};
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) throw Error("--socket '" + path + "' exists and is not a socket");
    UniqueFd probe(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    if (connect(probe.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0)
      throw Error("another pool is serving " + path);
    unlink(path.c_str());  // left by a pool that was killed
  }
  UniqueFd sock(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!sock) throw_errno("socket");
  // Only this user may connect: a pool's sandboxes run with its rights.
  mode_t old = umask(0177);
  int rc = bind(sock.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  int err = errno;
  umask(old);
  if (rc != 0) throw_errno("--socket '" + path + "': bind", err);
  if (listen(sock.get(), 128) != 0) {
    err = errno;
    unlink(path.c_str());
    throw_errno("listen " + path, err);
  }
  return sock;
}

std::string refusal(const std::string& reason) {
  std::string head = json{{"ok", false}, {"reason", reason}}.dump();
  uint32_t len = static_cast<uint32_t>(head.size());
  return std::string(reinterpret_cast<const char*>(&len), sizeof len) + head;
}

class Server {
 public:
  Server(const Spec& spec, const Options& options) : spec_(spec), options_(options) {}
  ~Server() {
    sessions_.clear();
    dying_.clear();
    warming_.clear();
    if (listening_) unlink(options_.socket_path.c_str());
  }

  int serve() {
    // Making sandboxes is background work: it must not preempt the requests
    // being served (on a small machine it would delay them by its whole
    // length). A sandbox goes back to the normal policy when handed over.
    sched_param batch{};
    sched_setscheduler(0, SCHED_BATCH, &batch);
    // Every sandbox holds a few fds here and every request one: use what
    // the hard limit allows (the sandboxes get their own RLIMIT_NOFILE).
    rlimit nofile{};
    if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
      nofile.rlim_cur = nofile.rlim_max;
      setrlimit(RLIMIT_NOFILE, &nofile);
    }
    canonicalize_paths(spec_);
    prepared_ = prepare(spec_);
    // The first sandbox is made before the socket exists: a bad spec fails
    // here, with its reason, and nothing is left.
    auto first = Sandbox::create(prepared_, spec_);
    while (first->poll_setup() == Sandbox::Status::Starting) {
      pollfd p{first->control_fd(), POLLIN, 0};
      poll(&p, 1, 1000);
    }
    if (first->poll_setup() == Sandbox::Status::Failed)
      throw Error("cannot make a sandbox: " + (first->setup_error().empty() ? std::string("init ended during setup")
                                                                          : first->setup_error()));
    warming_.push_back(std::move(first));
    listen_ = listen_on(options_.socket_path);
    listening_ = true;

    sigset_t sigs;
    sigemptyset(&sigs);
    for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&sigs, sig);
    sigprocmask(SIG_BLOCK, &sigs, nullptr);
    UniqueFd sigfd(signalfd(-1, &sigs, SFD_CLOEXEC | SFD_NONBLOCK));
    log("serving " + options_.socket_path + " with " + std::to_string(options_.size) + " sandboxes ready");

    for (;;) {
      std::vector<pollfd> fds;
      bool accepting = Clock::now() >= accept_paused_until_ && sessions_.size() < kMaxSessions;
      fds.push_back({accepting ? listen_.get() : -1, POLLIN, 0});
      fds.push_back({sigfd.get(), POLLIN, 0});
      for (const auto& sb : warming_) fds.push_back({sb->control_fd(), POLLIN, 0});
      for (const auto& s : sessions_) fds.push_back({s.conn.get(), POLLIN, 0});
      for (const auto& sb : dying_) fds.push_back({sb->pidfd(), POLLIN, 0});
      int timeout = min_timeout(refill_timeout(), accepting ? -1 : 100);
      timeout = min_timeout(timeout, expire_idle_sessions());
      if (poll(fds.data(), fds.size(), timeout) < 0 && errno != EINTR) throw_errno("poll");
      if (fds[1].revents) return 0;
      size_t i = 2;
      for (auto& sb : warming_)
        if (fds[i++].revents && sb->poll_setup() == Sandbox::Status::Failed) drop_failed(sb);
      std::erase(warming_, nullptr);
      // Sessions: a request to answer, or the end of one.
      for (auto& s : sessions_)
        if (fds[i++].revents && s.conn) on_session(s);
      // Sandboxes whose init is gone: reaped and their cgroups removed.
      for (auto& sb : dying_)
        if (fds[i++].revents) sb.reset();
      std::erase(dying_, nullptr);
      if (fds[0].revents) accept_all();
      refill();
      serve_waiting();
      // Only here, after every poll result was used with its index.
      std::erase_if(sessions_, [](const Session& s) { return !s.conn; });
    }
  }

 private:
  struct Session {
    UniqueFd conn;
    std::unique_ptr<Sandbox> sandbox;  // handed over; null while the request is awaited
    bool refused = false;              // another user's: told so, waiting for it to close
    bool waiting = false;              // its request waits for a sandbox to be ready
    Clock::time_point since;           // accepted at
  };
  static constexpr size_t kMaxSessions = 4096;
  static constexpr auto kRequestDeadline = std::chrono::seconds(5);

  void accept_all() {
    while (sessions_.size() < kMaxSessions) {
      UniqueFd conn(accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
      if (!conn) {
        // Out of fds: the listening socket stays readable, so polling it
        // again at once would spin. Pause accepting for a moment.
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
          accept_paused_until_ = Clock::now() + std::chrono::milliseconds(100);
        return;
      }
      std::string why;
      bool foreign = !wire::peer_is_trusted(conn.get(), why);
      // Refused, but kept until the client closes (or a few seconds):
      // closing with its request unread would reset the connection before
      // it reads why.
      if (foreign) wire::send_record(conn.get(), refusal("the pool serves only its own user: " + why));
      sessions_.push_back({std::move(conn), nullptr, foreign, false, Clock::now()});
      on_session(sessions_.back());  // the request usually came with the connection
    }
  }

  // A connection that sends no request (or a refused one that stays open)
  // is closed after a few seconds: idle connections cannot pile up.
  // Returns the poll timeout until the next expiry (-1: none).
  int expire_idle_sessions() {
    auto now = Clock::now();
    int next = -1;
    for (auto& s : sessions_) {
      if (!s.conn || s.sandbox || s.waiting) continue;
      auto left = std::chrono::ceil<std::chrono::milliseconds>(s.since + kRequestDeadline - now).count();
      if (left <= 0) s.conn.reset();
      else next = min_timeout(next, static_cast<int>(left));
    }
    return next;
  }

  static int min_timeout(int a, int b) { return a < 0 ? b : b < 0 ? a : std::min(a, b); }

  void on_session(Session& s) {
    std::string data;
    std::vector<UniqueFd> fds;
    int rc = wire::recv_record(s.conn.get(), data, fds, MSG_DONTWAIT);
    if (rc < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (rc > 0 && s.refused) return;  // its request is read and dropped
    if (rc <= 0 || s.sandbox || s.refused || s.waiting) {
      // The client is done (or broke the protocol): the sandbox goes. Init
      // takes a moment to exit (it unmounts and frees the namespaces); it
      // is reaped when its pidfd says so, never waited for here.
      if (s.sandbox) {
        s.sandbox->state().kill_init();
        dying_.push_back(std::move(s.sandbox));
      }
      s.conn.reset();
      return;
    }
    std::string reason = answer(s, data);
    if (!reason.empty()) {
      wire::send_record(s.conn.get(), refusal(reason));
      s.conn.reset();
    }
  }

  // Hands a ready sandbox to the request; "" on success, else why not.
  std::string answer(Session& s, const std::string& data) {
    json req = json::parse(data, nullptr, false);
    if (!req.is_object() || !req.contains("spec")) return "malformed request";
    Spec want;
    try {
      want = spec_from_json(req["spec"]);
    } catch (const Error& e) {
      return e.what();
    }
    // The client writes the command blob its sandbox's init parses: both
    // must be one version of Ultari (an upgrade while a pool runs).
    const json& layout = req.contains("command_layout") ? req["command_layout"] : json();
    if (!layout.is_number_unsigned() || layout.get<uint64_t>() != sizeof(isolation::CommandHead))
      return "another version of ultari (its command layout differs)";
    std::string differs = request_mismatch(spec_, want);
    if (!differs.empty()) return "its sandboxes differ in " + differs;
    // None ready: the request waits for one being made (or made now for
    // it), which is never slower than a cold start in the client.
    s.waiting = true;
    return serve(s) ? "" : "cannot pass the sandbox";
  }

  // Hands a ready sandbox to a waiting session; false when passing failed.
  bool serve(Session& s) {
    auto it = std::find_if(warming_.begin(), warming_.end(),
                           [](auto& sb) { return sb->poll_setup() == Sandbox::Status::Ready; });
    if (it == warming_.end()) return true;  // still waiting
    std::unique_ptr<Sandbox> sb = std::move(*it);
    warming_.erase(it);
    s.waiting = false;
    if (!hand_over(*sb, s.conn.get())) return false;
    s.sandbox = std::move(sb);
    return true;
  }

  void serve_waiting() {
    for (auto& s : sessions_)
      if (s.conn && s.waiting && !serve(s)) {
        wire::send_record(s.conn.get(), refusal("cannot pass the sandbox"));
        s.conn.reset();
      }
  }

  // When sandboxes cannot be made, waiting requests are told why (they
  // start cold and report the problem themselves).
  void refuse_waiting(const std::string& why) {
    for (auto& s : sessions_)
      if (s.conn && s.waiting) {
        wire::send_record(s.conn.get(), refusal(why));
        s.conn.reset();
      }
  }

  bool hand_over(Sandbox& sb, int conn) {
    auto& st = sb.state();
    json dirs = json::array();
    for (const auto& d : st.cgroup->directories())
      dirs.push_back({{"controller", static_cast<int>(d.controller)}, {"version", d.version}, {"path", d.path}});
    json head{{"ok", true},
              {"id", st.id},
              {"cgroup", dirs},
              {"warnings", st.warnings},
              {"max_known_nr", st.policy->max_known_nr},
              {"listener", static_cast<bool>(st.listener)}};
    std::string h = head.dump();
    uint32_t len = static_cast<uint32_t>(h.size());
    std::string rec(reinterpret_cast<const char*>(&len), sizeof len);
    rec += h;
    rec.append(reinterpret_cast<const char*>(st.policy->shadow.data()), st.policy->shadow.size() * sizeof(sock_filter));
    std::vector<int> fds = {st.sock.get(), st.in_w.get(), st.out.pipe.get(), st.err.pipe.get(), st.pidfd.get()};
    if (st.listener) fds.push_back(st.listener.get());
    sched_param normal{};
    sched_setscheduler(st.pid, SCHED_OTHER, &normal);
    if (!wire::send_record(conn, rec, fds)) return false;
    // The client holds them now; we keep what owning the sandbox needs
    // (pidfd, pid to reap, cgroup to remove).
    st.sock.reset();
    st.in_w.reset();
    st.out.pipe.reset();
    st.err.pipe.reset();
    st.listener.reset();
    return true;
  }

  void drop_failed(std::unique_ptr<Sandbox>& sb) {
    std::string why = sb->setup_error().empty() ? std::string("init ended") : sb->setup_error();
    log("a sandbox failed during setup: " + why);
    sb.reset();
    back_off();
    refuse_waiting("a sandbox failed during setup: " + why);
  }

  void back_off() {
    backoff_ = std::min(backoff_ == std::chrono::milliseconds(0) ? std::chrono::milliseconds(100) : backoff_ * 2,
                        std::chrono::milliseconds(5000));
    retry_after_ = Clock::now() + backoff_;
  }

  // While requests run, new sandboxes are made only when fewer than half
  // are left: on a small machine making one (namespaces, mounts) would
  // compete with the requests for the CPU.
  bool wants_refill() const {
    size_t waiting = std::count_if(sessions_.begin(), sessions_.end(), [](const Session& s) { return s.waiting; });
    if (warming_.size() < waiting) return true;  // one in the making for each waiting request
    if (warming_.size() >= options_.size) return false;
    bool serving = std::any_of(sessions_.begin(), sessions_.end(), [](const Session& s) { return s.sandbox != nullptr; });
    return !serving || warming_.size() * 2 < options_.size;
  }

  int refill_timeout() const {
    if (!wants_refill()) return -1;
    auto left = std::chrono::ceil<std::chrono::milliseconds>(retry_after_ - Clock::now()).count();
    return left > 0 ? static_cast<int>(left) : 0;
  }

  // One new sandbox per turn of the loop, so requests are answered between.
  void refill() {
    if (!wants_refill() || Clock::now() < retry_after_) return;
    try {
      warming_.push_back(Sandbox::create(prepared_, spec_));
      backoff_ = std::chrono::milliseconds(0);
    } catch (const std::exception& e) {
      log(std::string("cannot make a sandbox: ") + e.what());
      back_off();
      refuse_waiting(std::string("cannot make a sandbox: ") + e.what());
    }
  }

  Spec spec_;
  Options options_;
  Prepared prepared_;
  UniqueFd listen_;
  bool listening_ = false;
  std::deque<std::unique_ptr<Sandbox>> warming_;  // starting or ready
  std::deque<Session> sessions_;
  std::deque<std::unique_ptr<Sandbox>> dying_;  // killed, init not yet reaped
  Clock::time_point retry_after_{};
  Clock::time_point accept_paused_until_{};
  std::chrono::milliseconds backoff_{0};
};

}  // namespace

int serve(const Spec& spec, const Options& options) {
  if (options.size == 0 || options.size > 1024) throw Error("--size must be between 1 and 1024");
  if (!spec.process.argv.empty()) throw Error("a pool takes no command: each request brings its own");
  Server server(spec, options);
  return server.serve();
}

}  // namespace ultari::pool
