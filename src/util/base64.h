// RFC 4648 base64 encoding (with padding).
#pragma once
#include <string>
#include <string_view>

namespace ultari {

std::string base64_encode(std::string_view data);

}  // namespace ultari
