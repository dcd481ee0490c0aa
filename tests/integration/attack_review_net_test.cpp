// Review of 45a8224: the transparent proxy's early (speculative) upstream
// connect (Flow::transparent starts a TCP handshake to the address the
// sandbox asked for, before it has read the client's first bytes, when
// that address is reachable() and the sandbox resolved a name to it
// through Ultari, or under --net open).
//
// Listeners in the lab's "internet" (I) log every TCP connection they
// accept: the local address and port, the peer, and the bytes received
// (a connection is logged when it ends, "bytes":0 for a bare handshake).
// The gateway's connections come from the lab host side, 203.0.113.2.
// Every test starts with a negative control from the lab's host side: the
// listeners see what reaches them.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "harness.h"
#include "netlab.h"

namespace ultari::test {
namespace {

using nlohmann::json;

// LISTENER: tcp_log.py LOG ADDR:PORT...   Answers a request (once its head,
// or 300 ms of silence after some bytes, arrived) with a lab line, then
// logs the connection when the peer closes.
const char* const kTcpLog = R"PY(
import json, socket, sys, threading, time
log = sys.argv[1]
lock = threading.Lock()
def serve(c, local, peer):
    c.settimeout(0.3)
    got = b""
    answered = False
    start = time.time()
    while time.time() - start < 8:
        try:
            d = c.recv(65536)
        except socket.timeout:
            if got and not answered:
                c.sendall(b"HTTP/1.0 200 OK\r\n\r\nlab server=LISTENER local=%s got=%d\n" % (local.encode(), len(got)))
                answered = True
                try: c.shutdown(socket.SHUT_WR)
                except OSError: pass
            continue
        except OSError:
            break
        if not d:
            break
        got += d
    with lock:
        with open(log, "a") as f:
            f.write(json.dumps({"local": local, "peer": peer[0], "bytes": len(got), "data": got[:200].decode("latin-1")}) + "\n")
    c.close()
def listen(addr, port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, int(port)))
    s.listen(64)
    while True:
        c, peer = s.accept()
        threading.Thread(target=serve, args=(c, "%s:%s" % (addr, port), peer), daemon=True).start()
for spec in sys.argv[2:]:
    a, p = spec.rsplit(":", 1)
    threading.Thread(target=listen, args=(a, p), daemon=True).start()
open(log + ".ready", "w").close()
while True:
    time.sleep(60)
)PY";

// FLIP DNS: flip_dns.py ADDR LOG   flip.test is 203.0.113.10 for the first
// query and 203.0.113.11 for every later one (TTL 1); other names NXDOMAIN.
const char* const kFlipDns = R"PY(
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
log = sys.argv[2]
open(log + ".ready", "w").close()
n = 0
while True:
    data, peer = s.recvfrom(4096)
    ident, flags, qd = struct.unpack("!HHH", data[:6])
    i, labels = 12, []
    while data[i]:
        labels.append(data[i + 1:i + 1 + data[i]].decode()); i += 1 + data[i]
    i += 1
    qtype, qclass = struct.unpack("!HH", data[i:i + 4])
    end = i + 4
    name = ".".join(labels).lower()
    ans, count, rcode = b"", 0, 3
    if name == "flip.test":
        rcode = 0
        if qtype == 1:
            addr = "203.0.113.10" if n == 0 else "203.0.113.11"
            n += 1
            ans = struct.pack("!HHHIH", 0xC00C, 1, 1, 1, 4) + socket.inet_aton(addr)
            count = 1
            open(log, "a").write("%s %s\n" % (name, addr))
    hdr = struct.pack("!HHHHHH", ident, 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080 | rcode, 1, count, 0, 0)
    s.sendto(hdr + data[12:end] + ans, peer)
)PY";

// One line "LABEL raw ..." from the sandbox (the request bytes as shell text).
std::string raw(const std::string& label, const std::string& host, int port, const std::string& bytes) {
  return "echo \"" + label + " $(/usr/bin/python3 -c '\n"
         "import socket,sys,codecs\n"
         "h,p,b=sys.argv[1],int(sys.argv[2]),codecs.decode(sys.argv[3],\"unicode_escape\").encode(\"latin-1\")\n"
         "try:\n"
         "  s=socket.create_connection((socket.gethostbyname(h),p),timeout=3)\n"
         "  s.sendall(b)\n"
         "  d=b\"\"\n"
         "  while True:\n"
         "    c=s.recv(65536)\n"
         "    if not c: break\n"
         "    d+=c\n"
         "  print(\"ok\" if b\"lab server=\" in d else \"nothing\", d.decode(\"latin-1\").replace(\"\\n\",\" \"))\n"
         "except Exception as e:\n"
         "  print(\"error\",e)\n"
         "' " + host + " " + std::to_string(port) + " '" + bytes + "' 2>&1 | tr '\\n' ' ')\"\n";
}

