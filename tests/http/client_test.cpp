// http::Client against a real HTTP/1.1 server in the test process, and
// webhook::FormBodySource on its own and streamed through the client.
//
// The server is Beast on its own io_context and thread. The client runs on the test
// thread's io_context; every wait is bounded by run_for.

#include "mxhook/http/client.hpp"
#include "mxhook/webhook/body_source.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using asio::ip::tcp;
using namespace std::chrono_literals;
using mxhook::http::Client;
using mxhook::http::Request;
using mxhook::http::Response;

// ---- test server -------------------------------------------------------------------

struct Recorded {
    std::string target;
    std::string content_type;
    std::string content_length;
    std::string transfer_encoding;
    std::string expect;
    std::string user_agent;
    std::string custom;  // X-Test
    std::string body;
};

struct Reply {
    enum class Mode { respond, hold, never };
    unsigned status = 200;
    std::string body = "ok";
    Mode mode = Mode::respond;  // hold: answer once release_held() is called
};

class TestServer {
public:
    using Handler = std::function<Reply(const Recorded&)>;

    explicit TestServer(Handler handler)
        : handler_(std::move(handler)),
          acceptor_(io_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)),
          gate_(io_) {
        // Held handlers wait at most this long, whatever the test does.
        gate_.expires_after(10s);
        asio::co_spawn(io_, accept_loop(), asio::detached);
        thread_ = std::thread([this] { io_.run(); });
    }
    ~TestServer() {
        io_.stop();
        thread_.join();
    }

    std::string url(const std::string& path = "/hook") const {
        return "http://127.0.0.1:" + std::to_string(acceptor_.local_endpoint().port()) + path;
    }
    std::vector<Recorded> requests() const {
        std::lock_guard lock(mu_);
        return requests_;
    }
    std::size_t request_count() const {
        std::lock_guard lock(mu_);
        return requests_.size();
    }
    void release_held() {
        asio::post(io_, [this] {
            released_ = true;
            gate_.cancel();
        });
    }

private:
    asio::awaitable<void> accept_loop() {
        for (;;) {
            tcp::socket socket = co_await acceptor_.async_accept(asio::use_awaitable);
            asio::co_spawn(io_, serve(std::move(socket)), asio::detached);
        }
    }

    asio::awaitable<void> serve(tcp::socket socket) {
        beast::flat_buffer buffer;
        boost::system::error_code ec;
        for (;;) {
            bhttp::request_parser<bhttp::string_body> parser;
            parser.body_limit(64 * 1024 * 1024);
            co_await bhttp::async_read(socket, buffer, parser, asio::redirect_error(asio::use_awaitable, ec));
            if (ec) co_return;
            const auto& req = parser.get();
            Recorded rec;
            rec.target = std::string(req.target());
            auto field = [&](auto name) {
                auto it = req.find(name);
                return it == req.end() ? std::string() : std::string(it->value());
            };
            rec.content_type = field(bhttp::field::content_type);
            rec.content_length = field(bhttp::field::content_length);
            rec.transfer_encoding = field(bhttp::field::transfer_encoding);
            rec.expect = field(bhttp::field::expect);
            rec.user_agent = field(bhttp::field::user_agent);
            rec.custom = field("X-Test");
            rec.body = req.body();
            Reply reply = handler_(rec);
            {
                std::lock_guard lock(mu_);
                requests_.push_back(std::move(rec));
            }
            if (reply.mode == Reply::Mode::never) {
                // Keep the connection open and silent until the server is destroyed.
                asio::steady_timer forever(io_, 60s);
                co_await forever.async_wait(asio::redirect_error(asio::use_awaitable, ec));
                co_return;
            }
            if (reply.mode == Reply::Mode::hold && !released_) {
                co_await gate_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
            }
            bhttp::response<bhttp::string_body> res{static_cast<bhttp::status>(reply.status), 11};
            res.set(bhttp::field::content_type, "text/plain");
            res.body() = reply.body;
            res.prepare_payload();
            res.keep_alive(req.keep_alive());
            co_await bhttp::async_write(socket, res, asio::redirect_error(asio::use_awaitable, ec));
            if (ec || !req.keep_alive()) co_return;
        }
    }

    Handler handler_;
    asio::io_context io_;
    tcp::acceptor acceptor_;
    asio::steady_timer gate_;
    bool released_ = false;  // server thread only
    mutable std::mutex mu_;
    std::vector<Recorded> requests_;
    std::thread thread_;
};

