// libFuzzer target over the SMTP protocol state machine and the DATA decoder, driven the
// way smtp::Session drives them, with no sockets, disks or clocks.
//
// Input layout (see fuzz/README.md):
//   byte 0      how DATA is cut into reads: low 2 bits pick a mode (0: one read with
//               everything, 1: one byte per read, 2: 1..(byte0>>2)+1 bytes, 3: 1..4096
//               bytes), the whole byte also seeds the generator below
//   byte 1      seeds the choice of how each DATA phase ends (the DataOutcome)
//   the rest    what the client sends: command lines, message data, more commands
//
// Every invariant that fails calls abort() with a message, so libFuzzer records a crash.
// MXHOOK_FUZZ_TRACE=1 in the environment prints the conversation (for reproducers).

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "mxhook/mail/headers.hpp"
#include "mxhook/mail/received.hpp"
#include "mxhook/smtp/data_decoder.hpp"
#include "mxhook/smtp/protocol.hpp"
#include "mxhook/smtp/proxy_protocol.hpp"

namespace {

using mxhook::smtp::Action;
using mxhook::smtp::DataDecoder;
using mxhook::smtp::DataOutcome;
using mxhook::smtp::MessageFacts;
using mxhook::smtp::Protocol;
using mxhook::smtp::ProtocolSettings;
using mxhook::smtp::Step;

constexpr std::size_t kMaxCommandLine = 512;  // as smtp::Session: CRLF included
constexpr std::size_t kMaxRecipients = 5;
constexpr std::size_t kMaxMessageBytes = 4096;
constexpr std::size_t kMaxErrors = 20;
constexpr std::size_t kMaxJunk = 8;  // low, so the junk limit is reached
constexpr std::size_t kMaxHeaderBytes = 1024;
constexpr std::size_t kMaxHeaderLines = 20;
constexpr std::size_t kMaxReceived = 3;
constexpr std::string_view kAcceptedDomain = "example.com";
constexpr std::string_view kEndMark = "\r\n.\r\n";

[[noreturn]] void fail(int line, const char* what, std::string_view detail) {
    std::fprintf(stderr, "smtp_fuzz.cpp:%d: invariant violated: %s\n", line, what);
    if (!detail.empty()) {
        std::fprintf(stderr, "  detail (%zu bytes): \"", detail.size());
        for (const char ch : detail.substr(0, 400)) {
            const auto c = static_cast<unsigned char>(ch);
            if (c == '\r') std::fputs("\\r", stderr);
            else if (c == '\n') std::fputs("\\n", stderr);
            else if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') std::fprintf(stderr, "\\x%02x", c);
            else std::fputc(c, stderr);
        }
        std::fputs(detail.size() > 400 ? "\"...\n" : "\"\n", stderr);
    }
    std::abort();
}

void trace(const char* who, std::string_view text) {
    static const bool on = std::getenv("MXHOOK_FUZZ_TRACE") != nullptr;
    if (!on) return;
    std::fprintf(stderr, "%s ", who);
    for (const char ch : text.substr(0, 200)) {
        const auto c = static_cast<unsigned char>(ch);
        if (c == '\r') std::fputs("\\r", stderr);
        else if (c == '\n') std::fputs("\\n", stderr);
        else if (c < 0x20 || c >= 0x7f || c == '\\') std::fprintf(stderr, "\\x%02x", c);
        else std::fputc(c, stderr);
    }
    std::fputs(text.size() > 200 ? "...\n" : "\n", stderr);
}

#define CHECK(cond, detail)                         \
    do {                                            \
        if (!(cond)) fail(__LINE__, #cond, detail); \
    } while (0)

char lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
        if (lower(a[i]) != lower(b[i])) return false;
    return true;
}

// Every LF at or after `from` follows a CR.
bool no_bare_lf(std::string_view text, std::size_t from = 0) {
    for (std::size_t i = text.find('\n', from); i != std::string_view::npos; i = text.find('\n', i + 1))
        if (i == 0 || text[i - 1] != '\r') return false;
    return true;
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

// A reply: one or more lines "ddd-text\r\n" ... "ddd text\r\n", all with the same code,
// the code in 2xx..5xx. Returns the code.
int check_reply(std::string_view reply) {
    CHECK(!reply.empty(), reply);
    CHECK(reply.size() >= 2 && reply.substr(reply.size() - 2) == "\r\n", reply);
    CHECK(no_bare_lf(reply), reply);
    int code = -1;
    std::string_view rest = reply;
    while (!rest.empty()) {
        const auto eol = rest.find("\r\n");
        CHECK(eol != std::string_view::npos, reply);
        const std::string_view line = rest.substr(0, eol);
        rest.remove_prefix(eol + 2);
        CHECK(line.size() >= 4 && is_digit(line[0]) && is_digit(line[1]) && is_digit(line[2]), reply);
        CHECK(line.find('\r') == std::string_view::npos, reply);
        const bool last = rest.empty();
        CHECK(line[3] == (last ? ' ' : '-'), reply);
        const int this_code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
        CHECK(code == -1 || code == this_code, reply);
        code = this_code;
    }
    CHECK(code >= 200 && code < 600, reply);
    return code;
}

std::string_view domain_of(std::string_view address) {
    const auto at = address.rfind('@');
    return at == std::string_view::npos ? std::string_view{} : address.substr(at + 1);
}

void check_envelope(const Protocol& protocol) {
    const auto& recipients = protocol.envelope().recipients;
    CHECK(recipients.size() <= kMaxRecipients, "");
    for (const auto& r : recipients) {
        // accept_all_recipients is off: only the accepted domain, or <postmaster>.
        CHECK(iequals(domain_of(r), kAcceptedDomain) || iequals(r, "postmaster"), r);
        bool quoted = false;
        for (std::size_t i = 0; i < r.size(); ++i) {
            const auto c = static_cast<unsigned char>(r[i]);
            CHECK(c >= 0x20 && c != 0x7f, r);
            if (c == '"') {
                quoted = !quoted;
            } else if (c == '\\' && quoted) {
                // A quoted pair escapes printable ASCII only (RFC 5321 quoted-pairSMTP).
                CHECK(i + 1 < r.size(), r);
                const auto escaped = static_cast<unsigned char>(r[++i]);
                CHECK(escaped >= 0x20 && escaped <= 0x7e, r);
            }
        }
        CHECK(!quoted, r);
    }
}

// A small deterministic generator seeded from the input, for piece sizes and outcomes.
struct Rng {
    std::uint64_t state;
    std::uint32_t next() {
        state += 0x9e3779b97f4a7c15ULL;
        std::uint64_t z = state;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return static_cast<std::uint32_t>(z ^ (z >> 31));
    }
};

// What DataDecoder must produce, written the obvious way over the whole input: the data
// ends at the first <CR><LF>.<CR><LF>, where the CRLF of the 354 reply counts; each line
// ends in CRLF whatever it ended in; a line starting with '.' and longer than "." loses the
// dot. `complete` tells whether the end mark was found.
struct Reference {
    bool complete = false;
    std::size_t consumed = 0;  // with the end mark, when complete
    std::string out;           // complete lines only
    std::size_t partial = 0;   // bytes of an unfinished last line (when not complete)
    bool bare_lf = false;
};

Reference reference_decode(std::string_view raw) {
    Reference ref;
    const std::string prefixed = "\r\n" + std::string(raw);
    const auto mark = prefixed.find(kEndMark);
    std::string_view body = raw;
    if (mark != std::string::npos) {
        ref.complete = true;
        body = raw.substr(0, mark);  // the last line's CRLF is the mark's first two bytes
        ref.consumed = mark + 3;     // then ".\r\n"
    }
    while (!body.empty()) {
        const auto nl = body.find('\n');
        if (nl == std::string_view::npos) {
            ref.partial = body.size();
            break;
        }
        std::string_view line = body.substr(0, nl);
        body.remove_prefix(nl + 1);
        const bool crlf = !line.empty() && line.back() == '\r';
        if (crlf) line.remove_suffix(1);
        if (line.size() > 1 && line.front() == '.') line.remove_prefix(1);
        ref.out += line;
        ref.out += "\r\n";
        if (!crlf) ref.bare_lf = true;
    }
    return ref;
}

// The trace header the session puts in front of every message, built from what the
// protocol accepted: whatever the client sent as HELO or RCPT, it stays one header.
void check_trace_header(const Protocol& protocol) {
    mxhook::mail::TraceInfo trace;
    trace.helo = protocol.helo();
    trace.client_ip = "192.0.2.1";
    trace.by_host = "mx.example.test";
    trace.protocol = std::string(protocol.esmtp() ? "ESMTP" : "SMTP") + (protocol.tls_active() ? "S" : "");
    trace.id = "1764090194123-0f8e9c1a-4b2d-4c55-9a11-3e2f5d7c8b90";
    if (protocol.envelope().recipients.size() == 1) trace.recipient = protocol.envelope().recipients.front();
    const std::string header = mxhook::mail::received_header(trace);
    CHECK(header.size() >= 2 && header.substr(header.size() - 2) == "\r\n", header);
    CHECK(no_bare_lf(header), header);
    CHECK(header.rfind("Received: ", 0) == 0, header);
    // Every line after the first is a continuation (starts with a tab): no injected header.
    for (std::size_t i = header.find('\n'); i + 1 < header.size(); i = header.find('\n', i + 1))
        CHECK(header[i + 1] == '\t', header);
    const auto parsed = mxhook::mail::parse_headers(header);
    CHECK(parsed.size() == 1 && parsed.front().first == "Received", header);
}

class Driver {
public:
    Driver(std::string_view stream, std::uint8_t c0, std::uint8_t c1)
        : stream_(stream), piece_mode_(c0 & 3u), piece_max_(static_cast<std::size_t>(c0 >> 2) + 1),
          pieces_{0x5eedULL ^ (static_cast<std::uint64_t>(c0) << 8)}, outcomes_{0xabcdULL ^ c1},
          protocol_(settings()) {}

    void run() {
        check_reply(protocol_.greeting());
        for (;;) {
            const auto nl = stream_.find('\n', pos_);
            // No LF: the session waits for more and the client has gone. (A line over the
            // limit without LF is dropped up to an LF that never comes.)
            if (nl == std::string_view::npos) return;
            Step step;
            bool from_command = true;
            bool junk_command = false;
            if (nl - pos_ + 1 > kMaxCommandLine) {
                pos_ = nl + 1;
                trace("C:", "(line too long)");
                step = protocol_.on_line_too_long();
            } else {
                std::string_view line = stream_.substr(pos_, nl - pos_);
                pos_ = nl + 1;
                if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
                trace("C:", line);
                step = protocol_.on_line(line);
                check_command_step(line, step);
                const std::string_view verb = line.substr(0, line.find(' '));
                junk_command = iequals(verb, "NOOP") || iequals(verb, "RSET") || iequals(verb, "VRFY") ||
                               iequals(verb, "HELP");
            }
            trace("S:", step.reply);
            // Junk commands (NOOP, RSET, VRFY, HELP) since the last accepted message: the one
            // past the limit, and only that one, is answered with the junk 421 alone.
            if (junk_command) ++junk_;
            const bool junk_close = step.reply == "421 4.7.0 Too many junk commands, closing connection\r\n";
            CHECK(junk_close == (junk_command && junk_ > kMaxJunk), step.reply);
            if (junk_close) CHECK(step.action == Action::close, step.reply);
            // The error that reaches the limit gets its own reply, then the 421 and the close.
            const auto limit_reply = step.reply.find("421 4.7.0 ");
            int code = 0;
            if (limit_reply != std::string::npos && limit_reply > 0) {
                CHECK(step.action == Action::close, step.reply);
                const int error_code = check_reply(std::string_view(step.reply).substr(0, limit_reply));
                CHECK(error_code >= 400, step.reply);
                if (error_code >= 500) ++command_errors_;
                code = check_reply(std::string_view(step.reply).substr(limit_reply));
                CHECK(code == 421, step.reply);
                CHECK(command_errors_ <= kMaxErrors, step.reply);
            } else {
                code = check_reply(step.reply);
                if (code >= 500) ++command_errors_;
                CHECK(command_errors_ < kMaxErrors, step.reply);  // the limit's error comes with a 421
            }
            check_envelope(protocol_);

            if (step.action == Action::start_data) {
                CHECK(code == 354, step.reply);
                CHECK(protocol_.in_data(), step.reply);
                CHECK(!protocol_.envelope().recipients.empty(), step.reply);
                check_trace_header(protocol_);
                if (!receive_message()) return;  // the connection ended inside DATA
                step = protocol_.on_data_end(outcome_, outcome_text_);
                trace("S:", step.reply);
                from_command = false;
                code = check_reply(step.reply);
                CHECK(!protocol_.in_data(), step.reply);
                CHECK(protocol_.envelope().recipients.empty(), step.reply);
                CHECK(protocol_.envelope().sender.empty(), step.reply);
                if (outcome_ == DataOutcome::queued || outcome_ == DataOutcome::discarded) junk_ = 0;
                // Only the session bound ends a session at the end of DATA: 421 4.4.2.
                if (outcome_ == DataOutcome::timed_out) {
                    CHECK(code == 421 && step.action == Action::close, step.reply);
                    CHECK(step.reply.find(" 4.4.2 ") != std::string::npos, step.reply);
                    return;
                }
                CHECK(step.action == Action::none, step.reply);
            } else {
                CHECK(!protocol_.in_data(), step.reply);
            }
            if (step.action == Action::start_tls) {
                CHECK(code == 220, step.reply);
                CHECK(!protocol_.tls_active(), step.reply);
                protocol_.on_tls_started();
                trace("--", "TLS handshake");
                CHECK(protocol_.tls_active() && protocol_.helo().empty() && !protocol_.esmtp(), step.reply);
                CHECK(protocol_.envelope().recipients.empty(), step.reply);
            }
            if (code == 421) CHECK(step.action == Action::close, step.reply);
            if (step.action == Action::close) {
                CHECK(code == 221 || code == 421, step.reply);
                CHECK(from_command, step.reply);
                return;
            }
        }
    }

private:
    static ProtocolSettings settings() {
        ProtocolSettings s;
        s.hostname = "mx.example.test";
        s.max_message_bytes = kMaxMessageBytes;
        s.max_recipients = kMaxRecipients;
        s.accept_all_recipients = false;
        s.accepted_domains = {std::string(kAcceptedDomain)};
        s.max_errors = kMaxErrors;
        s.max_junk_commands = kMaxJunk;
        s.max_header_bytes = kMaxHeaderBytes;
        s.max_header_lines = kMaxHeaderLines;
        s.max_received_headers = kMaxReceived;
        s.tls_available = true;
        return s;
    }

    void check_command_step(std::string_view line, const Step& step) {
        const std::string_view verb = line.substr(0, line.find(' '));
        if (step.action == Action::start_data) CHECK(iequals(verb, "DATA"), step.reply);
        if (step.action == Action::start_tls) CHECK(iequals(verb, "STARTTLS"), step.reply);
        // EHLO advertises STARTTLS exactly when it can be used.
        if (iequals(verb, "EHLO") && step.reply.rfind("250", 0) == 0) {
            const bool advertised = step.reply.find("\r\n250-STARTTLS\r\n") != std::string::npos;
            CHECK(advertised == !protocol_.tls_active(), step.reply);
        }
        if (iequals(verb, "STARTTLS") && protocol_.tls_active()) CHECK(step.action != Action::start_tls, step.reply);
    }

    std::size_t next_piece(std::size_t left) {
        std::size_t n = left;
        switch (piece_mode_) {
            case 0: break;
            case 1: n = 1; break;
            case 2: n = 1 + pieces_.next() % piece_max_; break;
            default: n = 1 + pieces_.next() % 4096; break;
        }
        return n < left ? n : left;
    }

    // DATA as the session reads it: pieces of the stream through the decoder until the
    // end mark; what follows the mark in the last piece is the next command.
    bool receive_message() {
        DataDecoder decoder;
        std::string out;
        const std::size_t start = pos_;
        for (;;) {
            const std::size_t left = stream_.size() - pos_;
            if (left == 0) {
                check_decoded(decoder, stream_.substr(start, pos_ - start), out, false);
                return false;
            }
            const std::size_t n = next_piece(left);
            const std::string_view piece = stream_.substr(pos_, n);
            const std::size_t before = out.size();
            const auto result = decoder.feed(piece, out);
            CHECK(result.consumed <= piece.size(), piece);
            CHECK(result.finished == decoder.finished(), piece);
            // Anything not consumed would be fed again for ever: only the end stops early.
            if (!result.finished) CHECK(result.consumed == piece.size(), piece);
            if (result.finished) CHECK(result.consumed > 0, piece);
            CHECK(no_bare_lf(out, before), out);
            pos_ += result.consumed;
            if (result.finished) break;
        }
        // Fed again after the end, the decoder takes nothing.
        const std::size_t size = out.size();
        const auto again = decoder.feed("x\r\n.\r\n", out);
        CHECK(again.consumed == 0 && again.finished && out.size() == size, out);

        const std::string_view raw = stream_.substr(start, pos_ - start);
        trace("D:", out);
        check_decoded(decoder, raw, out, true);
        const MessageFacts facts = scan_message(out, decoder);
        choose_outcome(facts);
        return true;
    }

    void check_decoded(const DataDecoder& decoder, std::string_view raw, const std::string& out, bool finished) {
        CHECK(no_bare_lf(out), out);
        const Reference ref = reference_decode(raw);
        // Only <CR><LF>.<CR><LF> ends DATA, and the first one does: no smuggled end, no
        // missed end.
        CHECK(ref.complete == finished, raw);
        if (finished) {
            CHECK(ref.consumed == raw.size(), raw);
            CHECK(out == ref.out, raw);
            CHECK(out.empty() || out.substr(out.size() - 2) == "\r\n", raw);
            CHECK(decoder.saw_bare_lf() == ref.bare_lf, raw);
        } else {
            CHECK(out.compare(0, ref.out.size(), ref.out) == 0, raw);
            CHECK(out.size() <= ref.out.size() + ref.partial, raw);
            CHECK(!decoder.saw_bare_lf() || ref.bare_lf, raw);
        }
        // Dot-stuffing the output again gives data that decodes to the same output.
        if (finished) {
            std::string stuffed;
            bool at_line_start = true;
            for (const char c : out) {
                if (at_line_start && c == '.') stuffed += '.';
                stuffed += c;
                at_line_start = c == '\n';
            }
            stuffed += ".\r\n";
            DataDecoder again;
            std::string round;
            const auto result = again.feed(stuffed, round);
            CHECK(result.finished && result.consumed == stuffed.size(), stuffed);
            CHECK(round == out, stuffed);
            CHECK(!again.saw_bare_lf(), stuffed);
        }
    }

    // What the session learns of the message while it streams: the header section is
    // counted in the read pieces (never kept), and must agree with parsing it whole.
    MessageFacts scan_message(std::string_view message, const DataDecoder& decoder) {
        mxhook::mail::HeaderScanner scanner;
        std::size_t pos = 0;
        while (pos < message.size()) {
            const std::size_t n = std::min<std::size_t>(message.size() - pos, 1 + pieces_.next() % 97);
            scanner.feed(message.substr(pos, n));
            pos += n;
        }
        std::size_t end = message.size();
        bool ended = false;
        for (std::size_t i = 0, line_start = 0; i < message.size(); ++i) {
            if (message[i] != '\n') continue;
            const auto line = message.substr(line_start, i - line_start);
            if (line.empty() || line == "\r") {
                end = i + 1;
                ended = true;
                break;
            }
            line_start = i + 1;
        }
        const std::string_view section = message.substr(0, end);
        std::size_t lfs = 0;
        for (const char c : section) lfs += c == '\n';
        const auto parsed = mxhook::mail::parse_headers(section);
        CHECK(scanner.ended() == ended, message);
        CHECK(scanner.bytes() == section.size(), message);
        CHECK(scanner.lines() == lfs - (ended ? 1 : 0), message);
        CHECK(scanner.received() == mxhook::mail::count_headers(parsed, "Received"), message);
        for (const auto& [name, value] : parsed) {
            CHECK(name.find('\n') == std::string::npos && value.find('\n') == std::string::npos, message);
        }
        MessageFacts facts;
        facts.size = message.size();
        facts.header_bytes = scanner.bytes();
        facts.header_lines = scanner.lines();
        facts.received_headers = scanner.received();
        facts.bare_lf_refused = decoder.saw_bare_lf() && (outcomes_.next() & 1);
        facts.store_failed = outcomes_.next() % 16 == 0;
        return facts;
    }

    // The checks the session makes at the end of DATA, then (when they pass) what the
    // decision API and the commit may make of it.
    void choose_outcome(const MessageFacts& facts) {
        static constexpr DataOutcome later[] = {
            DataOutcome::queued,   DataOutcome::local_error,          DataOutcome::denied,
            DataOutcome::discarded, DataOutcome::decision_unavailable, DataOutcome::timed_out,
        };
        const auto refused = mxhook::smtp::check_message(facts, settings());
        CHECK(!refused || *refused != DataOutcome::queued, "");
        CHECK((refused == DataOutcome::too_big) == (facts.size > kMaxMessageBytes), "");
        if (refused == DataOutcome::headers_too_big) {
            CHECK(facts.header_bytes > kMaxHeaderBytes || facts.header_lines > kMaxHeaderLines, "");
        }
        if (!refused) {
            CHECK(facts.size <= kMaxMessageBytes && facts.header_bytes <= kMaxHeaderBytes, "");
            CHECK(facts.header_lines <= kMaxHeaderLines && facts.received_headers <= kMaxReceived, "");
            CHECK(!facts.store_failed && !facts.bare_lf_refused, "");
        }
        outcome_ = refused ? *refused : later[outcomes_.next() % (sizeof later / sizeof later[0])];
        switch (outcome_) {
            case DataOutcome::queued:
            case DataOutcome::discarded: outcome_text_ = "1764090194123-0f8e9c1a-4b2d-4c55-9a11-3e2f5d7c8b90"; break;
            case DataOutcome::denied: outcome_text_ = "Message rejected"; break;
            default: outcome_text_.clear(); break;
        }
        CHECK(std::string_view(mxhook::smtp::outcome_name(outcome_)) != "unknown", "");
    }

    std::string_view stream_;
    std::size_t pos_ = 0;
    unsigned piece_mode_;
    std::size_t piece_max_;
    Rng pieces_;
    Rng outcomes_;
    Protocol protocol_;
    std::size_t command_errors_ = 0;
    std::size_t junk_ = 0;
    DataOutcome outcome_ = DataOutcome::queued;
    std::string outcome_text_;
};

// The PROXY protocol header a balancer sends first (SMTP_PROXY_PROTOCOL_FROM): whatever the
// bytes, the parser decides within its bounds, never reads past the input, and a prefix of
// a header it accepts is never "invalid" (a header split across reads must not be refused).
void check_proxy_header(std::string_view bytes) {
    using mxhook::smtp::ProxyParse;
    const ProxyParse whole = mxhook::smtp::parse_proxy_header(bytes);
    if (whole.status == ProxyParse::Status::done) {
        if (whole.consumed == 0 || whole.consumed > bytes.size()) fail(__LINE__, "proxy: consumed out of range", bytes);
        if (!whole.header.local && whole.header.source_ip.empty()) fail(__LINE__, "proxy: done without an address", bytes);
        for (std::size_t cut = 0; cut < whole.consumed; cut += 1 + cut / 8) {
            if (mxhook::smtp::parse_proxy_header(bytes.substr(0, cut)).status == ProxyParse::Status::invalid) {
                fail(__LINE__, "proxy: a prefix of an accepted header was refused", bytes);
            }
        }
    } else if (whole.status == ProxyParse::Status::need_more) {
        if (bytes.size() >= mxhook::smtp::kMaxProxyV2Bytes) fail(__LINE__, "proxy: still asking for more past every bound", bytes);
    } else if (whole.error.empty()) {
        fail(__LINE__, "proxy: refused without a reason", bytes);
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 2) return 0;
    const std::string_view stream(reinterpret_cast<const char*>(data) + 2, size - 2);
    check_proxy_header(stream);
    Driver(stream, data[0], data[1]).run();
    return 0;
}
