// The pure transforms of sender authentication's verdicts: the Authentication-Results
// header, the payload's Mailgun-style fields, meta.json's summary, the decision API's
// object, and the search for forged Authentication-Results fields.

#include "mxhook/auth/verdicts.hpp"
#include "mxhook/spool/meta.hpp"

#include <gtest/gtest.h>

namespace mxhook::auth {
namespace {

Verdicts all_checked() {
    Verdicts v;
    v.spf = SpfVerdict{Result::pass, "example.org", false};
    v.dkim = std::vector<DkimVerdict>{{Result::pass, "example.org", "s1", ""},
                                      {Result::fail, "list.test", "k2", "body hash mismatch"}};
    v.dmarc = DmarcVerdict{Result::fail, DmarcPolicy::reject, "example.org"};
    return v;
}

TEST(AuthenticationResults, OneMethodPerFoldedLineUnderOurAuthservId) {
    EXPECT_EQ(authentication_results("mx.example.net", all_checked()),
              "Authentication-Results: mx.example.net;\r\n"
              "\tspf=pass smtp.mailfrom=example.org;\r\n"
              "\tdkim=pass header.d=example.org header.s=s1;\r\n"
              "\tdkim=fail (body hash mismatch) header.d=list.test header.s=k2;\r\n"
              "\tdmarc=fail (p=reject) header.from=example.org\r\n");
}

TEST(AuthenticationResults, NullSenderIsCheckedForTheHeloNameAndNoSignatureIsDkimNone) {
    Verdicts v;
    v.spf = SpfVerdict{Result::softfail, "relay.example.net", true};
    v.dkim = std::vector<DkimVerdict>{};
    EXPECT_EQ(authentication_results("mx", v),
              "Authentication-Results: mx;\r\n\tspf=softfail smtp.helo=relay.example.net;\r\n\tdkim=none\r\n");
}

TEST(AuthenticationResults, NothingCheckedSaysNone) {
    EXPECT_EQ(authentication_results("mx", Verdicts{}), "Authentication-Results: mx; none\r\n");
}

TEST(AuthenticationResults, ValuesASenderChoseCannotShapeTheHeader) {
    Verdicts v;
    v.dkim = std::vector<DkimVerdict>{{Result::permerror, "evil.test;\r\nX-Injected: yes", "s (x)", "bad)(reason"}};
    const std::string header = authentication_results("mx", v);
    EXPECT_EQ(header, "Authentication-Results: mx;\r\n\tdkim=permerror (badreason)\r\n");
}

TEST(Summary, PayloadFieldsUseMailgunSpellings) {
    const Summary s = summarize(all_checked());
    const auto fields = payload_fields(s);
    ASSERT_EQ(fields.size(), 3u);
    EXPECT_EQ(fields[0], (std::pair<std::string, std::string>{"X-Mailgun-Spf", "Pass"}));
    EXPECT_EQ(fields[1], (std::pair<std::string, std::string>{"X-Mailgun-Dkim-Check-Result", "Pass"}));
    EXPECT_EQ(fields[2], (std::pair<std::string, std::string>{"X-Mxhook-Dmarc", "fail; p=reject"}));
}

TEST(Summary, EverySpfResultHasItsMailgunName) {
    const std::vector<std::pair<Result, std::string>> names{
        {Result::pass, "Pass"},           {Result::fail, "Fail"},           {Result::softfail, "SoftFail"},
        {Result::neutral, "Neutral"},     {Result::none, "None"},           {Result::temperror, "TempError"},
        {Result::permerror, "PermError"}};
    for (const auto& [result, name] : names) {
        Summary s;
        s.spf = result;
        EXPECT_EQ(payload_fields(s).front().second, name);
    }
}

TEST(Summary, NoPassingSignatureIsDkimFailAndOnlyCheckedPartsArePosted) {
    Verdicts v;
    v.dkim = std::vector<DkimVerdict>{};
    const auto fields = payload_fields(summarize(v));
    ASSERT_EQ(fields.size(), 1u);
    EXPECT_EQ(fields[0], (std::pair<std::string, std::string>{"X-Mailgun-Dkim-Check-Result", "Fail"}));
    EXPECT_TRUE(payload_fields(summarize(Verdicts{})).empty());
}

TEST(Summary, RoundTripsThroughMetaJson) {
    spool::Meta meta;
    meta.id = "1700000000000-00000000-0000-4000-8000-000000000000";
    meta.recipients = {"a@example.com"};
    meta.auth = summarize(all_checked());
    const std::string json = spool::to_json(meta);
    EXPECT_NE(json.find("\"verdicts\": {\n    \"spf\": \"pass\",\n    \"dkim\": \"pass\",\n    \"dmarc\": \"fail\",\n"
                        "    \"dmarcPolicy\": \"reject\"\n  }\n}"),
              std::string::npos)
        << json;
    const spool::Meta back = spool::parse_meta(json);
    ASSERT_TRUE(back.auth.has_value());
    EXPECT_EQ(*back.auth, *meta.auth);
}

TEST(Summary, UnknownValuesInMetaAreIgnoredNotFatal) {
    const auto meta = spool::parse_meta(
        R"({"id":"x","createdAt":"2026-01-01T00:00:00.000Z","recipients":[],)"
        R"("verdicts":{"spf":"maybe","dkim":7,"dmarc":"pass","extra":{"a":[1]},"dmarcPolicy":"sometimes"}})");
    ASSERT_TRUE(meta.auth.has_value());
    EXPECT_FALSE(meta.auth->spf.has_value());
    EXPECT_FALSE(meta.auth->dkim.has_value());
    EXPECT_EQ(meta.auth->dmarc, Result::pass);
    EXPECT_EQ(meta.auth->dmarc_policy, DmarcPolicy::unspecified);
}

TEST(DecisionJson, CarriesEveryVerdictAndTheHeaderValue) {
    const auto json = decision_json(all_checked(), "mx; spf=pass");
    EXPECT_EQ(json.dump(),
              R"({"auth":{"spf":{"result":"pass","domain":"example.org","scope":"mailfrom"},)"
              R"("dkim":[{"result":"pass","domain":"example.org","selector":"s1"},)"
              R"({"result":"fail","domain":"list.test","selector":"k2","reason":"body hash mismatch"}],)"
              R"("dmarc":{"result":"fail","policy":"reject","domain":"example.org"},)"
              R"("authenticationResults":"mx; spf=pass"}})");
}

Verdicts scanned(bool spam, bool infected) {
    Verdicts v;
    v.spam = SpamVerdict{true, spam, spam ? 7.1 : -0.5, 6.0, spam ? "add header" : "no action"};
    v.virus = VirusVerdict{true, infected, infected ? "Eicar-Test-Signature" : ""};
    return v;
}

TEST(ContentVerdicts, HeadersSayWhatTheScannersFound) {
    EXPECT_EQ(content_headers(scanned(true, true)),
              "X-Spam-Flag: YES\r\n"
              "X-Spam-Status: Yes, score=7.10 required=6.00 action=\"add header\"\r\n"
              "X-Virus-Status: Infected (Eicar-Test-Signature)\r\n");
    EXPECT_EQ(content_headers(scanned(false, false)),
              "X-Spam-Status: No, score=-0.50 required=6.00 action=\"no action\"\r\n"
              "X-Virus-Status: Clean\r\n");
    Verdicts down;
    down.spam = SpamVerdict{};
    down.virus = VirusVerdict{};
    EXPECT_EQ(content_headers(down),
              "X-Spam-Status: Unchecked (rspamd unavailable)\r\nX-Virus-Status: Unchecked (clamd unavailable)\r\n");
    EXPECT_EQ(content_headers(Verdicts{}), "");
    EXPECT_EQ(owned_fields(down), (std::vector<std::string>{"X-Spam-Flag", "X-Spam-Status", "X-Virus-Status"}));
}

TEST(ContentVerdicts, PayloadFieldsAndDecisionObject) {
    const auto fields = payload_fields(summarize(scanned(true, true)));
    const std::vector<std::pair<std::string, std::string>> want{{"X-Mailgun-Sflag", "Yes"},
                                                                {"X-Mailgun-Sscore", "7.10"},
                                                                {"X-Mxhook-Spam", "add header"},
                                                                {"X-Mxhook-Virus", "infected; name=Eicar-Test-Signature"}};
    EXPECT_EQ(fields, want);
    Verdicts down;
    down.spam = SpamVerdict{};
    down.virus = VirusVerdict{};
    EXPECT_EQ(payload_fields(summarize(down)),
              (std::vector<std::pair<std::string, std::string>>{{"X-Mxhook-Spam", "unchecked"},
                                                                {"X-Mxhook-Virus", "unchecked"}}));
    EXPECT_EQ(decision_json(scanned(false, false), "").dump(),
              R"({"spam":{"checked":true,"spam":false,"score":-0.5,"required":6.0,"action":"no action"},)"
              R"("virus":{"checked":true,"infected":false,"name":null}})");
    EXPECT_EQ(decision_json(down, "").dump(), R"({"spam":{"checked":false},"virus":{"checked":false}})");
}

TEST(ContentVerdicts, SummaryRoundTripsThroughMetaJson) {
    spool::Meta meta;
    meta.id = "1700000000000-00000000-0000-4000-8000-000000000000";
    meta.recipients = {"a@example.com"};
    meta.auth = summarize(scanned(true, true));
    const spool::Meta back = spool::parse_meta(spool::to_json(meta));
    ASSERT_TRUE(back.auth.has_value());
    EXPECT_EQ(*back.auth, *meta.auth);
    EXPECT_EQ(back.auth->spam_score, "7.10");
    EXPECT_EQ(back.auth->virus_name, "Eicar-Test-Signature");
}

TEST(ForgedResults, FieldsClaimingOurIdAreFoundWithTheirFoldedLines) {
    const std::string section =
        "Received: from a by b\r\n"
        "Authentication-Results: MX.Example.NET; spf=pass\r\n"
        "Subject: hi\r\n"
        "authentication-results : (comment) mx.example.net;\r\n\tdkim=pass\r\n"
        "Authentication-Results: other.example; spf=fail\r\n"
        "Authentication-Results: \"mx.example.net\"; dmarc=pass\r\n"
        "Authentication-Results: mx.example.net.evil; spf=pass\r\n"
        "\r\n"
        "Authentication-Results: mx.example.net; in the body\r\n";
    const auto ranges = forged_results(section, "mx.example.net");
    ASSERT_EQ(ranges.size(), 3u);
    EXPECT_EQ(section.substr(ranges[0].first, ranges[0].second - ranges[0].first),
              "Authentication-Results: MX.Example.NET; spf=pass\r\n");
    EXPECT_EQ(section.substr(ranges[1].first, ranges[1].second - ranges[1].first),
              "authentication-results : (comment) mx.example.net;\r\n\tdkim=pass\r\n");
    EXPECT_EQ(section.substr(ranges[2].first, ranges[2].second - ranges[2].first),
              "Authentication-Results: \"mx.example.net\"; dmarc=pass\r\n");
}

TEST(ForgedResults, ScannerFieldsASenderBroughtAreFoundToo) {
    const std::string section = "X-Spam-Flag: NO\r\nSubject: x\r\nx-virus-status: Clean\r\n\r\n";
    const auto ranges = forged_results(section, "", {"X-Spam-Flag", "X-Spam-Status", "X-Virus-Status"});
    ASSERT_EQ(ranges.size(), 2u);
    EXPECT_EQ(ranges[0], (std::pair<std::size_t, std::size_t>{0, 17}));
    EXPECT_EQ(section.substr(ranges[1].first, ranges[1].second - ranges[1].first), "x-virus-status: Clean\r\n");
}

TEST(ForgedResults, NoneInAnOrdinaryMessage) {
    EXPECT_TRUE(forged_results("From: a@b\r\nSubject: x\r\n\r\nbody\r\n", "mx").empty());
    EXPECT_TRUE(forged_results("", "mx").empty());
}

}  // namespace
}  // namespace mxhook::auth
