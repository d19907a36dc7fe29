#include "mxhook/config.hpp"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <limits.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <utility>
#include <memory>

namespace mxhook {
namespace {

// Durations are capped well below what std::chrono::system_clock (nanoseconds on
// libstdc++ and libc++) can hold, so that "now + delay" can never overflow later.
constexpr std::uint64_t max_duration_ms = 1'000'000'000'000;  // about 31 years

bool is_ascii_space(char c) { return c == ' ' || c == '\t'; }

char ascii_lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

std::string lower(std::string_view text) {
    std::string out(text);
    std::transform(out.begin(), out.end(), out.begin(), ascii_lower);
    return out;
}

std::string_view trim(std::string_view text) {
    while (!text.empty() && is_ascii_space(text.front())) text.remove_prefix(1);
    while (!text.empty() && is_ascii_space(text.back())) text.remove_suffix(1);
    return text;
}

// Quotes a user-supplied value for an error message, escaping anything that could
// break the "one line" promise or confuse a terminal.
std::string quote_value(std::string_view value) {
    static constexpr char hex[] = "0123456789abcdef";
    std::string out = "\"";
    for (unsigned char c : value) {
        if (c == '"' || c == '\\') {
            out += '\\';
            out += static_cast<char>(c);
        } else if (c < 0x20 || c == 0x7f) {
            out += "\\x";
            out += hex[c >> 4];
            out += hex[c & 0xf];
        } else {
            out += static_cast<char>(c);
        }
    }
    out += '"';
    return out;
}

[[noreturn]] void fail(std::string_view name, std::string_view problem) {
    std::string line(name);
    line += ": ";
    line += problem;
    throw ConfigError(line);
}

[[noreturn]] void fail(std::string_view name, std::string_view problem, std::string_view got) {
    std::string line(problem);
    line += " (got ";
    line += quote_value(got);
    line += ')';
    fail(name, line);
}

// Decimal digits only: a sign, space or unit suffix is far more likely a mistake
// than something to guess at.
std::optional<std::uint64_t> parse_decimal(std::string_view text) {
    if (text.empty() || !std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; }))
        return std::nullopt;
    std::uint64_t value = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc{} || end != text.data() + text.size()) return std::nullopt;
    return value;
}

// Reads configuration variables; unset and empty are the same thing.
class Reader {
public:
    explicit Reader(const EnvLookup& env) : env_(env) {}

    std::optional<std::string> get(std::string_view name) const {
        auto value = env_(name);
        if (!value || value->empty()) return std::nullopt;
        return value;
    }

    std::uint64_t number(std::string_view name, std::uint64_t fallback, bool allow_zero,
                         std::uint64_t max) const {
        auto text = get(name);
        if (!text) return fallback;
        auto value = parse_decimal(*text);
        const char* kind = allow_zero ? "must be a non-negative integer" : "must be a positive integer";
        if (!value || (*value == 0 && !allow_zero)) fail(name, kind, *text);
        if (*value > max) fail(name, std::string(kind) + " no larger than " + std::to_string(max), *text);
        return *value;
    }

    std::size_t count(std::string_view name, std::size_t fallback) const {
        return static_cast<std::size_t>(number(name, fallback, false, std::numeric_limits<std::size_t>::max()));
    }

    std::chrono::milliseconds millis(std::string_view name, std::chrono::milliseconds fallback,
                                     bool allow_zero = false) const {
        auto ms = number(name, static_cast<std::uint64_t>(fallback.count()), allow_zero, max_duration_ms);
        return std::chrono::milliseconds{static_cast<std::chrono::milliseconds::rep>(ms)};
    }

    std::filesystem::path path(std::string_view name, const std::filesystem::path& fallback) const {
        auto text = get(name);
        return text ? std::filesystem::path(*text) : fallback;
    }

private:
    const EnvLookup& env_;
};

std::optional<std::uint16_t> parse_port(std::string_view text) {
    auto value = parse_decimal(text);
    if (!value || *value < 1 || *value > 65535) return std::nullopt;
    return static_cast<std::uint16_t>(*value);
}

