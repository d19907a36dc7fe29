#pragma once
// `mxhook healthcheck`: is the daemon alive? Used by the container's HEALTHCHECK, so it
// needs no tool beyond the binary.

#include "mxhook/config.hpp"

#include <chrono>

namespace mxhook {

// Returns 0 when the daemon answers within the timeout, 1 otherwise, saying why on stderr:
//  - normally, an SMTP session to the first SMTP_LISTEN address (a wildcard address is
//    reached through loopback) must greet with 220 (or the 421 4.3.2 of a drain);
//  - behind a balancer (SMTP_PROXY_PROTOCOL_FROM), where a connection without a PROXY
//    header is closed unanswered: GET /healthz on METRICS_LISTEN when it is set, else the
//    SMTP session preceded by a PROXY v2 LOCAL header (which needs loopback in
//    SMTP_PROXY_PROTOCOL_FROM).
int run_healthcheck(const Config& config, std::chrono::milliseconds timeout);

}  // namespace mxhook
