// DKIM through libopendkim in mxhook's three steps (feed on the pool, keys handed in,
// verify), against messages signed in the test; and the content scanners' reply parsers.

#include "mxhook/auth/dkim.hpp"
#include "mxhook/scan/scanners.hpp"

#include "support/dkim_signer.hpp"

#include <gtest/gtest.h>

namespace mxhook::auth {
namespace {

const std::string kMessage =
    "From: Alice <alice@example.test>\r\nTo: bob@example.net\r\nSubject: hello\r\n"
    "Date: Sun, 29 Nov 2026 06:00:00 +0000\r\nMessage-ID: <1@example.test>\r\n\r\nHello Bob.\r\n";

std::vector<DkimVerdict> verify(const DkimLibrary& lib, const std::string& message, const dns::Answer& key,
                                std::size_t piece = 7) {
    DkimMessage dkim(lib);
    for (std::size_t at = 0; at < message.size(); at += piece) dkim.feed(std::string_view(message).substr(at, piece));
    dkim.finish_input();
    for (const auto& name : dkim.key_names()) dkim.set_key(name, key);
    return dkim.verify();
}

class DkimTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() { key = testsupport::generate_dkim_key(); }
    static testsupport::DkimKey key;
    DkimLibrary lib;
};
testsupport::DkimKey DkimTest::key;

TEST_F(DkimTest, ASignatureVerifiesWithItsKeyWhateverThePiecesTheMessageComesIn) {
    const std::string signed_message = testsupport::dkim_sign(kMessage, key, "example.test", "sel");
    DkimMessage probe(lib);
    probe.feed(signed_message);
    probe.finish_input();
    EXPECT_EQ(probe.key_names(), std::vector<std::string>{"sel._domainkey.example.test"});
    for (std::size_t piece : {1u, 7u, 100000u}) {
        const auto v = verify(lib, signed_message, dns::Answer{dns::Status::ok, {key.public_txt}}, piece);
        ASSERT_EQ(v.size(), 1u);
        EXPECT_EQ(v[0].result, Result::pass) << v[0].reason;
        EXPECT_EQ(v[0].domain, "example.test");
        EXPECT_EQ(v[0].selector, "sel");
    }
}

TEST_F(DkimTest, AChangedBodyFailsWithItsReason) {
    std::string signed_message = testsupport::dkim_sign(kMessage, key, "example.test", "sel");
    signed_message.replace(signed_message.find("Hello Bob."), 10, "Pay Mallory");
    const auto v = verify(lib, signed_message, dns::Answer{dns::Status::ok, {key.public_txt}});
    ASSERT_EQ(v.size(), 1u);
    EXPECT_EQ(v[0].result, Result::fail);
    EXPECT_EQ(v[0].reason, "body hash mismatch");
}

TEST_F(DkimTest, KeyLookupOutcomes) {
    const std::string signed_message = testsupport::dkim_sign(kMessage, key, "example.test", "sel");
    EXPECT_EQ(verify(lib, signed_message, dns::Answer{dns::Status::no_domain, {}}).at(0).result, Result::permerror);
    EXPECT_EQ(verify(lib, signed_message, dns::Answer{dns::Status::temp_error, {}}).at(0).result, Result::temperror);
    const auto other = testsupport::generate_dkim_key(1024);
    EXPECT_EQ(verify(lib, signed_message, dns::Answer{dns::Status::ok, {other.public_txt}}).at(0).result, Result::fail);
}

TEST_F(DkimTest, NoSignatureGivesNoVerdictAndNoKeyToFetch) {
    DkimMessage dkim(lib);
    dkim.feed(kMessage);
    dkim.finish_input();
    EXPECT_TRUE(dkim.key_names().empty());
    EXPECT_TRUE(dkim.verify().empty());
}

}  // namespace
}  // namespace mxhook::auth

namespace mxhook::scan {
namespace {

TEST(RspamdReply, ScoreAndActionMakeTheVerdict) {
    auto v = parse_rspamd_reply(200, R"({"is_skipped":false,"score":7.5,"required_score":6,"action":"add header"})");
    EXPECT_TRUE(v.checked);
    EXPECT_TRUE(v.spam);
    EXPECT_DOUBLE_EQ(v.score, 7.5);
    EXPECT_DOUBLE_EQ(v.required, 6.0);
    v = parse_rspamd_reply(200, R"({"score":-1.2,"required_score":15,"action":"greylist"})");
    EXPECT_TRUE(v.checked);
    EXPECT_FALSE(v.spam);
    EXPECT_EQ(v.action, "greylist");
    EXPECT_FALSE(parse_rspamd_reply(500, R"({"score":1,"action":"no action"})").checked);
    EXPECT_FALSE(parse_rspamd_reply(200, "not json").checked);
    EXPECT_FALSE(parse_rspamd_reply(200, R"({"error":"bad"})").checked);
    EXPECT_FALSE(parse_rspamd_reply(0, "").checked);
}

TEST(ClamdReply, FoundOkAndErrors) {
    auto v = parse_clamd_reply(std::string("stream: Eicar-Test-Signature FOUND\0", 35));
    EXPECT_TRUE(v.checked);
    EXPECT_TRUE(v.infected);
    EXPECT_EQ(v.name, "Eicar-Test-Signature");
    v = parse_clamd_reply(std::string("stream: OK\0", 11));
    EXPECT_TRUE(v.checked);
    EXPECT_FALSE(v.infected);
    EXPECT_FALSE(parse_clamd_reply("INSTREAM size limit exceeded. ERROR").checked);
    EXPECT_FALSE(parse_clamd_reply("").checked);
    EXPECT_FALSE(parse_clamd_reply("stream: Can't allocate memory ERROR\n").checked);
}

}  // namespace
}  // namespace mxhook::scan
