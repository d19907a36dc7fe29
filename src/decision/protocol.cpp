#include "mxhook/decision/protocol.hpp"

#include <nlohmann/json.hpp>

namespace mxhook::decision {
namespace {

using Json = nlohmann::ordered_json;

std::string_view mode_name(DecisionMode mode) {
    switch (mode) {
        case DecisionMode::summary: return "summary";
        case DecisionMode::full: return "full";
        case DecisionMode::minimal: break;
    }
    return "minimal";
}

Decision unavailable(std::string why) { return {Verdict::unavailable, std::move(why), {}}; }

// haraka-webhook reads reason and message with String(...) when truthy: accept strings,
// and keep other scalar values readable rather than failing the whole answer.
std::string optional_text(const Json& object, const char* key) {
    const auto it = object.find(key);
    if (it == object.end()) return {};
    const Json& value = *it;
    // JavaScript's falsy values (null, false, 0, "") read as absent.
    if (value.is_null() || (value.is_boolean() && !value.get<bool>()) || (value.is_number() && value == 0)) return {};
    if (value.is_string()) return value.get<std::string>();
    return value.dump(-1, ' ', false, Json::error_handler_t::replace);
}

}  // namespace

std::string request_body(const spool::Meta& meta, DecisionMode mode, std::string_view raw_mime, const Json& verdicts) {
    Json message;
    message["id"] = meta.id;
    message["createdAt"] = spool::iso8601(meta.created_at);
    message["sender"] = meta.sender;
    message["recipients"] = meta.recipients;
    message["from"] = meta.from;
    message["subject"] = meta.subject;
    message["remote"] = {{"ip", meta.remote.ip}, {"host", meta.remote.host}, {"helo", meta.remote.helo}};
    if (mode != DecisionMode::minimal) {
        Json headers = Json::array();
        for (const auto& [name, value] : meta.headers) headers.push_back(Json::array({name, value}));
        message["headers"] = std::move(headers);
    }
    if (mode == DecisionMode::full) message["rawMime"] = std::string(raw_mime);
    if (verdicts.is_object()) {
        for (const auto& [key, value] : verdicts.items()) message[key] = value;
    }

    Json body;
    body["protocol"] = kProtocol;
    body["mode"] = mode_name(mode);
    body["message"] = std::move(message);
    // Header values and the raw message may hold bytes that are not UTF-8: replace them
    // (U+FFFD) instead of throwing, as haraka-webhook's Buffer.toString('utf8') does.
    return body.dump(-1, ' ', false, Json::error_handler_t::replace);
}

Decision parse_response(long status, std::string_view body, std::string_view transport_error) {
    if (!transport_error.empty()) return unavailable("decision API request failed: " + std::string(transport_error));
    if (status != 200) return unavailable("decision API returned " + std::to_string(status));
    Json json = Json::parse(body, nullptr, /*allow_exceptions=*/false);
    if (json.is_discarded()) return unavailable("decision API returned invalid JSON");
    if (!json.is_object()) return unavailable("decision API returned an invalid decision");
    const auto it = json.find("decision");
    if (it == json.end() || !it->is_string()) return unavailable("decision API returned an invalid decision");
    const auto& word = it->get_ref<const std::string&>();
    Decision decision;
    if (word == "allow") decision.verdict = Verdict::allow;
    else if (word == "deny") decision.verdict = Verdict::deny;
    else if (word == "silent_deny") decision.verdict = Verdict::silent_deny;
    else return unavailable("decision API returned an invalid decision");
    decision.reason = optional_text(json, "reason");
    decision.message = optional_text(json, "message");
    return decision;
}

std::string smtp_safe(std::string_view text, std::string_view fallback) {
    std::string out;
    bool in_break = false;
    for (const char ch : text) {
        const auto c = static_cast<unsigned char>(ch);
        if (c == '\r' || c == '\n') {
            if (!in_break) out += ' ';
            in_break = true;
            continue;
        }
        in_break = false;
        if (c >= 0x20 && c <= 0x7e) out += ch;
    }
    const auto first = out.find_first_not_of(" \t");
    if (first == std::string::npos) return std::string(fallback);
    const auto last = out.find_last_not_of(" \t");
    out = out.substr(first, last - first + 1);
    if (out.size() > 200) out.resize(200);
    return out;
}

std::string deny_text(const Decision& decision) {
    return smtp_safe(!decision.message.empty() ? decision.message : decision.reason);
}

}  // namespace mxhook::decision
