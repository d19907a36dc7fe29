#include "mxhook/mail/headers.hpp"

#include <algorithm>

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

// Position just past the first empty line (LF or CRLF) whose '\n' is at or after
// `from`, or npos. Checking the line that ends at each new '\n' means an empty line
// split across two feed() calls is found without rescanning old input.
std::size_t find_empty_line(std::string_view text, std::size_t from) {
    for (auto i = text.find('\n', from); i != std::string_view::npos; i = text.find('\n', i + 1)) {
        const bool empty = i == 0 || text[i - 1] == '\n' ||
                           (text[i - 1] == '\r' && (i == 1 || text[i - 2] == '\n'));
        if (empty) return i + 1;
    }
    return std::string_view::npos;
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

void HeaderCollector::feed(std::string_view bytes) {
    if (done_) return;
    const std::size_t old_size = section_.size();
    const std::size_t room = limit_ > old_size ? limit_ - old_size : 0;
    // One byte past the limit is enough to learn that the section does not end in time.
    section_.append(bytes.substr(0, std::min(bytes.size(), room + 1)));

    const std::size_t end = find_empty_line(section_, old_size);
    if (end != std::string_view::npos && end <= limit_) {
        section_.resize(end);
        done_ = true;
    } else if (section_.size() > limit_) {
        // Keep whole lines only: a header cut in the middle would be recorded with a
        // wrong value, while a missing one is merely missing.
        section_.resize(limit_);
        const auto last_nl = section_.rfind('\n');
        section_.resize(last_nl == std::string::npos ? 0 : last_nl + 1);
        truncated_ = true;
        done_ = true;
    }
}

}  // namespace mxhook::mail
