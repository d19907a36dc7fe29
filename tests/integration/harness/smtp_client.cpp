#include "harness/files.hpp"
#include "harness/smtp_client.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <regex>

namespace itest {

std::string Reply::text() const {
    if (code <= 0) return "<" + error + ">";
    std::string out;
    for (std::size_t i = 0; i < lines.size(); ++i) {
        if (i) out += '\n';
        out += std::to_string(code) + (i + 1 == lines.size() ? " " : "-") + lines[i];
    }
    return out;
}

std::ostream& operator<<(std::ostream& out, const Reply& reply) { return out << reply.text(); }

std::string queued_id(const Reply& reply) {
    static const std::regex pattern(R"(Queued as (\S+))");
    std::smatch match;
    const std::string last = reply.last();
    if (reply.code != 250 || !std::regex_search(last, match, pattern)) return {};
    return match[1];
}

bool is_spool_id(const std::string& id) {
    static const std::regex pattern(R"(^[0-9]{13}-[0-9a-f-]{36}$)");
    return std::regex_match(id, pattern);
}

std::string with_final_crlf(std::string_view message) {
    std::string out(message);
    if (!out.empty() && !(out.size() >= 2 && out.compare(out.size() - 2, 2, "\r\n") == 0)) out += "\r\n";
    return out;
}

std::string encode_data(std::string_view message) {
    const std::string body = with_final_crlf(message);
    std::string out;
    out.reserve(body.size() + body.size() / 64 + 8);
    bool line_start = true;
    for (std::size_t i = 0; i < body.size(); ++i) {
        if (line_start && body[i] == '.') out += '.';
        out += body[i];
        line_start = body[i] == '\n' && i > 0 && body[i - 1] == '\r';
    }
    out += ".\r\n";
    return out;
}

SmtpClient::SmtpClient(unsigned short port, std::chrono::milliseconds timeout, const std::string& source) {
    fd_ = connect_loopback(port, timeout, connect_error_, source);
}

SmtpClient::~SmtpClient() { close(); }

void SmtpClient::close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
}

bool SmtpClient::read_line(std::string& line, std::string& error) {
    while (true) {
        const auto eol = buffer_.find("\r\n");
        if (eol != std::string::npos) {
            line = buffer_.substr(0, eol);
            buffer_.erase(0, eol + 2);
            return true;
        }
        if (fd_ < 0) {
            error = "not connected";
            return false;
        }
        char chunk[4096];
        const ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
        if (n == 0) {
            error = "connection closed by server";
            return false;
        }
        if (n < 0) {
            if (errno == EINTR) continue;
            error = (errno == EAGAIN || errno == EWOULDBLOCK) ? "timeout waiting for a reply"
                                                             : std::string("recv: ") + std::strerror(errno);
            return false;
        }
        buffer_.append(chunk, static_cast<std::size_t>(n));
    }
}

Reply SmtpClient::read_reply() {
    Reply reply;
    std::string line;
    while (true) {
        std::string error;
        if (!read_line(line, error)) {
            reply.code = error == "connection closed by server" ? 0 : -1;
            reply.error = error + (reply.lines.empty() ? "" : " (after a partial reply)");
            return reply;
        }
        if (line.size() < 3 || !std::isdigit(static_cast<unsigned char>(line[0])) ||
            !std::isdigit(static_cast<unsigned char>(line[1])) || !std::isdigit(static_cast<unsigned char>(line[2])) ||
            (line.size() > 3 && line[3] != ' ' && line[3] != '-')) {
            reply.code = -1;
            reply.error = "malformed reply line: " + line;
            return reply;
        }
        reply.code = std::stoi(line.substr(0, 3));
        reply.lines.push_back(line.size() > 4 ? line.substr(4) : std::string());
        if (line.size() == 3 || line[3] == ' ') return reply;
    }
}

bool SmtpClient::send_raw(std::string_view bytes) {
    std::size_t sent = 0;
    while (fd_ >= 0 && sent < bytes.size()) {
        const ssize_t n = ::send(fd_, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        sent += static_cast<std::size_t>(n);
    }
    return sent == bytes.size();
}

Reply SmtpClient::cmd(std::string_view line) {
    if (!send_raw(std::string(line) + "\r\n")) {
        Reply reply;
        reply.error = "send failed: " + std::string(std::strerror(errno));
        return reply;
    }
    return read_reply();
}

Reply SmtpClient::send_message(std::string_view from, const std::vector<std::string>& recipients,
                               std::string_view message) {
    Reply reply = cmd("MAIL FROM:<" + std::string(from) + ">");
    if (reply.code != 250) return reply;
    for (const auto& rcpt : recipients) {
        reply = cmd("RCPT TO:<" + rcpt + ">");
        if (reply.code != 250) return reply;
    }
    reply = cmd("DATA");
    if (reply.code != 354) return reply;
    if (!send_raw(encode_data(message))) {
        reply = Reply{};
        reply.error = "send of DATA failed: " + std::string(std::strerror(errno));
        return reply;
    }
    return read_reply();
}

bool SmtpClient::wait_closed() {
    while (fd_ >= 0) {
        char chunk[4096];
        const ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
        if (n == 0) return true;
        if (n < 0) {
            if (errno == EINTR) continue;
            return errno == ECONNRESET;
        }
    }
    return true;
}

}  // namespace itest
