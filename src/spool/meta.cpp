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

std::string quoted_key(std::string_view key) {
    // Built by appending: g++ 12 warns falsely (-Wrestrict, GCC bug 105329) on "x" + string.
    std::string out;
    out.reserve(key.size() + 2);
    out += '"';
    out += key;
    out += '"';
    return out;
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
    // The clock counts nanoseconds in 64 bits: years 1678 to 2261. Outside that the
    // conversion would overflow (found by fuzz/meta_fuzz.cpp: "4048-12-25T17:03:14Z").
    constexpr auto earliest = chr::time_point_cast<chr::milliseconds>(Clock::time_point::min());
    constexpr auto latest = chr::time_point_cast<chr::milliseconds>(Clock::time_point::max());
    if (t < earliest || t > latest) return std::nullopt;
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
    if (meta.requeued_at) {
        w.key("requeuedAt");
        w.string(iso8601(*meta.requeued_at));
    }
    if (meta.auth) {
        w.key("verdicts");
        w.open('{');
        const auto result = [&w](const char* key, const std::optional<auth::Result>& r) {
            if (!r) return;
            w.key(key);
            w.string(std::string(auth::result_name(*r)));
        };
        result("spf", meta.auth->spf);
        result("dkim", meta.auth->dkim);
        result("dmarc", meta.auth->dmarc);
        if (meta.auth->dmarc_policy != auth::DmarcPolicy::unspecified) {
            w.key("dmarcPolicy");
            w.string(std::string(auth::policy_name(meta.auth->dmarc_policy)));
        }
        const auto text = [&w](const char* key, const std::string& value) {
            if (value.empty()) return;
            w.key(key);
            w.string(value);
        };
        text("spam", meta.auth->spam.value_or(""));
        text("spamScore", meta.auth->spam_score);
        text("spamAction", meta.auth->spam_action);
        text("virus", meta.auth->virus.value_or(""));
        text("virusName", meta.auth->virus_name);
        w.close('}');
    }
    w.close('}');
    out += '\n';
    return out;
}

namespace {

// meta.json read as a stream of SAX events straight into a Meta: no document is built
// (one allocation per node), strings are moved in as the lexer produced them. Errors name
// the field, as error.txt in dead/ must point at the culprit. Unknown fields are skipped,
// whatever they hold; for a repeated field the last one counts, as in a document.
class MetaReader {
public:
    using Json = nlohmann::json;

    Meta finish() {
        if (!seen_id_) fail("\"id\" is missing");
        if (meta_.id.empty()) fail("\"id\" is empty");
        if (!seen_created_) fail("\"createdAt\" is missing");
        if (!seen_recipients_) fail("\"recipients\" is missing");
        return std::move(meta_);
    }

    // --- the SAX interface ---
    bool null() { return scalar(Kind::null, nullptr, 0); }
    bool boolean(bool) { return scalar(Kind::other, nullptr, 0); }
    bool number_integer(Json::number_integer_t v) { return scalar(Kind::integer, nullptr, v); }
    bool number_unsigned(Json::number_unsigned_t v) {
        return scalar(Kind::integer, nullptr, static_cast<std::int64_t>(v));
    }
    bool number_float(Json::number_float_t, const std::string&) { return scalar(Kind::other, nullptr, 0); }
    bool string(std::string& v) { return scalar(Kind::string, &v, 0); }
    bool binary(Json::binary_t&) { return scalar(Kind::other, nullptr, 0); }
    bool key(std::string& k) {
        if (state_ == State::top) key_ = std::move(k);
        else if (state_ == State::remote || state_ == State::auth) remote_key_ = std::move(k);
        return true;
    }
    bool start_object(std::size_t) { return open(true); }
    bool start_array(std::size_t) { return open(false); }
    bool end_object() { return close(); }
    bool end_array() { return close(); }
    bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) {
        fail(std::string("invalid JSON: ") + e.what());
    }

private:
    enum class Kind { null, string, integer, other, array, object };
    enum class State { start, top, recipients, headers, pair, remote, auth, skip, done };

