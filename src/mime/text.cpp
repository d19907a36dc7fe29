#include "mxhook/mime/text.hpp"

#include "gmime_init.hpp"

#include <boost/algorithm/string/case_conv.hpp>
#include <gmime/gmime.h>
#include <iconv.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <vector>

namespace mxhook::mime {

namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

std::string lower(std::string_view s) { return boost::algorithm::to_lower_copy(std::string(s)); }

void append_code_point(std::string& out, char32_t cp) {
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    }
}

// windows-1252 as the WHATWG Encoding Standard defines it: 0x80-0x9F are the table below
// (the five bytes it leaves unassigned map to the C1 controls), the rest is Latin-1.
void append_windows_1252(std::string& out, unsigned char c) {
    static constexpr std::array<char16_t, 32> k80 = {
        0x20AC, 0x0081, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
        0x2039, 0x0152, 0x008D, 0x017D, 0x008F, 0x0090, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022,
        0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x009D, 0x017E, 0x0178};
    append_code_point(out, c >= 0x80 && c <= 0x9F ? k80[c - 0x80] : c);
}

// The length of the UTF-8 sequence at s[i] (RFC 3629: no overlongs, surrogates or code
// points above U+10FFFF): n > 0 when valid, 0 when invalid, -1 when a valid start is cut
// short by the end of s.
int utf8_length_at(std::string_view s, std::size_t i) {
    const auto c = static_cast<unsigned char>(s[i]);
    int n = 0;
    unsigned char lower_bound = 0x80, upper_bound = 0xBF;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
    } else if (c == 0xE0) {
        n = 3, lower_bound = 0xA0;
    } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
        n = 3;
    } else if (c == 0xED) {
        n = 3, upper_bound = 0x9F;
    } else if (c == 0xF0) {
        n = 4, lower_bound = 0x90;
    } else if (c >= 0xF1 && c <= 0xF3) {
        n = 4;
    } else if (c == 0xF4) {
        n = 4, upper_bound = 0x8F;
    } else {
        return 0;
    }
    for (int k = 1; k < n; ++k) {
        if (i + k >= s.size()) return -1;
        const auto next = static_cast<unsigned char>(s[i + k]);
        if (next < lower_bound || next > upper_bound) return 0;
        lower_bound = 0x80, upper_bound = 0xBF;
    }
    return n;
}

}  // namespace

struct TextDecoder::Iconv {
    explicit Iconv(iconv_t c) : cd(c) {}
    Iconv(const Iconv&) = delete;
    Iconv& operator=(const Iconv&) = delete;
    ~Iconv() { iconv_close(cd); }
    iconv_t cd;
};

TextDecoder::TextDecoder(std::string_view charset) {
    std::string name = lower(charset);
    name.erase(std::remove_if(name.begin(), name.end(), [](char c) { return c == ' ' || c == '\t' || c == '"'; }),
               name.end());
    if (name.empty()) return;
    init_gmime();
    // GMime's table resolves the aliases mail uses (ks_c_5601-1987, x-sjis, ...).
    const std::string canonical = lower(g_mime_charset_iconv_name(name.c_str()));
    if (canonical == "utf-8" || canonical == "utf8" || canonical == "us-ascii" || canonical == "ascii" ||
        canonical == "ansi_x3.4-1968") {
        return;
    }
    const iconv_t cd = iconv_open("UTF-8", canonical.c_str());
    if (cd == reinterpret_cast<iconv_t>(-1)) return;  // unknown: the fallback
    iconv_ = std::make_unique<Iconv>(cd);
}

TextDecoder::~TextDecoder() = default;

std::unique_ptr<TextDecoder> TextDecoder::replacing_invalid_utf8() {
    auto decoder = std::make_unique<TextDecoder>("");
    decoder->replace_invalid_ = true;
    return decoder;
}

void TextDecoder::fallback(std::string_view bytes, std::string& out, bool last) {
    std::string in = std::move(carry_);
    carry_.clear();
    in += bytes;
    std::size_t i = 0;
    out.reserve(out.size() + in.size());
    while (i < in.size()) {
        // Runs of ASCII (most of any text) are copied whole.
        std::size_t ascii = i;
        while (ascii < in.size() && static_cast<unsigned char>(in[ascii]) < 0x80) ++ascii;
        if (ascii > i) {
            out.append(in, i, ascii - i);
            i = ascii;
            continue;
        }
        const int n = utf8_length_at(in, i);
        if (n > 0) {
            out.append(in, i, static_cast<std::size_t>(n));
            i += static_cast<std::size_t>(n);
        } else if (n < 0 && !last) {
            carry_.assign(in, i);
            return;
        } else if (replace_invalid_) {
            out += kReplacement;
            ++i;
        } else {
            append_windows_1252(out, static_cast<unsigned char>(in[i]));
            ++i;
        }
    }
}

void TextDecoder::feed(std::string_view bytes, std::string& out) {
    if (!iconv_) {
        fallback(bytes, out, false);
        return;
    }
    std::string in = std::move(carry_);
    carry_.clear();
    in += bytes;
    char* in_ptr = in.data();
    std::size_t in_left = in.size();
    std::array<char, 16 * 1024> buffer{};
    while (in_left > 0) {
        char* out_ptr = buffer.data();
        std::size_t out_left = buffer.size();
        const std::size_t done = iconv(iconv_->cd, &in_ptr, &in_left, &out_ptr, &out_left);
        out.append(buffer.data(), static_cast<std::size_t>(out_ptr - buffer.data()));
        if (done != static_cast<std::size_t>(-1)) break;
        if (errno == E2BIG) continue;
        if (errno == EINVAL) break;  // an unfinished character at the end: kept for later
        // EILSEQ (or anything else): one byte is skipped and stands as U+FFFD.
        out += kReplacement;
        ++in_ptr;
        --in_left;
    }
    carry_.assign(in_ptr, in_left);
}

