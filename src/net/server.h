// Internal to src/net: serves a sandbox's network endpoints from outside
// its namespace (the DNS responder, the transparent proxy, the explicit
// HTTP and SOCKS5 proxies and the log of dropped packets). Every decision
// goes to the audit log. It runs in the gateway process (gateway.h), never
// in the supervisor: it parses what the sandbox sends.
#pragma once
#include <netinet/in.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "net/audit.h"
#include "net/dlp.h"
#include "net/dns.h"
#include "net/inspection.h"
#include "net/netns.h"
#include "spec/spec.h"

namespace ultari::net {

class Server {
 public:
  // Starts serving; `servers` are the host-side DNS servers.
  Server(const NetworkSpec& policy, std::vector<in_addr> servers, Endpoints endpoints, AuditLog& audit,
         Inspection inspection = {});
  ~Server();  // stops serving: closes every connection, joins every thread
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Stops serving (idempotent); the counts are final afterwards.
  void stop();

 private:
  void loop();
  void accept_one(int listener, int kind);
  void spawn(UniqueFd fd, int kind);
  bool submit(std::function<void()> task);
  void work();
  void serve(UniqueFd client, int kind);
  void answer_dns();
  void read_nflog();
  // The names the sandbox resolved through us to `addr`.
  std::set<std::string> names_of(in_addr addr);
  // Host-side resolution, cached for the answer's TTL (1 to 30 s).
  dns::Answer resolve(const std::string& name);
  void remember(const std::string& name, const std::vector<in_addr>& addrs);
  // One of `names` resolves to `addr` now (an unexpired host-side answer).
  bool resolves_now(const std::set<std::string>& names, in_addr addr);
  // A public address that is not one of the host's own.
  bool reachable(in_addr addr) const;
  // --net-upstream: the synthetic address that stands for `name` (the same
  // one for the sandbox's life); false when all are taken.
  bool synthetic(const std::string& name, in_addr& addr);
  // --net-upstream: a connection through the proxy's tunnel to host:port,
  // or none (and `error`: the proxy's answer, or why it was not reached).
  UniqueFd tunnel(const std::string& host, uint16_t port, int stop, std::string& error);

  friend struct Flow;
  NetworkSpec policy_;
  std::unique_ptr<Dlp> dlp_;  // with [dlp] only
  Inspection inspection_;     // TLS engine (--inspect-tls), secrets
  std::vector<in_addr> local_;  // the host's own addresses: never a destination
  std::vector<in_addr> servers_;
  Endpoints ep_;
  AuditLog& audit_;
  UniqueFd stop_;  // eventfd: the loop and every connection end
  std::thread loop_thread_;

  std::mutex mu_;
  std::condition_variable idle_;
  int active_ = 0;                 // connections and queries being served
  std::condition_variable work_;
  std::deque<std::function<void()>> tasks_;
  int workers_ = 0;       // threads serving, or waiting for work
  int idle_workers_ = 0;  // of which waiting
  std::set<int> open_fds_;         // shut down on stop
  bool stopping_ = false;
  std::map<uint32_t, std::set<std::string>> resolved_;  // address -> names
  std::set<std::string> dropped_flows_;
  struct Cached {
    dns::Answer answer;
    std::chrono::steady_clock::time_point expires;
  };
  std::map<std::string, Cached> cache_;
  std::map<std::string, uint32_t> synthetic_;  // name -> index of its address (--net-upstream)
};

}  // namespace ultari::net
