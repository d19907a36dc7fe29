#include "mxhook/smtp/protocol.hpp"

#include <gtest/gtest.h>

#include <optional>
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

TEST_F(ProtocolTest, NoSpareStorageIs452AtMailAndTheSessionGoesOn) {
    EXPECT_EQ(say("EHLO x"), "250");
    p.set_spare_storage(0);
    const auto refused = p.on_line("MAIL FROM:<a@b.c>");
    EXPECT_EQ(refused.reply, "452 4.3.1 Insufficient system storage\r\n");
    EXPECT_EQ(refused.action, Action::none);
    EXPECT_EQ(say("RCPT TO:<x@y.z>"), "503") << "no transaction was started";
    p.set_spare_storage(5000);  // space came back
    EXPECT_EQ(say("MAIL FROM:<a@b.c>"), "250");
}

TEST_F(ProtocolTest, SizeOverSpareStorageIs452UnderTheFixedLimit552) {
    EXPECT_EQ(say("EHLO x"), "250");
    p.set_spare_storage(500);
    EXPECT_EQ(say("MAIL FROM:<a@b.c> SIZE=501"), "452");
    EXPECT_EQ(say("MAIL FROM:<a@b.c> SIZE=1001"), "552") << "over the fixed maximum stays permanent";
    EXPECT_EQ(say("MAIL FROM:<a@b.c> SIZE=500"), "250");
}

TEST_F(ProtocolTest, UnknownSpareStorageChecksNothing) {
    EXPECT_EQ(say("EHLO x"), "250");
    p.set_spare_storage(std::nullopt);
    EXPECT_EQ(say("MAIL FROM:<a@b.c> SIZE=1000"), "250");
}

TEST_F(ProtocolTest, RepeatedStorageRefusalsAreNotClientErrors) {
    EXPECT_EQ(say("EHLO x"), "250");
    p.set_spare_storage(0);
    for (int i = 0; i < 50; ++i) ASSERT_EQ(say("MAIL FROM:<a@b.c>"), "452") << "attempt " << i;
}

