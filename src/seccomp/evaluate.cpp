// A classic-BPF interpreter for seccomp programs, run in user space by the
// supervisor (shadow program) and by the tests (both programs).
#include <cstring>

#include "seccomp/seccomp.h"

namespace ultari::seccomp {
namespace {

constexpr uint32_t kKill = SECCOMP_RET_KILL_PROCESS;

struct Machine {
  uint32_t a = 0, x = 0;
  uint32_t mem[BPF_MEMWORDS] = {};
};

bool load_word(const seccomp_data& data, uint32_t off, uint32_t& out) {
  if (off % 4 != 0 || off + 4 > sizeof(seccomp_data)) return false;
  std::memcpy(&out, reinterpret_cast<const char*>(&data) + off, 4);
  return true;
}

// ALU on A; false on an invalid op or division by zero.
bool alu(uint16_t code, uint32_t& a, uint32_t v) {
  switch (BPF_OP(code)) {
    case BPF_ADD: a += v; return true;
    case BPF_SUB: a -= v; return true;
    case BPF_MUL: a *= v; return true;
    case BPF_DIV: if (v == 0) return false; a /= v; return true;
    case BPF_MOD: if (v == 0) return false; a %= v; return true;
    case BPF_OR: a |= v; return true;
    case BPF_AND: a &= v; return true;
    case BPF_XOR: a ^= v; return true;
    case BPF_LSH: a = v >= 32 ? 0 : a << v; return true;
    case BPF_RSH: a = v >= 32 ? 0 : a >> v; return true;
    case BPF_NEG: a = -a; return true;
    default: return false;
  }
}

// Conditional jump outcome; false in `ok` on an invalid op.
bool jump_taken(uint16_t code, uint32_t a, uint32_t v, bool& ok) {
  ok = true;
  switch (BPF_OP(code)) {
    case BPF_JEQ: return a == v;
    case BPF_JGT: return a > v;
    case BPF_JGE: return a >= v;
    case BPF_JSET: return (a & v) != 0;
    default: ok = false; return false;
  }
}

}  // namespace

uint32_t evaluate(const std::vector<sock_filter>& prog, const seccomp_data& data) {
  Machine m;
  const size_t n = prog.size();
  for (size_t pc = 0; pc < n; ++pc) {
    const sock_filter& in = prog[pc];
    const uint16_t code = in.code;
    const uint32_t src = BPF_SRC(code) == BPF_X ? m.x : in.k;
    switch (BPF_CLASS(code)) {
      case BPF_LD:
      case BPF_LDX: {
        uint32_t& dst = BPF_CLASS(code) == BPF_LD ? m.a : m.x;
        switch (BPF_MODE(code)) {
          case BPF_ABS:
            if (BPF_CLASS(code) != BPF_LD || BPF_SIZE(code) != BPF_W || !load_word(data, in.k, dst)) return kKill;
            break;
          case BPF_IMM: dst = in.k; break;
          case BPF_MEM:
            if (in.k >= BPF_MEMWORDS) return kKill;
            dst = m.mem[in.k];
            break;
          case BPF_LEN: dst = sizeof(seccomp_data); break;
          default: return kKill;
        }
        break;
      }
      case BPF_ST:
      case BPF_STX:
        if (in.k >= BPF_MEMWORDS) return kKill;
        m.mem[in.k] = BPF_CLASS(code) == BPF_ST ? m.a : m.x;
        break;
      case BPF_ALU:
        if (!alu(code, m.a, src)) return kKill;
        break;
      case BPF_JMP: {
        size_t offset;
        if (BPF_OP(code) == BPF_JA) {
          offset = in.k;
        } else {
          bool ok;
          offset = jump_taken(code, m.a, src, ok) ? in.jt : in.jf;
          if (!ok) return kKill;
        }
        if (offset >= n - pc - 1) return kKill;  // must land inside the program
        pc += offset;
        break;
      }
      case BPF_RET:
        switch (BPF_RVAL(code)) {
          case BPF_K: return in.k;
          case BPF_A: return m.a;
          default: return kKill;
        }
      case BPF_MISC:
        if (BPF_MISCOP(code) == BPF_TAX) m.x = m.a;
        else if (BPF_MISCOP(code) == BPF_TXA) m.a = m.x;
        else return kKill;
        break;
      default:
        return kKill;
    }
  }
  return kKill;  // fell off the end
}

}  // namespace ultari::seccomp
