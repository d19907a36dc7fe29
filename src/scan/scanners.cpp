#include "mxhook/scan/scanners.hpp"

#include "mxhook/blocking.hpp"
#include "mxhook/webhook/body_source.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <fstream>
#include <memory>

namespace mxhook::scan {
namespace asio = boost::asio;
using asio::awaitable;
using asio::use_awaitable;

namespace {

// INSTREAM sends the message in chunks of at most this many bytes; a file is read from the
// pool one chunk at a time, so a scan holds one chunk whatever the message size.
constexpr std::size_t kChunk = 64 * 1024;
// clamd's reply is one short line ("stream: <signature name> FOUND").
constexpr std::size_t kMaxReply = 1024;

// A value for one of rspamd's request headers: no line breaks can get through.
std::string header_value(std::string_view text) {
    std::string out;
    for (char c : text) {
        if (c != '\r' && c != '\n') out += c;
    }
    return out;
}

std::string be32(std::size_t n) {
    return {static_cast<char>((n >> 24) & 0xff), static_cast<char>((n >> 16) & 0xff), static_cast<char>((n >> 8) & 0xff),
            static_cast<char>(n & 0xff)};
}

// One length-prefixed INSTREAM chunk (an empty one ends the stream).
template <typename Socket>
awaitable<void> send_chunk(Socket& socket, std::string_view piece) {
    const std::string length = be32(piece.size());
    std::array<asio::const_buffer, 2> buffers{asio::buffer(length), asio::buffer(piece.data(), piece.size())};
    co_await asio::async_write(socket, buffers, use_awaitable);
}

// Reads message.eml one chunk at a time, on the pool: opened at the first read.
class ChunkReader {
public:
    explicit ChunkReader(std::filesystem::path path) : path_(std::move(path)) {}
    std::string next() {
        if (!file_.is_open()) {
            file_.open(path_, std::ios::binary);
            if (!file_) throw std::system_error(errno, std::generic_category(), "open " + path_.string());
        }
        std::string chunk(kChunk, '\0');
        file_.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
        if (file_.bad()) throw std::system_error(EIO, std::generic_category(), "read " + path_.string());
        chunk.resize(static_cast<std::size_t>(file_.gcount()));
        return chunk;
    }

private:
    std::filesystem::path path_;
    std::ifstream file_;
};

// The message from its spool file, chunk after chunk; false when the file could not be read.
template <typename Socket>
awaitable<bool> send_file(Socket& socket, asio::thread_pool& pool, std::filesystem::path path) {
    auto reader = std::make_shared<ChunkReader>(std::move(path));
    const auto next = [reader] { return reader->next(); };
    // Declared outside the loop: g++ 12 destroys a variable initialised by a co_await in a
    // loop body twice (heap corruption seen under its AddressSanitizer).
    Result<std::string> chunk;
    for (;;) {
        chunk = co_await try_blocking(pool, next);
        if (!chunk) {
            spdlog::warn("clamd: cannot read the message: {}", chunk.failure().message);
            co_return false;
        }
        if (chunk->empty()) co_return true;
        co_await send_chunk(socket, *chunk);
    }
}

// One INSTREAM exchange on a connected socket: the command, the message in length-prefixed
// chunks, the zero-length end, then the reply up to its NUL (or the end of the stream).
template <typename Socket>
awaitable<auth::VirusVerdict> instream(Socket& socket, asio::thread_pool& pool, const MessageBytes& message) {
    co_await asio::async_write(socket, asio::buffer(std::string_view("zINSTREAM\0", 10)), use_awaitable);
    if (message.in_memory) {
        for (std::size_t at = 0; at < message.memory.size(); at += kChunk)
            co_await send_chunk(socket, message.memory.substr(at, kChunk));
    } else {
        // Not in the if's condition: g++ 12 freed send_file's frame while it still ran there.
        const bool sent = co_await send_file(socket, pool, message.file);
        if (!sent) co_return auth::VirusVerdict{};
    }
    co_await send_chunk(socket, std::string_view());
    std::string reply;
    std::array<char, 256> buffer{};
    for (;;) {
        boost::system::error_code ec;
        const std::size_t n =
            co_await socket.async_read_some(asio::buffer(buffer), asio::redirect_error(use_awaitable, ec));
        reply.append(buffer.data(), n);
        if (ec || reply.find('\0') != std::string::npos || reply.size() > kMaxReply) break;
    }
    co_return parse_clamd_reply(reply);
}

// Connects and scans within `timeout`; never throws (a refused connect, a reset, the
// timeout: unchecked). The timeout closes the socket, which ends whatever the scan waits
// for. (Not Asio's `||`: a pool hand-off inside one of its branches corrupted the heap in
// g++ 12's build.)
template <typename Socket, typename Endpoint>
awaitable<auth::VirusVerdict> scan_with(Endpoint endpoint, asio::thread_pool& pool, const MessageBytes& message,
                                        std::chrono::milliseconds timeout) {
    const auto executor = co_await asio::this_coro::executor;
    auto socket = std::make_shared<Socket>(executor);
    auto expired = std::make_shared<bool>(false);
    asio::steady_timer bound(executor, timeout);
    bound.async_wait([socket, expired](boost::system::error_code ec) {
        if (ec) return;
        *expired = true;
        boost::system::error_code ignored;
        socket->close(ignored);
    });
    auth::VirusVerdict verdict;
    try {
        co_await socket->async_connect(endpoint, use_awaitable);
        verdict = co_await instream(*socket, pool, message);
    } catch (const std::exception& e) {
        verdict = auth::VirusVerdict{};
        if (!*expired) spdlog::warn("clamd unchecked: {}", e.what());
    }
    bound.cancel();
    if (*expired) {
        spdlog::warn("clamd unchecked: no answer within CLAMD_TIMEOUT_MS");
        co_return auth::VirusVerdict{};
    }
    co_return verdict;
}

}  // namespace

auth::SpamVerdict parse_rspamd_reply(long status, std::string_view body) {
    auth::SpamVerdict verdict;
    if (status != 200) return verdict;
    const auto json = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
    if (!json.is_object()) return verdict;
    const auto score = json.find("score");
    const auto action = json.find("action");
    if (score == json.end() || !score->is_number() || action == json.end() || !action->is_string()) return verdict;
    verdict.checked = true;
    verdict.score = score->get<double>();
    if (const auto required = json.find("required_score"); required != json.end() && required->is_number())
        verdict.required = required->get<double>();
    verdict.action = action->get<std::string>();
    verdict.spam = verdict.action == "add header" || verdict.action == "rewrite subject" || verdict.action == "reject";
    return verdict;
}

auth::VirusVerdict parse_clamd_reply(std::string_view reply) {
    auth::VirusVerdict verdict;
    if (const auto nul = reply.find('\0'); nul != std::string_view::npos) reply = reply.substr(0, nul);
    while (!reply.empty() && (reply.back() == '\n' || reply.back() == '\r')) reply.remove_suffix(1);
    // "stream: " may be preceded by a session id; the verdict is what follows the last ": ".
    const auto colon = reply.rfind(": ");
    if (colon == std::string_view::npos) return verdict;
    const std::string_view result = reply.substr(colon + 2);
    if (result == "OK") {
        verdict.checked = true;
    } else if (result.size() > 6 && result.substr(result.size() - 6) == " FOUND") {
        verdict.checked = true;
        verdict.infected = true;
        verdict.name = std::string(result.substr(0, result.size() - 6));
    }
    return verdict;  // "... ERROR" (size limit, a broken stream): unchecked
}

Rspamd::Rspamd(http::Client& client, asio::thread_pool& pool, std::string url, std::chrono::milliseconds timeout)
    : client_(client), pool_(pool), url_(std::move(url)), timeout_(timeout) {
    while (!url_.empty() && url_.back() == '/') url_.pop_back();
}

awaitable<auth::SpamVerdict> Rspamd::check(const Envelope& envelope, MessageBytes message) {
    http::Request request;
    request.url = url_ + "/checkv2";
    request.timeout = timeout_;
    request.content_type = "message/rfc822";
    request.headers.push_back("Queue-Id: " + header_value(envelope.queue_id));
    request.headers.push_back("IP: " + header_value(envelope.client_ip));
    if (!envelope.client_host.empty()) request.headers.push_back("Hostname: " + header_value(envelope.client_host));
    request.headers.push_back("Helo: " + header_value(envelope.helo));
    request.headers.push_back("From: " + header_value(envelope.sender));
    for (const auto& recipient : envelope.recipients) request.headers.push_back("Rcpt: " + header_value(recipient));
    if (message.in_memory) {
        request.body_bytes = std::string(message.memory);
    } else {
        const auto io = co_await asio::this_coro::executor;
        auto& pool = pool_;
        auto opened = co_await try_blocking(pool, [&message, &pool, io] {
            return webhook::FormBodySource::open_raw(message.file, "message/rfc822", pool, io);
        });
        if (!opened) co_return auth::SpamVerdict{};
        request.body = *opened;
    }
    const http::Response response = co_await client_.post(std::move(request));
    auth::SpamVerdict verdict = parse_rspamd_reply(response.status, response.body);
    if (!verdict.checked)
        spdlog::warn("rspamd id={} unchecked: {}", envelope.queue_id,
                     response.error.empty() ? "status " + std::to_string(response.status) : response.error);
    co_return verdict;
}

Clamd::Clamd(asio::thread_pool& pool, ClamdAddress address, std::chrono::milliseconds timeout)
    : pool_(pool), address_(std::move(address)), timeout_(timeout) {}

awaitable<auth::VirusVerdict> Clamd::scan(MessageBytes message) {
    if (!address_.unix_path.empty()) {
        co_return co_await scan_with<asio::local::stream_protocol::socket>(
            asio::local::stream_protocol::endpoint(address_.unix_path), pool_, message, timeout_);
    }
    boost::system::error_code ec;
    const auto address = asio::ip::make_address(address_.tcp.host, ec);
    if (ec) co_return auth::VirusVerdict{};
    co_return co_await scan_with<asio::ip::tcp::socket>(asio::ip::tcp::endpoint(address, address_.tcp.port), pool_,
                                                        message, timeout_);
}

}  // namespace mxhook::scan
