#include "mxhook/mail/headers.hpp"

#include <algorithm>
#include <array>
#include <istream>

namespace mxhook::mail {
namespace {

bool is_blank(char c) { return c == ' ' || c == '\t'; }

std::string_view trim(std::string_view text) {
    while (!text.empty() && is_blank(text.front())) text.remove_prefix(1);
    while (!text.empty() && is_blank(text.back())) text.remove_suffix(1);
    return text;
}

char ascii_lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

// ASCII-only on purpose: header names are ASCII, and a locale-aware comparison would
// make 8-bit junk match differently from one machine to the next.
bool iequals(std::string_view a, std::string_view b) {
    return a.size() == b.size() &&
           std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) { return ascii_lower(x) == ascii_lower(y); });
}

}  // namespace

Headers parse_headers(std::string_view section) {
    Headers headers;
    while (!section.empty()) {
        auto nl = section.find('\n');
        auto line = section.substr(0, nl);
        section.remove_prefix(nl == std::string_view::npos ? section.size() : nl + 1);
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        if (line.empty()) break;

        if (is_blank(line.front())) {
            // A continuation before any header has nothing to continue.
            if (!headers.empty()) {
                headers.back().second += ' ';
                headers.back().second += trim(line);
            }
            continue;
        }
        auto colon = line.find(':');
        if (colon == std::string_view::npos) continue;
        headers.emplace_back(std::string(line.substr(0, colon)), std::string(trim(line.substr(colon + 1))));
    }
    return headers;
}

std::string header_value(const Headers& headers, std::string_view name) {
    for (const auto& [key, value] : headers)
        if (iequals(key, name)) return value;
    return {};
}

std::size_t count_headers(const Headers& headers, std::string_view name) {
    return static_cast<std::size_t>(
        std::count_if(headers.begin(), headers.end(), [&](const Header& h) { return iequals(h.first, name); }));
}

Headers read_headers(std::istream& in, std::size_t max_bytes) {
    std::string section;
    HeaderScanner scanner;
    std::array<char, 16384> chunk;
    while (!scanner.ended()) {
        if (section.size() == max_bytes) {
            // Cut by the bound, unless the message ends right there.
            if (!std::istream::traits_type::eq_int_type(in.peek(), std::istream::traits_type::eof())) {
                const auto last_nl = section.rfind('\n');
                section.resize(last_nl == std::string::npos ? 0 : last_nl + 1);
            }
            break;
        }
        in.read(chunk.data(), static_cast<std::streamsize>(std::min(chunk.size(), max_bytes - section.size())));
        const auto got = static_cast<std::size_t>(in.gcount());
        if (got == 0) break;  // the whole message is header section
        const std::uint64_t before = scanner.bytes();
        scanner.feed(std::string_view(chunk.data(), got));
        // Nothing after the empty line that ends the section.
        section.append(chunk.data(), scanner.ended() ? static_cast<std::size_t>(scanner.bytes() - before) : got);
    }
    return parse_headers(section);
}

void HeaderScanner::feed(std::string_view input) {
    static constexpr std::string_view kReceived = "received:";
    std::size_t i = 0;
    while (i < input.size() && !ended_) {
        if (matched_ == kNoMatch && !line_start_ && !lone_cr_) {
            // Inside a line that can neither end the section nor be a Received: header:
            // only its LF matters.
            const auto nl = input.find('\n', i);
            const std::size_t skipped = (nl == std::string_view::npos ? input.size() : nl) - i;
            bytes_ += skipped;
            i += skipped;
            if (i == input.size()) break;
        }
        const char c = input[i++];
        ++bytes_;
        if (c == '\n') {
            if (line_start_ || lone_cr_) {
                ended_ = true;
                break;
            }
            ++lines_;
            line_start_ = true;
            matched_ = 0;
            continue;
        }
        lone_cr_ = line_start_ && c == '\r';
        line_start_ = false;
        if (matched_ != kNoMatch) {
            if (ascii_lower(c) != kReceived[static_cast<std::size_t>(matched_)]) {
                matched_ = kNoMatch;
            } else if (static_cast<std::size_t>(++matched_) == kReceived.size()) {
                ++received_;
                matched_ = kNoMatch;
            }
        }
    }
}

}  // namespace mxhook::mail