    // A value at the current place: a scalar, or the start of a container (kind array or
    // object); false never (errors throw).
    bool scalar(Kind kind, std::string* text, std::int64_t number) {
        switch (state_) {
            case State::start: fail("top level must be an object");
            case State::top: top_value(kind, text, number); break;
            case State::recipients:
                if (kind != Kind::string) fail("\"recipients\"[" + std::to_string(meta_.recipients.size()) + "] must be a string");
                meta_.recipients.push_back(std::move(*text));
                break;
            case State::headers: bad_pair();
            case State::pair:
                if (kind != Kind::string || pair_.size() == 2) bad_pair();
                pair_.push_back(std::move(*text));
                break;
            case State::remote: remote_value(kind, text); break;
            case State::auth: auth_value(kind, text); break;
            case State::skip:
            case State::done: break;
        }
        return true;
    }

    bool open(bool object) {
        const Kind kind = object ? Kind::object : Kind::array;
        switch (state_) {
            case State::start:
                if (!object) fail("top level must be an object");
                state_ = State::top;
                return true;
            case State::top:
                if (!object && key_ == "recipients") {
                    meta_.recipients.clear();
                    seen_recipients_ = true;
                    state_ = State::recipients;
                } else if (!object && key_ == "headers") {
                    meta_.headers.clear();
                    state_ = State::headers;
                } else if (object && key_ == "remote") {
                    meta_.remote = {};
                    remote_key_.clear();
                    state_ = State::remote;
                } else if (object && key_ == "verdicts") {
                    meta_.auth = auth::Summary{};
                    remote_key_.clear();
                    state_ = State::auth;
                } else {
                    top_value(kind, nullptr, 0);  // throws for a known field
                    skip(State::top);
                }
                return true;
            case State::recipients: scalar(kind, nullptr, 0); return true;  // throws
            case State::headers:
                if (object) bad_pair();
                pair_.clear();
                state_ = State::pair;
                return true;
            case State::pair: bad_pair();
            case State::remote:
                remote_value(kind, nullptr);  // throws for ip, host, helo
                skip(State::remote);
                return true;
            case State::auth: skip(State::auth); return true;
            case State::skip: ++skip_depth_; return true;
            case State::done: return true;
        }
        return true;
    }

    bool close() {
        switch (state_) {
            case State::top: state_ = State::done; break;
            case State::recipients:
            case State::headers:
            case State::remote:
            case State::auth: state_ = State::top; break;
            case State::pair:
                if (pair_.size() != 2) bad_pair();
                meta_.headers.emplace_back(std::move(pair_[0]), std::move(pair_[1]));
                state_ = State::headers;
                break;
            case State::skip:
                if (--skip_depth_ == 0) state_ = after_skip_;
                break;
            case State::start:
            case State::done: break;
        }
        return true;
    }

    void skip(State back) {
        after_skip_ = back;
        skip_depth_ = 1;
        state_ = State::skip;
    }

    [[noreturn]] void bad_pair() {
        fail("\"headers\"[" + std::to_string(meta_.headers.size()) + "] must be a [name, value] pair of strings");
    }

    void top_value(Kind kind, std::string* text, std::int64_t number) {
        const std::string& k = key_;
        const bool null = kind == Kind::null, string = kind == Kind::string;
        if (k == "id") {
            if (!string) fail("\"id\" must be a string");
            meta_.id = std::move(*text);
            seen_id_ = true;
        } else if (k == "createdAt") {
            meta_.created_at = time_of(kind, text, k);
            seen_created_ = true;
        } else if (k == "nextAttemptAt" || k == "lastAttemptAt" || k == "requeuedAt") {
            auto& field = k == "nextAttemptAt"   ? meta_.next_attempt_at
                          : k == "lastAttemptAt" ? meta_.last_attempt_at
                                                 : meta_.requeued_at;
            field = null ? std::nullopt : std::optional(time_of(kind, text, k));
        } else if (k == "sender" || k == "from" || k == "subject") {
            auto& field = k == "sender" ? meta_.sender : k == "from" ? meta_.from : meta_.subject;
            if (!null && !string) fail(quoted_key(k) + " must be a string");
            field = string ? std::move(*text) : std::string();
        } else if (k == "recipients") {
            fail("\"recipients\" must be an array of strings");
        } else if (k == "headers") {
            if (!null) fail("\"headers\" must be an array of [name, value] pairs");
            meta_.headers.clear();
        } else if (k == "remote") {
            if (!null) fail("\"remote\" must be an object");
            meta_.remote = {};
        } else if (k == "attempts") {
            if (!null && kind != Kind::integer) fail("\"attempts\" must be an integer");
            meta_.attempts = null ? 0 : number;
        } else if (k == "lastError") {
            if (!null && !string) fail("\"lastError\" must be a string");
            meta_.last_error = string ? std::optional(std::move(*text)) : std::nullopt;
        } else if (k == "interruptedAttempts") {
            if (!null && (kind != Kind::integer || number < 0))
                fail("\"interruptedAttempts\" must be a non-negative integer");
            meta_.interrupted_attempts = null ? 0 : number;
        }
    }