Reply ok_reply(const Recorded&) { return {}; }

// ---- helpers -------------------------------------------------------------------------

// Runs one coroutine on io until it finishes or the limit passes.
template <typename T>
std::optional<T> run_bounded(asio::io_context& io, asio::awaitable<T> task,
                             std::chrono::milliseconds limit = 10s) {
    std::optional<T> result;
    std::exception_ptr error;
    asio::co_spawn(io, std::move(task), [&](std::exception_ptr e, T value) {
        error = e;
        if (!e) result = std::move(value);
        io.stop();
    });
    io.restart();
    io.run_for(limit);
    if (error) std::rethrow_exception(error);
    return result;
}

std::optional<Response> post_once(asio::io_context& io, Client& client, Request request,
                                  std::chrono::milliseconds limit = 10s) {
    return run_bounded(io, client.post(std::move(request)), limit);
}

std::string all_bytes() {
    std::string s;
    for (int i = 0; i < 256; ++i) s.push_back(static_cast<char>(i));
    return s;
}

// Inverse of the form encoding; fails the test on anything the encoder must not emit.
std::string form_decode(std::string_view in) {
    auto hex = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        return -1;  // lowercase hex is not what the encoder produces
    };
    std::string out;
    out.reserve(in.size());
    for (std::size_t i = 0; i < in.size(); ++i) {
        const char c = in[i];
        if (c == '+') {
            out.push_back(' ');
        } else if (c == '%') {
            if (i + 2 >= in.size()) {
                ADD_FAILURE() << "truncated escape at " << i;
                return out;
            }
            const int hi = hex(in[i + 1]);
            const int lo = hex(in[i + 2]);
            if (hi < 0 || lo < 0) {
                ADD_FAILURE() << "bad escape at " << i;
                return out;
            }
            out.push_back(static_cast<char>(hi * 16 + lo));
            i += 2;
        } else {
            const bool plain = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                               c == '*' || c == '-' || c == '.' || c == '_';
            if (!plain) {
                ADD_FAILURE() << "unencoded byte " << static_cast<int>(static_cast<unsigned char>(c)) << " at " << i;
                return out;
            }
            out.push_back(c);
        }
    }
    return out;
}

class TempFile {
public:
    explicit TempFile(const std::string& content) {
        static std::atomic<int> counter{0};
        path_ = std::filesystem::temp_directory_path() /
                ("mxhook-http-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + ".eml");
        std::ofstream(path_, std::ios::binary) << content;
    }
    ~TempFile() {
        std::error_code ec;
        std::filesystem::remove(path_, ec);
    }
    const std::filesystem::path& path() const { return path_; }

private:
    std::filesystem::path path_;
};

// Every byte value, in an irregular order, over several 64 KiB chunks.
std::string message_bytes(std::size_t n) {
    std::string s = all_bytes();
    std::mt19937 rng(12345);
    while (s.size() < n) s.push_back(static_cast<char>(rng() & 0xff));
    s.resize(n);
    return s;
}

unsigned short unused_port() {
    asio::io_context io;
    tcp::acceptor a(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    return a.local_endpoint().port();  // closed on return: nothing listens there
}

Request make_request(const std::string& url, std::string body = "hello") {
    Request r;
    r.url = url;
    r.content_type = "application/x-www-form-urlencoded";
    r.body_bytes = std::move(body);
    r.timeout = 5s;
    return r;
}

// A source that says "not yet" before every piece, then becomes ready on the next loop
// turn: drives the pause / unpause path on every chunk.
class DrippingSource : public mxhook::http::BodySource {
public:
    DrippingSource(asio::io_context& io, std::string data) : io_(io), data_(std::move(data)) {}
    std::uint64_t size() const override { return data_.size(); }
    std::optional<std::size_t> read(char* buf, std::size_t n) override {
        if (!ready_) {
            ++pauses;
            asio::post(io_, [this] {
                ready_ = true;
                notify_ready();
            });
            return std::nullopt;
        }
        ready_ = false;
        const std::size_t k = std::min({n, data_.size() - pos_, std::size_t{1000}});
        std::copy_n(data_.data() + pos_, k, buf);
        pos_ += k;
        return k;
    }
    int pauses = 0;

private:
    asio::io_context& io_;
    std::string data_;
    std::size_t pos_ = 0;
    bool ready_ = false;
};

// A source whose size() promises more than read() delivers, or that throws.
class BrokenSource : public mxhook::http::BodySource {
public:
    explicit BrokenSource(bool throws) : throws_(throws) {}
    std::uint64_t size() const override { return 100; }
    std::optional<std::size_t> read(char* buf, std::size_t n) override {
        if (throws_) throw std::runtime_error("disk on fire");
        if (sent_) return 0;
        sent_ = true;
        const std::size_t k = std::min<std::size_t>(n, 10);
        std::fill_n(buf, k, 'x');
        return k;
    }

private:
    bool throws_;
    bool sent_ = false;
};

// ---- client tests ----------------------------------------------------------------------

TEST(HttpClient, PostsBodyByteExactWithHeaders) {
    TestServer server(ok_reply);
    asio::io_context io;
    Client client(io);
    Request req = make_request(server.url(), all_bytes() + all_bytes());
    req.headers.push_back("X-Test: yes");
    auto r = post_once(io, client, req);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(r->error, "");
    EXPECT_EQ(r->body, "ok");
    auto got = server.requests();
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].target, "/hook");
    EXPECT_EQ(got[0].body, req.body_bytes);
    EXPECT_EQ(got[0].content_length, std::to_string(req.body_bytes.size()));
    EXPECT_EQ(got[0].transfer_encoding, "");
    EXPECT_EQ(got[0].expect, "");
    EXPECT_EQ(got[0].content_type, "application/x-www-form-urlencoded");
    EXPECT_EQ(got[0].user_agent, "mxhook/0.1");
    EXPECT_EQ(got[0].custom, "yes");
}