TEST(ReplyCode, TheThreeDigitsOrZero) {
    EXPECT_EQ(reply_code("250 2.0.0 Ok\r\n"), 250);
    EXPECT_EQ(reply_code("452-4.3.1 x\r\n452 4.3.1 y\r\n"), 452);
    EXPECT_EQ(reply_code("25"), 0);
    EXPECT_EQ(reply_code("2x0 Ok"), 0);
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

TEST(Protocol, RefusedRecipientIs550AndTheOthersGoOn) {
    ProtocolSettings s = settings();
    std::string asked_sender;
    s.refuse_recipient = [&asked_sender](std::string_view recipient, std::string_view sender) {
        asked_sender = std::string(sender);
        return recipient == "noreply@example.com";
    };
    Protocol p(s);
    p.on_line("EHLO client");
    p.on_line("MAIL FROM:<a@example.org>");
    EXPECT_EQ(p.on_line("RCPT TO:<noreply@example.com>").reply, "550 5.7.1 Recipient address rejected\r\n");
    EXPECT_EQ(asked_sender, "a@example.org");
    EXPECT_EQ(code(p.on_line("RCPT TO:<bob@example.com>")), "250");
    EXPECT_EQ(p.envelope().recipients, std::vector<std::string>{"bob@example.com"});
    EXPECT_EQ(code(p.on_line("DATA")), "354");
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

TEST_F(ProtocolTest, TimedOutIs421AndClose) {
    say("EHLO x");
    say("MAIL FROM:<a@b.c>");
    say("RCPT TO:<d@e.f>");
    ASSERT_EQ(say("DATA"), "354");
    const auto step = p.on_data_end(DataOutcome::timed_out);
    EXPECT_EQ(step.reply, "421 4.4.2 Timeout exceeded, closing connection\r\n");
    EXPECT_EQ(step.action, Action::close);
    EXPECT_STREQ(outcome_name(DataOutcome::timed_out), "timed-out");
}

// --- junk commands (SMTP_MAX_JUNK_COMMANDS) ------------------------------------------

Protocol with_junk_limit(std::size_t limit) {
    auto s = settings();
    s.max_junk_commands = limit;
    return Protocol(s);
}

TEST(ProtocolJunk, DefaultLimitIsPostfixs) { EXPECT_EQ(ProtocolSettings{}.max_junk_commands, 100u); }

TEST(ProtocolJunk, TheCommandPastTheLimitGetsA421AndCloses) {
    Protocol p = with_junk_limit(4);
    EXPECT_EQ(code(p.on_line("EHLO x")), "250");
    // NOOP, RSET, VRFY and HELP all count; each within the limit is answered as usual.
    EXPECT_EQ(code(p.on_line("NOOP")), "250");
    EXPECT_EQ(code(p.on_line("RSET")), "250");
    EXPECT_EQ(code(p.on_line("VRFY someone")), "252");
    EXPECT_EQ(code(p.on_line("help")), "214");
    const auto step = p.on_line("NOOP");
    EXPECT_EQ(step.reply, "421 4.7.0 Too many junk commands, closing connection\r\n");
    EXPECT_EQ(step.action, Action::close);
}

TEST(ProtocolJunk, OtherCommandsDoNotCount) {
    Protocol p = with_junk_limit(2);
    for (int i = 0; i < 10; ++i) {
        EXPECT_EQ(code(p.on_line("EHLO x")), "250");
        EXPECT_EQ(code(p.on_line("MAIL FROM:<a@b.c>")), "250");
        EXPECT_EQ(code(p.on_line("RCPT TO:<d@e.f>")), "250");
    }
    EXPECT_EQ(code(p.on_line("NOOP")), "250");
    EXPECT_EQ(code(p.on_line("NOOP")), "250");
    EXPECT_EQ(code(p.on_line("NOOP")), "421");
}

TEST(ProtocolJunk, JunkWithBadSyntaxCountsToo) {
    Protocol p = with_junk_limit(2);
    EXPECT_EQ(code(p.on_line("RSET now")), "501");
    EXPECT_EQ(code(p.on_line("VRFY")), "501");
    EXPECT_EQ(p.on_line("NOOP").action, Action::close);
}

TEST(ProtocolJunk, AnAcceptedMessageForgivesTheJunkSoFar) {
    Protocol p = with_junk_limit(2);
    auto transaction = [&p](DataOutcome outcome) {
        EXPECT_EQ(code(p.on_line("MAIL FROM:<a@b.c>")), "250");
        EXPECT_EQ(code(p.on_line("RCPT TO:<d@e.f>")), "250");
        EXPECT_EQ(code(p.on_line("DATA")), "354");
        p.on_data_end(outcome, "id");
    };
    p.on_line("EHLO x");
    EXPECT_EQ(code(p.on_line("RSET")), "250");
    EXPECT_EQ(code(p.on_line("RSET")), "250");
    transaction(DataOutcome::queued);  // as Postfix: a delivered message resets the count
    EXPECT_EQ(code(p.on_line("RSET")), "250");
    EXPECT_EQ(code(p.on_line("RSET")), "250");
    transaction(DataOutcome::discarded);  // answered 250 too
    EXPECT_EQ(code(p.on_line("NOOP")), "250");
    transaction(DataOutcome::too_big);  // a refused message does not
    EXPECT_EQ(code(p.on_line("NOOP")), "250");
    EXPECT_EQ(code(p.on_line("NOOP")), "421");
}

TEST(ProtocolJunk, SurvivesStartTls) {
    auto s = settings();
    s.max_junk_commands = 1;
    s.tls_available = true;
    Protocol p(s);
    p.on_line("EHLO x");
    EXPECT_EQ(code(p.on_line("NOOP")), "250");
    ASSERT_EQ(p.on_line("STARTTLS").action, Action::start_tls);
    p.on_tls_started();
    EXPECT_EQ(code(p.on_line("NOOP")), "421");
}

// --- the checks at the end of DATA ----------------------------------------------------

ProtocolSettings bounds() {
    ProtocolSettings s;
    s.max_message_bytes = 1000;
    s.max_header_bytes = 500;
    s.max_header_lines = 10;
    s.max_received_headers = 3;
    return s;
}

MessageFacts fine() {
    MessageFacts f;
    f.size = 1000;
    f.header_bytes = 500;
    f.header_lines = 10;
    f.received_headers = 3;
    return f;
}

TEST(CheckMessage, EveryBoundIsInclusive) { EXPECT_EQ(check_message(fine(), bounds()), std::nullopt); }

TEST(CheckMessage, EachBoundPastItsLimit) {
    auto f = fine();
    f.size = 1001;
    EXPECT_EQ(check_message(f, bounds()), DataOutcome::too_big);
    f = fine();
    f.header_bytes = 501;
    EXPECT_EQ(check_message(f, bounds()), DataOutcome::headers_too_big);
    f = fine();
    f.header_lines = 11;
    EXPECT_EQ(check_message(f, bounds()), DataOutcome::headers_too_big);
    f = fine();
    f.store_failed = true;
    EXPECT_EQ(check_message(f, bounds()), DataOutcome::local_error);
    f = fine();
    f.bare_lf_refused = true;
    EXPECT_EQ(check_message(f, bounds()), DataOutcome::bare_lf);
    f = fine();
    f.received_headers = 4;
    EXPECT_EQ(check_message(f, bounds()), DataOutcome::loop);
}

TEST(CheckMessage, TheFirstCheckThatFailsIsAnswered) {
    MessageFacts f;
    f.size = 5000;
    f.header_bytes = 5000;
    f.header_lines = 100;
    f.received_headers = 100;
    f.bare_lf_refused = true;
    f.store_failed = true;
    EXPECT_EQ(check_message(f, bounds()), DataOutcome::too_big);
    f.size = 0;
    EXPECT_EQ(check_message(f, bounds()), DataOutcome::headers_too_big);
    f.header_bytes = f.header_lines = 0;
    EXPECT_EQ(check_message(f, bounds()), DataOutcome::local_error);
    f.store_failed = false;
    EXPECT_EQ(check_message(f, bounds()), DataOutcome::bare_lf);
    f.bare_lf_refused = false;
    EXPECT_EQ(check_message(f, bounds()), DataOutcome::loop);
}

// --- control bytes in addresses -------------------------------------------------------

TEST(PathArgument, QuotedPairsAreBackslashAndPrintableAsciiOnly) {
    using namespace std::string_literals;
    // Accepted: escaped printable ASCII, and 8-bit bytes as they are (SMTPUTF8).
    EXPECT_TRUE(parse_path_argument("<\"a\\\"b\"@example.com>").ok);
    EXPECT_TRUE(parse_path_argument("<\"a\\\\b\"@example.com>").ok);
    EXPECT_TRUE(parse_path_argument("<\"a\\ b\"@example.com>").ok);
    EXPECT_TRUE(parse_path_argument("<\"a\\~b\"@example.com>").ok);
    EXPECT_TRUE(parse_path_argument("<\"caf\xc3\xa9\"@example.com>").ok);
    EXPECT_TRUE(parse_path_argument("<caf\xc3\xa9@example.com>").ok);
    // Refused: an escaped control byte, DEL or 8-bit byte, and a backslash with nothing to escape.
    for (const std::string& bad : {"<\"a\\\0b\"@example.com>"s, "<\"a\\\rb\"@example.com>"s,
                                  "<\"a\\\nb\"@example.com>"s, "<\"a\\\x1b[31mb\"@example.com>"s,
                                  "<\"a\\\tb\"@example.com>"s, "<\"a\\\x7f\"@example.com>"s,
                                  "<\"a\\\xc3\xa9\"@example.com>"s, "<\"a\\\"@example.com>"s, "<\"a\\>"s}) {
        EXPECT_FALSE(parse_path_argument(bad).ok) << testing::PrintToString(bad);
    }
    // Unescaped control bytes were refused before and still are, quoted or not.
    EXPECT_FALSE(parse_path_argument("<\"a\x01" "b\"@example.com>").ok);
    EXPECT_FALSE(parse_path_argument("<a\x1b" "b@example.com>").ok);
}

TEST_F(ProtocolTest, EscapedControlBytesInRcptAndMailAre501) {
    using namespace std::string_literals;
    EXPECT_EQ(say("EHLO x"), "250");
    EXPECT_EQ(say("MAIL FROM:<\"a\\\0b\"@example.com>"s), "501");
    EXPECT_EQ(say("MAIL FROM:<a@example.com>"), "250");
    EXPECT_EQ(say("RCPT TO:<\"a\\\0b\"@example.com>"s), "501");
    EXPECT_EQ(say("RCPT TO:<\"a\\\rb\"@example.com>"s), "501");
    EXPECT_EQ(say("RCPT TO:<\"a\\\x1b" "b\"@example.com>"s), "501");
    EXPECT_EQ(say("RCPT TO:<\"a\\\"b\"@example.com>"), "250");
    EXPECT_EQ(p.envelope().recipients, (std::vector<std::string>{"\"a\\\"b\"@example.com"}));
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
