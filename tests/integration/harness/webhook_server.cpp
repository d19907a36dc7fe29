#include "harness/webhook_server.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/string.hpp>
#include <boost/beast/http.hpp>

#include <cerrno>
#include <limits>
#include <stdexcept>
#include <system_error>

namespace itest {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;

std::string WebhookRequest::header(std::string_view name) const {
    for (const auto& [key, value] : headers) {
        if (beast::iequals(key, name)) return value;
    }
    return {};
}

bool WebhookRequest::has_header(std::string_view name) const {
    for (const auto& entry : headers) {
        if (beast::iequals(entry.first, name)) return true;
    }
    return false;
}

std::string WebhookRequest::field(std::string_view name) const {
    return itest::field(form, name).value_or(std::string());
}

bool WebhookRequest::has_field(std::string_view name) const {
    return itest::field(form, name).has_value();
}

TestWebhook::TestWebhook() { start(); }

TestWebhook::~TestWebhook() {
    stop();
    std::vector<std::thread> left;
    {
        std::lock_guard lock(mutex_);
        left.swap(connections_);
    }
    for (auto& thread : left) {
        if (thread.joinable()) thread.join();
    }
}

std::string TestWebhook::url(std::string_view path) const {
    return "http://127.0.0.1:" + std::to_string(port_) + std::string(path);
}

void TestWebhook::start() {
    if (listen_fd_ >= 0) return;
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) throw std::system_error(errno, std::generic_category(), "webhook socket");
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(port_);
    // The same port again after stop(): a connection in TIME_WAIT may hold it briefly.
    int bound = -1;
    for (int attempt = 0; attempt < 100 && bound != 0; ++attempt) {
        bound = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
        if (bound != 0 && port_ != 0) ::usleep(20000);
    }
    socklen_t len = sizeof addr;
    if (bound != 0 || ::listen(fd, 128) != 0 ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
        const int err = errno;
        ::close(fd);
        throw std::system_error(err, std::generic_category(), "webhook bind/listen");
    }
    port_ = ntohs(addr.sin_port);
    listen_fd_ = fd;
    stopping_ = false;
    acceptor_ = std::thread([this, fd] { accept_loop(fd); });
}

void TestWebhook::stop() {
    if (listen_fd_ < 0) return;
    {
        std::lock_guard lock(mutex_);
        stopping_ = true;
    }
    stopped_.notify_all();
    if (acceptor_.joinable()) acceptor_.join();
    ::close(listen_fd_);
    listen_fd_ = -1;
    std::vector<std::thread> finished;
    {
        std::lock_guard lock(mutex_);
        // Wakes every connection thread blocked in a read; each then closes its socket.
        for (const int fd : open_fds_) ::shutdown(fd, SHUT_RDWR);
        finished.swap(connections_);
    }
    for (auto& thread : finished) {
        if (thread.joinable()) thread.join();
    }
}

void TestWebhook::respond_with(Responder responder) {
    std::lock_guard lock(mutex_);
    responder_ = std::move(responder);
}

void TestWebhook::reply_with(ReplyResponder responder) {
    std::lock_guard lock(mutex_);
    reply_responder_ = std::move(responder);
}

void TestWebhook::reply_json(std::string json, unsigned status) {
    reply_with([json = std::move(json), status](const WebhookRequest&) {
        WebhookReply reply;
        reply.status = status;
        reply.body = json;
        reply.content_type = "application/json";
        return reply;
    });
}

void TestWebhook::queue_statuses(std::initializer_list<unsigned> statuses) {
    std::lock_guard lock(mutex_);
    queued_.insert(queued_.end(), statuses.begin(), statuses.end());
}

bool TestWebhook::wait_for(std::size_t n, std::chrono::milliseconds timeout) const {
    std::unique_lock lock(mutex_);
    return received_.wait_for(lock, timeout, [&] { return requests_.size() >= n; });
}

