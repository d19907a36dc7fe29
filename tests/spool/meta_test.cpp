// meta.json must stay byte-compatible with haraka-webhook in both directions, so the
// expected texts below are written out literally, exactly as Node's
// JSON.stringify(meta, null, 2) + "\n" prints them.

#include "mxhook/spool/meta.hpp"
#include "mxhook/spool/json_text.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <random>

#include <stdexcept>

namespace mxhook::spool {
namespace {

using namespace std::chrono_literals;
namespace chr = std::chrono;

Clock::time_point at(chr::year_month_day day, chr::milliseconds time_of_day) {
    return chr::time_point_cast<Clock::duration>(chr::sys_days{day} + time_of_day);
}

// 2025-11-25T17:03:14.123Z
Clock::time_point example_time() {
    return at(chr::year{2025} / 11 / 25, 17h + 3min + 14s + 123ms);
}

Meta example_meta() {
    Meta m;
    m.id = "1764090194123-0f8e6a3c-5b1d-4c1e-9a7f-2b3c4d5e6f70";
    m.created_at = example_time();
    m.sender = "alice@example.org";
    m.recipients = {"bob@example.com", "carol@example.com"};
    m.from = "Alice <alice@example.org>";
    m.subject = "Caf\xC3\xA9 \"menu\"";
    m.headers = {{"From", "Alice <alice@example.org>"},
                 {"To", "bob@example.com, carol@example.com"},
                 {"Subject", "Caf\xC3\xA9 \"menu\""}};
    m.remote = {"192.0.2.10", "", "mail.example.org"};
    return m;
}

std::string parse_error_of(std::string_view json) {
    try {
        parse_meta(json);
    } catch (const std::runtime_error& e) {
        return e.what();
    }
    return "(no error)";
}

// --- ISO-8601 -------------------------------------------------------------------------------

TEST(Iso8601, FormatsLikeToIsoString) {
    EXPECT_EQ(iso8601(example_time()), "2025-11-25T17:03:14.123Z");
    EXPECT_EQ(iso8601(Clock::time_point{}), "1970-01-01T00:00:00.000Z");
    EXPECT_EQ(iso8601(at(chr::year{2024} / 2 / 29, 23h + 59min + 59s + 9ms)),
              "2024-02-29T23:59:59.009Z");
}

TEST(Iso8601, TruncatesBelowMilliseconds) {
    // toISOString floors; so must we, or a time could be written later than it happened.
    EXPECT_EQ(iso8601(example_time() + 999us), "2025-11-25T17:03:14.123Z");
}

TEST(Iso8601, ParsesWithAndWithoutMilliseconds) {
    EXPECT_EQ(parse_iso8601("2025-11-25T17:03:14.123Z"), example_time());
    EXPECT_EQ(parse_iso8601("2025-11-25T17:03:14Z"), example_time() - 123ms);
    EXPECT_EQ(parse_iso8601("1970-01-01T00:00:00.000Z"), Clock::time_point{});
}

TEST(Iso8601, RejectsTimesTheClockCannotHold) {
    // Nanoseconds in 64 bits: 1677-09-21 to 2262-04-11.
    EXPECT_EQ(parse_iso8601("4048-12-25T17:03:14Z"), std::nullopt);
    EXPECT_EQ(parse_iso8601("2263-01-01T00:00:00Z"), std::nullopt);
    EXPECT_EQ(parse_iso8601("0000-01-01T00:00:00Z"), std::nullopt);
    EXPECT_NE(parse_iso8601("2261-12-31T23:59:59.999Z"), std::nullopt);
    EXPECT_NE(parse_iso8601("1678-01-01T00:00:00Z"), std::nullopt);
}

TEST(Iso8601, RoundTrips) {
    const auto t = at(chr::year{2031} / 7 / 4, 4h + 5min + 6s + 780ms);
    EXPECT_EQ(parse_iso8601(iso8601(t)), t);
}

TEST(Iso8601, RejectsJunk) {
    for (std::string_view junk : {"", "now", "2025-11-25", "2025-11-25T17:03:14", "2025-11-25 17:03:14.123Z",
                                  "2025-11-25T17:03:14.123", "2025-11-25T17:03:14.12Z",
                                  "2025-11-25T17:03:14.1234Z", "2025-13-25T17:03:14.123Z",
                                  "2025-02-30T17:03:14.123Z", "2025-11-25T24:00:00.000Z",
                                  "2025-11-25T17:60:14.123Z", "2025-11-25T17:03:60.123Z",
                                  "2025-11-25T17:03:14.123+00:00", "2025-1a-25T17:03:14.123Z",
                                  "+2025-11-25T17:03:14Z", "2025-11-25T17:03:14,123Z"}) {
        EXPECT_EQ(parse_iso8601(junk), std::nullopt) << junk;
    }
}

// --- writing --------------------------------------------------------------------------------

TEST(MetaJson, FreshMetaIsByteIdenticalToJavaScript) {
    const char* expected = R"({
  "id": "1764090194123-0f8e6a3c-5b1d-4c1e-9a7f-2b3c4d5e6f70",
  "createdAt": "2025-11-25T17:03:14.123Z",
  "attempts": 0,
  "nextAttemptAt": null,
  "sender": "alice@example.org",
  "recipients": [
    "bob@example.com",
    "carol@example.com"
  ],
  "from": "Alice <alice@example.org>",
  "subject": "Café \"menu\"",
  "headers": [
    [
      "From",
      "Alice <alice@example.org>"
    ],
    [
      "To",
      "bob@example.com, carol@example.com"
    ],
    [
      "Subject",
      "Café \"menu\""
    ]
  ],
  "remote": {
    "ip": "192.0.2.10",
    "host": "",
    "helo": "mail.example.org"
  }
}
)";
    EXPECT_EQ(to_json(example_meta()), expected);
}

