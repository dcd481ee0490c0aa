#include "net/inspection.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <netdb.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string_view>
#include <cstdlib>

#include "net/upstream.h"
#include "util/error.h"
#include "util/random.h"
#include "util/fd.h"
#include "util/openat2.h"
#include "util/paths.h"

namespace ultari::net {
namespace {

constexpr size_t kMaxSecretBytes = 64 * 1024;
constexpr size_t kMaxBundleBytes = 8 * 1024 * 1024;

// A regular file of at most `max` bytes, read from an fd opened by the caller.
// Read straight into the string, reserved once: no stray copies of a
// secret file's bytes in freed memory.
std::string read_regular(int fd, size_t max, const std::string& what) {
  struct stat st{};
  if (fstat(fd, &st) != 0) throw_errno(what);
  if (!S_ISREG(st.st_mode)) throw Error(what + " is not a regular file");
  if (static_cast<uint64_t>(st.st_size) > max) throw Error(what + " is larger than " + std::to_string(max) + " bytes");
  std::string out;
  out.resize(std::min<size_t>(max, static_cast<size_t>(st.st_size)) + 1);
  size_t have = 0;
  for (;;) {
    if (have == out.size()) out.resize(std::min(max + 1, out.size() * 2));  // it grew meanwhile
    ssize_t n = read(fd, out.data() + have, out.size() - have);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_errno(what);
    if (n == 0) break;
    have += static_cast<size_t>(n);
    if (have > max) throw Error(what + " is larger than " + std::to_string(max) + " bytes");
  }
  out.resize(have);
  return out;
}

bool write_all(int fd, const std::string& s) {
  for (size_t done = 0; done < s.size();) {
    ssize_t n = write(fd, s.data() + done, s.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

// The CA made in a child process: its certificate comes back now, its key
// sealed in a pipe.
void make_ca_apart(tls::Engine& engine, const std::string& label, Inspection& in) {
  int cert[2], key[2];
  if (pipe2(cert, O_CLOEXEC) != 0) throw_errno("pipe");
  UniqueFd cert_r(cert[0]), cert_w(cert[1]);
  if (pipe2(key, O_CLOEXEC) != 0) throw_errno("pipe");
  UniqueFd key_r(key[0]), key_w(key[1]);
  pid_t pid = fork();
  if (pid < 0) throw_errno("fork (making the sandbox's CA)");
  if (pid == 0) {
    tls::Ca ca;
    std::string error;
    bool ok = engine.make_ca(label, ca, error);
    bool sent = write_all(cert_w.get(), ok ? ca.cert_pem : "E" + error) && (!ok || write_all(key_w.get(), ca.key_pem));
    _exit(sent ? 0 : 1);
  }
  cert_w.reset();
  key_w.reset();
  std::string got = read_fd(cert_r.get());
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (got.starts_with("E")) throw Error("--inspect-tls: " + got.substr(1));
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || got.empty())
    throw Error("--inspect-tls: the process making the sandbox's CA failed");
  in.ca.cert_pem = std::move(got);
  in.ca_key = Sealed(key_r);
}

std::string read_path(const std::string& path, size_t max, const std::string& what) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY));
  if (!fd) throw_errno(what + " '" + path + "'");
  return read_regular(fd.get(), max, what + " '" + path + "'");
}

std::string secret_value(const NetworkSpec::Secret& s) {
  std::string v;
  if (s.from.starts_with("env:")) {
    std::string var = s.from.substr(4);
    const char* e = std::getenv(var.c_str());
    if (!e) throw Error("secret " + s.name + ": the environment variable " + var + " is not set");
    v = e;
  } else {
    v = read_path(s.from.substr(5), kMaxSecretBytes, "secret " + s.name + ": file");
    if (v.ends_with("\r\n")) v.resize(v.size() - 2);
    else if (v.ends_with("\n")) v.pop_back();
  }
  if (v.empty()) throw Error("secret " + s.name + ": the value from " + s.from + " is empty");
  for (char c : v)
    if (c == '\r' || c == '\n' || c == '\0') {
      explicit_bzero(v.data(), v.size());
      throw Error("secret " + s.name + ": the value from " + s.from +
                  " holds a line break or NUL byte, which cannot go into an HTTP header");
    }
  return v;
}

}  // namespace

void fill_placeholders(NetworkSpec& policy) {
  for (auto& s : policy.secrets) {
    if (!s.placeholder.empty()) continue;
    s.placeholder = "ultari-secret-" + random_hex(16);
  }
}

Sealed::Sealed(std::string& bytes) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) throw_errno("pipe");
  r_.reset(p[0]);
  UniqueFd w(p[1]);
  if (bytes.size() >= 65536) fcntl(w.get(), F_SETPIPE_SZ, static_cast<int>(bytes.size() + 4096));
  bool ok = write_all(w.get(), bytes);
  explicit_bzero(bytes.data(), bytes.size());
  bytes.clear();
  if (!ok) throw_errno("pipe (sealing a secret)");
}

Sealed::Sealed(UniqueFd& read_end) : r_(std::move(read_end)) {}

std::string Sealed::open() {
  if (!r_) return {};
  std::string out = read_fd(r_.get());
  r_.reset();
  return out;
}

void Inspection::unseal() {
  ca.key_pem = ca_key.open();
  for (size_t i = 0; i < values.size() && i < secrets.size(); ++i) secrets[i].value = values[i].open();
  values.clear();
  if (upstream) upstream->auth = upstream_auth.open();
}

