// meta.json in haraka-webhook's exact format. haraka-webhook writes
// JSON.stringify(meta, null, 2) + "\n"; nlohmann's ordered_json with dump(2) produces the
// same bytes (same key order, same indentation, same escapes: only '"', '\\' and control
// characters, lowercase \u00xx, non-ASCII left as UTF-8), so a spool can move between the
// two daemons in either direction.

#include "mxhook/spool/meta.hpp"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <stdexcept>

namespace mxhook::spool {

namespace {

using Json = nlohmann::ordered_json;
namespace chr = std::chrono;

[[noreturn]] void fail(const std::string& what) {
    throw std::runtime_error("meta.json: " + what);
}

// --- ISO-8601 ---------------------------------------------------------------------------

bool all_digits(std::string_view s) {
    for (char c : s) {
        if (c < '0' || c > '9') return false;
    }
    return !s.empty();
}

// Caller has checked all_digits; the fields are at most four digits, so no overflow.
int to_int(std::string_view s) {
    int value = 0;
    for (char c : s) value = value * 10 + (c - '0');
    return value;
}

// --- reading fields -----------------------------------------------------------------------

std::string quoted(std::string_view key) {
    // Built by appending: g++ 12 warns falsely (-Wrestrict, GCC bug 105329) on "x" + string.
    std::string out;
    out.reserve(key.size() + 2);
    out += '"';
    out += key;
    out += '"';
    return out;
}

Json* find(Json& object, std::string_view key) {
    auto it = object.find(key);
    return it == object.end() ? nullptr : &*it;
}

// The parsed document is thrown away after reading: strings are moved out of it, not copied.
std::string take_string(Json& value) { return std::move(value.get_ref<std::string&>()); }

std::string required_string(Json& object, std::string_view key) {
    Json* value = find(object, key);
    if (value == nullptr) fail(quoted(key) + " is missing");
    if (!value->is_string()) fail(quoted(key) + " must be a string");
    return take_string(*value);
}

// haraka-webhook always writes these as strings, but "" and a missing or null field mean
// the same thing to every reader, so accept all three.
std::string optional_string(Json& object, std::string_view key, std::string_view where = {}) {
    Json* value = find(object, key);
    if (value == nullptr || value->is_null()) return {};
    if (!value->is_string()) fail(std::string(where) + quoted(key) + " must be a string");
    return take_string(*value);
}

Clock::time_point time_from(Json& value, std::string_view key) {
    if (!value.is_string()) fail(quoted(key) + " must be an ISO-8601 string");
    auto parsed = parse_iso8601(value.get_ref<const std::string&>());
    if (!parsed) fail(quoted(key) + " is not a valid ISO-8601 time: " + value.get<std::string>());
    return *parsed;
}

std::optional<Clock::time_point> optional_time(Json& object, std::string_view key) {
    Json* value = find(object, key);
    if (value == nullptr || value->is_null()) return std::nullopt;
    return time_from(*value, key);
}

std::int64_t read_attempts(Json& object) {
    Json* value = find(object, "attempts");
    if (value == nullptr || value->is_null()) return 0;
    if (value->is_number_integer()) return value->get<std::int64_t>();  // signed or unsigned
    fail("\"attempts\" must be an integer");
}

std::vector<std::string> read_recipients(Json& object) {
    Json* value = find(object, "recipients");
    if (value == nullptr) fail("\"recipients\" is missing");
    if (!value->is_array()) fail("\"recipients\" must be an array of strings");
    std::vector<std::string> recipients;
    recipients.reserve(value->size());
    for (std::size_t i = 0; i < value->size(); ++i) {
        Json& r = (*value)[i];
        if (!r.is_string()) fail("\"recipients\"[" + std::to_string(i) + "] must be a string");
        recipients.push_back(take_string(r));
    }
    return recipients;
}

mail::Headers read_headers(Json& object) {
    Json* value = find(object, "headers");
    if (value == nullptr || value->is_null()) return {};
    if (!value->is_array()) fail("\"headers\" must be an array of [name, value] pairs");
    mail::Headers headers;
    headers.reserve(value->size());
    for (std::size_t i = 0; i < value->size(); ++i) {
        Json& h = (*value)[i];
        if (!h.is_array() || h.size() != 2 || !h[0].is_string() || !h[1].is_string()) {
            fail("\"headers\"[" + std::to_string(i) + "] must be a [name, value] pair of strings");
        }
        headers.emplace_back(take_string(h[0]), take_string(h[1]));
    }
    return headers;
}

Remote read_remote(Json& object) {
    Json* value = find(object, "remote");
    if (value == nullptr || value->is_null()) return {};
    if (!value->is_object()) fail("\"remote\" must be an object");
    return Remote{optional_string(*value, "ip", "\"remote\"."),
                  optional_string(*value, "host", "\"remote\"."),
                  optional_string(*value, "helo", "\"remote\".")};
}

}  // namespace

std::string iso8601(Clock::time_point t) {
    const auto ms = chr::floor<chr::milliseconds>(t);
    const auto day = chr::floor<chr::days>(ms);
    const chr::year_month_day ymd{day};
    const chr::hh_mm_ss hms{ms - day};
    char buf[64];
    std::snprintf(buf, sizeof buf, "%04d-%02u-%02uT%02d:%02d:%02d.%03dZ", static_cast<int>(ymd.year()),
                  static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()),
                  static_cast<int>(hms.hours().count()), static_cast<int>(hms.minutes().count()),
                  static_cast<int>(hms.seconds().count()), static_cast<int>(hms.subseconds().count()));
    return buf;
}

