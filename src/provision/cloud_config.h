// cloud-init `#cloud-config` user-data, read with yaml-cpp into what
// provisioning runs. Key names and value shapes are cloud-init's (its JSON
// schema, schema-cloud-config-v1.json); Ultari is stricter where a declared
// environment would otherwise come out wrong without a word:
//   - malformed YAML or a value of the wrong type: an Error with line and
//     column, nothing is run;
//   - an unknown key, at the top level or inside a module
//     (write_files[2].mode): a warning naming the key path and its line;
//   - a cloud-init module Ultari does not run (ntp, power_state, ...): a
//     warning naming it.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace ultari::provision {

// A bootcmd/runcmd item: a string runs with `sh -c`, a list as argv.
struct Command {
  std::string shell;
  std::vector<std::string> argv;
  int line = 0;
  std::string describe() const;  // the item as written, for messages
};

struct WriteFile {
  std::string path;      // absolute, normalised, no ".." (checked)
  std::string content;   // after base64 decoding; gzip is undone inside the build sandbox
  bool gzip = false;     // content is gzip-compressed
  std::string owner = "root:root";
  unsigned permissions = 0644;
  bool append = false;
  bool defer = false;
  int line = 0;
};

struct User {
  std::string name;
  bool is_default = false;  // the "default" entry: the distribution's default user
  std::string gecos, shell, homedir, primary_group, hashed_passwd, plain_text_passwd, expiredate;
  std::vector<std::string> groups;
  std::vector<std::string> sudo;  // sudoers rules ("ALL=(ALL) NOPASSWD:ALL")
  std::vector<std::string> ssh_authorized_keys;
  std::optional<uint32_t> uid;
  std::optional<int64_t> inactive;
  bool lock_passwd = true;
  bool no_create_home = false;
  bool no_user_group = false;
  bool system = false;
  bool create_groups = true;
  int line = 0;
};

struct Group {
  std::string name;
  std::vector<std::string> members;
  int line = 0;
};

struct Package {
  std::string name;
  std::string version;  // "" = any
};

struct AptSource {
  std::string name;      // the key under apt.sources
  std::string source;    // a deb line ($MIRROR, $RELEASE, $PRIMARY, $SECURITY are replaced)
  std::string key;       // an ASCII-armoured key
  std::string filename;  // default: <name>.list
  bool append = true;
};

struct Apt {
  bool present = false;  // the user-data has an `apt:` key (otherwise the sources are left alone)
  bool preserve_sources_list = false;
  std::string primary_uri, security_uri;
  std::string sources_list;  // a template for /etc/apt/sources.list
  std::string conf;          // apt.conf text
  std::string http_proxy, https_proxy, ftp_proxy;
  std::vector<AptSource> sources;
  std::vector<std::string> debconf_selections;  // lines for debconf-set-selections
};

struct CaCerts {
  bool present = false;
  bool remove_defaults = false;
  std::vector<std::string> trusted;  // PEM
};

// The `ultari:` extension key: host-side needs and defaults of the image.
struct UltariKey {
  std::vector<std::string> kernel_modules;  // normalised ('-' -> '_')
  nlohmann::json limits = nlohmann::json::object();   // memory_bytes, pids, cpus, wall_timeout_ms, ...
  nlohmann::json network = nlohmann::json::object();  // allow, deny, ports
  bool runcmd_strict = true;
};

struct CloudConfig {
  std::vector<Command> bootcmd, runcmd;
  std::vector<WriteFile> write_files;
  std::vector<Group> groups;
  std::vector<User> users;
  std::optional<User> default_user;  // the `user:` key: overrides the distribution's default user
  bool package_update = false, package_upgrade = false;
  std::vector<Package> packages;
  std::string locale, timezone, hostname, fqdn;
  Apt apt;
  CaCerts ca_certs;
  UltariKey ultari;
  std::vector<std::string> warnings;  // "user-data line 7: unknown key 'write_files[2].mode'"
};

// Most bytes of user-data (after templating) and of one file's content.
inline constexpr size_t kMaxUserData = 16u << 20;
inline constexpr size_t kMaxFileContent = 64u << 20;

// `text` must start with "#cloud-config". Throws Error ("user-data line L,
// column C: ...") for malformed YAML, wrong types and values Ultari refuses
// (a relative or ".." write_files path, bad permissions, bad names).
CloudConfig parse_cloud_config(const std::string& text);

// Module names the kernel_modules key and modprobe lines name, as the
// kernel spells them ('-' -> '_'). Throws Error for a name that is not one.
std::string normalize_module(const std::string& name);

}  // namespace ultari::provision