// The acceptor binds to literal addresses; a host name here would need a resolver at
// start-up and could silently bind somewhere unexpected, so only IP literals pass.
// "ip:port" or "[ipv6]:port"; when `default_port` is given the port may be left out
// ("ip", "[ipv6]").
HostPort parse_host_port(std::string_view name, std::string_view item, std::optional<std::uint16_t> default_port) {
    std::string_view host;
    std::optional<std::string_view> port;
    bool ipv6 = false;
    if (!item.empty() && item.front() == '[') {
        auto close = item.find(']');
        if (close == std::string_view::npos)
            fail(name, "IPv6 address is missing its closing ']'", item);
        host = item.substr(1, close - 1);
        auto rest = item.substr(close + 1);
        if (!rest.empty() && rest.front() != ':') fail(name, "expected [address]:port", item);
        if (!rest.empty()) port = rest.substr(1);
        ipv6 = true;
    } else {
        auto colon = item.rfind(':');
        if (colon == std::string_view::npos) {
            host = item;
        } else {
            host = item.substr(0, colon);
            port = item.substr(colon + 1);
        }
        if (host.find(':') != std::string_view::npos)
            fail(name, "an IPv6 address must be written in brackets, e.g. [::1]:25", item);
    }
    if (!port && !default_port) fail(name, ipv6 ? "expected [address]:port" : "expected host:port", item);
    if (host.empty()) fail(name, "the address is empty", item);
    const auto port_number = port ? parse_port(*port) : default_port;
    if (!port_number) fail(name, "port must be a number from 1 to 65535", item);

    std::string host_text(host);
    unsigned char buffer[sizeof(struct in6_addr)];
    if (inet_pton(ipv6 ? AF_INET6 : AF_INET, host_text.c_str(), buffer) != 1)
        fail(name, ipv6 ? "not a valid IPv6 address" : "not a valid IPv4 address", item);
    return HostPort{std::move(host_text), *port_number};
}

std::vector<HostPort> parse_dns_servers(const Reader& reader) {
    std::vector<HostPort> out;
    auto text = reader.get("DNS_SERVERS");
    if (!text) return out;
    for (const auto& item : split_list(*text)) out.push_back(parse_host_port("DNS_SERVERS", item, 53));
    if (out.empty()) fail("DNS_SERVERS", "no server given", *text);
    return out;
}

// "spf,dkim,dmarc", any subset, or "none".
void parse_auth_checks(const Reader& reader, Config& c) {
    constexpr std::string_view name = "AUTH_CHECKS";
    auto text = reader.get(name);
    if (!text) return;
    c.auth_spf = c.auth_dkim = c.auth_dmarc = false;
    const auto items = split_list(*text);
    if (items.size() == 1 && items.front() == "none") return;
    for (const auto& item : items) {
        if (item == "spf") c.auth_spf = true;
        else if (item == "dkim") c.auth_dkim = true;
        else if (item == "dmarc") c.auth_dmarc = true;
        else fail(name, "expected a comma list of spf, dkim, dmarc, or none", *text);
    }
    if (items.empty()) fail(name, "expected a comma list of spf, dkim, dmarc, or none", *text);
}

std::optional<Cidr> parse_cidr(std::string_view text) {
    const auto slash = text.find('/');
    const std::string address(text.substr(0, slash));
    Cidr block;
    block.v6 = address.find(':') != std::string::npos;
    if (::inet_pton(block.v6 ? AF_INET6 : AF_INET, address.c_str(), block.bytes.data()) != 1) return std::nullopt;
    const unsigned bits = block.v6 ? 128 : 32;
    block.prefix = bits;
    if (slash != std::string_view::npos) {
        const auto prefix = parse_decimal(text.substr(slash + 1));
        if (!prefix || *prefix > bits || text.substr(slash + 1).empty()) return std::nullopt;
        block.prefix = static_cast<unsigned>(*prefix);
    }
    return block;
}

std::vector<Cidr> parse_proxy_from(const Reader& reader) {
    constexpr std::string_view name = "SMTP_PROXY_PROTOCOL_FROM";
    std::vector<Cidr> out;
    auto text = reader.get(name);
    if (!text) return out;
    for (const auto& item : split_list(*text)) {
        auto block = parse_cidr(item);
        if (!block) fail(name, "not an address or address/prefix (e.g. 10.0.0.0/8, 2001:db8::/32)", item);
        out.push_back(*block);
    }
    if (out.empty()) fail(name, "no address given", *text);
    return out;
}

