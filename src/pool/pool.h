// The warm pool: sandboxes made ahead of the requests that use them, each
// used once. `ultari pool` keeps N sandboxes of one Spec ready (namespaces,
// root, cgroup and seccomp filter in place, init waiting for a command); a
// request (`ultari run --pool SOCKET`) whose Spec matches takes one, gives it
// its command and supervises it itself. The pool process stays the
// sandbox's owner: it reaps init and removes the cgroup when the request's
// connection closes, however the requester ended.
#pragma once
#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "sandbox/sandbox.h"
#include "spec/spec.h"

namespace ultari::pool {

struct Options {
  std::string socket_path;  // unix socket the pool listens on (mode 0600)
  size_t size = 4;          // sandboxes kept ready
};

// Runs the pool until SIGINT/SIGTERM; then destroys every sandbox it made
// (ready or in use) and removes the socket. Throws ultari::Error when it
// cannot start (bad spec, socket in use); returns 0 after a clean stop.
int serve(const Spec& spec, const Options& options);

// Runs spec's command in a sandbox of the pool at socket_path. nullopt (and
// `why` says why) when the pool cannot serve it: not reachable, its
// sandboxes differ from spec (why names the field), or none is ready; the
// caller then starts the sandbox itself.
std::optional<Result> run(const std::string& socket_path, const Spec& spec, const Io& io, std::string& why);

// Host paths of a Spec made absolute and canonical, so that a pool and its
// clients (with other working directories) compare the same thing. A path
// that does not exist is left as it is (the engine reports it).
void canonicalize_paths(Spec& spec);

}  // namespace ultari::pool
