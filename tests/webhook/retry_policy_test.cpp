#include "mxhook/webhook/retry_policy.hpp"

#include <gtest/gtest.h>

#include <limits>

namespace mxhook::webhook {
namespace {

using namespace std::chrono_literals;
using std::chrono::milliseconds;

constexpr auto int64_max = std::numeric_limits<std::int64_t>::max();

TEST(RetryClassifyTest, AnySuccessIsDelivered) {
    for (long status : {200L, 201L, 202L, 204L, 299L}) EXPECT_EQ(classify(status), Outcome::delivered) << status;
}

TEST(RetryClassifyTest, NotAcceptableIsDead) { EXPECT_EQ(classify(406), Outcome::dead); }

TEST(RetryClassifyTest, EverythingElseIsRetried) {
    for (long status : {0L, -1L, 100L, 199L, 300L, 301L, 304L, 400L, 401L, 404L, 405L, 407L, 410L, 413L, 429L,
                        500L, 502L, 503L, 504L, 999L}) {
        EXPECT_EQ(classify(status), Outcome::retry) << status;
    }
}

spool::Meta fresh_meta() {
    spool::Meta meta;
    meta.id = "1764090194123-0f8e1c2d-aaaa-4bbb-8ccc-0123456789ab";
    meta.recipients = {"bob@example.com"};
    return meta;
}

TEST(SettleTest, DeliveredRemovesAndLeavesTheMetaAlone) {
    const auto settled = settle(204, "", fresh_meta(), std::chrono::system_clock::now(), {30s, 1h});
    EXPECT_EQ(settled.action, Settle::remove);
    EXPECT_EQ(settled.meta.attempts, 0);
}

TEST(SettleTest, NotAcceptableDeadLettersWithTheAttemptCounted) {
    const auto finished = std::chrono::system_clock::now();
    const auto settled = settle(406, "", fresh_meta(), finished, {30s, 1h});
    EXPECT_EQ(settled.action, Settle::dead_letter);
    EXPECT_EQ(settled.meta.attempts, 1);
    EXPECT_EQ(settled.meta.last_attempt_at, finished);
    EXPECT_EQ(settled.meta.last_error, "webhook returned 406");
}

TEST(SettleTest, FailuresReleaseWithTheBackOffCountedFromTheEnd) {
    const auto finished = std::chrono::system_clock::now();
    auto meta = fresh_meta();
    meta.attempts = 2;
    auto settled = settle(500, "", meta, finished, {30s, 1h});
    EXPECT_EQ(settled.action, Settle::release);
    EXPECT_EQ(settled.meta.attempts, 3);
    EXPECT_EQ(settled.meta.next_attempt_at, finished + 120s);
    EXPECT_EQ(settled.meta.last_error, "webhook returned 500");

    // A transport error wins over whatever status came with it.
    settled = settle(200, "Timeout was reached", fresh_meta(), finished, {30s, 1h});
    EXPECT_EQ(settled.action, Settle::release);
    EXPECT_EQ(settled.meta.last_error, "Timeout was reached");
    EXPECT_EQ(settled.meta.next_attempt_at, finished + 30s);
}

TEST(RetryDelayTest, DoublesFromTheInterval) {
    EXPECT_EQ(retry_delay(30s, 1h, 1), 30s);
    EXPECT_EQ(retry_delay(30s, 1h, 2), 60s);
    EXPECT_EQ(retry_delay(30s, 1h, 3), 120s);
    EXPECT_EQ(retry_delay(30s, 1h, 7), 1920s);
}

TEST(RetryDelayTest, CappedAtTheMaximum) {
    EXPECT_EQ(retry_delay(30s, 1h, 8), 1h);  // 3840 s would exceed it
    EXPECT_EQ(retry_delay(30s, 1h, 10), 1h);
    EXPECT_EQ(retry_delay(30s, 1h, 64), 1h);
    EXPECT_EQ(retry_delay(30s, 1h, 1000), 1h);
    EXPECT_EQ(retry_delay(30s, 1h, int64_max), 1h);
}

TEST(RetryDelayTest, NoOverflowWithTheLargestMaximum) {
    const milliseconds huge{std::numeric_limits<milliseconds::rep>::max()};
    EXPECT_EQ(retry_delay(1ms, huge, 10), 512ms);
    EXPECT_EQ(retry_delay(1ms, huge, 63), milliseconds{std::int64_t{1} << 62});
    EXPECT_EQ(retry_delay(1ms, huge, 64), huge);
    EXPECT_EQ(retry_delay(1ms, huge, 1000), huge);
    EXPECT_EQ(retry_delay(3ms, huge, int64_max), huge);
    EXPECT_EQ(retry_delay(huge, huge, int64_max), huge);
}

TEST(RetryDelayTest, AttemptsBelowOneCountAsOne) {
    EXPECT_EQ(retry_delay(30s, 1h, 0), 30s);
    EXPECT_EQ(retry_delay(30s, 1h, -5), 30s);
    EXPECT_EQ(retry_delay(30s, 1h, std::numeric_limits<std::int64_t>::min()), 30s);
}

TEST(RetryDelayTest, MaximumBelowIntervalWins) {
    EXPECT_EQ(retry_delay(10min, 1min, 1), 1min);
    EXPECT_EQ(retry_delay(10min, 1min, 5), 1min);
}

TEST(RetryDelayTest, ExactPowerOfTwoReachesMaximumExactly) {
    EXPECT_EQ(retry_delay(1s, 8s, 4), 8s);
    EXPECT_EQ(retry_delay(1s, 8s, 5), 8s);
    EXPECT_EQ(retry_delay(1s, 9s, 4), 8s);
    EXPECT_EQ(retry_delay(1s, 9s, 5), 9s);
}

}  // namespace
}  // namespace mxhook::webhook
