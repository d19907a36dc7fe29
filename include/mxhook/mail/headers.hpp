#pragma once
// The header section of a stored message as ordered [name, value] pairs, the way
// haraka-webhook records them in meta.json: folded lines unfolded (continuation
// lines joined with one space, trimmed), values trimmed, lines without ':' skipped.

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mxhook::mail {

using Header = std::pair<std::string, std::string>;
using Headers = std::vector<Header>;

// Parses a header section (everything before the first empty line; the empty line
// itself may or may not be included). Accepts CRLF and bare LF line ends.
Headers parse_headers(std::string_view section);

// First value of the named header (case-insensitive), or "".
std::string header_value(const Headers& headers, std::string_view name);

// Number of headers with the given name (case-insensitive).
std::size_t count_headers(const Headers& headers, std::string_view name);

// Collects the header section of a message that arrives in pieces, keeping at most
// `limit` bytes. done() once the empty line that ends the header section was seen
// (or the limit was reached: then the section is cut at the last complete line).
class HeaderCollector {
public:
    explicit HeaderCollector(std::size_t limit = 1024 * 1024) : limit_(limit) {}
    void feed(std::string_view bytes);
    bool done() const { return done_; }
    bool truncated() const { return truncated_; }
    const std::string& section() const { return section_; }

private:
    std::size_t limit_;
    std::string section_;
    bool done_ = false;
    bool truncated_ = false;
};

}  // namespace mxhook::mail
