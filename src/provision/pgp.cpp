#include "provision/pgp.h"

#include <cctype>
#include <cstdint>
#include <sstream>
#include <vector>

#include "provision/mime.h"
#include "util/error.h"

namespace ultari::provision::pgp {

namespace {

uint32_t crc24(const std::string& data) {
  uint32_t c = 0xB704CE;
  for (unsigned char b : data) {
    c ^= static_cast<uint32_t>(b) << 16;
    for (int i = 0; i < 8; ++i) {
      c <<= 1;
      if (c & 0x1000000) c ^= 0x1864CFB;
    }
  }
  return c & 0xFFFFFF;
}

struct Packet {
  int tag = 0;
  size_t start = 0;  // of its header
  size_t body = 0;   // of its body
  size_t length = 0;
};

// RFC 4880 4.2: old and new packet formats; partial lengths are refused
// (no key packet uses them).
std::vector<Packet> packets_of(const std::string& p) {
  std::vector<Packet> out;
  auto byte = [&](size_t i) -> uint32_t {
    if (i >= p.size()) throw Error("the key's packets are cut short");
    return static_cast<unsigned char>(p[i]);
  };
  for (size_t i = 0; i < p.size();) {
    Packet k;
    k.start = i;
    uint32_t h = byte(i++);
    if (!(h & 0x80)) throw Error("byte " + std::to_string(k.start) + " of the key is not an OpenPGP packet header");
    if (h & 0x40) {  // new format
      k.tag = static_cast<int>(h & 0x3F);
      uint32_t o1 = byte(i++);
      if (o1 < 192) {
        k.length = o1;
      } else if (o1 < 224) {
        k.length = ((o1 - 192) << 8) + byte(i++) + 192;
      } else if (o1 == 255) {
        k.length = (byte(i) << 24) | (byte(i + 1) << 16) | (byte(i + 2) << 8) | byte(i + 3);
        i += 4;
      } else {
        throw Error("the key uses a partial body length (packet at byte " + std::to_string(k.start) + ")");
      }
    } else {  // old format
      k.tag = static_cast<int>((h >> 2) & 0xF);
      switch (h & 3) {
        case 0: k.length = byte(i++); break;
        case 1: k.length = (byte(i) << 8) | byte(i + 1); i += 2; break;
        case 2: k.length = (byte(i) << 24) | (byte(i + 1) << 16) | (byte(i + 2) << 8) | byte(i + 3); i += 4; break;
        default: throw Error("the key uses an indeterminate packet length");
      }
    }
    k.body = i;
    if (k.length > p.size() - i) throw Error("the key's packets are cut short");
    i += k.length;
    out.push_back(k);
  }
  return out;
}

}  // namespace

std::string dearmor(const std::string& text) {
  size_t begin = text.find("-----BEGIN PGP PUBLIC KEY BLOCK-----");
  if (begin == std::string::npos)
    throw Error("is not an ASCII-armoured key (no '-----BEGIN PGP PUBLIC KEY BLOCK-----' line)");
  size_t end = text.find("-----END PGP PUBLIC KEY BLOCK-----", begin);
  if (end == std::string::npos) throw Error("has no '-----END PGP PUBLIC KEY BLOCK-----' line");
  std::istringstream lines(text.substr(begin, end - begin));
  std::string line, body, checksum;
  std::getline(lines, line);  // the BEGIN line
  bool headers = true;        // "Key: value" lines up to the first blank one
  while (std::getline(lines, line)) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) line.pop_back();
    if (headers) {
      headers = !line.empty() && line.find(": ") != std::string::npos;
      if (headers || line.empty()) continue;
    }
    if (line.empty()) continue;
    if (line[0] == '=') {
      checksum = line.substr(1);
      if (checksum.empty()) throw Error("has an empty armour checksum line ('=')");
      break;
    }
    body += line;
  }
  std::string packets;
  try {
    packets = base64_decode(body);
  } catch (const Error& e) {
    throw Error(std::string("is not valid base64: ") + e.what());
  }
  if (packets.empty()) throw Error("holds an empty key");
  if (!(static_cast<unsigned char>(packets[0]) & 0x80)) throw Error("does not decode to OpenPGP packets");
  if (!checksum.empty()) {
    std::string crc;
    try {
      crc = base64_decode(checksum);
    } catch (const Error& e) {
      throw Error(std::string("has an armour checksum that is not valid base64: ") + e.what());
    }
    uint32_t want = crc.size() == 3 ? (static_cast<uint32_t>(static_cast<unsigned char>(crc[0])) << 16) |
                                          (static_cast<uint32_t>(static_cast<unsigned char>(crc[1])) << 8) |
                                          static_cast<unsigned char>(crc[2])
                                    : 0xFFFFFFFF;
    if (want != crc24(packets)) throw Error("its armour checksum does not match (a damaged key)");
  }
  return packets;
}

