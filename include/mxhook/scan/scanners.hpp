#pragma once
// Content scanners asked after DATA, beside sender authentication: rspamd's /checkv2 over
// the shared curl multi handle (RSPAMD_URL), and ClamAV's clamd with INSTREAM over a unix
// or TCP socket on the io loop (CLAMD_ADDRESS). Both read the message as it will be stored:
// from memory when the session holds it whole, else from tmp/<id>/message.eml in chunks
// on the pool, so memory stays bounded whatever its size. Each is bounded by its own
// timeout; a scanner that is down, slow or answers nonsense gives an unchecked verdict,
// never an exception.

#include "mxhook/auth/verdicts.hpp"
#include "mxhook/config.hpp"
#include "mxhook/http/client.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/thread_pool.hpp>

#include <chrono>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace mxhook::scan {

// The message to scan: `memory` when the session holds it whole, else `file`. The bytes
// must not change until the scan's awaitable completes.
struct MessageBytes {
    bool in_memory = true;
    std::string_view memory;
    std::filesystem::path file;
};

// What rspamd is told about the transaction (its HTTP request headers).
struct Envelope {
    std::string queue_id;
    std::string client_ip;
    std::string client_host;  // reverse-DNS name, may be empty
    std::string helo;
    std::string sender;       // bare
    std::vector<std::string> recipients;
};

// rspamd's /checkv2 answer: checked only for status 200 with a JSON object holding a
// numeric score and an action.
auth::SpamVerdict parse_rspamd_reply(long status, std::string_view body);

// clamd's INSTREAM reply ("stream: OK", "stream: <name> FOUND", "... ERROR"): checked
// unless it is an error or unreadable.
auth::VirusVerdict parse_clamd_reply(std::string_view reply);

class Rspamd {
public:
    // url: RSPAMD_URL, e.g. "http://127.0.0.1:11333" (the request goes to <url>/checkv2).
    Rspamd(http::Client& client, boost::asio::thread_pool& pool, std::string url, std::chrono::milliseconds timeout);
    boost::asio::awaitable<auth::SpamVerdict> check(const Envelope& envelope, MessageBytes message);

private:
    http::Client& client_;
    boost::asio::thread_pool& pool_;
    std::string url_;
    std::chrono::milliseconds timeout_;
};

class Clamd {
public:
    // address: CLAMD_ADDRESS, a unix socket path or host:port.
    Clamd(boost::asio::thread_pool& pool, ClamdAddress address, std::chrono::milliseconds timeout);
    boost::asio::awaitable<auth::VirusVerdict> scan(MessageBytes message);

private:
    boost::asio::thread_pool& pool_;
    ClamdAddress address_;
    std::chrono::milliseconds timeout_;
};

}  // namespace mxhook::scan
