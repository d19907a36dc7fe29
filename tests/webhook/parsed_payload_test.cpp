// The parsed and JSON payloads built from a message file, read back as a consumer would.
#include "mxhook/webhook/parsed_payload.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>

using namespace mxhook;
using namespace mxhook::webhook;
namespace fs = std::filesystem;

namespace {

const char* const kMessage =
    "From: =?utf-8?q?Ren=C3=A9e?= <renee+news@example.com>\r\n"
    "To: Bob <bob@example.org>, carol@example.org\r\n"
    "Cc: dave@example.org\r\n"
    "Subject: =?iso-8859-1?q?caf=E9?=\r\n"
    "Message-ID: <m1@example.com>\r\n"
    "Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: multipart/mixed; boundary=\"outer\"\r\n"
    "\r\n"
    "--outer\r\n"
    "Content-Type: multipart/related; boundary=\"rel\"\r\n"
    "\r\n"
    "--rel\r\n"
    "Content-Type: multipart/alternative; boundary=\"alt\"\r\n"
    "\r\n"
    "--alt\r\n"
    "Content-Type: text/plain; charset=iso-8859-1\r\n"
    "Content-Transfer-Encoding: quoted-printable\r\n"
    "\r\n"
    "Caf=E9 at noon?\r\n"
    "-- \r\n"
    "Ren=E9e\r\n"
    "\r\n"
    "On Sun, 31 Dec 2023, Bob wrote:\r\n"
    "> Lunch?\r\n"
    "--alt\r\n"
    "Content-Type: text/html; charset=utf-8\r\n"
    "\r\n"
    "<p>Caf\xc3\xa9?</p><blockquote><p>Lunch?</p></blockquote><img src=\"cid:img1@example.com\">\r\n"
    "--alt--\r\n"
    "--rel\r\n"
    "Content-Type: image/png\r\n"
    "Content-ID: <img1@example.com>\r\n"
    "Content-Transfer-Encoding: base64\r\n"
    "\r\n"
    "iVBORw0KGgo=\r\n"
    "--rel--\r\n"
    "--outer\r\n"
    "Content-Type: application/pdf\r\n"
    "Content-Disposition: attachment; filename*=utf-8''r%C3%A9sum%C3%A9.pdf\r\n"
    "Content-Transfer-Encoding: base64\r\n"
    "\r\n"
    "JVBERi0xLjQKJcfs\r\n"
    "--outer--\r\n";

class ParsedPayloadTest : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ = fs::temp_directory_path() / ("mxhook-parsed-" + std::to_string(::getpid()));
        fs::create_directories(dir_);
        path_ = dir_ / "message.eml";
        std::ofstream(path_, std::ios::binary) << kMessage;
        meta_.sender = "<renee+news@example.com>";
        meta_.recipients = {"<bob+tag@example.org>"};
        meta_.headers = {{"From", "Renee <renee@example.com>"}, {"Subject", "cafe"}};
    }
    void TearDown() override { fs::remove_all(dir_); }

    // Runs `write` against a scratch file and returns what it wrote.
    template <class Write>
    std::string written(Write write) {
        const int fd = mime::open_scratch_file(dir_);
        write(fd);
        std::string out;
        char buffer[4096];
        ::lseek(fd, 0, SEEK_SET);
        for (ssize_t n; (n = ::read(fd, buffer, sizeof buffer)) > 0;) out.append(buffer, static_cast<std::size_t>(n));
        ::close(fd);
        return out;
    }

    fs::path dir_, path_;
    spool::Meta meta_;
};

// The parts of a multipart/form-data body: name -> (part headers, value).
std::map<std::string, std::pair<std::string, std::string>> parts_of(const std::string& body, const std::string& boundary) {
    std::map<std::string, std::pair<std::string, std::string>> parts;
    const std::string delimiter = "--" + boundary;
    std::size_t pos = body.find(delimiter);
    while (pos != std::string::npos && body.compare(pos + delimiter.size(), 2, "--") != 0) {
        const std::size_t head = pos + delimiter.size() + 2;
        const std::size_t blank = body.find("\r\n\r\n", head);
        const std::size_t next = body.find("\r\n" + delimiter, blank);
        const std::string headers = body.substr(head, blank - head);
        const std::size_t name = headers.find("name=\"") + 6;
        parts[headers.substr(name, headers.find('"', name) - name)] = {headers, body.substr(blank + 4, next - blank - 4)};
        pos = next + 2;
    }
    return parts;
}

}  // namespace

TEST_F(ParsedPayloadTest, LayoutPicksTheBodiesAndNumbersTheRest) {
    const auto message = mime::Message::open(path_, dir_);
    ASSERT_EQ(message.leaves().size(), 4u);
    const BodyLayout layout = layout_of(message.leaves());
    EXPECT_EQ(layout.plain, 0u);
    EXPECT_EQ(layout.html, 1u);
    EXPECT_EQ(layout.attachments, (std::vector<std::size_t>{2, 3}));
    EXPECT_EQ(message.leaves()[2].content_id, "img1@example.com");
    EXPECT_EQ(message.leaves()[3].filename, "r\xc3\xa9sum\xc3\xa9.pdf");
    EXPECT_TRUE(message.leaves()[3].attachment);
    EXPECT_EQ(attachment_name(message.leaves()[2], 1), "attachment-1");
}

