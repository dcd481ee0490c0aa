#include "net/inspection.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <string_view>
#include <cstdlib>

#include "util/error.h"
#include "util/fd.h"

namespace ultari::net {
namespace {

constexpr size_t kMaxSecretBytes = 64 * 1024;
constexpr size_t kMaxBundleBytes = 8 * 1024 * 1024;

// A regular file of at most `max` bytes, read from an fd opened by the caller.
std::string read_regular(int fd, size_t max, const std::string& what) {
  struct stat st{};
  if (fstat(fd, &st) != 0) throw_errno(what);
  if (!S_ISREG(st.st_mode)) throw Error(what + " is not a regular file");
  if (static_cast<uint64_t>(st.st_size) > max) throw Error(what + " is larger than " + std::to_string(max) + " bytes");
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_errno(what);
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > max) throw Error(what + " is larger than " + std::to_string(max) + " bytes");
  }
  return out;
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
    if (c == '\r' || c == '\n' || c == '\0')
      throw Error("secret " + s.name + ": the value from " + s.from +
                  " holds a line break or NUL byte, which cannot go into an HTTP header");
  return v;
}

}  // namespace

void fill_placeholders(NetworkSpec& policy) {
  for (auto& s : policy.secrets) {
    if (!s.placeholder.empty()) continue;
    unsigned char b[16];
    if (getrandom(b, sizeof b, 0) != sizeof b) throw_errno("getrandom");
    char hex[33];
    for (int i = 0; i < 16; ++i) std::snprintf(hex + 2 * i, 3, "%02x", b[i]);
    s.placeholder = std::string("ultari-secret-") + hex;
  }
}

Inspection prepare_inspection(const NetworkSpec& policy, const std::string& label) {
  Inspection in;
  for (const auto& s : policy.secrets) {
    if (s.placeholder.empty()) throw Error("internal: secret " + s.name + " has no placeholder");
    in.secrets.push_back({s.name, s.placeholder, secret_value(s), s.hosts, s.headers.empty() ? kSecretHeaders : s.headers});
  }
  if (!policy.inspect_tls) return in;
  if (!policy.ca_file.empty()) in.extra_ca_pem = read_path(policy.ca_file, kMaxBundleBytes, "--net-ca");
  in.engine = tls::load();
  std::string error;
  if (!in.engine->make_ca(label, in.ca, error)) throw Error("--inspect-tls: " + error);
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

std::string trust_bundle(const std::string& lower_dir, const std::string& ca_pem) {
  std::string bundle;
  UniqueFd root(open(lower_dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!root) throw_errno("root filesystem '" + lower_dir + "'");
  // A link in the root is resolved as the sandbox would (inside it), never
  // to a host file.
  open_how how{};
  how.flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY;
  how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
  UniqueFd fd(static_cast<int>(syscall(SYS_openat2, root.get(), kTrustBundle, &how, sizeof how)));
  if (fd) {
    try {
      bundle = read_regular(fd.get(), kMaxBundleBytes, std::string("the root's ") + kTrustBundle);
    } catch (const Error&) {
      bundle.clear();  // not a usable bundle: the CA alone
    }
  }
  if (!bundle.empty() && bundle.back() != '\n') bundle += '\n';
  return bundle + ca_pem;
}

}  // namespace ultari::net
