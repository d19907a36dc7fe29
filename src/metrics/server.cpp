#include "mxhook/metrics/server.hpp"

#include "mxhook/blocking.hpp"
#include "mxhook/listener.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/serializer.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <spdlog/spdlog.h>

#include <chrono>
#include <stdexcept>

namespace mxhook::metrics {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using asio::ip::tcp;

namespace {

constexpr std::size_t kMaxRequestBytes = 8 * 1024;
constexpr std::size_t kMaxConnections = 16;
constexpr auto kRequestTimeout = std::chrono::seconds(5);
// Requests per connection: Prometheus keeps its connection open between scrapes.
constexpr int kMaxRequestsPerConnection = 1000;

constexpr std::string_view kText = "text/plain; charset=utf-8";
constexpr std::string_view kExposition = "text/plain; version=0.0.4; charset=utf-8";

}  // namespace

Server::Server(asio::io_context& io, asio::thread_pool& pool, const Metrics& metrics, Sources sources,
               BuildInfo build)
    : io_(io), pool_(pool), metrics_(metrics), sources_(std::move(sources)), build_(std::move(build)) {}

void Server::listen(const HostPort& address) {
    const std::string label = address.host + ":" + std::to_string(address.port);
    try {
        acceptor_ = open_listener(io_, address, 64);
        spdlog::info("metrics: listening on {} (/metrics, /healthz, /readyz)", label);
    } catch (const std::exception& e) {
        throw std::runtime_error("METRICS_LISTEN: cannot listen on " + label + ": " + e.what());
    }
}

void Server::start() {
    if (acceptor_) asio::co_spawn(io_, accept_loop(), asio::detached);
}

void Server::stop() {
    stopping_ = true;
    boost::system::error_code ignored;
    if (acceptor_) acceptor_->close(ignored);
    for (auto& [key, socket] : connections_) socket->close(ignored);
}

asio::awaitable<void> Server::accept_loop() {
    while (!stopping_) {
        auto [ec, socket] = co_await acceptor_->async_accept(asio::as_tuple(asio::use_awaitable));
        if (stopping_ || ec == asio::error::operation_aborted) co_return;
        if (ec) {
            spdlog::warn("metrics: accept failed: {}", ec.message());
            asio::steady_timer pause(io_, std::chrono::milliseconds(100));
            co_await pause.async_wait(asio::as_tuple(asio::use_awaitable));
            continue;
        }
        if (connections_.size() >= kMaxConnections) {
            boost::system::error_code ignored;
            socket.close(ignored);  // a scraper gone wild must not cost SMTP anything
            continue;
        }
        const std::uint64_t key = next_key_++;
        asio::co_spawn(io_, serve(std::move(socket), key), asio::detached);
    }
}

asio::awaitable<void> Server::serve(tcp::socket socket, std::uint64_t key) {
    beast::tcp_stream stream(std::move(socket));
    connections_.emplace(key, &stream.socket());
    beast::flat_buffer buffer(kMaxRequestBytes);  // a request that does not fit: read fails, connection closed
    for (int served = 0; served < kMaxRequestsPerConnection && !stopping_; ++served) {
        // A body is read (and ignored) so that a POST gets its 405 instead of a dropped
        // connection; the buffer's 8 KiB bound covers head and body together.
        http::request_parser<http::string_body> parser;
        parser.header_limit(kMaxRequestBytes);
        parser.body_limit(kMaxRequestBytes);
        stream.expires_after(kRequestTimeout);
        auto [read_ec, read_n] = co_await http::async_read(stream, buffer, parser, asio::as_tuple(asio::use_awaitable));
        if (read_ec) break;
        const auto& request = parser.get();
        const bool head = request.method() == http::verb::head;
        const std::string_view method = head ? std::string_view("GET") : std::string_view(request.method_string());
        const Reply reply = co_await answer(method, request.target());
        if (stopping_) break;
        // The last request this connection serves says so, rather than being cut off.
        const bool keep_alive = request.keep_alive() && served + 1 < kMaxRequestsPerConnection;
        // HEAD: GET's status and headers, no body (RFC 9110 9.3.2).
        http::response<http::string_body> response{static_cast<http::status>(reply.status), request.version()};
        response.set(http::field::server, "mxhook");
        response.set(http::field::content_type, reply.content_type);
        if (reply.status == 405) response.set(http::field::allow, "GET, HEAD");
        response.keep_alive(keep_alive);
        response.content_length(reply.body.size());
        if (!head) response.body() = reply.body;
        http::response_serializer<http::string_body> serializer(response);
        if (head) serializer.split(true);  // write the header only
        stream.expires_after(kRequestTimeout);
        boost::system::error_code write_ec;
        if (head) {
            co_await http::async_write_header(stream, serializer, asio::redirect_error(asio::use_awaitable, write_ec));
        } else {
            co_await http::async_write(stream, serializer, asio::redirect_error(asio::use_awaitable, write_ec));
        }
        if (write_ec || !keep_alive) break;
    }
    connections_.erase(key);
    boost::system::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream.socket().close(ignored);
}

asio::awaitable<Server::Reply> Server::answer(std::string_view method, std::string_view target) {
    // Absolute form ("GET http://host:9425/metrics", RFC 9112 3.2.2): only the path counts.
    if (const auto scheme = target.find("://"); scheme != std::string_view::npos && target.front() != '/') {
        const auto path = target.find('/', scheme + 3);
        target = path == std::string_view::npos ? std::string_view("/") : target.substr(path);
    }
    if (const auto query = target.find('?'); query != std::string_view::npos) target = target.substr(0, query);
    const bool known = target == "/metrics" || target == "/healthz" || target == "/readyz";
    if (!known) co_return Reply{404, std::string(kText), "not found\n"};
    if (method != "GET") co_return Reply{405, std::string(kText), "only GET and HEAD\n"};

    if (target == "/healthz") co_return Reply{200, std::string(kText), "ok\n"};

    if (target == "/readyz") {
        const auto problem = co_await readiness_problem();
        if (problem) co_return Reply{503, std::string(kText), "not ready: " + *problem + "\n"};
        co_return Reply{200, std::string(kText), "ready\n"};
    }

    SpoolSnapshot spool;
    if (sources_.spool_snapshot) {
        auto counted = co_await try_blocking(pool_, [this] { return sources_.spool_snapshot(); });
        if (counted) spool = *counted;
        else spdlog::warn("metrics: spool not counted: {}", counted.failure().message);
    }
    const bool ready = !(co_await readiness_problem());
    co_return Reply{200, std::string(kExposition), render(metrics_, spool, build_, ready)};
}

asio::awaitable<std::optional<std::string>> Server::readiness_problem() {
    std::optional<std::string> problem = sources_.smtp_problem ? sources_.smtp_problem() : std::nullopt;
    if (!problem && sources_.spool_problem) {
        auto checked = co_await try_blocking(pool_, [this] { return sources_.spool_problem(); });
        problem = checked ? std::move(*checked) : std::optional<std::string>("spool: " + checked.failure().message);
    }
    co_return problem;
}

}  // namespace mxhook::metrics
