// meta.json in haraka-webhook's exact format. haraka-webhook writes
// JSON.stringify(meta, null, 2) + "\n"; to_json writes the same bytes (same key order,
// same indentation, same escapes: only '"', '\\' and control characters, lowercase
// \u00xx, non-ASCII left as UTF-8) directly, without a document in between, which is
// what nlohmann's ordered_json with dump(2) would also give (the tests hold it to that).
// parse_meta reads with nlohmann. A spool can move between the two daemons either way.

#include "mxhook/spool/meta.hpp"

#include "mxhook/spool/json_text.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
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

namespace {

// Pretty-printing in JSON.stringify(value, null, 2)'s shape, written directly.
class PrettyWriter {
public:
    explicit PrettyWriter(std::string& out) : out_(out) {}

    // Opens the next member of the current object ("key": ) or element of the array.
    void key(std::string_view name) {
        next();
        append_json_string(out_, name);
        out_ += ": ";
    }
    void element() { next(); }

    void string(std::string_view value) { append_json_string(out_, value); }
    void number(std::int64_t value) { out_ += std::to_string(value); }
    void null() { out_ += "null"; }
    void open(char bracket) {
        out_ += bracket;
        first_ = true;
        ++depth_;
    }
    void close(char bracket) {
        --depth_;
        if (!first_) newline();  // an empty container stays "[]"
        out_ += bracket;
        first_ = false;
    }

private:
    void next() {
        if (!first_) out_ += ',';
        newline();
        first_ = false;
    }
    void newline() {
        out_ += '\n';
        out_.append(2 * depth_, ' ');
    }

    std::string& out_;
    std::size_t depth_ = 0;
    bool first_ = true;
};

}  // namespace

std::string to_json(const Meta& meta) {
    // haraka-webhook's field order. Header values are raw message bytes and need not be
    // UTF-8; bad bytes become U+FFFD (what Node does when it decodes them) rather than
    // failing to spool the message.
    std::string out;
    std::size_t estimate = 512 + meta.from.size() + meta.subject.size();
    for (const auto& [name, value] : meta.headers) estimate += name.size() + value.size() + 32;
    out.reserve(estimate);
    PrettyWriter w(out);
    w.open('{');
    w.key("id");
    w.string(meta.id);
    w.key("createdAt");
    w.string(iso8601(meta.created_at));
    w.key("attempts");
    w.number(meta.attempts);
    w.key("nextAttemptAt");
    if (meta.next_attempt_at)
        w.string(iso8601(*meta.next_attempt_at));
    else
        w.null();
    w.key("sender");
    w.string(meta.sender);
    w.key("recipients");
    w.open('[');
    for (const auto& r : meta.recipients) {
        w.element();
        w.string(r);
    }
    w.close(']');
    w.key("from");
    w.string(meta.from);
    w.key("subject");
    w.string(meta.subject);
    w.key("headers");
    w.open('[');
    for (const auto& [name, value] : meta.headers) {
        w.element();
        w.open('[');
        w.element();
        w.string(name);
        w.element();
        w.string(value);
        w.close(']');
    }
    w.close(']');
    w.key("remote");
    w.open('{');
    w.key("ip");
    w.string(meta.remote.ip);
    w.key("host");
    w.string(meta.remote.host);
    w.key("helo");
    w.string(meta.remote.helo);
    w.close('}');
    // JavaScript adds these after the first failed attempt, so they come last.
    if (meta.last_attempt_at) {
        w.key("lastAttemptAt");
        w.string(iso8601(*meta.last_attempt_at));
    }
    if (meta.last_error) {
        w.key("lastError");
        w.string(*meta.last_error);
    }
    if (meta.interrupted_attempts > 0) {
        w.key("interruptedAttempts");
        w.number(meta.interrupted_attempts);
    }
    w.close('}');
    out += '\n';
    return out;
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

bool reads_back_unchanged(const Meta& meta) {
    const auto ascii = [](std::string_view text) {
        return std::all_of(text.begin(), text.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
    };
    const auto all_ascii = [&](const auto&... texts) { return (ascii(texts) && ...); };
    if (chr::floor<chr::milliseconds>(meta.created_at) != meta.created_at) return false;
    if (!all_ascii(meta.id, meta.sender, meta.from, meta.subject, meta.remote.ip, meta.remote.host, meta.remote.helo))
        return false;
    if (meta.last_error && !ascii(*meta.last_error)) return false;
    for (const auto& r : meta.recipients) {
        if (!ascii(r)) return false;
    }
    for (const auto& [name, value] : meta.headers) {
        if (!all_ascii(name, value)) return false;
    }
    return true;
}

std::string bare_address(std::string_view address) {
    if (address.size() >= 2 && address.front() == '<' && address.back() == '>') {
        address = address.substr(1, address.size() - 2);
    }
    return std::string(address);
}

}  // namespace mxhook::spool
