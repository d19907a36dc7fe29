#pragma once
// The daemon's side of a drain (`mxhook drain`, SIGUSR1): after the listeners and the
// dispatcher were told, it counts the spool every kPollInterval until nothing is left to
// deliver and no session is open, or DRAIN_TIMEOUT_MS passes, and logs the outcome once
// and writes it to SPOOL_DIR/.drain for `mxhook drain` (tool::DrainStatus).
// The daemon then goes on (not ready, delivering what is left on schedule) until SIGTERM.

#include "mxhook/spool/spool.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/thread_pool.hpp>

#include <chrono>
#include <cstddef>
#include <filesystem>
#include <functional>
#include <string>

namespace mxhook {

class DrainMonitor {
public:
    DrainMonitor(boost::asio::io_context& io, boost::asio::thread_pool& pool, const spool::Spool& spool,
                 std::filesystem::path spool_dir, std::chrono::milliseconds timeout,
                 std::function<std::size_t()> open_sessions);
    // Starts watching; while it watches, a new start() begins the DRAIN_TIMEOUT_MS window
    // again (and reports once, at its end).
    void start();
    bool started() const { return started_; }

private:
    boost::asio::awaitable<void> watch();
    boost::asio::awaitable<void> report(bool drained, std::string summary);

    boost::asio::io_context& io_;
    boost::asio::thread_pool& pool_;
    const spool::Spool& spool_;
    std::filesystem::path spool_dir_;
    std::chrono::milliseconds timeout_;
    std::function<std::size_t()> open_sessions_;
    bool started_ = false;
    bool watching_ = false;
    std::chrono::steady_clock::time_point window_start_;
    std::chrono::system_clock::time_point window_started_at_;  // the same, for the report
};

}  // namespace mxhook
