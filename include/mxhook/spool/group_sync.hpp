#pragma once
// Group commit for directory fsyncs. Many commits rename into pending/ at the same time
// and each needs "an fsync of pending/ that started after my rename" before it may
// answer 250. Callers that arrive while one fsync runs share the next one, so N
// concurrent commits cost about two fsyncs of the directory instead of N.
// Thread-safe; blocking (call it on the worker pool).

#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <mutex>
#include <vector>

namespace mxhook::spool {

class GroupSync {
public:
    // do_sync performs one real fsync of dir and throws on failure.
    GroupSync(std::filesystem::path dir, std::function<void(const std::filesystem::path&)> do_sync);

    // Returns once an fsync of the directory that started after this call has succeeded;
    // throws that fsync's error when it failed (never a later success instead: a failed
    // fsync is not retried and then trusted).
    void sync();

    std::uint64_t fsyncs() const;  // real fsyncs done, for tests and stats

private:
    std::filesystem::path dir_;
    std::function<void(const std::filesystem::path&)> do_sync_;
    mutable std::mutex mutex_;
    std::condition_variable done_;
    std::uint64_t started_ = 0;    // generations of fsync started
    std::uint64_t completed_ = 0;  // the latest generation finished
    bool running_ = false;
    // Failed generations still of interest (kept short: waiters look only at their own).
    std::vector<std::pair<std::uint64_t, std::exception_ptr>> failures_;
};

}  // namespace mxhook::spool
