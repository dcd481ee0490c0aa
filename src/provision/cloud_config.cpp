// cloud-config user-data -> CloudConfig (see cloud_config.h).
#include "provision/cloud_config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <unordered_map>

#include "provision/mime.h"
#include "provision/pgp.h"
#include "provision/template.h"
#include "spec/spec.h"
#include "util/error.h"
#include "util/url.h"

namespace ultari::provision {

void set_keyserver(const std::string& value, AptSource& src) {
  std::string v = value, scheme = "hkp";
  if (size_t colon = v.find("://"); colon != std::string::npos) {
    scheme = v.substr(0, colon);
    v = v.substr(colon + 3);
  }
  while (!v.empty() && v.back() == '/') v.pop_back();
  uint16_t port = scheme == "hkp" ? 11371 : scheme == "http" ? 80 : 443;
  if (scheme != "hkp" && scheme != "hkps" && scheme != "http" && scheme != "https")
    throw Error("a key server is hkp://, hkps://, http:// or https://, not '" + scheme + "://'");
  if (size_t colon = v.rfind(':'); colon != std::string::npos) {
    port = port_number(std::string_view(v).substr(colon + 1));
    if (port == 0) throw Error("'" + value + "' has no valid port");
    v = v.substr(0, colon);
  }
  bool ok = !v.empty() && v.size() <= 253 && v.find("..") == std::string::npos && v[0] != '.' && v[0] != '-';
  for (char c : v)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-')) ok = false;
  if (!ok) throw Error("'" + value + "' is not a key server's host name");
  src.keyserver_host = v;
  src.keyserver_port = port;
  src.keyserver_url = std::string(scheme == "hkps" || scheme == "https" ? "https" : "http") + "://" + v + ":" +
                      std::to_string(port);
}
namespace {

using YAML::Node;

int line_of(const Node& n) { return n.Mark().line + 1; }

// An error about a node of a cloud-config. Its message names the node's
// line and column as in a plain user-data; a MIME user-data rewrites it to
// name the part the node came from as well (Locator).
class NodeError : public Error {
 public:
  NodeError(const Node& n, const std::string& message, std::string what)
      : Error(message), node(n), bare(std::move(what)) {}
  Node node;
  std::string bare;  // without the place
};

[[noreturn]] void fail_at(const Node& n, const std::string& what) {
  const YAML::Mark m = n.Mark();
  if (m.line < 0) throw NodeError(n, "user-data: " + what, what);
  throw NodeError(n,
                  "user-data line " + std::to_string(m.line + 1) + ", column " + std::to_string(m.column + 1) + ": " +
                      what,
                  what);
}

// Where a node is, for messages: "user-data line 7" (", column 3").
class Locator {
 public:
  virtual ~Locator() = default;
  virtual std::string at(const Node& n, bool column) const {
    const YAML::Mark m = n.Mark();
    if (m.line < 0) return "user-data";
    return "user-data line " + std::to_string(m.line + 1) +
           (column ? ", column " + std::to_string(m.column + 1) : std::string());
  }
};

// Every cloud-init module key (schema-cloud-config-v1.json of cloud-init
// 22.4, Debian 12) that Ultari does not run: named in a warning.
// What a plain (unquoted) scalar is to YAML 1.1 (PyYAML's resolver, which
// cloud-init reads with): "str" unless it is a bool, int, float, null or
// timestamp.
std::string yaml_type(const Node& n) {
  if (!n.IsScalar() || n.Tag() != "?") return n.IsNull() ? "null" : "str";
  static const std::regex kBool("yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF");
  static const std::regex kInt(
      "[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+|[-+]?[1-9][0-9_]*(:[0-5]?[0-9])+");
  static const std::regex kFloat(
      "[-+]?([0-9][0-9_]*)?\\.[0-9_]*([eE][-+][0-9]+)?|[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+\\.[0-9_]*|"
      "[-+]?\\.(inf|Inf|INF)|\\.(nan|NaN|NAN)");
  static const std::regex kNull("~|null|Null|NULL|");
  static const std::regex kTime(
      "[0-9]{4}-[0-9]{2}-[0-9]{2}|[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}([Tt]|[ \\t]+)[0-9]{1,2}:[0-9]{2}:[0-9]{2}"
      "(\\.[0-9]*)?([ \\t]*(Z|[-+][0-9]{1,2}(:[0-9]{2})?))?");
  const std::string& v = n.Scalar();
  if (std::regex_match(v, kBool)) return "bool";
  if (std::regex_match(v, kInt)) return "int";
  if (v != "." && std::regex_match(v, kFloat)) return "float";
  if (std::regex_match(v, kNull)) return "null";
  if (std::regex_match(v, kTime)) return "timestamp";
  return "str";
}

const std::set<std::string> kCloudInitKeys = {
    "allow_public_ssh_keys", "ansible", "apk_repos", "apt_pipelining", "apt_reboot_if_required", "apt_update",
    "apt_upgrade", "authkey_hash", "autoinstall", "byobu_by_default", "chef", "chpasswd", "cloud_config_modules",
    "cloud_final_modules", "cloud_init_modules", "device_aliases", "disable_ec2_metadata", "disable_root",
    "disable_root_opts", "disk_setup", "drivers", "fan", "final_message", "fs_setup", "growpart", "grub-dpkg",
    "grub_dpkg", "keyboard", "landscape", "locale_configfile", "lxd", "manage_etc_hosts", "manage_resolv_conf",
    "mcollective", "merge_how", "merge_type", "migrate", "mount_default_fields", "mounts", "no_ssh_fingerprints", "ntp",
    "package_reboot_if_required", "password", "phone_home", "power_state", "prefer_fqdn_over_hostname",
    "preserve_hostname", "puppet", "random_seed", "reporting", "resize_rootfs", "resolv_conf", "rh_subscription",
    "rsyslog", "salt_minion", "snap", "spacewalk", "ssh", "ssh_authorized_keys", "ssh_deletekeys",
    "ssh_fp_console_blacklist", "ssh_genkeytypes", "ssh_import_id", "ssh_key_console_blacklist", "ssh_keys",
    "ssh_publish_hostkeys", "ssh_pwauth", "ssh_quiet_keygen", "swap", "ubuntu_advantage", "updates", "vendor_data",
    "wireguard", "yum_repo_dir", "yum_repos", "zypper"};

class Reader {
 public:
  Reader(CloudConfig& out, const Locator& where) : out_(out), where_(where) {}

  void warn(const Node& n, const std::string& what) { out_.warnings.push_back(where_.at(n, false) + ": " + what); }
  // Warns about keys of map `n` (at `path`) not in `known`.
  void known_keys(const Node& n, const std::string& path, std::initializer_list<const char*> known) {
    for (auto it = n.begin(); it != n.end(); ++it) {
      std::string key = it->first.Scalar();
      if (std::none_of(known.begin(), known.end(), [&](const char* k) { return key == k; }))
        warn(it->first, "unknown key '" + (path.empty() ? key : path + "." + key) + "': ignored");
    }
  }

  static void need_map(const Node& n, const std::string& path) {
    if (!n.IsMap()) fail_at(n, "'" + path + "' must be a mapping");
  }
  static void need_list(const Node& n, const std::string& path) {
    if (!n.IsSequence()) fail_at(n, "'" + path + "' must be a list");
  }
  // A string, as the schema says: an unquoted 0644, 5, yes or 2032-09-01
  // is a number, a bool or a date to YAML (and to cloud-init), not text.
  static std::string str(const Node& n, const std::string& path) {
    if (!n.IsScalar()) fail_at(n, "'" + path + "' must be a string");
    std::string type = yaml_type(n);
    if (type != "str")
      fail_at(n, "'" + path + "' must be a string, and YAML reads " + n.Scalar() + (type == "int" ? " as an " : " as a ") +
                     type + ": put it in quotes");
    return n.Scalar();
  }
  // A scalar of any YAML type, as text (ids, Ultari's own limits).
  static std::string scalar(const Node& n, const std::string& path) {
    if (!n.IsScalar()) fail_at(n, "'" + path + "' must be a single value");
    return n.Scalar();
  }
  static bool boolean(const Node& n, const std::string& path) {
    if (n.IsScalar() && yaml_type(n) == "bool") {
      char c = static_cast<char>(std::tolower(static_cast<unsigned char>(n.Scalar()[0])));
      return c == 't' || c == 'y' || (c == 'o' && n.Scalar().size() == 2);
    }
    fail_at(n, "'" + path + "' must be true or false");
  }
  // A list of strings; `comma` (users, groups, a user's groups): a
  // comma-separated string as well, as cloud-init's schema allows there.
  static std::vector<std::string> str_list(const Node& n, const std::string& path, bool comma = false) {
    std::vector<std::string> v;
    if (n.IsScalar() && comma) {
      std::string s = str(n, path);
      size_t start = 0;
      while (start <= s.size()) {
        size_t comma = s.find(',', start);
        std::string part = s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        part.erase(0, part.find_first_not_of(" \t"));
        part.erase(part.find_last_not_of(" \t") + 1);
        if (!part.empty()) v.push_back(part);
        if (comma == std::string::npos) break;
        start = comma + 1;
      }
      return v;
    }
    need_list(n, path);
    for (size_t i = 0; i < n.size(); ++i) v.push_back(str(n[i], path + "[" + std::to_string(i) + "]"));
    return v;
  }
  static void not_empty(const Node& n, const std::string& path) {
    if (n.IsSequence() && n.size() == 0) fail_at(n, "'" + path + "' is an empty list (leave the key out instead)");
  }

  std::vector<Command> commands(const Node& n, const std::string& key) {
    need_list(n, key);
    not_empty(n, key);
    std::vector<Command> v;
    for (size_t i = 0; i < n.size(); ++i) {
      const Node item = n[i];
      std::string path = key + "[" + std::to_string(i) + "]";
      Command c;
      c.line = line_of(item);
      c.where = where_.at(item, false);
      if (item.IsNull()) continue;  // the schema allows null items
      if (item.IsScalar()) {
        c.shell = str(item, path);
      } else if (item.IsSequence()) {
        c.argv = str_list(item, path);
        if (c.argv.empty()) fail_at(item, "'" + path + "' is an empty command");
      } else {
        fail_at(item, "'" + path + "' must be a string or a list of strings");
      }
      v.push_back(std::move(c));
    }
    return v;
  }

  static std::string normalize_path(const Node& n, const std::string& path, const std::string& raw) {
    if (raw.empty() || raw[0] != '/') fail_at(n, "'" + path + "' must be an absolute path, not '" + raw + "'");
    if (raw.find('\0') != std::string::npos || raw.size() > 4096) fail_at(n, "'" + path + "' is not a usable path");
    std::string out;
    size_t i = 0;
    while (i < raw.size()) {
      while (i < raw.size() && raw[i] == '/') ++i;
      size_t j = raw.find('/', i);
      std::string part = raw.substr(i, j == std::string::npos ? std::string::npos : j - i);
      i = j == std::string::npos ? raw.size() : j;
      if (part.empty() || part == ".") continue;
      if (part == "..") fail_at(n, "'" + path + "' may not contain '..': '" + raw + "'");
      out += "/" + part;
    }
    if (out.empty()) fail_at(n, "'" + path + "' names the root directory");
    return out;
  }

  static std::string dearmor(const Node& n, const std::string& path, const std::string& text) {
    try {
      return pgp::dearmor(text);
    } catch (const Error& e) {
      fail_at(n, "'" + path + "' " + e.what());
    }
  }

  // cloud-init hands `keyserver` to gpg: hkp:// (port 11371), hkps://,
  // http://, https://, or a bare host (hkp). Default: keyserver.ubuntu.com.
  static void keyserver(const Node& n, const std::string& path, const std::string& value, AptSource& src) {
    try {
      set_keyserver(value, src);
    } catch (const Error& e) {
      fail_at(n, "'" + path + "': " + e.what());
    }
  }

  // ppa:OWNER[/NAME]: Launchpad's names (lower-case letters, digits, '+',
  // '-', '.'; a letter or digit first).
  static void ppa(const Node& n, const std::string& path, AptSource& src) {
    std::string spec = src.source.substr(4);
    size_t slash = spec.find('/');
    src.ppa_owner = spec.substr(0, slash);
    src.ppa_name = slash == std::string::npos ? "ppa" : spec.substr(slash + 1);
    for (const std::string* part : {&src.ppa_owner, &src.ppa_name}) {
      bool ok = !part->empty() && part->size() <= 64 && std::isalnum(static_cast<unsigned char>((*part)[0]));
      for (char c : *part)
        if (!(std::islower(static_cast<unsigned char>(c)) || std::isdigit(static_cast<unsigned char>(c)) || c == '+' ||
              c == '-' || c == '.'))
          ok = false;
      if (!ok)
        fail_at(n, "'" + path + "': '" + src.source + "' is not ppa:OWNER/NAME (Launchpad names: a-z, 0-9, '+', '-', '.')");
    }
    src.source.clear();
  }

