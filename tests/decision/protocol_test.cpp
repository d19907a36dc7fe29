// The decision protocol as pure functions: the JSON request for each payload mode, how an
// answer is read, and the SMTP-safe deny text. Expected values follow haraka-webhook's
// decision.v1 behaviour (JSON.stringify key order, String(...) of truthy reason/message,
// the sanitising of queue.js) so a decision service written for it sees the same thing.

#include "mxhook/decision/protocol.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <string>

namespace mxhook::decision {
namespace {

using namespace std::string_literals;

spool::Clock::time_point fixed_time() {
    // 2026-11-25T17:03:14.123Z
    return spool::Clock::time_point(std::chrono::milliseconds(1795626194123LL));
}

spool::Meta sample_meta() {
    spool::Meta m;
    m.id = "1795626194123-0f8e9c1a-4b2d-4c55-9a11-3e2f5d7c8b90";
    m.created_at = fixed_time();
    m.attempts = 3;  // delivery state never reaches the decision API
    m.sender = "alice@example.org";
    m.recipients = {"user@example.com", "Other@Example.com"};
    m.from = "Alice <alice@example.org>";
    m.subject = "Hello \"there\"";
    m.headers = {{"Received", "from mail.example.org ([198.51.100.7]) by mx.test"},
                 {"From", "Alice <alice@example.org>"},
                 {"Subject", "Hello \"there\""}};
    m.remote = {"198.51.100.7", "mail.example.org", "helo.example.org"};
    m.last_error = "webhook returned 503";
    return m;
}

const std::string kMessagePart =
    R"("id":"1795626194123-0f8e9c1a-4b2d-4c55-9a11-3e2f5d7c8b90",)"
    R"("createdAt":"2026-11-25T17:03:14.123Z",)"
    R"("sender":"alice@example.org",)"
    R"("recipients":["user@example.com","Other@Example.com"],)"
    R"("from":"Alice <alice@example.org>",)"
    R"("subject":"Hello \"there\"",)"
    R"("remote":{"ip":"198.51.100.7","host":"mail.example.org","helo":"helo.example.org"})";

const std::string kHeadersPart =
    R"("headers":[["Received","from mail.example.org ([198.51.100.7]) by mx.test"],)"
    R"(["From","Alice <alice@example.org>"],["Subject","Hello \"there\""]])";

// --- request_body ---------------------------------------------------------------------------

TEST(DecisionRequest, MinimalIsExactlyTheEnvelopeAndRemote) {
    const std::string expected =
        R"({"protocol":"haraka-webhook.decision.v1","mode":"minimal","message":{)" + kMessagePart + "}}";
    EXPECT_EQ(request_body(sample_meta(), DecisionMode::minimal, "Subject: x\r\n\r\nbody\r\n"), expected);
}

TEST(DecisionRequest, SummaryAddsOrderedHeadersButNoRawMime) {
    const std::string expected = R"({"protocol":"haraka-webhook.decision.v1","mode":"summary","message":{)" +
                                 kMessagePart + "," + kHeadersPart + "}}";
    EXPECT_EQ(request_body(sample_meta(), DecisionMode::summary, "Subject: x\r\n\r\nbody\r\n"), expected);
}

TEST(DecisionRequest, FullAddsHeadersAndRawMime) {
    const std::string raw = "Received: from x\r\n\tby mx.test\r\nSubject: \"q\"\\\r\n\r\nbody\ttab\r\n";
    const std::string expected = R"({"protocol":"haraka-webhook.decision.v1","mode":"full","message":{)" +
                                 kMessagePart + "," + kHeadersPart +
                                 R"(,"rawMime":"Received: from x\r\n\tby mx.test\r\nSubject: \"q\"\\\r\n\r\nbody\ttab\r\n"}})";
    EXPECT_EQ(request_body(sample_meta(), DecisionMode::full, raw), expected);
}

TEST(DecisionRequest, FullWithAnEmptyMessageStillHasRawMime) {
    const auto body = nlohmann::json::parse(request_body(sample_meta(), DecisionMode::full, ""));
    ASSERT_TRUE(body["message"].contains("rawMime"));
    EXPECT_EQ(body["message"]["rawMime"], "");
}

