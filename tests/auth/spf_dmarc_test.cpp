// SPF through libspf2 and DMARC through libopendmarc, fed with DNS answers the test
// chooses: the replayed SPF evaluation asks for what it lacks round by round, so every
// RFC 7208 result can be reached without a DNS server; DMARC's alignment and policy come
// from records handed in.

#include "mxhook/auth/dmarc.hpp"
#include "mxhook/auth/spf.hpp"

#include <gtest/gtest.h>

#include <filesystem>

namespace mxhook::auth {
namespace {

using dns::Answer;
using dns::RecordType;
using dns::Status;

constexpr const char* kSuffixList = "/usr/share/publicsuffix/public_suffix_list.dat";

// Runs the evaluation the way auth::Checker does, answering each round's questions from
// `zone` (a name and type not in it is NXDOMAIN); returns the verdict and the rounds taken.
struct Replayed {
    SpfVerdict verdict;
    int rounds = 0;
    std::vector<Question> asked;
};
Replayed replay(SpfEvaluator& spf, const SpfRequest& request, const Answers& zone) {
    Answers known;
    Replayed out;
    for (out.rounds = 1; out.rounds <= 32; ++out.rounds) {
        SpfOutcome outcome = spf.evaluate(request, known);
        if (outcome.missing.empty()) {
            out.verdict = outcome.verdict;
            return out;
        }
        for (const auto& q : outcome.missing) {
            out.asked.push_back(q);
            const auto it = zone.find(q);
            known[q] = it != zone.end() ? it->second : Answer{Status::no_domain, {}};
        }
    }
    ADD_FAILURE() << "no verdict after 32 rounds";
    return out;
}

Answer txt(std::string record) { return Answer{Status::ok, {std::move(record)}}; }

class SpfTest : public ::testing::Test {
protected:
    SpfEvaluator spf{"mx.example.net"};
    SpfRequest request{"192.0.2.10", "client.example.org", "alice@example.org"};
};

TEST_F(SpfTest, EveryResultFromTheSendersRecord) {
    const std::vector<std::pair<std::string, Result>> cases{
        {"v=spf1 ip4:192.0.2.0/24 -all", Result::pass},
        {"v=spf1 -all", Result::fail},
        {"v=spf1 ~all", Result::softfail},
        {"v=spf1 ?all", Result::neutral},
        {"v=spf1 frobnicate:x -all", Result::permerror},
    };
    for (const auto& [record, expected] : cases) {
        const auto r = replay(spf, request, {{{"example.org", RecordType::txt}, txt(record)}});
        EXPECT_EQ(r.verdict.result, expected) << record;
        EXPECT_EQ(r.verdict.domain, "example.org");
        EXPECT_FALSE(r.verdict.helo);
    }
}

TEST_F(SpfTest, NoRecordIsNoneAndAServerFailureIsTemperror) {
    EXPECT_EQ(replay(spf, request, {}).verdict.result, Result::none);
    EXPECT_EQ(replay(spf, request, {{{"example.org", RecordType::txt}, Answer{Status::no_data, {}}}}).verdict.result,
              Result::none);
    EXPECT_EQ(replay(spf, request, {{{"example.org", RecordType::txt}, Answer{Status::temp_error, {}}}}).verdict.result,
              Result::temperror);
}

TEST_F(SpfTest, IncludesAndMxAreFollowedRoundByRound) {
    const Answers zone{
        {{"example.org", RecordType::txt}, txt("v=spf1 include:_spf.provider.test mx -all")},
        {{"_spf.provider.test", RecordType::txt}, txt("v=spf1 ip4:198.51.100.0/24 -all")},
        {{"example.org", RecordType::mx}, Answer{Status::ok, {"mx1.example.org", "mx2.example.org"}}},
        {{"mx1.example.org", RecordType::a}, Answer{Status::ok, {"203.0.113.1"}}},
        {{"mx2.example.org", RecordType::a}, Answer{Status::ok, {"192.0.2.10"}}},
    };
    const auto r = replay(spf, request, zone);
    EXPECT_EQ(r.verdict.result, Result::pass);
    EXPECT_GE(r.rounds, 4);  // the record, the include, the MX, the exchanges' addresses
    request.client_ip = "203.0.113.99";
    EXPECT_EQ(replay(spf, request, zone).verdict.result, Result::fail);
}

TEST_F(SpfTest, AnIncludeOfANameWithoutRecordIsPermerror) {
    const Answers zone{{{"example.org", RecordType::txt}, txt("v=spf1 include:gone.test -all")}};
    EXPECT_EQ(replay(spf, request, zone).verdict.result, Result::permerror);
}

TEST_F(SpfTest, Ipv6ClientsAreMatched) {
    request.client_ip = "2001:db8::25";
    const Answers zone{{{"example.org", RecordType::txt}, txt("v=spf1 ip6:2001:db8::/32 -all")}};
    EXPECT_EQ(replay(spf, request, zone).verdict.result, Result::pass);
}

TEST_F(SpfTest, TheNullSenderIsCheckedForItsHeloName) {
    request.sender = "";
    const Answers zone{{{"client.example.org", RecordType::txt}, txt("v=spf1 ip4:192.0.2.10 -all")}};
    const auto r = replay(spf, request, zone);
    EXPECT_EQ(r.verdict.result, Result::pass);
    EXPECT_TRUE(r.verdict.helo);
    EXPECT_EQ(r.verdict.domain, "client.example.org");
}

TEST_F(SpfTest, AnAddressLiteralHeloWithNullSenderIsNoneWithoutAnyLookup) {
    request.sender = "";
    request.helo = "[192.0.2.10]";
    const auto r = replay(spf, request, {});
    EXPECT_EQ(r.verdict.result, Result::none);
    EXPECT_TRUE(r.asked.empty());
}

TEST_F(SpfTest, ARecordThatLoopsEndsInABoundedNumberOfRounds) {
    const Answers zone{
        {{"example.org", RecordType::txt}, txt("v=spf1 include:a.test -all")},
        {{"a.test", RecordType::txt}, txt("v=spf1 include:b.test -all")},
        {{"b.test", RecordType::txt}, txt("v=spf1 include:a.test -all")},
    };
    const auto r = replay(spf, request, zone);
    EXPECT_EQ(r.verdict.result, Result::permerror);
    EXPECT_LE(r.rounds, 32);
}

// --- DMARC ---------------------------------------------------------------------------

class DmarcTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        if (std::filesystem::exists(kSuffixList)) library = std::make_unique<DmarcLibrary>(kSuffixList);
    }
    // Per test: a skip in SetUpTestSuite does not stop the suite's tests from running (the
    // image's build stage has no public suffix list).
    void SetUp() override {
        if (!library) GTEST_SKIP() << kSuffixList << " missing (Debian's publicsuffix)";
    }
    static void TearDownTestSuite() { library.reset(); }
    static std::unique_ptr<DmarcLibrary> library;