std::string normalize_key_id(const std::string& given) {
  // (quoted in errors: printable, short; it may come from a server)
  std::string id = given.substr(0, 64);
  for (char& c : id)
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
  if (given.size() > 64) id += "...";
  std::string hex;
  std::string s = given;
  if (s.size() > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) s = s.substr(2);
  for (char c : s) {
    if (c == ' ' || c == '\t') continue;
    if (!std::isxdigit(static_cast<unsigned char>(c))) throw Error("'" + id + "' is not a key ID (hex digits)");
    hex.push_back(static_cast<char>(std::toupper(static_cast<unsigned char>(c))));
  }
  if (hex.size() == 8)
    throw Error("'" + id + "' is a short key ID, which anyone can give a key of theirs: give the fingerprint");
  if (hex.size() != 40 && hex.size() != 16)
    throw Error("'" + id + "' is neither a fingerprint (40 hex digits) nor a long key ID (16)");
  return hex;
}

std::string select_key(const std::string& packets, const std::string& id,
                       const std::function<std::string(const std::string&)>& sha1_hex) {
  std::vector<Packet> all = packets_of(packets);
  std::string found, seen;
  int matches = 0;
  for (size_t i = 0; i < all.size(); ++i) {
    if (all[i].tag != 6) continue;  // a primary public key
    // The key's packets end where the next key starts: a public key (6) or
    // a secret key (5), as gpg's import splits keyblocks. (Sequoia's sqv,
    // apt's verifier since apt 2.9, takes a secret-key block in a keyring as
    // a certificate of its own.)
    size_t next = i + 1;
    while (next < all.size() && all[next].tag != 6 && all[next].tag != 5) ++next;
    const Packet& k = all[i];
    if (k.length == 0 || packets[k.body] != 4) {
      seen += (seen.empty() ? "" : ", ") + std::string("a key of version ") +
              std::to_string(k.length ? static_cast<unsigned char>(packets[k.body]) : 0);
      continue;
    }
    std::string input = "\x99";
    input.push_back(static_cast<char>((k.length >> 8) & 0xff));
    input.push_back(static_cast<char>(k.length & 0xff));
    input += packets.substr(k.body, k.length);
    std::string fpr = sha1_hex(input);
    for (auto& c : fpr) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    seen += (seen.empty() ? "" : ", ") + fpr;
    if (fpr == id || (id.size() == 16 && fpr.size() == 40 && fpr.substr(24) == id)) {
      ++matches;
      // Of the key's packets, what a public keyring holds (what gpg
      // imports): the key, its subkeys, user IDs and attributes and the
      // signatures. Secret subkeys, compressed or literal data, trust and
      // marker packets are dropped.
      found.clear();
      for (size_t j = i; j < next; ++j) {
        int tag = all[j].tag;
        if (tag == 6 || tag == 14 || tag == 13 || tag == 17 || tag == 2)
          found += packets.substr(all[j].start, all[j].body + all[j].length - all[j].start);
      }
    }
  }
  if (matches == 0)
    throw Error("holds no key " + id + (seen.empty() ? std::string(" (no key at all)") : " (it holds " + seen + ")"));
  if (matches > 1) throw Error("holds " + std::to_string(matches) + " keys with the ID " + id + ": give the fingerprint");
  return found;
}

}  // namespace ultari::provision::pgp
