#pragma once
// What a delivery attempt's result means for the spool item.

#include <chrono>
#include <cstdint>

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

}  // namespace mxhook::webhook
