#pragma once
// Decodes the DATA phase byte stream: finds the end-of-data mark, undoes dot-stuffing,
// and writes CRLF line ends. It keeps a few bytes of state between reads, never a line,
// so memory stays bounded whatever the message looks like.
//
// Rules (RFC 5321 4.1.1.4 and 4.5.2, hardened against SMTP smuggling):
//   - DATA ends only on <CR><LF>.<CR><LF>: a line "." ending in CRLF whose previous line
//     also ended in CRLF (the 354 reply counts as a CRLF). Bare LF or bare CR never end it.
//   - A line that starts with "." and has more characters loses its first dot.
//     A lone "." that does not end the data is kept as it is.
//   - A line ending in a bare LF is stored with CRLF (as Postfix's
//     smtpd_forbid_bare_newline = normalize) and remembered, so a strict site can refuse it.
//   - A bare CR inside a line is data, stored unchanged.

#include <cstddef>
#include <string>
#include <string_view>

namespace mxhook::smtp {

class DataDecoder {
public:
    struct Result {
        std::size_t consumed = 0;  // bytes of input used; the rest belongs to the next command
        bool finished = false;     // the end-of-data mark was consumed
    };

    // Appends decoded bytes to out. Stops right after the end-of-data mark.
    Result feed(std::string_view input, std::string& out);

    bool finished() const { return state_ == State::done; }
    bool saw_bare_lf() const { return saw_bare_lf_; }

private:
    enum class State {
        line_start,   // at the start of a line
        dot,          // line started with '.', nothing else yet
        dot_cr,       // line is ".\r" so far
        in_line,      // inside a line
        in_line_cr,   // inside a line, last byte was '\r' (held back)
        done,
    };
    void end_line(std::string& out, bool crlf);

    State state_ = State::line_start;
    bool prev_line_crlf_ = true;  // the line before ended in CRLF (or this is the first line)
    bool saw_bare_lf_ = false;
};

}  // namespace mxhook::smtp
