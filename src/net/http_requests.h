// Follows the requests of one HTTP/1.x connection from client to server
// (heads, Content-Length and chunked bodies, pipelining), so that every
// request on a kept-alive connection is checked, not only the first: a
// later request for another host on the same connection (domain fronting
// through keep-alive) is refused.
#pragma once
#include <cstdint>
#include <string>

namespace ultari::net {

class HttpRequests {
 public:
  // `name`: the host every request on this connection must name.
  explicit HttpRequests(std::string name) : name_(std::move(name)) {}
  // The next bytes from the client. False (and `why`: sni-mismatch,
  // http-smuggling, http-malformed, unsupported-protocol) when they must
  // not reach the server.
  bool feed(const char* data, size_t len, std::string& why);
  // How many of the next bytes are body or chunk data (which need not be
  // seen to follow the framing), and passing them without feed().
  uint64_t unseen() const;
  void skip(uint64_t n);

 private:
  bool head_done(std::string& why);
  enum class State { Head, Body, ChunkSize, ChunkData, ChunkEnd, Trailers, MaybeTunnel, Tunnel };
  State state_ = State::Head;
  std::string name_;
  std::string buf_;     // the head or line being read
  uint64_t left_ = 0;   // body or chunk bytes still to pass
  bool upgrade_ = false;
};

}  // namespace ultari::net
