#include "mxhook/spool/group_sync.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>
#include <vector>

namespace mxhook::spool {
namespace {

TEST(GroupSync, OneCallerOneFsync) {
    int calls = 0;
    GroupSync sync("/d", [&](const std::filesystem::path& dir) {
        EXPECT_EQ(dir, "/d");
        ++calls;
    });
    sync.sync();
    sync.sync();
    EXPECT_EQ(calls, 2);  // each later call needs an fsync that started after it
    EXPECT_EQ(sync.fsyncs(), 2u);
}

// Every caller returns only after an fsync that started after its call finished, and
// concurrent callers share fsyncs (that is the point: one fsync for many commits).
TEST(GroupSync, ConcurrentCallersShareFsyncsAndAreAllCovered) {
    std::atomic<std::uint64_t> clock{0};  // a logical clock shared by callers and fsyncs
    struct Sync {
        std::uint64_t started, finished;
    };
    std::mutex log_mutex;
    std::vector<Sync> syncs;
    GroupSync sync("/d", [&](const std::filesystem::path&) {
        const auto started = ++clock;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));  // what a real fsync costs
        const auto finished = ++clock;
        std::lock_guard lock(log_mutex);
        syncs.push_back({started, finished});
    });

    constexpr int kThreads = 8;
    constexpr int kCalls = 40;
    std::atomic<int> uncovered{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&] {
            for (int i = 0; i < kCalls; ++i) {
                const auto called = ++clock;
                sync.sync();
                const auto returned = ++clock;
                std::lock_guard lock(log_mutex);
                bool covered = false;
                for (const auto& s : syncs) covered = covered || (s.started > called && s.finished < returned);
                if (!covered) ++uncovered;
            }
        });
    }
    for (auto& thread : threads) thread.join();
    EXPECT_EQ(uncovered.load(), 0);
    EXPECT_LT(sync.fsyncs(), static_cast<std::uint64_t>(kThreads * kCalls) / 2);
}

TEST(GroupSync, AFailedFsyncFailsItsCallersAndIsNotTrustedLater) {
    int calls = 0;
    GroupSync sync("/d", [&](const std::filesystem::path&) {
        if (++calls == 1) throw std::runtime_error("EIO");
    });
    EXPECT_THROW(sync.sync(), std::runtime_error);
    EXPECT_NO_THROW(sync.sync());  // a new fsync, started after the failure
    EXPECT_EQ(calls, 2);
}

}  // namespace
}  // namespace mxhook::spool