class ReviewEarlyConnect : public LabSuite {
 protected:
  void TearDown() override {
    for (pid_t p : helpers_) kill(p, SIGKILL), waitpid(p, nullptr, 0);
    if (!extra_addr_.empty())
      ultari::test::host("ip -n '" + lab_->inet_ns() + "' addr del " + extra_addr_ + "/32 dev net0 2>/dev/null");
  }

  // python3 -c CODE ARGS... in the lab's internet I; waits for LOG.ready.
  void start_in_inet(const std::string& code, const std::vector<std::string>& args, const std::string& log) {
    std::string ns = "/run/netns/" + lab_->inet_ns();
    pid_t parent = getpid();
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(1);
      int fd = open(ns.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0 || setns(fd, CLONE_NEWNET) != 0) _exit(1);
      std::vector<std::string> argv = {"/usr/bin/python3", "-c", code};
      argv.insert(argv.end(), args.begin(), args.end());
      std::vector<char*> c;
      for (auto& a : argv) c.push_back(a.data());
      c.push_back(nullptr);
      execv(c[0], c.data());
      _exit(127);
    }
    helpers_.push_back(pid);
    for (int i = 0; i < 300 && !exists(log + ".ready"); ++i) usleep(10000);
    ASSERT_TRUE(exists(log + ".ready")) << "helper not ready: " << log;
  }
  void start_listeners(const std::vector<std::string>& specs) {
    std::vector<std::string> args = {log_path()};
    args.insert(args.end(), specs.begin(), specs.end());
    write_file(log_path(), "");
    start_in_inet(kTcpLog, args, log_path());
  }
  std::string log_path() const { return dir_ / "tcp.jsonl"; }
  // The connections logged (after those still open ended: up to ~9 s).
  std::vector<json> connections(size_t at_least = 0) const {
    std::vector<json> v;
    for (int i = 0; i < 100; ++i) {
      v.clear();
      std::istringstream in(read_file(log_path()));
      for (std::string l; std::getline(in, l);)
        if (!l.empty()) v.push_back(json::parse(l));
      if (v.size() >= at_least) break;
      usleep(100000);
    }
    return v;
  }
  // Connections to `local` from the gateway's side (203.0.113.2).
  static std::vector<json> to(const std::vector<json>& all, const std::string& local) {
    std::vector<json> v;
    for (const auto& c : all)
      if (c["local"] == local && c["peer"] == NetLab::kHostAddr) v.push_back(c);
    return v;
  }
  static std::string dump(const std::vector<json>& all) {
    std::string s = "listeners saw:\n";
    for (const auto& c : all) s += c.dump() + "\n";
    return s;
  }
  void reset_log() { truncate(log_path().c_str(), 0); }

  Outcome run(const std::vector<std::string>& net, const std::string& toml, const std::string& script,
              const std::string& resolver = NetLab::kDnsAddr) {
    std::vector<std::string> flags = net;
    std::string p = dir_ / ("policy" + std::to_string(policies_++) + ".toml");
    write_file(p, toml);
    flags.insert(flags.end(), {"--net-policy", p, "--net-resolver", resolver, "--audit", audit_path()});
    for (const auto& b : lab_->binds()) flags.push_back(b);
    return lab_->sh(script, flags);
  }
  std::string audit_path() const { return dir_ / "audit.jsonl"; }
  std::string audit_dump() const { return "audit log:\n" + read_file(audit_path()); }

  // From the lab's host side (the control): a request to each listener.
  void control_from_host(const std::vector<std::string>& specs) {
    std::string script;
    for (const auto& s : specs) {
      auto colon = s.rfind(':');
      script += "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 3 /usr/bin/python3 -c \"import socket,sys;"
                "s=socket.create_connection(('" + s.substr(0, colon) + "'," + s.substr(colon + 1) + "),timeout=2);"
                "s.sendall(sys.stdin.buffer.read());print(s.recv(200))\";\n";
    }
    Outcome r = lab_->host_sh(script);
    auto all = connections(specs.size());
    for (const auto& s : specs) ASSERT_EQ(to(all, s).size(), 1u) << s << "\n" << r.out << r.err << dump(all);
    reset_log();
  }

  std::vector<pid_t> helpers_;
  std::string extra_addr_;
  int policies_ = 0;
};

