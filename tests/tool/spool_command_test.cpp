// The spool tool's small parsers and formats; its commands are tested against a spool the
// real daemon wrote, in tests/integration/spool_tool_test.cpp.

#include "mxhook/tool/drain_command.hpp"
#include "mxhook/tool/spool_command.hpp"

#include <gtest/gtest.h>

#include <sstream>

namespace mxhook::tool {
namespace {

using std::chrono::seconds;

TEST(ParseDuration, UnitsAndPlainSeconds) {
    EXPECT_EQ(parse_duration("90s"), seconds(90));
    EXPECT_EQ(parse_duration("15m"), seconds(900));
    EXPECT_EQ(parse_duration("12h"), seconds(43200));
    EXPECT_EQ(parse_duration("7d"), seconds(604800));
    EXPECT_EQ(parse_duration("42"), seconds(42));
    EXPECT_EQ(parse_duration("0"), seconds(0));
}

TEST(ParseDuration, RejectsWhatIsNotOne) {
    for (const char* bad : {"", "d", "soon", "-5m", "1.5h", "7 d", "3w", "99999999999999999999d", "1e3"}) {
        EXPECT_FALSE(parse_duration(bad).has_value()) << bad;
    }
}

TEST(HumanAge, TwoLargestUnitsWithoutEmptyOnes) {
    EXPECT_EQ(human_age(seconds(0)), "0s");
    EXPECT_EQ(human_age(seconds(42)), "42s");
    EXPECT_EQ(human_age(seconds(90)), "1m 30s");
    EXPECT_EQ(human_age(seconds(3725)), "1h 2m");
    EXPECT_EQ(human_age(seconds(3601)), "1h");
    EXPECT_EQ(human_age(seconds(86400 * 3 + 3600 * 4 + 5)), "3d 4h");
}

TEST(SpoolCommand, NoCommandIsAUsageError) {
    std::ostringstream out, err;
    EXPECT_EQ(spool_command({}, [](std::string_view) { return std::optional<std::string>(); }, out, err), kExitUsage);
    EXPECT_NE(err.str().find("usage: mxhook spool"), std::string::npos);
}

TEST(SpoolCommand, BadDurationIsAUsageErrorBeforeTheSpoolIsTouched) {
    std::ostringstream out, err;
    const auto env = [](std::string_view) { return std::optional<std::string>("/nonexistent/spool"); };
    EXPECT_EQ(spool_command({"purge", "--older-than", "soon"}, env, out, err), kExitUsage);
    EXPECT_NE(err.str().find("not a duration"), std::string::npos) << err.str();
}

TEST(DrainLeft, WaitsForReceivedPendingAndInFlightButNotDeadLetters) {
    spool::Census census;
    census.dead = {2, 4096, std::nullopt};
    DrainLeft left = drain_left(census);
    EXPECT_TRUE(left.drained());
    EXPECT_EQ(describe(left), "nothing left to deliver; 2 dead letter(s) stay in dead/");

    census.tmp = {1, 100, std::nullopt};
    census.pending = {3, 300, std::nullopt};
    census.processing = {1, 24, std::nullopt};
    left = drain_left(census);
    EXPECT_FALSE(left.drained());
    EXPECT_EQ(describe(left), "5 message(s) left to deliver (3 pending, 1 in flight, 1 being received; 424 bytes); "
                              "2 dead letter(s) stay in dead/");
    census = {};
    census.tmp = {1, 10, std::nullopt};  // a DATA transaction still running
    EXPECT_FALSE(drain_left(census).drained());
}

TEST(DrainStatus, RequestAndReportRoundTripAndRejectWhatIsNotOne) {
    const DrainStatus status{"1795951670376-42-7", false, "2 message(s) left to deliver; 1 SMTP session(s) still open"};
    const auto parsed = parse_drain_status(to_json(status));
    ASSERT_TRUE(parsed.has_value());
    EXPECT_EQ(parsed->token, status.token);
    EXPECT_FALSE(parsed->drained);
    EXPECT_EQ(parsed->summary, status.summary);
    for (const char* bad : {"", "{", "[]", "{\"token\":\"t\",\"drained\":true}",
                            "{\"token\":1,\"drained\":true,\"summary\":\"\"}"}) {
        EXPECT_FALSE(parse_drain_status(bad).has_value()) << bad;
    }
    const DrainRequest request{"t-1", std::chrono::milliseconds(5000)};
    const auto asked = parse_drain_request(to_json(request));
    ASSERT_TRUE(asked.has_value());
    EXPECT_EQ(asked->token, "t-1");
    EXPECT_EQ(asked->timeout.count(), 5000);
    for (const char* bad : {"{\"token\":\"t\"}", "{\"token\":\"t\",\"timeoutMs\":0}",
                            "{\"token\":\"t\",\"timeoutMs\":\"5\"}"}) {
        EXPECT_FALSE(parse_drain_request(bad).has_value()) << bad;
    }
    EXPECT_EQ(describe(DrainLeft{}, 2), "nothing left to deliver; 2 SMTP session(s) still open");
}

}  // namespace
}  // namespace mxhook::tool