std::size_t TestWebhook::count() const {
    std::lock_guard lock(mutex_);
    return requests_.size();
}

std::vector<WebhookRequest> TestWebhook::requests() const {
    std::lock_guard lock(mutex_);
    return requests_;
}

void TestWebhook::accept_loop(int listen_fd) {
    while (!stopping_) {
        pollfd pfd{listen_fd, POLLIN, 0};
        if (::poll(&pfd, 1, 50) <= 0) continue;
        const int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd < 0) continue;
        std::lock_guard lock(mutex_);
        open_fds_.insert(fd);
        connections_.emplace_back([this, fd] { serve(fd); });
    }
}

WebhookReply TestWebhook::reply_for(const WebhookRequest& request) {
    Responder responder;
    ReplyResponder reply_responder;
    {
        std::lock_guard lock(mutex_);
        if (!queued_.empty()) {
            WebhookReply reply;
            reply.status = queued_.front();
            queued_.pop_front();
            return reply;
        }
        responder = responder_;
        reply_responder = reply_responder_;
    }
    if (reply_responder) return reply_responder(request);
    WebhookReply reply;
    reply.status = responder ? responder(request) : 200;
    return reply;
}

void TestWebhook::serve(int fd) {
    asio::io_context io;
    asio::ip::tcp::socket socket(io);
    boost::system::error_code ec;
    socket.assign(asio::ip::tcp::v4(), fd, ec);
    beast::flat_buffer buffer;
    while (!ec) {
        http::request_parser<http::string_body> parser;
        parser.body_limit(std::numeric_limits<std::uint64_t>::max());
        parser.header_limit(1024 * 1024);
        http::read_header(socket, buffer, parser, ec);
        if (ec) break;
        if (beast::iequals(parser.get()[http::field::expect], "100-continue")) {
            http::response<http::empty_body> go_on{http::status::continue_, 11};
            http::write(socket, go_on, ec);
            if (ec) break;
        }
        http::read(socket, buffer, parser, ec);
        if (ec) break;
        const auto& message = parser.get();

        WebhookRequest request;
        request.received_at = std::chrono::system_clock::now();
        request.method = std::string(message.method_string());
        request.target = std::string(message.target());
        for (const auto& header : message) {
            request.headers.emplace_back(std::string(header.name_string()), std::string(header.value()));
        }
        request.body = message.body();
        try {
            // Either encoding mxhook posts (WEBHOOK_ENCODING), decoded the same way.
            if (const auto boundary = multipart_boundary(request.header("Content-Type"))) {
                request.form = parse_multipart(request.body, *boundary);
            } else {
                request.form = parse_form(request.body);
            }
        } catch (const std::exception& e) {
            request.form_error = e.what();
        }
        const WebhookReply reply = reply_for(request);
        request.status = reply.status;
        const bool keep_alive = message.keep_alive();
        {
            std::lock_guard lock(mutex_);
            requests_.push_back(request);
        }
        received_.notify_all();
        if (reply.delay.count() > 0) {
            std::unique_lock lock(mutex_);
            stopped_.wait_for(lock, reply.delay, [this] { return stopping_.load(); });
        }

        http::response<http::string_body> response{static_cast<http::status>(request.status), 11};
        response.set(http::field::content_type, reply.content_type);
        // 1xx, 204 and 304 carry no body (Beast refuses to frame one).
        const bool bodyless = request.status < 200 || request.status == 204 || request.status == 304;
        if (!bodyless) {
            response.body() = reply.body.empty() ? "status " + std::to_string(request.status) + "\n" : reply.body;
        }
        response.keep_alive(keep_alive);
        response.prepare_payload();
        http::write(socket, response, ec);
        if (!keep_alive) break;
    }
    {
        std::lock_guard lock(mutex_);
        open_fds_.erase(fd);
    }
    socket.shutdown(asio::ip::tcp::socket::shutdown_both, ec);
    socket.close(ec);
}

}  // namespace itest
