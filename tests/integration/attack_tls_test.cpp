// Attacks on --inspect-tls and --secret, from inside the sandbox (an
// independent security review). In the lab (netlab.h) allowed.test and
// www.allowed.test share 203.0.113.10, evil.allowed.test and other.test
// 203.0.113.11; the lab's servers log every request (requests.jsonl) and
// answer with a body line naming the server, Host, SNI and path: so a probe
// sees what arrived, and the log proves it.
//
// Goals tried: learn a --secret's value, get it sent to a host not in its
// list (or in cleartext), get data past [dlp] or the Host/SNI checks with
// inspection on, make the gateway talk to an unverified upstream, reach the
// CA's key, tamper with the trust bundle, stall or crash the gateway. Every
// test has a negative control proving its probe can see success. The four
// attacks the review found succeeding (the value reflected back through
// the request line or an echoed header, the value sent in cleartext, a
// silent first second in a tunnel skipping inspection, CONNECT inside
// inspected TLS naming another host) are fixed and their tests enabled.
#include <dirent.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <sstream>
#include <thread>

#include "harness.h"
#include "netlab.h"

namespace ultari::test {
namespace {

using nlohmann::json;

// Probes (bound at /atk/tls.py). One result line per command.
const char* const kProbe = R"PY(#!/usr/bin/python3
import codecs, ctypes, os, socket, ssl, struct, sys, time

T = 4.0

def esc(s):
    return codecs.decode(s, "unicode_escape").encode("latin-1")

def ctx():
    c = ssl.create_default_context()   # SSL_CERT_FILE: the sandbox's bundle
    if os.path.exists("/ca.pem"):
        c.load_verify_locations("/ca.pem")
    return c

def read_all(s, limit=T):
    data = b""
    s.settimeout(limit)
    try:
        while True:
            c = s.recv(65536)
            if not c:
                break
            data += c
    except socket.timeout:
        pass
    except (OSError, ssl.SSLError) as e:
        return data, "err=%s" % (getattr(e, "errno", None) or e)
    return data, ""

def open_path(mode, host, port):
    """A socket to host:port: transparent, through HTTP CONNECT or SOCKS5."""
    if mode == "direct":
        return socket.create_connection((host, int(port)), timeout=T)
    if mode == "connect":
        s = socket.create_connection(("127.0.0.1", 3128), timeout=T)
        s.sendall(("CONNECT %s:%s HTTP/1.1\r\nHost: %s:%s\r\n\r\n" % (host, port, host, port)).encode())
        r = b""
        while b"\r\n\r\n" not in r:
            c = s.recv(1)
            if not c:
                raise OSError(0, "connect closed")
            r += c
        if b" 200 " not in r.split(b"\r\n")[0]:
            raise OSError(0, "connect answered " + r.split(b"\r\n")[0].decode("latin-1"))
        return s
    if mode == "socks":
        s = socket.create_connection(("127.0.0.1", 1080), timeout=T)
        s.sendall(b"\x05\x01\x00")
        if s.recv(2) != b"\x05\x00":
            raise OSError(0, "socks method")
        n = host.encode()
        s.sendall(b"\x05\x01\x00\x03" + bytes([len(n)]) + n + struct.pack("!H", int(port)))
        rep = s.recv(10)
        if len(rep) < 2 or rep[1] != 0:
            raise OSError(0, "socks code %r" % rep[:2])
        return s
    raise ValueError(mode)

def req(mode, host, port, sni, delay, *parts):
    """PARTS (escaped) written one by one (separate TLS records) after DELAY
    seconds; SNI '-' is plaintext. Prints the response, one line."""
    try:
        s = open_path(mode, host, port)
        time.sleep(float(delay))
        if sni != "-":
            s = ctx().wrap_socket(s, server_hostname=sni)
        for i, p in enumerate(parts):
            if i:
                time.sleep(0.15)
            s.sendall(esc(p))
        data, err = read_all(s)
    except ssl.SSLError as e:
        return "refused ssl %s" % e.reason
    except OSError as e:
        return "refused errno=%s %s" % (e.errno, e.strerror)
    if not data:
        return "refused nothing " + err
    return "resp " + repr(data[:4000])[2:-1]

def hello(sni):
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    o = ctx().wrap_bio(inc, out, server_hostname=sni)
    try:
        o.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()

def stall(n, host, what):
    """N connections that stop mid-handshake, then one normal request."""
    held = []
    for _ in range(int(n)):
        s = socket.create_connection((host, 443), timeout=T)
        h = hello(host)
        if what == "hello":
            s.sendall(h)
        elif what == "partial":
            s.sendall(h[:40])
        held.append(s)
    time.sleep(0.5)
    r = req("direct", host, 443, host, 0, "GET /after-stall HTTP/1.1\\r\\nHost: %s\\r\\nConnection: close\\r\\n\\r\\n" % host)
    for s in held:
        s.close()
    return r

def rawrec(host, what):
    """After the handshake, raw bytes under the TLS layer; then a normal request."""
    try:
        s = socket.create_connection((host, 443), timeout=T)
        t = ctx().wrap_socket(s, server_hostname=host)
        raw = socket.socket(fileno=os.dup(t.fileno()))
        if what == "huge":
            raw.sendall(b"\x17\x03\x03\xff\xff" + b"A" * 65535)
        elif what == "garbage":
            raw.sendall(os.urandom(4096))
        elif what == "ccs":
            raw.sendall(b"\x14\x03\x03\x00\x01\x01" * 64)
        elif what == "alertflood":
            raw.sendall(b"\x15\x03\x03\x00\x02\x01\x00" * 1000)
        got, err = read_all(t, 2)
        first = "closed %s %d" % (err, len(got))
    except (OSError, ssl.SSLError) as e:
        first = "closed exc %s" % e
    r = req("direct", host, 443, host, 0, "GET /after-raw HTTP/1.1\\r\\nHost: %s\\r\\nConnection: close\\r\\n\\r\\n" % host)
    return first + " then " + r

def halfclose(host):
    """Request (keep-alive), then FIN without close_notify: the answer must come back."""
    try:
        s = socket.create_connection((host, 443), timeout=T)
        t = ctx().wrap_socket(s, server_hostname=host)
        t.sendall(("GET /half HTTP/1.1\r\nHost: %s\r\n\r\n" % host).encode())
        time.sleep(0.2)
        socket.socket(fileno=os.dup(t.fileno())).shutdown(socket.SHUT_WR)
        data, err = read_all(t, 3)
    except (OSError, ssl.SSLError) as e:
        return "refused %s" % e
    return "resp " + repr(data[:2000])[2:-1]

def big(host, mb):
    body = b"x" * (int(mb) << 20)
    head = ("POST /big HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % (host, len(body))).encode()
    try:
        s = socket.create_connection((host, 443), timeout=T)
        t = ctx().wrap_socket(s, server_hostname=host)
        t.sendall(head + body)
        data, err = read_all(t, 10)
    except (OSError, ssl.SSLError) as e:
        return "refused %s" % e
    return "resp " + repr(data[:2000])[2:-1]

def procmem():
    """What the sandbox can read of its pid 1 (ultari-init, a copy of the supervisor)."""
    out = []
    for p in ["/proc/1/environ", "/proc/1/maps", "/proc/1/mem", "/proc/self/environ"]:
        try:
            with open(p, "rb") as f:
                if p.endswith("mem"):
                    f.seek(0x400000)
                d = f.read(1 << 20)
            out.append("%s=read:%d" % (p, len(d)))
        except OSError as e:
            out.append("%s=errno:%d" % (p, e.errno))
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.ptrace(16, 1, None, None)  # PTRACE_ATTACH
    out.append("ptrace=%d:%d" % (rc, ctypes.get_errno()))
    class iov(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
    buf = ctypes.create_string_buffer(16)
    local, remote = iov(ctypes.cast(buf, ctypes.c_void_p), 16), iov(0x400000, 16)
    libc.process_vm_readv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    rc = libc.process_vm_readv(1, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    out.append("vmread=%d:%d" % (rc, ctypes.get_errno()))
    return " ".join(out)

def main(a):
    f = {"req": req, "stall": stall, "rawrec": rawrec, "halfclose": halfclose, "big": big, "procmem": procmem}[a[0]]
    print(f(*a[1:]))

if __name__ == "__main__":
    main(sys.argv[1:])
)PY";

constexpr const char* kSecret = "sk-real-7f3a9c01d2";     // API_KEY's value, for allowed.test
constexpr const char* kSuffixSecret = "sfx-real-55e0aa";  // SUF's value, for *.allowed.test
constexpr const char* kKey = "-----BEGIN RSA PRIVATE KEY-----MIIEowIBAAKCAQEAfakefakefake-----END RSA PRIVATE KEY-----";

// "LABEL <probe output>" from inside the sandbox. ARGS may use $API_KEY etc.
std::string probe(const std::string& label, const std::string& args) {
  // printf, not echo: dash's echo would turn the probe's "\r\n" into line ends.
  return "printf '%s\\n' \"" + label + " $(/usr/bin/python3 /atk/tls.py " + args + " 2>&1 | tr '\\n' ' ')\"\n";
}
std::string get(const std::string& path, const std::string& host, const std::string& extra = "") {
  return "GET " + path + " HTTP/1.1\\r\\nHost: " + host + "\\r\\n" + extra + "Connection: close\\r\\n\\r\\n";
}
bool served(const std::string& line, const std::string& what) { return has(line, "lab server=") && has(line, what); }

class AttackTls : public LabSuite {
 protected:
  void SetUp() override {
    LabSuite::SetUp();
    write_file(dir_ / "tls.py", kProbe, 0755);
  }

  // SCRIPT with POLICY (TOML), --inspect-tls with the lab's CA, `flags`.
  Outcome run(const std::string& toml, const std::vector<std::string>& flags, const std::string& script,
              Options opt = {}, bool inspect = true) {
    std::string p = dir_ / ("policy" + std::to_string(n_++) + ".toml");
    write_file(p, toml);
    std::vector<std::string> all = {"--net-policy", p, "--net-resolver", NetLab::kDnsAddr, "--audit", audit_path(),
                                    "--ro-bind", dir_.path() + ":/atk"};
    if (inspect) all.insert(all.end(), {"--inspect-tls", "--net-ca", lab_->ca_cert()});
    for (const auto& b : lab_->binds()) all.push_back(b);
    all.insert(all.end(), flags.begin(), flags.end());
    opt.timeout_s = 90;
    return lab_->sh(script, all, std::move(opt));
  }
  // The secrets' run: API_KEY for allowed.test, SUF for *.allowed.test.
  Outcome run_secrets(const std::string& toml, const std::string& script) {
    Options opt;
    opt.env = {std::string("ULTARI_TEST_KEY=") + kSecret, std::string("ULTARI_TEST_SUF=") + kSuffixSecret};
    return run(toml,
               {"--secret", "API_KEY=env:ULTARI_TEST_KEY@allowed.test", "--secret",
                "SUF=env:ULTARI_TEST_SUF@*.allowed.test"},
               script, opt);
  }
  std::string audit_path() const { return dir_ / "audit.jsonl"; }
  std::string audit_text() const { return read_file(audit_path()); }
  bool audited(const std::string& decision, const std::string& reason) const {
    std::istringstream in(audit_text());
    for (std::string l; std::getline(in, l);) {
      json e = json::parse(l, nullptr, false);
      if (e.is_object() && e.value("decision", "") == decision && e.value("reason", "") == reason) return true;
    }
    return false;
  }
  // The logged request whose path starts with `path` ("" when none).
  std::string arrived(const std::string& path) const {
    for (const auto& r : lab_->requests())
      if (r.value("path", "").rfind(path, 0) == 0) return r.dump();
    return "";
  }
  std::string seen() const {
    std::string s = "lab saw:\n";
    for (const auto& r : lab_->requests()) s += r.dump() + "\n";
    return s + "audit:\n" + audit_text();
  }

  int n_ = 0;
};


const std::string kAllow = "allow = [\"allowed.test\", \"www.allowed.test\", \"evil.allowed.test\"]\n";

// ---------------------------------------------------------------------------
// --secret

// A server that reflects the request (a 404 page echoing the path, a
// redirect's Location, CORS reflecting Origin, the lab's own body line)
// must not hand the value back: it is swapped into the secret's auth
// headers only, never the request line or another header.
TEST_F(AttackTls, SecretReflectedByTheServerNeverReachesTheSandbox) {
  std::string script =
      probe("path", "req direct allowed.test 443 allowed.test 0 'GET /r?k='$API_KEY' HTTP/1.1\\r\\nHost: allowed.test"
                    "\\r\\nAuthorization: '$API_KEY'\\r\\nOrigin: '$API_KEY'\\r\\nConnection: close\\r\\n\\r\\n'") +
      // Negative control: an allowed host without the secret echoes the placeholder.
      probe("ctl", "req direct www.allowed.test 443 www.allowed.test 0 'GET /c?k='$API_KEY' HTTP/1.1\\r\\nHost: "
                   "www.allowed.test\\r\\nConnection: close\\r\\n\\r\\n'");
  Outcome r = run_secrets(kAllow, script);
  auto l = by_label(r.out);
  ASSERT_TRUE(served(l["ctl"], "path=/c?k=ultari-secret-")) << r.out << r.err;
  ASSERT_TRUE(has(arrived("/r"), kSecret)) << seen();  // the value did go out, in Authorization...
  EXPECT_TRUE(served(l["path"], "path=/r?k=ultari-secret-")) << l["path"];
  EXPECT_FALSE(has(r.out, kSecret)) << "the sandbox read the real value: " << l["path"];  // ...and did not come back
}

// Plaintext HTTP to a secret's host (port 80, an absolute-form request
// through the HTTP proxy, a CONNECT tunnel to port 80) keeps the
// placeholder: the value only goes into TLS the gateway verified.
TEST_F(AttackTls, SecretIsNeverSentInCleartext) {
  std::string script =
      probe("tls", "req direct allowed.test 443 allowed.test 0 '" + get("/tls", "allowed.test", "X-Api-Key: '$API_KEY'\\r\\n") +
                       "'") +
      probe("p80", "req direct allowed.test 80 - 0 '" + get("/p80", "allowed.test", "X-Api-Key: '$API_KEY'\\r\\n") + "'") +
      probe("proxy", "req direct 127.0.0.1 3128 - 0 'GET http://allowed.test/proxy HTTP/1.1\\r\\nHost: allowed.test"
                     "\\r\\nX-Api-Key: '$API_KEY'\\r\\nConnection: close\\r\\n\\r\\n'") +
      probe("tunnel", "req connect allowed.test 80 - 0 '" + get("/tunnel", "allowed.test", "X-Api-Key: '$API_KEY'\\r\\n") + "'");
  Outcome r = run_secrets(kAllow, script);
  // Negative control: over inspected TLS the value is substituted (the probe sees it).
  ASSERT_TRUE(has(arrived("/tls"), kSecret)) << r.out << r.err << seen();
  for (const char* p : {"/p80", "/proxy", "/tunnel"}) {
    std::string a = arrived(p);
    ASSERT_NE(a, "") << p << " did not arrive\n" << r.out << seen();
    EXPECT_TRUE(has(a, "\"scheme\":\"http\"")) << a;
    EXPECT_FALSE(has(a, kSecret)) << p << " carried the value in cleartext: " << a;
  }
}

// The value goes only where it belongs, and only in request heads.
TEST_F(AttackTls, SecretStaysOnItsHostAndOutOfBodies) {
  const std::string ph = "'$API_KEY'";
  std::string body = "GET /inner HTTP/1.1\\r\\nX-Api-Key: " + ph + "\\r\\n\\r\\n";
  // 19 + 2 + 11 + 46 (the placeholder) + 2 + 2 bytes once unescaped.
  std::string post = "POST /body HTTP/1.1\\r\\nHost: allowed.test\\r\\nContent-Length: 82\\r\\nConnection: close\\r\\n\\r\\n";
  std::string script =
      "U=$(echo $API_KEY | tr a-z A-Z)\n"
      // Control: a head split inside the placeholder over two TLS records is still replaced.
      + probe("split", "req direct allowed.test 443 allowed.test 0 'GET /split HTTP/1.1\\r\\nHost: allowed.test\\r\\nX-Api-Key: '"
                       "${API_KEY%????????????????????} ${API_KEY#ultari-secret-????????????}'\\r\\nConnection: close\\r\\n\\r\\n'") +
      // A second pipelined request for another host on the secret's connection
      // (in the same write: both are refused).
      probe("pipe", "req direct allowed.test 443 allowed.test 0 'GET /p1 HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n"
                    "GET /p2 HTTP/1.1\\r\\nHost: www.allowed.test\\r\\nX-Api-Key: " + ph + "\\r\\nConnection: close\\r\\n\\r\\n'") +
      // ...and in a later record (keep-alive).
      probe("keep", "req direct allowed.test 443 allowed.test 0 'GET /k1 HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n' "
                    "'GET /k2 HTTP/1.1\\r\\nHost: www.allowed.test\\r\\nX-Api-Key: " + ph + "\\r\\nConnection: close\\r\\n\\r\\n'") +
      // Absolute-form URL naming another host.
      probe("abs", "req direct allowed.test 443 allowed.test 0 'GET http://www.allowed.test/abs HTTP/1.1\\r\\nHost: "
                   "allowed.test\\r\\nX-Api-Key: " + ph + "\\r\\nConnection: close\\r\\n\\r\\n'") +
      // Host with the port, trailing dot, upper case: still allowed.test (replaced, same server).
      // Another allowed host on the same address: the placeholder only.
      probe("other", "req direct www.allowed.test 443 www.allowed.test 0 '" + get("/other", "www.allowed.test", "X-Api-Key: " + ph + "\\r\\n") + "'") +
      // SNI of the secret's host, Host of another: refused.
      probe("front", "req direct allowed.test 443 allowed.test 0 '" + get("/front", "www.allowed.test", "X-Api-Key: " + ph + "\\r\\n") + "'") +
      // Through the explicit proxies: the tunnel's name decides.
      probe("connect", "req connect allowed.test 443 allowed.test 0 '" + get("/connect", "allowed.test", "X-Api-Key: " + ph + "\\r\\n") + "'") +
      probe("socks", "req socks allowed.test 443 allowed.test 0 '" + get("/socks", "allowed.test", "X-Api-Key: " + ph + "\\r\\n") + "'") +
      probe("connect_www", "req connect www.allowed.test 443 www.allowed.test 0 '" + get("/cwww", "www.allowed.test", "X-Api-Key: " + ph + "\\r\\n") + "'") +
      probe("connect_sni", "req connect allowed.test 443 www.allowed.test 0 '" + get("/csni", "www.allowed.test", "X-Api-Key: " + ph + "\\r\\n") + "'") +
      // Case variants are other strings: never replaced.
      probe("case", "req direct allowed.test 443 allowed.test 0 '" + get("/case", "allowed.test", "X-Api-Key: '$U'\\r\\n") + "'") +
      // HTTP/1.0 without Host: the connection's host, replaced (allowed.test gets it).
      probe("h10", "req direct allowed.test 443 allowed.test 0 'GET /h10 HTTP/1.0\\r\\nX-Api-Key: " + ph + "\\r\\n\\r\\n'") +
      // Bodies: Content-Length (holding a request head) and chunked.
      probe("body", "req direct allowed.test 443 allowed.test 0 '" + post + "' '" + body + "'") +
      probe("chunked", "req direct allowed.test 443 allowed.test 0 'POST /chunked HTTP/1.1\\r\\nHost: allowed.test\\r\\n"
                       "Transfer-Encoding: chunked\\r\\nConnection: close\\r\\n\\r\\n2e\\r\\n" + ph + "\\r\\n0\\r\\n\\r\\n'") +
      // *.allowed.test: evil.allowed.test gets SUF; allowed.test itself never does.
      probe("suf", "req direct evil.allowed.test 443 evil.allowed.test 0 '" + get("/suf", "evil.allowed.test", "X-Api-Key: '$SUF'\\r\\n") + "'") +
      probe("sufapex", "req direct allowed.test 443 allowed.test 0 '" + get("/sufapex", "allowed.test", "X-Api-Key: '$SUF'\\r\\n") + "'") +
      "grep -rl -e " + kSecret + " -e " + kSuffixSecret + " /proc/self/environ /etc /tmp /root /dev/shm 2>/dev/null; echo searched\n";
  Outcome r = run_secrets(kAllow, script);
  auto l = by_label(r.out);
  ASSERT_TRUE(has(r.out, "searched")) << r.out << r.err;
  // Negative controls: the probe sees the value where it belongs.
  EXPECT_TRUE(has(arrived("/split"), kSecret)) << l["split"] << seen();
  EXPECT_NE(arrived("/k1"), "") << seen();  // keep-alive: the first request passes
  EXPECT_TRUE(has(arrived("/connect"), kSecret)) << l["connect"] << seen();
  EXPECT_TRUE(has(arrived("/socks"), kSecret)) << l["socks"] << seen();
  EXPECT_TRUE(has(arrived("/h10"), kSecret)) << l["h10"] << seen();
  EXPECT_TRUE(has(arrived("/suf"), kSuffixSecret)) << l["suf"] << seen();
  // Refused outright.
  for (const char* p : {"/p2", "/k2", "/abs", "/front", "/csni"}) EXPECT_EQ(arrived(p), "") << p << "\n" << seen();
  // Arrived with the placeholder only.
  for (const char* p : {"/other", "/cwww", "/case", "/body", "/chunked", "/sufapex"}) {
    std::string a = arrived(p);
    EXPECT_NE(a, "") << p << " did not arrive\n" << r.out << seen();
    EXPECT_FALSE(has(a, kSecret) || has(a, kSuffixSecret)) << p << ": " << a;
  }
  EXPECT_TRUE(has(arrived("/body"), "ultari-secret-")) << seen();
  EXPECT_TRUE(has(arrived("/chunked"), "ultari-secret-")) << seen();
  // The sandbox never sees it (the lab's answer names only the path, which
  // held no placeholder here), and the audit log never holds it.
  EXPECT_FALSE(has(r.out, kSecret) || has(r.out, kSuffixSecret)) << r.out;
  EXPECT_FALSE(has(audit_text(), kSecret) || has(audit_text(), kSuffixSecret));
  EXPECT_FALSE(has(audit_text(), "ultari-secret-")) << audit_text();
}

// Inside inspected TLS, CONNECT's authority-form target is never compared
// with the connection's name (HttpRequests::head_done checks only the Host
// header and absolute-form http:// targets): "CONNECT other.test:443" with
// "Host: allowed.test" is passed on. Low impact (the request still goes to
// allowed.test's server; it matters when that server is a forward proxy),
// but it is a request naming another host that the checks let through.
TEST_F(AttackTls, ConnectInsideInspectedTlsNamingAnotherHostIsRefused) {
  std::string script =
      probe("connect", "req direct allowed.test 443 allowed.test 0 'CONNECT other.test:443 HTTP/1.1\\r\\nHost: "
                       "allowed.test\\r\\n\\r\\n'") +
      probe("ctl", "req direct allowed.test 443 allowed.test 0 'CONNECT allowed.test:443 HTTP/1.1\\r\\nHost: "
                   "allowed.test\\r\\n\\r\\n'");
  Outcome r = run(kAllow, {}, script);
  auto l = by_label(r.out);
  // Negative control: the probe sees the lab's answer (501: it is no proxy).
  ASSERT_TRUE(has(l["ctl"], "501")) << l["ctl"] << r.err;
  EXPECT_TRUE(has(l["connect"], "refused")) << l["connect"];
  EXPECT_TRUE(audited("deny", "sni-mismatch")) << seen();
}

// ---------------------------------------------------------------------------
// [dlp] and Host/SNI with inspection on

// A CONNECT or SOCKS5 tunnel whose client stays silent for the first second
// (peek_sniff's kFirstByteMs in Flow::run) is classified "Other": it is
// neither terminated nor followed. TLS started afterwards goes to the
// server as it is: [dlp] sees nothing, the SNI is never compared with the
// tunnel's name (fronting), and the sandbox talks to the real server.
TEST_F(AttackTls, SilentFirstSecondInATunnelIsRefusedOnWebPorts) {
  std::string post = "POST /up HTTP/1.1\\r\\nHost: allowed.test\\r\\nContent-Length: " + std::to_string(std::string(kKey).size()) +
                     "\\r\\nConnection: close\\r\\n\\r\\n" + kKey;
  std::string script =
      probe("now", "req connect allowed.test 443 allowed.test 0 '" + post + "'") +
      probe("late_connect", "req connect allowed.test 443 allowed.test 1.3 '" + post + "'") +
      probe("late_socks", "req socks allowed.test 443 allowed.test 1.3 '" + post + "'") +
      probe("front_now", "req connect evil.allowed.test 443 other.test 0 '" + get("/fnow", "other.test") + "'") +
      probe("front_late", "req connect evil.allowed.test 443 other.test 1.3 '" + get("/flate", "other.test") + "'");
  Outcome r = run(kAllow + "[dlp]\n", {}, script);
  auto l = by_label(r.out);
  // Negative controls: prompt, the key is blocked and the fronting refused.
  ASSERT_FALSE(served(l["now"], "")) << l["now"] << r.err;
  ASSERT_TRUE(audited("deny", "dlp:private-key")) << seen();
  ASSERT_FALSE(served(l["front_now"], "")) << l["front_now"];
  EXPECT_FALSE(served(l["late_connect"], "method=POST")) << l["late_connect"];
  EXPECT_FALSE(served(l["late_socks"], "method=POST")) << l["late_socks"];
  EXPECT_FALSE(served(l["front_late"], "sni=other.test")) << l["front_late"];
  for (const auto& q : lab_->requests()) EXPECT_FALSE(has(q.dump(), "PRIVATE KEY")) << q.dump();
}

// The same trick on the transparent path (port 443 waits 10 s for a
// ClientHello) and the other encodings a client could try.
TEST_F(AttackTls, DlpAndHostChecksHoldOnTheTransparentPath) {
  std::string post = "POST /up HTTP/1.1\\r\\nHost: allowed.test\\r\\nContent-Length: " + std::to_string(std::string(kKey).size()) +
                     "\\r\\nConnection: close\\r\\n\\r\\n" + kKey;
  std::string half = std::string(kKey).substr(0, 20), rest = std::string(kKey).substr(20);
  std::string split = "POST /up2 HTTP/1.1\\r\\nHost: allowed.test\\r\\nContent-Length: " + std::to_string(std::string(kKey).size()) +
                      "\\r\\nConnection: close\\r\\n\\r\\n" + half;
  std::string script =
      probe("late", "req direct allowed.test 443 allowed.test 1.3 '" + post + "'") +
      probe("split", "req direct allowed.test 443 allowed.test 0 '" + split + "' '" + rest + "'") +
      probe("h2", "req direct allowed.test 443 allowed.test 0 'PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n'") +
      probe("ws", "req direct allowed.test 443 allowed.test 0 'GET /ws HTTP/1.1\\r\\nHost: allowed.test\\r\\nUpgrade: "
                  "websocket\\r\\n\\r\\n' '\\x81\\x05hello" + get("/after-ws", "other.test") + "'") +
      probe("ok", "req direct allowed.test 443 allowed.test 0 '" + get("/ok", "allowed.test") + "'");
  Outcome r = run(kAllow + "[dlp]\n", {}, script);
  auto l = by_label(r.out);
  EXPECT_TRUE(served(l["ok"], "path=/ok")) << l["ok"] << r.err;  // control
  EXPECT_FALSE(served(l["late"], "method=POST")) << l["late"];
  EXPECT_FALSE(served(l["split"], "method=POST")) << l["split"];
  EXPECT_FALSE(served(l["h2"], "")) << l["h2"];
  for (const auto& q : lab_->requests()) {
    EXPECT_FALSE(has(q.dump(), "PRIVATE KEY")) << q.dump();
    EXPECT_NE(q.value("host", ""), "other.test") << q.dump();
  }
  EXPECT_TRUE(audited("deny", "dlp:private-key")) << seen();
}

// ---------------------------------------------------------------------------
// Upstream verification and --net-ca

TEST_F(AttackTls, UpstreamIsAlwaysVerifiedAndBadCaFilesFailEarly) {
  // The lab's certificate names allowed.test (control) but not the address:
  // an IP-literal TLS in --net open has no name and is refused; without
  // --net-ca nothing verifies.
  std::string script = probe("ok", "req direct allowed.test 443 allowed.test 0 '" + get("/ok", "allowed.test") + "'");
  Outcome r = run(kAllow, {}, script);
  EXPECT_TRUE(served(by_label(r.out)["ok"], "path=/ok")) << r.out << r.err;
  lab_->clear_logs();
  Outcome noca = run(kAllow, {"--inspect-tls"}, script, {}, false);
  EXPECT_FALSE(served(by_label(noca.out)["ok"], "")) << noca.out;
  EXPECT_TRUE(lab_->requests().empty()) << seen();
  EXPECT_TRUE(has(audit_text(), "certificate verify failed")) << audit_text();
  // Bad --net-ca files: exit 125 before anything runs.
  write_file(dir_ / "notpem", "hello\n");
  write_file(dir_ / "keyonly", "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n");
  mkfifo((dir_ / "fifo").c_str(), 0600);
  {
    std::ofstream big(dir_ / "big");
    std::string line(1023, 'A');
    for (int i = 0; i < 9 * 1024; ++i) big << line << "\n";
  }
  for (const std::string& ca : {dir_ / "notpem", dir_ / "keyonly", dir_ / "absent", dir_.path(), dir_ / "fifo",
                                std::string("/dev/zero"), dir_ / "big"}) {
    auto t0 = std::chrono::steady_clock::now();
    Outcome bad = run(kAllow, {"--inspect-tls", "--net-ca", ca}, "echo ran", {}, false);
    EXPECT_EQ(bad.status, 125) << ca << ": " << bad.err;
    EXPECT_FALSE(has(bad.out, "ran")) << ca;
    EXPECT_TRUE(has(bad.err, "net-ca")) << ca << ": " << bad.err;
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(10)) << ca;
  }
  EXPECT_TRUE(lab_->processes_in_host().empty());
}

TEST_F(AttackTls, MissingModuleFailsCleanly) {
  std::string installed = "/usr/local/lib/ultari/libultari_tls.so";
  if (exists(installed) || exists("/usr/lib/ultari/libultari_tls.so")) GTEST_SKIP() << "an installed module exists";
  std::string bin = dir_ / "ultari";
  std::filesystem::copy_file(ULTARI_BIN, bin);
  chmod(bin.c_str(), 0755);
  Options opt;
  opt.binary = bin;
  Outcome r = run(kAllow, {}, "echo ran", opt);
  EXPECT_EQ(r.status, 125) << r.err;
  EXPECT_TRUE(has(r.err, "libultari_tls.so")) << r.err;
  EXPECT_FALSE(has(r.out, "ran"));
  // Negative control: without --inspect-tls the same binary runs.
  Outcome plain = run(kAllow, {}, "echo ran", opt, false);
  EXPECT_TRUE(has(plain.out, "ran")) << plain.err;
  EXPECT_TRUE(lab_->processes_in_host().empty());
}

// ---------------------------------------------------------------------------
// The CA's key and the trust bundle

// ultari-init (the sandbox's pid 1) is a copy of the supervisor made after
// the CA and the secrets were read: their bytes are in its memory. The
// payload must not be able to read it.
TEST_F(AttackTls, TheCaKeyIsNowhereTheSandboxCanRead) {
  std::string script =
      probe("mem", "procmem") +
      "grep -rl 'PRIVATE KEY' /etc/ssl /tmp /root /dev/shm /run 2>/dev/null; echo searched\n"
      "openssl crl2pkcs7 -nocrl -certfile /etc/ssl/certs/ca-certificates.crt | openssl pkcs7 -print_certs -noout | "
      "grep -c 'Ultari sandbox CA'\n"
      // Tampering with the bundle: write, remount, unmount.
      "(echo x >> /etc/ssl/certs/ca-certificates.crt) 2>/dev/null; echo write=$?\n"
      "mount -o remount,bind,rw /etc/ssl/certs/ca-certificates.crt 2>/dev/null; echo remount=$?\n"
      "umount /etc/ssl/certs/ca-certificates.crt 2>/dev/null; echo umount=$?\n";
  std::string host_bundle = read_file("/etc/ssl/certs/ca-certificates.crt");
  Options opt;
  opt.env = {std::string("ULTARI_TEST_KEY=") + kSecret};
  Outcome r = run(kAllow, {"--secret", "API_KEY=env:ULTARI_TEST_KEY@allowed.test"}, script, opt);
  auto l = by_label(r.out);
  ASSERT_TRUE(has(r.out, "searched")) << r.out << r.err;
  // Negative control: the probe can read its own environment.
  EXPECT_TRUE(has(l["mem"], "/proc/self/environ=read:")) << l["mem"];
  for (const char* p : {"/proc/1/environ=read", "/proc/1/mem=read", "/proc/1/maps=read", "ptrace=0", "vmread=16"})
    EXPECT_FALSE(has(l["mem"], p)) << l["mem"];
  EXPECT_FALSE(has(r.out, "PRIVATE KEY")) << r.out;
  EXPECT_FALSE(has(r.out, kSecret)) << r.out;
  EXPECT_TRUE(has(r.out, "\n2\n")) << r.out;  // the CA is in the bundle once (subject and issuer lines)
  EXPECT_FALSE(has(r.out, "write=0")) << r.out;
  EXPECT_FALSE(has(r.out, "remount=0")) << r.out;
  EXPECT_FALSE(has(r.out, "umount=0")) << r.out;
  EXPECT_EQ(read_file("/etc/ssl/certs/ca-certificates.crt"), host_bundle);
  EXPECT_FALSE(has(host_bundle, "Ultari sandbox CA"));
}

// ---------------------------------------------------------------------------
// The gateway under abuse: stalled handshakes, bad records, half-closes,
// big bodies. After each, a normal request must still work (the gateway
// serves other connections), and the gateway keeps no descriptors behind.

std::vector<pid_t> gateway_pids(const NetLab& lab) {
  std::vector<pid_t> out;
  for (pid_t p : lab.processes_in_host()) {
    std::string comm = read_file("/proc/" + std::to_string(p) + "/comm");
    if (has(comm, "ultari-net")) out.push_back(p);
  }
  return out;
}
int fd_count(pid_t p) {
  int n = 0;
  if (DIR* d = opendir(("/proc/" + std::to_string(p) + "/fd").c_str())) {
    while (readdir(d)) ++n;
    closedir(d);
  }
  return n - 2;
}

TEST_F(AttackTls, GatewaySurvivesStallsBadRecordsAndHalfCloses) {
  std::string script =
      probe("warm", "req direct allowed.test 443 allowed.test 0 '" + get("/warm", "allowed.test") + "'") +
      "touch /work/m1; while [ ! -e /work/go1 ]; do sleep 0.1; done\n" +
      probe("stall_hello", "stall 20 allowed.test hello") + probe("stall_partial", "stall 20 allowed.test partial") +
      probe("stall_none", "stall 20 allowed.test none") + probe("huge", "rawrec allowed.test huge") +
      probe("garbage", "rawrec allowed.test garbage") + probe("ccs", "rawrec allowed.test ccs") +
      probe("alerts", "rawrec allowed.test alertflood") + probe("half", "halfclose allowed.test") +
      probe("big", "big allowed.test 8") +
      // TLS 1.2 renegotiation and TLS 1.3 key updates from the client.
      "(printf 'GET /reneg1 HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n'; sleep 0.5; printf 'R\\n'; sleep 0.5; "
      " printf 'GET /reneg2 HTTP/1.1\\r\\nHost: allowed.test\\r\\nConnection: close\\r\\n\\r\\n'; sleep 1) | "
      "timeout 8 openssl s_client -quiet -no_ign_eof -tls1_2 -connect allowed.test:443 -servername allowed.test "
      ">/dev/null 2>&1; echo reneg=$?\n"
      "(printf 'GET /ku1 HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n'; sleep 0.5; printf 'K\\n'; sleep 0.5; "
      " printf 'GET /ku2 HTTP/1.1\\r\\nHost: allowed.test\\r\\nConnection: close\\r\\n\\r\\n'; sleep 1) | "
      "timeout 8 openssl s_client -quiet -no_ign_eof -tls1_3 -connect allowed.test:443 -servername allowed.test "
      ">/dev/null 2>&1; echo keyupdate=$?\n" +
      probe("after", "req direct allowed.test 443 allowed.test 0 '" + get("/after", "allowed.test") + "'") +
      "sleep 3; touch /work/m2; while [ ! -e /work/go2 ]; do sleep 0.1; done\n";
  TempDir work;
  chmod(work.path().c_str(), 0777);
  auto fut = std::async(std::launch::async, [&] {
    return run(kAllow + "[dlp]\n", {"--bind", work.path() + ":/work"}, script);
  });
  auto wait_for = [&](const std::string& f) {
    for (int i = 0; i < 900 && !exists(work / f); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    return exists(work / f);
  };
  int before = -1, after = -1;
  if (wait_for("m1")) {
    auto g = gateway_pids(*lab_);
    if (g.size() == 1) before = fd_count(g[0]);
    write_file(work / "go1", "");
  }
  if (wait_for("m2")) {
    auto g = gateway_pids(*lab_);
    // Flows still being decided may hold descriptors for up to the head
    // timeout (10 s); a leak never gives them back.
    for (int i = 0; g.size() == 1 && i < 150; ++i) {
      after = fd_count(g[0]);
      if (after <= before) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    write_file(work / "go2", "");
  }
  Outcome r = fut.get();
  auto l = by_label(r.out);
  ASSERT_TRUE(served(l["warm"], "path=/warm")) << r.out << r.err;
  for (const char* k : {"stall_hello", "stall_partial", "stall_none"})
    EXPECT_TRUE(served(l[k], "path=/after-stall")) << k << ": " << l[k];
  for (const char* k : {"huge", "garbage", "ccs", "alerts"}) EXPECT_TRUE(served(l[k], "path=/after-raw")) << k << ": " << l[k];
  EXPECT_TRUE(served(l["half"], "path=/half")) << l["half"];
  EXPECT_TRUE(served(l["big"], "path=/big")) << l["big"];
  EXPECT_TRUE(has(arrived("/big"), "\"body_len\":8388608")) << arrived("/big").substr(0, 300);
  EXPECT_TRUE(served(l["after"], "path=/after")) << l["after"];
  EXPECT_NE(arrived("/ku1"), "") << r.out;
  std::cout << "[ info ] renegotiation: " << (arrived("/reneg2").empty() ? "second request not served" : "served")
            << ", key update: " << (arrived("/ku2").empty() ? "second request not served" : "served") << "\n";
  // No descriptor left behind once the flows are over.
  ASSERT_GE(before, 0) << "gateway not found";
  EXPECT_LE(after, before) << "gateway fds before " << before << ", after " << after;
}

}  // namespace
}  // namespace ultari::test
