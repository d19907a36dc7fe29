#include "mxhook/decision/client.hpp"

namespace mxhook::decision {

boost::asio::awaitable<Decision> Client::decide(const spool::Meta& meta, std::string_view raw_mime,
                                                const nlohmann::ordered_json& verdicts) {
    http::Request request;
    request.url = config_.decision_url;
    request.content_type = "application/json";
    request.headers.push_back("Accept: application/json");
    if (!config_.decision_token.empty()) request.headers.push_back("Authorization: Bearer " + config_.decision_token);
    request.body_bytes = request_body(meta, config_.decision_mode, raw_mime, verdicts);
    request.timeout = config_.webhook_timeout;
    const http::Response response = co_await http_.post(std::move(request));
    co_return parse_response(response.status, response.body, response.error);
}

}  // namespace mxhook::decision