    DmarcInput input(const std::string& from, Answer from_answer, Answer org_answer = {Status::no_domain, {}}) {
        DmarcInput in;
        in.client_ip = "192.0.2.10";
        in.from_domain = from;
        in.organizational_domain = library->organizational_domain(from);
        in.from_answer = std::move(from_answer);
        in.org_answer = std::move(org_answer);
        in.spf = SpfVerdict{Result::none, "", false};
        in.dkim = std::vector<DkimVerdict>{};
        return in;
    }
};
std::unique_ptr<DmarcLibrary> DmarcTest::library;

TEST_F(DmarcTest, OrganizationalDomainsComeFromThePublicSuffixList) {
    EXPECT_EQ(library->organizational_domain("mail.example.co.uk"), "example.co.uk");
    EXPECT_EQ(library->organizational_domain("a.b.example.com"), "example.com");
    EXPECT_EQ(library->organizational_domain("example.com"), "example.com");
}

TEST_F(DmarcTest, AlignedSpfOrDkimPasses) {
    auto in = input("bank.test", txt("v=DMARC1; p=reject"));
    in.spf = SpfVerdict{Result::pass, "bank.test", false};
    auto v = evaluate_dmarc(*library, in);
    EXPECT_EQ(v.result, Result::pass);
    EXPECT_EQ(v.policy, DmarcPolicy::reject);

    in.spf = SpfVerdict{Result::fail, "bank.test", false};
    in.dkim = std::vector<DkimVerdict>{{Result::pass, "bank.test", "s", ""}};
    EXPECT_EQ(evaluate_dmarc(*library, in).result, Result::pass);
}