std::vector<ListenAddress> parse_listen(const Reader& reader) {
    auto text = reader.get("SMTP_LISTEN");
    if (!text) return {ListenAddress{"0.0.0.0", 25}};
    std::vector<ListenAddress> out;
    for (const auto& item : split_list(*text)) out.push_back(parse_host_port("SMTP_LISTEN", item, std::nullopt));
    if (out.empty()) fail("SMTP_LISTEN", "no address given", *text);
    return out;
}

bool valid_hostname(std::string_view name) {
    return std::none_of(name.begin(), name.end(), [](char ch) {
        auto c = static_cast<unsigned char>(ch);
        return c <= 0x20 || c == 0x7f;
    });
}

std::string parse_hostname(const Reader& reader) {
    constexpr std::string_view name = "SMTP_HOSTNAME";
    if (auto text = reader.get(name)) {
        if (!valid_hostname(*text)) fail(name, "must not contain spaces or control characters", *text);
        return *text;
    }
    char buffer[HOST_NAME_MAX + 1] = {};
    if (gethostname(buffer, sizeof buffer - 1) != 0 || buffer[0] == '\0')
        fail(name, "not set and the system host name is unavailable; set it explicitly");
    std::string host(buffer);
    if (!valid_hostname(host))
        fail(name, "not set and the system host name is unusable; set it explicitly", host);
    return host;
}

// A file mxhook must be able to read (a certificate or key); "" when unset.
std::string parse_readable_file(const Reader& reader, std::string_view name) {
    auto text = reader.get(name);
    if (!text) return {};
    if (::access(text->c_str(), R_OK) != 0) {
        fail(name, std::string("cannot read ") + quote_value(*text) + ": " + std::strerror(errno));
    }
    return *text;
}

// A setting that is one of a few words (any case); the first choice is the default.
template <typename Enum>
Enum parse_choice(const Reader& reader, std::string_view name,
                  std::initializer_list<std::pair<std::string_view, Enum>> choices) {
    auto text = reader.get(name);
    if (!text) return choices.begin()->second;
    const auto word = lower(*text);
    std::string expected;
    for (const auto& [choice, value] : choices) {
        if (word == choice) return value;
        if (!expected.empty()) expected += (&choice == &(choices.end() - 1)->first) ? " or " : ", ";
        expected += choice;
    }
    fail(name, "must be " + expected, *text);
}

bool parse_flag(const Reader& reader, std::string_view name, bool fallback) {
    auto text = reader.get(name);
    if (!text) return fallback;
    auto value = parse_bool(*text);
    if (!value) fail(name, "must be one of 1/true/yes/on or 0/false/no/off", *text);
    return *value;
}

struct CurlUrlDeleter {
    void operator()(CURLU* handle) const { curl_url_cleanup(handle); }
};
struct CurlFree {
    void operator()(char* text) const { curl_free(text); }
};
using CurlString = std::unique_ptr<char, CurlFree>;

// The URL is not echoed back: it may carry credentials (https://user:secret@host/).
// Unset and not required: "".
std::string parse_http_url(const Reader& reader, std::string_view name, bool required) {
    auto text = reader.get(name);
    if (!text) {
        if (required) fail(name, "is required");
        return {};
    }
    if (auto problem = http_url_problem(*text)) fail(name, *problem);
    return *text;
}

std::string parse_log_level(const Reader& reader) {
    auto text = reader.get("LOG_LEVEL");
    if (!text) return "info";
    auto word = lower(*text);
    if (word == "warning") return "warn";
    for (std::string_view level : {"trace", "debug", "info", "warn", "error", "critical", "off"})
        if (word == level) return word;
    fail("LOG_LEVEL", "must be one of trace, debug, info, warn, error, critical, off", *text);
}

}  // namespace

EnvLookup process_env() {
    return [](std::string_view name) -> std::optional<std::string> {
        const char* value = std::getenv(std::string(name).c_str());
        if (!value) return std::nullopt;
        return std::string(value);
    };
}

std::vector<std::string> default_role_addresses() {
    return {"abuse",    "admin",   "administrator", "billing",     "contact",   "daemon",  "help",
            "hostmaster", "info",  "legal",         "mail",        "mailerdaemon", "marketing", "noc",
            "noreply",  "nostr",   "postmaster",    "privacy",     "root",      "sales",   "security",
            "spam",     "support", "sysadmin",      "usenet",      "uucp",      "webmaster", "www"};
}

