// Random identifiers (sandbox ids, placeholders, temporary names).
#pragma once
#include <string>

namespace ultari {

// `bytes` random bytes (getrandom) as lower-case hex. Throws Error.
std::string random_hex(size_t bytes);

}  // namespace ultari
