#pragma once
// The header section of a stored message as ordered [name, value] pairs, the way
// haraka-webhook records them in meta.json: folded lines unfolded (continuation
// lines joined with one space, trimmed), values trimmed, lines without ':' skipped.

#include <cstddef>
#include <cstdint>
#include <iosfwd>
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

// Reads the header section of a stored message from `in` and parses it. Reads up to the
// first empty line and never more than `max_bytes`; a section cut by that bound keeps its
// complete lines only (a header cut in the middle would be recorded with a wrong value,
// while a missing one is merely missing). Blocking: for the worker pool.
Headers read_headers(std::istream& in, std::size_t max_bytes);

// First value of the named header (case-insensitive), or "".
std::string header_value(const Headers& headers, std::string_view name);

// Number of headers with the given name (case-insensitive).
std::size_t count_headers(const Headers& headers, std::string_view name);

// Watches the header section of a message go by without keeping any of it, so that its
// bounds can be enforced while the message streams to disk: a few counters whatever the
// section holds. Fed in pieces of any size; a byte at a time gives the same answers as one
// piece. The section ends at its first empty line (CRLF or bare LF, as parse_headers);
// nothing after that line is looked at.
class HeaderScanner {
public:
    void feed(std::string_view bytes);

    // The empty line that ends the section was seen.
    bool ended() const { return ended_; }
    // Bytes of the section so far, the empty line that ends it included.
    std::uint64_t bytes() const { return bytes_; }
    // Complete lines (ending in LF) of the section so far, the empty line excluded.
    std::uint64_t lines() const { return lines_; }
    // Headers named "Received" (any case) so far: what count_headers(parse_headers(section),
    // "Received") says of the same bytes.
    std::uint64_t received() const { return received_; }

private:
    static constexpr int kNoMatch = -1;

    std::uint64_t bytes_ = 0;
    std::uint64_t lines_ = 0;
    std::uint64_t received_ = 0;
    bool ended_ = false;
    bool line_start_ = true;  // nothing of the current line seen yet
    bool lone_cr_ = false;    // the current line is "\r" so far
    int matched_ = 0;         // bytes of "received:" matched at the line's start, or kNoMatch
};

}  // namespace mxhook::mail
