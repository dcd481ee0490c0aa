#include "net/upstream.h"

#include <arpa/inet.h>
#include <strings.h>

#include <cctype>
#include <cstring>

#include "util/base64.h"
#include "util/error.h"
#include "util/url.h"

namespace ultari::net {

UpstreamUrl parse_upstream(const std::string& url) {
  if (url.find('@') != std::string::npos)  // not echoed: it holds a password
    throw Error("--net-upstream: no credentials in the URL (they would show in process listings); use "
                "--net-upstream-auth env:VAR or file:PATH holding user:password");
  const std::string what = "--net-upstream '" + url + "'";
  std::string rest;
  if (url.size() > 7 && strncasecmp(url.c_str(), "http://", 7) == 0) {
    rest = url.substr(7);
  } else {
    throw Error(what + ": expected http://HOST:PORT (an HTTP proxy; https:// and socks proxies are not supported)");
  }
  if (rest.ends_with("/")) rest.pop_back();
  if (rest.find_first_of("/?#") != std::string::npos) throw Error(what + ": expected http://HOST:PORT, no path");
  size_t colon = rest.rfind(':');
  if (colon == std::string::npos || colon + 1 == rest.size())
    throw Error(what + ": give the proxy's port (http://HOST:PORT)");
  std::string host = rest.substr(0, colon), port = rest.substr(colon + 1);
  uint16_t number = port_number(port);
  if (number == 0) throw Error(what + ": bad port '" + port + "'");
  if (host.empty()) throw Error(what + ": no host");
  for (char c : host)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_'))
      throw Error(what + ": bad host '" + host + "' (a name or an IPv4 address)");
  return {host, number};
}

std::string basic_credentials(std::string_view user_password) {
  if (user_password.find(':') == std::string_view::npos)
    throw Error("--net-upstream-auth: the value must be user:password");
  return "Basic " + base64_encode(user_password);
}

bool to_proxy_form(std::string& head, const std::string& name, uint16_t port, const std::string& auth,
                   std::string& why) {
  size_t eol = head.find("\r\n");
  size_t sp1 = head.find(' ');
  size_t sp2 = sp1 == std::string::npos ? std::string::npos : head.find(' ', sp1 + 1);
  if (eol == std::string::npos || sp2 == std::string::npos || sp2 > eol) {
    why = "http-malformed";
    return false;
  }
  std::string method = head.substr(0, sp1);
  std::string target = head.substr(sp1 + 1, sp2 - sp1 - 1);
  if (method == "CONNECT") {
    why = "http-connect";  // through the proxy: a tunnel to any port of that host
    return false;
  }
  if (method == "TRACE") {
    why = "http-trace";  // a proxy answers it itself, echoing the request: its credentials too
    return false;
  }
  std::string path;
  if (target.starts_with("/")) {
    path = target;
  } else if (target.size() > 7 && strncasecmp(target.c_str(), "http://", 7) == 0) {
    size_t end = target.find_first_of("/?#", 7);
    path = end == std::string::npos ? "/" : target.substr(end);
    if (path.front() != '/') path = "/" + path;
  } else {
    why = "http-malformed";  // the asterisk form and anything else
    return false;
  }
  std::string authority = name + (port == 80 ? "" : ":" + std::to_string(port));
  std::string out = method + " http://" + authority + path;
  out.append(head, sp2, eol + 2 - sp2);
  auto named = [&](size_t pos, const char* key) {
    size_t n = std::strlen(key);
    return strncasecmp(head.c_str() + pos, key, n) == 0 && pos + n < head.size() && head[pos + n] == ':';
  };
  for (size_t pos = eol + 2; pos < head.size();) {
    size_t end = head.find("\r\n", pos);
    if (end == std::string::npos) end = head.size();
    if (end == pos) break;  // the blank line
    if (named(pos, "upgrade")) {
      why = "unsupported-protocol";  // one request per proxy connection: no switch to another protocol
      return false;
    }
    if (named(pos, "host")) {
      out += "Host: " + authority + "\r\n";  // the flow's, whatever else the header said
    } else if (!(strncasecmp(head.c_str() + pos, "proxy-", 6) == 0 || named(pos, "connection") ||
                 named(pos, "keep-alive") || named(pos, "max-forwards"))) {
      out.append(head, pos, end + 2 - pos);
    }
    pos = end + 2;
  }
  if (!auth.empty()) out += "Proxy-Authorization: " + auth + "\r\n";
  out += "Connection: close\r\n\r\n";
  head = std::move(out);
  return true;
}

std::string connect_request(const std::string& host, uint16_t port, const std::string& auth) {
  std::string hp = host + ":" + std::to_string(port);
  std::string r = "CONNECT " + hp + " HTTP/1.1\r\nHost: " + hp + "\r\n";
  if (!auth.empty()) r += "Proxy-Authorization: " + auth + "\r\n";
  return r + "\r\n";
}

int response_status(std::string_view head) {
  if (head.size() < 12 || !head.starts_with("HTTP/1.") || head[8] != ' ') return -1;
  int code = 0;
  for (int i = 9; i < 12; ++i) {
    if (!std::isdigit(static_cast<unsigned char>(head[i]))) return -1;
    code = code * 10 + (head[i] - '0');
  }
  return code;
}

in_addr synthetic_address(uint32_t n) {
  in_addr a;
  a.s_addr = htonl(0xC6120000u + n + 1);  // 198.18.0.1 ...
  return a;
}

}  // namespace ultari::net
