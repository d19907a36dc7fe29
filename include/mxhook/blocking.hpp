#pragma once
// Runs blocking work (write, fsync, rename, readdir) on the worker pool and resumes
// the awaiting coroutine on its own executor, so the io_context thread never blocks.
//
// On the I/O path errors are values: try_blocking hands back a Result that carries either
// the value or the Failure (an error_code and the text to log), so the caller branches with
// co_await in one place instead of catching into a flag.

#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <optional>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>
#include <variant>

namespace mxhook {

// Why blocking work failed. A std::system_error keeps its code (ENOENT, ENOSPC, EEXIST...);
// anything else (a parse error, a bad_alloc) becomes std::errc::bad_message, with its text.
struct Failure {
    std::error_code code;
    std::string message;

    bool is(std::errc e) const { return code == e; }
};

Failure failure_of(const std::exception& e);

template <typename T>
class Result {
public:
    // Asio's co_spawn needs a default value for the completion it hands back.
    Result() : state_(Failure{std::make_error_code(std::errc::operation_canceled), "not run"}) {}
    Result(T value) : state_(std::move(value)) {}  // NOLINT: implicit, like std::optional
    Result(Failure failure) : state_(std::move(failure)) {}

    bool ok() const { return state_.index() == 0; }
    explicit operator bool() const { return ok(); }
    T& value() { return std::get<0>(state_); }
    const T& value() const { return std::get<0>(state_); }
    T& operator*() { return value(); }
    const T& operator*() const { return value(); }
    T* operator->() { return &value(); }
    const T* operator->() const { return &value(); }
    const Failure& failure() const { return std::get<1>(state_); }

private:
    std::variant<T, Failure> state_;
};

template <>
class Result<void> {
public:
    Result() = default;
    Result(Failure failure) : failure_(std::move(failure)) {}

    bool ok() const { return !failure_; }
    explicit operator bool() const { return ok(); }
    const Failure& failure() const { return *failure_; }

private:
    std::optional<Failure> failure_;
};

template <typename F>
auto run_blocking(boost::asio::thread_pool& pool, F fn)
    -> boost::asio::awaitable<std::invoke_result_t<F&>> {
    using R = std::invoke_result_t<F&>;
    // co_spawn onto the pool; the completion is delivered back through the caller's
    // executor. Exceptions thrown by fn are rethrown in the caller. Not a coroutine itself:
    // g++ 12 destroys a closure twice when it is a by-value parameter of a coroutine and
    // the argument was a temporary in a co_await expression (a closure holding a
    // shared_ptr then drops one reference too many); here it is moved straight into the
    // function object co_spawn keeps.
    return boost::asio::co_spawn(
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

// run_blocking whose failure is a value: whatever fn throws comes back as a Failure.
template <typename F>
auto try_blocking(boost::asio::thread_pool& pool, F fn)
    -> boost::asio::awaitable<Result<std::invoke_result_t<F&>>> {
    using R = std::invoke_result_t<F&>;
    return run_blocking(pool, [f = std::move(fn)]() mutable -> Result<R> {
        try {
            if constexpr (std::is_void_v<R>) {
                f();
                return {};
            } else {
                return f();
            }
        } catch (const std::exception& e) {
            return failure_of(e);
        }
    });
}

}  // namespace mxhook