TEST(MetaJson, RetriedMetaIsByteIdenticalToJavaScript) {
    Meta m = example_meta();
    m.sender = "";
    m.headers.clear();
    m.recipients = {"bob@example.com"};
    m.subject = "tab\there \\ back\x01slash / <b>";
    m.attempts = 2;
    m.next_attempt_at = example_time() + 2min;
    m.last_attempt_at = example_time() + 1min;
    m.last_error = "retryable webhook failure";
    m.remote = {};
    const char* expected = R"({
  "id": "1764090194123-0f8e6a3c-5b1d-4c1e-9a7f-2b3c4d5e6f70",
  "createdAt": "2025-11-25T17:03:14.123Z",
  "attempts": 2,
  "nextAttemptAt": "2025-11-25T17:05:14.123Z",
  "sender": "",
  "recipients": [
    "bob@example.com"
  ],
  "from": "Alice <alice@example.org>",
  "subject": "tab\there \\ back\u0001slash / <b>",
  "headers": [],
  "remote": {
    "ip": "",
    "host": "",
    "helo": ""
  },
  "lastAttemptAt": "2025-11-25T17:04:14.123Z",
  "lastError": "retryable webhook failure"
}
)";
    EXPECT_EQ(to_json(m), expected);
}

TEST(MetaJson, MaxAgeDeadLetterAddsOnlyLastError) {
    Meta m = example_meta();
    m.last_error = "max retry age exceeded";
    const std::string text = to_json(m);
    EXPECT_EQ(text.find("lastAttemptAt"), std::string::npos);
    const std::string tail = "  },\n  \"lastError\": \"max retry age exceeded\"\n}\n";
    EXPECT_TRUE(text.ends_with(tail)) << text;
}

TEST(MetaJson, NonUtf8HeaderBytesBecomeReplacementCharacter) {
    Meta m = example_meta();
    m.headers.emplace_back("X-Latin1", "caf\xE9");
    m.subject = "\xFF";
    std::string text;
    ASSERT_NO_THROW(text = to_json(m));
    EXPECT_NE(text.find("\"caf\xEF\xBF\xBD\""), std::string::npos) << text;
    const Meta back = parse_meta(text);
    EXPECT_EQ(back.subject, "\xEF\xBF\xBD");
}

