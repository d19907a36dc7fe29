// libcurl's multi-socket API on the Asio loop. curl tells us which sockets it wants
// watched (socket callback) and when it next needs a wake-up (timer callback); Asio
// waits for readiness and calls curl_multi_socket_action; finished transfers are
// collected with curl_multi_info_read and their awaiting coroutines resumed.
//
// Everything here runs on the io_context thread. Two hazards shape the code:
//  * a socket can be removed (CURL_POLL_REMOVE) or the whole client destroyed while
//    an async_wait is still queued, so every handler checks a per-socket `retired`
//    flag and a weak "alive" token before touching anything else;
//  * curl may close a socket and open a new one with the same fd number, so a socket
//    is identified by the pointer curl stores for us (curl_multi_assign), not by its
//    number alone.

#include "mxhook/http/client.hpp"

#include <boost/asio/append.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <curl/curl.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <exception>
#include <stdexcept>
#include <unordered_map>
#include <utility>

namespace mxhook::http {

namespace {

constexpr std::size_t kMaxResponseBody = 64 * 1024;
constexpr const char* kUserAgent = "mxhook/0.1";

using Clock = std::chrono::steady_clock;
// The awaiting caller's completion handler, type-erased. (Boost 1.81's
// any_completion_handler recurses when moved through append/post, so we erase it
// ourselves and post with the concrete handler type.)
class Completion {
public:
    virtual ~Completion() = default;
    // Resumes the caller later, through the handler's associated executor: never in the
    // middle of our bookkeeping (it might start another post() or call shutdown()).
    virtual void post(boost::asio::io_context& io, Response r) = 0;
    virtual boost::asio::cancellation_slot slot() const = 0;
};

template <typename Handler>
class CompletionFor final : public Completion {
public:
    explicit CompletionFor(Handler h) : handler_(std::move(h)) {}
    void post(boost::asio::io_context& io, Response r) override {
        boost::asio::post(io, boost::asio::append(std::move(handler_), std::move(r)));
    }
    boost::asio::cancellation_slot slot() const override {
        return boost::asio::get_associated_cancellation_slot(handler_);
    }

private:
    Handler handler_;
};

void global_init_once() {
    // curl_global_init is not thread-safe and must run once per process; the caller
    // owns curl_global_cleanup (at exit, after every Client is gone).
    static const CURLcode rc = curl_global_init(CURL_GLOBAL_DEFAULT);
    if (rc != CURLE_OK) {
        throw std::runtime_error(std::string("curl_global_init: ") + curl_easy_strerror(rc));
    }
}

}  // namespace

struct Client::Impl {
    // One socket curl asked us to watch. The descriptor borrows curl's fd: it is always
    // release()d, never closed, because curl closes its own sockets.
    struct SocketWatch {
        explicit SocketWatch(boost::asio::io_context& io) : descriptor(io) {}
        ~SocketWatch() { retire(); }
        SocketWatch(const SocketWatch&) = delete;
        SocketWatch& operator=(const SocketWatch&) = delete;

        // Deregisters from the reactor; queued waits complete with operation_aborted
        // and see `retired`.
        void retire() {
            retired = true;
            if (descriptor.is_open()) descriptor.release();
        }

        boost::asio::posix::stream_descriptor descriptor;
        int wanted = CURL_POLL_NONE;  // what curl currently wants (CURL_POLL_IN/OUT bits)
        bool reading = false;         // an async_wait(wait_read) is queued
        bool writing = false;         // an async_wait(wait_write) is queued
        bool retired = false;
    };

    // One POST in flight. Owned by transfers_; curl's callbacks get a raw pointer via
    // CURLOPT_PRIVATE / READDATA / WRITEDATA, valid until finish() erases it.
    struct Transfer {
        std::uint64_t id = 0;
        CURL* easy = nullptr;
        curl_slist* headers = nullptr;
        Request request;
        std::uint64_t expected = 0;  // bytes the source promised (Content-Length)
        std::uint64_t sent = 0;      // bytes the source has delivered so far
        bool paused = false;         // the read callback returned CURL_READFUNC_PAUSE
        std::string failure;         // our own reason when a callback aborted the transfer
        std::string response_body;
        char errbuf[CURL_ERROR_SIZE] = {};
        Clock::time_point started = Clock::now();
        std::unique_ptr<Completion> completion;
        boost::asio::cancellation_slot slot;