  static std::string base64_decode(const Node& n, const std::string& path, const std::string& in) {
    static const std::string kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    uint32_t acc = 0;
    int bits = 0;
    bool padding = false;
    for (char c : in) {
      if (c == '\n' || c == '\r' || c == ' ' || c == '\t') continue;
      if (c == '=') {
        padding = true;
        continue;
      }
      size_t v = kAlphabet.find(c);
      if (v == std::string::npos || padding) fail_at(n, "'" + path + "' is not valid base64");
      acc = (acc << 6) | static_cast<uint32_t>(v);
      bits += 6;
      if (bits >= 8) {
        bits -= 8;
        out.push_back(static_cast<char>((acc >> bits) & 0xff));
      }
    }
    return out;
  }

  void write_files(const Node& n) {
    need_list(n, "write_files");
    for (size_t i = 0; i < n.size(); ++i) {
      const Node f = n[i];
      std::string path = "write_files[" + std::to_string(i) + "]";
      need_map(f, path);
      known_keys(f, path, {"path", "content", "source", "owner", "permissions", "encoding", "append", "defer"});
      WriteFile w;
      w.line = line_of(f);
      w.where = where_.at(f, false);
      if (!f["path"]) fail_at(f, "'" + path + ".path' is missing");
      w.path = normalize_path(f["path"], path + ".path", str(f["path"], path + ".path"));
      if (f["source"]) source(f["source"], path + ".source", w);
      bool binary = false;
      w.has_content = f["content"] && !f["content"].IsNull();
      if (f["content"] && !f["content"].IsNull()) {
        binary = f["content"].Tag() == "tag:yaml.org,2002:binary";
        w.content = binary ? f["content"].Scalar() : str(f["content"], path + ".content");
        if (binary) w.content = base64_decode(f["content"], path + ".content", w.content);
      }
      std::string enc = f["encoding"] ? str(f["encoding"], path + ".encoding") : "text/plain";
      std::transform(enc.begin(), enc.end(), enc.begin(), [](unsigned char c) { return std::tolower(c); });
      if (binary && enc != "text/plain" && enc != "gz" && enc != "gzip") {
        fail_at(f["encoding"], "'" + path + "': !!binary content is decoded by YAML already; encoding '" + enc +
                                   "' would decode it again");
      } else if (enc == "b64" || enc == "base64") {
        w.content = base64_decode(f["content"], path + ".content", w.content);
      } else if (enc == "gz" || enc == "gzip") {
        w.gzip = true;
      } else if (enc == "gz+b64" || enc == "gz+base64" || enc == "gzip+b64" || enc == "gzip+base64") {
        w.content = base64_decode(f["content"], path + ".content", w.content);
        w.gzip = true;
      } else if (enc != "text/plain") {
        fail_at(f["encoding"], "'" + path + ".encoding' must be one of b64, base64, gz, gzip, gz+b64, gz+base64, "
                                          "gzip+b64, gzip+base64, text/plain; not '" + enc + "'");
      }
      if (w.content.size() > kMaxFileContent)
        fail_at(f, "'" + path + ".content' is larger than " + std::to_string(kMaxFileContent >> 20) + " MiB");
      if (f["owner"]) {
        w.owner = str(f["owner"], path + ".owner");
        check_owner(f["owner"], path + ".owner", w.owner);
      }
      if (f["permissions"]) w.permissions = permissions(f["permissions"], path + ".permissions");
      if (f["append"]) w.append = boolean(f["append"], path + ".append");
      if (f["defer"]) w.defer = boolean(f["defer"], path + ".defer");
      out_.write_files.push_back(std::move(w));
    }
  }

  // write_files[].source: {uri: http(s)://..., headers: {NAME: VALUE}}.
  void source(const Node& n, const std::string& path, WriteFile& w) {
    need_map(n, path);
    known_keys(n, path, {"uri", "headers"});
    if (!n["uri"]) fail_at(n, "'" + path + ".uri' is missing");
    w.source_uri = str(n["uri"], path + ".uri");
    const std::string& u = w.source_uri;
    if (!(u.rfind("http://", 0) == 0 || u.rfind("https://", 0) == 0) || u.size() > 4096 ||
        u.find_first_of(std::string(" \t\r\n\"'\\\0", 8)) != std::string::npos)
      fail_at(n["uri"], "'" + path + ".uri' must be an http:// or https:// URL (the ones Ultari fetches), not '" +
                            redacted(u) + "'");
    if (n["headers"]) {
      need_map(n["headers"], path + ".headers");
      for (auto it = n["headers"].begin(); it != n["headers"].end(); ++it) {
        std::string name = it->first.Scalar(), value = str(it->second, path + ".headers." + name);
        bool ok = !name.empty() && name.size() <= 256;
        for (char c : name)
          if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_')) ok = false;
        if (!ok) fail_at(it->first, "'" + path + ".headers': '" + name + "' is not a header name");
        std::string lower = name;
        for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        if (lower == "host" || lower == "content-length" || lower == "transfer-encoding" || lower == "connection")
          fail_at(it->first, "'" + path + ".headers': '" + name + "' is the fetcher's to set, not the user-data's");
        if (value.find_first_of(std::string("\r\n\0", 3)) != std::string::npos)
          fail_at(it->second, "'" + path + ".headers." + name + "' holds a line break or a NUL");
        w.source_headers.emplace_back(name, value);
      }
    }
  }

  static void check_owner(const Node& n, const std::string& path, const std::string& owner) {
    bool ok = !owner.empty() && owner.size() <= 65 && std::count(owner.begin(), owner.end(), ':') <= 1 &&
              owner.front() != ':' && owner.back() != ':';
    for (char c : owner)
      if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.' || c == ':')) ok = false;
    if (!ok || owner[0] == '-') fail_at(n, "'" + path + "' must be USER or USER:GROUP, not '" + owner + "'");
  }

  // An octal string: "0644", "0o644" or "644" (the schema's type; an
  // unquoted 0644 is an int to YAML, refused by str()).
  static unsigned permissions(const Node& n, const std::string& path) {
    std::string v = str(n, path);
    std::string digits = v;
    if (digits.rfind("0o", 0) == 0 || digits.rfind("0O", 0) == 0) digits = digits.substr(2);
    bool octal = !digits.empty() && digits.size() <= 5 &&
                 std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '7'; });
    if (!octal) fail_at(n, "'" + path + "' must be an octal mode such as '0644', not '" + v + "'");
    unsigned mode = static_cast<unsigned>(std::stoul(digits, nullptr, 8));
    if (mode > 07777) fail_at(n, "'" + path + "' is out of range: '" + v + "'");
    return mode;
  }

  static void check_name(const Node& n, const std::string& path, const std::string& name) {
    bool ok = !name.empty() && name.size() <= 32 && name[0] != '-';
    for (char c : name)
      if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.' || c == '$')) ok = false;
    if (!ok) fail_at(n, "'" + path + "' is not a valid user or group name: '" + name + "'");
  }

  User user(const Node& u, const std::string& path) {
    User r;
    r.line = line_of(u);
    if (u.IsScalar()) {
      r.name = str(u, path);
      if (r.name == "default") r.is_default = true;
      else check_name(u, path, r.name);
      return r;
    }
    need_map(u, path);
    known_keys(u, path, {"name", "expiredate", "gecos", "groups", "homedir", "inactive", "lock-passwd", "lock_passwd",
                         "no_create_home", "no_log_init", "no_user_group", "passwd", "hashed_passwd",
                         "plain_text_passwd", "create_groups", "primary_group", "selinux_user", "shell", "snapuser",
                         "ssh_authorized_keys", "ssh_import_id", "ssh_redirect_user", "system", "sudo", "uid"});
    if (!u["name"]) fail_at(u, "'" + path + ".name' is missing");
    r.name = str(u["name"], path + ".name");
    check_name(u["name"], path + ".name", r.name);
    auto s = [&](const char* key, std::string& into) {
      if (u[key] && !u[key].IsNull()) into = str(u[key], path + "." + key);
    };
    s("gecos", r.gecos);
    s("shell", r.shell);
    s("homedir", r.homedir);
    s("primary_group", r.primary_group);
    s("expiredate", r.expiredate);
    s("plain_text_passwd", r.plain_text_passwd);
    s("hashed_passwd", r.hashed_passwd);
    if (r.hashed_passwd.empty()) s("passwd", r.hashed_passwd);
    if (!r.homedir.empty()) r.homedir = normalize_path(u["homedir"], path + ".homedir", r.homedir);
    if (!r.primary_group.empty()) check_name(u["primary_group"], path + ".primary_group", r.primary_group);
    if (u["groups"]) {
      if (u["groups"].IsMap()) {  // deprecated form: {group: null, ...}
        for (auto it = u["groups"].begin(); it != u["groups"].end(); ++it) r.groups.push_back(it->first.Scalar());
      } else {
        r.groups = str_list(u["groups"], path + ".groups", true);
      }
      for (const auto& g : r.groups) check_name(u["groups"], path + ".groups", g);
    }
    if (u["sudo"] && !u["sudo"].IsNull()) {
      const Node sd = u["sudo"];
      if (sd.IsScalar() && sd.Tag() != "!" && (sd.Scalar() == "false" || sd.Scalar() == "False")) {
        // no rule
      } else if (sd.IsSequence()) {
        r.sudo = str_list(sd, path + ".sudo");
      } else {
        r.sudo.push_back(str(sd, path + ".sudo"));
      }
      for (const auto& rule : r.sudo)
        if (rule.find('\n') != std::string::npos) fail_at(sd, "'" + path + ".sudo' may not contain a line break");
    }
    if (u["ssh_authorized_keys"]) r.ssh_authorized_keys = str_list(u["ssh_authorized_keys"], path + ".ssh_authorized_keys");
    for (const auto& k : r.ssh_authorized_keys)
      if (k.find('\n') != std::string::npos)
        fail_at(u["ssh_authorized_keys"], "'" + path + ".ssh_authorized_keys' entries are one line each");
    if (u["ssh_import_id"]) warn(u["ssh_import_id"], "'" + path + ".ssh_import_id' needs the network at boot: ignored");
    if (u["uid"]) {
      std::string v = scalar(u["uid"], path + ".uid");
      if (v.empty() || v.size() > 10 || !std::all_of(v.begin(), v.end(), ::isdigit) || std::stoull(v) > 65534)
        fail_at(u["uid"], "'" + path + ".uid' must be a number from 0 to 65534 (the sandbox's ids), not '" + v + "'");
      r.uid = static_cast<uint32_t>(std::stoul(v));
    }
    if (u["inactive"]) {
      std::string v = scalar(u["inactive"], path + ".inactive");
      if (v.empty() || v.size() > 9 || !std::all_of(v.begin(), v.end(), ::isdigit))
        fail_at(u["inactive"], "'" + path + ".inactive' must be a number of days");
      r.inactive = std::stoll(v);
    }
    if (u["lock_passwd"]) r.lock_passwd = boolean(u["lock_passwd"], path + ".lock_passwd");
    else if (u["lock-passwd"]) r.lock_passwd = boolean(u["lock-passwd"], path + ".lock-passwd");
    if (u["no_create_home"]) r.no_create_home = boolean(u["no_create_home"], path + ".no_create_home");
    if (u["no_user_group"]) r.no_user_group = boolean(u["no_user_group"], path + ".no_user_group");
    if (u["system"]) r.system = boolean(u["system"], path + ".system");
    if (u["create_groups"]) r.create_groups = boolean(u["create_groups"], path + ".create_groups");
    // These end up in colon-separated /etc/passwd and /etc/shadow lines.
    for (auto [key, value] : {std::pair<const char*, const std::string*>{"gecos", &r.gecos}, {"shell", &r.shell},
                              {"expiredate", &r.expiredate}, {"hashed_passwd", &r.hashed_passwd},
                              {"plain_text_passwd", &r.plain_text_passwd}})
      if (value->find_first_of(std::string(":\n\0", 3)) != std::string::npos)
        fail_at(u[key] ? u[key] : u, "'" + path + "." + key + "' may not contain ':' or a line break");
    return r;
  }

  void users(const Node& n) {
    if (n.IsScalar()) {  // "default, foo"
      for (const auto& name : str_list(n, "users", true)) {
        User u;
        u.line = line_of(n);
        u.name = name;
        if (name == "default") u.is_default = true;
        else check_name(n, "users", name);
        out_.users.push_back(u);
      }
      return;
    }
    if (n.IsMap()) {  // {name: {...}}: cloud-init's dict form
      for (auto it = n.begin(); it != n.end(); ++it) {
        Node copy = YAML::Clone(it->second.IsNull() ? Node(YAML::NodeType::Map) : it->second);
        copy["name"] = it->first.Scalar();
        out_.users.push_back(user(copy, "users." + it->first.Scalar()));
      }
      return;
    }
    need_list(n, "users");
    for (size_t i = 0; i < n.size(); ++i) {
      std::string path = "users[" + std::to_string(i) + "]";
      if (n[i].IsSequence()) {  // [name, ...] lists: cloud-init reads each as a user name
        for (const auto& name : str_list(n[i], path)) {
          User u;
          u.line = line_of(n[i]);
          u.name = name;
          check_name(n[i], path, name);
          out_.users.push_back(u);
        }
        continue;
      }
      out_.users.push_back(user(n[i], path));
    }
  }

