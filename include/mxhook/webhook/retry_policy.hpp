#pragma once
// What a delivery attempt's result means for the spool item.

#include "mxhook/spool/meta.hpp"

#include <chrono>
#include <cstdint>
#include <string>

namespace mxhook::webhook {

enum class Outcome { delivered, dead, retry };

// Any 2xx -> delivered; 406 -> dead (never retried); anything else, including no
// response at all (status 0), -> retry.
Outcome classify(long http_status);

// Delay before the next attempt after `attempts` failed attempts (attempts >= 1):
// min(interval * 2^(attempts-1), max_interval), without overflow for any attempts.
std::chrono::milliseconds retry_delay(std::chrono::milliseconds interval,
                                      std::chrono::milliseconds max_interval,
                                      std::int64_t attempts);

// What happens to a claimed item once an attempt has ended: the whole decision, so the
// dispatcher only carries it out.
enum class Settle {
    remove,       // delivered
    dead_letter,  // 406: never again
    release,      // back to pending/ with meta.next_attempt_at
};

struct Settlement {
    Settle action;
    spool::Meta meta;  // what to write back (dead_letter, release); unchanged for remove
};

struct RetrySettings {
    std::chrono::milliseconds interval;
    std::chrono::milliseconds max_interval;
};

// http_status: 0 when there was no response; transport_error: why not ("" when there was
// one). The attempt is stamped, and the back-off counted, from `finished` (as
// haraka-webhook: a timed-out POST does not eat into the next interval).
Settlement settle(long http_status, const std::string& transport_error, spool::Meta meta,
                  std::chrono::system_clock::time_point finished, const RetrySettings& settings);

}  // namespace mxhook::webhook