void TextDecoder::finish(std::string& out) {
    if (!iconv_) {
        fallback({}, out, true);
        return;
    }
    if (!carry_.empty()) out += kReplacement;
    carry_.clear();
    // Back to the initial shift state (stateful charsets such as ISO-2022-JP).
    std::array<char, 64> buffer{};
    char* out_ptr = buffer.data();
    std::size_t out_left = buffer.size();
    iconv(iconv_->cd, nullptr, nullptr, &out_ptr, &out_left);
    out.append(buffer.data(), static_cast<std::size_t>(out_ptr - buffer.data()));
}

std::string to_utf8(std::string_view bytes, std::string_view charset) {
    TextDecoder decoder(charset);
    std::string out;
    decoder.feed(bytes, out);
    decoder.finish(out);
    return out;
}

namespace {

struct Line {
    std::size_t begin;     // offset of the first byte
    std::string_view text;  // without its line ending
};

std::vector<Line> split_lines(std::string_view text) {
    std::vector<Line> lines;
    std::size_t begin = 0;
    while (begin < text.size()) {
        std::size_t end = text.find('\n', begin);
        const std::size_t next = end == std::string_view::npos ? text.size() : end + 1;
        if (end == std::string_view::npos) end = text.size();
        std::string_view line = text.substr(begin, end - begin);
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        lines.push_back({begin, line});
        begin = next;
    }
    return lines;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

std::string_view trim_end(std::string_view s) {
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n')) {
        s.remove_suffix(1);
    }
    return s;
}

bool starts_with_nocase(std::string_view s, std::string_view prefix) {
    return s.size() >= prefix.size() && lower(s.substr(0, prefix.size())) == prefix;
}

bool ends_with_wrote(std::string_view line) {
    const std::string_view t = trim(line);
    return t.size() >= 6 && lower(t.substr(t.size() - 6)) == "wrote:";
}

// Whether lines[i] begins the quoted part of a reply.
bool starts_quote(const std::vector<Line>& lines, std::size_t i) {
    const std::string_view line = trim(lines[i].text);
    // "On Mon, 1 Jan 2024 at 10:00, Bob <bob@example.com> wrote:", possibly wrapped once.
    if (starts_with_nocase(line, "on ") &&
        (ends_with_wrote(line) || (i + 1 < lines.size() && ends_with_wrote(lines[i + 1].text)))) {
        return true;
    }
    if (starts_with_nocase(line, "-----original message-----")) return true;
    // Outlook: a rule of underscores, then "From:".
    if (line.size() >= 10 && line.find_first_not_of('_') == std::string_view::npos && i + 1 < lines.size() &&
        starts_with_nocase(trim(lines[i + 1].text), "from:")) {
        return true;
    }
    if (!line.empty() && line.front() == '>') {
        return std::all_of(lines.begin() + static_cast<std::ptrdiff_t>(i), lines.end(), [](const Line& l) {
            const std::string_view t = trim(l.text);
            return t.empty() || t.front() == '>';
        });
    }
    return false;
}

}  // namespace

StrippedReply strip_reply(std::string_view text) {
    const std::vector<Line> lines = split_lines(text);
    std::size_t end = text.size();
    std::size_t last = lines.size();
    for (std::size_t i = 0; i < lines.size(); ++i) {
        if (starts_quote(lines, i)) {
            end = lines[i].begin;
            last = i;
            break;
        }
    }
    StrippedReply out;
    for (std::size_t i = 0; i < last; ++i) {
        if (lines[i].text == "-- " || lines[i].text == "--") {
            const std::size_t after = i + 1 < lines.size() ? lines[i + 1].begin : text.size();
            out.signature = std::string(trim_end(text.substr(after, std::max(end, after) - after)));
            end = lines[i].begin;
            break;
        }
    }
    out.text = std::string(trim_end(text.substr(0, end)));
    return out;
}

std::string strip_html_quotes(std::string_view html) {
    const std::string folded = lower(html);
    const auto opens_at = [&folded](std::size_t pos) {
        // "<blockquote" followed by the end of the tag name.
        if (folded.compare(pos, 11, "<blockquote") != 0) return false;
        const char next = pos + 11 < folded.size() ? folded[pos + 11] : '>';
        return next == '>' || next == ' ' || next == '\t' || next == '\r' || next == '\n' || next == '/';
    };
    std::string out;
    std::size_t pos = 0;
    while (pos < html.size()) {
        const std::size_t open = folded.find("<blockquote", pos);
        if (open == std::string::npos) break;
        if (!opens_at(open)) {
            out.append(html, pos, open + 1 - pos);
            pos = open + 1;
            continue;
        }
        out.append(html, pos, open - pos);
        // Skip to the matching close tag, counting nested blockquotes.
        int depth = 0;
        std::size_t scan = open;
        pos = html.size();  // an unclosed quote runs to the end
        while (scan < folded.size()) {
            const std::size_t next_open = folded.find("<blockquote", scan);
            const std::size_t next_close = folded.find("</blockquote", scan);
            if (next_close == std::string::npos) break;
            if (next_open != std::string::npos && next_open < next_close) {
                if (opens_at(next_open)) ++depth;
                scan = next_open + 1;
                continue;
            }
            --depth;
            const std::size_t gt = folded.find('>', next_close);
            scan = gt == std::string::npos ? folded.size() : gt + 1;
            if (depth == 0) {
                pos = scan;
                break;
            }
        }
    }
    if (pos < html.size()) out.append(html, pos, std::string_view::npos);
    return out;
}

}  // namespace mxhook::mime