// Nothing the policy refuses is ever touched by the early connect: an
// address the sandbox never resolved (Allow), a port not in `ports`, a
// private address (--net open), any direct connection with --net-upstream.
TEST_F(ReviewEarlyConnect, NeverReachesWhatThePolicyRefuses) {
  const std::vector<std::string> specs = {"203.0.113.10:7777", "203.0.113.11:7777", "203.0.113.10:7778",
                                          "10.99.0.10:7777"};
  start_listeners(specs);
  control_from_host(specs);
  const std::string req = "GET / HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n";
  Outcome a = run({"--net", "allow=allowed.test"}, "ports = [80, 443, 7777]\n",
                  raw("unresolved", "203.0.113.11", 7777, "hello") + raw("port", "allowed.test", 7778, req) +
                      raw("private", "10.99.0.10", 7777, "hello") + raw("ok", "allowed.test", 7777, req));
  auto l = by_label(a.out);
  EXPECT_TRUE(has(l["ok"], "ok ")) << a.out << a.err;  // negative control: the allowed flow arrives
  for (const char* k : {"unresolved", "port", "private"}) EXPECT_FALSE(has(l[k], "ok ")) << k << ": " << l[k];
  auto all = connections(1);
  EXPECT_EQ(to(all, "203.0.113.10:7777").size(), 1u) << dump(all);
  EXPECT_TRUE(to(all, "203.0.113.11:7777").empty()) << dump(all) << audit_dump();
  EXPECT_TRUE(to(all, "203.0.113.10:7778").empty()) << dump(all) << audit_dump();
  EXPECT_TRUE(to(all, "10.99.0.10:7777").empty()) << dump(all) << audit_dump();
  reset_log();

  // --net open: a private address, never; a public one, yes (the control).
  Outcome b = run({"--net", "open"}, "ports = [7777]\n",
                  raw("private", "10.99.0.10", 7777, "hello") + raw("public", "203.0.113.10", 7777, "hello"));
  l = by_label(b.out);
  EXPECT_TRUE(has(l["public"], "ok ")) << b.out << b.err;
  EXPECT_FALSE(has(l["private"], "ok ")) << l["private"];
  all = connections(1);
  EXPECT_TRUE(to(all, "10.99.0.10:7777").empty()) << dump(all);
  reset_log();

  // --net-upstream: everything goes to the proxy (which only CONNECTs to
  // 443): nothing from the host side straight to the listener.
  Outcome c = run({"--net", "open", "--net-upstream",
                   std::string("http://") + NetLab::kProxyAddr + ":" + std::to_string(NetLab::kProxyPort)},
                  "ports = [7777]\n", raw("upstream", "203.0.113.10", 7777, "hello"));
  l = by_label(c.out);
  EXPECT_FALSE(has(l["upstream"], "ok ")) << c.out << c.err;
  std::this_thread::sleep_for(std::chrono::seconds(1));
  all = connections();
  EXPECT_TRUE(to(all, "203.0.113.10:7777").empty()) << dump(all) << audit_dump();
}