  void groups(const Node& n) {
    auto add = [&](const Node& where, const std::string& path, const std::string& name, const Node& members) {
      Group g;
      g.line = line_of(where);
      g.name = name;
      check_name(where, path, name);
      if (members && !members.IsNull()) g.members = str_list(members, path + "." + name, true);
      for (const auto& m : g.members) check_name(members, path + "." + name, m);
      out_.groups.push_back(g);
    };
    if (n.IsScalar()) {
      for (const auto& name : str_list(n, "groups", true)) add(n, "groups", name, Node());
      return;
    }
    if (n.IsMap()) {
      for (auto it = n.begin(); it != n.end(); ++it) add(it->first, "groups", it->first.Scalar(), it->second);
      return;
    }
    need_list(n, "groups");
    for (size_t i = 0; i < n.size(); ++i) {
      std::string path = "groups[" + std::to_string(i) + "]";
      if (n[i].IsMap()) {
        for (auto it = n[i].begin(); it != n[i].end(); ++it) add(it->first, path, it->first.Scalar(), it->second);
      } else {
        add(n[i], path, str(n[i], path), Node());
      }
    }
  }

  void packages(const Node& n) {
    need_list(n, "packages");
    not_empty(n, "packages");
    for (size_t i = 0; i < n.size(); ++i) {
      std::string path = "packages[" + std::to_string(i) + "]";
      Package p;
      if (n[i].IsSequence()) {
        if (n[i].size() != 2) fail_at(n[i], "'" + path + "' must be a name or [name, version]");
        p.name = str(n[i][0], path + "[0]");
        p.version = str(n[i][1], path + "[1]");
      } else {
        p.name = str(n[i], path);
      }
      auto ok = [](const std::string& s, bool version) {
        if (s.empty() || s[0] == '-') return false;
        for (char c : s)
          if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '+' || c == '-' ||
                (version && (c == ':' || c == '~' || c == '_' || c == '*')) || (!version && c == ':')))
            return false;
        return true;
      };
      if (!ok(p.name, false)) fail_at(n[i], "'" + path + "' is not a package name: '" + p.name + "'");
      if (!p.version.empty() && !ok(p.version, true))
        fail_at(n[i], "'" + path + "' has a bad version: '" + p.version + "'");
      out_.packages.push_back(p);
    }
  }

  void apt(const Node& n) {
    need_map(n, "apt");
    Apt& a = out_.apt;
    a.present = true;
    known_keys(n, "apt", {"preserve_sources_list", "generate_mirrorlists", "disable_suites", "primary", "security",
                          "add_apt_repo_match", "debconf_selections", "sources_list", "conf", "https_proxy",
                          "http_proxy", "proxy", "ftp_proxy", "sources"});
    if (n["preserve_sources_list"]) a.preserve_sources_list = boolean(n["preserve_sources_list"], "apt.preserve_sources_list");
    for (const char* which : {"primary", "security"}) {
      const Node m = n[which];
      if (!m) continue;
      std::string path = std::string("apt.") + which;
      need_list(m, path);
      for (size_t i = 0; i < m.size(); ++i) {
        std::string p = path + "[" + std::to_string(i) + "]";
        need_map(m[i], p);
        known_keys(m[i], p, {"arches", "uri", "search", "search_dns", "keyid", "key", "keyserver"});
        if (m[i]["search"] || m[i]["search_dns"]) warn(m[i], "'" + p + ".search' is not supported: give 'uri'");
        if (!m[i]["uri"]) continue;
        std::vector<std::string> arches = m[i]["arches"] ? str_list(m[i]["arches"], p + ".arches")
                                                           : std::vector<std::string>{"default"};
        bool ours = std::any_of(arches.begin(), arches.end(),
                                [](const std::string& x) { return x == "default" || x == "amd64"; });
        if (!ours) continue;
        std::string uri = str(m[i]["uri"], p + ".uri");
        check_uri(m[i]["uri"], p + ".uri", uri);
        (std::string(which) == "primary" ? a.primary_uri : a.security_uri) = uri;
        break;
      }
    }
    if (n["sources_list"]) a.sources_list = str(n["sources_list"], "apt.sources_list");
    if (n["conf"]) a.conf = str(n["conf"], "apt.conf");
    auto proxy = [&](const char* key, std::string& into) {
      if (!n[key]) return;
      into = str(n[key], std::string("apt.") + key);
      check_uri(n[key], std::string("apt.") + key, into);
    };
    proxy("proxy", a.http_proxy);
    proxy("http_proxy", a.http_proxy);
    proxy("https_proxy", a.https_proxy);
    proxy("ftp_proxy", a.ftp_proxy);
    if (n["debconf_selections"]) {
      const Node d = n["debconf_selections"];
      need_map(d, "apt.debconf_selections");
      for (auto it = d.begin(); it != d.end(); ++it) {
        std::string text = str(it->second, "apt.debconf_selections." + it->first.Scalar());
        size_t start = 0;
        while (start < text.size()) {
          size_t nl = text.find('\n', start);
          std::string line = text.substr(start, nl == std::string::npos ? std::string::npos : nl - start);
          if (!line.empty()) a.debconf_selections.push_back(line);
          if (nl == std::string::npos) break;
          start = nl + 1;
        }
      }
    }
    if (n["sources"]) {
      const Node s = n["sources"];
      need_map(s, "apt.sources");
      for (auto it = s.begin(); it != s.end(); ++it) {
        std::string name = it->first.Scalar();
        std::string path = "apt.sources." + name;
        need_map(it->second, path);
        known_keys(it->second, path, {"source", "keyid", "key", "keyserver", "filename", "append"});
        AptSource src;
        src.name = name;
        bool ok = !name.empty() && name.size() <= 64;
        for (char c : name)
          if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.')) ok = false;
        if (!ok || name[0] == '.') fail_at(it->first, "'" + path + "': a source's name is letters, digits, '.', '_', '-'");
        if (it->second["source"]) src.source = str(it->second["source"], path + ".source");
        if (src.source.rfind("ppa:", 0) == 0) ppa(it->second["source"], path + ".source", src);
        if (src.source.find('\n') != std::string::npos)
          fail_at(it->second["source"], "'" + path + ".source' is one line");
        if (it->second["key"]) {
          src.key = str(it->second["key"], path + ".key");
          src.keyring = dearmor(it->second["key"], path + ".key", src.key);
        }
        bool is_ppa = !src.ppa_owner.empty();
        if (it->second["keyserver"] && !it->second["keyid"] && !is_ppa)
          fail_at(it->second["keyserver"], "'" + path + ".keyserver' is given, but no 'keyid' to fetch from it");
        // A PPA's key server: the one given, else [ppa] keyserver of the host
        // configuration (provisioning sets it), for a keyid or for the
        // fingerprint Launchpad names.
        if (it->second["keyserver"] && !it->second["key"] && is_ppa)
          keyserver(it->second["keyserver"], path + ".keyserver", str(it->second["keyserver"], path + ".keyserver"), src);
        if (it->second["keyid"] && !it->second["key"]) {  // with `key` too, cloud-init takes the key
          try {
            src.keyid = pgp::normalize_key_id(str(it->second["keyid"], path + ".keyid"));
          } catch (const Error& e) {
            fail_at(it->second["keyid"], "'" + path + ".keyid': " + e.what());
          }
          if (!is_ppa)
            keyserver(it->second["keyserver"] ? it->second["keyserver"] : it->second["keyid"], path + ".keyserver",
                      it->second["keyserver"] ? str(it->second["keyserver"], path + ".keyserver")
                                              : std::string("keyserver.ubuntu.com"),
                      src);
        }
        if (src.source.find("$KEY_FILE") != std::string::npos && src.key.empty() && src.keyid.empty())
          fail_at(it->second["source"], "'" + path + ".source' uses $KEY_FILE, but the source has no 'key' nor 'keyid'");
        // cloud-init: the file is `filename`, else the source's name, with
        // ".list" added unless it ends so.
        src.filename = name;
        if (it->second["filename"]) {
          src.filename = str(it->second["filename"], path + ".filename");
          if (src.filename.find('/') != std::string::npos || src.filename.empty() || src.filename[0] == '.')
            fail_at(it->second["filename"], "'" + path + ".filename' is a file name inside /etc/apt/sources.list.d");
        }
        src.key_stem = src.filename;
        if (src.filename.size() < 5 || src.filename.substr(src.filename.size() - 5) != ".list") src.filename += ".list";
        // Python's Path(filename).stem, as cloud-init names the key file.
        if (size_t dot = src.key_stem.rfind('.'); dot != std::string::npos && dot > 0) src.key_stem.resize(dot);
        if (it->second["append"]) src.append = boolean(it->second["append"], path + ".append");
        a.sources.push_back(src);
      }
    }
  }

  static void check_uri(const Node& n, const std::string& path, const std::string& uri) {
    bool scheme = uri.rfind("http://", 0) == 0 || uri.rfind("https://", 0) == 0 || uri.rfind("ftp://", 0) == 0;
    if (!scheme || uri.find_first_of(" \t\n\"'") != std::string::npos)
      fail_at(n, "'" + path + "' must be an http://, https:// or ftp:// URL, not '" + uri + "'");
  }

  void ca_certs(const Node& n, const std::string& key) {
    need_map(n, key);
    known_keys(n, key, {"remove_defaults", "remove-defaults", "trusted"});
    CaCerts& c = out_.ca_certs;
    c.present = true;
    if (n["remove_defaults"]) c.remove_defaults = boolean(n["remove_defaults"], key + ".remove_defaults");
    else if (n["remove-defaults"]) c.remove_defaults = boolean(n["remove-defaults"], key + ".remove-defaults");
    if (n["trusted"]) c.trusted = str_list(n["trusted"], key + ".trusted");
    for (size_t i = 0; i < c.trusted.size(); ++i)
      if (c.trusted[i].find("-----BEGIN CERTIFICATE-----") == std::string::npos)
        fail_at(n["trusted"], "'" + key + ".trusted[" + std::to_string(i) + "]' is not a PEM certificate");
  }

  void ultari(const Node& n) {
    need_map(n, "ultari");
    known_keys(n, "ultari", {"kernel_modules", "limits", "network", "runcmd_strict"});
    UltariKey& u = out_.ultari;
    if (n["kernel_modules"]) {
      for (const auto& m : str_list(n["kernel_modules"], "ultari.kernel_modules")) {
        try {
          u.kernel_modules.push_back(normalize_module(m));
        } catch (const Error& e) {
          fail_at(n["kernel_modules"], std::string("'ultari.kernel_modules': ") + e.what());
        }
      }
    }
    if (n["runcmd_strict"]) u.runcmd_strict = boolean(n["runcmd_strict"], "ultari.runcmd_strict");
    if (n["limits"]) {
      const Node l = n["limits"];
      need_map(l, "ultari.limits");
      known_keys(l, "ultari.limits", {"memory", "pids", "cpus", "timeout", "cpu_time", "output_limit", "tmp_size", "nofile"});
      auto take = [&](const char* key, auto parse, const char* into) {
        if (!l[key]) return;
        std::string v = scalar(l[key], std::string("ultari.limits.") + key);
        try {
          u.limits[into] = parse(v);
        } catch (const Error& e) {
          fail_at(l[key], std::string("'ultari.limits.") + key + "': " + e.what());
        }
      };
      take("memory", parse_size, "memory_bytes");
      take("pids", parse_size, "pids");
      take("cpus", parse_cpus, "cpus");
      take("timeout", [](const std::string& v) { return parse_duration(v).count(); }, "wall_timeout_ms");
      take("cpu_time", [](const std::string& v) { return parse_duration(v).count(); }, "cpu_time_ms");
      take("output_limit", parse_size, "output_bytes");
      take("tmp_size", parse_size, "tmp_bytes");
      take("nofile", parse_size, "nofile");
      if (u.limits.contains("memory_bytes") && u.limits["memory_bytes"].get<uint64_t>() < (4u << 20))
        fail_at(l["memory"], "'ultari.limits.memory' must be at least 4M");
      if (u.limits.contains("pids") && u.limits["pids"].get<uint64_t>() < 2)
        fail_at(l["pids"], "'ultari.limits.pids' must be at least 2");
    }
    if (n["network"]) {
      const Node w = n["network"];
      need_map(w, "ultari.network");
      known_keys(w, "ultari.network", {"allow", "deny", "ports", "open"});
      if (w["allow"]) u.network["allow"] = str_list(w["allow"], "ultari.network.allow");
      if (w["deny"]) u.network["deny"] = str_list(w["deny"], "ultari.network.deny");
      if (w["open"]) u.network["open"] = boolean(w["open"], "ultari.network.open");
      if (w["ports"]) {
        std::vector<int> ports;
        need_list(w["ports"], "ultari.network.ports");
        std::vector<std::string> list;
        for (size_t i = 0; i < w["ports"].size(); ++i) list.push_back(scalar(w["ports"][i], "ultari.network.ports"));
        for (const auto& p : list) {
          if (p.empty() || p.size() > 5 || !std::all_of(p.begin(), p.end(), ::isdigit) || std::stoi(p) < 1 ||
              std::stoi(p) > 65535)
            fail_at(w["ports"], "'ultari.network.ports' holds ports 1 to 65535, not '" + p + "'");
          ports.push_back(std::stoi(p));
        }
        u.network["ports"] = ports;
      }
    }
  }

  void top(const Node& root) {
    for (auto it = root.begin(); it != root.end(); ++it) {
      const Node k = it->first;
      const Node v = it->second;
      if (!k.IsScalar()) fail_at(k, "a top-level key must be a string");
      std::string key = k.Scalar();
      if (key == "bootcmd") out_.bootcmd = commands(v, key);
      else if (key == "runcmd") out_.runcmd = commands(v, key);
      else if (key == "write_files") write_files(v);
      else if (key == "users") users(v);
      else if (key == "user") out_.default_user = user(v, "user");
      else if (key == "groups") groups(v);
      else if (key == "packages") packages(v);
      else if (key == "package_update" || key == "apt_update")
        out_.package_update = out_.package_update || boolean(v, key);
      else if (key == "package_upgrade" || key == "apt_upgrade")
        out_.package_upgrade = out_.package_upgrade || boolean(v, key);
      else if (key == "locale") {
        out_.locale = str(v, key);
        bool ok = !out_.locale.empty() && out_.locale.size() <= 64;
        for (char c : out_.locale)
          if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-' || c == '@')) ok = false;
        if (!ok) fail_at(v, "'locale' is not a locale name such as ko_KR.UTF-8: '" + out_.locale + "'");
      } else if (key == "timezone") {
        out_.timezone = str(v, key);
        bool ok = !out_.timezone.empty() && out_.timezone.size() <= 64 && out_.timezone[0] != '/' &&
                  out_.timezone.find("..") == std::string::npos;
        for (char c : out_.timezone)
          if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '/' || c == '-' || c == '+')) ok = false;
        if (!ok) fail_at(v, "'timezone' is not a zone name such as Asia/Seoul: '" + out_.timezone + "'");
      } else if (key == "hostname" || key == "fqdn") {
        std::string name = str(v, key);
        bool ok = !name.empty() && name.size() <= 64 && name[0] != '-' && name[0] != '.';
        for (char c : name)
          if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.')) ok = false;
        if (!ok) fail_at(v, "'" + key + "' is not a host name: '" + name + "'");
        (key == "hostname" ? out_.hostname : out_.fqdn) = name;
      } else if (key == "ca_certs" || key == "ca-certs") ca_certs(v, key);
      else if (key == "apt") apt(v);
      else if (key == "ultari") ultari(v);
      else if (kCloudInitKeys.count(key)) warn(k, "'" + key + "' is a cloud-init module Ultari does not run: ignored");
      else warn(k, "unknown key '" + key + "': ignored");
    }
  }

 private:
  CloudConfig& out_;
  const Locator& where_;
};

