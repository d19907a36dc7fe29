#pragma once
// SmtpClient: a blocking SMTP client for tests. Every read is bounded by the timeout given
// at construction; a timeout or a closed connection is a Reply with code -1 or 0 and the
// reason in `error`, so a test fails with a message instead of hanging or throwing.

#include <chrono>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

namespace itest {

struct Reply {
    int code = -1;                    // 0: connection closed; -1: timeout or I/O error
    std::vector<std::string> lines;   // text after "250-" / "250 "
    std::string error;

    std::string text() const;         // the reply as received, lines joined by '\n'
    std::string last() const { return lines.empty() ? std::string() : lines.back(); }
};
std::ostream& operator<<(std::ostream& out, const Reply& reply);

// The id from "250 2.0.0 Queued as <id>"; "" when the reply does not say it.
std::string queued_id(const Reply& reply);
// True when `id` looks like "<13 digits>-<uuid>" (what haraka-webhook and mxhook use).
bool is_spool_id(const std::string& id);

// DATA payload on the wire: dot-stuffed, a final CRLF added when missing, then ".\r\n".
std::string encode_data(std::string_view message);
// `message` as the server must store it: with the final CRLF encode_data adds.
std::string with_final_crlf(std::string_view message);

class SmtpClient {
public:
    explicit SmtpClient(unsigned short port, std::chrono::milliseconds timeout = std::chrono::seconds(10),
                        const std::string& source = {});  // source: a loopback address to connect from
    ~SmtpClient();
    SmtpClient(const SmtpClient&) = delete;
    SmtpClient& operator=(const SmtpClient&) = delete;

    bool connected() const { return fd_ >= 0; }
    const std::string& connect_error() const { return connect_error_; }

    Reply read_reply();
    bool send_raw(std::string_view bytes);
    Reply cmd(std::string_view line);   // sends line + CRLF, reads one reply
    Reply greeting() { return read_reply(); }
    Reply ehlo(std::string_view name = "client.test") { return cmd("EHLO " + std::string(name)); }

    // MAIL, RCPT..., DATA, the encoded message; the final reply, or the first one that was
    // not 250/354.
    Reply send_message(std::string_view from, const std::vector<std::string>& recipients,
                       std::string_view message);

    // True when the server closes the connection (EOF or reset) within the timeout;
    // anything it sends meanwhile is discarded.
    bool wait_closed();
    void close();

private:
    bool read_line(std::string& line, std::string& error);

    int fd_ = -1;
    std::string connect_error_;
    std::string buffer_;
};

}  // namespace itest
