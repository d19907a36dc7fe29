#include "mxhook/webhook/retry_policy.hpp"

#include <algorithm>
#include <utility>

namespace mxhook::webhook {

Outcome classify(long http_status) {
    if (http_status >= 200 && http_status <= 299) return Outcome::delivered;
    // 406 is the receiver's way of saying "never send this again" (haraka-webhook's
    // contract), so it is the only response that ends in dead/.
    if (http_status == 406) return Outcome::dead;
    return Outcome::retry;
}

std::chrono::milliseconds retry_delay(std::chrono::milliseconds interval,
                                      std::chrono::milliseconds max_interval,
                                      std::int64_t attempts) {
    using Rep = std::chrono::milliseconds::rep;
    const Rep cap = std::max<Rep>(max_interval.count(), 0);
    Rep delay = std::max<Rep>(interval.count(), 0);
    if (delay >= cap) return std::chrono::milliseconds{cap};
    // Double one step at a time and stop as soon as the cap is reached: the loop runs
    // at most ~63 times whatever `attempts` is, and comparing against cap / 2 before
    // doubling means the multiplication can never overflow.
    for (std::int64_t i = 1; i < attempts && delay < cap; ++i) {
        if (delay == 0) break;  // 0 * 2^n stays 0
        delay = delay > cap / 2 ? cap : delay * 2;
    }
    return std::chrono::milliseconds{std::min(delay, cap)};
}

Settlement settle(long http_status, const std::string& transport_error, spool::Meta meta,
                  std::chrono::system_clock::time_point finished, const RetrySettings& settings) {
    const Outcome outcome = transport_error.empty() ? classify(http_status) : Outcome::retry;
    if (outcome == Outcome::delivered) return {Settle::remove, std::move(meta)};
    meta.attempts += 1;
    meta.last_attempt_at = finished;
    if (outcome == Outcome::dead) {
        meta.last_error = "webhook returned 406";
        return {Settle::dead_letter, std::move(meta)};
    }
    meta.last_error = transport_error.empty()
                          ? "webhook returned " + (http_status == 0 ? std::string("none") : std::to_string(http_status))
                          : transport_error;
    meta.next_attempt_at = finished + retry_delay(settings.interval, settings.max_interval, meta.attempts);
    return {Settle::release, std::move(meta)};
}

}  // namespace mxhook::webhook
