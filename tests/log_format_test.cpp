// LOG_FORMAT=json: what a log shipper receives for each event.

#include "mxhook/log_format.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace mxhook {
namespace {

using Fields = std::vector<std::pair<std::string, std::string>>;

const auto kTime = std::chrono::system_clock::time_point(std::chrono::milliseconds(1795924087033));

TEST(LogFields, KeyValuePairsInOrder) {
    EXPECT_EQ(log_fields("smtp client=203.0.113.9 helo=mx.example id=17-ab outcome=queued ms=3"),
              (Fields{{"client", "203.0.113.9"}, {"helo", "mx.example"}, {"id", "17-ab"}, {"outcome", "queued"},
                      {"ms", "3"}}));
}

TEST(LogFields, QuotedValuesKeepTheirSpacesAndEscapes) {
    EXPECT_EQ(log_fields(R"(delivery id=1 error="Failed to connect: \"refused\" x" next=2026)"),
              (Fields{{"id", "1"}, {"error", R"(Failed to connect: "refused" x)"}, {"next", "2026"}}));
}

TEST(LogFields, OnlyWordsThatLookLikeKeys) {
    EXPECT_TRUE(log_fields("spool: /var/spool/mxhook ready; 3 item(s) back").empty());
    EXPECT_EQ(log_fields("X=1 url="), (Fields{{"url", ""}})) << "keys are lowercase; a value may be empty";
    EXPECT_EQ(log_fields("path=/a=b")[0].second, "/a=b") << "a value may hold '='";
    EXPECT_TRUE(log_fields("time=1 level=x msg=y").empty()) << "the line's own fields are not overwritten";
}

TEST(JsonLogLine, OneObjectPerLineWithTheFixedFieldsFirst) {
    const std::string line = json_log_line(kTime, "warning", "delivery id=42 id=43 status=500 error=\"a\\\"b\"");
    ASSERT_EQ(line.back(), '\n');
    EXPECT_EQ(line.find('\n'), line.size() - 1) << "one line";
    const auto j = nlohmann::json::parse(line);
    EXPECT_EQ(j["time"], "2026-11-29T03:48:07.033Z");
    EXPECT_EQ(j["level"], "warning");
    EXPECT_EQ(j["msg"], "delivery id=42 id=43 status=500 error=\"a\\\"b\"");
    EXPECT_EQ(j["id"], "42") << "a repeated key keeps its first value";
    EXPECT_EQ(j["status"], "500");
    EXPECT_EQ(j["error"], "a\"b");
    EXPECT_EQ(line.rfind("{\"time\":", 0), 0u);
}

TEST(JsonLogLine, ControlAndEightBitBytesStayValidJson) {
    const std::string line = json_log_line(kTime, "info", std::string("subject=\x01\xff\xc3\xa9 tab\there\nnewline"));
    EXPECT_EQ(line.find('\n'), line.size() - 1);
    const auto j = nlohmann::json::parse(line);  // throws on invalid JSON or UTF-8
    EXPECT_EQ(j["subject"], "\x01\xef\xbf\xbd\xc3\xa9");
}

}  // namespace
}  // namespace mxhook