std::optional<Clock::time_point> parse_iso8601(std::string_view text) {
    // YYYY-MM-DDTHH:MM:SS[.sss]Z — exactly what toISOString writes for years 0000-9999.
    if (text.size() != 20 && text.size() != 24) return std::nullopt;
    if (text[4] != '-' || text[7] != '-' || text[10] != 'T' || text[13] != ':' || text[16] != ':' ||
        text.back() != 'Z') {
        return std::nullopt;
    }
    const auto field = [&](std::size_t pos, std::size_t len) { return text.substr(pos, len); };
    const std::string_view parts[] = {field(0, 4),  field(5, 2),  field(8, 2),
                                      field(11, 2), field(14, 2), field(17, 2)};
    for (auto part : parts) {
        if (!all_digits(part)) return std::nullopt;
    }
    int millis = 0;
    if (text.size() == 24) {
        if (text[19] != '.' || !all_digits(field(20, 3))) return std::nullopt;
        millis = to_int(field(20, 3));
    }

    const chr::year_month_day ymd{chr::year{to_int(parts[0])},
                                  chr::month{static_cast<unsigned>(to_int(parts[1]))},
                                  chr::day{static_cast<unsigned>(to_int(parts[2]))}};
    const int hour = to_int(parts[3]), minute = to_int(parts[4]), second = to_int(parts[5]);
    if (!ymd.ok() || hour > 23 || minute > 59 || second > 59) return std::nullopt;

    const auto t = chr::sys_days{ymd} + chr::hours{hour} + chr::minutes{minute} +
                   chr::seconds{second} + chr::milliseconds{millis};
    return chr::time_point_cast<Clock::duration>(t);
}

std::string to_json(const Meta& meta) {
    Json j;  // insertion order is haraka-webhook's field order
    j["id"] = meta.id;
    j["createdAt"] = iso8601(meta.created_at);
    j["attempts"] = meta.attempts;
    j["nextAttemptAt"] = meta.next_attempt_at ? Json(iso8601(*meta.next_attempt_at)) : Json(nullptr);
    j["sender"] = meta.sender;
    j["recipients"] = meta.recipients;
    j["from"] = meta.from;
    j["subject"] = meta.subject;
    Json headers = Json::array();
    for (const auto& [name, value] : meta.headers) headers.push_back(Json::array({name, value}));
    j["headers"] = std::move(headers);
    j["remote"] = Json{{"ip", meta.remote.ip}, {"host", meta.remote.host}, {"helo", meta.remote.helo}};
    // JavaScript adds these after the first failed attempt, so they come last.
    if (meta.last_attempt_at) j["lastAttemptAt"] = iso8601(*meta.last_attempt_at);
    if (meta.last_error) j["lastError"] = *meta.last_error;
    if (meta.interrupted_attempts > 0) j["interruptedAttempts"] = meta.interrupted_attempts;

    // Header values are raw message bytes and need not be UTF-8; replacing bad bytes with
    // U+FFFD (what Node does when it decodes them) beats failing to spool the message.
    return j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

Meta parse_meta(std::string_view json) {
    Json j;
    try {
        j = Json::parse(json);
    } catch (const Json::parse_error& e) {
        fail(std::string("invalid JSON: ") + e.what());
    }
    if (!j.is_object()) fail("top level must be an object");

    Meta meta;
    meta.id = required_string(j, "id");
    if (meta.id.empty()) fail("\"id\" is empty");
    Json* created = find(j, "createdAt");
    if (created == nullptr) fail("\"createdAt\" is missing");
    meta.created_at = time_from(*created, "createdAt");
    meta.attempts = read_attempts(j);
    meta.next_attempt_at = optional_time(j, "nextAttemptAt");
    meta.sender = optional_string(j, "sender");
    meta.recipients = read_recipients(j);
    meta.from = optional_string(j, "from");
    meta.subject = optional_string(j, "subject");
    meta.headers = read_headers(j);
    meta.remote = read_remote(j);
    meta.last_attempt_at = optional_time(j, "lastAttemptAt");
    if (Json* e = find(j, "lastError"); e != nullptr && !e->is_null()) {
        if (!e->is_string()) fail("\"lastError\" must be a string");
        meta.last_error = take_string(*e);
    }
    if (Json* n = find(j, "interruptedAttempts"); n != nullptr && !n->is_null()) {
        if (!n->is_number_integer() || n->get<std::int64_t>() < 0)
            fail("\"interruptedAttempts\" must be a non-negative integer");
        meta.interrupted_attempts = n->get<std::int64_t>();
    }
    return meta;
}

std::string bare_address(std::string_view address) {
    if (address.size() >= 2 && address.front() == '<' && address.back() == '>') {
        address = address.substr(1, address.size() - 2);
    }
    return std::string(address);
}

}  // namespace mxhook::spool