// A refused connection may cost the server a handshake (docs/network.md),
// never a byte: the fronted request (Allow) and a denied name under --net
// open with a deny list. The control: the allowed requests arrive whole,
// and under --net open the denied name's server is reachable by address
// anyway (deny lists are for names).
TEST_F(ReviewEarlyConnect, ARefusedConnectionSendsNoByteUpstream) {
  const std::vector<std::string> specs = {"203.0.113.11:7777"};
  start_listeners(specs);
  control_from_host(specs);
  const std::string other = "GET / HTTP/1.1\\r\\nHost: other.test\\r\\n\\r\\n";
  const std::string evil = "GET / HTTP/1.1\\r\\nHost: evil.allowed.test\\r\\n\\r\\n";
  Outcome a = run({"--net", "allow=evil.allowed.test"}, "ports = [7777]\n",
                  raw("ok", "evil.allowed.test", 7777, evil) + raw("fronted", "evil.allowed.test", 7777, other));
  auto l = by_label(a.out);
  EXPECT_TRUE(has(l["ok"], "ok ")) << a.out << a.err;
  EXPECT_FALSE(has(l["fronted"], "ok ")) << l["fronted"];
  auto all = to(connections(2), "203.0.113.11:7777");
  int whole = 0, bare = 0;
  for (const auto& c : all) {
    EXPECT_FALSE(has(c["data"].get<std::string>(), "other.test")) << dump(all);
    whole += has(c["data"].get<std::string>(), "Host: evil.allowed.test");
    bare += c["bytes"] == 0;
  }
  EXPECT_EQ(whole, 1) << dump(all);
  std::cout << "allow: handshakes without a byte for refused flows: " << bare << "\n";
  reset_log();

  Outcome b = run({"--net", "open"}, "deny = [\"other.test\"]\nports = [7777]\n",
                  raw("denied", "203.0.113.11", 7777, other) +
                      raw("by_address", "203.0.113.11", 7777, "GET / HTTP/1.1\\r\\nHost: 203.0.113.11\\r\\n\\r\\n"));
  l = by_label(b.out);
  EXPECT_FALSE(has(l["denied"], "ok ")) << b.out << b.err;
  EXPECT_TRUE(has(l["by_address"], "ok ")) << l["by_address"] << audit_dump();
  all = to(connections(2), "203.0.113.11:7777");
  bare = 0;
  for (const auto& c : all) {
    EXPECT_FALSE(has(c["data"].get<std::string>(), "other.test")) << dump(all);
    bare += c["bytes"] == 0;
  }
  std::cout << "open+deny: handshakes without a byte for refused flows: " << bare << "\n";
  // The audit record says so: the refused flow names the handshake it cost;
  // an allowed flow (the control) has no such field.
  int named = 0, allowed = 0;
  std::istringstream lines(read_file(audit_path()));
  for (std::string line; std::getline(lines, line);) {
    auto rec = nlohmann::json::parse(line);
    if (rec.value("decision", "") == "allow") {
      ++allowed;
      EXPECT_FALSE(rec.contains("unused_handshake")) << line;
    }
    if (rec.value("name", "") == "other.test" && rec.value("decision", "") == "deny") {
      EXPECT_EQ(rec.value("unused_handshake", ""), "203.0.113.11:7777") << line;
      ++named;
    }
  }
  EXPECT_GE(allowed, 1) << audit_dump();
  EXPECT_GE(named, 1) << audit_dump();
}

// FINDING on 45a8224, fixed: the early connect trusts Server::resolved_,
// which remembers every address the sandbox was ever given and never
// forgets it (until 65536 addresses), while the decision (decide_name) is
// rebinding-safe: it connects only to an address the name resolves to now.
// flip.test resolves to .10 once, then to .11: the flow is decided and
// relayed to .11, but .10 got a handshake first, an address no allowed name
// resolves to any more (a recycled cloud address, a CDN edge the name left
// days ago). docs/network.md: "it never reaches any other".
TEST_F(ReviewEarlyConnect, OnlyAnAddressTheNameResolvesToNowIsTouched) {
  extra_addr_ = "203.0.113.54";
  ASSERT_EQ(ultari::test::host("ip -n '" + lab_->inet_ns() + "' addr add 203.0.113.54/32 dev net0").status, 0);
  std::string dns_log = dir_ / "flip.log";
  start_in_inet(kFlipDns, {extra_addr_, dns_log}, dns_log);
  const std::vector<std::string> specs = {"203.0.113.10:7777", "203.0.113.11:7777"};
  start_listeners(specs);
  control_from_host(specs);
  std::string script = "echo \"resolved $(/usr/bin/python3 -c 'import socket;print(socket.gethostbyname(\"flip.test\"))')\"\n"
                       "sleep 2\n" +
                       raw("flow", "203.0.113.10", 7777, "GET / HTTP/1.1\\r\\nHost: flip.test\\r\\n\\r\\n");
  Outcome r = run({"--net", "allow=flip.test"}, "ports = [7777]\n", script, extra_addr_);
  auto l = by_label(r.out);
  ASSERT_EQ(l["resolved"], "203.0.113.10") << r.out << r.err;
  // The control: the gateway resolved again and relayed to the new address.
  EXPECT_TRUE(has(l["flow"], "local=203.0.113.11:7777")) << l["flow"] << read_file(dns_log) << audit_dump();
  auto all = connections(1);
  EXPECT_EQ(to(all, "203.0.113.11:7777").size(), 1u) << dump(all);
  EXPECT_TRUE(to(all, "203.0.113.10:7777").empty()) << "the stale address was connected to:\n" << dump(all);
}

}  // namespace
}  // namespace ultari::test