TEST_F(ParsedPayloadTest, ParsedFormHasEveryField) {
    const auto message = mime::Message::open(path_, dir_);
    BuiltBody built;
    const std::string body = written([&](int fd) { built = write_parsed_body(message, {{"recipient", "bob@example.org"}}, fd); });
    ASSERT_EQ(built.content_type.rfind("multipart/form-data; boundary=", 0), 0u);
    EXPECT_EQ(built.size, body.size());
    const std::string boundary = built.content_type.substr(built.content_type.find('=') + 1);
    EXPECT_EQ(body.substr(body.size() - boundary.size() - 6), "--" + boundary + "--\r\n");
    auto parts = parts_of(body, boundary);
    EXPECT_EQ(parts["recipient"].second, "bob@example.org");
    EXPECT_EQ(parts["body-plain"].second,
              "Caf\xc3\xa9 at noon?\r\n-- \r\nRen\xc3\xa9" "e\r\n\r\nOn Sun, 31 Dec 2023, Bob wrote:\r\n> Lunch?");
    EXPECT_EQ(parts["stripped-text"].second, "Caf\xc3\xa9 at noon?");
    EXPECT_EQ(parts["stripped-signature"].second, "Ren\xc3\xa9" "e");
    EXPECT_EQ(parts["stripped-html"].second, "<p>Caf\xc3\xa9?</p><img src=\"cid:img1@example.com\">");
    EXPECT_EQ(parts["attachment-count"].second, "2");
    EXPECT_EQ(parts["content-id-map"].second, R"({"<img1@example.com>":"attachment-1"})");
    EXPECT_EQ(parts["attachment-1"].second, std::string("\x89PNG\r\n\x1a\n", 8));
    EXPECT_NE(parts["attachment-1"].first.find("filename=\"attachment-1\"\r\nContent-Type: image/png"), std::string::npos);
    EXPECT_EQ(parts["attachment-2"].second, "%PDF-1.4\n%\xc7\xec");
    EXPECT_NE(parts["attachment-2"].first.find("filename=\"r\xc3\xa9sum\xc3\xa9.pdf\"\r\nContent-Type: application/pdf"),
              std::string::npos);
}

TEST_F(ParsedPayloadTest, JsonHasPostmarksShapeAndASignatureOverTheBody) {
    const auto message = mime::Message::open(path_, dir_);
    BuiltBody built;
    const auto now = std::chrono::system_clock::time_point(std::chrono::seconds(1700000000));
    const std::string body = written([&](int fd) {
        built = write_json_body(message, meta_, {"key", now, path_}, fd);
    });
    EXPECT_EQ(built.content_type, "application/json");
    ASSERT_EQ(built.headers.size(), 3u);
    EXPECT_EQ(built.headers[0], "X-Mxhook-Timestamp: 1700000000");
    const std::string token = built.headers[1].substr(std::string("X-Mxhook-Token: ").size());
    EXPECT_EQ(token.size(), 50u);
    Signer signer("key");
    signer.update("1700000000");
    signer.update(token);
    signer.update(body);
    EXPECT_EQ(built.headers[2], "X-Mxhook-Signature: " + signer.hex());

    const auto json = nlohmann::json::parse(body);
    EXPECT_EQ(json["From"], "renee+news@example.com");
    EXPECT_EQ(json["FromName"], "Ren\xc3\xa9" "e");
    EXPECT_EQ(json["FromFull"]["MailboxHash"], "news");
    EXPECT_EQ(json["ToFull"].size(), 2u);
    EXPECT_EQ(json["ToFull"][0]["Email"], "bob@example.org");
    EXPECT_EQ(json["ToFull"][0]["Name"], "Bob");
    EXPECT_EQ(json["CcFull"][0]["Email"], "dave@example.org");
    EXPECT_EQ(json["OriginalRecipient"], "bob+tag@example.org");
    EXPECT_EQ(json["MailboxHash"], "tag");
    EXPECT_EQ(json["Envelope"]["From"], "renee+news@example.com");
    EXPECT_EQ(json["Subject"], "caf\xc3\xa9");
    EXPECT_EQ(json["MessageID"], "m1@example.com");
    EXPECT_EQ(json["Date"], "Mon, 1 Jan 2024 10:00:00 +0000");
    EXPECT_EQ(json["StrippedTextReply"], "Caf\xc3\xa9 at noon?");
    EXPECT_EQ(json["Headers"][1]["Name"], "Subject");
    ASSERT_EQ(json["Attachments"].size(), 2u);
    EXPECT_EQ(json["Attachments"][0]["Content"], "iVBORw0KGgo=");
    EXPECT_EQ(json["Attachments"][0]["ContentID"], "img1@example.com");
    EXPECT_EQ(json["Attachments"][0]["ContentLength"], 8);
    EXPECT_EQ(json["Attachments"][1]["Name"], "r\xc3\xa9sum\xc3\xa9.pdf");
    EXPECT_EQ(json["Attachments"][1]["ContentType"], "application/pdf");
    EXPECT_EQ(json["RawEmail"], kMessage);
}

TEST_F(ParsedPayloadTest, NotAMimeMessageAtAll) {
    std::ofstream(path_, std::ios::binary | std::ios::trunc) << "just some bytes\r\n";
    const auto message = mime::Message::open(path_, dir_);
    const std::string body = written([&](int fd) { write_json_body(message, meta_, {"", {}, std::nullopt}, fd); });
    const auto json = nlohmann::json::parse(body);
    EXPECT_EQ(json["Attachments"].size(), 0u);
    EXPECT_FALSE(json.contains("RawEmail"));
}

TEST(MailboxHash, ThePartAfterThePlus) {
    EXPECT_EQ(mailbox_hash("bob+tag@example.org"), "tag");
    EXPECT_EQ(mailbox_hash("bob+a+b@example.org"), "a+b");
    EXPECT_EQ(mailbox_hash("bob@example.org"), "");
    EXPECT_EQ(mailbox_hash("weird+x"), "x");
}