TEST(DecisionRequest, EmptyFieldsAreEmptyStringsAndArrays) {
    spool::Meta m;
    m.id = "1795626194123-x";
    m.created_at = fixed_time();
    const std::string expected =
        R"({"protocol":"haraka-webhook.decision.v1","mode":"summary","message":{"id":"1795626194123-x",)"
        R"("createdAt":"2026-11-25T17:03:14.123Z","sender":"","recipients":[],"from":"","subject":"",)"
        R"("remote":{"ip":"","host":"","helo":""},"headers":[]}})";
    EXPECT_EQ(request_body(m, DecisionMode::summary, ""), expected);
}

TEST(DecisionRequest, ValidUtf8IsKeptAsIs) {
    spool::Meta m = sample_meta();
    m.subject = "Gr\xC3\xBC\xC3\x9F" "e \xE2\x82\xAC \xF0\x9F\x98\x80";  // Grüße € 😀
    const std::string raw = "Subject: \xC3\xBC\r\n\r\n\xE2\x82\xAC\r\n";
    std::string body;
    ASSERT_NO_THROW(body = request_body(m, DecisionMode::full, raw));
    const auto json = nlohmann::json::parse(body);
    EXPECT_EQ(json["message"]["subject"], m.subject);
    EXPECT_EQ(json["message"]["rawMime"], raw);
}

TEST(DecisionRequest, InvalidUtf8InFullModeBecomesReplacementCharactersWithoutThrowing) {
    // 8-bit Latin-1 body, a lone continuation byte, a truncated sequence, 0xFF.
    const std::string raw = "Subject: caf\xE9\r\n\r\nna\xEFve \x80 \xE2\x82 end \xFF\r\n";
    std::string body;
    ASSERT_NO_THROW(body = request_body(sample_meta(), DecisionMode::full, raw));
    nlohmann::json json;
    ASSERT_NO_THROW(json = nlohmann::json::parse(body)) << body;  // the request itself is valid UTF-8 JSON
    const std::string raw_mime = json["message"]["rawMime"];
    const std::string fffd = "\xEF\xBF\xBD";
    EXPECT_EQ(raw_mime.find('\xE9'), std::string::npos);
    EXPECT_NE(raw_mime.find("Subject: caf" + fffd + "\r\n"), std::string::npos) << raw_mime;
    EXPECT_NE(raw_mime.find("na" + fffd + "ve " + fffd + " "), std::string::npos) << raw_mime;
    EXPECT_NE(raw_mime.find(fffd + " end " + fffd + "\r\n"), std::string::npos) << raw_mime;
    EXPECT_EQ(raw_mime.rfind("\r\n"), raw_mime.size() - 2);
}

TEST(DecisionRequest, InvalidUtf8MatchesNodeBufferToStringForCommonCases) {
    // haraka-webhook sends rawMime.toString('utf8'): one U+FFFD per maximal invalid
    // subsequence (WHATWG). A truncated 3-byte sequence is ONE replacement character there.
    const std::string fffd = "\xEF\xBF\xBD";
    struct Case {
        std::string in, out;
    };
    for (const Case& c : {Case{"a\xE2\x82" "b", "a" + fffd + "b"},            // truncated 3-byte
                          Case{"a\xF0\x9F\x98" "b", "a" + fffd + "b"},        // truncated 4-byte
                          Case{"a\xC3\x28" "b", "a" + fffd + "(b"},           // bad continuation
                          Case{"a\xFF\xFE" "b", "a" + fffd + fffd + "b"},     // two invalid lead bytes
                          Case{"a\xE9" "b", "a" + fffd + "b"}}) {             // Latin-1 é
        std::string body;
        ASSERT_NO_THROW(body = request_body(sample_meta(), DecisionMode::full, c.in));
        const std::string raw_mime = nlohmann::json::parse(body)["message"]["rawMime"];
        EXPECT_EQ(raw_mime, c.out);
    }
}

