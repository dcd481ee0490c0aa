// TLS for --inspect-tls: a certificate authority made per sandbox, the
// sandbox-facing side of a terminated connection (a certificate for the
// name the client asked for, signed by that CA) and the verified upstream
// side. OpenSSL lives in a module (libultari_tls.so) loaded with dlopen
// only when a sandbox asks for inspection: linked into libultari, its
// start-up cost would be paid by every run, --net none included.
#pragma once
#include <sys/types.h>

#include <memory>
#include <string>

namespace ultari::net::tls {

// A CA that exists for one sandbox: its certificate goes into the
// sandbox's trust store, its key never leaves memory.
struct Ca {
  std::string cert_pem;
  std::string key_pem;
};

// One side of a terminated connection over a non-blocking socket.
class Conn {
 public:
  enum Status { kOk, kWantRead, kWantWrite, kClosed, kFailed };
  virtual ~Conn() = default;
  // Handshake, read and write report kWantRead/kWantWrite when the socket
  // must become readable/writable first. `n` gets the bytes moved.
  virtual Status handshake() = 0;
  virtual Status read(char* buf, size_t len, size_t& n) = 0;
  virtual Status write(const char* buf, size_t len, size_t& n) = 0;
  // Bytes already decrypted and waiting to be read.
  virtual size_t pending() = 0;
  virtual void close_notify() = 0;
  // Why the last call failed (certificate verification, protocol).
  virtual std::string error() = 0;
  // The protocol the client and we agreed on with ALPN ("" when none).
  virtual std::string alpn() = 0;
};

// Nothing thrown crosses the module's boundary (it has a C++ runtime of
// its own): failures come back as `error`.
class Engine {
 public:
  virtual ~Engine() = default;
  // A fresh CA (EC P-256) named after `label`, valid for 30 days.
  virtual bool make_ca(const std::string& label, Ca& out, std::string& error) = 0;
  // Sets up serving: leaf certificates are signed by `ca`; upstream
  // servers are verified against the system trust store and `extra_ca_pem`
  // (PEM, may be empty).
  virtual bool serve_with(const Ca& ca, const std::string& extra_ca_pem, std::string& error) = 0;
  // The sandbox-facing side: presents a certificate for `name`, offers
  // HTTP/1.1 only with ALPN. Null on failure.
  virtual std::unique_ptr<Conn> accept(int fd, const std::string& name, std::string& error) = 0;
  // The upstream side: SNI `name`, certificate checked for `name`.
  virtual std::unique_ptr<Conn> connect(int fd, const std::string& name, std::string& error) = 0;
};

// Loads the OpenSSL module. Throws Error naming what is missing.
std::unique_ptr<Engine> load();

}  // namespace ultari::net::tls

// The module's one exported symbol.
extern "C" ultari::net::tls::Engine* ultari_tls_engine_create();
