// cloud-init user-data, read with yaml-cpp into what provisioning runs:
// `#cloud-config`, a user script (`#!`), a `#cloud-boothook`, a
// `## template: jinja`, gzip'd or not, or a MIME multi-part holding these
// (its cloud-config parts merged as cloud-init merges them). Key names and value shapes are cloud-init's (its JSON
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
#include <functional>
#include <string>
#include <vector>

namespace ultari::provision {

// A bootcmd/runcmd item: a string runs with `sh -c`, a list as argv.
struct Command {
  std::string shell;
  std::vector<std::string> argv;
  int line = 0;
  std::string where;  // "user-data line 4", "user-data part 2 (b.yaml) line 4"
  std::string describe() const;  // the item as written, for messages
};

struct WriteFile {
  std::string path;      // absolute, normalised, no ".." (checked)
  std::string content;   // after base64 decoding; gzip is undone inside the build sandbox
  bool gzip = false;     // content is gzip-compressed
  // `source` (cloud-init 23.1): the file's bytes from this http(s) URL,
  // fetched at provisioning (headers sent with the request); `content`
  // (with its encoding) is the fallback when the fetch fails.
  std::string source_uri;
  std::vector<std::pair<std::string, std::string>> source_headers;
  bool has_content = false;
  std::string owner = "root:root";
  unsigned permissions = 0644;
  bool append = false;
  bool defer = false;
  int line = 0;
  std::string where;  // as Command::where
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
  std::string key;       // an ASCII-armoured key, as given
  std::string keyring;   // the key dearmoured (OpenPGP packets), what apt reads
  std::string key_stem;  // the key file's name without its extension (cloud-init: the stem of `filename`)
  // `keyid` without `key`: the key comes from a key server (cloud-init's
  // `gpg --recv-keys`), checked against the ID (pgp::normalize_key_id).
  std::string keyid;
  std::string keyserver_url;   // http(s)://HOST:PORT (hkp: http, port 11371 unless given)
  std::string keyserver_host;
  uint16_t keyserver_port = 0;
  std::string filename;  // default: <name>.list
  bool append = true;
  // `source: ppa:OWNER/NAME` (NAME "ppa" when not given): `source` stays
  // empty here; provisioning makes it (the base's Ubuntu release, the
  // [ppa] archive of /etc/ultari/config.toml) and, with no key nor keyid,
  // takes the keyid from Launchpad.
  std::string ppa_owner, ppa_name;
};

// `value` (a key server: [hkp|hkps|http|https://]HOST[:PORT]) into
// src.keyserver_url/_host/_port. Throws Error naming what is wrong.
void set_keyserver(const std::string& value, AptSource& src);

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

// A script part: a user script (text/x-shellscript, or user-data starting
// with "#!") or a boot hook (text/cloud-boothook, its "#cloud-boothook"
// line taken off). Run as an executable file, so it starts with "#!".
struct Script {
  std::string name;     // the file name cloud-init gives it (cleaned; part-001 when the part has none)
  std::string content;  // \r\n made \n, as cloud-init does
  std::string part;     // "part 2 (setup.sh, text/x-shellscript)", for messages
};

// A part handler (text/part-handler: Python that cloud-init imports, whose
// list_types() names the content types its handle_part() takes), or a
// part of a type Ultari does not run itself that comes after one: in
// document order, for provisioning's part_handlers step, which runs them
// with the image's python3 as cloud-init's walker does.
struct HandlerPart {
  bool handler = false;  // a text/part-handler part; else a part for one
  std::string type;      // the part's content type
  std::string filename;  // as cloud-init passes it: given, or part-NNN
  std::string content;
  std::string part;      // "part 3 (h.py, text/part-handler)", for messages
};

// The types Ultari runs or reads itself: a part handler may not take one.
inline constexpr const char* kOwnTypes[] = {
    "text/cloud-config",           "text/cloud-config-jsonp",        "text/x-shellscript",
    "text/cloud-boothook",         "text/x-shellscript-per-boot",    "text/x-shellscript-per-instance",
    "text/x-shellscript-per-once", "text/jinja2",                    "text/x-include-url",
    "text/x-include-once-url",     "text/cloud-config-archive",      "text/part-handler"};

// What the user-data held, one entry a part (a plain user-data is one).
struct PartInfo {
  size_t index = 0;     // 1-based, in document order
  std::string filename;  // as given, or part-001
  std::string type;      // the type it was taken as (text/cloud-config, text/x-shellscript, ...)
  std::string note;      // "gzip", "jinja", "merge list(append)+dict(recurse_array)+str()", ... ("" none)
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
  std::vector<HandlerPart> handler_parts;  // run first of all (part_handlers)
  std::vector<Script> boothooks;  // run first, before bootcmd
  std::vector<Script> scripts;    // user scripts: after runcmd (cloud-init's scripts_user), in file name order
  // text/x-shellscript-per-once, -per-boot, -per-instance parts: cloud-init
  // puts them in /var/lib/cloud/scripts/per-once (...) and runs each
  // directory's scripts (scripts_per_once, _per_boot, _per_instance).
  std::vector<Script> per_once, per_boot, per_instance;
  std::vector<std::string> includes;  // #include URLs not followed (parsed without a fetcher)
  std::vector<PartInfo> parts;
  bool templated = false;         // a part (or the whole) was a jinja template
  // The user-data with gzip, MIME and templates undone: what the cache key
  // hashes (for a plain #cloud-config, the text itself after templating).
  std::string canonical;
  std::vector<std::string> warnings;  // "user-data line 7: unknown key 'write_files[2].mode'"
};

// Most bytes of user-data (as given, and decoded: after gzip, MIME
// transfer encodings and templating, all parts together), of one file's
// content, and how many parts and levels of multipart a MIME user-data may
// have.
inline constexpr size_t kMaxUserData = 16u << 20;
inline constexpr size_t kMaxFileContent = 64u << 20;
inline constexpr size_t kMaxParts = 100;
inline constexpr int kMaxMimeDepth = 8;

// Any user-data format Ultari takes (docs/provisioning.md): gzip undone;
// MIME multi-part walked; each part (or the whole) by its Content-Type or,
// for text/plain and text/x-shellscript, by how it starts, as cloud-init
// does; `## template: jinja` parts rendered with `vars` (the instance
// data); cloud-config parts merged in order by their merge_how/merge_type
// key or Merge-Type header (cloud-init's default for parts:
// dict(replace)+list()+str()); scripts and boot hooks collected. Throws
// Error naming the part (index, file name, type) and, inside a
// cloud-config, the line and column: malformed YAML, wrong types, types
// Ultari does not run with no part handler before them, bad MIME.
// Fetches an #include URL (http:// or https://): its content, or throws
// Error naming the URL and the problem.
using Fetcher = std::function<std::string(const std::string& url)>;
// Without `fetch`, #include lists are not followed: their URLs are listed
// in CloudConfig::includes (what --check shows, and what provisioning then
// fetches by parsing again with a fetcher).
CloudConfig parse_user_data(const std::string& user_data, const nlohmann::json& vars = nlohmann::json::object(),
                            const Fetcher& fetch = {});

// One #cloud-config document: `text` must start with "#cloud-config".
// Throws Error ("user-data line L, column C: ...") for malformed YAML,
// wrong types and values Ultari refuses (a relative or ".." write_files
// path, bad permissions, bad names).
CloudConfig parse_cloud_config(const std::string& text);

// Module names the kernel_modules key and modprobe lines name, as the
// kernel spells them ('-' -> '_'). Throws Error for a name that is not one.
std::string normalize_module(const std::string& name);

}  // namespace ultari::provision
