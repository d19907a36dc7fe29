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
                           std::filesystem::path spool_dir, std::function<Activity()> activity)
    : io_(io),
      pool_(pool),
      spool_(spool),
      spool_dir_(std::move(spool_dir)),
      activity_(std::move(activity)) {}

void DrainMonitor::start(std::chrono::milliseconds timeout, std::string token) {
    started_ = true;
    timeout_ = timeout;
    token_ = std::move(token);
    window_start_ = std::chrono::steady_clock::now();
    if (std::exchange(watching_, true)) return;
    // A watch that ends by an exception must not leave later drains without one.
    asio::co_spawn(io_, watch(), [this](const std::exception_ptr& error) {
        if (!error) return;
        watching_ = false;
        try {
            std::rethrow_exception(error);
        } catch (const std::exception& e) {
            spdlog::error("drain: watching the spool failed: {}", e.what());
        }
    });
}

asio::awaitable<void> DrainMonitor::watch() {
    asio::steady_timer timer(io_);
    for (;;) {
        // Drained only when nothing moved while the spool was counted: no session open
        // (none can open while draining), no attempt in flight or launched meanwhile.
        const Activity before = activity_();
        const auto counted = co_await try_blocking(pool_, [this] { return spool_.census(); });
        const Activity after = activity_();
        const auto elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(
            std::chrono::steady_clock::now() - window_start_);
        std::string summary;
        if (!counted) {
            spdlog::warn("drain: cannot count the spool: {}", counted.failure().message);
            summary = "the spool cannot be counted: " + counted.failure().message;
        } else {
            const tool::DrainLeft left = tool::drain_left(*counted);
            const bool quiet = before == after && after.sessions == 0 && after.in_flight == 0;
            summary = tool::describe(left, after.sessions);
            if (left.drained() && quiet) {
                spdlog::info("drain: done in {} ms: {}", elapsed.count(), summary);
                sd_notify(0, "STATUS=drained: nothing left to deliver, taking no mail");
                co_await report(true, summary);
                co_return;
            }
        }
        if (elapsed >= timeout_) {
            spdlog::warn("drain: DRAIN_TIMEOUT_MS={} passed: {}; they stay in the spool, delivered on schedule "
                         "while this runs, or moved by `mxhook spool adopt`",
                         timeout_.count(), summary);
            sd_notify(0, "STATUS=drain timed out: messages left in the spool, taking no mail");
            co_await report(false, summary);
            co_return;
        }
        timer.expires_after(kPollInterval);
        co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
    }
}

asio::awaitable<void> DrainMonitor::report(bool drained, const std::string& summary) {
    watching_ = false;
    const tool::DrainStatus status{token_, drained, summary};
    const auto written = co_await try_blocking(pool_, [this, &status] {
        tool::replace_file(tool::drain_status_path(spool_dir_), tool::to_json(status));
    });
    if (!written) {
        spdlog::warn("drain: cannot write {} for `mxhook drain`: {}", tool::drain_status_path(spool_dir_).string(),
                     written.failure().message);
    }
}

}  // namespace mxhook
