#include "mxhook/smtp/server.hpp"

#include "mxhook/listener.hpp"
#include "mxhook/metrics/metrics.hpp"
#include "mxhook/smtp/proxy_protocol.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <stdexcept>

namespace mxhook::smtp {
namespace asio = boost::asio;
using asio::ip::tcp;

namespace {
// A balancer sends its PROXY header at once; a peer that does not is not one. (Or within
// SMTP_TIMEOUT_MS, when that is shorter.)
constexpr auto kProxyHeaderTimeout = std::chrono::seconds(10);
constexpr std::string_view kDrainingReply = "421 4.3.2 Service not available: draining, try another MX\r\n";
}  // namespace

Server::Server(asio::io_context& io, SessionContext& context) : io_(io), context_(context) {}

void Server::listen(const std::vector<ListenAddress>& addresses) {
    for (const auto& address : addresses) {
        const std::string label = address.host + ":" + std::to_string(address.port);
        try {
            acceptors_.push_back(open_listener(io_, address, asio::socket_base::max_listen_connections));
            spdlog::info("smtp: listening on {}", label);
        } catch (const std::exception& e) {
            throw std::runtime_error("SMTP_LISTEN: cannot listen on " + label + ": " + e.what());
        }
    }
}

void Server::start() {
    for (auto& acceptor : acceptors_) {
        asio::co_spawn(io_, accept_loop(*acceptor), asio::detached);
    }
}

asio::awaitable<void> Server::accept_loop(tcp::acceptor& acceptor) {
    for (;;) {
        auto [ec, socket] = co_await acceptor.async_accept(asio::as_tuple(asio::use_awaitable));
        if (stopping_) co_return;
        if (ec) {
            if (ec == asio::error::operation_aborted) co_return;
            // Out of descriptors and the like: log, back off briefly, keep serving.
            spdlog::warn("smtp: accept failed: {}", ec.message());
            asio::steady_timer pause(io_, std::chrono::milliseconds(100));
            co_await pause.async_wait(asio::as_tuple(asio::use_awaitable));
            continue;
        }
        boost::system::error_code ignored;
        socket.set_option(tcp::no_delay(true), ignored);
        const auto endpoint = socket.remote_endpoint(ignored);
        if (ignored) continue;  // already gone
        auto address = endpoint.address();
        if (address.is_v6() && address.to_v6().is_v4_mapped()) {
            address = asio::ip::make_address_v4(asio::ip::v4_mapped, address.to_v6());
        }
        std::string ip = address.to_string();
        const auto& trusted = context_.config.smtp_proxy_protocol_from;
        const bool proxied_listener = !trusted.empty();
        if (proxied_listener &&
            std::none_of(trusted.begin(), trusted.end(), [&ip](const Cidr& block) { return cidr_contains(block, ip); })) {
            // Behind a balancer, a direct connection is someone going around it: no reply
            // (not even "too many connections") that could tell it a server listens here.
            spdlog::info("smtp peer={} refused: not in SMTP_PROXY_PROTOCOL_FROM", ip);
            socket.close(ignored);
            continue;
        }
        if (draining_) {
            // Behind a balancer this also answers its health check: it takes the
            // replica out of rotation on its own.
            refuse(std::move(socket), kDrainingReply);
            metrics::global().smtp_refused_draining.add();
            spdlog::info("smtp {}={} refused: draining", proxied_listener ? "peer" : "client", ip);
            continue;
        }
        if (sessions_.size() + handshakes_.size() >= context_.config.smtp_max_connections) {
            refuse(std::move(socket), "421 4.7.0 Too many connections, try again later\r\n");
            metrics::global().smtp_refused_max_connections.add();
            spdlog::warn("smtp {}={} refused: {} connections open (SMTP_MAX_CONNECTIONS)",
                         proxied_listener ? "peer" : "client", ip, sessions_.size() + handshakes_.size());
            continue;
        }
        if (!proxied_listener) {
            start_session(std::move(socket), std::move(ip), {});
            continue;
        }
        const std::uint64_t key = next_handshake_++;
        asio::co_spawn(io_, proxied(std::move(socket), std::move(ip), key), asio::detached);
    }
}

asio::awaitable<void> Server::proxied(tcp::socket socket, std::string peer, std::uint64_t key) {
    using namespace asio::experimental::awaitable_operators;
    handshakes_.emplace(key, &socket);  // this frame's socket: stop() cancels its read
    std::string bytes;
    ProxyParse parsed;
    const auto timeout = std::min<std::chrono::milliseconds>(kProxyHeaderTimeout, context_.config.smtp_timeout);
    asio::steady_timer deadline(io_, timeout);
    std::array<char, 512> chunk{};
    while (parsed.status == ProxyParse::Status::need_more && !stopping_) {
        auto raced = co_await (socket.async_read_some(asio::buffer(chunk), asio::as_tuple(asio::use_awaitable)) ||
                               deadline.async_wait(asio::as_tuple(asio::use_awaitable)));
        if (raced.index() == 1) {
            parsed.status = ProxyParse::Status::invalid;
            parsed.error = "no PROXY header within " + std::to_string(timeout.count()) + " ms";
            break;
        }
        const auto [ec, n] = std::get<0>(raced);
        if (ec) {
            parsed.status = ProxyParse::Status::invalid;
            parsed.error = "connection ended before the PROXY header: " + ec.message();
            break;
        }
        bytes.append(chunk.data(), n);
        parsed = parse_proxy_header(bytes);
    }
    handshakes_.erase(key);
    boost::system::error_code ignored;
    if (stopping_ || parsed.status != ProxyParse::Status::done) {
        if (!stopping_) spdlog::info("smtp peer={} closed: {}", peer, parsed.error);
        socket.close(ignored);
        co_return;
    }
    std::string ip = parsed.header.local ? peer : std::move(parsed.header.source_ip);
    spdlog::debug("smtp peer={} PROXY v{}: client {}", peer, parsed.header.version, ip);
    start_session(std::move(socket), std::move(ip), bytes.substr(parsed.consumed));
}

void Server::start_session(tcp::socket socket, std::string ip, std::string initial_bytes) {
    if (draining_) {  // the drain began during its PROXY header
        refuse(std::move(socket), kDrainingReply);
        metrics::global().smtp_refused_draining.add();
        spdlog::info("smtp client={} refused: draining", ip);
        return;
    }
    auto& from_ip = per_ip_[ip];
    if (from_ip >= context_.config.smtp_max_connections_per_ip) {
        refuse(std::move(socket), "421 4.7.0 Too many connections from your address, try again later\r\n");
        metrics::global().smtp_refused_max_connections_per_ip.add();
        spdlog::info("smtp client={} refused: {} connections from it (SMTP_MAX_CONNECTIONS_PER_IP)", ip, from_ip);
        if (from_ip == 0) per_ip_.erase(ip);
        return;
    }
    ++from_ip;
    auto session = std::make_shared<Session>(std::move(socket), context_, ip, std::move(initial_bytes));
    sessions_.emplace(session.get(), session);
    metrics::global().smtp_connections.add();
    metrics::global().smtp_connections_open.add();
    // The lambda's capture keeps the session alive for as long as it runs.
    asio::co_spawn(
        io_, [session]() -> asio::awaitable<void> { co_await session->run(); },
        [this, raw = session.get(), ip = std::move(ip)](std::exception_ptr) { session_ended(raw, ip); });
}

void Server::refuse(tcp::socket socket, std::string_view why) {
    // The reply fits in the socket buffer, so the write completes at once; the socket
    // closes when the handler (which owns it) is done.
    auto owned = std::make_shared<tcp::socket>(std::move(socket));
    asio::async_write(*owned, asio::buffer(why.data(), why.size()),
                      [owned](const boost::system::error_code&, std::size_t) {
                          boost::system::error_code ignored;
                          owned->shutdown(tcp::socket::shutdown_both, ignored);
                          owned->close(ignored);
                      });
}

void Server::session_ended(Session* session, const std::string& ip) {
    sessions_.erase(session);
    metrics::global().smtp_connections_open.sub();
    if (auto it = per_ip_.find(ip); it != per_ip_.end() && --it->second == 0) per_ip_.erase(it);
    if (stopping_ && sessions_.empty() && on_idle_) {
        auto done = std::move(on_idle_);
        on_idle_ = nullptr;
        done();
    }
}

std::optional<std::string> Server::problem() const {
    if (stopping_) return "shutting down";
    if (draining_) return "draining";
    if (acceptors_.empty()) return "no SMTP listener";
    for (const auto& acceptor : acceptors_) {
        if (!acceptor->is_open()) return "an SMTP listener is closed";
    }
    return std::nullopt;
}

void Server::drain() {
    draining_ = true;
    for (auto& [raw, weak] : sessions_) {
        if (auto session = weak.lock()) session->shutdown();
    }
}

void Server::stop(std::function<void()> on_idle) {
    stopping_ = true;
    on_idle_ = std::move(on_idle);
    for (auto& acceptor : acceptors_) {
        boost::system::error_code ec;
        acceptor->close(ec);
    }
    for (auto& [raw, weak] : sessions_) {
        if (auto session = weak.lock()) session->shutdown();
    }
    for (auto& [key, socket] : handshakes_) {
        boost::system::error_code ignored;
        socket->cancel(ignored);  // the PROXY stage ends; its coroutine closes the socket
    }
    if (sessions_.empty() && on_idle_) {
        auto done = std::move(on_idle_);
        on_idle_ = nullptr;
        asio::post(io_, std::move(done));
    }
}

}  // namespace mxhook::smtp
