#include "mxhook/smtp/protocol.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <utility>

namespace mxhook::smtp {

namespace {
constexpr std::string_view kInsufficientStorage = "452 4.3.1 Insufficient system storage";
}  // namespace

int reply_code(std::string_view reply) noexcept {
    if (reply.size() < 3) return 0;
    int code = 0;
    for (std::size_t i = 0; i < 3; ++i) {
        if (reply[i] < '0' || reply[i] > '9') return 0;
        code = code * 10 + (reply[i] - '0');
    }
    return code;
}
namespace {

char lower(char c) { return static_cast<char>(std::tolower(static_cast<unsigned char>(c))); }

bool iequals(std::string_view a, std::string_view b) {
    return a.size() == b.size() &&
           std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) { return lower(x) == lower(y); });
}

bool istarts_with(std::string_view text, std::string_view prefix) {
    return text.size() >= prefix.size() && iequals(text.substr(0, prefix.size()), prefix);
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

std::string line(std::string_view text) {
    std::string out(text);
    out += "\r\n";
    return out;
}

bool is_control(unsigned char c) { return c < 0x20 || c == 0x7f; }

// A mailbox as it may appear between angle brackets: printable, no spaces outside a
// quoted local part, no brackets. 8-bit bytes are allowed (SMTPUTF8 senders use them,
// and refusing them gains nothing for a receiver). Inside quotes a backslash escapes one
// printable ASCII character only (RFC 5321 quoted-pairSMTP = %d92 %d32-126): an escaped
// NUL, CR or ESC would reach the logs and the webhook as it is.
bool valid_mailbox(std::string_view address) {
    bool quoted = false;
    for (std::size_t i = 0; i < address.size(); ++i) {
        const auto c = static_cast<unsigned char>(address[i]);
        if (is_control(c)) return false;
        if (c == '"') {
            quoted = !quoted;
        } else if (c == '\\' && quoted) {
            if (++i == address.size()) return false;
            const auto escaped = static_cast<unsigned char>(address[i]);
            if (escaped < 0x20 || escaped > 0x7e) return false;
        } else if (!quoted && (c == ' ' || c == '<' || c == '>')) {
            return false;
        }
    }
    return !quoted;
}

std::string_view domain_of(std::string_view address) {
    const auto at = address.rfind('@');
    return at == std::string_view::npos ? std::string_view{} : address.substr(at + 1);
}

}  // namespace

PathArgument parse_path_argument(std::string_view text) {
    PathArgument result;
    text = trim(text);  // tolerate "FROM: <a@b>", as most MTAs do
    if (text.empty() || text.front() != '<') return result;
    const auto close = text.find('>');
    if (close == std::string_view::npos) return result;
    std::string_view path = text.substr(1, close - 1);
    // RFC 5321 4.1.2: a source route "@a,@b:" before the mailbox is accepted and ignored.
    if (!path.empty() && path.front() == '@') {
        const auto colon = path.find(':');
        if (colon == std::string_view::npos) return result;
        path.remove_prefix(colon + 1);
    }
    if (!valid_mailbox(path)) return result;
    std::string_view rest = text.substr(close + 1);
    if (!rest.empty() && rest.front() != ' ') return result;
    while (!(rest = trim(rest)).empty()) {
        const auto space = rest.find(' ');
        result.params.emplace_back(rest.substr(0, space));
        rest = space == std::string_view::npos ? std::string_view{} : rest.substr(space);
    }
    result.address = std::string(path);
    result.ok = true;
    return result;
}

const char* outcome_name(DataOutcome outcome) {
    switch (outcome) {
        case DataOutcome::queued: return "queued";
        case DataOutcome::too_big: return "too-big";
        case DataOutcome::headers_too_big: return "headers-too-big";
        case DataOutcome::bare_lf: return "bare-lf";
        case DataOutcome::local_error: return "local-error";
        case DataOutcome::loop: return "mail-loop";
        case DataOutcome::denied: return "denied";
        case DataOutcome::discarded: return "discarded";
        case DataOutcome::decision_unavailable: return "decision-unavailable";
        case DataOutcome::timed_out: return "timed-out";
        case DataOutcome::infected: return "infected";
        case DataOutcome::scan_unavailable: return "scan-unavailable";
    }
    return "unknown";
}

