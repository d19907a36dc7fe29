#pragma once
// Asks WEBHOOK_DECISION_URL whether to take a message, through the shared HTTP client
// (so waiting for the answer never blocks another session).

#include "mxhook/config.hpp"
#include "mxhook/decision/protocol.hpp"
#include "mxhook/http/client.hpp"

#include <boost/asio/awaitable.hpp>

#include <string_view>

namespace mxhook::decision {

class Client {
public:
    Client(http::Client& http, const Config& config) : http_(http), config_(config) {}

    bool enabled() const { return !config_.decision_url.empty(); }
    DecisionMode mode() const { return config_.decision_mode; }

    // raw_mime is needed in full mode only. Never throws for HTTP failures: they come
    // back as Verdict::unavailable with the reason.
    boost::asio::awaitable<Decision> decide(const spool::Meta& meta, std::string_view raw_mime,
                                           const nlohmann::ordered_json& verdicts = nullptr);

private:
    http::Client& http_;
    const Config& config_;
};

}  // namespace mxhook::decision
