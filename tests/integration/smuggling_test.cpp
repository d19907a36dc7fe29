// SMTP smuggling through the real binary: for each published end-of-data variant, a
// message that hides a second transaction behind the fake end mark, then a legitimate
// second message. Only <CR><LF>.<CR><LF> may end DATA: exactly two messages are queued and
// delivered, and nothing is ever delivered from the smuggled sender.

#include "harness/fixture.hpp"

#include <algorithm>

namespace itest {
namespace {

using namespace std::chrono_literals;

struct Variant {
    const char* name;
    std::string bytes;
};

std::string printable(std::string_view bytes) {
    std::string out;
    for (const char c : bytes) {
        if (c == '\r') out += "<CR>";
        else if (c == '\n') out += "<LF>";
        else out += c;
    }
    return out;
}

const std::string kSmuggled =
    "MAIL FROM:<smuggled@evil>\r\n"
    "RCPT TO:<victim@example.com>\r\n"
    "DATA\r\n"
    "From: Evil <smuggled@evil>\r\n"
    "Subject: smuggled\r\n"
    "\r\n"
    "smuggled body\r\n";

// What one session saw: every reply after the first DATA's 354, up to the close.
struct Outcome {
    std::vector<Reply> replies;
    std::vector<std::string> queued_ids;
    std::string describe() const {
        std::string out;
        for (const auto& r : replies) out += "  " + r.text() + "\n";
        return out;
    }
};

class SmugglingTest : public IntegrationTest {
protected:
    // EHLO, MAIL, RCPT, DATA; then, in one write: the first message with `end_variant`
    // and the smuggled transaction inside, the real end (<CR><LF>.<CR><LF>), a second
    // legitimate transaction and message, and QUIT. Reads every reply until the close.
    Outcome run_session(const std::string& end_variant) {
        Outcome outcome;
        auto client = connect();
        EXPECT_EQ(client->ehlo().code, 250);
        EXPECT_EQ(client->cmd("MAIL FROM:<sender@example.org>").code, 250);
        EXPECT_EQ(client->cmd("RCPT TO:<user@example.com>").code, 250);
        const Reply data = client->cmd("DATA");
        EXPECT_EQ(data.code, 354) << data;
        if (data.code != 354) return outcome;

        std::string wire = "From: Sender <sender@example.org>\r\n"
                           "To: user@example.com\r\n"
                           "Subject: first\r\n"
                           "\r\n"
                           "text";
        wire += end_variant;
        wire += kSmuggled;
        wire += ".\r\n";  // with the CRLF that ends "smuggled body": the real end of data
        wire += "MAIL FROM:<legit@example.org>\r\nRCPT TO:<user2@example.com>\r\nDATA\r\n";
        wire += encode_data(simple_message("legit", "The legitimate second message.\r\n"));
        wire += "QUIT\r\n";
        EXPECT_TRUE(client->send_raw(wire));

        for (int i = 0; i < 20; ++i) {
            Reply reply = client->read_reply();
            if (reply.code <= 0) break;
            const std::string id = queued_id(reply);
            if (!id.empty()) outcome.queued_ids.push_back(id);
            const bool quit = reply.code == 221;
            outcome.replies.push_back(std::move(reply));
            if (quit) break;
        }
        return outcome;
    }
};

class SmugglingVariantTest : public SmugglingTest, public ::testing::WithParamInterface<Variant> {};

TEST_P(SmugglingVariantTest, FakeEndOfDataDoesNotSplitTheMessage) {
    const Variant& variant = GetParam();
    SCOPED_TRACE(std::string("variant ") + variant.name);
    ASSERT_TRUE(start_daemon());
    const Outcome outcome = run_session(variant.bytes);

    // 250 Queued (first), 250 (MAIL), 250 (RCPT), 354 (DATA), 250 Queued (second), 221.
    std::vector<int> codes;
    for (const auto& r : outcome.replies) codes.push_back(r.code);
    EXPECT_EQ(codes, (std::vector<int>{250, 250, 250, 354, 250, 221})) << "replies:\n" << outcome.describe();
    ASSERT_EQ(outcome.queued_ids.size(), 2u) << "exactly two DATA commands were answered \"Queued as\":\n"
                                             << outcome.describe();

    const auto first = request_for(outcome.queued_ids[0]);
    const auto second = request_for(outcome.queued_ids[1]);
    ASSERT_TRUE(first.has_value());
    ASSERT_TRUE(second.has_value());
    EXPECT_EQ(first->field("sender"), "sender@example.org");
    EXPECT_EQ(first->field("recipient"), "user@example.com");
    EXPECT_EQ(first->field("subject"), "first");
    const std::string body = first->field("body-mime");
    EXPECT_NE(body.find("MAIL FROM:<smuggled@evil>"), std::string::npos) << printable(body);
    EXPECT_NE(body.find("RCPT TO:<victim@example.com>"), std::string::npos) << printable(body);
    EXPECT_NE(body.find("Subject: smuggled"), std::string::npos) << printable(body);
    const std::string tail = "smuggled body\r\n";
    EXPECT_TRUE(body.size() >= tail.size() && body.compare(body.size() - tail.size(), tail.size(), tail) == 0)
        << "the first message must run to the real end of data:\n" << printable(body);

    EXPECT_EQ(second->field("sender"), "legit@example.org");
    EXPECT_EQ(second->field("recipient"), "user2@example.com");
    EXPECT_EQ(second->field("subject"), "legit");
    const auto split = split_received(second->field("body-mime"));
    ASSERT_TRUE(split.has_value());
    EXPECT_EQ(split->rest, simple_message("legit", "The legitimate second message.\r\n"));

    EXPECT_TRUE(spool_drains());
    EXPECT_EQ(hook_.count(), 2u);
    for (const auto& request : hook_.requests()) {
        EXPECT_NE(request.field("sender"), "smuggled@evil") << "a smuggled message was delivered";
        EXPECT_EQ(request.field("recipient").find("victim"), std::string::npos);
    }
}

INSTANTIATE_TEST_SUITE_P(
    PublishedVariants, SmugglingVariantTest,
    ::testing::Values(Variant{"LF_dot_LF", "\n.\n"}, Variant{"LF_dot_CRLF", "\n.\r\n"},
                      Variant{"CRLF_dot_LF", "\r\n.\n"}, Variant{"CR_dot_CR", "\r.\r"},
                      Variant{"CRLF_dot_CR", "\r\n.\r"}, Variant{"CRCRLF_dot_CRCRLF", "\r\r\n.\r\r\n"},
                      Variant{"LF_dot_CRCRLF", "\n.\r\r\n"}),
    [](const ::testing::TestParamInfo<Variant>& info) { return std::string(info.param.name); });

// The control: with the real end mark in place of a variant, the same session does make
// the hidden transaction a message of its own. This shows the test above would see a split.
TEST_F(SmugglingTest, RealEndMarkDoesEndTheMessage) {
    ASSERT_TRUE(start_daemon());
    const Outcome outcome = run_session("\r\n.\r\n");
    ASSERT_EQ(outcome.queued_ids.size(), 3u) << outcome.describe();
    ASSERT_TRUE(hook_.wait_for(3, 10s));
    const auto requests = hook_.requests();
    EXPECT_TRUE(std::any_of(requests.begin(), requests.end(),
                            [](const WebhookRequest& r) { return r.field("sender") == "smuggled@evil"; }));
}

}  // namespace
}  // namespace itest