std::optional<bool> parse_bool(std::string_view text) {
    auto word = lower(text);
    if (word == "1" || word == "true" || word == "yes" || word == "on") return true;
    if (word == "0" || word == "false" || word == "no" || word == "off") return false;
    return std::nullopt;
}

std::vector<std::string> split_list(std::string_view text) {
    std::vector<std::string> out;
    while (true) {
        auto comma = text.find(',');
        auto item = trim(text.substr(0, comma));
        if (!item.empty()) out.emplace_back(item);
        if (comma == std::string_view::npos) break;
        text.remove_prefix(comma + 1);
    }
    return out;
}

SpoolPaths load_spool_paths(const EnvLookup& env) {
    Reader reader(env);
    SpoolPaths p;
    p.root = reader.path("SPOOL_DIR", Config().spool_dir);
    p.tmp = reader.path("SPOOL_TMP_DIR", p.root / "tmp");
    p.pending = reader.path("SPOOL_PENDING_DIR", p.root / "pending");
    p.processing = reader.path("SPOOL_PROCESSING_DIR", p.root / "processing");
    p.dead = reader.path("SPOOL_DEAD_DIR", p.root / "dead");
    return p;
}

Config load_config(const EnvLookup& env) {
    Reader reader(env);
    Config c;

    c.smtp_listen = parse_listen(reader);
    c.dns_servers = parse_dns_servers(reader);
    parse_auth_checks(reader, c);
    c.auth_dns_timeout = reader.millis("AUTH_DNS_TIMEOUT_MS", c.auth_dns_timeout);
    c.auth_public_suffix_list = reader.path("AUTH_PUBLIC_SUFFIX_LIST", c.auth_public_suffix_list);
    c.rspamd_url = parse_http_url(reader, "RSPAMD_URL", /*required=*/false);
    c.rspamd_timeout = reader.millis("RSPAMD_TIMEOUT_MS", c.rspamd_timeout);
    c.rspamd_required = parse_flag(reader, "RSPAMD_REQUIRED", c.rspamd_required);
    if (auto text = reader.get("CLAMD_ADDRESS")) {
        // A path (it starts with '/'), else host:port with an IP literal.
        c.clamd_address = text->front() == '/' ? ClamdAddress{*text, {}}
                                               : ClamdAddress{{}, parse_host_port("CLAMD_ADDRESS", *text, std::nullopt)};
    }
    c.clamd_timeout = reader.millis("CLAMD_TIMEOUT_MS", c.clamd_timeout);
    c.clamd_reject = parse_choice<bool>(reader, "CLAMD_ACTION", {{"reject", true}, {"mark", false}});
    c.clamd_required = parse_flag(reader, "CLAMD_REQUIRED", c.clamd_required);
    c.smtp_proxy_protocol_from = parse_proxy_from(reader);
    if (auto text = reader.get("METRICS_LISTEN")) c.metrics_listen = parse_host_port("METRICS_LISTEN", *text, std::nullopt);
    c.smtp_hostname = parse_hostname(reader);
    c.smtp_max_message_bytes = reader.count("SMTP_MAX_MESSAGE_BYTES", c.smtp_max_message_bytes);
    c.spool_min_free_bytes = reader.number("SPOOL_MIN_FREE_BYTES", c.spool_min_free_bytes, /*allow_zero=*/true,
                                           std::numeric_limits<std::int64_t>::max());
    c.smtp_max_recipients = reader.count("SMTP_MAX_RECIPIENTS", c.smtp_max_recipients);
    c.smtp_bare_lf = parse_choice<BareLfPolicy>(
        reader, "SMTP_BARE_LF", {{"normalize", BareLfPolicy::normalize}, {"reject", BareLfPolicy::reject}});
    c.smtp_timeout = reader.millis("SMTP_TIMEOUT_MS", c.smtp_timeout);
    c.shutdown_grace = reader.millis("SHUTDOWN_GRACE_MS", c.shutdown_grace);
    c.drain_timeout = reader.millis("DRAIN_TIMEOUT_MS", c.drain_timeout);
    c.smtp_max_session = reader.millis("SMTP_MAX_SESSION_MS", c.smtp_max_session);
    c.smtp_max_connections = reader.count("SMTP_MAX_CONNECTIONS", c.smtp_max_connections);
    c.smtp_max_connections_per_ip = reader.count("SMTP_MAX_CONNECTIONS_PER_IP", c.smtp_max_connections_per_ip);
    c.smtp_max_errors = reader.count("SMTP_MAX_ERRORS", c.smtp_max_errors);
    c.smtp_max_junk_commands = reader.count("SMTP_MAX_JUNK_COMMANDS", c.smtp_max_junk_commands);
    c.smtp_max_header_bytes = reader.count("SMTP_MAX_HEADER_BYTES", c.smtp_max_header_bytes);
    c.smtp_max_header_lines = reader.count("SMTP_MAX_HEADER_LINES", c.smtp_max_header_lines);
    c.smtp_max_received_headers = reader.count("SMTP_MAX_RECEIVED_HEADERS", c.smtp_max_received_headers);

    c.smtp_tls_cert_path = parse_readable_file(reader, "SMTP_TLS_CERT_PATH");
    c.smtp_tls_key_path = parse_readable_file(reader, "SMTP_TLS_KEY_PATH");
    if (c.smtp_tls_cert_path.empty() != c.smtp_tls_key_path.empty()) {
        fail(c.smtp_tls_cert_path.empty() ? "SMTP_TLS_CERT_PATH" : "SMTP_TLS_KEY_PATH",
             "must be set too: STARTTLS needs both SMTP_TLS_CERT_PATH and SMTP_TLS_KEY_PATH");
    }
    c.smtp_tls_watch_interval = reader.millis("SMTP_TLS_WATCH_INTERVAL_MS", c.smtp_tls_watch_interval);

    c.accept_all_recipients = parse_flag(reader, "ACCEPT_ALL_RECIPIENTS", c.accept_all_recipients);
    if (auto domains = reader.get("ACCEPTED_DOMAINS")) {
        for (auto& domain : split_list(*domains)) c.accepted_domains.push_back(lower(domain));
    }
    if (!c.accept_all_recipients && c.accepted_domains.empty())
        fail("ACCEPTED_DOMAINS", "must list at least one domain when ACCEPT_ALL_RECIPIENTS is false "
                                 "(otherwise every recipient would be refused)");

    const SpoolPaths paths = load_spool_paths(env);
    c.spool_dir = paths.root;
    c.spool_tmp_dir = paths.tmp;
    c.spool_pending_dir = paths.pending;
    c.spool_processing_dir = paths.processing;
    c.spool_dead_dir = paths.dead;

    c.webhook_url = parse_http_url(reader, "WEBHOOK_URL", /*required=*/true);
    c.webhook_signing_key = reader.get("WEBHOOK_SIGNING_KEY").value_or("");
    c.webhook_concurrency = reader.count("WEBHOOK_CONCURRENCY", c.webhook_concurrency);
    c.webhook_timeout = reader.millis("WEBHOOK_TIMEOUT_MS", c.webhook_timeout);
    c.webhook_recipient_mode = parse_choice<RecipientMode>(
        reader, "WEBHOOK_RECIPIENT_MODE", {{"joined", RecipientMode::joined}, {"each", RecipientMode::each}});
    c.webhook_encoding = parse_choice<WebhookEncoding>(reader, "WEBHOOK_ENCODING",
                                                       {{"auto", WebhookEncoding::auto_detect},
                                                        {"urlencoded", WebhookEncoding::urlencoded},
                                                        {"multipart", WebhookEncoding::multipart}});
    c.webhook_format = parse_choice<WebhookFormat>(
        reader, "WEBHOOK_FORMAT",
        {{"mime", WebhookFormat::mime}, {"parsed", WebhookFormat::parsed}, {"json", WebhookFormat::json}});
    c.webhook_json_raw_email = parse_flag(reader, "WEBHOOK_JSON_RAW_EMAIL", c.webhook_json_raw_email);

    c.webhook_role_url = parse_http_url(reader, "WEBHOOK_ROLE_URL", /*required=*/false);
    c.webhook_routes = reader.get("WEBHOOK_ROUTES").value_or("");
    if (auto roles = reader.get("ROLE_ADDRESSES")) {
        // Replaces the default list rather than extending it, as haraka-webhook does.
        c.role_addresses.clear();
        for (auto& role : split_list(*roles)) c.role_addresses.push_back(lower(role));
        if (c.role_addresses.empty()) fail("ROLE_ADDRESSES", "must list at least one local part", *roles);
    }

    c.decision_url = parse_http_url(reader, "WEBHOOK_DECISION_URL", /*required=*/false);
    c.decision_token = reader.get("WEBHOOK_DECISION_TOKEN").value_or("");
    c.decision_mode = parse_choice<DecisionMode>(reader, "WEBHOOK_DECISION_PAYLOAD_MODE",
                                                 {{"minimal", DecisionMode::minimal},
                                                  {"summary", DecisionMode::summary},
                                                  {"full", DecisionMode::full}});

    c.spool_worker_threads = static_cast<std::size_t>(
        reader.number("SPOOL_WORKER_THREADS", c.spool_worker_threads, /*allow_zero=*/false, 1024));

    c.retry_scan_interval = reader.millis("RETRY_SCAN_INTERVAL_MS", c.retry_scan_interval);
    c.retry_interval = reader.millis("RETRY_INTERVAL_MS", c.retry_interval);
    c.retry_max_interval = reader.millis("RETRY_MAX_INTERVAL_MS", c.retry_max_interval);
    c.max_retry_age = reader.millis("MAX_RETRY_AGE_MS", c.max_retry_age, /*allow_zero=*/true);
    c.max_interrupted_attempts = static_cast<std::int64_t>(
        reader.number("MAX_INTERRUPTED_ATTEMPTS", static_cast<std::uint64_t>(c.max_interrupted_attempts),
                      /*allow_zero=*/false, 1000000));

    c.log_level = parse_log_level(reader);
    c.log_json = parse_choice<bool>(reader, "LOG_FORMAT", {{"text", false}, {"json", true}});
    return c;
}