TEST(HttpClient, ReportsStatusCodes) {
    TestServer server([](const Recorded& rec) {
        Reply reply;
        reply.status = static_cast<unsigned>(std::stoi(rec.target.substr(1)));
        reply.body = "status " + rec.target.substr(1);
        return reply;
    });
    asio::io_context io;
    Client client(io);
    for (long code : {200L, 406L, 500L}) {
        auto r = post_once(io, client, make_request(server.url("/" + std::to_string(code))));
        ASSERT_TRUE(r) << code;
        EXPECT_EQ(r->status, code);
        EXPECT_EQ(r->error, "");
        EXPECT_EQ(r->body, "status " + std::to_string(code));
    }
}

TEST(HttpClient, KeepsAtMost64KiBOfResponseBody) {
    TestServer server([](const Recorded&) {
        Reply reply;
        reply.body.assign(200 * 1024, 'r');
        return reply;
    });
    asio::io_context io;
    Client client(io);
    auto r = post_once(io, client, make_request(server.url()));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(r->body.size(), 64u * 1024);
}

TEST(HttpClient, SilentServerHitsTheTimeout) {
    TestServer server([](const Recorded&) { return Reply{200, "", Reply::Mode::never}; });
    asio::io_context io;
    Client client(io);
    Request req = make_request(server.url());
    req.timeout = 300ms;
    auto r = post_once(io, client, req, 5s);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 0);
    EXPECT_NE(r->error, "");
    EXPECT_GE(r->duration, 250ms);
    EXPECT_LT(r->duration, 3s);
}

TEST(HttpClient, ConnectionRefusedFailsQuickly) {
    asio::io_context io;
    Client client(io);
    auto r = post_once(io, client, make_request("http://127.0.0.1:" + std::to_string(unused_port()) + "/"), 5s);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 0);
    EXPECT_NE(r->error, "");
    EXPECT_LT(r->duration, 1s);
}

