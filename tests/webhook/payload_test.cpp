#include "mxhook/webhook/payload.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace mxhook::webhook {
namespace {

using namespace std::string_literals;
using namespace std::chrono;

bool is_lower_hex(const std::string& text) {
    return text.find_first_not_of("0123456789abcdef") == std::string::npos;
}

// An independent decoder (what a receiving web framework does) for checking the
// encoder by round trip.
std::string form_decode(std::string_view text) {
    auto nibble = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        ADD_FAILURE() << "not an uppercase hex digit: " << c;
        return 0;
    };
    std::string out;
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] == '+') {
            out += ' ';
        } else if (text[i] == '%' && i + 2 < text.size()) {
            out += static_cast<char>(nibble(text[i + 1]) * 16 + nibble(text[i + 2]));
            i += 2;
        } else {
            out += text[i];
        }
    }
    return out;
}

// Splits "a=1&b=2&body-mime=" into decoded [name, value] pairs, in order.
Fields parse_form(std::string_view form) {
    Fields fields;
    while (!form.empty()) {
        auto amp = form.find('&');
        auto part = form.substr(0, amp);
        auto eq = part.find('=');
        EXPECT_NE(eq, std::string_view::npos) << part;
        fields.emplace_back(form_decode(part.substr(0, eq)), form_decode(part.substr(eq + 1)));
        if (amp == std::string_view::npos) break;
        form.remove_prefix(amp + 1);
    }
    return fields;
}

std::vector<std::string> names_of(const Fields& fields) {
    std::vector<std::string> names;
    for (const auto& f : fields) names.push_back(f.first);
    return names;
}

std::string field(const Fields& fields, const std::string& name) {
    for (const auto& f : fields)
        if (f.first == name) return f.second;
    ADD_FAILURE() << "no field " << name;
    return {};
}

spool::Meta sample_meta() {
    spool::Meta meta;
    meta.id = "id1";
    meta.sender = "<alice@example.org>";
    meta.recipients = {"bob@example.com", "carol+tag@example.com"};
    meta.from = "Alice <alice@example.org>";
    meta.subject = "Caf\xc3\xa9 & cr\xc3\xa8me = 100%";
    meta.headers = {{"From", "Alice <alice@example.org>"}, {"Subject", "Caf\xc3\xa9 & cr\xc3\xa8me = 100%"},
                    {"X-Quote", "say \"hi\"\t\\"}};
    return meta;
}

const system_clock::time_point now = system_clock::time_point{seconds{1795453394}} + 750ms;

// --- token and signature ----------------------------------------------------------

TEST(PayloadTokenTest, FiftyLowercaseHexCharacters) {
    auto token = make_token();
    EXPECT_EQ(token.size(), 50u);
    EXPECT_TRUE(is_lower_hex(token)) << token;
}

TEST(PayloadTokenTest, DiffersEachCall) {
    std::set<std::string> seen;
    for (int i = 0; i < 100; ++i) seen.insert(make_token());
    EXPECT_EQ(seen.size(), 100u);
}

TEST(PayloadSignTest, Rfc4231TestCase2) {
    const std::string expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
    // The MAC covers timestamp + token, so any split of the data gives the same result.
    EXPECT_EQ(sign("Jefe", "what do ya want ", "for nothing?"), expected);
    EXPECT_EQ(sign("Jefe", "", "what do ya want for nothing?"), expected);
    EXPECT_EQ(sign("Jefe", "what do ya want for nothing?", ""), expected);
}