TEST(MetaJson, RoundTripsEveryField) {
    Meta m = example_meta();
    m.sender = "<alice@example.org>";
    m.attempts = 7;
    m.next_attempt_at = example_time() + 1h;
    m.last_attempt_at = example_time() + 30min;
    m.last_error = "webhook returned 503";
    m.remote.host = "mx.example.org";

    const Meta back = parse_meta(to_json(m));
    EXPECT_EQ(back.id, m.id);
    EXPECT_EQ(back.created_at, m.created_at);
    EXPECT_EQ(back.attempts, 7);
    EXPECT_EQ(back.next_attempt_at, m.next_attempt_at);
    EXPECT_EQ(back.sender, "<alice@example.org>");
    EXPECT_EQ(back.recipients, m.recipients);
    EXPECT_EQ(back.from, m.from);
    EXPECT_EQ(back.subject, m.subject);
    EXPECT_EQ(back.headers, m.headers);
    EXPECT_EQ(back.remote.ip, m.remote.ip);
    EXPECT_EQ(back.remote.host, m.remote.host);
    EXPECT_EQ(back.remote.helo, m.remote.helo);
    EXPECT_EQ(back.last_attempt_at, m.last_attempt_at);
    EXPECT_EQ(back.last_error, m.last_error);
    EXPECT_EQ(to_json(back), to_json(m));
}

// --- the direct writer against nlohmann's document dump --------------------------------------

