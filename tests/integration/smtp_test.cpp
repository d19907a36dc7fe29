// The SMTP dialogue: greeting, EHLO extensions, command sequencing and its errors, limits,
// pipelining, the queued reply.

#include "harness/fixture.hpp"

#include <algorithm>

namespace itest {
namespace {

class SmtpTest : public IntegrationTest {
protected:
    // A session after EHLO.
    std::unique_ptr<SmtpClient> session() {
        auto client = connect();
        const Reply ehlo = client->ehlo();
        EXPECT_EQ(ehlo.code, 250) << ehlo;
        return client;
    }
};

bool has_line(const Reply& reply, const std::string& text) {
    return std::find(reply.lines.begin(), reply.lines.end(), text) != reply.lines.end();
}

TEST_F(SmtpTest, GreetsWithHostname) {
    ASSERT_TRUE(start_daemon());
    SmtpClient client(daemon().smtp_port());
    ASSERT_TRUE(client.connected()) << client.connect_error();
    const Reply greeting = client.greeting();
    EXPECT_EQ(greeting.code, 220) << greeting;
    EXPECT_EQ(greeting.last().rfind("mx.test ESMTP", 0), 0u) << greeting;
}

TEST_F(SmtpTest, EhloAdvertisesExtensions) {
    ASSERT_TRUE(start_daemon());
    auto client = connect();
    const Reply ehlo = client->ehlo("client.test");
    ASSERT_EQ(ehlo.code, 250) << ehlo;
    EXPECT_GE(ehlo.lines.size(), 2u) << "EHLO must answer multi-line: " << ehlo;
    for (const char* ext : {"PIPELINING", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "SIZE 26214400"}) {
        EXPECT_TRUE(has_line(ehlo, ext)) << "missing " << ext << " in\n" << ehlo;
    }
}

TEST_F(SmtpTest, EhloAdvertisesConfiguredSize) {
    ASSERT_TRUE(start_daemon({{"SMTP_MAX_MESSAGE_BYTES", "10000"}}));
    auto client = connect();
    const Reply ehlo = client->ehlo();
    EXPECT_TRUE(has_line(ehlo, "SIZE 10000")) << ehlo;
}

TEST_F(SmtpTest, HeloIsAccepted) {
    ASSERT_TRUE(start_daemon());
    auto client = connect();
    EXPECT_EQ(client->cmd("HELO client.test").code, 250);
    EXPECT_EQ(client->cmd("MAIL FROM:<a@b>").code, 250);
}

TEST_F(SmtpTest, MailFromVariants) {
    ASSERT_TRUE(start_daemon());
    auto client = session();
    Reply r = client->cmd("MAIL FROM:<a@b>");
    EXPECT_EQ(r.code, 250) << r;
    EXPECT_EQ(client->cmd("RSET").code, 250);

    r = client->cmd("MAIL FROM:<>");
    EXPECT_EQ(r.code, 250) << "null sender: " << r;
    EXPECT_EQ(client->cmd("RSET").code, 250);

    r = client->cmd("MAIL FROM:<a@b> SIZE=26214401");
    EXPECT_EQ(r.code, 552) << "SIZE over the limit: " << r;
    r = client->cmd("MAIL FROM:<a@b> SIZE=1000");
    EXPECT_EQ(r.code, 250) << "SIZE under the limit, after a 552: " << r;
    EXPECT_EQ(client->cmd("RSET").code, 250);

    r = client->cmd("MAIL FROM:<a@b> BODY=8BITMIME");
    EXPECT_EQ(r.code, 250) << r;
    EXPECT_EQ(client->cmd("RSET").code, 250);

    r = client->cmd("MAIL FROM:<j\xc3\xbcrgen@b\xc3\xbc\x63her.example> SMTPUTF8");
    EXPECT_EQ(r.code, 250) << r;
    r = client->cmd("RCPT TO:<\xc3\xa9l\xc3\xa8ve@example.com>");
    EXPECT_EQ(r.code, 250) << "UTF-8 recipient with SMTPUTF8: " << r;
}

TEST_F(SmtpTest, SizeLimitFollowsConfiguration) {
    ASSERT_TRUE(start_daemon({{"SMTP_MAX_MESSAGE_BYTES", "10000"}}));
    auto client = session();
    EXPECT_EQ(client->cmd("MAIL FROM:<a@b> SIZE=10001").code, 552);
    EXPECT_EQ(client->cmd("MAIL FROM:<a@b> SIZE=10000").code, 250);
}

TEST_F(SmtpTest, SequenceErrorsAndTheSessionGoesOn) {
    ASSERT_TRUE(start_daemon());
    auto client = connect();
    Reply r = client->cmd("MAIL FROM:<a@b>");
    EXPECT_EQ(r.code, 503) << "MAIL before EHLO: " << r;
    ASSERT_EQ(client->ehlo().code, 250);

    r = client->cmd("RCPT TO:<user@example.com>");
    EXPECT_EQ(r.code, 503) << "RCPT before MAIL: " << r;
    r = client->cmd("DATA");
    EXPECT_EQ(r.code, 503) << "DATA before MAIL: " << r;

    r = client->cmd("MAIL FROM:garbage");
    EXPECT_EQ(r.code, 501) << "MAIL FROM:garbage: " << r;
    r = client->cmd("FROBNICATE now");
    EXPECT_EQ(r.code, 500) << "unknown command: " << r;

    r = client->cmd("MAIL FROM:<a@b>");
    EXPECT_EQ(r.code, 250) << "valid MAIL after errors: " << r;
    r = client->cmd("DATA");
    EXPECT_EQ(r.code, 503) << "DATA before RCPT: " << r;
    r = client->cmd("RCPT TO:<user@example.com>");
    EXPECT_EQ(r.code, 250) << r;

    // The transaction survived every error: it still delivers.
    r = client->cmd("DATA");
    ASSERT_EQ(r.code, 354) << r;
    ASSERT_TRUE(client->send_raw(encode_data(simple_message("after errors"))));
    r = client->read_reply();
    const std::string id = queued_id(r);
    ASSERT_FALSE(id.empty()) << r;
    EXPECT_TRUE(request_for(id).has_value());
}

TEST_F(SmtpTest, MiscCommands) {
    ASSERT_TRUE(start_daemon());
    auto client = session();
    Reply r = client->cmd("VRFY user@example.com");
    EXPECT_EQ(r.code, 252) << r;
    r = client->cmd("NOOP");
    EXPECT_EQ(r.code, 250) << r;
    r = client->cmd("HELP");
    EXPECT_EQ(r.code, 214) << r;

    EXPECT_EQ(client->cmd("MAIL FROM:<a@b>").code, 250);
    r = client->cmd("RSET");
    EXPECT_EQ(r.code, 250) << r;
    r = client->cmd("RCPT TO:<user@example.com>");
    EXPECT_EQ(r.code, 503) << "RCPT after RSET must need a new MAIL: " << r;

    r = client->cmd("QUIT");
    EXPECT_EQ(r.code, 221) << r;
    EXPECT_TRUE(client->wait_closed()) << "server did not close the connection after QUIT";
}

TEST_F(SmtpTest, TooManyRecipientsGet452) {
    ASSERT_TRUE(start_daemon({{"SMTP_MAX_RECIPIENTS", "3"}}));
    auto client = session();
    ASSERT_EQ(client->cmd("MAIL FROM:<a@b>").code, 250);
    for (int i = 1; i <= 3; ++i) {
        const Reply r = client->cmd("RCPT TO:<u" + std::to_string(i) + "@example.com>");
        EXPECT_EQ(r.code, 250) << "recipient " << i << ": " << r;
    }
    for (int i = 4; i <= 5; ++i) {
        const Reply r = client->cmd("RCPT TO:<u" + std::to_string(i) + "@example.com>");
        EXPECT_EQ(r.code, 452) << "recipient " << i << ": " << r;
    }
    ASSERT_EQ(client->cmd("DATA").code, 354);
    ASSERT_TRUE(client->send_raw(encode_data(simple_message())));
    const Reply r = client->read_reply();
    const std::string id = queued_id(r);
    ASSERT_FALSE(id.empty()) << r;
    const auto request = request_for(id);
    ASSERT_TRUE(request.has_value());
    EXPECT_EQ(request->field("recipient"), "u1@example.com,u2@example.com,u3@example.com");
}

TEST_F(SmtpTest, AcceptedDomainsOnly) {
    ASSERT_TRUE(start_daemon({{"ACCEPT_ALL_RECIPIENTS", "false"}, {"ACCEPTED_DOMAINS", "example.com"}}));
    auto client = session();
    ASSERT_EQ(client->cmd("MAIL FROM:<a@b>").code, 250);
    Reply r = client->cmd("RCPT TO:<user@other.org>");
    EXPECT_EQ(r.code, 550) << "other domain: " << r;
    r = client->cmd("RCPT TO:<user@example.com.evil.org>");
    EXPECT_EQ(r.code, 550) << "domain with an accepted prefix: " << r;
    r = client->cmd("RCPT TO:<user@example.com>");
    EXPECT_EQ(r.code, 250) << r;
    r = client->cmd("RCPT TO:<Other@EXAMPLE.COM>");
    EXPECT_EQ(r.code, 250) << "domain match must ignore case: " << r;
}

TEST_F(SmtpTest, PipelinedTransaction) {
    ASSERT_TRUE(start_daemon());
    auto client = session();
    ASSERT_TRUE(client->send_raw("MAIL FROM:<a@example.org>\r\nRCPT TO:<x@example.com>\r\n"
                                 "RCPT TO:<y@example.com>\r\nDATA\r\n"));
    const int expected[] = {250, 250, 250, 354};
    for (const int code : expected) {
        const Reply r = client->read_reply();
        EXPECT_EQ(r.code, code) << r;
    }
    ASSERT_TRUE(client->send_raw(encode_data(simple_message("pipelined"))));
    const Reply r = client->read_reply();
    const std::string id = queued_id(r);
    ASSERT_FALSE(id.empty()) << r;
    const auto request = request_for(id);
    ASSERT_TRUE(request.has_value());
    EXPECT_EQ(request->field("recipient"), "x@example.com,y@example.com");
}

TEST_F(SmtpTest, QueuedReplyCarriesTheId) {
    ASSERT_TRUE(start_daemon());
    auto client = session();
    const Reply r = client->send_message("a@example.org", {"user@example.com"}, simple_message());
    ASSERT_EQ(r.code, 250) << r;
    EXPECT_EQ(r.last().rfind("2.0.0 Queued as ", 0), 0u) << r;
    const std::string id = queued_id(r);
    EXPECT_TRUE(is_spool_id(id)) << "id '" << id << "' does not match ^[0-9]{13}-[0-9a-f-]{36}$";
    const auto request = request_for(id);
    ASSERT_TRUE(request.has_value()) << "no POST with X-Mxhook-Id " << id;
}

TEST_F(SmtpTest, TwoMessagesInOneSession) {
    ASSERT_TRUE(start_daemon());
    auto client = session();
    const Reply first = client->send_message("a@example.org", {"one@example.com"}, simple_message("first"));
    const Reply second = client->send_message("b@example.org", {"two@example.com"}, simple_message("second"));
    const std::string id1 = queued_id(first), id2 = queued_id(second);
    ASSERT_FALSE(id1.empty()) << first;
    ASSERT_FALSE(id2.empty()) << second;
    EXPECT_NE(id1, id2);
    const auto r1 = request_for(id1), r2 = request_for(id2);
    ASSERT_TRUE(r1 && r2);
    EXPECT_EQ(r1->field("subject"), "first");
    EXPECT_EQ(r1->field("sender"), "a@example.org");
    EXPECT_EQ(r1->field("recipient"), "one@example.com");
    EXPECT_EQ(r2->field("subject"), "second");
    EXPECT_EQ(r2->field("sender"), "b@example.org");
    EXPECT_EQ(r2->field("recipient"), "two@example.com");
}

TEST_F(SmtpTest, OversizedMessageIsRefusedAndTheSessionGoesOn) {
    ASSERT_TRUE(start_daemon({{"SMTP_MAX_MESSAGE_BYTES", "10000"}}));
    auto client = session();
    std::string big = simple_message("too big", "");
    while (big.size() < 20000) big += std::string(70, 'x') + "\r\n";
    Reply r = client->send_message("a@example.org", {"user@example.com"}, big);
    EXPECT_EQ(r.code, 552) << r;

    r = client->send_message("a@example.org", {"user@example.com"}, simple_message("small"));
    const std::string id = queued_id(r);
    ASSERT_FALSE(id.empty()) << "a small message after the 552: " << r;
    ASSERT_TRUE(request_for(id).has_value());
    ASSERT_TRUE(spool_drains());
    EXPECT_EQ(hook_.count(), 1u) << "the oversized message must not be delivered";
    EXPECT_TRUE(list_dir(dead_dir()).empty());
}

TEST_F(SmtpTest, CommandsAreCaseInsensitive) {
    ASSERT_TRUE(start_daemon());
    auto client = connect();
    EXPECT_EQ(client->cmd("ehlo client.test").code, 250);
    EXPECT_EQ(client->cmd("mail from:<a@example.org>").code, 250);
    EXPECT_EQ(client->cmd("Rcpt To:<user@example.com>").code, 250);
    EXPECT_EQ(client->cmd("noop").code, 250);
}

TEST_F(SmtpTest, NestedMailIsRefused) {
    ASSERT_TRUE(start_daemon());
    auto client = session();
    ASSERT_EQ(client->cmd("MAIL FROM:<a@example.org>").code, 250);
    const Reply r = client->cmd("MAIL FROM:<b@example.org>");
    EXPECT_EQ(r.code, 503) << "a second MAIL inside a transaction: " << r;
    EXPECT_EQ(client->cmd("RCPT TO:<user@example.com>").code, 250);
}

TEST_F(SmtpTest, QuitPipelinedAfterTheData) {
    ASSERT_TRUE(start_daemon());
    auto client = session();
    ASSERT_TRUE(client->send_raw("MAIL FROM:<a@example.org>\r\nRCPT TO:<user@example.com>\r\nDATA\r\n"));
    EXPECT_EQ(client->read_reply().code, 250);
    EXPECT_EQ(client->read_reply().code, 250);
    ASSERT_EQ(client->read_reply().code, 354);
    ASSERT_TRUE(client->send_raw(encode_data(simple_message("then quit")) + "QUIT\r\n"));
    const Reply queued = client->read_reply();
    const std::string id = queued_id(queued);
    EXPECT_FALSE(id.empty()) << queued;
    const Reply bye = client->read_reply();
    EXPECT_EQ(bye.code, 221) << bye;
    EXPECT_TRUE(client->wait_closed());
    EXPECT_TRUE(request_for(id).has_value());
}

TEST_F(SmtpTest, IdleSessionTimesOut) {
    ASSERT_TRUE(start_daemon({{"SMTP_TIMEOUT_MS", "300"}}));
    auto client = session();
    // The client waits up to 10 s; the server must give up on it long before.
    const auto started = std::chrono::steady_clock::now();
    EXPECT_TRUE(client->wait_closed()) << "idle session still open after 10 s";
    EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(5));
}

}  // namespace
}  // namespace itest
