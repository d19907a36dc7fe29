#include "mxhook/smtp/data_decoder.hpp"

namespace mxhook::smtp {

void DataDecoder::end_line(std::string& out, bool crlf) {
    out += "\r\n";
    if (!crlf) saw_bare_lf_ = true;
    prev_line_crlf_ = crlf;
    state_ = State::line_start;
}

DataDecoder::Result DataDecoder::feed(std::string_view input, std::string& out) {
    std::size_t i = 0;
    while (i < input.size() && state_ != State::done) {
        const char c = input[i];
        switch (state_) {
            case State::line_start:
                if (c == '.') {
                    state_ = State::dot;
                    ++i;
                    continue;
                }
                state_ = State::in_line;
                continue;  // reprocess c as line content

            case State::dot:
                if (c == '\r') {
                    state_ = State::dot_cr;
                    ++i;
                } else if (c == '\n') {
                    // ".<LF>": never an end mark; a lone dot is kept as it is.
                    out += '.';
                    end_line(out, false);
                    ++i;
                } else {
                    state_ = State::in_line;  // dot-stuffed line: the first dot goes
                }
                continue;

            case State::dot_cr:
                if (c == '\n') {
                    ++i;
                    if (prev_line_crlf_) {
                        state_ = State::done;
                    } else {
                        out += '.';
                        end_line(out, true);
                    }
                } else {
                    // ".<CR>x": a dot-stuffed line whose content starts with a bare CR.
                    state_ = State::in_line_cr;
                }
                continue;

            case State::in_line: {
                // Copy the run of ordinary bytes in one go.
                std::size_t j = i;
                while (j < input.size() && input[j] != '\r' && input[j] != '\n') ++j;
                out.append(input.data() + i, j - i);
                i = j;
                if (i == input.size()) continue;
                if (input[i] == '\r') {
                    state_ = State::in_line_cr;
                } else {
                    end_line(out, false);
                }
                ++i;
                continue;
            }

            case State::in_line_cr:
                if (c == '\n') {
                    end_line(out, true);
                    ++i;
                } else {
                    out += '\r';  // a bare CR is data
                    state_ = State::in_line;
                    if (c == '\r') {
                        state_ = State::in_line_cr;
                        ++i;
                    }
                }
                continue;

            case State::done: break;
        }
    }
    return {i, state_ == State::done};
}

}  // namespace mxhook::smtp
