// Serves a sandbox's network endpoints from outside its namespace: the DNS
// responder, the transparent proxy, the explicit HTTP and SOCKS5 proxies
// and the log of dropped packets. Every decision goes to the audit log.
#pragma once
#include <netinet/in.h>

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "net/audit.h"
#include "net/netns.h"
#include "net/summary.h"
#include "spec/spec.h"

namespace ultari::net {

class Gateway {
 public:
  // Opens the audit log (throws Error when it cannot) and starts serving.
  Gateway(const NetworkSpec& policy, const std::string& sandbox_id, Endpoints endpoints);
  ~Gateway();  // stops serving: closes every connection, joins every thread
  Gateway(const Gateway&) = delete;
  Gateway& operator=(const Gateway&) = delete;

  // Stops serving (idempotent); the counts are final afterwards.
  void stop();
  Summary summary() const;
  // The environment that points clients at the explicit proxies.
  static std::vector<std::string> proxy_env();

 private:
  struct Conn;
  void loop();
  void accept_one(int listener, int kind);
  void spawn(UniqueFd fd, int kind);
  void serve(UniqueFd client, int kind);
  void answer_dns();
  void read_nflog();
  // The names the sandbox resolved through us to `addr`.
  std::set<std::string> names_of(in_addr addr);
  void remember(const std::string& name, const std::vector<in_addr>& addrs);

  friend struct Flow;
  NetworkSpec policy_;
  std::vector<in_addr> servers_;
  Endpoints ep_;
  AuditLog audit_;
  UniqueFd stop_;  // eventfd: the loop and every connection end
  std::thread loop_thread_;

  std::mutex mu_;
  std::condition_variable idle_;
  int active_ = 0;                 // connection and query threads running
  std::set<int> open_fds_;         // shut down on stop
  bool stopping_ = false;
  std::map<uint32_t, std::set<std::string>> resolved_;  // address -> names
  std::set<std::string> dropped_flows_;
};

}  // namespace ultari::net
