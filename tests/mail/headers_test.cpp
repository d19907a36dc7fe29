#include "mxhook/mail/headers.hpp"

#include <gtest/gtest.h>

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

// --- HeaderCollector -------------------------------------------------------------

struct Collected {
    std::string section;
    bool done;
    bool truncated;
    bool operator==(const Collected&) const = default;
};

std::ostream& operator<<(std::ostream& os, const Collected& c) {
    return os << "{" << testing::PrintToString(c.section) << ", done=" << c.done << ", truncated=" << c.truncated
              << "}";
}

Collected collect(std::string_view message, std::size_t limit, std::size_t cut1, std::size_t cut2) {
    HeaderCollector collector(limit);
    collector.feed(message.substr(0, cut1));
    collector.feed(message.substr(cut1, cut2 - cut1));
    collector.feed(message.substr(cut2));
    return {collector.section(), collector.done(), collector.truncated()};
}

// Feeds the message in three pieces cut at every pair of positions (empty pieces
// included) and checks that the result never depends on where the cuts fall.
void expect_same_for_every_split(std::string_view message, std::size_t limit, const Collected& expected) {
    for (std::size_t i = 0; i <= message.size(); ++i)
        for (std::size_t j = i; j <= message.size(); ++j)
            ASSERT_EQ(collect(message, limit, i, j), expected) << "cuts at " << i << " and " << j;
}

TEST(HeaderCollectorTest, StopsAfterCrlfEmptyLine) {
    expect_same_for_every_split("A: 1\r\nB: 2\r\n\r\nbody\r\n\r\nmore\r\n", 1024,
                                {"A: 1\r\nB: 2\r\n\r\n", true, false});
}

TEST(HeaderCollectorTest, StopsAfterLfEmptyLine) {
    expect_same_for_every_split("A: 1\nB: 2\n\nbody\n", 1024, {"A: 1\nB: 2\n\n", true, false});
}

TEST(HeaderCollectorTest, MixedLineEnds) {
    expect_same_for_every_split("A: 1\n\r\nbody", 1024, {"A: 1\n\r\n", true, false});
    expect_same_for_every_split("A: 1\r\n\nbody", 1024, {"A: 1\r\n\n", true, false});
}

TEST(HeaderCollectorTest, MessageStartingWithEmptyLine) {
    expect_same_for_every_split("\r\nbody\r\n\r\n", 1024, {"\r\n", true, false});
    expect_same_for_every_split("\nbody\n\n", 1024, {"\n", true, false});
}

TEST(HeaderCollectorTest, CrWithoutLfIsNotAnEmptyLine) {
    expect_same_for_every_split("A: 1\r\n\rB: 2\r\n\r\nbody", 1024, {"A: 1\r\n\rB: 2\r\n\r\n", true, false});
}

TEST(HeaderCollectorTest, NotDoneWithoutEmptyLine) {
    expect_same_for_every_split("A: 1\r\nB: 2\r\n", 1024, {"A: 1\r\nB: 2\r\n", false, false});
}

TEST(HeaderCollectorTest, IgnoresInputAfterDone) {
    HeaderCollector c;
    c.feed("A: 1\r\n\r\n");
    ASSERT_TRUE(c.done());
    c.feed("B: 2\r\n\r\n");
    EXPECT_EQ(c.section(), "A: 1\r\n\r\n");
}

TEST(HeaderCollectorTest, SectionEndingExactlyAtLimitIsNotTruncated) {
    const std::string message = "A: 1\r\nB: 2\r\n\r\nbody";
    expect_same_for_every_split(message, 14, {"A: 1\r\nB: 2\r\n\r\n", true, false});
}

TEST(HeaderCollectorTest, TruncatesAtLastCompleteLineWithinLimit) {
    const std::string message = "A: 1\r\nB: 2\r\nC: 3\r\n\r\nbody";
    // The limit falls inside "C: 3": keep A and B only.
    expect_same_for_every_split(message, 15, {"A: 1\r\nB: 2\r\n", true, true});
    // The limit falls inside the empty line's CRLF: all header lines, but no end seen.
    expect_same_for_every_split(message, 19, {"A: 1\r\nB: 2\r\nC: 3\r\n", true, true});
}

TEST(HeaderCollectorTest, TruncatesToNothingWhenFirstLineIsTooLong) {
    expect_same_for_every_split("Subject: far too long\r\n\r\n", 10, {"", true, true});
}

TEST(HeaderCollectorTest, TruncatedSectionStillParses) {
    HeaderCollector c(30);
    c.feed("Subject: hi\r\nX-Long: " + std::string(100, 'x') + "\r\n\r\n");
    ASSERT_TRUE(c.truncated());
    auto h = parse_headers(c.section());
    ASSERT_EQ(h.size(), 1u);
    EXPECT_EQ(h[0], (Header{"Subject", "hi"}));
}

TEST(HeaderCollectorTest, HoldsNoMoreThanTheLimitOfAHugeFeed) {
    HeaderCollector c(1000);
    c.feed(std::string(10'000'000, 'x'));
    EXPECT_TRUE(c.done());
    EXPECT_TRUE(c.truncated());
    EXPECT_LE(c.section().capacity(), 100'000u);
}

}  // namespace
}  // namespace mxhook::mail
