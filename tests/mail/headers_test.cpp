#include "mxhook/mail/headers.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>

namespace mxhook::mail {
namespace {

using namespace std::string_literals;

TEST(HeaderParseTest, OrderedPairsWithTrimmedValues) {
    auto h = parse_headers("From: Alice <a@example.com>\r\nTo:  b@example.com \t\r\nSubject:\tHi\r\n\r\nbody: no\r\n");
    ASSERT_EQ(h.size(), 3u);
    EXPECT_EQ(h[0], (Header{"From", "Alice <a@example.com>"}));
    EXPECT_EQ(h[1], (Header{"To", "b@example.com"}));
    EXPECT_EQ(h[2], (Header{"Subject", "Hi"}));
}

TEST(HeaderParseTest, StopsAtFirstEmptyLineWithBareLf) {
    auto h = parse_headers("A: 1\nB: 2\n\nC: 3\n");
    ASSERT_EQ(h.size(), 2u);
    EXPECT_EQ(h[1], (Header{"B", "2"}));
}

TEST(HeaderParseTest, SectionWithoutTrailingNewline) {
    auto h = parse_headers("A: 1\r\nB: 2");
    ASSERT_EQ(h.size(), 2u);
    EXPECT_EQ(h[1], (Header{"B", "2"}));
}

TEST(HeaderParseTest, UnfoldsContinuationLinesWithOneSpace) {
    auto h = parse_headers("Subject: a long\r\n   subject\r\n\tline  \r\nX: y\r\n");
    ASSERT_EQ(h.size(), 2u);
    EXPECT_EQ(h[0].second, "a long subject line");
    EXPECT_EQ(h[1], (Header{"X", "y"}));
}

TEST(HeaderParseTest, ContinuationOfEmptyValue) {
    auto h = parse_headers("To:\r\n b@example.com\r\n");
    ASSERT_EQ(h.size(), 1u);
    // Like haraka-webhook: the (empty) value, a space, then the trimmed continuation.
    EXPECT_EQ(h[0].second, " b@example.com");
}

TEST(HeaderParseTest, ContinuationBeforeAnyHeaderIsSkipped) {
    auto h = parse_headers(" orphan\r\nA: 1\r\n");
    ASSERT_EQ(h.size(), 1u);
    EXPECT_EQ(h[0], (Header{"A", "1"}));
}

TEST(HeaderParseTest, LinesWithoutColonAreSkipped) {
    auto h = parse_headers("From nobody Mon Jan 1\r\nA: 1\r\ngarbage\r\nB: 2\r\n");
    ASSERT_EQ(h.size(), 2u);
    EXPECT_EQ(h[0].first, "A");
    EXPECT_EQ(h[1].first, "B");
}

TEST(HeaderParseTest, SplitsAtFirstColonAndKeepsNameAsIs) {
    auto h = parse_headers("X-Time : 12:30:00\r\nx-lower:v\r\n:no-name\r\n");
    ASSERT_EQ(h.size(), 3u);
    EXPECT_EQ(h[0], (Header{"X-Time ", "12:30:00"}));
    EXPECT_EQ(h[1], (Header{"x-lower", "v"}));
    EXPECT_EQ(h[2], (Header{"", "no-name"}));
}

TEST(HeaderParseTest, KeepsEightBitAndNulBytes) {
    auto h = parse_headers("Subject: caf\xc3\xa9 \xff\x00x\r\n"s);
    ASSERT_EQ(h.size(), 1u);
    EXPECT_EQ(h[0].second, "caf\xc3\xa9 \xff\x00x"s);
}

TEST(HeaderParseTest, EmptyAndHeaderlessInput) {
    EXPECT_TRUE(parse_headers("").empty());
    EXPECT_TRUE(parse_headers("\r\nA: 1\r\n").empty());
    EXPECT_TRUE(parse_headers("\nA: 1\n").empty());
}

TEST(HeaderParseTest, BareCrIsNotALineEnd) {
    auto h = parse_headers("A: 1\rB: 2\r\n");
    ASSERT_EQ(h.size(), 1u);
    EXPECT_EQ(h[0].second, "1\rB: 2");
}

TEST(HeaderLookupTest, ValueAndCountAreCaseInsensitive) {
    Headers h{{"Received", "one"}, {"Subject", "s"}, {"RECEIVED", "two"}, {"received", "three"}};
    EXPECT_EQ(header_value(h, "subject"), "s");
    EXPECT_EQ(header_value(h, "received"), "one");
    EXPECT_EQ(header_value(h, "missing"), "");
    EXPECT_EQ(count_headers(h, "Received"), 3u);
    EXPECT_EQ(count_headers(h, "SUBJECT"), 1u);
    EXPECT_EQ(count_headers(h, "Subjec"), 0u);
    EXPECT_EQ(count_headers(h, "missing"), 0u);
}

TEST(HeaderLookupTest, NonAsciiBytesAreNotFolded) {
    Headers h{{"X-\xc3\x89t\xc3\xa9", "v"}};
    EXPECT_EQ(header_value(h, "x-\xc3\x89t\xc3\xa9"), "v");
    EXPECT_EQ(header_value(h, "x-\xc3\xa9t\xc3\xa9"), "");
}

// --- HeaderScanner -------------------------------------------------------------

struct Scanned {
    std::uint64_t bytes;
    std::uint64_t lines;
    std::uint64_t received;
    bool ended;
    bool operator==(const Scanned&) const = default;
};

std::ostream& operator<<(std::ostream& os, const Scanned& s) {
    return os << "{bytes=" << s.bytes << ", lines=" << s.lines << ", received=" << s.received
              << ", ended=" << s.ended << "}";
}

Scanned result_of(const HeaderScanner& scanner) {
    return {scanner.bytes(), scanner.lines(), scanner.received(), scanner.ended()};
}

Scanned scan(std::string_view message, std::size_t cut1, std::size_t cut2) {
    HeaderScanner scanner;
    scanner.feed(message.substr(0, cut1));
    scanner.feed(message.substr(cut1, cut2 - cut1));
    scanner.feed(message.substr(cut2));
    return result_of(scanner);
}

// Feeds the message in three pieces cut at every pair of positions (empty pieces
// included), and a byte at a time, and checks that the result never depends on the cuts.
void expect_same_for_every_split(std::string_view message, const Scanned& expected) {
    for (std::size_t i = 0; i <= message.size(); ++i)
        for (std::size_t j = i; j <= message.size(); ++j)
            ASSERT_EQ(scan(message, i, j), expected) << "cuts at " << i << " and " << j;
    HeaderScanner bytewise;
    for (const char c : message) bytewise.feed(std::string_view(&c, 1));
    ASSERT_EQ(result_of(bytewise), expected) << "a byte at a time";
}

// What the scanner must say, computed the plain way: the section up to and including its
// first empty line, its LFs, and parse_headers' count of Received headers.
Scanned reference(std::string_view message) {
    std::size_t end = message.size();
    bool ended = false;
    std::size_t line_start = 0;
    for (std::size_t i = 0; i < message.size(); ++i) {
        if (message[i] != '\n') continue;
        const auto line = message.substr(line_start, i - line_start);
        if (line.empty() || line == "\r") {
            end = i + 1;
            ended = true;
            break;
        }
        line_start = i + 1;
    }
    const auto section = message.substr(0, end);
    const auto lfs = static_cast<std::uint64_t>(std::count(section.begin(), section.end(), '\n'));
    return {section.size(), lfs - (ended ? 1 : 0), count_headers(parse_headers(section), "Received"), ended};
}

TEST(HeaderScannerTest, EndsAfterCrlfEmptyLine) {
    expect_same_for_every_split("A: 1\r\nB: 2\r\n\r\nbody\r\n\r\nmore\r\n", {14, 2, 0, true});
}

TEST(HeaderScannerTest, EndsAfterLfEmptyLine) {
    expect_same_for_every_split("A: 1\nB: 2\n\nbody\n", {11, 2, 0, true});
}

TEST(HeaderScannerTest, MixedLineEnds) {
    expect_same_for_every_split("A: 1\n\r\nbody", {7, 1, 0, true});
    expect_same_for_every_split("A: 1\r\n\nbody", {7, 1, 0, true});
}

TEST(HeaderScannerTest, MessageStartingWithEmptyLine) {
    expect_same_for_every_split("\r\nbody\r\n\r\n", {2, 0, 0, true});
    expect_same_for_every_split("\nbody\n\n", {1, 0, 0, true});
}

TEST(HeaderScannerTest, CrWithoutLfIsNotAnEmptyLine) {
    expect_same_for_every_split("A: 1\r\n\rB: 2\r\n\r\nbody", {15, 2, 0, true});
    expect_same_for_every_split("A: 1\r\n\r\r\nB: 2\r\n\r\nbody", {17, 3, 0, true});
}

TEST(HeaderScannerTest, NotEndedWithoutEmptyLine) {
    expect_same_for_every_split("A: 1\r\nB: 2\r\n", {12, 2, 0, false});
    expect_same_for_every_split("A: 1\r\nB: 2", {10, 1, 0, false});  // a last line without LF is not counted
    expect_same_for_every_split("", {0, 0, 0, false});
}

TEST(HeaderScannerTest, IgnoresInputAfterTheEnd) {
    HeaderScanner s;
    s.feed("Received: a\r\n\r\n");
    ASSERT_TRUE(s.ended());
    s.feed("Received: b\r\nX: 2\r\n\r\n");
    EXPECT_EQ(result_of(s), (Scanned{15, 1, 1, true}));
}

TEST(HeaderScannerTest, CountsReceivedHeadersAsTheParserNamesThem) {
    const std::string message =
        "Received: from a\r\n"
        "\tby b; date\r\n"            // a continuation, not a header
        "received:x\r\n"              // any case, no space needed
        "RECEIVED: y\r\n"
        "Received : z\r\n"            // name "Received " is another header
        "X-Received: w\r\n"
        " Received: folded\r\n"       // a continuation line
        "Received\r\n"                // no colon: skipped by the parser
        "Receive: v\r\n"
        "\rReceived: cr first\r\n"
        "Received:\r\n"               // empty value still counts
        "\r\n"
        "Received: in the body\r\n";
    expect_same_for_every_split(message, reference(message));
    EXPECT_EQ(reference(message).received, 4u);
}

TEST(HeaderScannerTest, AgreesWithTheParserOnRandomMessages) {
    // Built from the pieces that matter, so that empty lines, CRs and Received headers
    // turn up often.
    static const char* const pieces[] = {"\r\n", "\n", "\r", "Received:", "received: x", "Rec", "eived:", " ",
                                          "\t", "X: 1", ":", "a", "\x00", "\xff"};
    std::mt19937 rng(20240601);
    for (int round = 0; round < 3000; ++round) {
        std::string message;
        const int n = static_cast<int>(rng() % 12);
        for (int i = 0; i < n; ++i) {
            const char* piece = pieces[rng() % std::size(pieces)];
            message += piece[0] == '\0' ? std::string(1, '\0') : std::string(piece);
        }
        const Scanned expected = reference(message);
        HeaderScanner whole;
        whole.feed(message);
        ASSERT_EQ(result_of(whole), expected) << testing::PrintToString(message);
        const std::size_t cut1 = message.empty() ? 0 : rng() % (message.size() + 1);
        const std::size_t cut2 = cut1 + (message.size() == cut1 ? 0 : rng() % (message.size() - cut1 + 1));
        ASSERT_EQ(scan(message, cut1, cut2), expected) << testing::PrintToString(message);
    }
}

TEST(HeaderScannerTest, KeepsNothingOfWhatItSees) {
    // O(1) state: a few counters, whatever arrives.
    static_assert(sizeof(HeaderScanner) <= 48);
    HeaderScanner s;
    const std::string line = "X-Flood: " + std::string(990, 'x') + "\r\n";
    for (int i = 0; i < 2000; ++i) s.feed(line);
    EXPECT_EQ(result_of(s), (Scanned{2000 * line.size(), 2000, 0, false}));
}

// --- read_headers ----------------------------------------------------------------

TEST(ReadHeadersTest, ReadsTheSectionOfAStoredMessage) {
    std::istringstream in("Received: from x\r\n\tby y\r\nSubject: hi\r\n\r\nX-Body: not a header\r\n");
    const auto h = read_headers(in, 1 << 20);
    ASSERT_EQ(h.size(), 2u);
    EXPECT_EQ(h[0], (Header{"Received", "from x by y"}));
    EXPECT_EQ(h[1], (Header{"Subject", "hi"}));
}

TEST(ReadHeadersTest, SameAsParsingTheWholeMessage) {
    std::string big = "Received: from x\r\n";
    for (int i = 0; i < 3000; ++i) big += "X-Line-" + std::to_string(i) + ": " + std::string(i % 50, 'v') + "\r\n";
    big += "\r\n" + std::string(100000, 'b');
    std::istringstream in(big);
    EXPECT_EQ(read_headers(in, big.size()), parse_headers(big));
}

TEST(ReadHeadersTest, StopsSoonAfterTheSection) {
    std::istringstream in("A: 1\r\n\r\n" + std::string(1 << 20, 'b'));
    EXPECT_EQ(read_headers(in, 1 << 22).size(), 1u);
    EXPECT_LE(static_cast<std::size_t>(in.tellg()), 64u * 1024) << "read far into the body";
}

TEST(ReadHeadersTest, ABoundCutKeepsCompleteLinesOnly) {
    std::istringstream in("Subject: hi\r\nX-Long: " + std::string(100, 'x') + "\r\n\r\n");
    const auto h = read_headers(in, 30);
    ASSERT_EQ(h.size(), 1u);
    EXPECT_EQ(h[0], (Header{"Subject", "hi"}));
    EXPECT_LE(static_cast<std::size_t>(in.tellg()), 30u);
}

TEST(ReadHeadersTest, AMessageThatIsAllHeaderSection) {
    // Exactly at the bound and ending there: not cut.
    const std::string message = "A: 1\r\nB: 2";
    std::istringstream exact(message);
    EXPECT_EQ(read_headers(exact, message.size()).size(), 2u);
    std::istringstream roomy(message);
    EXPECT_EQ(read_headers(roomy, 1000).size(), 2u);
    std::istringstream empty("");
    EXPECT_TRUE(read_headers(empty, 1000).empty());
}

}  // namespace
}  // namespace mxhook::mail