// The maps and lists of a document by identity (yaml-cpp nodes have no
// hash: looked up by their position, then compared with is()).
class NodeSet {
 public:
  bool insert(const Node& n) {  // false: there already
    auto range = by_pos_.equal_range(n.Mark().pos);
    for (auto it = range.first; it != range.second; ++it)
      if (it->second.is(n)) return false;
    by_pos_.emplace(n.Mark().pos, n);
    return true;
  }

 private:
  std::multimap<int, Node> by_pos_;
};

// `<<` as YAML 1.1 merge key: plain (a quoted '<<' is a key like any
// other), or tagged !!merge.
bool is_merge_key(const Node& k) {
  return k.IsScalar() && k.Scalar() == "<<" && (k.Tag() == "?" || k.Tag() == "tag:yaml.org,2002:merge");
}

// Where yaml-cpp and PyYAML (cloud-init's reader) differ: a quoted scalar
// whose closing quote never comes (yaml-cpp ends it at the end of the
// file: refused), duplicate keys (PyYAML keeps the last, yaml-cpp the
// first: the earlier ones are removed, with a warning), and merge keys
// (`<<: *base`: yaml-cpp 0.7 keeps `<<` as a key; PyYAML merges the
// mapping, or the mappings of a list, into the one that has the key, the
// keys it gives itself winning, then the earlier mapping of a list, then
// the later of two `<<` keys; resolved here). An alias is the node it
// names: each map and list is gone through once (`seen`).
void check_tree(Node n, const std::string& text, std::vector<std::string>& warnings, NodeSet& seen, int depth = 0) {
  if (depth > 200) fail_at(n, "nested too deeply");
  if (n.IsScalar() && n.Tag() == "!") {
    const YAML::Mark m = n.Mark();
    size_t pos = m.pos >= 0 ? static_cast<size_t>(m.pos) : text.size();
    if (pos < text.size() && (text[pos] == '"' || text[pos] == '\'')) {
      char q = text[pos];
      size_t i = pos + 1;
      for (; i < text.size(); ++i) {
        if (q == '"' && text[i] == '\\') {
          ++i;
          continue;
        }
        if (text[i] == q) {
          if (q == '\'' && i + 1 < text.size() && text[i + 1] == '\'') {
            ++i;
            continue;
          }
          break;
        }
      }
      if (i >= text.size()) fail_at(n, std::string("unclosed ") + (q == '"' ? "double" : "single") + " quote");
    }
  }
  if ((n.IsSequence() || n.IsMap()) && !seen.insert(n)) return;
  if (n.IsSequence())
    for (size_t i = 0; i < n.size(); ++i) check_tree(n[i], text, warnings, seen, depth + 1);
  if (n.IsMap()) {
    std::map<std::string, int> keys;
    std::vector<std::string> earlier;  // one entry per occurrence to drop
    std::vector<std::pair<Node, Node>> merges;
    for (auto it = n.begin(); it != n.end(); ++it) {
      const Node k = it->first;
      check_tree(k, text, warnings, seen, depth + 1);
      check_tree(it->second, text, warnings, seen, depth + 1);
      if (is_merge_key(k)) {
        merges.emplace_back(k, it->second);
        continue;
      }
      if (!k.IsScalar()) continue;
      auto [at, fresh] = keys.emplace(k.Scalar(), line_of(k));
      if (fresh) continue;
      warnings.push_back("user-data line " + std::to_string(at->second) + ": key '" + k.Scalar() +
                         "' comes again at line " + std::to_string(line_of(k)) +
                         ": the last one is used, as cloud-init does");
      at->second = line_of(k);
      earlier.push_back(k.Scalar());
    }
    for (const auto& key : earlier) n.remove(key);  // removes the first of them
    if (merges.empty()) return;
    std::vector<Node> sources;  // the mappings to merge, the one that wins last
    for (const auto& [k, v] : merges) {
      if (v.IsMap()) {
        sources.push_back(v);
      } else if (v.IsSequence()) {
        for (size_t i = v.size(); i-- > 0;) {
          if (!v[i].IsMap()) fail_at(v[i], "'<<' (a YAML merge key) takes a mapping or a list of mappings");
          sources.push_back(v[i]);
        }
      } else {
        fail_at(v, "'<<' (a YAML merge key) takes a mapping or a list of mappings");
      }
    }
    // (Never `node = other` on a yaml-cpp node: that writes through to
    // the node it refers to. Superseded entries are marked instead.)
    struct Entry {
      Node key, value;
      bool superseded = false;
    };
    std::vector<Entry> merged;
    std::map<std::string, size_t> index;
    for (const auto& src : sources)
      for (auto it = src.begin(); it != src.end(); ++it) {
        if (it->first.IsScalar()) {
          auto [at, fresh] = index.emplace(it->first.Scalar(), merged.size());
          if (!fresh) {
            merged[at->second].superseded = true;
            at->second = merged.size();
          }
        }
        merged.push_back({it->first, it->second});
      }
    for (const auto& [k, v] : merges) n.remove(k);
    for (const auto& e : merged)
      if (!e.superseded && (!e.key.IsScalar() || !keys.count(e.key.Scalar()))) n.force_insert(e.key, e.value);
  }
}

// The line and column of the first quote that opens a scalar and never
// closes, by a plain scan: a better place to name than where yaml-cpp
// gave up (the end of the file). {0, 0} when none is found.
std::pair<int, int> unclosed_quote(const std::string& text) {
  int line = 1;
  size_t line_start = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '\n') {
      ++line;
      line_start = i + 1;
      continue;
    }
    if (c == '#' && (i == line_start || text[i - 1] == ' ' || text[i - 1] == '\t')) {
      while (i + 1 < text.size() && text[i + 1] != '\n') ++i;
      continue;
    }
    if (c != '"' && c != '\'') continue;
    size_t p = i;
    while (p > line_start && (text[p - 1] == ' ' || text[p - 1] == '\t')) --p;
    bool opens = p == line_start || std::strchr(":-[{,?", text[p - 1]) != nullptr;
    if (!opens) {
      while (i + 1 < text.size() && text[i + 1] != '\n') ++i;  // a quote inside plain text
      continue;
    }
    size_t j = i + 1;
    int lines = 0;
    for (; j < text.size(); ++j) {
      if (c == '"' && text[j] == '\\') {
        ++j;
        continue;
      }
      if (text[j] == '\n') ++lines;
      if (text[j] == c) {
        if (c == '\'' && j + 1 < text.size() && text[j + 1] == '\'') {
          ++j;
          continue;
        }
        break;
      }
    }
    if (j >= text.size()) return {line, static_cast<int>(i - line_start) + 1};
    line += lines;
    if (lines) line_start = text.rfind('\n', j) + 1;
    i = j;
  }
  return {0, 0};
}

// --- one document -----------------------------------------------------------

// One YAML document, parsed and checked (check_tree); its warnings go to
// `warnings`. Errors: "user-data line L, column C: ...".
Node load_document(const std::string& text, std::vector<std::string>& warnings) {
  Node root;
  try {
    std::vector<Node> docs = YAML::LoadAll(text);
    if (docs.size() > 1) {
      // Name the "---" that starts it, as PyYAML does.
      size_t pos = std::min(static_cast<size_t>(std::max(docs[1].Mark().pos, 0)), text.size());
      size_t marker = text.rfind("\n---", pos);
      int line = marker == std::string::npos ? docs[1].Mark().line + 1
                                             : static_cast<int>(std::count(text.begin(), text.begin() + marker + 1, '\n')) + 1;
      throw Error("user-data line " + std::to_string(line) + ", column 1: a second YAML document; user-data is one");
    }
    if (!docs.empty()) root = docs[0];
    NodeSet seen;
    check_tree(root, text, warnings, seen);
  } catch (const YAML::ParserException& e) {
    if (auto [line, column] = unclosed_quote(text); line > 0)
      throw Error("user-data line " + std::to_string(line) + ", column " + std::to_string(column) +
                  ": unclosed quote (" + e.msg + " at line " + std::to_string(e.mark.line + 1) + ")");
    throw Error("user-data line " + std::to_string(e.mark.line + 1) + ", column " + std::to_string(e.mark.column + 1) +
                ": " + e.msg);
  } catch (const YAML::Exception& e) {
    throw Error("user-data line " + std::to_string(e.mark.line + 1) + ", column " + std::to_string(e.mark.column + 1) +
                ": " + e.msg);
  }
  if (!root.IsNull() && !root.IsMap()) fail_at(root, "the user-data must be a mapping of module keys");
  return root;
}

// The modules of `root` (a mapping, or null) into `out`.
void read_config(const Node& root, const Locator& where, CloudConfig& out) {
  if (root.IsNull()) return;  // only the header: nothing to do
  try {
    Reader(out, where).top(root);
    // `user:` alone asks for the default user (cloud-init creates it even
    // without it; Ultari only when the user-data asks: nothing undeclared).
    if (out.users.empty() && out.default_user) {
      User d;
      d.is_default = true;
      d.line = out.default_user->line;
      out.users.push_back(d);
    }
  } catch (const YAML::Exception& e) {  // a conversion yaml-cpp refused
    throw Error("user-data line " + std::to_string(e.mark.line + 1) + ", column " + std::to_string(e.mark.column + 1) +
                ": " + e.msg);
  }
}

