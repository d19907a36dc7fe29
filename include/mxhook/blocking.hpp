#pragma once
// Runs blocking work (write, fsync, rename, readdir) on the worker pool and resumes
// the awaiting coroutine on its own executor, so the io_context thread never blocks.

#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <type_traits>
#include <utility>

namespace mxhook {

template <typename F>
auto run_blocking(boost::asio::thread_pool& pool, F fn)
    -> boost::asio::awaitable<std::invoke_result_t<F&>> {
    using R = std::invoke_result_t<F&>;
    // co_spawn onto the pool; the completion is delivered back through the caller's
    // executor. Exceptions thrown by fn are rethrown in the caller.
    co_return co_await boost::asio::co_spawn(
        pool,
        [f = std::move(fn)]() mutable -> boost::asio::awaitable<R> {
            if constexpr (std::is_void_v<R>) {
                f();
                co_return;
            } else {
                co_return f();
            }
        },
        boost::asio::use_awaitable);
}

}  // namespace mxhook
