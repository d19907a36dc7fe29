#include "mxhook/spool/group_sync.hpp"

#include <algorithm>

namespace mxhook::spool {

GroupSync::GroupSync(std::filesystem::path dir, std::function<void(const std::filesystem::path&)> do_sync)
    : dir_(std::move(dir)), do_sync_(std::move(do_sync)) {}

std::uint64_t GroupSync::fsyncs() const {
    std::lock_guard lock(mutex_);
    return completed_;
}

void GroupSync::sync() {
    std::unique_lock lock(mutex_);
    // The first generation to start after now covers this caller's earlier rename.
    const std::uint64_t needed = started_ + 1;
    while (completed_ < needed) {
        if (running_) {
            done_.wait(lock);
            continue;
        }
        running_ = true;
        const std::uint64_t generation = ++started_;
        lock.unlock();
        std::exception_ptr error;
        try {
            do_sync_(dir_);
        } catch (...) {
            error = std::current_exception();
        }
        lock.lock();
        running_ = false;
        completed_ = generation;
        if (error) {
            failures_.emplace_back(generation, error);
            if (failures_.size() > 64) failures_.erase(failures_.begin());
        }
        done_.notify_all();
    }
    // Generations run one at a time, so the one numbered `needed` is the one that covered us.
    const auto failed = std::find_if(failures_.begin(), failures_.end(),
                                     [needed](const auto& failure) { return failure.first == needed; });
    if (failed != failures_.end()) std::rethrow_exception(failed->second);
}

}  // namespace mxhook::spool