// What to_json wrote when it built an ordered_json document and dumped it: the reference
// the direct writer must match byte for byte.
std::string reference_json(const Meta& meta) {
    using Json = nlohmann::ordered_json;
    Json j;
    j["id"] = meta.id;
    j["createdAt"] = iso8601(meta.created_at);
    j["attempts"] = meta.attempts;
    j["nextAttemptAt"] = meta.next_attempt_at ? Json(iso8601(*meta.next_attempt_at)) : Json(nullptr);
    j["sender"] = meta.sender;
    j["recipients"] = meta.recipients;
    j["from"] = meta.from;
    j["subject"] = meta.subject;
    Json headers = Json::array();
    for (const auto& [name, value] : meta.headers) headers.push_back(Json::array({name, value}));
    j["headers"] = std::move(headers);
    j["remote"] = Json{{"ip", meta.remote.ip}, {"host", meta.remote.host}, {"helo", meta.remote.helo}};
    if (meta.last_attempt_at) j["lastAttemptAt"] = iso8601(*meta.last_attempt_at);
    if (meta.last_error) j["lastError"] = *meta.last_error;
    if (meta.interrupted_attempts > 0) j["interruptedAttempts"] = meta.interrupted_attempts;
    if (meta.requeued_at) j["requeuedAt"] = iso8601(*meta.requeued_at);
    return j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

// Random bytes biased to what escaping cares about: controls, quotes, backslashes, DEL,
// UTF-8 lead and continuation bytes (valid sequences and broken ones), plain ASCII.
std::string random_bytes(std::mt19937& rng, std::size_t max_len) {
    static const std::string interesting = std::string("\"\\\b\f\n\r\t\x01\x1f\x7f \x00", 13) +
                                           "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\x80\xbf\xc0\xff\xed\xa0";
    std::uniform_int_distribution<std::size_t> len(0, max_len);
    std::uniform_int_distribution<int> kind(0, 3), any(0, 255), ascii(0x20, 0x7e);
    std::uniform_int_distribution<std::size_t> pick(0, interesting.size() - 1);
    std::string out(len(rng), '\0');
    for (auto& c : out) {
        const int k = kind(rng);
        c = static_cast<char>(k == 0 ? any(rng) : k == 1 ? interesting[pick(rng)] : ascii(rng));
    }
    return out;
}

TEST(MetaJson, DirectWriterMatchesTheDocumentDumpByteForByte) {
    std::mt19937 rng(20261129);
    std::uniform_int_distribution<int> count(0, 4);
    for (int round = 0; round < 2000; ++round) {
        Meta m = example_meta();
        m.id = random_bytes(rng, 40);
        m.sender = random_bytes(rng, 30);
        m.recipients.clear();
        for (int i = count(rng); i > 0; --i) m.recipients.push_back(random_bytes(rng, 30));
        m.from = random_bytes(rng, 40);
        m.subject = random_bytes(rng, 60);
        m.headers.clear();
        for (int i = count(rng); i > 0; --i) m.headers.emplace_back(random_bytes(rng, 12), random_bytes(rng, 60));
        m.remote = {random_bytes(rng, 15), random_bytes(rng, 20), random_bytes(rng, 20)};
        m.attempts = round % 3 == 0 ? 0 : round;
        if (round % 2 == 1) m.next_attempt_at = example_time() + std::chrono::seconds(round);
        if (round % 4 == 1) m.last_attempt_at = example_time();
        if (round % 4 == 1) m.last_error = random_bytes(rng, 50);
        if (round % 5 == 2) m.interrupted_attempts = round % 7;
        if (round % 6 == 3) m.requeued_at = example_time() + std::chrono::milliseconds(round);
        ASSERT_EQ(to_json(m), reference_json(m)) << "round " << round;
    }
}

TEST(MetaJson, RandomMetasReadBackToTheSameText) {
    std::mt19937 rng(11);
    std::uniform_int_distribution<int> count(0, 4);
    for (int round = 0; round < 2000; ++round) {
        Meta m = example_meta();
        m.id = "id-" + random_bytes(rng, 30);
        m.sender = random_bytes(rng, 30);
        m.recipients.clear();
        for (int i = count(rng); i > 0; --i) m.recipients.push_back(random_bytes(rng, 30));
        m.subject = random_bytes(rng, 60);
        m.headers.clear();
        for (int i = count(rng); i > 0; --i) m.headers.emplace_back(random_bytes(rng, 12), random_bytes(rng, 60));
        m.remote = {random_bytes(rng, 15), random_bytes(rng, 20), random_bytes(rng, 20)};
        m.attempts = round;
        if (round % 2 == 1) m.next_attempt_at = example_time() + std::chrono::seconds(round);
        if (round % 3 == 1) m.last_attempt_at = example_time();
        if (round % 3 == 1) m.last_error = random_bytes(rng, 50);
        if (round % 5 == 2) m.interrupted_attempts = round % 7;
        if (round % 6 == 3) m.requeued_at = example_time() + std::chrono::milliseconds(round);
        const std::string text = to_json(m);
        ASSERT_EQ(to_json(parse_meta(text)), text) << "round " << round;
    }
}

TEST(MetaJson, RequeuedAtRestartsTheRetryAgeClock) {
    Meta m = example_meta();
    EXPECT_EQ(to_json(m).find("requeuedAt"), std::string::npos) << "written only once set";
    EXPECT_EQ(retry_age_origin(m), m.created_at);
    m.requeued_at = m.created_at + std::chrono::hours(48);
    const Meta back = parse_meta(to_json(m));
    ASSERT_TRUE(back.requeued_at.has_value());
    EXPECT_EQ(*back.requeued_at, *m.requeued_at);
    EXPECT_EQ(retry_age_origin(back), *m.requeued_at);
    m.requeued_at = m.created_at - std::chrono::hours(1);  // a clock that went back: never earlier than createdAt
    EXPECT_EQ(retry_age_origin(m), m.created_at);
}

TEST(MetaJson, UnknownFieldsAreSkippedAndTheLastOfARepeatedFieldCounts) {
    const Meta m = parse_meta(R"({"future":{"a":[1,{"b":null}],"c":"d"},"id":"first","id":"a",
        "createdAt":"2024-11-25T17:03:14Z","extra":[[],{}],"recipients":["x"],"recipients":["b","c"],
        "remote":{"ip":"::1","port":{"n":[25]},"helo":"h"},"attempts":18446744073709551,"flag":true,"f":1.5})");
    EXPECT_EQ(m.id, "a");
    EXPECT_EQ(m.recipients, (std::vector<std::string>{"b", "c"}));
    EXPECT_EQ(m.remote.ip, "::1");
    EXPECT_EQ(m.remote.helo, "h");
    EXPECT_EQ(m.attempts, 18446744073709551);
}

TEST(JsonText, StringsMatchTheDocumentDumpByteForByte) {
    std::mt19937 rng(7);
    for (int round = 0; round < 20000; ++round) {
        const std::string value = random_bytes(rng, 24);
        std::string ours;
        append_json_string(ours, value);
        ASSERT_EQ(ours, nlohmann::json(value).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace))
            << "round " << round;
    }
}