TEST(DecisionRequest, InvalidUtf8InHeadersAndEnvelopeNeverThrows) {
    spool::Meta m = sample_meta();
    m.subject = "Caf\xE9";
    m.from = "\xFF <x@example.org>";
    m.headers = {{"Subject", "Caf\xE9"}};
    for (const auto mode : {DecisionMode::minimal, DecisionMode::summary, DecisionMode::full}) {
        std::string body;
        ASSERT_NO_THROW(body = request_body(m, mode, "Subject: Caf\xE9\r\n\r\n"));
        nlohmann::json json;
        ASSERT_NO_THROW(json = nlohmann::json::parse(body)) << body;
        EXPECT_EQ(json["message"]["subject"], "Caf\xEF\xBF\xBD");
    }
}

// --- parse_response -------------------------------------------------------------------------

TEST(DecisionResponse, AllowWithoutReasonOrMessage) {
    const Decision d = parse_response(200, R"({"decision":"allow"})", "");
    EXPECT_EQ(d.verdict, Verdict::allow);
    EXPECT_EQ(d.reason, "");
    EXPECT_EQ(d.message, "");
}

TEST(DecisionResponse, AllowWithReasonAndMessageAndExtraFields) {
    const Decision d = parse_response(200, R"({"decision":"allow","reason":"ok","message":"fine","score":3})", "");
    EXPECT_EQ(d.verdict, Verdict::allow);
    EXPECT_EQ(d.reason, "ok");
    EXPECT_EQ(d.message, "fine");
}

TEST(DecisionResponse, DenyWithReasonAndMessage) {
    const Decision d = parse_response(
        200, R"({"decision":"deny","reason":"blocked_sender","message":"Delivery rejected by recipient policy"})", "");
    EXPECT_EQ(d.verdict, Verdict::deny);
    EXPECT_EQ(d.reason, "blocked_sender");
    EXPECT_EQ(d.message, "Delivery rejected by recipient policy");
}

TEST(DecisionResponse, DenyWithoutReasonOrMessage) {
    const Decision d = parse_response(200, R"({"decision":"deny"})", "");
    EXPECT_EQ(d.verdict, Verdict::deny);
    EXPECT_EQ(d.reason, "");
    EXPECT_EQ(d.message, "");
}

TEST(DecisionResponse, SilentDenyWithAndWithoutReason) {
    Decision d = parse_response(200, R"({"decision":"silent_deny","reason":"shadow_block","message":"internal"})", "");
    EXPECT_EQ(d.verdict, Verdict::silent_deny);
    EXPECT_EQ(d.reason, "shadow_block");
    EXPECT_EQ(d.message, "internal");
    d = parse_response(200, R"({"decision":"silent_deny"})", "");
    EXPECT_EQ(d.verdict, Verdict::silent_deny);
    EXPECT_EQ(d.reason, "");
}

TEST(DecisionResponse, WhitespaceAroundTheJsonIsFine) {
    EXPECT_EQ(parse_response(200, " \r\n{ \"decision\" : \"deny\" }\n", "").verdict, Verdict::deny);
}

TEST(DecisionResponse, NullReasonAndMessageAreEmpty) {
    const Decision d = parse_response(200, R"({"decision":"deny","reason":null,"message":null})", "");
    EXPECT_EQ(d.verdict, Verdict::deny);
    EXPECT_EQ(d.reason, "");
    EXPECT_EQ(d.message, "");
}

TEST(DecisionResponse, TruthyNonStringReasonIsReadAsText) {
    // haraka-webhook: String(data.reason) when truthy.
    const Decision d = parse_response(200, R"({"decision":"deny","reason":42,"message":"m"})", "");
    EXPECT_EQ(d.verdict, Verdict::deny);
    EXPECT_EQ(d.reason, "42");
}

TEST(DecisionResponse, FalsyNonStringReasonAndMessageAreEmptyAsInHarakaWebhook) {
    // haraka-webhook: `data.message ? String(data.message) : ''`: false and 0 are falsy, so the
    // deny text falls back to the reason / "Message rejected", never "false" or "0".
    const Decision d = parse_response(200, R"({"decision":"deny","reason":0,"message":false})", "");
    EXPECT_EQ(d.verdict, Verdict::deny);
    EXPECT_EQ(d.message, "");
    EXPECT_EQ(d.reason, "");
    EXPECT_EQ(deny_text(d), "Message rejected");
}