std::optional<DataOutcome> check_message(const MessageFacts& facts, const ProtocolSettings& settings) {
    if (facts.size > settings.max_message_bytes) return DataOutcome::too_big;
    if (facts.header_bytes > settings.max_header_bytes || facts.header_lines > settings.max_header_lines) {
        return DataOutcome::headers_too_big;
    }
    if (facts.store_failed) return DataOutcome::local_error;
    if (facts.bare_lf_refused) return DataOutcome::bare_lf;
    if (facts.received_headers > settings.max_received_headers) return DataOutcome::loop;
    return std::nullopt;
}

Protocol::Protocol(ProtocolSettings settings) : settings_(std::move(settings)) {}

std::string Protocol::greeting() const { return line("220 " + settings_.hostname + " ESMTP"); }

std::string_view Protocol::shutdown_reply() { return "421 4.3.2 Service shutting down, try again later\r\n"; }

std::string_view Protocol::timeout_reply() { return "421 4.4.2 Timeout exceeded, closing connection\r\n"; }

Step Protocol::error(std::string reply) {
    // As Postfix's smtpd_hard_error_limit: the error that reaches the limit still gets its
    // own reply, then the 421, so a client sees exactly max_errors errors before the close.
    if (++errors_ >= settings_.max_errors) {
        return {std::move(reply) + line("421 4.7.0 Too many errors, closing connection"), Action::close};
    }
    return {std::move(reply)};
}

std::optional<Step> Protocol::junk() {
    // Past the limit, not at it: a client may send max_junk_commands of them between two
    // messages, and the next one is answered with the 421 alone.
    if (++junk_ > settings_.max_junk_commands) {
        return Step{line("421 4.7.0 Too many junk commands, closing connection"), Action::close};
    }
    return std::nullopt;
}

void Protocol::reset_transaction() {
    envelope_ = Envelope{};
    state_ = helo_.empty() && !esmtp_ ? State::need_helo : State::ready;
}

void Protocol::on_tls_started() {
    tls_active_ = true;
    helo_.clear();
    esmtp_ = false;
    envelope_ = Envelope{};
    state_ = State::need_helo;
}

Step Protocol::on_line_too_long() { return error(line("500 5.5.2 Line too long")); }

Step Protocol::on_line(std::string_view text) {
    const auto space = text.find(' ');
    const std::string_view verb = text.substr(0, space);
    const std::string_view arg = space == std::string_view::npos ? std::string_view{} : text.substr(space + 1);

    if (iequals(verb, "EHLO")) return on_helo(arg, true);
    if (iequals(verb, "HELO")) return on_helo(arg, false);
    if (iequals(verb, "MAIL")) return on_mail(arg);
    if (iequals(verb, "RCPT")) return on_rcpt(arg);
    if (iequals(verb, "DATA")) return on_data(arg);
    const bool junk_command =
        iequals(verb, "RSET") || iequals(verb, "NOOP") || iequals(verb, "VRFY") || iequals(verb, "HELP");
    if (junk_command) {
        if (auto closing = junk()) return std::move(*closing);
    }
    if (iequals(verb, "RSET")) {
        if (!trim(arg).empty()) return error(line("501 5.5.4 Syntax: RSET"));
        reset_transaction();
        return {line("250 2.0.0 Ok")};
    }
    if (iequals(verb, "NOOP")) return {line("250 2.0.0 Ok")};
    if (iequals(verb, "QUIT")) return {line("221 2.0.0 Bye"), Action::close};
    if (iequals(verb, "VRFY")) {
        if (trim(arg).empty()) return error(line("501 5.5.4 Syntax: VRFY address"));
        return {line("252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery")};
    }
    if (iequals(verb, "HELP")) {
        return {line("214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP")};
    }
    if (iequals(verb, "STARTTLS")) {
        if (!settings_.tls_available) return error(line("502 5.5.1 Command not implemented"));
        if (tls_active_) return error(line("503 5.5.1 Error: TLS already active"));
        if (!trim(arg).empty()) return error(line("501 5.5.4 Syntax: STARTTLS"));
        if (state_ == State::need_helo) return error(line("503 5.5.1 Error: send EHLO first"));
        return {line("220 2.0.0 Ready to start TLS"), Action::start_tls};
    }
    if (iequals(verb, "EXPN") || iequals(verb, "AUTH") ||
        iequals(verb, "BDAT") || iequals(verb, "TURN") || iequals(verb, "ETRN")) {
        return error(line("502 5.5.1 Command not implemented"));
    }
    if (trim(text).empty()) return error(line("500 5.5.2 Error: bad syntax"));
    return error(line("500 5.5.2 Error: command not recognized"));
}

