#include "mxhook/spool/disk_guard.hpp"

#include "mxhook/blocking.hpp"
#include "mxhook/metrics/metrics.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <spdlog/spdlog.h>

#include <cerrno>
#include <limits>
#include <system_error>

#include <sys/statvfs.h>

namespace mxhook::spool {
namespace asio = boost::asio;

std::uint64_t free_bytes(const std::filesystem::path& path) {
    struct statvfs fs {};
    if (::statvfs(path.c_str(), &fs) != 0) {
        throw std::system_error(errno, std::generic_category(), "statvfs " + path.string());
    }
    return static_cast<std::uint64_t>(fs.f_bavail) * static_cast<std::uint64_t>(fs.f_frsize);
}

DiskGuard::DiskGuard(asio::io_context& io, asio::thread_pool& pool, std::filesystem::path path,
                     std::uint64_t min_free, std::chrono::milliseconds interval)
    : io_(io), pool_(pool), path_(std::move(path)), min_free_(min_free), interval_(interval), timer_(io) {}

void DiskGuard::start() {
    try {
        record(free_bytes(path_));
    } catch (const std::exception& e) {
        spdlog::warn("spool: free space unknown: {}", e.what());
    }
    asio::co_spawn(io_, loop(), asio::detached);
}

void DiskGuard::stop() {
    stopping_ = true;
    timer_.cancel();
}

std::optional<std::uint64_t> DiskGuard::spare() const {
    const std::int64_t free = free_.load(std::memory_order_relaxed);
    if (min_free_ == 0 || free < 0) return std::nullopt;
    const auto bytes = static_cast<std::uint64_t>(free);
    return bytes > min_free_ ? bytes - min_free_ : 0;
}

bool DiskGuard::check_low(std::uint64_t* free_out) {
    const std::uint64_t free = free_bytes(path_);
    record(free);
    if (free_out) *free_out = free;
    return min_free_ > 0 && free < min_free_;
}

void DiskGuard::record(std::uint64_t free) {
    const auto clamped = static_cast<std::int64_t>(
        std::min<std::uint64_t>(free, static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())));
    free_.store(clamped, std::memory_order_relaxed);
    metrics::global().spool_free_bytes.set(clamped);
    const bool low = min_free_ > 0 && free < min_free_;
    if (low_.exchange(low, std::memory_order_relaxed) != low) {
        if (low) {
            spdlog::error("spool: {} bytes free on {}, below SPOOL_MIN_FREE_BYTES={}: MAIL gets 452 until space "
                          "returns",
                          free, path_.string(), min_free_);
        } else {
            spdlog::warn("spool: {} bytes free on {} again: taking mail", free, path_.string());
        }
    }
}

asio::awaitable<void> DiskGuard::loop() {
    while (!stopping_) {
        timer_.expires_after(interval_);
        co_await timer_.async_wait(asio::as_tuple(asio::use_awaitable));  // cancelled: stopping_ says
        if (stopping_) co_return;
        const auto measured = co_await try_blocking(pool_, [this] { return free_bytes(path_); });
        if (measured) {
            record(*measured);
        } else {
            // Keep the last value: a transient statvfs failure must not open or close the gate.
            spdlog::warn("spool: free space not measured: {}", measured.failure().message);
        }
    }
}

}  // namespace mxhook::spool
