#pragma once
// Text bodies for the parsed and JSON payloads: decoding a declared charset to UTF-8 in
// pieces, and cutting the quoted reply and the signature off a reply (Mailgun's
// stripped-text / stripped-signature / stripped-html, Postmark's StrippedTextReply).

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

namespace mxhook::mime {

// Converts bytes in `charset` to UTF-8, fed in pieces that may split a character
// anywhere; every output piece is whole characters.
//  - A charset iconv knows (aliases resolved as GMime does): converted; a sequence that
//    is invalid in it becomes U+FFFD.
//  - No charset, us-ascii, utf-8, or one iconv does not know: valid UTF-8 is kept and
//    every other byte is read as windows-1252, the usual truth of unlabelled 8-bit mail.
class TextDecoder {
public:
    explicit TextDecoder(std::string_view charset);
    // UTF-8 in, UTF-8 out: every byte that is not part of a valid sequence becomes U+FFFD
    // (raw bytes carried in a JSON string).
    static std::unique_ptr<TextDecoder> replacing_invalid_utf8();
    TextDecoder(const TextDecoder&) = delete;
    TextDecoder& operator=(const TextDecoder&) = delete;
    ~TextDecoder();

    // Appends the UTF-8 of `bytes` (minus an unfinished character, kept for later) to out.
    void feed(std::string_view bytes, std::string& out);
    // Appends what an unfinished character at the end stands for (U+FFFD or windows-1252).
    void finish(std::string& out);

private:
    void fallback(std::string_view bytes, std::string& out, bool last);
    struct Iconv;
    std::unique_ptr<Iconv> iconv_;
    std::string carry_;  // an unfinished character from the previous piece
    bool replace_invalid_ = false;  // fallback: U+FFFD instead of windows-1252
};

// The whole of `bytes` decoded at once.
std::string to_utf8(std::string_view bytes, std::string_view charset);

// Bodies longer than this are not stripped (the stripped fields are the body itself):
// stripping needs the text in memory.
inline constexpr std::size_t kMaxStrippedBytes = 1024 * 1024;

struct StrippedReply {
    std::string text;       // the new text of a reply
    std::string signature;  // what followed a "-- " line, without it
};
// The reply without its quote: the text is cut at the first line that introduces or
// starts a quote ("On ... wrote:", "-----Original Message-----", or a '>' line after which
// only quoted or blank lines follow), then split at a signature separator ("-- " or
// "--" alone on a line). Both are trimmed of trailing white space.
StrippedReply strip_reply(std::string_view text);

// The HTML without its quotes: every <blockquote ...>...</blockquote> element (nesting
// counted, case-insensitive) removed.
std::string strip_html_quotes(std::string_view html);

}  // namespace mxhook::mime
