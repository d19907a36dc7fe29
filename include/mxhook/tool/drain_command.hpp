#pragma once
// `mxhook drain`: tells the daemon that owns SPOOL_DIR to drain (SIGUSR1: it takes no more
// mail and tries every queued message now), waits until nothing is left to deliver or
// DRAIN_TIMEOUT_MS passes, and says what is left. A Kubernetes preStop hook, or an
// operator before removing a replica, runs it.
//
// Exit statuses:
//   0  nothing left to deliver (dead letters may remain; they are the operator's)
//   1  items left in pending/, processing/ or being received when the time ran out
//   2  configuration or spool error, or the lock names a process that is not mxhook here

#include "mxhook/config.hpp"
#include "mxhook/spool/spool.hpp"

#include <chrono>
#include <cstdint>
#include <ostream>
#include <string>

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
// or "nothing left to deliver", then "; 2 dead letter(s) stay in dead/" when there are some.
std::string describe(const DrainLeft& left);

int drain_command(const Config& config, std::ostream& out, std::ostream& err);

}  // namespace mxhook::tool