namespace {

constexpr const char* kMasked = "********";

std::string joined_list(const std::vector<std::string>& items) {
    std::string out;
    for (const auto& item : items) {
        if (!out.empty()) out += ',';
        out += item;
    }
    return out;
}

std::string host_port_text(const HostPort& a) {
    const bool v6 = a.host.find(':') != std::string::npos;
    return (v6 ? "[" + a.host + "]" : a.host) + ":" + std::to_string(a.port);
}

std::string host_ports_text(const std::vector<HostPort>& list) {
    std::vector<std::string> items;
    for (const auto& a : list) items.push_back(host_port_text(a));
    return joined_list(items);
}

}  // namespace

std::string masked_url(const std::string& text) {
    if (text.empty()) return text;
    std::unique_ptr<CURLU, CurlUrlDeleter> url(curl_url());
    if (!url || curl_url_set(url.get(), CURLUPART_URL, text.c_str(), CURLU_NON_SUPPORT_SCHEME) != CURLUE_OK) {
        return kMasked;  // checked at load time; never shown unparsed
    }
    char* raw = nullptr;
    const bool has_password = curl_url_get(url.get(), CURLUPART_PASSWORD, &raw, 0) == CURLUE_OK;
    CurlString password(raw);
    if (!has_password) return text;
    if (curl_url_set(url.get(), CURLUPART_PASSWORD, kMasked, 0) != CURLUE_OK) return kMasked;
    raw = nullptr;
    if (curl_url_get(url.get(), CURLUPART_URL, &raw, 0) != CURLUE_OK) return kMasked;
    CurlString masked(raw);
    return masked.get();
}

