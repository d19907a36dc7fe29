#pragma once
// The SMTP server protocol (RFC 5321, with RFC 3463 enhanced status codes) as a pure
// state machine: command lines in, reply text and actions out. It knows nothing of
// sockets, disks or time, so it can be unit-tested and fuzzed directly. The session
// owns the I/O and tells the machine how DATA ended.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace mxhook::smtp {

struct ProtocolSettings {
    std::string hostname = "localhost";
    std::size_t max_message_bytes = 26214400;
    std::size_t max_recipients = 1000;
    bool accept_all_recipients = true;
    std::vector<std::string> accepted_domains;  // lower-case
    std::size_t max_errors = 20;                // hard error limit: 421 and close
    std::size_t max_junk_commands = 100;        // NOOP, RSET, VRFY, HELP between messages: then 421
    std::size_t max_received_headers = 100;     // more means a mail loop: 554 5.4.6
    std::size_t max_header_bytes = 1048576;     // header section bounds: 552 5.3.4
    std::size_t max_header_lines = 10000;
    bool tls_available = false;                 // STARTTLS offered (certificate configured)
    // When set and true for (recipient, sender): RCPT gets 550 5.7.1 (a reject route).
    std::function<bool(std::string_view recipient, std::string_view sender)> refuse_recipient;
};

// What the client has told us about the message being sent.
struct Envelope {
    std::string sender;                   // bare address; "" for the null path <>
    std::vector<std::string> recipients;  // bare addresses, in RCPT order
    bool smtputf8 = false;
    bool body_8bitmime = false;
};

enum class Action {
    none,        // send the reply (if any) and read the next command
    start_data,  // send the 354 reply, then read the message with the DATA decoder
    start_tls,   // send the 220 reply, drop any pipelined input, run the TLS handshake
    close,       // send the reply, then close the connection
};

struct Step {
    std::string reply;  // complete reply, CRLF-terminated lines; may be multi-line
    Action action = Action::none;
};

// The three-digit code a reply starts with ("250 2.0.0 ..." -> 250); 0 when it has none.
int reply_code(std::string_view reply) noexcept;

// How the DATA phase ended, as the session saw it.
enum class DataOutcome {
    queued,          // committed to the spool (id given)
    too_big,         // more than max_message_bytes arrived
    headers_too_big, // the header section is over its byte or line bound
    bare_lf,         // a bare LF line end arrived and SMTP_BARE_LF=reject
    local_error,     // the spool failed (disk full, fsync error...)
    loop,            // more Received: headers than max_received_headers (a mail loop)
    denied,          // the decision API said deny (text: the SMTP-safe reason)
    discarded,       // the decision API said silent_deny: answered as if queued
    decision_unavailable,  // the decision API could not be asked or gave no valid answer
    timed_out,       // SMTP_MAX_SESSION_MS passed before the message could be answered: 421, close
    infected,        // clamd found a virus and CLAMD_ACTION=reject (text: the signature's name)
    scan_unavailable,  // a scanner could not check it and *_REQUIRED=true (text: which)
};

// A short name for logs ("queued", "too-big", ...).
const char* outcome_name(DataOutcome outcome);

// What the session learnt about a message while it streamed in: counters only, never the
// message. The input of the checks at the end of DATA.
struct MessageFacts {
    std::uint64_t size = 0;              // bytes of the client's message after dot-unstuffing
    std::uint64_t header_bytes = 0;      // its header section, the empty line that ends it included
    std::uint64_t header_lines = 0;      // lines of the header section, that empty line excluded
    std::uint64_t received_headers = 0;  // Received: headers the client sent (ours not counted)
    bool bare_lf_refused = false;        // a line ended in a bare LF and SMTP_BARE_LF=reject
    bool store_failed = false;           // a write to the spool failed
};

// The checks at the end of DATA, before anything is asked or committed, in this order:
// message size (552), header section bounds (552), the spool (451), bare LF (550), mail
// loop (554). nullopt when the message may go on to the decision and the commit.
std::optional<DataOutcome> check_message(const MessageFacts& facts, const ProtocolSettings& settings);

class Protocol {
public:
    explicit Protocol(ProtocolSettings settings);

    std::string greeting() const;
    // One command line, without its CRLF (or LF).
    Step on_line(std::string_view line);
    // The command line was longer than the limit; the session discarded it.
    Step on_line_too_long();
    // Ends the DATA phase started by Action::start_data and resets the transaction.
    // `text` is the id for queued/discarded and the reason shown for denied. A message
    // answered 250 (queued or discarded) also resets the junk command count.
    Step on_data_end(DataOutcome outcome, std::string_view text = {});
    // The TLS handshake succeeded: everything known about the client is forgotten and a
    // new EHLO is required (RFC 3207 4.2).
    void on_tls_started();
    bool tls_active() const { return tls_active_; }
    // Spool space left above SPOOL_MIN_FREE_BYTES, as last measured (nullopt: unknown, or
    // no guard). At 0 MAIL gets 452 4.3.1; a MAIL whose SIZE= exceeds it gets the same.
    void set_spare_storage(std::optional<std::uint64_t> bytes) { spare_storage_ = bytes; }
    // The reply sent to every client when the server shuts down.
    static std::string_view shutdown_reply();
    static std::string_view timeout_reply();

    const Envelope& envelope() const { return envelope_; }
    const std::string& helo() const { return helo_; }
    bool esmtp() const { return esmtp_; }
    bool in_data() const { return state_ == State::data; }

private:
    enum class State { need_helo, ready, mail, rcpt, data };

    Step error(std::string reply);
    // NOOP, RSET, VRFY and HELP: counted, as Postfix's smtpd_junk_command_limit; nullopt
    // while within the limit, else the 421 that closes the session.
    std::optional<Step> junk();
    Step on_helo(std::string_view arg, bool extended);
    Step on_mail(std::string_view arg);
    Step on_rcpt(std::string_view arg);
    Step on_data(std::string_view arg);
    void reset_transaction();
    bool domain_accepted(std::string_view address) const;

    ProtocolSettings settings_;
    std::optional<std::uint64_t> spare_storage_;
    State state_ = State::need_helo;
    std::string helo_;
    bool esmtp_ = false;
    bool tls_active_ = false;
    Envelope envelope_;
    std::size_t errors_ = 0;
    std::size_t junk_ = 0;  // junk commands since the session began or the last accepted message
};

// Parses "<path> [params]" after "FROM:" / "TO:". Exposed for tests.
struct PathArgument {
    bool ok = false;
    std::string address;              // without angle brackets and source route
    std::vector<std::string> params;  // "KEY=VALUE" or "KEY", as sent
};
PathArgument parse_path_argument(std::string_view text);

}  // namespace mxhook::smtp
