#pragma once
// One SMTP connection: owns the socket, runs the protocol state machine, streams DATA
// through the decoder into the spool, and commits before it answers 250. Straight-line
// coroutine code; a watchdog timer enforces SMTP_TIMEOUT_MS on every read and write.

#include "mxhook/config.hpp"
#include "mxhook/decision/client.hpp"
#include "mxhook/smtp/data_decoder.hpp"
#include "mxhook/smtp/protocol.hpp"
#include "mxhook/smtp/reverse_dns.hpp"
#include "mxhook/smtp/tls.hpp"
#include "mxhook/spool/spool.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>

#include <array>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace mxhook::smtp {

// What every session shares; lives as long as the server.
struct SessionContext {
    const Config& config;
    ProtocolSettings protocol;
    spool::Spool& spool;
    boost::asio::thread_pool& pool;
    std::function<void(const std::string& id)> on_queued;  // called on the io thread after 250
    decision::Client* decision = nullptr;                  // asked before commit when enabled
    TlsCredentials* tls = nullptr;                         // STARTTLS offered when set
    ReverseDns* reverse_dns = nullptr;                     // client names looked up when set
};

class Session : public std::enable_shared_from_this<Session> {
public:
    // client_ip: the peer's address as text (IPv4-mapped IPv6 shown as IPv4).
    Session(boost::asio::ip::tcp::socket socket, SessionContext& context, std::string client_ip);

    boost::asio::awaitable<void> run();
    // Server shutdown: an idle session answers 421 and closes at once; a session in
    // DATA finishes its message first.
    void shutdown();

private:
    boost::asio::awaitable<void> serve();
    boost::asio::awaitable<void> watchdog();
    boost::asio::awaitable<bool> read_more();
    boost::asio::awaitable<void> flush();
    // Runs the DATA phase after the DATA command was accepted (reply354 is its 354).
    // Returns the final reply, or nullopt when the connection was lost.
    boost::asio::awaitable<std::optional<Step>> receive_message(const std::string& reply354);
    boost::asio::awaitable<void> discard(spool::TmpItem& item);
    // Asks the decision API (when enabled); nullopt means allow, else the outcome to answer.
    boost::asio::awaitable<std::optional<std::pair<DataOutcome, std::string>>> ask_decision(
        const spool::TmpItem& item, const spool::Meta& meta);
    // Commits the item: one spool item, or one per recipient in "each" mode. Returns the ids.
    boost::asio::awaitable<std::vector<std::string>> commit(spool::TmpItem& item, const spool::Meta& meta);
    boost::asio::awaitable<void> close_with(std::string_view reply);
    // Runs the handshake after "220 Ready to start TLS"; false when it failed.
    boost::asio::awaitable<bool> start_tls();
    void arm_deadline();
    void lookup_client_host();
    std::size_t available() const { return rlen_ - rpos_; }

    boost::asio::ip::tcp::socket socket_;
    SessionContext& context_;
    Protocol protocol_;
    boost::asio::steady_timer watchdog_timer_;
    std::chrono::steady_clock::time_point deadline_;          // of the read or write under way
    std::chrono::steady_clock::time_point session_deadline_;  // SMTP_MAX_SESSION_MS from the start
    std::shared_ptr<boost::asio::ssl::context> tls_context_;  // kept alive while tls_ uses it
    std::unique_ptr<boost::asio::ssl::stream<boost::asio::ip::tcp::socket&>> tls_;
    std::string tls_description_;
    std::string client_ip_;
    std::string client_host_;              // reverse-DNS name once known, else ""
    boost::asio::steady_timer host_lookup_timer_;  // expires at the lookup's bound; cancelled on its answer
    bool host_lookup_done_ = false;
    std::string out_;                      // replies not yet written
    std::array<char, 65536> rbuf_{};       // bytes read, [rpos_, rlen_) not yet consumed
    std::size_t rpos_ = 0;
    std::size_t rlen_ = 0;
    bool shutting_down_ = false;
    bool timed_out_ = false;
    bool closed_ = false;
};

}  // namespace mxhook::smtp
