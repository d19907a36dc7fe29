// LOG_FORMAT=json through the real binary: every line a log shipper reads is one JSON
// object, and the events carry their key=value pairs as fields.

#include "harness/fixture.hpp"

#include <sstream>

namespace itest {
namespace {

class LogFormatTest : public IntegrationTest {};

TEST_F(LogFormatTest, JsonLinesCarryTheSameEventsAsText) {
    ASSERT_TRUE(start_daemon({{"LOG_FORMAT", "json"}, {"LOG_LEVEL", "info"}}));
    const std::string id = send_one(simple_message("json logs"));
    ASSERT_FALSE(id.empty());
    ASSERT_TRUE(request_for(id).has_value());
    ASSERT_TRUE(spool_drains());
    // The delivery's line is written after the POST is answered: wait for it (bounded).
    EXPECT_TRUE(wait_until([&] { return daemon().log().find("\"outcome\":\"delivered\"") != std::string::npos; },
                           std::chrono::seconds(10)));
    stop_daemon();

    std::istringstream lines(daemon().log());
    std::string line;
    int parsed = 0;
    bool queued = false, delivered = false;
    while (std::getline(lines, line)) {
        if (line.empty()) continue;
        nlohmann::json j;
        ASSERT_NO_THROW(j = nlohmann::json::parse(line)) << "not JSON: " << line;
        ASSERT_TRUE(j.is_object()) << line;
        for (const char* field : {"time", "level", "msg"}) {
            ASSERT_TRUE(j.contains(field) && j[field].is_string()) << field << " missing in " << line;
        }
        ++parsed;
        if (j.value("id", "") == id && j.value("outcome", "") == "queued") {
            queued = true;
            EXPECT_EQ(j.value("client", ""), "127.0.0.1") << line;
            EXPECT_EQ(j["level"], "info");
        }
        if (j.value("id", "") == id && j.value("outcome", "") == "delivered") delivered = true;
    }
    EXPECT_GE(parsed, 4) << "start-up, transaction, delivery and stop lines";
    EXPECT_TRUE(queued) << "no transaction line for " << id << " with outcome=queued:\n" << daemon().log();
    EXPECT_TRUE(delivered) << "no delivery line for " << id;
}

TEST_F(LogFormatTest, UnknownFormatStopsTheStart) {
    Env env = with_overrides(base_env(free_port()), {{"LOG_FORMAT", "xml"}});
    const auto err_path = tmp_.path() / "stderr.log";
    Daemon d(mxhook_binary(), env, tmp_.path() / "stdout.log", err_path);
    d.start();
    const auto status = d.wait_exit(std::chrono::seconds(5));
    ASSERT_TRUE(status.has_value());
    EXPECT_TRUE(status->exited() && status->code() == 2) << status->describe();
    EXPECT_NE(read_file(err_path).find("LOG_FORMAT"), std::string::npos) << read_file(err_path);
}

}  // namespace
}  // namespace itest