// --- merging cloud-config parts (cloud-init's mergers) -------------------------

// The mergers of a part: which types merge and how (cloud-init's
// cloudinit/mergers m_dict, m_list, m_str). A type without a merger keeps
// the earlier value.
struct Mergers {
  bool dict = false, dict_replace = false, dict_recurse_list = false, dict_recurse_str = false,
       dict_allow_delete = false;
  enum class ListMethod { Replace, Append, Prepend, NoReplace };
  bool list = false, list_recurse_dict = false, list_recurse_list = false, list_recurse_str = false;
  ListMethod list_method = ListMethod::Replace;
  bool str = false, str_append = false;

  bool empty() const { return !dict && !list && !str; }
  std::string text() const {
    std::string t;
    auto one = [&](const char* name, std::vector<const char*> opts) {
      std::string o;
      for (const char* x : opts)
        if (x) o += (o.empty() ? "" : ",") + std::string(x);
      t += (t.empty() ? "" : "+") + std::string(name) + "(" + o + ")";
    };
    if (dict)
      one("dict", {dict_replace ? "replace" : "no_replace", dict_recurse_list ? "recurse_list" : nullptr,
                   dict_recurse_str ? "recurse_str" : nullptr, dict_allow_delete ? "allow_delete" : nullptr});
    if (list)
      one("list", {list_method == ListMethod::Append    ? "append"
                   : list_method == ListMethod::Prepend ? "prepend"
                   : list_method == ListMethod::Replace ? "replace"
                                                        : "no_replace",
                   list_recurse_dict ? "recurse_dict" : nullptr, list_recurse_list ? "recurse_list" : nullptr,
                   list_recurse_str ? "recurse_str" : nullptr});
    if (str) one("str", {str_append ? "append" : nullptr});
    return t;
  }

  // One merger with its options, as cloud-init's mergers.construct takes
  // them: the first of a type wins. Throws Error for what cloud-init does
  // not have (a third-party merger, an option no merger reads).
  void add(std::string name, std::vector<std::string> opts) {
    for (auto& c : name) c = static_cast<char>(c == '-' ? '_' : std::tolower(static_cast<unsigned char>(c)));
    if (name.rfind("m_", 0) == 0) name = name.substr(2);
    for (auto& o : opts)
      for (auto& c : o) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    auto has = [&](const char* o) { return std::find(opts.begin(), opts.end(), o) != opts.end(); };
    auto only = [&](const std::string& what, std::initializer_list<const char*> known) {
      for (const auto& o : opts)
        if (std::none_of(known.begin(), known.end(), [&](const char* k) { return o == k; })) {
          std::string list;
          for (const char* k : known) list += (list.empty() ? "" : ", ") + std::string(k);
          throw Error("'" + o + "' is not an option of " + what + "() (it has " + list + ")");
        }
    };
    if (name == "dict") {
      only("dict", {"replace", "no_replace", "recurse_list", "recurse_array", "recurse_str", "recurse_dict", "allow_delete"});
      if (dict) return;
      dict = true;
      dict_replace = has("replace");
      dict_recurse_list = has("recurse_list") || has("recurse_array");
      dict_recurse_str = has("recurse_str");
      dict_allow_delete = has("allow_delete");
    } else if (name == "list") {
      only("list", {"append", "prepend", "replace", "no_replace", "recurse_dict", "recurse_list", "recurse_array",
                    "recurse_str"});
      if (list) return;
      list = true;
      list_method = has("append")    ? ListMethod::Append
                    : has("prepend") ? ListMethod::Prepend
                    : has("replace") ? ListMethod::Replace
                    : has("no_replace") ? ListMethod::NoReplace
                                        : ListMethod::Replace;
      list_recurse_dict = has("recurse_dict");
      list_recurse_list = has("recurse_list") || has("recurse_array");
      list_recurse_str = has("recurse_str");
    } else if (name == "str") {
      only("str", {"append"});
      if (str) return;
      str = true;
      str_append = has("append");
    } else {
      throw Error("'" + name + "' is not one of cloud-init's mergers (dict, list, str); Ultari runs no others");
    }
  }

  // "list(append)+dict(no_replace,recurse_list)+str()"
  void add_string(const std::string& spec) {
    static const std::regex kOne("([a-z_][a-z0-9_]*)\\((.*?)\\)");
    size_t start = 0;
    while (start <= spec.size()) {
      size_t plus = spec.find('+', start);
      std::string one = spec.substr(start, plus == std::string::npos ? std::string::npos : plus - start);
      start = plus == std::string::npos ? spec.size() + 1 : plus + 1;
      for (auto& c : one) c = static_cast<char>(c == '-' ? '_' : std::tolower(static_cast<unsigned char>(c)));
      one.erase(0, one.find_first_not_of(" \t"));
      one.erase(one.find_last_not_of(" \t") + 1);
      if (one.empty()) continue;
      std::smatch m;
      if (!std::regex_match(one, m, kOne)) throw Error("'" + one + "' is not of the form name(option,...)");
      std::vector<std::string> opts;
      std::string o = m[2];
      size_t s = 0;
      while (s <= o.size()) {
        size_t comma = o.find(',', s);
        std::string x = o.substr(s, comma == std::string::npos ? std::string::npos : comma - s);
        s = comma == std::string::npos ? o.size() + 1 : comma + 1;
        x.erase(0, x.find_first_not_of(" \t"));
        x.erase(x.find_last_not_of(" \t") + 1);
        if (!x.empty()) opts.push_back(x);
      }
      add(m[1], opts);
    }
  }
};

// The merge_how (or merge_type) key of a part's root, taken out of it (it
// is no module): its mergers into `m`. Throws NodeError at the key's value.
void take_merge_key(Node root, Mergers& m, std::vector<std::string>& warnings, const Locator& where) {
  if (!root.IsMap()) return;
  std::optional<Node> found_key, found_value;  // (never `node = other`: see merge())
  std::string key;
  for (const char* k : {"merge_how", "merge_type"})
    for (auto it = root.begin(); it != root.end(); ++it)
      if (key.empty() && it->first.IsScalar() && it->first.Scalar() == k) {
        key = k;
        found_key.emplace(it->first);
        found_value.emplace(it->second);
      }
  if (key.empty()) return;
  const Node key_node = *found_key, value = *found_value;
  const Node& croot = root;
  if (key == "merge_how" && croot["merge_type"])
    warnings.push_back(where.at(key_node, false) + ": 'merge_type' is ignored: 'merge_how' is given (as cloud-init does)");
  try {
    if (value.IsScalar() && yaml_type(value) == "str") {
      m.add_string(value.Scalar());
    } else if (value.IsSequence()) {
      for (size_t i = 0; i < value.size(); ++i) {
        const Node e = value[i];
        std::string name;
        std::vector<std::string> opts;
        if (e.IsMap() && e["name"] && e["name"].IsScalar()) {
          name = e["name"].Scalar();
          if (e["settings"]) {
            if (!e["settings"].IsSequence()) fail_at(e["settings"], "'" + key + "[" + std::to_string(i) + "].settings' must be a list");
            for (size_t k = 0; k < e["settings"].size(); ++k) opts.push_back(Reader::scalar(e["settings"][k], key + ".settings"));
          }
        } else if (e.IsSequence() && e.size() >= 1 && e[0].IsScalar()) {
          name = e[0].Scalar();
          for (size_t k = 1; k < e.size(); ++k) opts.push_back(Reader::scalar(e[k], key));
        } else {
          fail_at(e, "'" + key + "[" + std::to_string(i) + "]' must be {name: ..., settings: [...]} or [name, option, ...]");
        }
        name.erase(0, name.find_first_not_of(" \t"));
        name.erase(name.find_last_not_of(" \t") + 1);
        m.add(name, opts);
      }
    } else {
      fail_at(value, "'" + key + "' must be a string such as 'list(append)+dict(recurse_array)+str()' or a list");
    }
  } catch (const NodeError&) {
    throw;
  } catch (const Error& e) {
    fail_at(value, "'" + key + "': " + e.what());
  }
  if (!m.empty() && !m.dict)
    fail_at(value, "'" + key + "' names no dict() merger: cloud-init would merge nothing of this cloud-config "
                   "(add dict(...), e.g. 'list(append)+dict(recurse_array)+str()')");
  root.remove(key_node);
}

enum class Kind { Dict, List, Str, Null, Other };
Kind kind_of(const Node& n) {
  if (!n.IsDefined() || n.IsNull()) return Kind::Null;
  if (n.IsMap()) return Kind::Dict;
  if (n.IsSequence()) return Kind::List;
  if (n.Tag() == "tag:yaml.org,2002:binary") return Kind::Other;  // bytes to cloud-init: no merger takes them
  std::string t = yaml_type(n);
  return t == "str" ? Kind::Str : t == "null" ? Kind::Null : Kind::Other;
}
const char* kind_name(Kind k) {
  switch (k) {
    case Kind::Dict: return "mapping";
    case Kind::List: return "list";
    case Kind::Str: return "string";
    case Kind::Null: return "null";
    default: return "non-string value";
  }
}

// cloud-init's merger.merge(old, new): by the type of `old`. New
// containers are made; the values in them stay the parts' own nodes (so
// that a message can still name the part and line a value came from).
// Throws Error ("'runcmd': ...") where cloud-init would make nonsense (a
// mapping appended to a list character by character).
Node merge(const Node& old, const Node& add, const Mergers& m, const std::string& path);

Node merge_value(const Node& old, const Node& add, const Mergers& m, const std::string& path, bool recurse_dict,
                 bool recurse_list, bool recurse_str, bool replace) {
  Kind k = kind_of(add);
  if ((k == Kind::List && recurse_list) || (k == Kind::Str && recurse_str) || (k == Kind::Dict && recurse_dict))
    return merge(old, add, m, path);
  return replace ? add : old;
}

Node merge(const Node& old, const Node& add, const Mergers& m, const std::string& path) {
  const std::string at = path.empty() ? "the top level" : "'" + path + "'";
  switch (kind_of(old)) {
    case Kind::Dict: {
      if (!m.dict || kind_of(add) != Kind::Dict) return old;
      // (A value is replaced by destroying the handle and making a new
      // one, never by `node = other`: yaml-cpp would write that through to
      // the part's own node.)
      struct Entry {
        Node key;
        std::optional<Node> value;
        bool gone = false;
      };
      std::vector<Entry> entries;
      std::unordered_map<std::string, size_t> index;
      for (auto it = old.begin(); it != old.end(); ++it) {
        if (it->first.IsScalar()) index.emplace(it->first.Scalar(), entries.size());
        entries.push_back({it->first, it->second});
      }
      for (auto it = add.begin(); it != add.end(); ++it) {
        auto found = it->first.IsScalar() ? index.find(it->first.Scalar()) : index.end();
        if (found == index.end() || entries[found->second].gone) {
          if (it->first.IsScalar()) index[it->first.Scalar()] = entries.size();
          entries.push_back({it->first, it->second});
          continue;
        }
        Entry& e = entries[found->second];
        if (kind_of(it->second) == Kind::Null && m.dict_allow_delete) {
          e.gone = true;
          continue;
        }
        std::string sub = path.empty() ? it->first.Scalar() : path + "." + it->first.Scalar();
        Node value = m.dict_replace ? it->second
                                    : merge_value(*e.value, it->second, m, sub, true, m.dict_recurse_list,
                                                  m.dict_recurse_str, false);
        e.value.reset();
        e.value.emplace(value);
      }
      Node out(YAML::NodeType::Map);
      for (const auto& e : entries)
        if (!e.gone) out.force_insert(e.key, *e.value);
      return out;
    }
    case Kind::List: {
      if (!m.list) return old;
      Kind k = kind_of(add);
      using LM = Mergers::ListMethod;
      if (m.list_method == LM::Replace && k != Kind::List) return add;
      if (m.list_method == LM::Append || m.list_method == LM::Prepend) {
        if (k != Kind::List)
          throw Error(at + ": cannot " + (m.list_method == LM::Append ? "append" : "prepend") + " a " + kind_name(k) +
                      " to a list");
        Node out(YAML::NodeType::Sequence);
        const Node& first = m.list_method == LM::Append ? old : add;
        const Node& second = m.list_method == LM::Append ? add : old;
        for (size_t i = 0; i < first.size(); ++i) out.push_back(first[i]);
        for (size_t i = 0; i < second.size(); ++i) out.push_back(second[i]);
        return out;
      }
      if (m.list_method == LM::NoReplace || k != Kind::List) return old;
      // replace: item by item, the earlier list's length kept (cloud-init's m_list)
      Node out(YAML::NodeType::Sequence);
      for (size_t i = 0; i < old.size(); ++i)
        out.push_back(i < add.size() ? merge_value(old[i], add[i], m, path + "[" + std::to_string(i) + "]",
                                                   m.list_recurse_dict, m.list_recurse_list, m.list_recurse_str, true)
                                     : old[i]);
      return out;
    }
    case Kind::Str: {
      if (!m.str) return old;
      if (!m.str_append) return add;
      if (kind_of(add) != Kind::Str) throw Error(at + ": cannot append a " + std::string(kind_name(kind_of(add))) + " to a string");
      return Node(old.Scalar() + add.Scalar());
    }
    default:
      return old;  // no merger for numbers, booleans, null: the earlier value stays
  }
}