TEST(MetaJson, AsciiMetaReadsBackUnchanged) {
    Meta m = example_meta();
    m.subject = "Cafe \"menu\"\t\x01";
    m.headers = {{"Subject", m.subject}, {"X-Empty", ""}};
    m.next_attempt_at = example_time() + 1h;
    m.last_error = "503";
    ASSERT_TRUE(reads_back_unchanged(m));
    const Meta back = parse_meta(to_json(m));
    EXPECT_EQ(back.subject, m.subject);
    EXPECT_EQ(back.headers, m.headers);
    EXPECT_EQ(back.created_at, m.created_at);
    EXPECT_EQ(to_json(back), to_json(m));
}

TEST(MetaJson, EightBitBytesOrSubMillisecondsDoNotReadBackUnchanged) {
    EXPECT_FALSE(reads_back_unchanged(example_meta()));  // its subject is UTF-8
    Meta m = example_meta();
    m.subject = "plain";
    m.headers = {{"Subject", "plain"}};
    ASSERT_TRUE(reads_back_unchanged(m));
    m.headers.emplace_back("X-Latin1", "caf\xE9");
    EXPECT_FALSE(reads_back_unchanged(m));
    m.headers.pop_back();
    m.created_at += std::chrono::microseconds(1);
    EXPECT_FALSE(reads_back_unchanged(m));
}

// --- reading what haraka-webhook wrote ------------------------------------------------------

TEST(MetaJson, ParsesHarakaWebhookMeta) {
    // As written by haraka-webhook's buildMeta: sender with angle brackets, a folded
    // Subject that parseHeaders already unfolded, nextAttemptAt null.
    const char* text = R"({
  "id": "1732554194123-5D6F1A2B-3C4D-4E5F-8A9B-0C1D2E3F4A5B.1",
  "createdAt": "2024-11-25T17:03:14.123Z",
  "attempts": 0,
  "nextAttemptAt": null,
  "sender": "<alice@example.org>",
  "recipients": [
    "<bob@example.com>"
  ],
  "from": "Alice <alice@example.org>",
  "subject": "A long subject that was folded over two lines",
  "headers": [
    [
      "Received",
      "from mail.example.org (mail.example.org [192.0.2.10]) by mx.example.com"
    ],
    [
      "From",
      "Alice <alice@example.org>"
    ],
    [
      "Subject",
      "A long subject that was folded over two lines"
    ]
  ],
  "remote": {
    "ip": "192.0.2.10",
    "host": "mail.example.org",
    "helo": "mail.example.org"
  }
}
)";
    const Meta m = parse_meta(text);
    EXPECT_EQ(m.id, "1732554194123-5D6F1A2B-3C4D-4E5F-8A9B-0C1D2E3F4A5B.1");
    EXPECT_EQ(iso8601(m.created_at), "2024-11-25T17:03:14.123Z");
    EXPECT_EQ(m.attempts, 0);
    EXPECT_EQ(m.next_attempt_at, std::nullopt);
    EXPECT_EQ(m.sender, "<alice@example.org>");  // kept as written
    EXPECT_EQ(bare_address(m.sender), "alice@example.org");
    EXPECT_EQ(m.recipients, std::vector<std::string>{"<bob@example.com>"});
    EXPECT_EQ(m.subject, "A long subject that was folded over two lines");
    ASSERT_EQ(m.headers.size(), 3u);
    EXPECT_EQ(m.headers[2], (mail::Header{"Subject", "A long subject that was folded over two lines"}));
    EXPECT_EQ(m.remote.host, "mail.example.org");
    EXPECT_EQ(m.last_attempt_at, std::nullopt);
    EXPECT_EQ(m.last_error, std::nullopt);
    // Written back unchanged, byte for byte.
    EXPECT_EQ(to_json(m), text);
}

TEST(MetaJson, ParsesHarakaWebhookMetaAfterFailedAttempts) {
    const char* text = R"({
  "id": "x1",
  "createdAt": "2024-11-25T17:03:14.123Z",
  "attempts": 3,
  "nextAttemptAt": "2024-11-25T17:11:14.500Z",
  "sender": "alice@example.org",
  "recipients": [
    "bob@example.com"
  ],
  "from": "",
  "subject": "",
  "headers": [],
  "remote": {
    "ip": "192.0.2.10",
    "host": "",
    "helo": ""
  },
  "lastAttemptAt": "2024-11-25T17:07:14.500Z",
  "lastError": "retryable webhook failure"
}
)";
    const Meta m = parse_meta(text);
    EXPECT_EQ(m.attempts, 3);
    ASSERT_TRUE(m.next_attempt_at);
    EXPECT_EQ(iso8601(*m.next_attempt_at), "2024-11-25T17:11:14.500Z");
    ASSERT_TRUE(m.last_attempt_at);
    EXPECT_EQ(iso8601(*m.last_attempt_at), "2024-11-25T17:07:14.500Z");
    EXPECT_EQ(m.last_error, "retryable webhook failure");
    EXPECT_EQ(to_json(m), text);
}

