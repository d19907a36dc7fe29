#include "mxhook/smtp/data_decoder.hpp"

#include <gtest/gtest.h>

#include <string>

namespace mxhook::smtp {
namespace {

struct Decoded {
    std::string body;
    bool finished = false;
    std::size_t consumed = 0;
    bool bare_lf = false;
};

// Feeds the input in pieces of `piece` bytes, as reads from a socket would deliver it.
Decoded decode(const std::string& input, std::size_t piece = 0) {
    DataDecoder decoder;
    Decoded d;
    if (piece == 0) piece = input.size() ? input.size() : 1;
    for (std::size_t pos = 0; pos < input.size() && !d.finished; pos += piece) {
        const std::string_view chunk = std::string_view(input).substr(pos, piece);
        const auto r = decoder.feed(chunk, d.body);
        d.consumed += r.consumed;
        d.finished = r.finished;
        if (r.finished) break;
        EXPECT_EQ(r.consumed, chunk.size());
    }
    d.bare_lf = decoder.saw_bare_lf();
    return d;
}

TEST(DataDecoder, EndsOnCrLfDotCrLfAndLeavesTheRest) {
    const std::string input = "Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n";
    for (std::size_t piece = 1; piece <= input.size(); ++piece) {
        const auto d = decode(input, piece);
        ASSERT_TRUE(d.finished) << "piece " << piece;
        EXPECT_EQ(d.body, "Subject: x\r\n\r\nhello\r\n") << "piece " << piece;
        EXPECT_EQ(input.substr(d.consumed), "QUIT\r\n") << "piece " << piece;
        EXPECT_FALSE(d.bare_lf);
    }
}

TEST(DataDecoder, EmptyMessageEndsAtOnce) {
    const auto d = decode(".\r\n");
    EXPECT_TRUE(d.finished);
    EXPECT_EQ(d.body, "");
}

TEST(DataDecoder, UndoesDotStuffingAcrossReadBoundaries) {
    const std::string input = "..leading dot\r\n...two\r\n.\r\n";
    for (std::size_t piece = 1; piece <= input.size(); ++piece) {
        const auto d = decode(input, piece);
        ASSERT_TRUE(d.finished);
        EXPECT_EQ(d.body, ".leading dot\r\n..two\r\n") << "piece " << piece;
    }
}

TEST(DataDecoder, KeepsEightBitBytesNulAndLongLines) {
    std::string body = "Subject: caf\xe9\r\n\r\n";
    body += std::string(5000, 'x') + "\r\n";
    body += std::string("\x00\x80\xff\xfe", 4) + "\r\n";
    const auto d = decode(body + ".\r\n", 7);
    ASSERT_TRUE(d.finished);
    EXPECT_EQ(d.body, body);
}

TEST(DataDecoder, BareLfIsNormalisedToCrLfAndRemembered) {
    const auto d = decode("a\nb\r\n.\r\n");
    ASSERT_TRUE(d.finished);
    EXPECT_EQ(d.body, "a\r\nb\r\n");
    EXPECT_TRUE(d.bare_lf);
}

TEST(DataDecoder, BareCrIsDataNotALineEnd) {
    const auto d = decode("a\rb\r\n.\r\n");
    ASSERT_TRUE(d.finished);
    EXPECT_EQ(d.body, "a\rb\r\n");
    EXPECT_FALSE(d.bare_lf);
}

// Published SMTP smuggling end-of-data variants: none of them may end the message.
TEST(DataDecoder, SmugglingVariantsNeverEndData) {
    const char* variants[] = {
        "\n.\n", "\n.\r\n", "\r\n.\n", "\r.\r", "\r\n.\r", "\r\r\n.\r\r\n", "\n.\r\r\n",
    };
    for (const char* variant : variants) {
        const std::string input = std::string("line one") + variant + "MAIL FROM:<evil@x>\r\nrest\r\n.\r\n";
        for (std::size_t piece : {std::size_t{1}, std::size_t{2}, std::size_t{3}, input.size()}) {
            const auto d = decode(input, piece);
            ASSERT_TRUE(d.finished) << "variant " << testing::PrintToString(std::string(variant));
            EXPECT_EQ(d.consumed, input.size()) << "variant " << testing::PrintToString(std::string(variant));
            EXPECT_NE(d.body.find("MAIL FROM:<evil@x>"), std::string::npos);
        }
    }
}

TEST(DataDecoder, LoneDotAfterBareLfIsKept) {
    const auto d = decode("a\n.\nb\r\n.\r\n");
    ASSERT_TRUE(d.finished);
    EXPECT_EQ(d.body, "a\r\n.\r\nb\r\n");
}

TEST(DataDecoder, NeedsMoreInputWhenEndIsNotThere) {
    DataDecoder decoder;
    std::string out;
    auto r = decoder.feed("text\r\n.", out);
    EXPECT_FALSE(r.finished);
    EXPECT_EQ(r.consumed, 7u);
    r = decoder.feed("\r", out);
    EXPECT_FALSE(r.finished);
    r = decoder.feed("\nNEXT", out);
    EXPECT_TRUE(r.finished);
    EXPECT_EQ(r.consumed, 1u);
    EXPECT_EQ(out, "text\r\n");
}

}  // namespace
}  // namespace mxhook::smtp
