#include "mxhook/drain_monitor.hpp"

#include "mxhook/blocking.hpp"
#include "mxhook/tool/drain_command.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>

namespace mxhook {
namespace asio = boost::asio;

namespace {
constexpr auto kPollInterval = std::chrono::milliseconds(250);
}

DrainMonitor::DrainMonitor(asio::io_context& io, asio::thread_pool& pool, const spool::Spool& spool,
                           std::filesystem::path spool_dir, std::chrono::milliseconds timeout,
                           std::function<std::size_t()> open_sessions)
    : io_(io),
      pool_(pool),
      spool_(spool),
      spool_dir_(std::move(spool_dir)),
      timeout_(timeout),
      open_sessions_(std::move(open_sessions)) {}

void DrainMonitor::start() {
    started_ = true;
    window_start_ = std::chrono::steady_clock::now();
    window_started_at_ = std::chrono::system_clock::now();
    if (std::exchange(watching_, true)) return;
    asio::co_spawn(io_, watch(), asio::detached);
}

asio::awaitable<void> DrainMonitor::watch() {
    asio::steady_timer timer(io_);
    for (;;) {
        const auto counted = co_await try_blocking(pool_, [this] { return spool_.census(); });
        const auto elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(
            std::chrono::steady_clock::now() - window_start_);
        if (!counted) {
            spdlog::warn("drain: cannot count the spool: {}", counted.failure().message);
        } else {
            const tool::DrainLeft left = tool::drain_left(*counted);
            const std::size_t sessions = open_sessions_();
            if (left.drained() && sessions == 0) {
                spdlog::info("drain: done in {} ms: {}", elapsed.count(), tool::describe(left));
                sd_notify(0, "STATUS=drained: nothing left to deliver, taking no mail");
                co_await report(true, tool::describe(left));
                co_return;
            }
            if (elapsed >= timeout_) {
                spdlog::warn("drain: DRAIN_TIMEOUT_MS={} passed: {}; they stay in the spool, delivered on schedule "
                             "while this runs, or moved by `mxhook spool adopt`",
                             timeout_.count(), tool::describe(left, sessions));
                sd_notify(0, "STATUS=drain timed out: messages left in the spool, taking no mail");
                co_await report(false, tool::describe(left, sessions));
                co_return;
            }
        }
        timer.expires_after(kPollInterval);
        co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
    }
}

asio::awaitable<void> DrainMonitor::report(bool drained, std::string summary) {
    watching_ = false;
    const tool::DrainStatus status{
        std::chrono::duration_cast<std::chrono::milliseconds>(window_started_at_.time_since_epoch()).count(), drained,
        std::move(summary)};
    const auto written = co_await try_blocking(pool_, [this, &status] { tool::write_drain_status(spool_dir_, status); });
    if (!written) {
        spdlog::warn("drain: cannot write {} for `mxhook drain`: {}", tool::drain_status_path(spool_dir_).string(),
                     written.failure().message);
    }
}

}  // namespace mxhook
