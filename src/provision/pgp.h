// The little of OpenPGP that apt sources need: a key's ASCII armour undone
// (what `gpg --dearmor` gives), and the one key a key ID names picked out of
// what a key server answers, checked against its v4 fingerprint.
#pragma once
#include <functional>
#include <string>

namespace ultari::provision::pgp {

// The packets of the first "PUBLIC KEY BLOCK" armour in `text` (RFC 4880
// 6.2), its CRC-24 checked when it has one. Throws Error naming the fault.
std::string dearmor(const std::string& text);

// A key ID as cloud-init takes it ("0x" prefix, blanks between groups),
// upper-case hex: a 40-digit v4 fingerprint or a 16-digit long ID. A short
// ID (8 digits) is refused: anyone can make a key that has it.
std::string normalize_key_id(const std::string& id);

// The packets of the one primary key in `packets` whose v4 fingerprint is
// `id` (or ends with it, for a long ID), from its public-key packet to the
// next one: what `gpg --recv-keys ID` keeps of a key server's answer.
// `sha1_hex` hashes. Throws Error when no key, or more than one, matches,
// or the packets are malformed.
std::string select_key(const std::string& packets, const std::string& id,
                       const std::function<std::string(const std::string&)>& sha1_hex);

}  // namespace ultari::provision::pgp