namespace {

std::string millis_text(std::chrono::milliseconds ms) { return std::to_string(ms.count()); }

std::string auth_checks_text(const Config& c) {
    std::string out;
    for (const auto& [on, name] : {std::pair{c.auth_spf, "spf"}, {c.auth_dkim, "dkim"}, {c.auth_dmarc, "dmarc"}}) {
        if (!on) continue;
        if (!out.empty()) out += ',';
        out += name;
    }
    return out.empty() ? "none" : out;
}

std::string cidrs_text(const std::vector<Cidr>& blocks) {
    std::vector<std::string> items;
    for (const auto& b : blocks) {
        char text[INET6_ADDRSTRLEN] = {};
        ::inet_ntop(b.v6 ? AF_INET6 : AF_INET, b.bytes.data(), text, sizeof text);
        items.push_back(std::string(text) + "/" + std::to_string(b.prefix));
    }
    return joined_list(items);
}

}  // namespace

std::optional<std::string> http_url_problem(const std::string& text) {
    std::unique_ptr<CURLU, CurlUrlDeleter> url(curl_url());
    if (!url) return "could not be checked (out of memory)";
    if (auto rc = curl_url_set(url.get(), CURLUPART_URL, text.c_str(), CURLU_NON_SUPPORT_SCHEME); rc != CURLUE_OK)
        return std::string("is not a valid absolute URL: ") + curl_url_strerror(rc);
    char* raw = nullptr;
    if (curl_url_get(url.get(), CURLUPART_SCHEME, &raw, 0) != CURLUE_OK) return "must start with http:// or https://";
    CurlString scheme(raw);
    auto scheme_text = lower(scheme.get());
    if (scheme_text != "http" && scheme_text != "https")
        return "must start with http:// or https:// (got scheme " + quote_value(scheme_text) + ")";
    raw = nullptr;
    auto rc = curl_url_get(url.get(), CURLUPART_HOST, &raw, 0);
    CurlString host(raw);
    if (rc != CURLUE_OK || !host || host.get()[0] == '\0') return "must name a host";
    return std::nullopt;
}

