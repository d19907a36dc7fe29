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
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

namespace mxhook {

class DrainMonitor {
public:
    // What else than the spool tells whether mail is still on its way: sessions open (a
    // message in DATA may be in no file yet), attempts in flight and attempts launched so
    // far (an attempt moves its item between directories while they are counted).
    struct Activity {
        std::size_t sessions = 0;
        std::size_t in_flight = 0;
        std::uint64_t launched = 0;
        bool operator==(const Activity&) const = default;
    };
    DrainMonitor(boost::asio::io_context& io, boost::asio::thread_pool& pool, const spool::Spool& spool,
                 std::filesystem::path spool_dir, std::function<Activity()> activity);
    // Starts watching for `timeout`, answering the request `token` (empty: a bare SIGUSR1);
    // while it watches, a new start() begins a new window (and reports once, at its end).
    void start(std::chrono::milliseconds timeout, std::string token);
    bool started() const { return started_; }

private:
    boost::asio::awaitable<void> watch();
    boost::asio::awaitable<void> report(bool drained, const std::string& summary);

    boost::asio::io_context& io_;
    boost::asio::thread_pool& pool_;
    const spool::Spool& spool_;
    std::filesystem::path spool_dir_;
    std::chrono::milliseconds timeout_{0};
    std::string token_;
    std::function<Activity()> activity_;
    bool started_ = false;
    bool watching_ = false;
    std::chrono::steady_clock::time_point window_start_;
};

}  // namespace mxhook