// --- #cloud-config-jsonp: an RFC 6902 JSON patch of the merged config -------------

// RFC 6901: "" is the whole document; "/a/b~1c" is a, then b/c.
std::vector<std::string> pointer_tokens(const std::string& ptr) {
  std::vector<std::string> out;
  if (ptr.empty()) return out;
  if (ptr[0] != '/') throw Error("'" + ptr + "' is not a JSON pointer (it starts with '/')");
  size_t i = 1;
  for (;;) {
    size_t j = ptr.find('/', i);
    std::string raw = ptr.substr(i, j == std::string::npos ? std::string::npos : j - i), t;
    for (size_t k = 0; k < raw.size(); ++k) {
      if (raw[k] != '~') {
        t.push_back(raw[k]);
        continue;
      }
      if (k + 1 < raw.size() && (raw[k + 1] == '0' || raw[k + 1] == '1')) {
        t.push_back(raw[++k] == '0' ? '~' : '/');
        continue;
      }
      throw Error("'" + ptr + "': '~' is not followed by 0 or 1");
    }
    out.push_back(t);
    if (j == std::string::npos) break;
    i = j + 1;
  }
  return out;
}

// An array index token: digits without a leading zero ("-" is handled by
// the caller). -1 when it is none.
long index_of(const std::string& t, size_t size) {
  if (t.empty() || t.size() > 9 || (t.size() > 1 && t[0] == '0') || t.find_first_not_of("0123456789") != std::string::npos)
    return -1;
  long i = std::stol(t);
  return static_cast<size_t>(i) <= size ? i : -1;
}

Node lookup(const Node& doc, const std::vector<std::string>& t) {
  Node cur = doc;
  for (const auto& k : t) {
    if (cur.IsMap()) {
      bool found = false;
      for (auto it = cur.begin(); it != cur.end(); ++it)
        if (it->first.IsScalar() && it->first.Scalar() == k) {
          Node next = it->second;
          cur.reset(next);
          found = true;
          break;
        }
      if (!found) throw Error("no member '" + k + "'");
    } else if (cur.IsSequence()) {
      long i = index_of(k, cur.size());
      if (i < 0 || static_cast<size_t>(i) >= cur.size()) throw Error("no element '" + k + "'");
      Node next = cur[static_cast<size_t>(i)];
      cur.reset(next);
    } else {
      throw Error("'" + k + "' is below a value that is neither a mapping nor a list");
    }
  }
  return cur;
}

enum class PatchOp { Add, Remove, Replace };

// A new document: `doc` with the change at `t` (new containers along the
// path; every other node is the parts' own, as merge() keeps them).
Node patched(const Node& doc, const std::vector<std::string>& t, size_t depth, PatchOp op, const Node& value) {
  if (depth == t.size()) {
    if (op == PatchOp::Remove) throw Error("the whole document cannot be removed");
    return value;
  }
  const std::string& k = t[depth];
  const bool last = depth + 1 == t.size();
  if (doc.IsMap()) {
    Node out(YAML::NodeType::Map);
    bool found = false;
    for (auto it = doc.begin(); it != doc.end(); ++it) {
      if (!(it->first.IsScalar() && it->first.Scalar() == k)) {
        out.force_insert(it->first, it->second);
        continue;
      }
      found = true;
      if (last && op == PatchOp::Remove) continue;
      out.force_insert(it->first, last ? value : patched(it->second, t, depth + 1, op, value));
    }
    if (!found) {
      if (!last || op != PatchOp::Add) throw Error("no member '" + k + "'");
      out.force_insert(Node(k), value);
    }
    return out;
  }
  if (doc.IsSequence()) {
    long i = k == "-" && last && op == PatchOp::Add ? static_cast<long>(doc.size()) : index_of(k, doc.size());
    bool within = i >= 0 && (static_cast<size_t>(i) < doc.size() || (last && op == PatchOp::Add));
    if (!within) throw Error("no element '" + k + "'");
    Node out(YAML::NodeType::Sequence);
    for (size_t j = 0; j <= doc.size(); ++j) {
      if (static_cast<long>(j) == i) {
        if (!last) out.push_back(patched(doc[j], t, depth + 1, op, value));
        else if (op == PatchOp::Add) out.push_back(value);
        else if (op == PatchOp::Replace) out.push_back(value);
        if (last && op == PatchOp::Add && j < doc.size()) out.push_back(doc[j]);
        continue;
      }
      if (j < doc.size()) out.push_back(doc[j]);
    }
    return out;
  }
  throw Error("'" + k + "' is below a value that is neither a mapping nor a list");
}

bool same_value(const Node& a, const Node& b) {
  if (a.IsMap() != b.IsMap() || a.IsSequence() != b.IsSequence()) return false;
  if (a.IsSequence()) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i)
      if (!same_value(a[i], b[i])) return false;
    return true;
  }
  if (a.IsMap()) {
    if (a.size() != b.size()) return false;
    for (auto it = a.begin(); it != a.end(); ++it) {
      bool found = false;
      for (auto jt = b.begin(); jt != b.end(); ++jt)
        if (jt->first.Scalar() == it->first.Scalar()) {
          found = same_value(it->second, jt->second);
          break;
        }
      if (!found) return false;
    }
    return true;
  }
  std::string ta = yaml_type(a), tb = yaml_type(b);
  if (ta == "null" || tb == "null") return ta == tb;
  return ta == tb && a.Scalar() == b.Scalar();
}

// Applies the patch `ops` (a parsed JSON array) to `doc`, as python's
// jsonpatch does for cloud-init. Throws Error naming the operation.
Node apply_patch(const Node& doc, const Node& ops) {
  if (!ops.IsSequence()) throw Error("a JSON patch is a list of operations");
  Node cur = doc;
  for (size_t i = 0; i < ops.size(); ++i) {
    const Node o = ops[i];
    std::string what = "operation " + std::to_string(i + 1);
    try {
      if (!o.IsMap() || !o["op"] || !o["op"].IsScalar() || !o["path"] || !o["path"].IsScalar())
        throw Error("it needs 'op' and 'path'");
      std::string op = o["op"].Scalar(), path = o["path"].Scalar();
      what += " ('" + op + "' " + path + ")";
      std::vector<std::string> t = pointer_tokens(path);
      auto from = [&] {
        if (!o["from"] || !o["from"].IsScalar()) throw Error("it needs 'from'");
        return pointer_tokens(o["from"].Scalar());
      };
      auto value = [&] {
        if (!o["value"]) throw Error("it needs 'value'");
        return o["value"];
      };
      Node next;
      if (op == "add") {
        next = patched(cur, t, 0, PatchOp::Add, value());
      } else if (op == "remove") {
        next = patched(cur, t, 0, PatchOp::Remove, Node());
      } else if (op == "replace") {
        lookup(cur, t);
        next = patched(cur, t, 0, PatchOp::Replace, value());
      } else if (op == "move" || op == "copy") {
        std::vector<std::string> f = from();
        if (op == "move" && t.size() > f.size() && std::equal(f.begin(), f.end(), t.begin()))
          throw Error("a value cannot move into itself");
        Node v = lookup(cur, f);
        Node base = op == "move" ? patched(cur, f, 0, PatchOp::Remove, Node()) : cur;
        next = patched(base, t, 0, PatchOp::Add, v);
      } else if (op == "test") {
        if (!same_value(lookup(cur, t), value())) throw Error("the test failed: the value differs");
        continue;
      } else {
        throw Error("'" + op + "' is not an operation (add, remove, replace, move, copy, test)");
      }
      cur.reset(next);
    } catch (const Error& e) {
      throw Error(what + ": " + e.what());
    }
  }
  return cur;
}

// --- user-data formats ------------------------------------------------------------

// What cloud-init takes a payload for by how it starts (handlers'
// INCLUSION_TYPES_MAP, longest first; the start lower-cased, leading
// blanks skipped). "" when none.
std::string type_from_start(std::string_view content) {
  static const std::pair<const char*, const char*> kStarts[] = {
      {"#cloud-config-archive", "text/cloud-config-archive"},
      {"#cloud-config-jsonp", "text/cloud-config-jsonp"},
      {"## template: jinja", "text/jinja2"},
      {"#cloud-boothook", "text/cloud-boothook"},
      {"#include-once", "text/x-include-once-url"},
      {"#part-handler", "text/part-handler"},
      {"#cloud-config", "text/cloud-config"},
      {"#upstart-job", "text/upstart-job"},
      {"#include", "text/x-include-url"},
      {"#!", "text/x-shellscript"},
  };
  size_t i = 0;
  while (i < content.size() && std::isspace(static_cast<unsigned char>(content[i]))) ++i;
  std::string start(content.substr(i, 32));
  for (auto& c : start) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (const auto& [prefix, type] : kStarts)
    if (start.rfind(prefix, 0) == 0) return type;
  return "";
}

// cloud-init's util.clean_filename: '/' to '_', then only letters,
// digits and "_-.()" kept.
std::string clean_filename(const std::string& name) {
  std::string out;
  for (char c : name) {
    if (c == '/') c = '_';
    if (std::isalnum(static_cast<unsigned char>(c)) || std::strchr("_-.()", c)) out.push_back(c);
  }
  return out;
}

std::string dos2unix(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i)
    if (!(s[i] == '\r' && i + 1 < s.size() && s[i + 1] == '\n')) out.push_back(s[i]);
  return out;
}

// The first line of `s`, shown in a message.
std::string start_of(const std::string& s) {
  std::string l = s.substr(0, s.find('\n'));
  while (!l.empty() && (l.back() == '\r' || l.back() == ' ' || l.back() == '\t')) l.pop_back();
  if (l.size() > 40) l = l.substr(0, 40) + "...";
  for (auto& c : l)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  return l;
}

// "user-data line 3, ..." -> "user-data part 2 (b.yaml) line 3, ...".
std::string relabel(const std::string& message, const std::string& label) {
  if (message.rfind("user-data line ", 0) == 0) return "user-data " + label + message.substr(9);
  if (message.rfind("user-data:", 0) == 0) return "user-data " + label + message.substr(9);
  return "user-data " + label + ": " + message;
}

// Where a node of the merged cloud-config came from: the part and its line.
class PartLocator : public Locator {
 public:
  void add(const std::string& label, const Node& root) {
    labels_.push_back(label);
    NodeSet seen;
    walk(root, labels_.size() - 1, seen, 0);
  }
  std::string at(const Node& n, bool column) const override {
    const YAML::Mark m = n.Mark();
    if (m.line < 0) return "user-data";
    std::string place = "line " + std::to_string(m.line + 1) +
                        (column ? ", column " + std::to_string(m.column + 1) : std::string());
    auto range = index_.equal_range(m.pos);
    for (auto it = range.first; it != range.second; ++it)
      if (it->second.second.is(n)) return "user-data " + labels_[it->second.first] + " " + place;
    if (labels_.size() == 1) return "user-data " + labels_[0] + " " + place;
    return "user-data (a cloud-config part) " + place;
  }

 private:
  void walk(const Node& n, size_t part, NodeSet& seen, int depth) {
    if (!n.IsDefined() || depth > 210) return;
    index_.emplace(n.Mark().pos, std::make_pair(part, n));
    if ((n.IsMap() || n.IsSequence()) && !seen.insert(n)) return;
    if (n.IsSequence())
      for (size_t i = 0; i < n.size(); ++i) walk(n[i], part, seen, depth + 1);
    if (n.IsMap())
      for (auto it = n.begin(); it != n.end(); ++it) {
        walk(it->first, part, seen, depth + 1);
        walk(it->second, part, seen, depth + 1);
      }
  }
  std::vector<std::string> labels_;
  std::multimap<int, std::pair<size_t, Node>> index_;
};

// cloud-init's name of a part without one: part-001.
std::string part_name(size_t index) {
  std::string n = std::to_string(index);
  return "part-" + std::string(n.size() < 3 ? 3 - n.size() : 0, '0') + n;
}

// A part of the user-data on its way to CloudConfig.
struct Piece {
  size_t index = 0;
  std::string filename;    // as given, or part-NNN
  std::string declared;    // its Content-Type ("text/x-not-multipart": a plain user-data)
  std::string type;        // what it is taken as
  std::string merge_type;  // its Merge-Type (or X-Merge-Type) header
  std::string content;
  std::string note;
  std::string label() const { return "part " + std::to_string(index) + " (" + filename + ")"; }
};

