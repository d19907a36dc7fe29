#pragma once
// One libcurl multi handle driven by the Asio io_context through curl's socket and
// timer callbacks (CURLMOPT_SOCKETFUNCTION / CURLMOPT_TIMERFUNCTION): no thread per
// request, no polling. Used by the webhook dispatcher (and later the decision client).
// All methods must be called on the io_context's thread.

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace mxhook::http {

// A request body produced piece by piece (so a 25 MB message is never held whole).
class BodySource {
public:
    virtual ~BodySource() = default;
    // Exact total size in bytes: sent as Content-Length.
    virtual std::uint64_t size() const = 0;
    // Copies up to n bytes into buf. Returns the count copied (0 only at the end), or
    // nullopt when the next bytes are not ready yet: the client then pauses the
    // transfer until the source calls the function given to set_ready_callback()
    // (on the io_context thread). It may throw to fail the transfer (e.g. a disk
    // error); returning 0 before size() bytes also fails it. A source serves one
    // transfer: it cannot be rewound, so each attempt needs a fresh source.
    virtual std::optional<std::size_t> read(char* buf, std::size_t n) = 0;
    void set_ready_callback(std::function<void()> cb) { ready_ = std::move(cb); }

protected:
    void notify_ready() {
        if (ready_) ready_();
    }

private:
    std::function<void()> ready_;
};

struct Request {
    std::string url;
    std::vector<std::string> headers;          // "Name: value"
    std::string content_type;                  // e.g. "application/x-www-form-urlencoded"
    std::shared_ptr<BodySource> body;          // streamed body, or
    std::string body_bytes;                    // a small body held in memory (used when body is null)
    std::chrono::milliseconds timeout{10000};  // whole request
};

struct Response {
    long status = 0;           // HTTP status; 0 when no response (see error)
    std::string error;         // curl's error text when the transfer failed, else ""
    std::string body;          // response body, kept up to 64 KiB
    std::chrono::milliseconds duration{0};
};

class Client {
public:
    explicit Client(boost::asio::io_context& io);
    ~Client();
    Client(const Client&) = delete;
    Client& operator=(const Client&) = delete;

    // Performs a POST. Never throws for transfer errors: they are in Response::error.
    boost::asio::awaitable<Response> post(Request request);

    // Aborts every transfer in flight (their post() calls complete with an error).
    void shutdown();

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace mxhook::http