std::vector<std::pair<std::string, std::string>> describe(const Config& c) {
    const auto flag = [](bool b) { return std::string(b ? "true" : "false"); };
    const auto secret = [](const std::string& v) { return v.empty() ? std::string() : std::string(kMasked); };
    const char* recipient_mode = c.webhook_recipient_mode == RecipientMode::each ? "each" : "joined";
    const char* encoding = c.webhook_encoding == WebhookEncoding::urlencoded  ? "urlencoded"
                           : c.webhook_encoding == WebhookEncoding::multipart ? "multipart"
                                                                              : "auto";
    const char* decision_mode = c.decision_mode == DecisionMode::summary ? "summary"
                                : c.decision_mode == DecisionMode::full  ? "full"
                                                                         : "minimal";
    return {
        {"WEBHOOK_URL", masked_url(c.webhook_url)},
        {"WEBHOOK_SIGNING_KEY", secret(c.webhook_signing_key)},
        {"WEBHOOK_CONCURRENCY", std::to_string(c.webhook_concurrency)},
        {"WEBHOOK_TIMEOUT_MS", millis_text(c.webhook_timeout)},
        {"WEBHOOK_RECIPIENT_MODE", recipient_mode},
        {"WEBHOOK_ENCODING", encoding},
        {"WEBHOOK_FORMAT", c.webhook_format == WebhookFormat::parsed ? "parsed"
                           : c.webhook_format == WebhookFormat::json ? "json"
                                                                     : "mime"},
        {"WEBHOOK_JSON_RAW_EMAIL", flag(c.webhook_json_raw_email)},
        {"WEBHOOK_ROLE_URL", masked_url(c.webhook_role_url)},
        {"WEBHOOK_ROUTES", c.webhook_routes.string()},
        {"ROLE_ADDRESSES", joined_list(c.role_addresses)},
        {"WEBHOOK_DECISION_URL", masked_url(c.decision_url)},
        {"WEBHOOK_DECISION_TOKEN", secret(c.decision_token)},
        {"WEBHOOK_DECISION_PAYLOAD_MODE", decision_mode},
        {"SMTP_LISTEN", host_ports_text(c.smtp_listen)},
        {"SMTP_HOSTNAME", c.smtp_hostname},
        {"SMTP_MAX_MESSAGE_BYTES", std::to_string(c.smtp_max_message_bytes)},
        {"SMTP_MAX_RECIPIENTS", std::to_string(c.smtp_max_recipients)},
        {"SMTP_BARE_LF", c.smtp_bare_lf == BareLfPolicy::reject ? "reject" : "normalize"},
        {"SMTP_TIMEOUT_MS", millis_text(c.smtp_timeout)},
        {"SMTP_MAX_SESSION_MS", millis_text(c.smtp_max_session)},
        {"SMTP_MAX_CONNECTIONS", std::to_string(c.smtp_max_connections)},
        {"SMTP_MAX_CONNECTIONS_PER_IP", std::to_string(c.smtp_max_connections_per_ip)},
        {"SMTP_MAX_ERRORS", std::to_string(c.smtp_max_errors)},
        {"SMTP_MAX_JUNK_COMMANDS", std::to_string(c.smtp_max_junk_commands)},
        {"SMTP_MAX_HEADER_BYTES", std::to_string(c.smtp_max_header_bytes)},
        {"SMTP_MAX_HEADER_LINES", std::to_string(c.smtp_max_header_lines)},
        {"SMTP_MAX_RECEIVED_HEADERS", std::to_string(c.smtp_max_received_headers)},
        {"SMTP_TLS_CERT_PATH", c.smtp_tls_cert_path},
        {"SMTP_TLS_KEY_PATH", c.smtp_tls_key_path},
        {"SMTP_TLS_WATCH_INTERVAL_MS", millis_text(c.smtp_tls_watch_interval)},
        {"ACCEPT_ALL_RECIPIENTS", flag(c.accept_all_recipients)},
        {"ACCEPTED_DOMAINS", joined_list(c.accepted_domains)},
        {"SPOOL_DIR", c.spool_dir.string()},
        {"SPOOL_TMP_DIR", c.spool_tmp_dir.string()},
        {"SPOOL_PENDING_DIR", c.spool_pending_dir.string()},
        {"SPOOL_PROCESSING_DIR", c.spool_processing_dir.string()},
        {"SPOOL_DEAD_DIR", c.spool_dead_dir.string()},
        {"SPOOL_MIN_FREE_BYTES", std::to_string(c.spool_min_free_bytes)},
        {"SPOOL_WORKER_THREADS", std::to_string(c.spool_worker_threads)},
        {"RETRY_SCAN_INTERVAL_MS", millis_text(c.retry_scan_interval)},
        {"RETRY_INTERVAL_MS", millis_text(c.retry_interval)},
        {"RETRY_MAX_INTERVAL_MS", millis_text(c.retry_max_interval)},
        {"MAX_RETRY_AGE_MS", millis_text(c.max_retry_age)},
        {"MAX_INTERRUPTED_ATTEMPTS", std::to_string(c.max_interrupted_attempts)},
        {"DNS_SERVERS", host_ports_text(c.dns_servers)},
        {"AUTH_CHECKS", auth_checks_text(c)},
        {"AUTH_DNS_TIMEOUT_MS", millis_text(c.auth_dns_timeout)},
        {"AUTH_PUBLIC_SUFFIX_LIST", c.auth_public_suffix_list.string()},
        {"RSPAMD_URL", masked_url(c.rspamd_url)},
        {"RSPAMD_TIMEOUT_MS", millis_text(c.rspamd_timeout)},
        {"RSPAMD_REQUIRED", flag(c.rspamd_required)},
        {"CLAMD_ADDRESS", !c.clamd_address ? std::string()
                          : !c.clamd_address->unix_path.empty() ? c.clamd_address->unix_path
                                                                : host_port_text(c.clamd_address->tcp)},
        {"CLAMD_TIMEOUT_MS", millis_text(c.clamd_timeout)},
        {"CLAMD_ACTION", c.clamd_reject ? "reject" : "mark"},
        {"CLAMD_REQUIRED", flag(c.clamd_required)},
        {"SMTP_PROXY_PROTOCOL_FROM", cidrs_text(c.smtp_proxy_protocol_from)},
        {"METRICS_LISTEN", c.metrics_listen ? host_port_text(*c.metrics_listen) : std::string()},
        {"LOG_LEVEL", c.log_level},
        {"LOG_FORMAT", c.log_json ? "json" : "text"},
        {"SHUTDOWN_GRACE_MS", millis_text(c.shutdown_grace)},
        {"DRAIN_TIMEOUT_MS", millis_text(c.drain_timeout)},
    };
}

bool cidr_contains(const Cidr& block, std::string_view ip) {
    const std::string text(ip);
    std::array<unsigned char, 16> raw{};
    const bool v6 = text.find(':') != std::string::npos;
    if (v6 != block.v6 || ::inet_pton(v6 ? AF_INET6 : AF_INET, text.c_str(), raw.data()) != 1) return false;
    unsigned left = block.prefix;
    for (std::size_t i = 0; left > 0; ++i) {
        const unsigned take = left >= 8 ? 8 : left;
        const auto mask = static_cast<unsigned char>(0xff00u >> take);
        if ((raw[i] & mask) != (block.bytes[i] & mask)) return false;
        left -= take;
    }
    return true;
}

}  // namespace mxhook
