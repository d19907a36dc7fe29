#pragma once
// The Received: trace header mxhook prepends to every message (RFC 5321 section 4.4).

#include <chrono>
#include <string>
#include <string_view>

namespace mxhook::mail {

struct TraceInfo {
    std::string helo;          // the client's HELO/EHLO argument
    std::string client_host;   // reverse-DNS name, may be empty
    std::string client_ip;     // textual address, IPv6 without brackets
    std::string by_host;       // our SMTP_HOSTNAME
    std::string protocol = "ESMTP";  // "ESMTP", "SMTP" (HELO), later "ESMTPS"
    std::string id;            // spool id
    std::string recipient;     // set only when the message has exactly one recipient
    std::string tls;           // e.g. "using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)"; "" in clear
    std::chrono::system_clock::time_point when;
};

// The full header, folded, ending in CRLF:
// "Received: from helo (host [ip])\r\n\t[(tls)\r\n\t]by host (mxhook) with ESMTP id ID\r\n\tfor <rcpt>; date\r\n"
std::string received_header(const TraceInfo& info);

// RFC 5322 date-time in UTC: "Wed, 25 Nov 2026 17:03:14 +0000".
std::string rfc5322_date(std::chrono::system_clock::time_point when);

}  // namespace mxhook::mail