        ~Transfer() {
            if (easy) curl_easy_cleanup(easy);
            if (headers) curl_slist_free_all(headers);
        }
    };

    explicit Impl(boost::asio::io_context& io_) : io(io_), timer(io_) {
        global_init_once();
        multi = curl_multi_init();
        if (!multi) throw std::runtime_error("curl_multi_init failed");
        curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, &Impl::on_socket_cb);
        curl_multi_setopt(multi, CURLMOPT_SOCKETDATA, this);
        curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, &Impl::on_timer_cb);
        curl_multi_setopt(multi, CURLMOPT_TIMERDATA, this);
    }

    ~Impl() {
        abort_all();
        // Handlers still queued in the io_context must not reach this object.
        alive.reset();
        // May call the socket callback for cached connections; our state is intact.
        curl_multi_cleanup(multi);
        for (auto& [fd, watch] : sockets) watch->retire();
        sockets.clear();
        timer.cancel();
    }

    // ---- starting and finishing transfers -------------------------------------------

    void start(Request request, std::unique_ptr<Completion> completion) {
        auto slot = completion->slot();
        if (shut_down) {
            completion->post(io, Response{0, "shutdown", {}, {}});
            return;
        }

        auto t = std::make_unique<Transfer>();
        t->id = ++next_id;
        t->request = std::move(request);
        t->completion = std::move(completion);

        if (std::string err = configure(*t); !err.empty()) {
            Response r;
            r.error = std::move(err);
            t->completion->post(io, std::move(r));
            return;
        }

        if (slot.is_connected()) {
            // Cancellation (e.g. a racing timer in the caller) aborts the transfer.
            // Deferred through post: the signal may be emitted from anywhere on the
            // io thread, including while we are inside curl.
            t->slot = slot;
            slot.assign([this, &io = io, token = std::weak_ptr<void>(alive), id = t->id](
                            boost::asio::cancellation_type) {
                boost::asio::post(io, [this, token, id] {
                    if (!token.expired()) abort(id, "cancelled");
                });
            });
        }

        const std::uint64_t id = t->id;
        CURL* easy = t->easy;
        transfers.emplace(id, std::move(t));
        spdlog::debug("http: transfer {} started", id);
        if (CURLMcode mc = curl_multi_add_handle(multi, easy); mc != CURLM_OK) {
            auto node = transfers.extract(id);
            Response r;
            r.error = std::string("curl_multi_add_handle: ") + curl_multi_strerror(mc);
            finish(std::move(node.mapped()), std::move(r), /*in_multi=*/false);
        }
    }

    // Sets every option; returns an error text instead of throwing.
    std::string configure(Transfer& t) {
        t.easy = curl_easy_init();
        if (!t.easy) return "curl_easy_init failed";
        CURL* e = t.easy;
        CURLcode rc = CURLE_OK;
        auto set = [&](CURLoption opt, auto value) {
            if (rc == CURLE_OK) rc = curl_easy_setopt(e, opt, value);
        };

        set(CURLOPT_PRIVATE, static_cast<void*>(&t));
        set(CURLOPT_URL, t.request.url.c_str());
        // Webhook targets are plain HTTP(S); never let a URL reach file:// or others.
        set(CURLOPT_PROTOCOLS_STR, "http,https");
        set(CURLOPT_FOLLOWLOCATION, 0L);
        // HTTP/1.1 even over TLS: one request per connection, an exact Content-Length,
        // and none of HTTP/2's stream-level pause subtleties.
        set(CURLOPT_HTTP_VERSION, static_cast<long>(CURL_HTTP_VERSION_1_1));
        set(CURLOPT_NOSIGNAL, 1L);
        set(CURLOPT_USERAGENT, kUserAgent);
        set(CURLOPT_ERRORBUFFER, t.errbuf);
        set(CURLOPT_TIMEOUT_MS, static_cast<long>(t.request.timeout.count()));
        set(CURLOPT_WRITEFUNCTION, &Impl::on_write_cb);
        set(CURLOPT_WRITEDATA, static_cast<void*>(&t));
        set(CURLOPT_POST, 1L);
        if (t.request.body) {
            t.expected = t.request.body->size();
            // Known size: curl sends Content-Length, never chunked encoding.
            set(CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(t.expected));
            set(CURLOPT_READFUNCTION, &Impl::on_read_cb);
            set(CURLOPT_READDATA, static_cast<void*>(&t));
        } else {
            set(CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(t.request.body_bytes.size()));
            // Points into t.request, which lives as long as the transfer.
            set(CURLOPT_POSTFIELDS, t.request.body_bytes.data());
        }

        curl_slist* list = nullptr;
        auto add = [&](const std::string& line) {
            if (curl_slist* grown = curl_slist_append(list, line.c_str())) {
                list = grown;
                return true;
            }
            return false;
        };
        bool ok = true;
        if (!t.request.content_type.empty()) ok = add("Content-Type: " + t.request.content_type);
        for (const auto& h : t.request.headers) ok = ok && add(h);
        // An empty Expect suppresses "Expect: 100-continue" and its wait before the body.
        ok = ok && add("Expect:");
        t.headers = list;
        if (!ok) return "out of memory building headers";
        set(CURLOPT_HTTPHEADER, t.headers);
        if (rc != CURLE_OK) return std::string("curl_easy_setopt: ") + curl_easy_strerror(rc);

        if (t.request.body) {
            // The source calls this on the io thread when a paused read can continue.
            // curl_easy_pause may not be called from inside a curl callback, and the
            // source might notify from inside read(); so the unpause is always posted.
            t.request.body->set_ready_callback(
                [this, &io = io, token = std::weak_ptr<void>(alive), id = t.id] {
                    // Touches `this` only once the token proves it alive.
                    boost::asio::post(io, [this, token, id] {
                        if (!token.expired()) resume(id);
                    });
                });
        }
        return {};
    }

    void resume(std::uint64_t id) {
        auto it = transfers.find(id);
        if (it == transfers.end() || !it->second->paused) return;
        it->second->paused = false;
        // Wakes curl through its timer callback; the read callback runs again soon.
        curl_easy_pause(it->second->easy, CURLPAUSE_CONT);
        drain_completed();
    }

    void abort(std::uint64_t id, const char* why) {
        auto node = transfers.extract(id);
        if (node.empty()) return;
        spdlog::debug("http: transfer {} aborted: {}", id, why);
        Response r;
        r.error = why;
        finish(std::move(node.mapped()), std::move(r), /*in_multi=*/true);
    }

    void abort_all() {
        std::vector<std::uint64_t> ids;
        ids.reserve(transfers.size());
        for (const auto& [id, t] : transfers) ids.push_back(id);
        for (auto id : ids) abort(id, "shutdown");
    }

    // Detaches the transfer from curl and resumes its caller. Never called from inside
    // a curl callback (curl_multi_remove_handle is not allowed there).
    void finish(std::unique_ptr<Transfer> t, Response r, bool in_multi) {
        if (in_multi) curl_multi_remove_handle(multi, t->easy);
        if (t->request.body) t->request.body->set_ready_callback(nullptr);
        if (t->slot.is_connected()) t->slot.clear();
        r.duration = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t->started);
        r.body = std::move(t->response_body);
        t->completion->post(io, std::move(r));
        // t (easy handle, header list, body source) is released here.
    }

    void drain_completed() {
        int left = 0;
        while (CURLMsg* msg = curl_multi_info_read(multi, &left)) {
            if (msg->msg != CURLMSG_DONE) continue;
            // msg is invalid once the handle is removed: copy what we need first.
            CURL* easy = msg->easy_handle;
            const CURLcode result = msg->data.result;
            char* priv = nullptr;
            curl_easy_getinfo(easy, CURLINFO_PRIVATE, &priv);
            auto* raw = reinterpret_cast<Transfer*>(priv);
            auto node = transfers.extract(raw->id);
            if (node.empty()) continue;
            Transfer& t = *node.mapped();

            Response r;
            if (result == CURLE_OK) {
                long code = 0;
                curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &code);
                r.status = code;
            } else {
                // Any failure reports status 0, even if a status line had arrived: the
                // caller treats it as "not delivered" and retries.
                if (!t.failure.empty())
                    r.error = t.failure;
                else if (t.errbuf[0] != '\0')
                    r.error = t.errbuf;
                else
                    r.error = curl_easy_strerror(result);
            }
            spdlog::debug("http: transfer {} done: status {} {}", t.id, r.status, r.error);
            finish(std::move(node.mapped()), std::move(r), /*in_multi=*/true);
        }
    }

    // ---- curl callbacks (C ABI: never let an exception escape) -----------------------

    static size_t on_read_cb(char* buf, size_t size, size_t nitems, void* userp) {
        auto& t = *static_cast<Transfer*>(userp);
        const std::size_t n = size * nitems;
        try {
            std::optional<std::size_t> got = t.request.body->read(buf, n);
            if (!got) {
                t.paused = true;
                return CURL_READFUNC_PAUSE;
            }
            const std::size_t k = std::min(*got, n);
            if (k == 0 && t.sent < t.expected) {
                // With a Content-Length promised, an early end would leave the server
                // waiting until our timeout: fail now instead.
                t.failure = "body source ended early";
                return CURL_READFUNC_ABORT;
            }
            t.sent += k;
            if (t.sent > t.expected) {
                t.failure = "body source exceeded its size";
                return CURL_READFUNC_ABORT;
            }
            return k;
        } catch (const std::exception& ex) {
            t.failure = std::string("body source: ") + ex.what();
        } catch (...) {
            t.failure = "body source: unknown error";
        }
        return CURL_READFUNC_ABORT;
    }

    static size_t on_write_cb(char* data, size_t size, size_t nmemb, void* userp) {
        auto& t = *static_cast<Transfer*>(userp);
        const std::size_t n = size * nmemb;
        const std::size_t room = kMaxResponseBody - std::min(kMaxResponseBody, t.response_body.size());
        try {
            t.response_body.append(data, std::min(n, room));
        } catch (...) {
            return 0;  // out of memory: curl fails the transfer with a write error
        }
        return n;  // the rest is read and discarded so the connection stays usable
    }

    static int on_socket_cb(CURL*, curl_socket_t s, int what, void* userp, void* socketp) {
        try {
            return static_cast<Impl*>(userp)->on_socket(s, what, static_cast<SocketWatch*>(socketp));
        } catch (const std::exception& ex) {
            spdlog::debug("http: socket callback failed: {}", ex.what());
            return -1;
        }
    }

    static int on_timer_cb(CURLM*, long timeout_ms, void* userp) {
        try {
            static_cast<Impl*>(userp)->on_timer(timeout_ms);
            return 0;
        } catch (const std::exception& ex) {
            spdlog::debug("http: timer callback failed: {}", ex.what());
            return -1;
        }
    }

    // ---- sockets and timer ------------------------------------------------------------

    int on_socket(curl_socket_t s, int what, SocketWatch* known) {
        auto it = sockets.find(s);
        if (what == CURL_POLL_REMOVE) {
            // curl announces the removal before it closes the fd.
            if (it != sockets.end()) {
                it->second->retire();
                sockets.erase(it);
            }
            return 0;
        }

        std::shared_ptr<SocketWatch> watch;
        if (it != sockets.end() && it->second.get() == known) {
            watch = it->second;
        } else {
            if (it != sockets.end()) {
                // Same fd number but curl has no pointer for it: the old socket is
                // gone and this is a new one. Drop the old registration first.
                it->second->retire();
                sockets.erase(it);
            }
            watch = std::make_shared<SocketWatch>(io);
            boost::system::error_code ec;
            watch->descriptor.assign(s, ec);
            if (ec) {
                spdlog::debug("http: cannot watch fd {}: {}", s, ec.message());
                return -1;
            }
            sockets.emplace(s, watch);
            curl_multi_assign(multi, s, watch.get());
        }
        watch->wanted = what;
        arm(s, watch);
        return 0;
    }

    // Queues the waits curl wants that are not queued yet. Each wait re-arms the
    // (edge-triggered) registration, so readiness present now is reported too.
    void arm(curl_socket_t s, const std::shared_ptr<SocketWatch>& watch) {
        if (watch->retired) return;
        if ((watch->wanted & CURL_POLL_IN) && !watch->reading) {
            watch->reading = true;
            watch->descriptor.async_wait(
                boost::asio::posix::stream_descriptor::wait_read,
                [this, s, watch, token = std::weak_ptr<void>(alive)](boost::system::error_code ec) {
                    watch->reading = false;
                    if (token.expired() || watch->retired || ec == boost::asio::error::operation_aborted)
                        return;
                    on_ready(s, watch, CURL_POLL_IN, ec ? CURL_CSELECT_ERR : CURL_CSELECT_IN);
                });
        }
        if ((watch->wanted & CURL_POLL_OUT) && !watch->writing) {
            watch->writing = true;
            watch->descriptor.async_wait(
                boost::asio::posix::stream_descriptor::wait_write,
                [this, s, watch, token = std::weak_ptr<void>(alive)](boost::system::error_code ec) {
                    watch->writing = false;
                    if (token.expired() || watch->retired || ec == boost::asio::error::operation_aborted)
                        return;
                    on_ready(s, watch, CURL_POLL_OUT, ec ? CURL_CSELECT_ERR : CURL_CSELECT_OUT);
                });
        }
    }

    void on_ready(curl_socket_t s, const std::shared_ptr<SocketWatch>& watch, int direction, int event) {
        // A wait that curl no longer wants (it switched direction meanwhile) is
        // dropped rather than reported, so a readable socket curl ignores cannot spin.
        if (watch->wanted & direction) {
            int running = 0;
            curl_multi_socket_action(multi, s, event, &running);
            drain_completed();
        }
        // curl only calls the socket callback on changes: keep watching otherwise.
        arm(s, watch);
    }

    void on_timer(long timeout_ms) {
        if (timeout_ms < 0) {
            timer.cancel();
            return;
        }
        // A zero timeout means "as soon as possible", but not from inside this
        // callback: an already-expired timer completes on the next loop turn.
        timer.expires_after(std::chrono::milliseconds(timeout_ms));
        timer.async_wait([this, token = std::weak_ptr<void>(alive)](boost::system::error_code ec) {
            if (ec || token.expired()) return;
            int running = 0;
            curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
            drain_completed();
        });
    }

    boost::asio::io_context& io;
    boost::asio::steady_timer timer;
    CURLM* multi = nullptr;
    std::unordered_map<curl_socket_t, std::shared_ptr<SocketWatch>> sockets;
    std::unordered_map<std::uint64_t, std::unique_ptr<Transfer>> transfers;
    std::uint64_t next_id = 0;
    bool shut_down = false;
    // Handlers queued on the io_context hold a weak_ptr to this; it expires when the
    // client is destroyed, so late handlers return without touching freed state.
    std::shared_ptr<void> alive = std::make_shared<int>(0);
};

Client::Client(boost::asio::io_context& io) : impl_(std::make_unique<Impl>(io)) {}

Client::~Client() = default;

boost::asio::awaitable<Response> Client::post(Request request) {
    co_return co_await boost::asio::async_initiate<decltype(boost::asio::use_awaitable), void(Response)>(
        [impl = impl_.get()](auto handler, Request req) {
            impl->start(std::move(req), std::make_unique<CompletionFor<decltype(handler)>>(std::move(handler)));
        },
        boost::asio::use_awaitable, std::move(request));
}

void Client::shutdown() {
    impl_->shut_down = true;
    impl_->abort_all();
}

}  // namespace mxhook::http
