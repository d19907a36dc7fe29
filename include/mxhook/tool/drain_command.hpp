#pragma once
// `mxhook drain`: tells the daemon that owns SPOOL_DIR to drain (SIGUSR1: it takes no more
// mail and tries every queued message now), waits for its report (nothing left to deliver
// and no session open, or DRAIN_TIMEOUT_MS passed), and says what is left. A Kubernetes preStop hook, or an
// operator before removing a replica, runs it.
//
// Exit statuses:
//   0  nothing left to deliver (dead letters may remain; they are the operator's)
//   1  items left in pending/, processing/ or being received when the time ran out
//   2  configuration or spool error, or the lock names a process that is not mxhook here

#include "mxhook/config.hpp"
#include "mxhook/spool/spool.hpp"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>

namespace mxhook::tool {

// What a drain still waits for, and what it leaves for the operator, from a census.
struct DrainLeft {
    std::uint64_t receiving = 0;   // tmp/: DATA transactions in progress
    std::uint64_t pending = 0;     // acknowledged, waiting for an attempt
    std::uint64_t processing = 0;  // an attempt in flight
    std::uint64_t bytes = 0;       // of the three above
    std::uint64_t dead = 0;        // dead letters: not delivered by anyone, kept

    bool drained() const { return receiving + pending + processing == 0; }
};
DrainLeft drain_left(const spool::Census& census);
// "3 message(s) left to deliver (2 pending, 1 in flight, 0 being received; 4096 bytes)"
// or "nothing left to deliver", then "; 2 dead letter(s) stay in dead/" when there are some,
// and "; 1 SMTP session(s) still open" when sessions > 0.
std::string describe(const DrainLeft& left, std::size_t sessions = 0);

// The request `mxhook drain` leaves in SPOOL_DIR/.drain-request before it signals: a token
// the daemon's report must carry (so that no earlier report is taken for the answer), and
// the command's DRAIN_TIMEOUT_MS (so that `exec -e DRAIN_TIMEOUT_MS=...` sets the window the
// daemon drains for). A bare SIGUSR1 has none: the daemon's own DRAIN_TIMEOUT_MS, no token.
struct DrainRequest {
    std::string token;
    std::chrono::milliseconds timeout{0};
};
// The daemon's report of a drain, in SPOOL_DIR/.drain, replaced at the end of each window:
// how `mxhook drain` learns the outcome, open sessions included (a message still in DATA
// may be in no file yet).
struct DrainStatus {
    std::string token;    // of the request this answers; empty for a bare SIGUSR1
    bool drained = false;  // nothing left to deliver and no session open
    std::string summary;   // describe()
};
std::filesystem::path drain_status_path(const std::filesystem::path& spool_dir);
std::filesystem::path drain_request_path(const std::filesystem::path& spool_dir);
std::string to_json(const DrainStatus& status);
std::string to_json(const DrainRequest& request);
// nullopt when malformed.
std::optional<DrainStatus> parse_drain_status(std::string_view text);
std::optional<DrainRequest> parse_drain_request(std::string_view text);
// Replaces `path` by `text`: written beside it under a name of its own, then renamed over
// it (readers never see half; two writers never share a file). Blocking; throws.
void replace_file(const std::filesystem::path& path, std::string_view text);
// The daemon, on SIGUSR1: the pending request, removed (nullopt when none, or malformed).
// Blocking; never throws.
std::optional<DrainRequest> take_drain_request(const std::filesystem::path& spool_dir) noexcept;

int drain_command(const Config& config, std::ostream& out, std::ostream& err);

}  // namespace mxhook::tool
