// WEBHOOK_ENCODING against the real binary: UTF-8 mail keeps the urlencoded body that
// haraka-webhook consumers expect; mail that is not valid UTF-8 (which Rails refuses in a
// urlencoded field) goes as multipart/form-data with body-mime's bytes unchanged; an
// operator can force either.

#include "harness/fixture.hpp"

namespace itest {
namespace {

const std::string kLatin1 =
    "From: =?iso-8859-1?q?Andr=E9?= <andre@example.org>\r\n"
    "To: user@example.com\r\n"
    "Subject: caf\xe9 cr\xe8me\r\n"
    "Content-Type: text/plain; charset=iso-8859-1\r\n"
    "Content-Transfer-Encoding: 8bit\r\n"
    "\r\n"
    "Gr\xfc\xdf\x65 aus K\xf6ln, and \xff.\r\n";

class EncodingTest : public IntegrationTest {
protected:
    // Sends `message`, returns the webhook's request for it.
    WebhookRequest deliver(const std::string& message) {
        const std::string id = send_one(message);
        auto request = request_for(id);
        if (!request) {
            ADD_FAILURE() << "not delivered";
            return {};
        }
        return *request;
    }
};

void expect_body_mime(const WebhookRequest& request, const std::string& sent) {
    EXPECT_EQ(request.form_error, "");
    const auto split = split_received(request.field("body-mime"));
    ASSERT_TRUE(split.has_value()) << "body-mime does not start with mxhook's Received header";
    EXPECT_TRUE(split->rest == sent) << first_difference(sent, split->rest);
}

TEST_F(EncodingTest, AutoPostsUtf8AsUrlencodedAndTheRestAsMultipart) {
    ASSERT_TRUE(start_daemon());
    const std::string utf8 = simple_message("Gr\xc3\xbc\xc3\x9f\x65", "Caf\xc3\xa9.\r\n");
    const WebhookRequest plain = deliver(utf8);
    EXPECT_EQ(plain.header("Content-Type"), "application/x-www-form-urlencoded");
    expect_body_mime(plain, utf8);

    const WebhookRequest binary = deliver(kLatin1);
    const auto boundary = multipart_boundary(binary.header("Content-Type"));
    ASSERT_TRUE(boundary.has_value()) << binary.header("Content-Type");
    expect_body_mime(binary, kLatin1);
    std::vector<std::string> part_headers;
    const FormFields parts = parse_multipart(binary.body, *boundary, &part_headers);
    EXPECT_EQ(field_names(parts), (std::vector<std::string>{"recipient", "sender", "from", "subject",
                                                            "message-headers", "timestamp", "token", "signature",
                                                            "body-mime"}));
    ASSERT_EQ(part_headers.size(), parts.size());
    // body-mime is labelled so that Rack keeps it as bytes; the fields are plain (the
    // subject's Latin-1 bytes became U+FFFD in meta.json, as they always have).
    EXPECT_NE(part_headers.back().find("Content-Type: text/plain; charset=binary"), std::string::npos);
    EXPECT_EQ(part_headers.back().find("filename"), std::string::npos);
    EXPECT_EQ(part_headers[0].find("Content-Type"), std::string::npos) << part_headers[0];
    EXPECT_EQ(binary.field("subject"), "caf\xef\xbf\xbd cr\xef\xbf\xbdme");
    // The same signature scheme in both encodings.
    EXPECT_EQ(binary.field("signature"),
              hmac_sha256_hex(kSigningKey, binary.field("timestamp") + binary.field("token")));
    EXPECT_EQ(std::to_string(binary.body.size()), binary.header("Content-Length"));
}

TEST_F(EncodingTest, UrlencodedCanBeForced) {
    ASSERT_TRUE(start_daemon({{"WEBHOOK_ENCODING", "urlencoded"}}));
    const WebhookRequest request = deliver(kLatin1);
    EXPECT_EQ(request.header("Content-Type"), "application/x-www-form-urlencoded");
    expect_body_mime(request, kLatin1);
}

TEST_F(EncodingTest, MultipartCanBeForced) {
    ASSERT_TRUE(start_daemon({{"WEBHOOK_ENCODING", "multipart"}}));
    const std::string utf8 = simple_message();
    const WebhookRequest request = deliver(utf8);
    EXPECT_TRUE(multipart_boundary(request.header("Content-Type")).has_value()) << request.header("Content-Type");
    expect_body_mime(request, utf8);
    EXPECT_EQ(request.field("recipient"), "user@example.com");
}

// A multipart body larger than one read-ahead chunk (64 KiB) with the closing boundary
// after the last byte: exact Content-Length, nothing lost at the chunk edges.
TEST_F(EncodingTest, LargeBinaryMessageArrivesWhole) {
    ASSERT_TRUE(start_daemon());
    std::string message = "Subject: big\r\nContent-Type: application/octet-stream\r\n\r\n";
    for (int line = 0; line < 4000; ++line) {
        for (int i = 0; i < 60; ++i) message += static_cast<char>(0x80 + (line * 7 + i) % 0x7f);
        message += "\r\n";
    }
    const WebhookRequest request = deliver(message);
    EXPECT_TRUE(multipart_boundary(request.header("Content-Type")).has_value());
    expect_body_mime(request, message);
}

}  // namespace
}  // namespace itest