TEST(MetaJson, AcceptsAbsentOptionalFields) {
    const Meta m =
        parse_meta(R"({"id":"a","createdAt":"2024-11-25T17:03:14Z","recipients":["b@example.com"]})");
    EXPECT_EQ(m.id, "a");
    EXPECT_EQ(m.attempts, 0);
    EXPECT_EQ(m.next_attempt_at, std::nullopt);
    EXPECT_EQ(m.sender, "");
    EXPECT_TRUE(m.headers.empty());
    EXPECT_EQ(m.remote.ip, "");
    EXPECT_EQ(m.last_error, std::nullopt);
}

TEST(MetaJson, AcceptsEmptyOrPartialRemote) {
    const Meta m = parse_meta(
        R"({"id":"a","createdAt":"2024-11-25T17:03:14Z","recipients":[],"sender":"","remote":{"ip":"::1"}})");
    EXPECT_EQ(m.remote.ip, "::1");
    EXPECT_EQ(m.remote.host, "");
    EXPECT_EQ(m.remote.helo, "");
    EXPECT_TRUE(m.recipients.empty());
}

TEST(MetaJson, RejectionsNameTheField) {
    // The message ends up in dead/<id>/error.txt, so it must point at the culprit.
    const std::string head = R"({"id":"a","createdAt":"2024-11-25T17:03:14Z",)";
    const std::pair<std::string, std::string> cases[] = {
        {R"({"createdAt":"2024-11-25T17:03:14Z","recipients":[]})", "\"id\" is missing"},
        {R"({"id":1,"createdAt":"2024-11-25T17:03:14Z","recipients":[]})", "\"id\" must be a string"},
        {R"({"id":"a","recipients":[]})", "\"createdAt\" is missing"},
        {R"({"id":"a","createdAt":"yesterday","recipients":[]})", "\"createdAt\""},
        {head + R"("sender":"a@b"})", "\"recipients\" is missing"},
        {head + R"("recipients":"b@example.com"})", "\"recipients\" must be an array"},
        {head + R"("recipients":["b",2]})", "\"recipients\"[1]"},
        {head + R"("recipients":[],"attempts":"1"})", "\"attempts\""},
        {head + R"("recipients":[],"headers":[["X"]]})", "\"headers\"[0]"},
        {head + R"("recipients":[],"headers":{"X":"y"}})", "\"headers\""},
        {head + R"("recipients":[],"remote":{"ip":4}})", "\"remote\".\"ip\""},
        {head + R"("recipients":[],"nextAttemptAt":"soon"})", "\"nextAttemptAt\""},
        {head + R"("recipients":[],"lastError":false})", "\"lastError\""},
        {R"({"id": "a",)", "invalid JSON"},
        {"", "invalid JSON"},
        {"[]", "must be an object"},
    };
    for (const auto& [json, expected] : cases) {
        const std::string error = parse_error_of(json);
        EXPECT_NE(error.find("meta.json: "), std::string::npos) << json;
        EXPECT_NE(error.find(expected), std::string::npos) << json << " -> " << error;
    }
}

TEST(BareAddress, StripsOnePairOfAngleBrackets) {
    EXPECT_EQ(bare_address("<user@example.com>"), "user@example.com");
    EXPECT_EQ(bare_address("user@example.com"), "user@example.com");
    EXPECT_EQ(bare_address("<>"), "");
    EXPECT_EQ(bare_address(""), "");
    EXPECT_EQ(bare_address("<<a@b>>"), "<a@b>");
    EXPECT_EQ(bare_address("<a@b"), "<a@b");
}

}  // namespace
}  // namespace mxhook::spool
