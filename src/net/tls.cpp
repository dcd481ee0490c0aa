#include "net/tls.h"

#include <string>

#include "util/error.h"
#include "util/module.h"

namespace ultari::net::tls {

std::unique_ptr<Engine> load() {
  auto create = reinterpret_cast<Engine* (*)()>(
      module_entry("libultari_tls.so", "ultari_tls_engine_create", "--inspect-tls (OpenSSL)"));
  return std::unique_ptr<Engine>(create());
}

}  // namespace ultari::net::tls
