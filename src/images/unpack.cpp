#include "images/unpack.h"

#include <string>

#include "util/error.h"
#include "util/module.h"

namespace ultari::images {

std::unique_ptr<Unpacker> load_unpacker() {
  auto create = reinterpret_cast<Unpacker* (*)()>(
      module_entry("libultari_archive.so", "ultari_unpacker_create", "ultari image (libarchive)"));
  Unpacker* u = create();
  if (!u) throw Error("libultari_archive.so could not start");
  return std::unique_ptr<Unpacker>(u);
}

}  // namespace ultari::images