void Inspection::wipe() {
  // explicit_bzero: a plain fill of memory about to be freed may be elided.
  for (auto& v : secrets) explicit_bzero(v.value.data(), v.value.size());
  explicit_bzero(ca.key_pem.data(), ca.key_pem.size());
  if (upstream) explicit_bzero(upstream->auth.data(), upstream->auth.size());
}

namespace {

UpstreamProxy resolve_upstream(const NetworkSpec& policy, Sealed& auth) {
  UpstreamUrl url = parse_upstream(policy.upstream);
  UpstreamProxy up;
  up.port = url.port;
  up.label = url.host + ":" + std::to_string(url.port);
  if (inet_pton(AF_INET, url.host.c_str(), &up.addr) != 1) {
    addrinfo hints{};
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    int rc = getaddrinfo(url.host.c_str(), nullptr, &hints, &res);
    if (rc != 0 || !res)
      throw Error("--net-upstream: cannot resolve the proxy '" + url.host + "': " + gai_strerror(rc));
    up.addr = reinterpret_cast<sockaddr_in*>(res->ai_addr)->sin_addr;
    freeaddrinfo(res);
  }
  if (!policy.upstream_auth.empty()) {
    std::string value = secret_value({"--net-upstream-auth", policy.upstream_auth, {}, {}, {}});
    std::string header;
    try {
      header = basic_credentials(value);
    } catch (const Error&) {
      explicit_bzero(value.data(), value.size());
      throw;
    }
    explicit_bzero(value.data(), value.size());
    auth = Sealed(header);
  }
  return up;
}

}  // namespace

Inspection prepare_inspection(const NetworkSpec& policy, const std::string& label) {
  Inspection in;
  for (const auto& s : policy.secrets) {
    if (s.placeholder.empty()) throw Error("internal: secret " + s.name + " has no placeholder");
    std::string value = secret_value(s);
    in.values.emplace_back(value);
    in.secrets.push_back({s.name, s.placeholder, "", s.hosts, s.headers.empty() ? kSecretHeaders : s.headers});
  }
  if (!policy.upstream.empty()) in.upstream = resolve_upstream(policy, in.upstream_auth);
  if (!policy.inspect_tls) return in;
  if (!policy.ca_file.empty()) in.extra_ca_pem = read_path(policy.ca_file, kMaxBundleBytes, "--net-ca");
  in.engine = tls::load();
  make_ca_apart(*in.engine, label, in);
  return in;
}

std::string swap_secrets(const std::string& head, const std::vector<const SecretValue*>& secrets) {
  constexpr size_t kMaxHead = 256 * 1024;  // what one head may grow to
  std::string out;
  size_t eol = head.find("\r\n");
  if (eol == std::string::npos) return head;
  out.append(head, 0, eol + 2);  // the request line: never
  for (size_t pos = eol + 2; pos < head.size();) {
    size_t end = head.find("\r\n", pos);
    if (end == std::string::npos) end = head.size();
    std::string_view line(head.data() + pos, end - pos);
    size_t colon = line.find(':');
    std::string key(line.substr(0, colon == std::string_view::npos ? 0 : colon));
    std::transform(key.begin(), key.end(), key.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    // One pass over the line: at each position the first placeholder that
    // starts there (of a secret allowed in this header) is replaced.
    size_t i = 0;
    while (i < line.size()) {
      const SecretValue* hit = nullptr;
      if (colon != std::string_view::npos && i > colon)
        for (const SecretValue* v : secrets)
          if (line.compare(i, v->placeholder.size(), v->placeholder) == 0 &&
              std::find(v->headers.begin(), v->headers.end(), key) != v->headers.end() &&
              out.size() + v->value.size() <= kMaxHead) {
            hit = v;
            break;
          }
      if (hit) {
        out += hit->value;
        i += hit->placeholder.size();
      } else {
        out += line[i++];
      }
    }
    out.append("\r\n");
    pos = end + 2;
  }
  if (!head.ends_with("\r\n")) out.resize(out.size() - 2);
  return out;
}

std::vector<std::string> trust_env() {
  std::string b = kTrustBundle;
  return {"SSL_CERT_FILE=" + b, "REQUESTS_CA_BUNDLE=" + b, "CURL_CA_BUNDLE=" + b, "NODE_EXTRA_CA_CERTS=" + b,
          "PIP_CERT=" + b};
}

std::string trust_bundle(const std::vector<std::string>& lower_dirs, const std::string& ca_pem) {
  std::string bundle;
  for (const auto& lower_dir : lower_dirs) {
    UniqueFd root(open(lower_dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!root) throw_errno("root filesystem '" + lower_dir + "'");
    // A link in the root is resolved as the sandbox would (inside it), never
    // to a host file.
    open_how how{};
    how.flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY;
    how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
    UniqueFd fd(openat2_retrying(root.get(), kTrustBundle, how));
    if (!fd) continue;
    try {
      bundle = read_regular(fd.get(), kMaxBundleBytes, std::string("the root's ") + kTrustBundle);
    } catch (const Error&) {
      bundle.clear();  // not a usable bundle: the CA alone
    }
    break;
  }
  if (!bundle.empty() && bundle.back() != '\n') bundle += '\n';
  return bundle + ca_pem;
}

}  // namespace ultari::net
