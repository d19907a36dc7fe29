#pragma once
// The operator's HTTP endpoint (METRICS_LISTEN): GET /metrics (Prometheus text format
// 0.0.4), /healthz (200 while the event loop turns) and /readyz (200 when mxhook can take
// mail, 503 with the reason otherwise). Boost.Beast on the daemon's event loop; the spool
// is read on the disk pool. It can never hold up SMTP: a request over 8 KiB, a slow client
// (5 s per request) or more than 16 connections at once are simply closed.

#include "mxhook/config.hpp"
#include "mxhook/metrics/metrics.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/thread_pool.hpp>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>

namespace mxhook::metrics {

struct Sources {
    // On the io thread: why SMTP cannot take mail (a listener down, shutting down), if so.
    std::function<std::optional<std::string>()> smtp_problem;
    // On the pool (blocking): why the spool cannot take mail (not writable, read-only, below
    // SPOOL_MIN_FREE_BYTES), if so.
    std::function<std::optional<std::string>()> spool_problem;
    // On the pool (blocking): the spool's items, bytes and oldest item.
    std::function<SpoolSnapshot()> spool_snapshot;
};

class Server {
public:
    Server(boost::asio::io_context& io, boost::asio::thread_pool& pool, const Metrics& metrics, Sources sources,
           BuildInfo build);

    // Binds; throws std::runtime_error naming METRICS_LISTEN on failure.
    void listen(const HostPort& address);
    void start();
    // Closes the listener and every connection (on the io thread).
    void stop();

private:
    struct Reply {
        unsigned status = 200;
        std::string content_type;
        std::string body;
    };
    boost::asio::awaitable<void> accept_loop();
    boost::asio::awaitable<void> serve(boost::asio::ip::tcp::socket socket, std::uint64_t key);
    boost::asio::awaitable<Reply> answer(std::string_view method, std::string_view target);
    // Why /readyz would fail now; nullopt when ready.
    boost::asio::awaitable<std::optional<std::string>> readiness_problem();

    boost::asio::io_context& io_;
    boost::asio::thread_pool& pool_;
    const Metrics& metrics_;
    Sources sources_;
    BuildInfo build_;
    std::unique_ptr<boost::asio::ip::tcp::acceptor> acceptor_;
    std::unordered_map<std::uint64_t, boost::asio::ip::tcp::socket*> connections_;
    std::uint64_t next_key_ = 0;
    bool stopping_ = false;
};

}  // namespace mxhook::metrics
