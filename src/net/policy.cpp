#include "net/policy.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cctype>
#include <set>
#include <toml++/toml.h>

#include "net/upstream.h"
#include "util/error.h"

namespace ultari::net {

std::string normalize_name(std::string_view name, bool pattern) {
  std::string n(name);
  if (!n.empty() && n.back() == '.') n.pop_back();
  std::transform(n.begin(), n.end(), n.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  std::string_view body = n;
  if (pattern && body.starts_with("*.")) body.remove_prefix(2);
  if (n == "*") throw Error("'*' would allow every name: use --net open for that");
  if (body.empty() || body.size() > 253) throw Error("'" + std::string(name) + "' is not a domain name");
  size_t label = 0;
  for (size_t i = 0; i <= body.size(); ++i) {
    if (i == body.size() || body[i] == '.') {
      if (label == 0 || label > 63) throw Error("'" + std::string(name) + "' is not a domain name (empty or long label)");
      label = 0;
      continue;
    }
    char c = body[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
    if (!ok) {
      throw Error("'" + std::string(name) + "' is not a domain name" +
                  (c == '*' ? " (a wildcard is only allowed as a leading '*.')" : ""));
    }
    ++label;
  }
  return n;
}

namespace {

bool is_ip_literal(std::string_view name) {
  in_addr a4;
  in6_addr a6;
  std::string n(name);
  return inet_pton(AF_INET, n.c_str(), &a4) == 1 || inet_pton(AF_INET6, n.c_str(), &a6) == 1;
}

}  // namespace

std::string plain_host_name(std::string_view host) {
  std::string name;
  try {
    name = normalize_name(host, false);
  } catch (const Error&) {
    return "";
  }
  // (inet_aton, which getaddrinfo follows, also reads 0x7f.1, 0177.0.0.1
  // and 2130706433 as addresses; no top-level domain is all digits or
  // begins with "0x")
  in_addr a4;
  std::string_view last = std::string_view(name).substr(name.rfind('.') + 1);
  bool numeric_tld = last.starts_with("0x") ||
                     std::all_of(last.begin(), last.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); });
  if (numeric_tld || inet_aton(name.c_str(), &a4) != 0 || is_ip_literal(name) || name == "localhost" ||
      name.ends_with(".localhost") || name.find('.') == std::string::npos)
    return "";
  return name;
}

Decision decide(const NetworkSpec& policy, std::string_view raw) {
  std::string name;
  try {
    name = normalize_name(raw, false);
  } catch (const Error&) {
    return {false, "no-rule"};
  }
  for (const auto& d : policy.deny)
    if (pattern_matches(d, name)) return {false, d};
  if (policy.mode == NetworkSpec::Mode::Open) return {true, "open"};
  if (policy.mode != NetworkSpec::Mode::Allow || is_ip_literal(name)) return {false, "no-rule"};
  for (const auto& a : policy.allow)
    if (pattern_matches(a, name)) return {true, a};
  return {false, "no-rule"};
}

bool port_allowed(const NetworkSpec& policy, uint16_t port) {
  return std::find(policy.ports.begin(), policy.ports.end(), port) != policy.ports.end();
}

bool is_public(in_addr addr) {
  uint32_t a = ntohl(addr.s_addr);
  auto in = [a](uint32_t net, int bits) { return (a >> (32 - bits)) == (net >> (32 - bits)); };
  return !(in(0x00000000, 8) ||     // "this network"
           in(0x0A000000, 8) ||     // 10/8
           in(0x64400000, 10) ||    // 100.64/10 shared (CGNAT)
           in(0x7F000000, 8) ||     // loopback
           in(0xA9FE0000, 16) ||    // link-local, cloud metadata
           in(0xAC100000, 12) ||    // 172.16/12
           in(0xC0000000, 24) ||    // IETF protocol assignments
           in(0xC0A80000, 16) ||    // 192.168/16
           in(0xC6120000, 15) ||    // 198.18/15 benchmarking
           in(0xE0000000, 4) ||     // multicast
           in(0xF0000000, 4));      // reserved, broadcast
}

void apply_net_option(NetworkSpec& into, const std::string& value) {
  using Mode = NetworkSpec::Mode;
  if (value == "none") {
    into.mode = Mode::None;
    into.allow.clear();
    return;
  }
  if (value == "open") {
    if (into.mode == Mode::Allow) throw Error("--net open contradicts an allow list");
    into.mode = Mode::Open;
    return;
  }
  if (!value.starts_with("allow=")) throw Error("--net '" + value + "': expected none, open or allow=NAME[,NAME...]");
  if (into.mode == Mode::Open) throw Error("--net allow=... contradicts --net open");
  std::string_view rest = std::string_view(value).substr(6);
  if (rest.empty()) throw Error("--net allow= names no domain");
  while (!rest.empty()) {
    size_t comma = rest.find(',');
    std::string_view item = rest.substr(0, comma);
    if (!item.empty()) into.allow.push_back(normalize_name(item, true));
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
  }
  into.mode = Mode::Allow;
}

namespace {

std::string where(const std::string& path, const toml::node& node) {
  const auto& src = node.source();
  return path + ":" + std::to_string(src.begin.line);
}

std::vector<std::string> names(const toml::table& t, const char* key, const std::string& path) {
  std::vector<std::string> out;
  const toml::node* n = t.get(key);
  if (!n) return out;
  const toml::array* arr = n->as_array();
  if (!arr) throw Error(where(path, *n) + ": '" + key + "' must be a list of names");
  for (const auto& item : *arr) {
    auto s = item.value<std::string>();
    if (!s) throw Error(where(path, item) + ": '" + key + "' must hold strings");
    try {
      out.push_back(normalize_name(*s, true));
    } catch (const Error& e) {
      throw Error(where(path, item) + ": " + key + ": " + e.what());
    }
  }
  return out;
}

}  // namespace

void load_policy_file(NetworkSpec& into, const std::string& path) {
  toml::table t;
  try {
    t = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    const auto& b = e.source().begin;
    throw Error(path + ":" + std::to_string(b.line) + ":" + std::to_string(b.column) + ": " +
                std::string(e.description()));
  }
  for (const auto& [key, node] : t) {
    std::string k(key.str());
    if (k != "allow" && k != "deny" && k != "ports" && k != "dlp" && k != "secret" && k != "inspect_tls" &&
        k != "upstream" && k != "upstream_auth")
      throw Error(where(path, node) + ": unknown key '" + k +
                  "' (expected allow, deny, ports, inspect_tls, upstream, upstream_auth, dlp, secret)");
  }
  auto allow = names(t, "allow", path);
  auto deny = names(t, "deny", path);
  if (t.contains("allow")) {
    if (into.mode == NetworkSpec::Mode::Open) throw Error(path + ": 'allow' contradicts --net open");
    into.mode = NetworkSpec::Mode::Allow;
  }
  into.allow.insert(into.allow.end(), allow.begin(), allow.end());
  into.deny.insert(into.deny.end(), deny.begin(), deny.end());
  if (const toml::node* n = t.get("ports")) {
    const toml::array* arr = n->as_array();
    if (!arr) throw Error(where(path, *n) + ": 'ports' must be a list of port numbers");
    into.ports.clear();
    for (const auto& item : *arr) {
      auto p = item.value<int64_t>();
      if (!p || *p < 1 || *p > 65535) throw Error(where(path, item) + ": ports: not a port number (1-65535)");
      into.ports.push_back(static_cast<uint16_t>(*p));
    }
  }
  if (const toml::node* n = t.get("dlp")) {
    const toml::table* d = n->as_table();
    if (!d) throw Error(where(path, *n) + ": 'dlp' must be a table ([dlp])");
    for (const auto& [key, node] : *d) {
      std::string k(key.str());
      if (k != "action" && k != "literals")
        throw Error(where(path, node) + ": unknown key 'dlp." + k + "' (expected action, literals)");
    }
    into.dlp.enabled = true;
    if (const toml::node* a = d->get("action")) {
      auto v = a->value<std::string>();
      if (!v || (*v != "block" && *v != "log")) throw Error(where(path, *a) + ": dlp.action must be \"block\" or \"log\"");
      into.dlp.block = *v == "block";
    }
    if (const toml::node* l = d->get("literals")) {
      const toml::array* arr = l->as_array();
      if (!arr) throw Error(where(path, *l) + ": dlp.literals must be a list of strings");
      for (const auto& item : *arr) {
        auto v = item.value<std::string>();
        if (!v) throw Error(where(path, item) + ": dlp.literals must hold strings");
        if (v->size() < 4) throw Error(where(path, item) + ": dlp.literals: a secret of fewer than 4 characters would match everywhere");
        into.dlp.literals.push_back(*v);
      }
    }
  }
  if (const toml::node* n = t.get("inspect_tls")) {
    auto v = n->value<bool>();
    if (!v) throw Error(where(path, *n) + ": inspect_tls must be true or false");
    into.inspect_tls = *v;
  }
  for (auto [key, field] : {std::pair{"upstream", &into.upstream}, std::pair{"upstream_auth", &into.upstream_auth}})
    if (const toml::node* n = t.get(key)) {
      auto v = n->value<std::string>();
      if (!v) throw Error(where(path, *n) + ": " + key + " must be a string");
      *field = *v;
      try {
        if (field == &into.upstream) parse_upstream(*v);
      } catch (const Error& e) {
        throw Error(where(path, *n) + ": " + e.what());
      }
    }
  if (const toml::node* n = t.get("secret")) {
    const toml::array* arr = n->as_array();
    if (!arr) throw Error(where(path, *n) + ": 'secret' must be an array of tables ([[secret]])");
    for (const auto& item : *arr) {
      const toml::table* st = item.as_table();
      if (!st) throw Error(where(path, item) + ": 'secret' must be an array of tables ([[secret]])");
      NetworkSpec::Secret secret;
      for (const auto& [key, node] : *st) {
        std::string k(key.str());
        if (k != "name" && k != "from" && k != "hosts" && k != "headers")
          throw Error(where(path, node) + ": unknown key 'secret." + k + "' (expected name, from, hosts, headers)");
      }
      auto name = (*st)["name"].value<std::string>();
      auto from = (*st)["from"].value<std::string>();
      if (!name || !from) throw Error(where(path, item) + ": a [[secret]] needs name and from (strings)");
      secret.name = *name;
      secret.from = *from;
      secret.hosts = names(*st, "hosts", path);
      if (const toml::node* h = st->get("headers")) {
        const toml::array* arr = h->as_array();
        if (!arr) throw Error(where(path, *h) + ": secret.headers must be a list of header names");
        for (const auto& item : *arr) {
          auto v = item.value<std::string>();
          if (!v) throw Error(where(path, item) + ": secret.headers must hold strings");
          std::string lower = *v;
          std::transform(lower.begin(), lower.end(), lower.begin(),
                         [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
          secret.headers.push_back(lower);
        }
      }
      try {
        check_secret(secret);
      } catch (const Error& e) {
        throw Error(where(path, item) + ": " + e.what());
      }
      into.secrets.push_back(std::move(secret));
    }
  }
  // A policy file names an egress policy: without allow it still enables
  // the network (in Allow mode with nothing allowed) unless --net open.
  if (into.mode == NetworkSpec::Mode::None) into.mode = NetworkSpec::Mode::Allow;
}

void check_secret(const NetworkSpec::Secret& s) {
  bool name_ok = !s.name.empty() && !std::isdigit(static_cast<unsigned char>(s.name[0]));
  for (char c : s.name) name_ok = name_ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '_');
  if (!name_ok) throw Error("secret '" + s.name + "': the name must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*)");
  if (!(s.from.starts_with("env:") && s.from.size() > 4) && !(s.from.starts_with("file:") && s.from.size() > 5))
    throw Error("secret " + s.name + ": '" + s.from + "' must be env:VARIABLE or file:PATH");
  if (s.hosts.empty()) throw Error("secret " + s.name + ": no host to send it to");
  for (const auto& h : s.headers) {
    bool token = !h.empty();
    for (char c : h) token = token && (std::islower(static_cast<unsigned char>(c)) || std::isdigit(static_cast<unsigned char>(c)) || c == '-' || c == '_');
    if (!token) throw Error("secret " + s.name + ": '" + h + "' is not a header name");
  }
  for (const auto& h : s.hosts) normalize_name(h, true);
}

void apply_secret_option(NetworkSpec& into, const std::string& value) {
  size_t eq = value.find('=');
  size_t at = value.rfind('@');
  if (eq == std::string::npos || at == std::string::npos || at < eq)
    throw Error("--secret '" + value + "': expected NAME=env:VARIABLE@HOST[,HOST...] or NAME=file:PATH@HOST[,HOST...]");
  NetworkSpec::Secret secret;
  secret.name = value.substr(0, eq);
  secret.from = value.substr(eq + 1, at - eq - 1);
  std::string_view rest = std::string_view(value).substr(at + 1);
  while (!rest.empty()) {
    size_t comma = rest.find(',');
    std::string_view item = rest.substr(0, comma);
    if (!item.empty()) secret.hosts.push_back(normalize_name(item, true));
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
  }
  check_secret(secret);
  into.secrets.push_back(std::move(secret));
}

// "*.x" matches a.x and a.b.x, never x.
bool pattern_matches(const std::string& pattern, std::string_view name) {
  if (pattern.starts_with("*.")) {
    std::string_view suffix = std::string_view(pattern).substr(1);  // ".x"
    return name.size() > suffix.size() && name.ends_with(suffix);
  }
  return name == pattern;
}

void validate(const NetworkSpec& policy) {
  for (const auto* list : {&policy.allow, &policy.deny})
    for (const auto& n : *list) normalize_name(n, true);
  if (policy.mode != NetworkSpec::Mode::None && policy.ports.empty())
    throw Error("network policy: no port is allowed (ports = [])");
  if (!policy.resolver.empty()) {
    in_addr a;
    if (inet_pton(AF_INET, policy.resolver.c_str(), &a) != 1)
      throw Error("--net-resolver '" + policy.resolver + "': expected an IPv4 address");
  }
  if (policy.mode == NetworkSpec::Mode::None && (policy.inspect_tls || !policy.secrets.empty() || !policy.ca_file.empty()))
    throw Error("--inspect-tls, --secret and --net-ca need a network (--net allow=... or --net open)");
  if (!policy.ca_file.empty() && !policy.inspect_tls)
    throw Error("--net-ca is for the upstream side of --inspect-tls (without it the sandbox checks certificates itself)");
  if (!policy.upstream.empty()) {
    if (policy.mode == NetworkSpec::Mode::None)
      throw Error("--net-upstream needs a network (--net allow=... or --net open)");
    parse_upstream(policy.upstream);
  }
  if (!policy.upstream_auth.empty()) {
    if (policy.upstream.empty()) throw Error("--net-upstream-auth needs --net-upstream");
    const auto& f = policy.upstream_auth;
    if (!(f.starts_with("env:") && f.size() > 4) && !(f.starts_with("file:") && f.size() > 5))
      throw Error("--net-upstream-auth '" + f + "': expected env:VARIABLE or file:PATH (holding user:password)");
  }
  std::set<std::string> seen;
  for (const auto& s : policy.secrets) {
    check_secret(s);
    if (!seen.insert(s.name).second) throw Error("secret " + s.name + " is given twice");
    if (!policy.inspect_tls)
      throw Error("secret " + s.name + " needs --inspect-tls: the gateway can only put the value into requests it can read");
    for (const auto& h : s.hosts)
      if (!h.starts_with("*.") && !decide(policy, h).allow)
        throw Error("secret " + s.name + " is for " + h + ", which the network policy does not allow");
  }
}

}  // namespace ultari::net