// The payload types cloud-init gunzips (user_data.py DECOMP_TYPES).
bool gzip_type(const std::string& t) {
  static const std::set<std::string> kTypes = {
      "application/gzip", "application/gzip-compressed", "application/gzipped", "application/x-compress",
      "application/x-compressed", "application/x-gunzip", "application/x-gzip", "application/x-gzip-compressed"};
  return kTypes.count(t) > 0;
}

// A #cloud-config-archive (text/cloud-config-archive) part: a YAML list
// whose entries become parts where it stands, as cloud-init's
// _explode_archive makes them: a string is a part's content; a mapping
// gives `content`, `type` (default: by how the content starts, else
// text/cloud-config), `filename`, and other keys as headers (Merge-Type).
// `launch-index` is kept by cloud-init only on the instance of that index;
// a sandbox has none, so all are kept, as on a data source without one.
std::vector<Piece> explode_archives(std::vector<Piece> in, bool plain, bool& exploded) {
  std::vector<Piece> out;
  for (auto& p : in) {
    static const std::set<std::string> kByStart = {"text/plain", "text/x-not-multipart", "text/x-shellscript"};
    std::string content = p.content;
    bool zipped = gzip_type(p.declared) || is_gzip(content);
    if (zipped) {
      try {
        content = gunzip(content, kMaxUserData);
      } catch (const Error&) {
        out.push_back(std::move(p));  // step 2 says what is wrong with it
        continue;
      }
    }
    bool archive = p.declared == "text/cloud-config-archive" ||
                   ((kByStart.count(p.declared) || zipped) && type_from_start(content) == "text/cloud-config-archive");
    if (!archive) {
      out.push_back(std::move(p));
      continue;
    }
    exploded = true;
    const std::string label = plain ? "user-data" : "user-data " + p.label();
    Node list;
    try {
      list = YAML::Load(content);
    } catch (const YAML::Exception& e) {
      throw Error(label + " (a cloud-config archive) line " + std::to_string(e.mark.line + 1) + ", column " +
                  std::to_string(e.mark.column + 1) + ": " + e.msg);
    }
    if (!list.IsSequence()) throw Error(label + ": a cloud-config archive must be a YAML list of parts");
    for (size_t i = 0; i < list.size(); ++i) {
      const Node e = list[i];
      const std::string at = label + " (a cloud-config archive) entry " + std::to_string(i + 1) + " (line " +
                             std::to_string(e.Mark().line + 1) + ")";
      Piece q;
      if (e.IsScalar()) {
        q.content = e.Scalar();
      } else if (e.IsMap()) {
        for (auto it = e.begin(); it != e.end(); ++it) {
          std::string key = it->first.Scalar(), lower = key;
          for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
          if (!it->second.IsScalar() && !it->second.IsNull())
            throw Error(at + ": '" + key + "' must be a string");
          std::string value = it->second.IsNull() ? "" : it->second.Scalar();
          if (lower == "content") q.content = value;
          else if (lower == "type") {  // (a MIME type, as cloud-init's email module reads it: lower case)
            q.declared = value;
            for (auto& c : q.declared) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
          }
          else if (lower == "filename") q.filename = value;
          else if (lower == "merge-type" || lower == "x-merge-type") q.merge_type = value;
        }
      } else {
        // cloud-init skips what is neither; a declared environment says so.
        throw Error(at + ": an entry is a string or a mapping with 'content'");
      }
      if (q.declared.empty()) {
        q.declared = type_from_start(q.content);
        if (q.declared.empty()) q.declared = "text/cloud-config";
      }
      if (q.declared == "text/cloud-config-archive") throw Error(at + ": an archive inside an archive");
      q.note = "from " + (plain ? std::string("the archive") : "archive " + p.label());
      out.push_back(std::move(q));
      if (out.size() > kMaxParts) throw Error("user-data: more than " + std::to_string(kMaxParts) + " parts");
    }
  }
  return out;
}

// cloud-init's numbering: parts in the order they are attached, part-NNN
// for those without a file name.
void number_pieces(std::vector<Piece>& pieces) {
  for (size_t i = 0; i < pieces.size(); ++i) {
    pieces[i].index = i + 1;
    if (pieces[i].filename.empty()) pieces[i].filename = part_name(i + 1);
    for (auto& c : pieces[i].filename)
      if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  }
}

// The parts of one user-data (the given one, or what an #include fetched):
// gzip undone, MIME split into its leaves, archives exploded; not yet
// numbered. `plain`: a single part that was not MIME.
std::vector<Piece> pieces_of(const std::string& user_data, bool& plain, const std::string& where) {
  std::string data = user_data;
  bool gzipped = is_gzip(data);
  if (gzipped) {
    try {
      data = gunzip(data, kMaxUserData);
    } catch (const Error& e) {
      throw Error(where + ": " + e.what());
    }
  }
  std::vector<Piece> pieces;
  plain = true;
  if (looks_like_mime(data)) {
    std::vector<MimePart> leaves;
    try {
      leaves = parse_mime(data, {kMaxUserData, kMaxParts, kMaxMimeDepth});
    } catch (const Error& e) {
      throw Error(where + ": " + e.what());
    }
    // Not MIME after all (no header at the top: Python's email reads the
    // whole as the body, as this does): a plain user-data.
    plain = leaves.size() == 1 && leaves[0].headers.empty();
    if (!plain) {
      if (leaves.empty()) throw Error(where + ": the MIME multi-part holds no parts");
      for (auto& leaf : leaves) {
        Piece p;
        p.filename = leaf.filename;
        p.declared = leaf.type;
        p.merge_type = leaf.header("Merge-Type");
        if (p.merge_type.empty()) p.merge_type = leaf.header("X-Merge-Type");
        p.content = std::move(leaf.body);
        pieces.push_back(std::move(p));
      }
    }
  }
  if (plain) {
    Piece p;
    p.declared = "text/x-not-multipart";
    p.content = std::move(data);
    pieces.push_back(std::move(p));
  }
  if (gzipped) pieces[0].note = "gzip";
  bool exploded = false;
  pieces = explode_archives(std::move(pieces), plain, exploded);
  if (exploded) plain = false;
  return pieces;
}

// Whether a part is an #include (-once) list, and its content (gunzipped).
bool is_include(const Piece& p, std::string& content) {
  static const std::set<std::string> kByStart = {"text/plain", "text/x-not-multipart", "text/x-shellscript"};
  content = p.content;
  bool zipped = gzip_type(p.declared) || is_gzip(content);
  if (zipped) {
    try {
      content = gunzip(content, kMaxUserData);
    } catch (const Error&) {
      return false;  // step 2 says what is wrong with it
    }
  }
  std::string by_start = type_from_start(content);
  return p.declared == "text/x-include-url" || p.declared == "text/x-include-once-url" ||
         ((kByStart.count(p.declared) || zipped) &&
          (by_start == "text/x-include-url" || by_start == "text/x-include-once-url"));
}

// The URLs of an #include list, as cloud-init's _do_include reads them:
// one a line; "#include" and "#include-once" may start a line (with a URL
// after them or not); other lines starting with '#' are comments. Only
// http:// and https:// are fetched.
std::vector<std::string> include_urls(const std::string& content, const std::string& where) {
  std::vector<std::string> urls;
  std::istringstream lines(content);
  for (std::string line; std::getline(lines, line);) {
    std::string lower = line;
    for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (lower.rfind("#include-once", 0) == 0) line = line.substr(13);
    else if (lower.rfind("#include", 0) == 0) line = line.substr(8);
    line.erase(0, line.find_first_not_of(" \t"));
    if (line.empty() || line[0] == '#') continue;
    while (!line.empty() && std::isspace(static_cast<unsigned char>(line.back()))) line.pop_back();
    if (line.empty()) continue;
    if (!(line.rfind("http://", 0) == 0 || line.rfind("https://", 0) == 0) ||
        line.find_first_of(" \t\"'\\") != std::string::npos)
      throw Error(where + ": '" + start_of(redacted(line)) + "' is not an http:// or https:// URL (the ones Ultari fetches)");
    urls.push_back(line);
  }
  if (urls.empty()) throw Error(where + ": an #include list names no URL");
  return urls;
}

// #include parts replaced by the parts of what their URLs hold (fetched
// with `fetch`, itself user-data of any kind), where they stand, to a
// depth of kMaxIncludeDepth, kMaxIncludeUrls fetches in all (each is a
// build sandbox: a list of many URLs whose answers make no part, such as
// an empty #cloud-config-archive, would otherwise keep the host busy for
// days, the part limit never reached).
constexpr int kMaxIncludeDepth = 4;
constexpr size_t kMaxIncludeUrls = kMaxParts;
std::vector<Piece> expand_includes(std::vector<Piece> in, bool plain, const Fetcher& fetch, int depth,
                                   bool& expanded, size_t& total, size_t& urls) {
  std::vector<Piece> out;
  for (auto& p : in) {
    std::string content;
    if (!is_include(p, content)) {
      out.push_back(std::move(p));
      continue;
    }
    expanded = true;
    std::string where = plain && depth == 0 ? "user-data" : "user-data part (" + (p.filename.empty() ? std::string("#include") : p.filename) + ")";
    if (!p.note.empty() && p.note.rfind("from ", 0) == 0) where = "user-data " + p.note;
    if (depth >= kMaxIncludeDepth)
      throw Error(where + ": #include nested more than " + std::to_string(kMaxIncludeDepth) + " deep");
    for (const auto& url : include_urls(content, where)) {
      if (++urls > kMaxIncludeUrls)
        throw Error(where + ": #include names more than " + std::to_string(kMaxIncludeUrls) +
                    " URLs in all (each is fetched in a build sandbox of its own)");
      std::string got = fetch(url);
      total += got.size();
      if (total > kMaxUserData)
        throw Error(where + ": what #include fetched is more than " + std::to_string(kMaxUserData >> 20) + " MiB");
      bool sub_plain = true;
      std::vector<Piece> sub = pieces_of(got, sub_plain, "user-data from " + redacted(url));
      for (auto& q : sub) q.note = "from " + redacted(url) + (q.note.empty() ? "" : ", " + q.note);
      sub = expand_includes(std::move(sub), false, fetch, depth + 1, expanded, total, urls);
      for (auto& q : sub) out.push_back(std::move(q));
      if (out.size() > kMaxParts) throw Error("user-data: more than " + std::to_string(kMaxParts) + " parts");
    }
  }
  return out;
}

// Why Ultari refuses a type ("" when it takes it).
std::string refusal(const std::string& type) {
  if (type == "text/cloud-config" || type == "text/cloud-config-jsonp" || type == "text/x-shellscript" ||
      type == "text/cloud-boothook" ||
      type == "text/x-shellscript-per-boot" || type == "text/x-shellscript-per-instance" ||
      type == "text/x-shellscript-per-once")
    return "";
  if (type == "text/part-handler") return "a part handler";  // (taken: see parse_user_data)
  if (type == "text/upstart-job")
    return "upstart jobs are not supported (there is no upstart in a sandbox), unless a part handler before it takes "
           "text/upstart-job";
  if (type == "text/cloud-config-archive")
    return "a cloud-config archive made by a template is not supported: give the archive itself";
  if (type == "text/plain" || type == "text/x-not-multipart")
    return "it starts with none of '#cloud-config', '#!', '#cloud-boothook', '## template: jinja' "
           "(cloud-init would ignore it): give it one of those or remove it";
  return "'" + type + "' is not a type Ultari runs (text/cloud-config, text/x-shellscript, text/cloud-boothook, "
                      "text/x-shellscript-per-boot, -per-instance, -per-once, text/jinja2), and no part handler "
                      "(text/part-handler) comes before it";
}

}  // namespace

std::string Command::describe() const {
  if (!argv.empty()) {
    std::string s = "[";
    for (size_t i = 0; i < argv.size(); ++i) s += (i ? ", " : "") + argv[i];
    return s + "]";
  }
  return shell;
}

std::string normalize_module(const std::string& name) {
  std::string n = name;
  std::replace(n.begin(), n.end(), '-', '_');
  bool ok = !n.empty() && n.size() <= 56;
  for (char c : n)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_')) ok = false;
  if (!ok) throw Error("'" + name + "' is not a kernel module name");
  return n;
}

CloudConfig parse_cloud_config(const std::string& text) {
  if (text.size() > kMaxUserData)
    throw Error("user-data is larger than " + std::to_string(kMaxUserData >> 20) + " MiB");
  size_t eol = text.find('\n');
  std::string first = text.substr(0, eol);
  while (!first.empty() && (first.back() == '\r' || first.back() == ' ' || first.back() == '\t')) first.pop_back();
  if (first != "#cloud-config")
    throw Error("a cloud-config must start with the line '#cloud-config'; it starts with '" + start_of(text) + "'");
  CloudConfig out;
  Locator plain;
  Node root = load_document(text, out.warnings);
  Mergers m;
  take_merge_key(root, m, out.warnings, plain);
  read_config(root, plain, out);
  out.canonical = text;
  out.parts.push_back({1, "part-001", "text/cloud-config", m.empty() ? "" : "merge " + m.text()});
  return out;
}

