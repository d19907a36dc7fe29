#include "mxhook/smtp/protocol.hpp"

#include <gtest/gtest.h>

#include <string>

namespace mxhook::smtp {
namespace {

ProtocolSettings settings() {
    ProtocolSettings s;
    s.hostname = "mx.test";
    s.max_message_bytes = 1000;
    s.max_recipients = 3;
    return s;
}

std::string code(const Step& step) { return step.reply.substr(0, 3); }

class ProtocolTest : public testing::Test {
protected:
    Protocol p{settings()};
    std::string say(std::string_view line) { return code(p.on_line(line)); }
};

TEST_F(ProtocolTest, GreetingNamesHost) { EXPECT_EQ(p.greeting(), "220 mx.test ESMTP\r\n"); }

TEST_F(ProtocolTest, EhloAdvertisesExtensions) {
    const auto step = p.on_line("EHLO client.example");
    EXPECT_EQ(step.reply,
              "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
              "250 ENHANCEDSTATUSCODES\r\n");
    EXPECT_EQ(p.helo(), "client.example");
    EXPECT_TRUE(p.esmtp());
}

TEST_F(ProtocolTest, FullTransaction) {
    EXPECT_EQ(say("helo client"), "250");
    EXPECT_EQ(say("MAIL FROM:<a@example.com> BODY=8BITMIME SMTPUTF8 SIZE=10"), "250");
    EXPECT_EQ(say("RCPT TO:<b@example.com>"), "250");
    EXPECT_EQ(say("rcpt to: <C@example.com>"), "250");
    const auto data = p.on_line("DATA");
    EXPECT_EQ(code(data), "354");
    EXPECT_EQ(data.action, Action::start_data);
    EXPECT_TRUE(p.in_data());
    EXPECT_EQ(p.envelope().sender, "a@example.com");
    EXPECT_EQ(p.envelope().recipients, (std::vector<std::string>{"b@example.com", "C@example.com"}));
    EXPECT_TRUE(p.envelope().body_8bitmime);
    EXPECT_TRUE(p.envelope().smtputf8);
    EXPECT_EQ(p.on_data_end(DataOutcome::queued, "123-abc").reply, "250 2.0.0 Queued as 123-abc\r\n");
    // The transaction is over: a new one can start at once.
    EXPECT_EQ(say("MAIL FROM:<>"), "250");
    EXPECT_EQ(p.envelope().sender, "");
}

TEST_F(ProtocolTest, BadSequenceIs503AndSessionGoesOn) {
    EXPECT_EQ(say("MAIL FROM:<a@b.c>"), "503");
    EXPECT_EQ(say("EHLO x"), "250");
    EXPECT_EQ(say("RCPT TO:<a@b.c>"), "503");
    EXPECT_EQ(say("DATA"), "503");
    EXPECT_EQ(say("MAIL FROM:<a@b.c>"), "250");
    EXPECT_EQ(say("MAIL FROM:<a@b.c>"), "503");
    EXPECT_EQ(say("DATA"), "503");
    EXPECT_EQ(say("RCPT TO:<d@e.f>"), "250");
}

TEST_F(ProtocolTest, SyntaxErrors) {
    EXPECT_EQ(say("EHLO"), "501");
    EXPECT_EQ(say("EHLO x"), "250");
    EXPECT_EQ(say("MAIL FROM:garbage"), "501");
    EXPECT_EQ(say("MAIL TO:<a@b.c>"), "501");
    EXPECT_EQ(say("MAIL FROM:<a@b.c> SIZE=abc"), "501");
    EXPECT_EQ(say("MAIL FROM:<a@b.c> BODY=9BIT"), "501");
    EXPECT_EQ(say("MAIL FROM:<a@b.c> FOO=1"), "555");
    EXPECT_EQ(say("MAIL FROM:<a b@c>"), "501");
    EXPECT_EQ(say("MAIL FROM:<a@b.c>"), "250");
    EXPECT_EQ(say("RCPT TO:<nodomain>"), "501");
    EXPECT_EQ(say("RCPT TO:<Postmaster>"), "250");
    EXPECT_EQ(say("DATA now"), "501");
    EXPECT_EQ(say("WHAT"), "500");
    EXPECT_EQ(say(""), "500");
    EXPECT_EQ(say("\xff\xfe\x01garbage"), "500");
}

TEST_F(ProtocolTest, SizeOverLimitIs552) {
    EXPECT_EQ(say("EHLO x"), "250");
    EXPECT_EQ(say("MAIL FROM:<a@b.c> SIZE=1001"), "552");
    EXPECT_EQ(say("MAIL FROM:<a@b.c> SIZE=99999999999999999999999999"), "552");
    EXPECT_EQ(say("MAIL FROM:<a@b.c> SIZE=1000"), "250");
}

TEST_F(ProtocolTest, TooManyRecipientsIs452) {
    EXPECT_EQ(say("EHLO x"), "250");
    EXPECT_EQ(say("MAIL FROM:<a@b.c>"), "250");
    EXPECT_EQ(say("RCPT TO:<1@b.c>"), "250");
    EXPECT_EQ(say("RCPT TO:<2@b.c>"), "250");
    EXPECT_EQ(say("RCPT TO:<3@b.c>"), "250");
    EXPECT_EQ(say("RCPT TO:<4@b.c>"), "452");
    EXPECT_EQ(p.envelope().recipients.size(), 3u);
}

TEST(Protocol, AcceptedDomainsAreCaseInsensitive) {
    auto s = settings();
    s.accept_all_recipients = false;
    s.accepted_domains = {"example.com"};
    Protocol p(s);
    p.on_line("EHLO x");
    p.on_line("MAIL FROM:<a@elsewhere.org>");
    EXPECT_EQ(code(p.on_line("RCPT TO:<a@Example.COM>")), "250");
    EXPECT_EQ(code(p.on_line("RCPT TO:<a@other.org>")), "550");
    EXPECT_EQ(code(p.on_line("RCPT TO:<a@sub.example.com>")), "550");
}

TEST_F(ProtocolTest, RsetClearsTransaction) {
    say("EHLO x");
    say("MAIL FROM:<a@b.c>");
    say("RCPT TO:<d@e.f>");
    EXPECT_EQ(say("RSET"), "250");
    EXPECT_EQ(say("RCPT TO:<d@e.f>"), "503");
    EXPECT_EQ(say("MAIL FROM:<a@b.c>"), "250");
}

TEST_F(ProtocolTest, SimpleCommands) {
    EXPECT_EQ(say("NOOP"), "250");
    EXPECT_EQ(say("VRFY someone"), "252");
    EXPECT_EQ(say("HELP"), "214");
    EXPECT_EQ(say("EXPN list"), "502");
    const auto quit = p.on_line("QUIT");
    EXPECT_EQ(code(quit), "221");
    EXPECT_EQ(quit.action, Action::close);
}

TEST_F(ProtocolTest, DataOutcomes) {
    EXPECT_EQ(code(p.on_data_end(DataOutcome::too_big)), "552");
    EXPECT_EQ(p.on_data_end(DataOutcome::bare_lf).reply.substr(0, 9), "550 5.5.2");
    EXPECT_EQ(p.on_data_end(DataOutcome::local_error).reply.substr(0, 9), "451 4.3.0");
    EXPECT_EQ(p.on_data_end(DataOutcome::loop).reply.substr(0, 9), "554 5.4.6");
}

TEST_F(ProtocolTest, HardErrorLimitCloses) {
    Step step;
    for (int i = 0; i < 19; ++i) {
        step = p.on_line("BOGUS");
        EXPECT_EQ(step.action, Action::none);
    }
    // The 20th error still gets its own reply, then the 421 and the close.
    step = p.on_line("BOGUS");
    EXPECT_EQ(code(step), "500");
    EXPECT_NE(step.reply.find("\r\n421 4.7.0 "), std::string::npos) << step.reply;
    EXPECT_EQ(step.action, Action::close);
}

TEST(PathArgument, Parses) {
    auto p = parse_path_argument("<@relay.example:user@example.com> SIZE=5 BODY=8BITMIME");
    EXPECT_TRUE(p.ok);
    EXPECT_EQ(p.address, "user@example.com");
    EXPECT_EQ(p.params, (std::vector<std::string>{"SIZE=5", "BODY=8BITMIME"}));
    EXPECT_TRUE(parse_path_argument("<>").ok);
    EXPECT_TRUE(parse_path_argument("<\"a b\"@example.com>").ok);
    EXPECT_FALSE(parse_path_argument("user@example.com").ok);
    EXPECT_FALSE(parse_path_argument("<user@example.com").ok);
    EXPECT_FALSE(parse_path_argument("<a@b>junk").ok);
}

}  // namespace
}  // namespace mxhook::smtp