TEST(PayloadSignTest, Rfc4231TestCase1BinaryKey) {
    EXPECT_EQ(sign(std::string(20, '\x0b'), "Hi ", "There"),
              "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
}

TEST(PayloadSignTest, DependsOnKeyAndOrder) {
    EXPECT_NE(sign("key1", "1700000000", "abc"), sign("key2", "1700000000", "abc"));
    EXPECT_NE(sign("key1", "1700000000", "abc"), sign("key1", "1700000001", "abc"));
    EXPECT_EQ(sign("key1", "1", "2").size(), 64u);
    EXPECT_TRUE(is_lower_hex(sign("key1", "1", "2")));
}

// --- form encoding ----------------------------------------------------------------

// What URLSearchParams produces for a single byte: the expected table written out
// independently of the implementation's predicate.
std::string expected_encoding(unsigned char c) {
    static const std::string keep =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789*-._";
    if (keep.find(static_cast<char>(c)) != std::string::npos) return std::string(1, static_cast<char>(c));
    if (c == ' ') return "+";
    char buffer[4];
    std::snprintf(buffer, sizeof buffer, "%%%02X", c);
    return buffer;
}

TEST(FormEncodeTest, EveryByteValue) {
    for (int i = 0; i < 256; ++i) {
        const std::string byte(1, static_cast<char>(i));
        EXPECT_EQ(form_encode(byte), expected_encoding(static_cast<unsigned char>(i))) << "byte " << i;
        EXPECT_EQ(form_encoded_size(byte), form_encode(byte).size()) << "byte " << i;
    }
}

TEST(FormEncodeTest, KnownStrings) {
    EXPECT_EQ(form_encode(""), "");
    EXPECT_EQ(form_encode("a b&c=d"), "a+b%26c%3Dd");
    EXPECT_EQ(form_encode("~!'()"), "%7E%21%27%28%29");  // unlike encodeURIComponent
    EXPECT_EQ(form_encode("a+b/c?d#e%f"), "a%2Bb%2Fc%3Fd%23e%25f");
    EXPECT_EQ(form_encode("caf\xc3\xa9"), "caf%C3%A9");
    EXPECT_EQ(form_encode("\r\n.\r\n"), "%0D%0A.%0D%0A");
    EXPECT_EQ(form_encode("\0\xff"s), "%00%FF");
}

TEST(FormEncodeTest, AllBytesRoundTripAndSizeAgrees) {
    std::string all;
    for (int i = 0; i < 256; ++i) all += static_cast<char>(i);
    all += all;
    auto encoded = form_encode(all);
    EXPECT_EQ(form_encoded_size(all), encoded.size());
    EXPECT_EQ(form_decode(encoded), all);
}

TEST(FormEncodeTest, AppendKeepsExistingContent) {
    std::string out = "body-mime=";
    form_encode_append(out, "x y");
    form_encode_append(out, "\n");
    EXPECT_EQ(out, "body-mime=x+y%0A");
}

// --- payload prefix ---------------------------------------------------------------

TEST(PayloadPrefixTest, FieldOrderAndValuesWithKey) {
    auto prefix = payload_prefix(sample_meta(), "secret", now);
    ASSERT_TRUE(prefix.ends_with("&body-mime=")) << prefix;
    auto fields = parse_form(prefix);
    EXPECT_EQ(names_of(fields), (std::vector<std::string>{"recipient", "sender", "from", "subject", "message-headers",
                                                          "timestamp", "token", "signature", "body-mime"}));
    EXPECT_EQ(field(fields, "recipient"), "bob@example.com,carol+tag@example.com");
    EXPECT_EQ(field(fields, "sender"), "alice@example.org");
    EXPECT_EQ(field(fields, "from"), "Alice <alice@example.org>");
    EXPECT_EQ(field(fields, "subject"), "Caf\xc3\xa9 & cr\xc3\xa8me = 100%");
    EXPECT_EQ(field(fields, "timestamp"), "1795453394");
    EXPECT_EQ(field(fields, "body-mime"), "");
}

// haraka-webhook stored envelope addresses the Haraka way; every one is posted bare.
TEST(PayloadPrefixTest, HarakaStyleAddressesArePostedBare) {
    auto meta = sample_meta();
    meta.sender = "<alice@example.org>";
    meta.recipients = {"<old-rcpt@example.com>", "<second@example.net>"};
    auto fields = parse_form(payload_prefix(meta, "", now));
    EXPECT_EQ(field(fields, "recipient"), "old-rcpt@example.com,second@example.net");
    EXPECT_EQ(field(fields, "sender"), "alice@example.org");
}

TEST(PayloadPrefixTest, ExactEncodingOfTheFixedFields) {
    auto prefix = payload_prefix(sample_meta(), "", now);
    EXPECT_TRUE(prefix.starts_with(
        "recipient=bob%40example.com%2Ccarol%2Btag%40example.com"
        "&sender=alice%40example.org"
        "&from=Alice+%3Calice%40example.org%3E"
        "&subject=Caf%C3%A9+%26+cr%C3%A8me+%3D+100%25"
        "&message-headers=%5B%5B%22From%22%2C%22Alice+%3Calice%40example.org%3E%22%5D%2C"))
        << prefix;
    EXPECT_NE(prefix.find("&timestamp=1795453394&token="), std::string::npos) << prefix;
}

TEST(PayloadPrefixTest, SignatureVerifies) {
    auto fields = parse_form(payload_prefix(sample_meta(), "secret", now));
    auto token = field(fields, "token");
    EXPECT_EQ(token.size(), 50u);
    EXPECT_TRUE(is_lower_hex(token));
    EXPECT_EQ(field(fields, "signature"), sign("secret", field(fields, "timestamp"), token));
}

TEST(PayloadPrefixTest, NoSignatureWithoutKey) {
    auto prefix = payload_prefix(sample_meta(), "", now);
    EXPECT_EQ(prefix.find("signature"), std::string::npos) << prefix;
    auto fields = parse_form(prefix);
    EXPECT_EQ(names_of(fields), (std::vector<std::string>{"recipient", "sender", "from", "subject", "message-headers",
                                                          "timestamp", "token", "body-mime"}));
}

TEST(PayloadPrefixTest, TokenDiffersEachCall) {
    auto a = field(parse_form(payload_prefix(sample_meta(), "k", now)), "token");
    auto b = field(parse_form(payload_prefix(sample_meta(), "k", now)), "token");
    EXPECT_NE(a, b);
}

TEST(PayloadPrefixTest, MessageHeadersIsCompactJsonLikeJavaScript) {
    auto json = field(parse_form(payload_prefix(sample_meta(), "", now)), "message-headers");
    // JSON.stringify: no spaces, UTF-8 kept as is, quotes/tab/backslash escaped.
    EXPECT_EQ(json,
              "[[\"From\",\"Alice <alice@example.org>\"],"
              "[\"Subject\",\"Caf\xc3\xa9 & cr\xc3\xa8me = 100%\"],"
              "[\"X-Quote\",\"say \\\"hi\\\"\\t\\\\\"]]");
}

TEST(PayloadPrefixTest, InvalidUtf8HeaderBecomesReplacementCharacter) {
    auto meta = sample_meta();
    meta.headers = {{"Subject", "bad \xff byte"}};
    std::string prefix;
    ASSERT_NO_THROW(prefix = payload_prefix(meta, "", now));
    auto json = field(parse_form(prefix), "message-headers");
    EXPECT_EQ(json, "[[\"Subject\",\"bad \xef\xbf\xbd byte\"]]");
    EXPECT_TRUE(nlohmann::json::parse(json).is_array());
}

TEST(PayloadPrefixTest, EmptyEnvelopeAndHeaders) {
    spool::Meta meta;
    meta.sender = "<>";
    auto prefix = payload_prefix(meta, "", now);
    EXPECT_TRUE(prefix.starts_with("recipient=&sender=&from=&subject=&message-headers=%5B%5D&timestamp=")) << prefix;
}

TEST(Utf8ValidatorTest, AcceptsUtf8AndRefusesTheRest) {
    EXPECT_TRUE(is_valid_utf8(""));
    EXPECT_TRUE(is_valid_utf8("plain ASCII\r\n"));
    EXPECT_TRUE(is_valid_utf8("Gr\xc3\xbc\xc3\x9f\x65 \xe2\x82\xac \xf0\x9f\x93\xa7 \xf4\x8f\xbf\xbf"));
    for (const char* bad : {"caf\xe9",            // Latin-1
                            "\xc3",                // cut short
                            "\xc0\xaf",            // overlong '/'
                            "\xe0\x80\xaf",        // overlong
                            "\xed\xa0\x80",        // a surrogate
                            "\xf4\x90\x80\x80",    // above U+10FFFF
                            "\xff", "\x80"}) {
        EXPECT_FALSE(is_valid_utf8(bad)) << bad;
    }
}

TEST(Utf8ValidatorTest, CharactersSplitAcrossPieces) {
    const std::string text = "\xf0\x9f\x93\xa7 and \xe2\x82\xac";
    for (std::size_t cut = 0; cut <= text.size(); ++cut) {
        Utf8Validator v;
        v.feed(std::string_view(text).substr(0, cut));
        v.feed(std::string_view(text).substr(cut));
        EXPECT_TRUE(v.valid()) << cut;
    }
    Utf8Validator v;
    v.feed("\xe2\x82");
    EXPECT_FALSE(v.valid());  // unfinished
}

// The multipart body as a Rack / Python cgi parser sees it: one part per field, body-mime
// labelled binary, non-UTF-8 field values labelled binary too.
TEST(MultipartTest, PartsInOrderWithBinaryLabels) {
    auto meta = sample_meta();
    meta.subject = "caf\xe9";  // Latin-1
    const auto fields = payload_fields(meta, "secret", now);
    const std::string prefix = multipart_prefix(fields, "BOUNDARY");
    EXPECT_TRUE(prefix.starts_with("--BOUNDARY\r\nContent-Disposition: form-data; name=\"recipient\"\r\n\r\n"
                                   "bob@example.com,carol+tag@example.com\r\n--BOUNDARY\r\n"))
        << prefix;
    EXPECT_NE(prefix.find("name=\"subject\"\r\nContent-Type: text/plain; charset=binary\r\n\r\ncaf\xe9\r\n"),
              std::string::npos)
        << prefix;
    EXPECT_NE(prefix.find("name=\"from\"\r\n\r\nAlice <alice@example.org>\r\n"), std::string::npos) << prefix;
    EXPECT_TRUE(prefix.ends_with("--BOUNDARY\r\nContent-Disposition: form-data; name=\"body-mime\"\r\n"
                                 "Content-Type: text/plain; charset=binary\r\n\r\n"))
        << prefix;
    EXPECT_NE(prefix.find("name=\"signature\"\r\n\r\n" + field(fields, "signature") + "\r\n"), std::string::npos);
    EXPECT_EQ(multipart_suffix("BOUNDARY"), "\r\n--BOUNDARY--\r\n");
    EXPECT_EQ(multipart_content_type("BOUNDARY"), "multipart/form-data; boundary=BOUNDARY");
    const std::string boundary = make_boundary();
    EXPECT_EQ(boundary.size(), 57u);
    EXPECT_NE(boundary, make_boundary());
}

TEST(PayloadPrefixTest, BareSenderIsKeptAsIs) {
    auto meta = sample_meta();
    meta.sender = "alice@example.org";
    EXPECT_EQ(field(parse_form(payload_prefix(meta, "", now)), "sender"), "alice@example.org");
}

}  // namespace
}  // namespace mxhook::webhook
