#include "mxhook/mime/text.hpp"

#include <gtest/gtest.h>

#include <string>

using namespace mxhook::mime;

namespace {

std::string decode_in_pieces(std::string_view bytes, std::string_view charset, std::size_t piece) {
    TextDecoder decoder(charset);
    std::string out;
    for (std::size_t i = 0; i < bytes.size(); i += piece) decoder.feed(bytes.substr(i, piece), out);
    decoder.finish(out);
    return out;
}

}  // namespace

TEST(TextDecoder, ConvertsADeclaredCharset) {
    EXPECT_EQ(to_utf8("caf\xe9", "iso-8859-1"), "caf\xc3\xa9");
    EXPECT_EQ(to_utf8("caf\xe9", "ISO-8859-1"), "caf\xc3\xa9");
    EXPECT_EQ(to_utf8("\x80", "windows-1252"), "\xe2\x82\xac");
    // An alias only mail uses, resolved as GMime does (Korean "han").
    EXPECT_EQ(to_utf8("\xc7\xd1", "ks_c_5601-1987"), "\xed\x95\x9c");
    // A stateful charset: ISO-2022-JP's escape sequences ("ko" "n").
    EXPECT_EQ(to_utf8("\x1b$B$3$s\x1b(B", "iso-2022-jp"), "\xe3\x81\x93\xe3\x82\x93");
}

TEST(TextDecoder, UnlabelledEightBitKeepsUtf8AndReadsTheRestAsWindows1252) {
    // Valid UTF-8 stays; a stray byte is windows-1252 (0xE9 e-acute, 0x80 euro sign).
    EXPECT_EQ(to_utf8("caf\xc3\xa9 \xe9 \x80", ""), "caf\xc3\xa9 \xc3\xa9 \xe2\x82\xac");
    EXPECT_EQ(to_utf8("caf\xc3\xa9 \xe9", "us-ascii"), "caf\xc3\xa9 \xc3\xa9");
    EXPECT_EQ(to_utf8("caf\xc3\xa9 \xe9", "utf-8"), "caf\xc3\xa9 \xc3\xa9");
    // A charset nobody knows is treated the same way.
    EXPECT_EQ(to_utf8("caf\xe9", "x-unknown-8bit"), "caf\xc3\xa9");
    // The five bytes windows-1252 leaves unassigned become C1 controls, as WHATWG maps them.
    EXPECT_EQ(to_utf8("\x81", ""), "\xc2\x81");
}

TEST(TextDecoder, AnInvalidSequenceInADeclaredCharsetBecomesTheReplacementCharacter) {
    // 0x80 alone is not Shift_JIS.
    EXPECT_EQ(to_utf8("a\x80z", "shift_jis"), "a\xef\xbf\xbdz");
    // Cut short at the end.
    EXPECT_EQ(to_utf8("a\x82", "shift_jis"), "a\xef\xbf\xbd");
}

TEST(TextDecoder, PiecesMaySplitACharacterAnywhere) {
    const std::string utf8 = "\xe2\x82\xac\xf0\x9f\x98\x80 caf\xc3\xa9";
    for (std::size_t piece = 1; piece <= 4; ++piece) {
        EXPECT_EQ(decode_in_pieces(utf8, "", piece), utf8) << piece;
        EXPECT_EQ(decode_in_pieces("\x82\xa0\x82\xa2", "shift_jis", piece), "\xe3\x81\x82\xe3\x81\x84") << piece;
    }
    // An unfinished UTF-8 sequence at the very end is read as windows-1252.
    EXPECT_EQ(decode_in_pieces("a\xe2\x82", "", 1), "a\xc3\xa2\xe2\x80\x9a");
}

TEST(TextDecoder, ReplacingInvalidUtf8) {
    auto decoder = TextDecoder::replacing_invalid_utf8();
    std::string out;
    decoder->feed("ok \xe9 \xe2\x82", out);
    decoder->feed("\xac", out);
    decoder->feed(" \xf0", out);
    decoder->finish(out);
    EXPECT_EQ(out, "ok \xef\xbf\xbd \xe2\x82\xac \xef\xbf\xbd");
}

TEST(StripReply, CutsTheQuoteAfterAnAttributionLine) {
    const auto stripped = strip_reply("Sounds good.\r\n\r\nOn Mon, 1 Jan 2024 at 10:00, Bob <bob@example.com> wrote:\r\n> Lunch?\r\n");
    EXPECT_EQ(stripped.text, "Sounds good.");
    EXPECT_EQ(stripped.signature, "");
}

TEST(StripReply, AttributionWrappedOverTwoLines) {
    EXPECT_EQ(strip_reply("Yes.\nOn Mon, 1 Jan 2024 at 10:00, Bob Example\n<bob@example.com> wrote:\n> Lunch?\n").text, "Yes.");
}

TEST(StripReply, SplitsTheSignature) {
    const auto stripped = strip_reply("Thanks!\r\n-- \r\nAlice\r\nExample Corp\r\n\r\n> old text\r\n> more\r\n");
    EXPECT_EQ(stripped.text, "Thanks!");
    EXPECT_EQ(stripped.signature, "Alice\r\nExample Corp");
}

TEST(StripReply, OutlookAndOriginalMessageMarkers) {
    EXPECT_EQ(strip_reply("Fine.\r\n-----Original Message-----\r\nFrom: Bob\r\n").text, "Fine.");
    EXPECT_EQ(strip_reply("Fine.\r\n________________________________\r\nFrom: Bob\r\nSent: today\r\n").text, "Fine.");
}

TEST(StripReply, InterleavedQuotesAreKept) {
    // A '>' line followed by new text is an inline answer, not the trailing quote.
    const std::string text = "> Lunch?\nYes, at noon.\n> Where?\nThe usual place.";
    EXPECT_EQ(strip_reply(text).text, text);
}

TEST(StripReply, NothingToStrip) {
    EXPECT_EQ(strip_reply("Just text.\r\n\r\n").text, "Just text.");
    EXPECT_EQ(strip_reply("").text, "");
}

TEST(StripHtmlQuotes, RemovesBlockquotesWithTheirNesting) {
    EXPECT_EQ(strip_html_quotes("<p>Yes</p><BLOCKQUOTE type=cite><p>a</p><blockquote>b</blockquote>c</blockquote><p>end</p>"),
              "<p>Yes</p><p>end</p>");
    // Other tags that merely start with the same letters are kept.
    EXPECT_EQ(strip_html_quotes("<blockquotes>x</blockquotes>"), "<blockquotes>x</blockquotes>");
    // An unclosed quote runs to the end.
    EXPECT_EQ(strip_html_quotes("<p>Yes</p><blockquote><p>old"), "<p>Yes</p>");
    EXPECT_EQ(strip_html_quotes("<p>none</p>"), "<p>none</p>");
}
