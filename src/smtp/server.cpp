#include "mxhook/smtp/server.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ip/v6_only.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <spdlog/spdlog.h>

#include <stdexcept>

namespace mxhook::smtp {
namespace asio = boost::asio;
using asio::ip::tcp;

Server::Server(asio::io_context& io, SessionContext& context) : io_(io), context_(context) {}

void Server::listen(const std::vector<ListenAddress>& addresses) {
    for (const auto& address : addresses) {
        const std::string label = address.host + ":" + std::to_string(address.port);
        try {
            const tcp::endpoint endpoint(asio::ip::make_address(address.host), address.port);
            auto acceptor = std::make_unique<tcp::acceptor>(io_);
            acceptor->open(endpoint.protocol());
            acceptor->set_option(tcp::acceptor::reuse_address(true));
            // [::]:25 next to 0.0.0.0:25 must not collide: IPv6 sockets take IPv6 only.
            if (endpoint.address().is_v6()) acceptor->set_option(asio::ip::v6_only(true));
            acceptor->bind(endpoint);
            acceptor->listen(asio::socket_base::max_listen_connections);
            acceptors_.push_back(std::move(acceptor));
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
        auto session = std::make_shared<Session>(std::move(socket), context_);
        sessions_.emplace(session.get(), session);
        // The lambda's capture keeps the session alive for as long as it runs.
        asio::co_spawn(
            io_, [session]() -> asio::awaitable<void> { co_await session->run(); },
            [this, raw = session.get()](std::exception_ptr) { session_ended(raw); });
    }
}

void Server::session_ended(Session* session) {
    sessions_.erase(session);
    if (stopping_ && sessions_.empty() && on_idle_) {
        auto done = std::move(on_idle_);
        on_idle_ = nullptr;
        done();
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
    if (sessions_.empty() && on_idle_) {
        auto done = std::move(on_idle_);
        on_idle_ = nullptr;
        asio::post(io_, std::move(done));
    }
}

}  // namespace mxhook::smtp
