// try_blocking: work runs off the event loop thread, and whatever it throws comes back
// as a value the caller branches on (the dispatcher and the session rely on the codes).
#include "mxhook/blocking.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/thread_pool.hpp>
#include <gtest/gtest.h>

#include <chrono>
#include <stdexcept>
#include <thread>

namespace {
namespace asio = boost::asio;

template <typename Body>
void run_on_loop(Body body) {
    asio::io_context io;
    asio::thread_pool pool(1);
    bool finished = false;
    asio::co_spawn(io, body(pool), [&](std::exception_ptr e) {
        finished = true;
        if (e) std::rethrow_exception(e);
    });
    io.run_for(std::chrono::seconds(10));
    pool.join();
    EXPECT_TRUE(finished);
}

TEST(TryBlocking, ValueComesBackAndTheLoopResumesOnItsOwnThread) {
    run_on_loop([](asio::thread_pool& pool) -> asio::awaitable<void> {
        const auto loop = std::this_thread::get_id();
        auto worked = co_await mxhook::try_blocking(pool, [] { return std::this_thread::get_id(); });
        EXPECT_TRUE(worked.ok());
        if (!worked.ok()) co_return;  // ASSERT_* cannot return from a coroutine
        EXPECT_NE(*worked, loop);
        EXPECT_EQ(std::this_thread::get_id(), loop);
    });
}

TEST(TryBlocking, SystemErrorKeepsItsCode) {
    run_on_loop([](asio::thread_pool& pool) -> asio::awaitable<void> {
        auto full = co_await mxhook::try_blocking(pool, []() -> int {
            throw std::system_error(std::make_error_code(std::errc::no_space_on_device), "write message.eml");
        });
        EXPECT_FALSE(full.ok());
        if (full.ok()) co_return;
        EXPECT_TRUE(full.failure().is(std::errc::no_space_on_device));
        EXPECT_NE(full.failure().message.find("write message.eml"), std::string::npos);
    });
}

TEST(TryBlocking, OtherErrorsAreBadMessageWithTheirText) {
    run_on_loop([](asio::thread_pool& pool) -> asio::awaitable<void> {
        auto parsed = co_await mxhook::try_blocking(pool, [] { throw std::runtime_error("meta.json: not JSON"); });
        EXPECT_FALSE(parsed.ok());
        if (parsed.ok()) co_return;
        EXPECT_TRUE(parsed.failure().is(std::errc::bad_message));
        EXPECT_EQ(parsed.failure().message, "meta.json: not JSON");
        auto fine = co_await mxhook::try_blocking(pool, [] {});
        EXPECT_TRUE(fine.ok());
    });
}

TEST(TryBlocking, OutOfMemoryIsNotMistakenForBadData) {
    const auto failure = mxhook::failure_of(std::bad_alloc());
    EXPECT_TRUE(failure.is(std::errc::not_enough_memory));
}

}  // namespace