TEST(DecisionResponse, OnlyStatus200Counts) {
    for (const long status : {201L, 202L, 204L, 301L, 400L, 404L, 406L, 500L, 503L}) {
        const Decision d = parse_response(status, R"({"decision":"allow"})", "");
        EXPECT_EQ(d.verdict, Verdict::unavailable) << status;
        EXPECT_NE(d.reason.find(std::to_string(status)), std::string::npos) << d.reason;
    }
}

TEST(DecisionResponse, InvalidJsonIsUnavailable) {
    for (const std::string body : {"", "not json", "{\"decision\":\"allow\"", "{decision: 'allow'}",
                                   "{\"decision\":\"allow\"} trailing"}) {
        const Decision d = parse_response(200, body, "");
        EXPECT_EQ(d.verdict, Verdict::unavailable) << body;
        EXPECT_NE(d.reason.find("invalid JSON"), std::string::npos) << body << " -> " << d.reason;
    }
}

TEST(DecisionResponse, NonObjectJsonIsUnavailable) {
    for (const std::string body : {"null", "42", "\"allow\"", "[\"allow\"]", "[{\"decision\":\"allow\"}]", "true"}) {
        const Decision d = parse_response(200, body, "");
        EXPECT_EQ(d.verdict, Verdict::unavailable) << body;
        EXPECT_FALSE(d.reason.empty()) << body;
    }
}

TEST(DecisionResponse, UnknownOrMissingDecisionIsUnavailable) {
    for (const std::string body : {R"({})", R"({"decision":"retry"})", R"({"decision":"ALLOW"})",
                                   R"({"decision":"Deny"})", R"({"decision":" allow"})", R"({"decision":""})",
                                   R"({"decision":null})", R"({"decision":true})", R"({"decision":["allow"]})",
                                   R"({"verdict":"allow"})", R"({"decision":"unavailable"})"}) {
        const Decision d = parse_response(200, body, "");
        EXPECT_EQ(d.verdict, Verdict::unavailable) << body;
        EXPECT_NE(d.reason.find("invalid decision"), std::string::npos) << body << " -> " << d.reason;
    }
}

TEST(DecisionResponse, TransportErrorIsUnavailableWithTheError) {
    Decision d = parse_response(0, "", "Timeout was reached");
    EXPECT_EQ(d.verdict, Verdict::unavailable);
    EXPECT_NE(d.reason.find("Timeout was reached"), std::string::npos) << d.reason;
    // An error wins even when a status and a valid body were seen (e.g. a cut-off transfer).
    d = parse_response(200, R"({"decision":"allow"})", "Connection reset by peer");
    EXPECT_EQ(d.verdict, Verdict::unavailable);
    EXPECT_NE(d.reason.find("Connection reset by peer"), std::string::npos) << d.reason;
    d = parse_response(0, "", "Couldn't connect to server");
    EXPECT_EQ(d.verdict, Verdict::unavailable);
}

// --- smtp_safe and deny_text ----------------------------------------------------------------

TEST(SmtpSafe, PlainTextIsUnchanged) {
    EXPECT_EQ(smtp_safe("Delivery rejected by recipient policy"), "Delivery rejected by recipient policy");
    EXPECT_EQ(smtp_safe("a-b_c.d/e:f;g!h?i~j{k}l|m"), "a-b_c.d/e:f;g!h?i~j{k}l|m");
}

TEST(SmtpSafe, CrLfRunsBecomeOneSpace) {
    EXPECT_EQ(smtp_safe("a\r\nb"), "a b");
    EXPECT_EQ(smtp_safe("a\nb"), "a b");
    EXPECT_EQ(smtp_safe("a\rb"), "a b");
    EXPECT_EQ(smtp_safe("a\r\n\r\n\n\rb"), "a b");
    EXPECT_EQ(smtp_safe("a\r\nb\nc"), "a b c");
    // A space next to the break is kept: the run only replaces the CR/LF characters.
    EXPECT_EQ(smtp_safe("a \r\n b"), "a   b");
}

