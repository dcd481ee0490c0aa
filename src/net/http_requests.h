// Follows the requests of one HTTP/1.x connection from client to server
// (heads, Content-Length and chunked bodies, pipelining), so that every
// request on a kept-alive connection is checked, not only the first: a
// later request for another host on the same connection (domain fronting
// through keep-alive) is refused.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

namespace ultari::net {

// An absolute http:// target's authority without the `user:password@` that
// apt puts there (along with an Authorization header): false, untouched,
// when it holds more than one '@' (parsers disagree about such a host).
bool strip_userinfo(std::string& authority);

class HttpRequests {
 public:
  // `name`: the host every request on this connection must name; empty
  // (a request through the proxy to an address): any. With an output
  // buffer (feed's `out`), absolute-form targets go on in origin form.
  explicit HttpRequests(std::string name) : name_(std::move(name)) {}
  // The next bytes from the client. False (and `why`: sni-mismatch,
  // http-smuggling, http-malformed, unsupported-protocol) when they must
  // not reach the server.
  // With `out`, the bytes to pass on are appended to it: a request head
  // only once it is complete (and rewritten, see on_head), the rest as it
  // comes. Without, the caller passes on what it fed.
  bool feed(const char* data, size_t len, std::string& why, std::string* out = nullptr);
  // Called with every complete request head that passed the checks, before
  // it is passed on (with `out` only): may change it (secrets, the form an
  // upstream proxy takes) or refuse it (false, with `why`).
  std::function<bool(std::string& head, std::string& why)> on_head;
  // How many of the next bytes are body or chunk data (which need not be
  // seen to follow the framing), and passing them without feed().
  uint64_t unseen() const;
  void skip(uint64_t n);

 private:
  bool head_done(std::string& why);
  // Consumes what the current state takes of data[i..len), moving i.
  bool step(const char* data, size_t len, size_t& i, std::string& why, std::string* out);
  enum class State { Head, Body, ChunkSize, ChunkData, ChunkEnd, Trailers, MaybeTunnel, Tunnel };
  State state_ = State::Head;
  std::string name_;
  std::string buf_;     // the head or line being read
  uint64_t left_ = 0;   // body or chunk bytes still to pass
  bool upgrade_ = false;
  bool connect_ = false;     // the last request was CONNECT
  bool line_seen_ = false;   // Head: the request line is complete (and was checked)
};

}  // namespace ultari::net
