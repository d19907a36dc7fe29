#pragma once
// The listeners: one acceptor per SMTP_LISTEN address, a session coroutine per
// connection, and the bookkeeping for a graceful stop.

#include "mxhook/config.hpp"
#include "mxhook/smtp/session.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace mxhook::smtp {

class Server {
public:
    Server(boost::asio::io_context& io, SessionContext& context);

    // Binds every address; throws std::runtime_error naming SMTP_LISTEN on failure.
    void listen(const std::vector<ListenAddress>& addresses);
    void start();
    // Stops accepting and asks every session to finish; on_idle runs (on the io thread)
    // once the last session has ended, at once if there is none.
    void stop(std::function<void()> on_idle);
    // Drain (`mxhook drain`, SIGUSR1): the listeners stay open but answer every new
    // connection 421 4.3.2 (a sender then tries the next MX); idle sessions get 421 now,
    // a session in DATA finishes its message first. /readyz fails from here on.
    void drain();
    bool draining() const { return draining_; }
    std::size_t session_count() const { return sessions_.size(); }
    // Why no new mail can come in (not listening, stopping, draining), for /readyz; nullopt
    // when it can.
    std::optional<std::string> problem() const;

private:
    boost::asio::awaitable<void> accept_loop(boost::asio::ip::tcp::acceptor& acceptor);
    // SMTP_PROXY_PROTOCOL_FROM: reads the balancer's PROXY header (bounded in size and
    // time), then starts the session for the client it names.
    boost::asio::awaitable<void> proxied(boost::asio::ip::tcp::socket socket, std::string peer, std::uint64_t key);
    // SMTP_MAX_CONNECTIONS_PER_IP for the client's address, then the session (with any
    // bytes that arrived behind the PROXY header).
    void start_session(boost::asio::ip::tcp::socket socket, std::string ip, std::string initial_bytes);
    void session_ended(Session* session, const std::string& ip);
    // Over SMTP_MAX_CONNECTIONS or SMTP_MAX_CONNECTIONS_PER_IP: 421 and close.
    void refuse(boost::asio::ip::tcp::socket socket, std::string_view why);

    boost::asio::io_context& io_;
    SessionContext& context_;
    std::vector<std::unique_ptr<boost::asio::ip::tcp::acceptor>> acceptors_;
    std::unordered_map<Session*, std::weak_ptr<Session>> sessions_;
    std::unordered_map<std::string, std::size_t> per_ip_;  // open sessions by client address
    // Connections still in their PROXY header, by key; they count towards SMTP_MAX_CONNECTIONS.
    std::unordered_map<std::uint64_t, boost::asio::ip::tcp::socket*> handshakes_;
    std::uint64_t next_handshake_ = 0;
    std::function<void()> on_idle_;
    bool stopping_ = false;
    bool draining_ = false;
};

}  // namespace mxhook::smtp