TEST(SmtpSafe, ControlAndNonAsciiCharactersAreDropped) {
    EXPECT_EQ(smtp_safe("a\tb"), "ab");
    EXPECT_EQ(smtp_safe("a\x01\x1f\x7f" "b"), "ab");
    EXPECT_EQ(smtp_safe("caf\xC3\xA9 \xE2\x82\xAC" "5"), "caf 5");
    EXPECT_EQ(smtp_safe(std::string("a\0b", 3)), "ab");
    EXPECT_EQ(smtp_safe("\x80\xFF" "ok"), "ok");
}

TEST(SmtpSafe, IsTrimmed) {
    EXPECT_EQ(smtp_safe("   spaced out   "), "spaced out");
    EXPECT_EQ(smtp_safe("\r\n  x \r\n"), "x");
    EXPECT_EQ(smtp_safe("\t\x01 x \x02\t"), "x");
}

TEST(SmtpSafe, AtMost200Characters) {
    EXPECT_EQ(smtp_safe(std::string(200, 'a')), std::string(200, 'a'));
    EXPECT_EQ(smtp_safe(std::string(201, 'a')), std::string(200, 'a'));
    EXPECT_EQ(smtp_safe(std::string(5000, 'b')), std::string(200, 'b'));
    // The limit applies to what is left after dropping, and after trimming the front.
    const std::string noisy = "   " + std::string(300, '\x01') + std::string(250, 'c');
    EXPECT_EQ(smtp_safe(noisy), std::string(200, 'c'));
    std::string mixed;
    for (int i = 0; i < 150; ++i) mixed += "x\xC3\xA9";  // 150 kept + 300 dropped bytes
    EXPECT_EQ(smtp_safe(mixed), std::string(150, 'x'));
}

TEST(SmtpSafe, FallbackWhenNothingIsLeft) {
    EXPECT_EQ(smtp_safe(""), "Message rejected");
    EXPECT_EQ(smtp_safe("   "), "Message rejected");
    EXPECT_EQ(smtp_safe("\r\n\r\n"), "Message rejected");
    EXPECT_EQ(smtp_safe("\t\x01\xC3\xA9"), "Message rejected");
    EXPECT_EQ(smtp_safe("", "Other fallback"), "Other fallback");
}

TEST(DenyText, MessageThenReasonThenFallback) {
    EXPECT_EQ(deny_text({Verdict::deny, "blocked_sender", "Go away"}), "Go away");
    EXPECT_EQ(deny_text({Verdict::deny, "blocked_sender", ""}), "blocked_sender");
    EXPECT_EQ(deny_text({Verdict::deny, "", ""}), "Message rejected");
}

TEST(DenyText, IsSanitised) {
    EXPECT_EQ(deny_text({Verdict::deny, "", "No\r\nway \xE2\x9C\x8B"}), "No way");
    EXPECT_EQ(deny_text({Verdict::deny, "reason\r\n", ""}), "reason");
    EXPECT_EQ(deny_text({Verdict::deny, "", std::string(300, 'z')}), std::string(200, 'z'));
    // A message made only of dropped characters is still "set": the fallback, not the reason
    // (haraka-webhook: smtpSafeMessage(message || reason)).
    EXPECT_EQ(deny_text({Verdict::deny, "the_reason", "\r\n"}), "Message rejected");
}

TEST(DenyText, EndToEndFromAnAnswer) {
    EXPECT_EQ(deny_text(parse_response(200, R"({"decision":"deny","message":"Spam\r\nscore 9.1"})", "")),
              "Spam score 9.1");
    EXPECT_EQ(deny_text(parse_response(200, R"({"decision":"deny","reason":"blocked"})", "")), "blocked");
    EXPECT_EQ(deny_text(parse_response(200, R"({"decision":"deny"})", "")), "Message rejected");
}

}  // namespace
}  // namespace mxhook::decision