    void remote_value(Kind kind, std::string* text) {
        const std::string& k = remote_key_;
        if (k != "ip" && k != "host" && k != "helo") return;
        auto& field = k == "ip" ? meta_.remote.ip : k == "host" ? meta_.remote.host : meta_.remote.helo;
        if (kind != Kind::null && kind != Kind::string) fail("\"remote\"." + quoted_key(k) + " must be a string");
        field = kind == Kind::string ? std::move(*text) : std::string();
    }

    // What mxhook itself wrote; anything it does not know is left out, not an error.
    void auth_value(Kind kind, std::string* text) {
        if (kind != Kind::string) return;
        const std::string& k = remote_key_;
        if (k == "spf") meta_.auth->spf = auth::parse_result(*text);
        else if (k == "dkim") meta_.auth->dkim = auth::parse_result(*text);
        else if (k == "dmarc") meta_.auth->dmarc = auth::parse_result(*text);
        else if (k == "dmarcPolicy") {
            for (auto p : {auth::DmarcPolicy::none, auth::DmarcPolicy::quarantine, auth::DmarcPolicy::reject}) {
                if (*text == auth::policy_name(p)) meta_.auth->dmarc_policy = p;
            }
        } else if (k == "spam" || k == "virus") {
            (k == "spam" ? meta_.auth->spam : meta_.auth->virus) = std::move(*text);
        } else if (k == "spamScore") {
            meta_.auth->spam_score = std::move(*text);
        } else if (k == "spamAction") {
            meta_.auth->spam_action = std::move(*text);
        } else if (k == "virusName") {
            meta_.auth->virus_name = std::move(*text);
        }
    }

    static Clock::time_point time_of(Kind kind, const std::string* text, const std::string& key) {
        if (kind != Kind::string) fail(quoted_key(key) + " must be an ISO-8601 string");
        auto parsed = parse_iso8601(*text);
        if (!parsed) fail(quoted_key(key) + " is not a valid ISO-8601 time: " + *text);
        return *parsed;
    }

    Meta meta_;
    State state_ = State::start;
    State after_skip_ = State::top;
    std::size_t skip_depth_ = 0;
    std::string key_, remote_key_;
    std::vector<std::string> pair_;
    bool seen_id_ = false, seen_created_ = false, seen_recipients_ = false;
};

}  // namespace

Meta parse_meta(std::string_view json) {
    MetaReader reader;
    nlohmann::json::sax_parse(json, &reader);
    return reader.finish();
}

bool reads_back_unchanged(const Meta& meta) {
    const auto ascii = [](std::string_view text) {
        return std::all_of(text.begin(), text.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
    };
    const auto all_ascii = [&](const auto&... texts) { return (ascii(texts) && ...); };
    const auto whole_ms = [](Clock::time_point t) { return chr::floor<chr::milliseconds>(t) == t; };
    if (!whole_ms(meta.created_at)) return false;
    for (const auto* t : {&meta.next_attempt_at, &meta.last_attempt_at, &meta.requeued_at}) {
        if (*t && !whole_ms(**t)) return false;
    }
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