Step Protocol::on_helo(std::string_view arg, bool extended) {
    arg = trim(arg);
    if (arg.empty() || !valid_mailbox(arg)) {
        return error(line(extended ? "501 5.5.4 Syntax: EHLO hostname" : "501 5.5.4 Syntax: HELO hostname"));
    }
    // A new greeting resets any transaction (RFC 5321 4.1.4).
    helo_ = std::string(arg.substr(0, arg.find(' ')));
    esmtp_ = extended;
    envelope_ = Envelope{};
    state_ = State::ready;
    if (!extended) return {line("250 " + settings_.hostname)};
    std::string reply = "250-" + settings_.hostname + "\r\n";
    reply += "250-PIPELINING\r\n";
    reply += "250-SIZE " + std::to_string(settings_.max_message_bytes) + "\r\n";
    reply += "250-8BITMIME\r\n";
    reply += "250-SMTPUTF8\r\n";
    if (settings_.tls_available && !tls_active_) reply += "250-STARTTLS\r\n";
    reply += "250 ENHANCEDSTATUSCODES\r\n";
    return {std::move(reply)};
}

Step Protocol::on_mail(std::string_view arg) {
    if (state_ == State::need_helo) return error(line("503 5.5.1 Error: send HELO/EHLO first"));
    if (state_ != State::ready) return error(line("503 5.5.1 Error: nested MAIL command"));
    if (!istarts_with(arg, "FROM:")) return error(line("501 5.5.4 Syntax: MAIL FROM:<address>"));
    auto path = parse_path_argument(arg.substr(5));
    if (!path.ok) return error(line("501 5.1.7 Bad sender address syntax"));
    // RFC 1870 6.1: a temporary shortage of space is 452, not the client's error. It is
    // checked before the parameters, so a full spool answers every sender the same way.
    if (spare_storage_ && *spare_storage_ == 0) return {line(kInsufficientStorage)};

    Envelope envelope;
    for (const auto& param : path.params) {
        const auto eq = param.find('=');
        const std::string_view key = std::string_view(param).substr(0, eq);
        const std::string_view value =
            eq == std::string::npos ? std::string_view{} : std::string_view(param).substr(eq + 1);
        if (iequals(key, "SIZE")) {
            std::size_t size = 0;
            const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), size);
            if (value.empty() || end != value.data() + value.size()) {
                return error(line("501 5.5.4 Bad SIZE parameter"));
            }
            if (ec == std::errc::result_out_of_range) size = static_cast<std::size_t>(-1);
            if (size > settings_.max_message_bytes) {
                return error(line("552 5.3.4 Message size exceeds fixed maximum message size"));
            }
            if (spare_storage_ && size > *spare_storage_) return {line(kInsufficientStorage)};
        } else if (iequals(key, "BODY")) {
            if (iequals(value, "8BITMIME")) envelope.body_8bitmime = true;
            else if (!iequals(value, "7BIT")) return error(line("501 5.5.4 Bad BODY parameter"));
        } else if (iequals(key, "SMTPUTF8") && eq == std::string::npos) {
            envelope.smtputf8 = true;
        } else {
            return error(line("555 5.5.4 Unsupported MAIL parameter"));
        }
    }
    envelope.sender = std::move(path.address);
    envelope_ = std::move(envelope);
    state_ = State::mail;
    return {line("250 2.1.0 Ok")};
}

