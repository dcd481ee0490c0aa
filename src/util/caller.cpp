#include "util/caller.h"

#include <unistd.h>

namespace ultari {
namespace {
bool g_in_store_ns = false;
uid_t g_outer_uid = 0;
gid_t g_outer_gid = 0;
}  // namespace

bool host_root() { return !g_in_store_ns && geteuid() == 0; }
bool in_store_namespace() { return g_in_store_ns; }
uid_t caller_uid() { return g_in_store_ns ? g_outer_uid : geteuid(); }
gid_t caller_gid() { return g_in_store_ns ? g_outer_gid : getegid(); }

void note_store_namespace(uid_t outer_uid, gid_t outer_gid) {
  g_outer_uid = outer_uid;
  g_outer_gid = outer_gid;
  g_in_store_ns = true;
}

}  // namespace ultari
