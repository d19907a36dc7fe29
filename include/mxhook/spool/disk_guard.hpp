#pragma once
// The disk guard (SPOOL_MIN_FREE_BYTES, like Postfix's queue_minfree): measures the free
// space of the spool's filesystem every second on the disk pool, so that sessions can
// answer MAIL with 452 before a message is written that the disk cannot hold, and
// /readyz can take the host out of a balancer's rotation. Acceptance resumes by itself
// at the first measurement above the guard.

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>

namespace mxhook::spool {

// Bytes an unprivileged writer may still use on the filesystem holding `path` (statvfs
// f_bavail × f_frsize). Blocking. Throws std::system_error.
std::uint64_t free_bytes(const std::filesystem::path& path);

class DiskGuard {
public:
    // min_free 0: no guard (spare() is always nullopt, low() always false).
    DiskGuard(boost::asio::io_context& io, boost::asio::thread_pool& pool, std::filesystem::path path,
              std::uint64_t min_free, std::chrono::milliseconds interval = std::chrono::seconds(1));

    // Measures once (blocking, on the caller's thread) and starts the periodic measurement.
    void start();
    void stop();

    // Space above the guard at the last measurement: 0 when below it; nullopt with no
    // guard or before a first successful measurement. Any thread.
    std::optional<std::uint64_t> spare() const;
    // Measures now (blocking); true when below the guard. For /readyz, on the pool.
    bool check_low(std::uint64_t* free_out = nullptr);
    std::uint64_t min_free() const { return min_free_; }

private:
    boost::asio::awaitable<void> loop();
    void record(std::uint64_t free);

    boost::asio::io_context& io_;
    boost::asio::thread_pool& pool_;
    std::filesystem::path path_;
    std::uint64_t min_free_;
    std::chrono::milliseconds interval_;
    boost::asio::steady_timer timer_;
    std::atomic<std::int64_t> free_{-1};  // -1: not measured
    std::atomic<bool> low_{false};
    bool stopping_ = false;
};

}  // namespace mxhook::spool
