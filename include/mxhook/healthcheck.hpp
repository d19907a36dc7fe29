#pragma once
// `mxhook healthcheck`: opens an SMTP session to the local listener and expects the 220
// greeting. Used by the container's HEALTHCHECK, so it needs no tool beyond the binary.

#include "mxhook/config.hpp"

#include <chrono>

namespace mxhook {

// Returns 0 when the first SMTP_LISTEN address answers 220 within the timeout (a
// wildcard address is reached through loopback), 1 otherwise, saying why on stderr.
int run_healthcheck(const std::vector<ListenAddress>& listen, std::chrono::milliseconds timeout);

}  // namespace mxhook
