// What --inspect-tls, --secret and --net-upstream hand to the gateway: the
// TLS engine and the sandbox's CA, the extra upstream CA, the secrets' real
// values, and where the upstream proxy is with its credentials.
// Made by the supervisor before the sandbox exists; the values never enter
// the sandbox (it gets placeholders in its environment).
#pragma once
#include <netinet/in.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "net/tls.h"
#include "util/fd.h"
#include "spec/spec.h"

namespace ultari::net {

struct SecretValue {
  std::string name;         // environment variable inside
  std::string placeholder;  // what the sandbox holds
  std::string value;        // what requests to `hosts` carry instead
  std::vector<std::string> hosts;
  std::vector<std::string> headers;  // lower case; never empty
};

// The headers a secret goes into unless its policy names others: where
// APIs take credentials. Never the request line or another header, which
// servers echo back (a 404 page, a redirect, CORS Origin reflection).
inline const std::vector<std::string> kSecretHeaders = {"authorization", "proxy-authorization", "x-api-key",
                                                         "api-key", "x-goog-api-key", "x-auth-token"};

// `head` (a complete HTTP request head) with the placeholders of `secrets`
// replaced by their values in the values of their headers only.
std::string swap_secrets(const std::string& head, const std::vector<const SecretValue*>& secrets);

// Bytes kept in a pipe, out of this process's memory, until open(): a
// process cloned meanwhile (the sandbox's init) holds no copy of them.
class Sealed {
 public:
  Sealed() = default;
  explicit Sealed(std::string& bytes);  // moves `bytes` into a pipe and wipes them
  explicit Sealed(UniqueFd& read_end);   // a pipe someone else filled
  std::string open();                    // once
 private:
  UniqueFd r_;
};

// --net-upstream: the proxy's address (resolved before the sandbox exists)
// and its credentials.
struct UpstreamProxy {
  in_addr addr{};
  uint16_t port = 0;
  std::string label;  // "host:port" as given, for the audit log
  std::string auth;   // the Proxy-Authorization value; empty without --net-upstream-auth (or until unseal())
};

struct Inspection {
  std::unique_ptr<tls::Engine> engine;  // null without --inspect-tls
  tls::Ca ca;                           // key_pem empty until unseal()
  std::string extra_ca_pem;             // --net-ca
  std::vector<SecretValue> secrets;     // values empty until unseal()
  std::optional<UpstreamProxy> upstream;  // --net-upstream
  // Fills in the CA's key, the secrets' values and the upstream's
  // credentials (after the sandbox's init was cloned: they never were in
  // its memory).
  void unseal();
  // Wipes them (in a process that handed them on).
  void wipe();

  Sealed ca_key;
  std::vector<Sealed> values;
  Sealed upstream_auth;
};

// Gives every secret without one a fresh placeholder ("ultari-secret-" and
// 32 random hex digits).
void fill_placeholders(NetworkSpec& policy);

// Loads the TLS module, makes the sandbox's CA (in a short-lived child
// process) and reads --net-ca and the secrets' values (env: from this
// process's environment, file: a file of at most 64 KiB, one trailing
// newline dropped); resolves the upstream proxy and reads its credentials
// the same way; the key and the values come back sealed. Throws Error
// naming a missing variable, an unreadable file, a value that cannot go
// into an HTTP header or a proxy that does not resolve. `label` names the
// CA (the sandbox id).
Inspection prepare_inspection(const NetworkSpec& policy, const std::string& label);

// Where the sandbox's trust store is, and the environment that points
// clients with a bundle of their own (Python requests, pip, Node) at it.
inline constexpr const char* kTrustBundle = "/etc/ssl/certs/ca-certificates.crt";
std::vector<std::string> trust_env();

// The sandbox's trust bundle: the root's own bundle (from the top-most of
// `lower_dirs` that has one, read inside it, never following a link out of
// it) with the CA added.
std::string trust_bundle(const std::vector<std::string>& lower_dirs, const std::string& ca_pem);

}  // namespace ultari::net