CloudConfig parse_user_data(const std::string& user_data, const nlohmann::json& vars, const Fetcher& fetch) {
  const std::string max = std::to_string(kMaxUserData >> 20) + " MiB";
  if (user_data.size() > kMaxUserData) throw Error("user-data is larger than " + max);
  CloudConfig out;

  // 1. The parts: the MIME leaves, or the whole; archives exploded and,
  // with a fetcher, #include lists replaced by what they name.
  bool plain = true;
  std::vector<Piece> pieces = pieces_of(user_data, plain, "user-data");
  if (fetch) {
    bool expanded = false;
    size_t fetched = 0, urls = 0;
    pieces = expand_includes(std::move(pieces), plain, fetch, 0, expanded, fetched, urls);
    if (expanded) plain = false;
  }
  number_pieces(pieces);

  // 2. Each part's type, content (gunzipped, rendered) and place.
  std::vector<Piece*> configs;
  std::map<std::string, size_t> script_names;  // name -> index in out.scripts
  size_t total = 0;
  for (auto& p : pieces) {
    auto fail = [&](const std::string& why) {
      if (plain) throw Error("user-data: " + why);
      throw Error("user-data " + p.label() + ", " + (p.type.empty() ? p.declared : p.type) + ": " + why);
    };
    p.type = p.declared;
    bool declared_gzip = gzip_type(p.declared);
    std::string as_given = p.content;  // a handler's part gets it so (but unpacked when declared gzip)
    if (declared_gzip || is_gzip(p.content)) {
      if (declared_gzip) p.type = "";  // unknown until it is unpacked
      try {
        p.content = gunzip(p.content, kMaxUserData - std::min(total, kMaxUserData));
      } catch (const Error& e) {
        fail(e.what());
      }
      p.note = "gzip";
      if (declared_gzip) as_given = p.content;
    }
    static const std::set<std::string> kByStart = {"", "text/plain", "text/x-not-multipart", "text/x-shellscript"};
    bool by_start = kByStart.count(p.type) > 0;
    if (by_start) {
      std::string t = type_from_start(p.content);
      p.type = !t.empty() ? t : p.type.empty() ? "text/plain" : p.type;
    }
    if (p.type == "text/jinja2" || is_jinja(p.content)) {
      if (!is_jinja(p.content)) fail("a jinja template must start with the line '## template: jinja'");
      size_t eol = p.content.find('\n');
      try {
        p.content = render_jinja(eol == std::string::npos ? "" : std::string_view(p.content).substr(eol + 1), vars, 2);
      } catch (const Error& e) {
        throw plain ? e : Error(relabel(e.what(), p.label()));
      }
      out.templated = true;
      p.note += std::string(p.note.empty() ? "" : ", ") + "jinja";
      if (by_start || p.type == "text/jinja2") {
        std::string t = type_from_start(p.content);
        if (t.empty() || t == "text/jinja2")
          fail("rendered, the template starts with '" + start_of(p.content) +
               "': none of '#cloud-config', '#!', '#cloud-boothook'");
        p.type = t;
      }
    }
    total += p.content.size();
    if (total > kMaxUserData) fail("the user-data decodes to more than " + max);
    if (std::all_of(p.content.begin(), p.content.end(), [](unsigned char c) { return std::isspace(c); })) {
      // cloud-init skips an empty payload.
      out.warnings.push_back("user-data" + (plain ? std::string() : " " + p.label()) + ": empty: ignored");
      p.note += std::string(p.note.empty() ? "" : ", ") + "empty: ignored";
      continue;
    }
    if (p.type == "text/x-include-url" || p.type == "text/x-include-once-url") {
      // (only without a fetcher: with one, they were replaced in step 1)
      for (const auto& url : include_urls(p.content, plain ? "user-data" : "user-data " + p.label()))
        out.includes.push_back(url);
      p.note += std::string(p.note.empty() ? "" : ", ") + "fetched at provisioning";
      continue;
    }
    std::string why = refusal(p.type);
    // Part handlers, and the parts of other types after one: its to take
    // (a handler registers its types where it stands, as cloud-init's
    // walker does). Which types it takes is known once it runs.
    bool handler = p.type == "text/part-handler";
    // (parsed without fetching, a handler may yet come from an #include
    // list before the part: the parse with the fetcher decides)
    bool may_have_handler = !out.handler_parts.empty() || (!fetch && !out.includes.empty());
    if (!why.empty() && (handler || (may_have_handler && p.type != "text/cloud-config-archive"))) {
      HandlerPart h;
      h.handler = handler;
      h.type = p.type;
      h.filename = p.filename;
      // A payload as it was given (cloud-init unpacks declared gzip types
      // alone, and renders templates of text/jinja2 parts alone).
      h.content = handler ? dos2unix(p.content) : as_given;
      h.part = "user-data " + p.label() + ", " + p.type;
      out.handler_parts.push_back(std::move(h));
      p.note += std::string(p.note.empty() ? "" : ", ") + (handler ? "run at provisioning" : "for a part handler");
      continue;
    }
    if (!why.empty()) {
      if (plain && (p.type == "text/plain" || p.type == "text/x-not-multipart"))
        throw Error("user-data must start with '#cloud-config', '#!', '#cloud-boothook' or '## template: jinja', or "
                    "be MIME multi-part; it starts with '" + start_of(p.content) + "'");
      fail(why);
    }
    if (p.type == "text/cloud-config" || p.type == "text/cloud-config-jsonp") {
      configs.push_back(&p);
      continue;
    }
    Script s;
    s.part = plain ? "user-data" : "user-data " + p.label();
    s.content = dos2unix(p.content);
    if (p.type == "text/cloud-boothook") {
      // cloud-init: the "#cloud-boothook" line off, leading blanks off.
      if (s.content.rfind("#cloud-boothook", 0) == 0) s.content = s.content.substr(15);
      s.content.erase(0, s.content.find_first_not_of(" \t\r\n"));
      if (s.content.rfind("#!", 0) != 0)
        fail("after its '#cloud-boothook' line a boot hook must start with '#!' (cloud-init runs it as a program)");
    } else if (s.content.rfind("#!", 0) != 0) {
      fail("a user script must start with '#!' (cloud-init runs it as a program)");
    }
    s.name = clean_filename(p.filename);
    if (s.name.empty() || s.name == "." || s.name == "..") s.name = part_name(p.index);
    if (p.type == "text/cloud-boothook") {
      out.boothooks.push_back(std::move(s));
      continue;
    }
    if (p.type.rfind("text/x-shellscript-per-", 0) == 0) {
      // A file of its directory: a later part of the same name replaces it.
      std::vector<Script>& dir = p.type == "text/x-shellscript-per-boot"       ? out.per_boot
                                 : p.type == "text/x-shellscript-per-instance" ? out.per_instance
                                                                               : out.per_once;
      auto same = std::find_if(dir.begin(), dir.end(), [&](const Script& x) { return x.name == s.name; });
      if (same != dir.end()) {
        out.warnings.push_back(same->part + ": its script file name '" + s.name + "' comes again in " + p.label() +
                               ": only the later one runs, as in cloud-init");
        *same = std::move(s);
      } else {
        dir.push_back(std::move(s));
      }
      continue;
    }
    // Scripts are files in one directory, run in name order: a later part
    // of the same name replaces the earlier, as in cloud-init.
    if (auto it = script_names.find(s.name); it != script_names.end()) {
      out.warnings.push_back(out.scripts[it->second].part + ": its script file name '" + s.name + "' comes again in " +
                             p.label() + ": only the later one runs, as in cloud-init");
      out.scripts[it->second] = std::move(s);
    } else {
      script_names.emplace(s.name, out.scripts.size());
      out.scripts.push_back(std::move(s));
    }
  }
  std::stable_sort(out.scripts.begin(), out.scripts.end(),
                   [](const Script& a, const Script& b) { return a.name < b.name; });

  // 3. The cloud-config parts, merged in order.
  if (plain && configs.size() == 1 && configs[0]->type == "text/cloud-config") {
    Locator where;
    Node root = load_document(configs[0]->content, out.warnings);
    Mergers m;
    take_merge_key(root, m, out.warnings, where);
    if (!m.empty()) configs[0]->note += std::string(configs[0]->note.empty() ? "" : ", ") + "merge " + m.text();
    read_config(root, where, out);
  } else if (!configs.empty()) {
    PartLocator where;
    std::optional<Node> merged;  // (re-made, never assigned: see merge())
    merged.emplace(YAML::NodeType::Map);
    for (Piece* p : configs) {
      const std::string label = p->label();
      if (p->type == "text/cloud-config-jsonp") {
        // cloud-init: the "#cloud-config-jsonp" start off, the rest a JSON
        // patch of what the parts before it made.
        std::string text = p->content;
        text.erase(0, text.find_first_not_of(" \t\r\n"));
        if (text.rfind("#cloud-config-jsonp", 0) == 0) text.erase(0, std::strlen("#cloud-config-jsonp"));
        Node ops;
        try {
          ops = YAML::Load(text);
        } catch (const YAML::Exception& e) {
          throw Error("user-data " + label + " (a JSON patch) line " + std::to_string(e.mark.line + 1) + ": " + e.msg);
        }
        {  // the checks every cloud-config gets (depth, aliases walked once, merge keys, duplicates)
          std::vector<std::string> warnings;
          NodeSet seen;
          try {
            check_tree(ops, text, warnings, seen);
          } catch (const Error& e) {
            throw Error(relabel(e.what(), label + " (a JSON patch)"));
          }
          for (const auto& w : warnings) out.warnings.push_back(relabel(w, label));
        }
        where.add(label, ops);
        try {
          Node next = apply_patch(*merged, ops);
          if (!next.IsMap() && !next.IsNull()) throw Error("the patched cloud-config is no mapping");
          merged.reset();
          merged.emplace(next);
        } catch (const Error& e) {
          throw Error("user-data " + label + ", a JSON patch: " + e.what());
        }
        p->note += std::string(p->note.empty() ? "" : ", ") + "json patch";
        continue;
      }
      std::vector<std::string> warnings;
      const Node root = [&] {
        try {
          return load_document(p->content, warnings);
        } catch (const Error& e) {
          throw Error(relabel(e.what(), label));
        }
      }();
      for (const auto& w : warnings) out.warnings.push_back(relabel(w, label));
      where.add(label, root);
      Mergers m;
      try {
        take_merge_key(root, m, out.warnings, where);
      } catch (const NodeError& e) {
        throw Error(where.at(e.node, true) + ": " + e.bare);
      }
      if (m.empty() && !p->merge_type.empty()) {
        try {
          m.add_string(p->merge_type);
        } catch (const Error& e) {
          throw Error("user-data " + label + ": its Merge-Type header '" + p->merge_type + "': " + e.what());
        }
        if (!m.dict)
          throw Error("user-data " + label + ": its Merge-Type header '" + p->merge_type +
                      "' names no dict() merger: cloud-init would merge nothing of this cloud-config");
      } else if (!p->merge_type.empty()) {
        // Both: cloud-init takes the key's mergers first, then the header's.
        try {
          m.add_string(p->merge_type);
        } catch (const Error& e) {
          throw Error("user-data " + label + ": its Merge-Type header '" + p->merge_type + "': " + e.what());
        }
      }
      if (m.empty()) m.add_string("dict(replace)+list()+str()");  // cloud-init's default for parts
      p->note += std::string(p->note.empty() ? "" : ", ") + "merge " + m.text();
      if (root.IsNull()) continue;
      try {
        Node next = merge(*merged, root, m, "");
        merged.reset();
        merged.emplace(next);
      } catch (const Error& e) {
        throw Error("user-data " + label + ": merged with " + m.text() + " into the parts before it: " + e.what());
      }
    }
    try {
      read_config(*merged, where, out);
    } catch (const NodeError& e) {
      throw Error(where.at(e.node, true) + ": " + e.bare);
    }
  }

  // 4. What the cache key hashes, and the part list.
  if (plain) {
    out.canonical = pieces[0].content;
  } else {
    out.canonical = "ultari-user-data-parts 1\n";
    for (const auto& p : pieces)
      out.canonical += "part " + std::to_string(p.index) + " " + p.type + " " + std::to_string(p.filename.size()) + ":" +
                       p.filename + " " + std::to_string(p.merge_type.size()) + ":" + p.merge_type + " " +
                       std::to_string(p.content.size()) + "\n" + p.content + "\n";
  }
  for (const auto& p : pieces) out.parts.push_back({p.index, p.filename, p.type, p.note});
  return out;
}

}  // namespace ultari::provision
