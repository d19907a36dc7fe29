#pragma once
// TestWebhook: the HTTP endpoint mxhook posts to, on 127.0.0.1 and a port of its own.
// Each connection is served by a thread with Beast's synchronous API; every request is
// recorded (target, headers, raw body and the body decoded as a form) and answered with a
// programmable status, or a whole programmable answer (status, body, content type, delay). The server can be stopped and started again on the same port to
// play a webhook that is down.

#include "harness/form.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <initializer_list>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace itest {

struct WebhookRequest {
    std::string method;
    std::string target;
    std::vector<std::pair<std::string, std::string>> headers;  // in the order received
    std::string body;
    FormFields form;          // decoded body
    std::string form_error;   // why the body did not decode, if it did not
    unsigned status = 0;      // what the server answered
    std::chrono::system_clock::time_point received_at;

    // Case-insensitive header lookup; "" when absent.
    std::string header(std::string_view name) const;
    bool has_header(std::string_view name) const;
    std::string id() const { return header("X-Mxhook-Id"); }
    // The first form field called `name`; "" when absent.
    std::string field(std::string_view name) const;
    bool has_field(std::string_view name) const;
};

// A whole programmable answer (used to play a decision API): status, body, content type,
// and a delay before answering (cut short when the server stops).
struct WebhookReply {
    unsigned status = 200;
    std::string body;                       // empty: "status <N>\n"
    std::string content_type = "text/plain";
    std::chrono::milliseconds delay{0};
};

class TestWebhook {
public:
    using Responder = std::function<unsigned(const WebhookRequest&)>;
    using ReplyResponder = std::function<WebhookReply(const WebhookRequest&)>;

    TestWebhook();   // listening on a fresh port
    ~TestWebhook();
    TestWebhook(const TestWebhook&) = delete;
    TestWebhook& operator=(const TestWebhook&) = delete;

    unsigned short port() const { return port_; }
    std::string url(std::string_view path = "/hook") const;

    // stop(): close the listener and every open connection (new connections are refused).
    // start(): listen again on the same port.
    void start();
    void stop();
    bool running() const { return listen_fd_ >= 0; }

    // Status for each request: queued statuses first (one each), then the responder; 200
    // when neither says otherwise.
    void respond_with(Responder responder);
    // A full answer for each request (after the queued statuses); replaces respond_with().
    void reply_with(ReplyResponder responder);
    // Every request answers 200 with this JSON body (Content-Type: application/json).
    void reply_json(std::string json, unsigned status = 200);
    void queue_statuses(std::initializer_list<unsigned> statuses);

    // Blocks until at least n requests were received or the timeout passes.
    bool wait_for(std::size_t n, std::chrono::milliseconds timeout) const;
    std::size_t count() const;
    std::vector<WebhookRequest> requests() const;

private:
    void accept_loop(int listen_fd);
    void serve(int fd);
    WebhookReply reply_for(const WebhookRequest& request);

    unsigned short port_ = 0;
    int listen_fd_ = -1;
    std::atomic<bool> stopping_{false};
    std::thread acceptor_;

    mutable std::mutex mutex_;
    mutable std::condition_variable received_;
    std::vector<WebhookRequest> requests_;
    std::deque<unsigned> queued_;
    Responder responder_;
    ReplyResponder reply_responder_;
    std::condition_variable stopped_;   // wakes delayed answers when the server stops
    std::set<int> open_fds_;
    std::vector<std::thread> connections_;
};

}  // namespace itest
