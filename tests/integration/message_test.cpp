// What reaches the webhook: the payload's fields and order, the signature, and body-mime
// (the Received trace header followed byte for byte by what the client sent).

#include "harness/fixture.hpp"

#include <regex>

namespace itest {
namespace {

using nlohmann::json;

class MessageTest : public IntegrationTest {
protected:
    // Sends `message` (already encoded unless raw) and returns the POST for it.
    std::optional<WebhookRequest> roundtrip(const std::string& message,
                                            const std::vector<std::string>& rcpts = {"user@example.com"}) {
        const std::string id = send_one(message, rcpts);
        if (id.empty()) return std::nullopt;
        auto request = request_for(id);
        if (!request) ADD_FAILURE() << "no POST for " << id;
        return request;
    }

    // Asserts that body-mime is a Received header plus exactly `sent`.
    void expect_body(const WebhookRequest& request, const std::string& sent) {
        const std::string body = request.field("body-mime");
        const auto split = split_received(body);
        ASSERT_TRUE(split.has_value()) << "body-mime does not start with a Received header: "
                                       << body.substr(0, 200);
        EXPECT_TRUE(split->rest == sent) << first_difference(sent, split->rest);
    }
};

TEST_F(MessageTest, PayloadFieldsInOrderAndSigned) {
    ASSERT_TRUE(start_daemon());
    const std::string message =
        "Received: from elsewhere by relay.example.org; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        "From: Alice Example <alice@example.org>\r\n"
        "To: a@example.com, b@example.com\r\n"
        "Subject: Quarterly\r\n report & more = 100%\r\n"
        "X-Custom: value\r\n"
        "\r\n"
        "Body text.\r\n";
    const auto before = std::chrono::system_clock::now();
    const std::string id = send_one(message, {"a@example.com", "b@example.com"}, "alice@example.org");
    ASSERT_FALSE(id.empty());
    const auto request = request_for(id);
    ASSERT_TRUE(request.has_value());

    EXPECT_EQ(request->method, "POST");
    EXPECT_EQ(request->target, "/hook");
    EXPECT_EQ(request->header("Content-Type").rfind("application/x-www-form-urlencoded", 0), 0u)
        << request->header("Content-Type");
    EXPECT_EQ(request->header("Content-Length"), std::to_string(request->body.size()));
    EXPECT_EQ(request->id(), id);
    ASSERT_TRUE(request->form_error.empty()) << request->form_error;

    const std::vector<std::string> expected_order = {"recipient", "sender",    "from",  "subject",  "message-headers",
                                                     "timestamp", "token",     "signature", "body-mime"};
    EXPECT_EQ(field_names(request->form), expected_order);

    EXPECT_EQ(request->field("recipient"), "a@example.com,b@example.com");
    EXPECT_EQ(request->field("sender"), "alice@example.org");
    EXPECT_EQ(request->field("from"), "Alice Example <alice@example.org>");
    EXPECT_EQ(request->field("subject"), "Quarterly report & more = 100%");

    const json headers = json::parse(request->field("message-headers"), nullptr, false);
    ASSERT_TRUE(headers.is_array()) << request->field("message-headers");
    const json expected_headers = json::array({
        json::array({"Received", "from elsewhere by relay.example.org; Mon, 1 Jan 2024 00:00:00 +0000"}),
        json::array({"From", "Alice Example <alice@example.org>"}),
        json::array({"To", "a@example.com, b@example.com"}),
        json::array({"Subject", "Quarterly report & more = 100%"}),
        json::array({"X-Custom", "value"}),
    });
    // The daemon's own trace header may or may not be listed first; the message's own
    // headers must follow in order.
    json own = headers;
    if (!own.empty() && own[0].is_array() && own[0].size() == 2 && own[0][0] == "Received" &&
        own[0][1].get<std::string>().find("by mx.test") != std::string::npos) {
        own.erase(own.begin());
    }
    EXPECT_EQ(own, expected_headers) << headers.dump(1);

    const std::string timestamp = request->field("timestamp");
    ASSERT_TRUE(std::regex_match(timestamp, std::regex("[0-9]{10}"))) << timestamp;
    const auto stamp = std::chrono::system_clock::time_point(std::chrono::seconds(std::stoll(timestamp)));
    EXPECT_LE(std::chrono::abs(stamp - before), std::chrono::seconds(60)) << timestamp;

    const std::string token = request->field("token");
    EXPECT_TRUE(std::regex_match(token, std::regex("[0-9a-f]{50}"))) << token;
    EXPECT_EQ(request->field("signature"), hmac_sha256_hex(kSigningKey, timestamp + token));

    expect_body(*request, message);
    const std::string received = split_received(request->field("body-mime"))->received;
    EXPECT_EQ(received.find("for <"), std::string::npos)
        << "with two recipients the trace header should not name one: " << received;
}

TEST_F(MessageTest, NullSenderAndNoSigningKey) {
    ASSERT_TRUE(start_daemon({{"WEBHOOK_SIGNING_KEY", ""}}));
    const std::string id = send_one(simple_message("bounce"), {"user@example.com"}, "");
    ASSERT_FALSE(id.empty());
    const auto request = request_for(id);
    ASSERT_TRUE(request.has_value());
    const std::vector<std::string> expected_order = {"recipient", "sender",    "from",  "subject",
                                                     "message-headers", "timestamp", "token", "body-mime"};
    EXPECT_EQ(field_names(request->form), expected_order) << "no signature field without a key";
    EXPECT_TRUE(request->has_field("sender"));
    EXPECT_EQ(request->field("sender"), "");
}

TEST_F(MessageTest, ReceivedTraceHeader) {
    ASSERT_TRUE(start_daemon());
    const std::string message = simple_message("trace");
    const std::string id = send_one(message);
    ASSERT_FALSE(id.empty());
    const auto request = request_for(id);
    ASSERT_TRUE(request.has_value());
    const auto split = split_received(request->field("body-mime"));
    ASSERT_TRUE(split.has_value()) << request->field("body-mime").substr(0, 300);
    const std::string& received = split->received;
    EXPECT_EQ(received.rfind("Received: from ", 0), 0u) << received;
    EXPECT_NE(received.find("by mx.test"), std::string::npos) << received;
    EXPECT_NE(received.find("with ESMTP"), std::string::npos) << received;
    EXPECT_NE(received.find("id " + id), std::string::npos) << received;
    EXPECT_NE(received.find("for <user@example.com>"), std::string::npos) << received;
    EXPECT_NE(received.find("client.test"), std::string::npos) << "the EHLO name: " << received;
    EXPECT_NE(received.find("127.0.0.1"), std::string::npos) << "the client address: " << received;
    EXPECT_TRUE(split->rest == message) << first_difference(message, split->rest);
}

TEST_F(MessageTest, EightBitBytesArriveExactly) {
    ASSERT_TRUE(start_daemon());
    std::string body;
    for (int row = 0; row < 8; ++row) {
        for (int c = 0x80 + row * 16; c < 0x80 + row * 16 + 16; ++c) body += static_cast<char>(c);
        body += " latin1 \xe9t\xe9 broken \xc3 utf8 \xff\xfe\r\n";
    }
    const std::string message = simple_message("=?utf-8?q?8bit?=", body);
    const auto request = roundtrip(message);
    ASSERT_TRUE(request.has_value());
    expect_body(*request, message);
}

TEST_F(MessageTest, LongLinesArriveUnchanged) {
    ASSERT_TRUE(start_daemon());
    std::string line;
    for (int i = 0; i < 5000; ++i) line += static_cast<char>('a' + i % 26);
    const std::string message = simple_message("long", line + "\r\n" + line + "\r\nshort\r\n");
    const auto request = roundtrip(message);
    ASSERT_TRUE(request.has_value());
    expect_body(*request, message);
}

TEST_F(MessageTest, DotStuffedLinesArriveWithOneDot) {
    ASSERT_TRUE(start_daemon());
    const std::string message = simple_message(
        "dots", ".starts with a dot\r\n..two dots\r\n.\r\n...\r\nmiddle . dot\r\n. \r\nend\r\n");
    const auto request = roundtrip(message);  // encode_data doubles every leading dot
    ASSERT_TRUE(request.has_value());
    expect_body(*request, message);
}

TEST_F(MessageTest, MessageWithoutFinalCrlfGetsOne) {
    ASSERT_TRUE(start_daemon());
    auto client = connect();
    ASSERT_EQ(client->ehlo().code, 250);
    ASSERT_EQ(client->cmd("MAIL FROM:<a@example.org>").code, 250);
    ASSERT_EQ(client->cmd("RCPT TO:<user@example.com>").code, 250);
    ASSERT_EQ(client->cmd("DATA").code, 354);
    const std::string message = simple_message("no final crlf", "last line");
    ASSERT_TRUE(client->send_raw(message + "\r\n.\r\n"));
    const Reply r = client->read_reply();
    const std::string id = queued_id(r);
    ASSERT_FALSE(id.empty()) << r;
    const auto request = request_for(id);
    ASSERT_TRUE(request.has_value());
    expect_body(*request, message + "\r\n");
}

TEST_F(MessageTest, TenMegabytesArriveExactly) {
    ASSERT_TRUE(start_daemon());
    std::string message = simple_message("ten megabytes", "");
    message.reserve(10 * 1024 * 1024 + 100);
    unsigned state = 12345;
    while (message.size() < 10 * 1024 * 1024) {
        std::string line;
        for (int i = 0; i < 76; ++i) {
            state = state * 1103515245u + 12345u;
            line += static_cast<char>(33 + (state >> 16) % 94);
        }
        if ((state >> 8) % 17 == 0) line[0] = '.';
        message += line + "\r\n";
    }
    const auto request = roundtrip(message);
    ASSERT_TRUE(request.has_value());
    expect_body(*request, message);
}

TEST_F(MessageTest, BareLfIsNormalizedByDefault) {
    ASSERT_TRUE(start_daemon());
    auto client = connect();
    ASSERT_EQ(client->ehlo().code, 250);
    ASSERT_EQ(client->cmd("MAIL FROM:<a@example.org>").code, 250);
    ASSERT_EQ(client->cmd("RCPT TO:<user@example.com>").code, 250);
    ASSERT_EQ(client->cmd("DATA").code, 354);
    ASSERT_TRUE(client->send_raw("Subject: bare lf\r\n\r\nline one\nline two\r\nline three\n\r\n.\r\n"));
    const Reply r = client->read_reply();
    const std::string id = queued_id(r);
    ASSERT_FALSE(id.empty()) << r;
    const auto request = request_for(id);
    ASSERT_TRUE(request.has_value());
    expect_body(*request, "Subject: bare lf\r\n\r\nline one\r\nline two\r\nline three\r\n\r\n");
}

TEST_F(MessageTest, BareLfIsRejectedWhenConfigured) {
    ASSERT_TRUE(start_daemon({{"SMTP_BARE_LF", "reject"}}));
    auto client = connect();
    ASSERT_EQ(client->ehlo().code, 250);
    ASSERT_EQ(client->cmd("MAIL FROM:<a@example.org>").code, 250);
    ASSERT_EQ(client->cmd("RCPT TO:<user@example.com>").code, 250);
    ASSERT_EQ(client->cmd("DATA").code, 354);
    ASSERT_TRUE(client->send_raw("Subject: bare lf\r\n\r\nline one\nline two\r\n.\r\n"));
    Reply r = client->read_reply();
    EXPECT_EQ(r.code, 550) << r;
    EXPECT_EQ(r.last().rfind("5.5.2", 0), 0u) << r;

    // The session goes on, and only the clean message is delivered.
    r = client->send_message("a@example.org", {"user@example.com"}, simple_message("clean"));
    const std::string id = queued_id(r);
    ASSERT_FALSE(id.empty()) << r;
    ASSERT_TRUE(request_for(id).has_value());
    ASSERT_TRUE(spool_drains());
    EXPECT_EQ(hook_.count(), 1u);
}

// A bare LF never ends DATA: "\n.\n" (and "\r\n.\n", "\n.\r\n") are data, only "\r\n.\r\n"
// ends it (SMTP smuggling).
TEST_F(MessageTest, BareLfDotNeverEndsData) {
    ASSERT_TRUE(start_daemon());
    auto client = connect();
    ASSERT_EQ(client->ehlo().code, 250);
    ASSERT_EQ(client->cmd("MAIL FROM:<a@example.org>").code, 250);
    ASSERT_EQ(client->cmd("RCPT TO:<user@example.com>").code, 250);
    ASSERT_EQ(client->cmd("DATA").code, 354);
    ASSERT_TRUE(client->send_raw("Subject: smuggle\r\n\r\nfirst\n.\nMAIL FROM:<evil@example.net>\r\n"
                                 "second\r\n.\nthird\n.\r\nfourth\r\n.\r\n"));
    Reply r = client->read_reply();
    const std::string id = queued_id(r);
    ASSERT_FALSE(id.empty()) << r;
    // Exactly one reply came: the next command gets its own answer, not a leftover one.
    r = client->cmd("NOOP");
    EXPECT_EQ(r.code, 250) << "a reply to smuggled text? " << r;
    const auto request = request_for(id);
    ASSERT_TRUE(request.has_value());
    const std::string body = request->field("body-mime");
    for (const char* part : {"first", "MAIL FROM:<evil@example.net>", "second", "third", "fourth"}) {
        EXPECT_NE(body.find(part), std::string::npos) << "missing '" << part << "' in " << body;
    }
    ASSERT_TRUE(spool_drains());
    EXPECT_EQ(hook_.count(), 1u);
}

}  // namespace
}  // namespace itest