TEST(HttpClient, SlowServerDoesNotDelayTheOthers) {
    TestServer server([](const Recorded& rec) {
        Reply reply;
        if (rec.target == "/slow") reply.mode = Reply::Mode::hold;
        return reply;
    });
    asio::io_context io;
    Client client(io);

    // Completion order; the slow one is only released once the seven fast ones are in,
    // so if it blocked them the test would run into its bound instead.
    std::vector<std::string> order;
    std::vector<Response> responses;
    int fast_done = 0;
    auto one = [&](std::string path) -> asio::awaitable<void> {
        Response r = co_await client.post(make_request(server.url(path)));
        order.push_back(path);
        responses.push_back(r);
        if (path != "/slow" && ++fast_done == 7) server.release_held();
        if (order.size() == 8) io.stop();
    };
    asio::co_spawn(io, one("/slow"), asio::detached);
    for (int i = 0; i < 7; ++i) asio::co_spawn(io, one("/fast" + std::to_string(i)), asio::detached);
    io.run_for(8s);

    ASSERT_EQ(order.size(), 8u);
    EXPECT_EQ(order.back(), "/slow");
    for (const auto& r : responses) {
        EXPECT_EQ(r.status, 200);
        EXPECT_EQ(r.error, "");
    }
}

TEST(HttpClient, ShutdownCompletesInFlightPosts) {
    TestServer server([](const Recorded&) { return Reply{200, "", Reply::Mode::never}; });
    asio::io_context io;
    Client client(io);

    std::vector<Response> responses;
    auto one = [&]() -> asio::awaitable<void> {
        Request req = make_request(server.url());
        req.timeout = 30s;
        responses.push_back(co_await client.post(req));
        if (responses.size() == 3) io.stop();
    };
    for (int i = 0; i < 3; ++i) asio::co_spawn(io, one(), asio::detached);
    // Shut down once the server holds all three requests: they are truly in flight.
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            asio::steady_timer poll(io);
            while (server.request_count() < 3) {
                poll.expires_after(5ms);
                co_await poll.async_wait(asio::use_awaitable);
            }
            client.shutdown();
        },
        asio::detached);
    io.run_for(8s);

    ASSERT_EQ(responses.size(), 3u);
    for (const auto& r : responses) {
        EXPECT_EQ(r.status, 0);
        EXPECT_EQ(r.error, "shutdown");
        EXPECT_LT(r.duration, 8s);
    }
    // After shutdown, new posts fail at once.
    auto late = post_once(io, client, make_request(server.url()), 2s);
    ASSERT_TRUE(late);
    EXPECT_EQ(late->error, "shutdown");
}

TEST(HttpClient, DestroyingTheClientCompletesInFlightPosts) {
    TestServer server([](const Recorded&) { return Reply{200, "", Reply::Mode::never}; });
    asio::io_context io;
    std::optional<Client> client(std::in_place, io);
    std::optional<Response> response;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            response = co_await client->post(make_request(server.url()));
            io.stop();
        },
        asio::detached);
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            asio::steady_timer poll(io);
            while (server.request_count() < 1) {
                poll.expires_after(5ms);
                co_await poll.async_wait(asio::use_awaitable);
            }
            client.reset();
        },
        asio::detached);
    io.run_for(8s);
    ASSERT_TRUE(response);
    EXPECT_EQ(response->error, "shutdown");
}

TEST(HttpClient, CancellationAbortsTheTransfer) {
    using namespace asio::experimental::awaitable_operators;
    TestServer server([](const Recorded&) { return Reply{200, "", Reply::Mode::never}; });
    asio::io_context io;
    Client client(io);
    auto raced = run_bounded(
        io,
        [&]() -> asio::awaitable<std::size_t> {
            asio::steady_timer t(io, 200ms);
            auto result = co_await (client.post(make_request(server.url())) || t.async_wait(asio::use_awaitable));
            co_return result.index();
        }(),
        5s);
    ASSERT_TRUE(raced);
    EXPECT_EQ(*raced, 1u);  // the timer won; the post was cancelled and completed
    // The client is still usable.
    TestServer other(ok_reply);
    auto r = post_once(io, client, make_request(other.url()));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
}

TEST(HttpClient, PausingSourceStreamsExactly) {
    TestServer server(ok_reply);
    asio::io_context io;
    Client client(io);
    const std::string data = message_bytes(50'000);
    auto source = std::make_shared<DrippingSource>(io, data);
    Request req = make_request(server.url(), "");
    req.body = source;
    auto r = post_once(io, client, req);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(r->error, "");
    EXPECT_GT(source->pauses, 10);
    auto got = server.requests();
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].body, data);
    EXPECT_EQ(got[0].content_length, std::to_string(data.size()));
}

