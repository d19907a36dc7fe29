#include "mxhook/mail/received.hpp"

#include <ctime>

namespace mxhook::mail {
namespace {

// The HELO argument is whatever the client typed; a CR or LF in it would let the
// client write its own header lines into our trace header.
std::string sanitize(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    for (char ch : text) {
        const auto c = static_cast<unsigned char>(ch);
        if (c >= 0x20 && c != 0x7f) out += ch;
    }
    return out;
}

std::string address_literal(const std::string& ip) {
    // RFC 5321 section 4.1.3: IPv6 literals carry an "IPv6:" tag inside the brackets.
    if (ip.find(':') != std::string::npos) return "[IPv6:" + ip + "]";
    return "[" + ip + "]";
}

void append_two_digits(std::string& out, int value) {
    out += static_cast<char>('0' + value / 10);
    out += static_cast<char>('0' + value % 10);
}

}  // namespace

std::string rfc5322_date(std::chrono::system_clock::time_point when) {
    // Names spelled out here rather than strftime("%a %b") so the C locale of the
    // process can never turn "Wed" into "mer.".
    static constexpr const char* days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static constexpr const char* months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                             "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    const std::time_t t = std::chrono::system_clock::to_time_t(
        std::chrono::floor<std::chrono::seconds>(when));
    std::tm tm{};
    gmtime_r(&t, &tm);

    std::string out;
    out.reserve(31);
    out += days[tm.tm_wday];
    out += ", ";
    out += std::to_string(tm.tm_mday);
    out += ' ';
    out += months[tm.tm_mon];
    out += ' ';
    out += std::to_string(tm.tm_year + 1900);
    out += ' ';
    append_two_digits(out, tm.tm_hour);
    out += ':';
    append_two_digits(out, tm.tm_min);
    out += ':';
    append_two_digits(out, tm.tm_sec);
    out += " +0000";
    return out;
}

std::string received_header(const TraceInfo& info) {
    const std::string helo = sanitize(info.helo);
    std::string out = "Received: from ";
    out += helo.empty() ? "unknown" : helo;
    out += " (";
    if (!info.client_host.empty()) {
        out += sanitize(info.client_host);
        out += ' ';
    }
    out += address_literal(sanitize(info.client_ip));
    out += ")\r\n\t";
    if (!info.tls.empty()) {
        out += '(';
        out += sanitize(info.tls);
        out += ")\r\n\t";
    }
    out += "by ";
    out += info.by_host;
    out += " (mxhook) with ";
    out += info.protocol;
    out += " id ";
    out += info.id;
    if (!info.recipient.empty()) {
        out += "\r\n\tfor <";
        out += sanitize(info.recipient);
        out += '>';
    }
    out += "; ";
    out += rfc5322_date(info.when);
    out += "\r\n";
    return out;
}

}  // namespace mxhook::mail
