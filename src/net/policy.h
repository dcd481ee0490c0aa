// The egress policy: which names a sandbox may reach, and how front ends
// build one (the --net shorthand, a TOML policy file).
#pragma once
#include <netinet/in.h>

#include <string>
#include <string_view>

#include "spec/spec.h"

namespace ultari::net {

// Lower case, trailing dot removed. Throws Error for a name that is not a
// DNS name (or a "*.suffix" pattern when `pattern`): a bare "*" is refused.
std::string normalize_name(std::string_view name, bool pattern);

// `host` as a name a policy can allow by itself (normalize_name's form):
// a DNS name with a dot, not an address (nor all digits and dots) and not
// localhost; "" for anything else.
std::string plain_host_name(std::string_view host);

struct Decision {
  bool allow = false;
  std::string reason;  // the rule that decided ("pypi.org", "*.x"), or "no-rule", "open"
};
// Deny wins over allow; in Open mode every name not denied is allowed.
Decision decide(const NetworkSpec& policy, std::string_view name);
bool port_allowed(const NetworkSpec& policy, uint16_t port);

// Only public unicast addresses may be reached: not loopback, private,
// shared (CGNAT), link-local (cloud metadata), multicast, reserved or "this
// network". Address in network byte order.
bool is_public(in_addr addr);

// Front ends: "allow=a,b" / "none" / "open" (the --net option), added to
// `into`. Throws Error naming the bad part.
void apply_net_option(NetworkSpec& into, const std::string& value);
// "NAME=env:VAR@host[,host]" / "NAME=file:PATH@host" (the --secret option).
void apply_secret_option(NetworkSpec& into, const std::string& value);
// A TOML policy file: allow, deny, ports, inspect_tls, [dlp], [[secret]].
// Throws Error with the file's name and the line of the problem.
void load_policy_file(NetworkSpec& into, const std::string& path);
// A secret's name, source and hosts are well-formed. Throws Error.
void check_secret(const NetworkSpec::Secret& secret);
// `name` (normalised) matches `pattern` (a name or "*.suffix").
bool pattern_matches(const std::string& pattern, std::string_view name);
// Checks a complete policy (front ends call it once all options are in).
void validate(const NetworkSpec& policy);

}  // namespace ultari::net