TEST(HttpClient, BrokenSourceFailsTheTransfer) {
    TestServer server(ok_reply);
    asio::io_context io;
    Client client(io);
    for (bool throws : {false, true}) {
        Request req = make_request(server.url(), "");
        req.body = std::make_shared<BrokenSource>(throws);
        auto r = post_once(io, client, req, 5s);
        ASSERT_TRUE(r);
        EXPECT_EQ(r->status, 0);
        EXPECT_NE(r->error, "");
        EXPECT_LT(r->duration, 3s);
    }
}

TEST(HttpClient, StreamsFormBodySourceOverMegabytes) {
    TestServer server(ok_reply);
    asio::io_context io;
    asio::thread_pool pool(2);
    Client client(io);
    const std::string message = message_bytes(3 * 1024 * 1024 + 12345);
    TempFile file(message);
    const std::string prefix = "recipient=a%40example.com&body-mime=";
    auto source = mxhook::webhook::FormBodySource::open(prefix, file.path(), pool, io.get_executor());

    Request req = make_request(server.url(), "");
    req.body = source;
    req.timeout = 20s;
    auto r = post_once(io, client, req, 20s);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(r->error, "");

    auto got = server.requests();
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].content_length, std::to_string(source->size()));
    EXPECT_EQ(got[0].transfer_encoding, "");
    EXPECT_EQ(got[0].body.size(), source->size());
    ASSERT_EQ(got[0].body.substr(0, prefix.size()), prefix);
    EXPECT_TRUE(form_decode(std::string_view(got[0].body).substr(prefix.size())) == message);
    pool.join();
}

// ---- FormBodySource on its own ---------------------------------------------------------

// Reads the whole source the way the client does: pause on nullopt, continue on notify.
std::string drain(asio::io_context& io, mxhook::webhook::FormBodySource& source, std::size_t piece) {
    bool ready = false;
    source.set_ready_callback([&] { ready = true; });
    std::string out;
    std::vector<char> buf(piece);
    for (;;) {
        auto got = source.read(buf.data(), buf.size());
        if (!got) {
            ready = false;
            const auto deadline = std::chrono::steady_clock::now() + 5s;
            while (!ready && std::chrono::steady_clock::now() < deadline) {
                // The pool posts the chunk later; an io_context without work stops, so
                // restart it on every turn.
                io.restart();
                io.run_one_for(10ms);
            }
            if (!ready) {
                ADD_FAILURE() << "source never became ready";
                break;
            }
            continue;
        }
        if (*got == 0) break;
        out.append(buf.data(), *got);
    }
    source.set_ready_callback(nullptr);
    return out;
}

