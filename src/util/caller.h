// Who runs Ultari: root of the host, or a user. A user whose image store
// keeps owners (isolation::enter_store_namespace) runs its image commands as
// root of a user namespace of their own: geteuid() is 0 there, yet nothing
// of the host's root applies. These answers stay right in that namespace.
#pragma once
#include <sys/types.h>

namespace ultari {

// Root of the host's (initial) user namespace.
bool host_root();
// Inside the image store's user namespace (entered once, at the start of an
// `ultari image` command).
bool in_store_namespace();
// The caller's uid and gid on the host (outside that namespace).
uid_t caller_uid();
gid_t caller_gid();
// Called by isolation::enter_store_namespace once the namespace is entered.
void note_store_namespace(uid_t outer_uid, gid_t outer_gid);

}  // namespace ultari