bool Protocol::domain_accepted(std::string_view address) const {
    if (settings_.accept_all_recipients) return true;
    std::string domain(domain_of(address));
    std::transform(domain.begin(), domain.end(), domain.begin(), lower);
    return std::find(settings_.accepted_domains.begin(), settings_.accepted_domains.end(), domain) !=
           settings_.accepted_domains.end();
}

Step Protocol::on_rcpt(std::string_view arg) {
    if (state_ != State::mail && state_ != State::rcpt) return error(line("503 5.5.1 Error: need MAIL command"));
    if (!istarts_with(arg, "TO:")) return error(line("501 5.5.4 Syntax: RCPT TO:<address>"));
    auto path = parse_path_argument(arg.substr(3));
    // RFC 5321 4.5.1: <postmaster> without a domain must be accepted.
    const bool postmaster = iequals(path.address, "postmaster");
    if (!path.ok || path.address.empty() || (!postmaster && domain_of(path.address).empty())) {
        return error(line("501 5.1.3 Bad recipient address syntax"));
    }
    if (!path.params.empty()) return error(line("555 5.5.4 Unsupported RCPT parameter"));
    if (!postmaster && !domain_accepted(path.address)) {
        return error(line("550 5.7.1 Recipient address rejected: relay access denied"));
    }
    if (settings_.refuse_recipient && settings_.refuse_recipient(path.address, envelope_.sender)) {
        return error(line("550 5.7.1 Recipient address rejected"));
    }
    auto& recipients = envelope_.recipients;
    const bool duplicate = std::any_of(recipients.begin(), recipients.end(),
                                       [&](const std::string& r) { return iequals(r, path.address); });
    if (!duplicate) {
        if (recipients.size() >= settings_.max_recipients) return {line("452 4.5.3 Error: too many recipients")};
        recipients.push_back(std::move(path.address));
    }
    state_ = State::rcpt;
    return {line("250 2.1.5 Ok")};
}

Step Protocol::on_data(std::string_view arg) {
    if (!trim(arg).empty()) return error(line("501 5.5.4 Syntax: DATA"));
    if (state_ == State::mail) return error(line("503 5.5.1 Error: need RCPT command"));
    if (state_ != State::rcpt) return error(line("503 5.5.1 Error: need MAIL command"));
    state_ = State::data;
    return {line("354 End data with <CR><LF>.<CR><LF>"), Action::start_data};
}

namespace {

// A name from a scanner, in a reply: printable ASCII without spaces, at most 100 bytes.
std::string safe_word(std::string_view text) {
    std::string out;
    for (char c : text.substr(0, 100)) {
        if (c > ' ' && c < 127 && c != '(' && c != ')') out += c;
    }
    return out.empty() ? "unnamed" : out;
}

}  // namespace

Step Protocol::on_data_end(DataOutcome outcome, std::string_view text) {
    reset_transaction();
    switch (outcome) {
        case DataOutcome::queued:
        case DataOutcome::discarded:
            // As Postfix: a client that gets its mail through is forgiven its junk so far (a
            // long session that says RSET between messages is not abuse).
            junk_ = 0;
            return {line("250 2.0.0 Queued as " + std::string(text))};
        case DataOutcome::timed_out: return {std::string(timeout_reply()), Action::close};
        case DataOutcome::too_big:
            return {line("552 5.3.4 Message size exceeds fixed maximum message size")};
        case DataOutcome::headers_too_big:
            return {line("552 5.3.4 Message header section exceeds the fixed maximum size")};
        case DataOutcome::bare_lf:
            return {line("550 5.5.2 Message contains bare <LF> line ends, which this server refuses")};
        case DataOutcome::loop: return {line("554 5.4.6 Too many hops: mail loop detected")};
        case DataOutcome::denied: return {line("550 5.7.1 " + std::string(text))};
        case DataOutcome::decision_unavailable:
            return {line("451 4.7.1 Message cannot be accepted right now, try again later")};
        case DataOutcome::infected: return {line("554 5.7.1 Message rejected: virus found (" + safe_word(text) + ")")};
        case DataOutcome::scan_unavailable:
            return {line("451 4.7.1 Message cannot be checked right now, try again later")};
        case DataOutcome::local_error: break;
    }
    return {line("451 4.3.0 Local error in processing, try again later")};
}

}  // namespace mxhook::smtp