TEST(FormBodySource, SizeAndContentMatchTheEncoding) {
    asio::io_context io;
    asio::thread_pool pool(2);
    for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{65536}, std::size_t{65537},
                          std::size_t{300'000}}) {
        const std::string message = message_bytes(n).substr(0, n);
        TempFile file(message);
        auto source = mxhook::webhook::FormBodySource::open("a=b&body-mime=", file.path(), pool, io.get_executor());
        for (std::size_t piece : {std::size_t{7}, std::size_t{16384}}) {
            if (piece == 7 && n > 70'000) continue;  // tiny reads over big files only slow the test
            auto fresh = mxhook::webhook::FormBodySource::open("a=b&body-mime=", file.path(), pool, io.get_executor());
            const std::string body = drain(io, *fresh, piece);
            EXPECT_EQ(body.size(), fresh->size()) << n;
            ASSERT_EQ(body.substr(0, 14), "a=b&body-mime=");
            EXPECT_TRUE(form_decode(std::string_view(body).substr(14)) == message) << n;
        }
        EXPECT_GE(source->size(), 14 + n);
    }
    pool.join();
}

// WEBHOOK_ENCODING: auto picks urlencoded for UTF-8 and multipart for the rest; the multipart
// body is the prefix, the file's bytes as they are and the closing boundary, whatever the
// size and however it is read.
TEST(FormBodySource, EncodingFollowsTheMessage) {
    using mxhook::WebhookEncoding;
    asio::io_context io;
    asio::thread_pool pool(2);
    const mxhook::webhook::Fields fields{{"recipient", "a@example.com"}, {"subject", "hi"}};
    for (std::size_t n : {std::size_t{0}, std::size_t{65536}, std::size_t{65537}, std::size_t{200'000}}) {
        std::string latin1 = message_bytes(n).substr(0, n);
        if (n > 0) latin1[n / 2] = '\xe9';
        TempFile file(latin1);
        auto multi = mxhook::webhook::FormBodySource::open(fields, WebhookEncoding::auto_detect, file.path(), pool,
                                                           io.get_executor());
        const std::string& type = multi->content_type();
        const std::string body = drain(io, *multi, 16384);
        EXPECT_EQ(body.size(), multi->size()) << n;
        if (n == 0) {  // nothing that is not UTF-8
            EXPECT_EQ(type, "application/x-www-form-urlencoded");
            EXPECT_EQ(body, "recipient=a%40example.com&subject=hi&body-mime=");
            continue;
        }
        ASSERT_EQ(type.rfind("multipart/form-data; boundary=", 0), 0u) << type;
        const std::string boundary = type.substr(30);
        const std::string prefix = mxhook::webhook::multipart_prefix(fields, boundary);
        const std::string suffix = mxhook::webhook::multipart_suffix(boundary);
        ASSERT_EQ(body.substr(0, prefix.size()), prefix);
        ASSERT_GE(body.size(), prefix.size() + suffix.size());
        EXPECT_TRUE(body.substr(prefix.size(), body.size() - prefix.size() - suffix.size()) == latin1) << n;
        EXPECT_EQ(body.substr(body.size() - suffix.size()), suffix);
    }
    // UTF-8, or forced: urlencoded.
    TempFile utf8("caf\xc3\xa9\r\n");
    auto plain = mxhook::webhook::FormBodySource::open(fields, WebhookEncoding::auto_detect, utf8.path(), pool,
                                                       io.get_executor());
    EXPECT_EQ(plain->content_type(), "application/x-www-form-urlencoded");
    EXPECT_EQ(drain(io, *plain, 4096), "recipient=a%40example.com&subject=hi&body-mime=caf%C3%A9%0D%0A");
    TempFile latin1("caf\xe9\r\n");
    auto forced = mxhook::webhook::FormBodySource::open(fields, WebhookEncoding::urlencoded, latin1.path(), pool,
                                                        io.get_executor());
    EXPECT_EQ(drain(io, *forced, 4096), "recipient=a%40example.com&subject=hi&body-mime=caf%E9%0D%0A");
    // A field that is not UTF-8 alone is enough for multipart.
    const mxhook::webhook::Fields latin1_subject{{"subject", "caf\xe9"}};
    auto by_field = mxhook::webhook::FormBodySource::open(latin1_subject, WebhookEncoding::auto_detect, utf8.path(),
                                                          pool, io.get_executor());
    EXPECT_EQ(by_field->content_type().rfind("multipart/form-data", 0), 0u);
    pool.join();
}

TEST(FormBodySource, SpacesAndUnreservedBytes) {
    asio::io_context io;
    asio::thread_pool pool(1);
    TempFile file("a b*-._~\r\n");
    auto source = mxhook::webhook::FormBodySource::open("", file.path(), pool, io.get_executor());
    EXPECT_EQ(drain(io, *source, 4096), "a+b*-._%7E%0D%0A");
    pool.join();
}

TEST(FormBodySource, MissingFileThrows) {
    asio::io_context io;
    asio::thread_pool pool(1);
    EXPECT_THROW(mxhook::webhook::FormBodySource::open("", "/nonexistent/mxhook/message.eml", pool,
                                                       io.get_executor()),
                 std::system_error);
    pool.join();
}

TEST(FormBodySource, DestroyedWhilePrefetchRuns) {
    asio::io_context io;
    asio::thread_pool pool(2);
    TempFile file(message_bytes(1024 * 1024));
    for (int i = 0; i < 20; ++i) {
        auto source = mxhook::webhook::FormBodySource::open("x=", file.path(), pool, io.get_executor());
        source->set_ready_callback([] {});
        std::array<char, 1024> buf{};
        ASSERT_TRUE(source->read(buf.data(), buf.size()));  // starts a prefetch
        source.reset();                                     // while it may still run
    }
    pool.join();  // every job posted its result back to io...
    io.restart();
    io.poll();  // ...which now runs against state that outlived its source
    SUCCEED();
}

}  // namespace