TEST_F(DmarcTest, UnalignedPassesFailUnderThePublishedPolicy) {
    auto in = input("bank.test", txt("v=DMARC1; p=reject"));
    in.spf = SpfVerdict{Result::pass, "phish.test", false};
    in.dkim = std::vector<DkimVerdict>{{Result::pass, "phish.test", "s", ""}};
    const auto v = evaluate_dmarc(*library, in);
    EXPECT_EQ(v.result, Result::fail);
    EXPECT_EQ(v.policy, DmarcPolicy::reject);
    EXPECT_EQ(v.domain, "bank.test");
}

TEST_F(DmarcTest, RelaxedAlignmentAcceptsASubdomainStrictDoesNot) {
    auto in = input("bank.test", txt("v=DMARC1; p=quarantine"));
    in.spf = SpfVerdict{Result::pass, "bounces.bank.test", false};
    EXPECT_EQ(evaluate_dmarc(*library, in).result, Result::pass);
    in.from_answer = txt("v=DMARC1; p=quarantine; aspf=s");
    const auto v = evaluate_dmarc(*library, in);
    EXPECT_EQ(v.result, Result::fail);
    EXPECT_EQ(v.policy, DmarcPolicy::quarantine);
}

TEST_F(DmarcTest, ASubdomainFallsBackToItsOrganizationalDomainsSubdomainPolicy) {
    auto in = input("mail.bank.test", Answer{Status::no_domain, {}}, txt("v=DMARC1; p=reject; sp=quarantine"));
    EXPECT_EQ(in.organizational_domain, "bank.test");
    const auto v = evaluate_dmarc(*library, in);
    EXPECT_EQ(v.result, Result::fail);
    EXPECT_EQ(v.policy, DmarcPolicy::quarantine);
}

TEST_F(DmarcTest, NoRecordIsNoneAndALookupFailureIsTemperror) {
    EXPECT_EQ(evaluate_dmarc(*library, input("bank.test", Answer{Status::no_domain, {}})).result, Result::none);
    EXPECT_EQ(evaluate_dmarc(*library, input("bank.test", txt("v=spf1 -all"))).result, Result::none);
    EXPECT_EQ(evaluate_dmarc(*library, input("bank.test", Answer{Status::temp_error, {}})).result, Result::temperror);
    EXPECT_EQ(evaluate_dmarc(*library, input("mail.bank.test", Answer{Status::no_domain, {}},
                                             Answer{Status::temp_error, {}}))
                  .result,
              Result::temperror);
}

TEST_F(DmarcTest, TwoRecordsMeanNoPolicy) {
    EXPECT_FALSE(dmarc_record(Answer{Status::ok, {"v=DMARC1; p=reject", "v=DMARC1; p=none"}}).has_value());
    EXPECT_EQ(dmarc_record(Answer{Status::ok, {"hello", "v = DMARC1 ; p=none"}}), "v = DMARC1 ; p=none");
    EXPECT_FALSE(dmarc_record(Answer{Status::ok, {"v=DMARC10; p=none"}}).has_value());
}

TEST(FromDomain, OneAddressWithADomain) {
    EXPECT_EQ(from_domain({"\"Alice, the CEO\" <Alice@Bank.TEST>"}), "bank.test");
    EXPECT_EQ(from_domain({"alice@bank.test (Alice)"}), "bank.test");
    EXPECT_FALSE(from_domain({}).has_value());
    EXPECT_FALSE(from_domain({"a@one.test", "b@two.test"}).has_value());  // two From: headers
    EXPECT_FALSE(from_domain({"a@one.test, b@two.test"}).has_value());    // two mailboxes
    EXPECT_FALSE(from_domain({"undisclosed"}).has_value());
}

}  // namespace
}  // namespace mxhook::auth
