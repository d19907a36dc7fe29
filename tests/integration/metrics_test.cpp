// The operator's HTTP endpoint (METRICS_LISTEN) through the real binary, as Prometheus and
// a load balancer see it: /metrics moves as mail flows (SMTP transactions by reply code,
// bytes and sizes, connections and refusals, STARTTLS versions, decision answers, webhook
// deliveries, retries, dead letters and their statuses, the spool gauges) and is valid
// text exposition 0.0.4; /healthz and /readyz answer, /readyz says 503 when a spool
// directory cannot be written and during the shutdown grace; unknown paths, other methods,
// oversized heads, silent clients and too many connections are handled without harm to
// SMTP; a bad METRICS_LISTEN stops the start naming the variable.

#include "harness/certs.hpp"
#include "harness/fixture.hpp"
#include "harness/tls_client.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace itest {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr const char* kExpositionType = "text/plain; version=0.0.4; charset=utf-8";

// --- a small HTTP/1.1 client --------------------------------------------------------------------

std::string lowercase(std::string text) {
    for (char& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return text;
}

struct HttpResponse {
    int status = 0;       // 0: no response (closed, reset or timed out; see `error`)
    std::vector<std::pair<std::string, std::string>> headers;  // names lowercased
    std::string body;
    std::string error;

    std::string header(std::string_view name) const {
        for (const auto& [key, value] : headers) {
            if (key == lowercase(std::string(name))) return value;
        }
        return {};
    }
};

std::ostream& operator<<(std::ostream& out, const HttpResponse& r) {
    if (r.status == 0) return out << "no response (" << r.error << ")";
    return out << "HTTP " << r.status << " \"" << r.body.substr(0, 200) << "\"";
}

// A TCP connection to host (an IPv4 or IPv6 literal) and port whose reads and writes time
// out after `timeout`; -1 with `error` set when it cannot be made.
int connect_to(const std::string& host, unsigned short port, std::chrono::milliseconds timeout, std::string& error) {
    sockaddr_storage addr{};
    socklen_t length = 0;
    if (host.find(':') != std::string::npos) {
        auto& a6 = reinterpret_cast<sockaddr_in6&>(addr);
        a6.sin6_family = AF_INET6;
        a6.sin6_port = htons(port);
        if (::inet_pton(AF_INET6, host.c_str(), &a6.sin6_addr) != 1) {
            error = "bad address " + host;
            return -1;
        }
        length = sizeof a6;
    } else {
        auto& a4 = reinterpret_cast<sockaddr_in&>(addr);
        a4.sin_family = AF_INET;
        a4.sin_port = htons(port);
        if (::inet_pton(AF_INET, host.c_str(), &a4.sin_addr) != 1) {
            error = "bad address " + host;
            return -1;
        }
        length = sizeof a4;
    }
    const int fd = ::socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        error = std::strerror(errno);
        return -1;
    }
    set_io_timeout(fd, timeout);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), length) != 0) {
        error = "connect " + host + ":" + std::to_string(port) + ": " + std::strerror(errno);
        ::close(fd);
        return -1;
    }
    return fd;
}

bool send_all(int fd, std::string_view bytes, std::string& error) {
    while (!bytes.empty()) {
        const ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            error = std::string("send: ") + std::strerror(errno);
            return false;
        }
        bytes.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
}

// Reads one response from `fd` (head, then Content-Length bytes of body, or up to EOF when
// there is no Content-Length). `buffer` keeps what was read beyond it.
HttpResponse read_response(int fd, std::string& buffer) {
    HttpResponse r;
    const auto receive = [&]() -> bool {
        char chunk[8192];
        for (;;) {
            const ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
            if (n > 0) {
                buffer.append(chunk, static_cast<std::size_t>(n));
                return true;
            }
            if (n < 0 && errno == EINTR) continue;
            r.error = n == 0 ? "closed by the server"
                      : (errno == EAGAIN || errno == EWOULDBLOCK) ? "timed out"
                                                                  : std::string("recv: ") + std::strerror(errno);
            return false;
        }
    };
    std::size_t head_end;
    while ((head_end = buffer.find("\r\n\r\n")) == std::string::npos) {
        if (!receive()) {
            if (!buffer.empty()) r.error += " after " + std::to_string(buffer.size()) + " bytes of head";
            return r;
        }
    }
    std::istringstream head(buffer.substr(0, head_end));
    std::string line;
    std::getline(head, line);
    if (line.rfind("HTTP/1.", 0) != 0 || line.size() < 12) {
        r.error = "not an HTTP status line: " + line;
        return r;
    }
    const int status = std::atoi(line.c_str() + 9);
    while (std::getline(head, line)) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        const auto colon = line.find(':');
        if (colon == std::string::npos) continue;
        std::string value = line.substr(colon + 1);
        value.erase(0, value.find_first_not_of(" \t"));
        r.headers.emplace_back(lowercase(line.substr(0, colon)), value);
    }
    buffer.erase(0, head_end + 4);
    const std::string length_text = r.header("content-length");
    if (length_text.empty()) {
        while (receive()) {
        }
        r.error.clear();
        r.body = std::move(buffer);
        buffer.clear();
    } else {
        const auto length = static_cast<std::size_t>(std::stoull(length_text));
        while (buffer.size() < length) {
            if (!receive()) {
                r.error += " in the body";
                return r;
            }
        }
        r.body = buffer.substr(0, length);
        buffer.erase(0, length);
    }
    r.status = status;
    return r;
}

// Sends `raw` (a whole request) on a new connection and reads one response.
HttpResponse http_exchange(const std::string& host, unsigned short port, std::string_view raw,
                           std::chrono::milliseconds timeout = 5s) {
    HttpResponse r;
    const int fd = connect_to(host, port, timeout, r.error);
    if (fd < 0) return r;
    std::string buffer;
    if (send_all(fd, raw, r.error)) r = read_response(fd, buffer);
    else {
        // The server may have answered and closed before taking everything: read what came.
        std::string why = r.error;
        r = read_response(fd, buffer);
        if (r.status == 0) r.error = why + "; then " + r.error;
    }
    ::close(fd);
    return r;
}

std::string request_head(std::string_view method, std::string_view target, std::string_view extra_headers = {}) {
    return std::string(method) + " " + std::string(target) + " HTTP/1.1\r\nHost: metrics.test\r\n" +
           std::string(extra_headers) + "Connection: close\r\n\r\n";
}

// --- the text exposition ----------------------------------------------------------------------------

using Samples = std::map<std::string, double>;  // `name{labels}` as written -> value

struct Exposition {
    Samples samples;
    std::map<std::string, std::string> types;  // family -> counter, gauge, histogram...
    std::set<std::string> helps;               // families with a # HELP line
    std::vector<std::string> problems;         // what does not follow the format
};

std::optional<double> at(const Samples& samples, const std::string& key) {
    const auto it = samples.find(key);
    if (it == samples.end()) return std::nullopt;
    return it->second;
}

// The family a sample belongs to: its name, or for a histogram's series the name without
// _bucket, _sum or _count.
std::string family_of(const std::string& name, const std::map<std::string, std::string>& types) {
    if (types.count(name)) return name;
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
        if (name.ends_with(suffix)) {
            const std::string base = name.substr(0, name.size() - std::strlen(suffix));
            const auto it = types.find(base);
            if (it != types.end() && (it->second == "histogram" || it->second == "summary")) return base;
        }
    }
    return {};
}

Exposition parse_exposition(const std::string& text) {
    // A name, optionally {label="value",...}, a value and an optional timestamp.
    static const std::string label = R"([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*")";
    static const std::regex sample_line("^([a-zA-Z_:][a-zA-Z0-9_:]*)(\\{" + label + "(?:," + label +
                                        ")*\\})? (\\S+)( -?\\d+)?$");
    static const std::regex type_line(
        R"(^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$)");
    static const std::regex help_line(R"(^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) .*$)");
    Exposition out;
    if (!text.empty() && text.back() != '\n') out.problems.push_back("the exposition does not end with a newline");
    std::istringstream in(text);
    std::string line;
    std::set<std::string> families_with_samples;
    while (std::getline(in, line)) {
        std::smatch m;
        if (line.empty()) continue;
        if (line.rfind("#", 0) == 0) {
            if (std::regex_match(line, m, type_line)) {
                if (out.types.count(m[1])) out.problems.push_back("second # TYPE for " + m[1].str());
                if (families_with_samples.count(m[1])) out.problems.push_back("# TYPE after samples: " + line);
                out.types[m[1]] = m[2];
            } else if (std::regex_match(line, m, help_line)) {
                out.helps.insert(m[1]);
            } else if (line.rfind("# TYPE", 0) == 0 || line.rfind("# HELP", 0) == 0) {
                out.problems.push_back("malformed: " + line);
            }
            continue;
        }
        if (!std::regex_match(line, m, sample_line)) {
            out.problems.push_back("not a sample line: " + line);
            continue;
        }
        const std::string name = m[1];
        const std::string key = name + m[2].str();
        const std::string value_text = m[3];
        char* end = nullptr;
        const double value = std::strtod(value_text.c_str(), &end);
        if (end == value_text.c_str() || *end != '\0') out.problems.push_back("value is not a number: " + line);
        if (out.samples.count(key)) out.problems.push_back("sample repeated: " + key);
        out.samples[key] = value;
        const std::string family = family_of(name, out.types);
        if (family.empty()) out.problems.push_back("no # TYPE line before " + key);
        else families_with_samples.insert(family);
        if (!family.empty() && !out.helps.count(family)) out.problems.push_back("no # HELP line for " + family);
    }
    return out;
}

// Each histogram: buckets cumulative (never falling), +Inf equal to _count.
void expect_histograms_consistent(const Exposition& e) {
    for (const auto& [family, type] : e.types) {
        if (type != "histogram") continue;
        const std::string prefix = family + "_bucket{le=\"";
        double previous = 0;
        std::optional<double> inf;
        int buckets = 0;
        // (std::map orders the le values as text; walk them in the order of their bounds.)
        std::vector<std::pair<double, double>> bounds;
        for (const auto& [key, value] : e.samples) {
            if (key.rfind(prefix, 0) != 0) continue;
            const std::string le = key.substr(prefix.size(), key.size() - prefix.size() - 2);
            ++buckets;
            if (le == "+Inf") inf = value;
            else bounds.emplace_back(std::strtod(le.c_str(), nullptr), value);
        }
        std::sort(bounds.begin(), bounds.end());
        for (const auto& [le, value] : bounds) {
            EXPECT_GE(value, previous) << family << ": bucket le=" << le << " is below the one before it";
            previous = value;
        }
        EXPECT_GT(buckets, 0) << family << " has no buckets";
        ASSERT_TRUE(inf.has_value()) << family << " has no +Inf bucket";
        EXPECT_GE(*inf, previous) << family;
        EXPECT_EQ(at(e.samples, family + "_count"), *inf) << family << ": _count differs from the +Inf bucket";
        EXPECT_TRUE(at(e.samples, family + "_sum").has_value()) << family << " has no _sum";
    }
}

// Samples of `family` (all label sets), e.g. to see that only one status was counted.
std::map<std::string, double> series_of(const Samples& samples, const std::string& family) {
    std::map<std::string, double> out;
    for (const auto& [key, value] : samples) {
        if (key == family || key.rfind(family + "{", 0) == 0) out.emplace(key, value);
    }
    return out;
}

std::string dump(const Samples& samples, const std::string& family) {
    std::string out;
    for (const auto& [key, value] : series_of(samples, family)) out += "\n  " + key + " " + std::to_string(value);
    return out.empty() ? "\n  (no " + family + " samples)" : out;
}

double unix_now() {
    return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// --- the fixture ----------------------------------------------------------------------------------

class MetricsTest : public IntegrationTest {
protected:
    // start_daemon() with METRICS_LISTEN on a free loopback port (not the SMTP one).
    bool start_with_metrics(Env overrides = {}) {
        const unsigned short smtp = free_port();
        do metrics_port_ = free_port();
        while (metrics_port_ == smtp);
        if (!overrides.count("SMTP_LISTEN")) overrides["SMTP_LISTEN"] = "127.0.0.1:" + std::to_string(smtp);
        if (!overrides.count("METRICS_LISTEN")) {
            overrides["METRICS_LISTEN"] = "127.0.0.1:" + std::to_string(metrics_port_);
        }
        return start_daemon(overrides);
    }

    HttpResponse get(const std::string& target) {
        return http_exchange("127.0.0.1", metrics_port_, request_head("GET", target));
    }

    // Scrapes until `done` holds (bounded); the last scrape. The caller then asserts each
    // value, so a timeout shows what was expected and what was there.
    Samples scrape_until(const std::function<bool(const Samples&)>& done, std::chrono::milliseconds timeout = 10s) {
        Samples last;
        HttpResponse response;
        wait_until(
            [&] {
                response = get("/metrics");
                if (response.status != 200) return false;
                last = parse_exposition(response.body).samples;
                return done(last);
            },
            timeout, 50ms);
        EXPECT_EQ(response.status, 200) << "GET /metrics: " << response;
        return last;
    }

    // Polls the given path until its status is `status` (bounded); the last response.
    HttpResponse get_until(const std::string& target, int status, std::chrono::milliseconds timeout = 10s) {
        HttpResponse last;
        wait_until(
            [&] {
                last = get(target);
                return last.status == status;
            },
            timeout, 50ms);
        return last;
    }

    // Waits for every SMTP session to be over (the readiness probe of start_daemon() and
    // the sessions of send_one() end a moment after their client leaves).
    Samples no_sessions_open() {
        const Samples s = scrape_until([](const Samples& s) { return at(s, "mxhook_smtp_connections_open") == 0.0; });
        EXPECT_EQ(at(s, "mxhook_smtp_connections_open"), 0.0);
        return s;
    }

    unsigned short metrics_port_ = 0;
};

// --- mail flow --------------------------------------------------------------------------------------

TEST_F(MetricsTest, OneDeliveredMessageMovesTheCounters) {
    ASSERT_TRUE(start_with_metrics());
    const std::string message = simple_message("counted");
    const std::string id = send_one(message);
    ASSERT_FALSE(id.empty());
    ASSERT_TRUE(request_for(id).has_value());

    const Samples s = scrape_until([](const Samples& s) {
        return at(s, R"(mxhook_deliveries_total{outcome="delivered"})") == 1.0 &&
               at(s, R"(mxhook_spool_items{state="pending"})") == 0.0 &&
               at(s, R"(mxhook_spool_items{state="processing"})") == 0.0 &&
               at(s, "mxhook_smtp_connections_open") == 0.0;
    });
    const double size = static_cast<double>(with_final_crlf(message).size());

    // SMTP: one transaction ended by 250, its bytes, its size.
    EXPECT_EQ(at(s, R"(mxhook_smtp_transactions_total{code="250"})"), 1.0) << dump(s, "mxhook_smtp_transactions_total");
    EXPECT_EQ(series_of(s, "mxhook_smtp_transactions_total").size(), 1u) << dump(s, "mxhook_smtp_transactions_total");
    EXPECT_EQ(at(s, "mxhook_smtp_received_bytes_total"), size) << "the message's bytes, trace header excluded";
    EXPECT_EQ(at(s, "mxhook_smtp_message_size_bytes_count"), 1.0);
    EXPECT_EQ(at(s, "mxhook_smtp_message_size_bytes_sum"), size);
    EXPECT_EQ(at(s, R"(mxhook_smtp_message_size_bytes_bucket{le="1024"})"), 1.0)
        << dump(s, "mxhook_smtp_message_size_bytes_bucket");
    EXPECT_GE(at(s, "mxhook_smtp_connections_total").value_or(0), 1.0);
    EXPECT_EQ(at(s, "mxhook_smtp_connections_open"), 0.0);
    EXPECT_EQ(at(s, R"(mxhook_smtp_connections_refused_total{reason="max_connections"})"), 0.0);
    EXPECT_EQ(at(s, R"(mxhook_smtp_connections_refused_total{reason="max_connections_per_ip"})"), 0.0);

    // Delivery: one POST, answered 200, at the first attempt.
    EXPECT_EQ(at(s, R"(mxhook_deliveries_total{outcome="delivered"})"), 1.0);
    EXPECT_EQ(at(s, R"(mxhook_deliveries_total{outcome="retried"})"), 0.0);
    EXPECT_EQ(at(s, R"(mxhook_deliveries_total{outcome="dead_lettered"})"), 0.0);
    EXPECT_EQ(at(s, R"(mxhook_delivery_responses_total{status="200"})"), 1.0)
        << dump(s, "mxhook_delivery_responses_total");
    EXPECT_EQ(series_of(s, "mxhook_delivery_responses_total").size(), 1u) << dump(s, "mxhook_delivery_responses_total");
    EXPECT_EQ(at(s, "mxhook_delivery_attempts_count"), 1.0);
    EXPECT_EQ(at(s, "mxhook_delivery_attempts_sum"), 1.0);
    EXPECT_EQ(at(s, R"(mxhook_delivery_attempts_bucket{le="1"})"), 1.0) << dump(s, "mxhook_delivery_attempts_bucket");
    EXPECT_EQ(at(s, "mxhook_delivery_latency_seconds_count"), 1.0);
    const double latency = at(s, "mxhook_delivery_latency_seconds_sum").value_or(-1);
    EXPECT_GE(latency, 0.0);
    EXPECT_LT(latency, 10.0) << "from the 250 to the 200 took at most the test's own wait";
    EXPECT_EQ(at(s, "mxhook_webhook_requests_in_flight"), 0.0);
    EXPECT_EQ(at(s, R"(mxhook_decisions_total{outcome="allow"})"), 0.0) << "no decision API configured";

    // Spool: empty again (the delivered item kept in tmp/ for reuse is no message).
    for (const char* state : {"tmp", "pending", "processing", "dead"}) {
        EXPECT_EQ(at(s, std::string(R"(mxhook_spool_items{state=")") + state + "\"}"), 0.0) << state;
        EXPECT_EQ(at(s, std::string(R"(mxhook_spool_bytes{state=")") + state + "\"}"), 0.0) << state;
    }
    EXPECT_EQ(at(s, "mxhook_spool_oldest_pending_age_seconds"), 0.0);

    // Process.
    const auto build = series_of(s, "mxhook_build_info");
    ASSERT_EQ(build.size(), 1u) << dump(s, "mxhook_build_info");
    EXPECT_EQ(build.begin()->second, 1.0);
    const std::regex build_labels(R"(mxhook_build_info\{version="[^"]+",commit="[^"]+"\})");
    EXPECT_TRUE(std::regex_match(build.begin()->first, build_labels))
        << build.begin()->first;
    const double started = at(s, "process_start_time_seconds").value_or(0);
    EXPECT_GT(started, unix_now() - 120) << "process_start_time_seconds is not the start of this daemon";
    EXPECT_LE(started, unix_now() + 1);
}

TEST_F(MetricsTest, ExpositionIsWellFormedWithTheZeroZeroFourContentType) {
    ASSERT_TRUE(start_with_metrics());
    // Something in every family that can be empty: a transaction and a delivery.
    const std::string id = send_one(simple_message());
    ASSERT_TRUE(request_for(id).has_value());
    scrape_until([](const Samples& s) { return at(s, R"(mxhook_deliveries_total{outcome="delivered"})") == 1.0; });

    const HttpResponse r = get("/metrics");
    ASSERT_EQ(r.status, 200) << r;
    EXPECT_EQ(r.header("Content-Type"), kExpositionType);
    const Exposition e = parse_exposition(r.body);
    std::string problems;
    for (const auto& p : e.problems) problems += "\n  " + p;
    EXPECT_TRUE(e.problems.empty()) << "the exposition breaks the text format:" << problems;
    expect_histograms_consistent(e);

    // Every family the endpoint promises has its # HELP and # TYPE, with the right type.
    const std::map<std::string, std::string> expected{
        {"mxhook_build_info", "gauge"},
        {"process_start_time_seconds", "gauge"},
        {"mxhook_smtp_connections_open", "gauge"},
        {"mxhook_smtp_connections_total", "counter"},
        {"mxhook_smtp_connections_refused_total", "counter"},
        {"mxhook_smtp_transactions_total", "counter"},
        {"mxhook_smtp_received_bytes_total", "counter"},
        {"mxhook_smtp_message_size_bytes", "histogram"},
        {"mxhook_smtp_tls_sessions_total", "counter"},
        {"mxhook_decisions_total", "counter"},
        {"mxhook_deliveries_total", "counter"},
        {"mxhook_delivery_responses_total", "counter"},
        {"mxhook_delivery_latency_seconds", "histogram"},
        {"mxhook_delivery_attempts", "histogram"},
        {"mxhook_webhook_requests_in_flight", "gauge"},
        {"mxhook_spool_items", "gauge"},
        {"mxhook_spool_bytes", "gauge"},
        {"mxhook_spool_oldest_pending_age_seconds", "gauge"},
    };
    for (const auto& [family, type] : expected) {
        EXPECT_TRUE(e.helps.count(family)) << "no # HELP for " << family;
        const auto it = e.types.find(family);
        if (it == e.types.end()) ADD_FAILURE() << "no # TYPE for " << family;
        else EXPECT_EQ(it->second, type) << family;
    }
    for (const char* outcome : {"allow", "deny", "silent_deny", "error"}) {
        EXPECT_TRUE(at(e.samples, std::string(R"(mxhook_decisions_total{outcome=")") + outcome + "\"}"))
            << "decision outcome " << outcome << " is not exported at 0";
    }
    for (const char* outcome : {"delivered", "retried", "dead_lettered"}) {
        EXPECT_TRUE(at(e.samples, std::string(R"(mxhook_deliveries_total{outcome=")") + outcome + "\"}"))
            << "delivery outcome " << outcome << " is not exported";
    }
    // A query string is the same page (Prometheus may add one).
    EXPECT_EQ(get("/metrics?name[]=x").status, 200);
}

TEST_F(MetricsTest, RetriesAndTheirStatusesAreCountedAndTheAttemptsObserved) {
    hook_.queue_statuses({500, 500});
    ASSERT_TRUE(start_with_metrics());
    const std::string id = send_one(simple_message("retry me"));
    ASSERT_FALSE(id.empty());
    ASSERT_TRUE(hook_.wait_for(3, 15s)) << "got " << hook_.count() << " POSTs";

    const Samples s = scrape_until([](const Samples& s) {
        return at(s, R"(mxhook_deliveries_total{outcome="delivered"})") == 1.0 &&
               at(s, R"(mxhook_spool_items{state="pending"})") == 0.0;
    });
    EXPECT_EQ(at(s, R"(mxhook_deliveries_total{outcome="retried"})"), 2.0);
    EXPECT_EQ(at(s, R"(mxhook_deliveries_total{outcome="delivered"})"), 1.0);
    EXPECT_EQ(at(s, R"(mxhook_deliveries_total{outcome="dead_lettered"})"), 0.0);
    EXPECT_EQ(at(s, R"(mxhook_delivery_responses_total{status="500"})"), 2.0)
        << dump(s, "mxhook_delivery_responses_total");
    EXPECT_EQ(at(s, R"(mxhook_delivery_responses_total{status="200"})"), 1.0)
        << dump(s, "mxhook_delivery_responses_total");
    EXPECT_EQ(series_of(s, "mxhook_delivery_responses_total").size(), 2u) << dump(s, "mxhook_delivery_responses_total");
    // One delivered message that took three attempts.
    EXPECT_EQ(at(s, "mxhook_delivery_attempts_count"), 1.0);
    EXPECT_EQ(at(s, "mxhook_delivery_attempts_sum"), 3.0);
    EXPECT_EQ(at(s, R"(mxhook_delivery_attempts_bucket{le="1"})"), 0.0) << dump(s, "mxhook_delivery_attempts_bucket");
    EXPECT_EQ(at(s, R"(mxhook_delivery_attempts_bucket{le="2"})"), 0.0) << dump(s, "mxhook_delivery_attempts_bucket");
    EXPECT_EQ(at(s, R"(mxhook_delivery_attempts_bucket{le="3"})"), 1.0) << dump(s, "mxhook_delivery_attempts_bucket");
    // Latency counts from the 250, retries included: two back-offs of at least 100 ms.
    EXPECT_EQ(at(s, "mxhook_delivery_latency_seconds_count"), 1.0);
    EXPECT_GE(at(s, "mxhook_delivery_latency_seconds_sum").value_or(0), 0.2);
    // Only the one transaction, whatever the retries.
    EXPECT_EQ(at(s, R"(mxhook_smtp_transactions_total{code="250"})"), 1.0);
}

TEST_F(MetricsTest, NotAcceptableIsCountedAsDeadLettered) {
    hook_.respond_with([](const WebhookRequest&) { return 406u; });
    ASSERT_TRUE(start_with_metrics());
    const std::string id = send_one(simple_message("refused"));
    ASSERT_FALSE(id.empty());
    ASSERT_TRUE(request_for(id).has_value());

    const Samples s = scrape_until([](const Samples& s) {
        return at(s, R"(mxhook_deliveries_total{outcome="dead_lettered"})") == 1.0 &&
               at(s, R"(mxhook_spool_items{state="dead"})") == 1.0 &&
               at(s, R"(mxhook_spool_items{state="pending"})") == 0.0;
    });
    EXPECT_EQ(at(s, R"(mxhook_deliveries_total{outcome="dead_lettered"})"), 1.0);
    EXPECT_EQ(at(s, R"(mxhook_spool_items{state="dead"})"), 1.0);
    EXPECT_EQ(at(s, R"(mxhook_spool_items{state="pending"})"), 0.0);
    EXPECT_GE(at(s, R"(mxhook_spool_bytes{state="dead"})").value_or(0),
              static_cast<double>(with_final_crlf(simple_message("refused")).size()))
        << "dead/ holds the message and its meta.json";
    EXPECT_EQ(at(s, R"(mxhook_deliveries_total{outcome="delivered"})"), 0.0);
    EXPECT_EQ(at(s, R"(mxhook_deliveries_total{outcome="retried"})"), 0.0);
    EXPECT_EQ(at(s, R"(mxhook_delivery_responses_total{status="406"})"), 1.0)
        << dump(s, "mxhook_delivery_responses_total");
    EXPECT_EQ(at(s, "mxhook_delivery_attempts_count"), 0.0) << "a dead letter is not a delivered message";
    EXPECT_EQ(at(s, "mxhook_delivery_latency_seconds_count"), 0.0);
    EXPECT_EQ(at(s, "mxhook_spool_oldest_pending_age_seconds"), 0.0) << "dead items are not waiting";
}

TEST_F(MetricsTest, MessageWaitingForADownWebhookShowsInTheSpoolGauges) {
    hook_.stop();  // connection refused: no response at all
    // A long interval keeps the item in pending/ after its first failure.
    ASSERT_TRUE(start_with_metrics({{"RETRY_INTERVAL_MS", "60000"}, {"RETRY_MAX_INTERVAL_MS", "60000"}}));
    const std::string message = simple_message("waiting");
    const std::string id = send_one(message);
    ASSERT_FALSE(id.empty());

    Samples s = scrape_until([](const Samples& s) {
        return at(s, R"(mxhook_delivery_responses_total{status="none"})") == 1.0 &&
               at(s, R"(mxhook_spool_items{state="pending"})") == 1.0 &&
               at(s, "mxhook_spool_oldest_pending_age_seconds").value_or(0) > 0;
    });
    EXPECT_EQ(at(s, R"(mxhook_delivery_responses_total{status="none"})"), 1.0)
        << dump(s, "mxhook_delivery_responses_total");
    EXPECT_EQ(at(s, R"(mxhook_deliveries_total{outcome="retried"})"), 1.0);
    EXPECT_EQ(at(s, R"(mxhook_deliveries_total{outcome="delivered"})"), 0.0);
    EXPECT_EQ(at(s, R"(mxhook_spool_items{state="pending"})"), 1.0);
    EXPECT_EQ(at(s, R"(mxhook_spool_items{state="processing"})"), 0.0);
    EXPECT_GT(at(s, R"(mxhook_spool_bytes{state="pending"})").value_or(0), static_cast<double>(message.size()))
        << "pending/ holds the message (with its trace header) and its meta.json";
    const double age = at(s, "mxhook_spool_oldest_pending_age_seconds").value_or(0);
    EXPECT_GT(age, 0.0);
    EXPECT_LT(age, 30.0);
    // The age grows while the message waits.
    s = scrape_until(
        [&](const Samples& s) { return at(s, "mxhook_spool_oldest_pending_age_seconds").value_or(0) >= age + 0.3; });
    EXPECT_GE(at(s, "mxhook_spool_oldest_pending_age_seconds").value_or(0), age + 0.3);
}

TEST_F(MetricsTest, WebhookRequestInFlightIsAGauge) {
    hook_.reply_with([](const WebhookRequest&) {
        WebhookReply r;
        r.delay = 1500ms;
        return r;
    });
    ASSERT_TRUE(start_with_metrics());
    const std::string id = send_one(simple_message("slow webhook"));
    ASSERT_FALSE(id.empty());
    Samples s = scrape_until([](const Samples& s) { return at(s, "mxhook_webhook_requests_in_flight") == 1.0; });
    EXPECT_EQ(at(s, "mxhook_webhook_requests_in_flight"), 1.0) << "while the webhook takes its time";
    EXPECT_EQ(at(s, R"(mxhook_spool_items{state="processing"})"), 1.0);
    ASSERT_TRUE(request_for(id).has_value());
    s = scrape_until([](const Samples& s) { return at(s, R"(mxhook_deliveries_total{outcome="delivered"})") == 1.0; });
    EXPECT_EQ(at(s, "mxhook_webhook_requests_in_flight"), 0.0);
    EXPECT_GE(at(s, "mxhook_delivery_latency_seconds_sum").value_or(0), 1.5);
}

TEST_F(MetricsTest, MessageOverTheSizeBoundCountsUnder552) {
    ASSERT_TRUE(start_with_metrics({{"SMTP_MAX_MESSAGE_BYTES", "2000"}}));
    auto client = connect();
    ASSERT_EQ(client->ehlo().code, 250);
    std::string body;
    while (body.size() < 5000) body += "A line of text that makes the message too big for the bound.\r\n";
    const std::string big = simple_message("big", body);
    const Reply reply = client->send_message("sender@example.org", {"user@example.com"}, big);
    ASSERT_EQ(reply.code, 552) << reply;

    Samples s =
        scrape_until([](const Samples& s) { return at(s, R"(mxhook_smtp_transactions_total{code="552"})") == 1.0; });
    EXPECT_EQ(at(s, R"(mxhook_smtp_transactions_total{code="552"})"), 1.0) << dump(s, "mxhook_smtp_transactions_total");
    EXPECT_FALSE(at(s, R"(mxhook_smtp_transactions_total{code="250"})").has_value())
        << dump(s, "mxhook_smtp_transactions_total");
    // Received (and read to its end) whatever the reply.
    EXPECT_EQ(at(s, "mxhook_smtp_received_bytes_total"), static_cast<double>(with_final_crlf(big).size()));
    EXPECT_EQ(at(s, "mxhook_smtp_message_size_bytes_count"), 1.0);
    EXPECT_EQ(at(s, R"(mxhook_smtp_message_size_bytes_bucket{le="4096"})"), 0.0);
    EXPECT_EQ(at(s, R"(mxhook_smtp_message_size_bytes_bucket{le="16384"})"), 1.0);
    EXPECT_EQ(at(s, R"(mxhook_spool_items{state="tmp"})"), 0.0) << "nothing of the refused message is kept";

    // A size declared too big at MAIL is refused before DATA: no transaction.
    const Reply declared = client->cmd("MAIL FROM:<sender@example.org> SIZE=20000");
    EXPECT_EQ(declared.code, 552) << declared;
    // And the session goes on: a small message counts under 250.
    const Reply ok = client->send_message("sender@example.org", {"user@example.com"}, simple_message("small"));
    ASSERT_EQ(ok.code, 250) << ok;
    s = scrape_until([](const Samples& s) { return at(s, R"(mxhook_smtp_transactions_total{code="250"})") == 1.0; });
    EXPECT_EQ(at(s, R"(mxhook_smtp_transactions_total{code="250"})"), 1.0) << dump(s, "mxhook_smtp_transactions_total");
    EXPECT_EQ(at(s, R"(mxhook_smtp_transactions_total{code="552"})"), 1.0) << dump(s, "mxhook_smtp_transactions_total");
    EXPECT_EQ(at(s, "mxhook_smtp_message_size_bytes_count"), 2.0);
}

TEST_F(MetricsTest, DecisionAnswersAreCountedByOutcome) {
    TestWebhook decider;
    ASSERT_TRUE(start_with_metrics({{"WEBHOOK_DECISION_URL", decider.url("/decide")}}));
    auto client = connect();
    ASSERT_EQ(client->ehlo().code, 250);
    const auto send = [&](const std::string& subject) {
        return client->send_message("sender@example.org", {"user@example.com"}, simple_message(subject));
    };
    decider.reply_json(R"({"decision":"allow"})");
    EXPECT_EQ(send("allowed").code, 250);
    decider.reply_json(R"({"decision":"deny"})");
    EXPECT_EQ(send("denied").code, 550);
    decider.reply_json(R"({"decision":"silent_deny"})");
    EXPECT_EQ(send("silently denied").code, 250);
    decider.stop();  // no answer at all
    EXPECT_EQ(send("unanswered").code, 451);

    const Samples s = scrape_until([](const Samples& s) {
        return at(s, R"(mxhook_decisions_total{outcome="error"})") == 1.0 &&
               at(s, R"(mxhook_deliveries_total{outcome="delivered"})") == 1.0;
    });
    for (const char* outcome : {"allow", "deny", "silent_deny", "error"}) {
        EXPECT_EQ(at(s, std::string(R"(mxhook_decisions_total{outcome=")") + outcome + "\"}"), 1.0)
            << outcome << dump(s, "mxhook_decisions_total");
    }
    EXPECT_EQ(at(s, R"(mxhook_smtp_transactions_total{code="250"})"), 2.0) << dump(s, "mxhook_smtp_transactions_total");
    EXPECT_EQ(at(s, R"(mxhook_smtp_transactions_total{code="550"})"), 1.0) << dump(s, "mxhook_smtp_transactions_total");
    EXPECT_EQ(at(s, R"(mxhook_smtp_transactions_total{code="451"})"), 1.0) << dump(s, "mxhook_smtp_transactions_total");
    EXPECT_EQ(at(s, R"(mxhook_deliveries_total{outcome="delivered"})"), 1.0) << "only the allowed message is posted";
}

TEST_F(MetricsTest, StarttlsSessionsAreCountedByVersion) {
    const auto cert = tmp_.path() / "certs" / "fullchain.pem";
    const auto key = tmp_.path() / "certs" / "privkey.pem";
    const CertKey pair = make_self_signed(kHostname);
    install_pair(cert, key, pair.cert_pem, pair.key_pem);
    ASSERT_TRUE(start_with_metrics({{"SMTP_TLS_CERT_PATH", cert.string()}, {"SMTP_TLS_KEY_PATH", key.string()}}));
    for (const int version : {TLS1_3_VERSION, TLS1_2_VERSION}) {
        TlsSmtpClient client(daemon().smtp_port(), 10s);
        ASSERT_TRUE(client.connected()) << client.connect_error();
        ASSERT_EQ(client.greeting().code, 220);
        ASSERT_EQ(client.ehlo().code, 250);
        TlsOptions options;
        options.min_version = version;
        options.max_version = version;
        ASSERT_TRUE(client.starttls(options)) << client.handshake_error();
        EXPECT_EQ(client.cmd("QUIT").code, 221);
    }
    const Samples s = scrape_until([](const Samples& s) {
        return at(s, R"(mxhook_smtp_tls_sessions_total{version="TLSv1.2"})") == 1.0 &&
               at(s, R"(mxhook_smtp_tls_sessions_total{version="TLSv1.3"})") == 1.0;
    });
    EXPECT_EQ(at(s, R"(mxhook_smtp_tls_sessions_total{version="TLSv1.3"})"), 1.0)
        << dump(s, "mxhook_smtp_tls_sessions_total");
    EXPECT_EQ(at(s, R"(mxhook_smtp_tls_sessions_total{version="TLSv1.2"})"), 1.0)
        << dump(s, "mxhook_smtp_tls_sessions_total");
    EXPECT_EQ(at(s, R"(mxhook_smtp_tls_sessions_total{version="other"})"), 0.0);
}

// --- connection limits ------------------------------------------------------------------------------

TEST_F(MetricsTest, PerAddressRefusalIsCountedAndTheHeldSessionIsOpen) {
    ASSERT_TRUE(start_with_metrics({{"SMTP_MAX_CONNECTIONS_PER_IP", "1"}}));
    const double accepted_before = at(no_sessions_open(), "mxhook_smtp_connections_total").value_or(0);
    // From an address of its own, so that start_daemon()'s readiness probe (from
    // 127.0.0.1) cannot be what holds the one slot.
    auto held = connect("127.0.0.2");
    ASSERT_EQ(held->ehlo().code, 250);

    SmtpClient second(daemon().smtp_port(), 5s, "127.0.0.2");
    ASSERT_TRUE(second.connected()) << second.connect_error();
    const Reply refused = second.greeting();
    EXPECT_EQ(refused.code, 421) << refused;
    EXPECT_TRUE(second.wait_closed());

    const Samples s = scrape_until([](const Samples& s) {
        return at(s, R"(mxhook_smtp_connections_refused_total{reason="max_connections_per_ip"})") == 1.0;
    });
    EXPECT_EQ(at(s, R"(mxhook_smtp_connections_refused_total{reason="max_connections_per_ip"})"), 1.0);
    EXPECT_EQ(at(s, R"(mxhook_smtp_connections_refused_total{reason="max_connections"})"), 0.0);
    EXPECT_EQ(at(s, "mxhook_smtp_connections_open"), 1.0) << "the held session, and not the refused one";
    EXPECT_EQ(at(s, "mxhook_smtp_connections_total"), accepted_before + 1) << "a refused connection is not accepted";

    EXPECT_EQ(held->cmd("QUIT").code, 221);
    held->wait_closed();
    no_sessions_open();
}

TEST_F(MetricsTest, GlobalRefusalIsCountedUnderMaxConnections) {
    ASSERT_TRUE(start_with_metrics({{"SMTP_MAX_CONNECTIONS", "1"}}));
    no_sessions_open();  // the readiness probe's session is over
    auto held = connect();
    ASSERT_EQ(held->ehlo().code, 250);

    SmtpClient second(daemon().smtp_port(), 5s, "127.0.0.3");
    ASSERT_TRUE(second.connected()) << second.connect_error();
    const Reply refused = second.greeting();
    EXPECT_EQ(refused.code, 421) << refused;

    const Samples s = scrape_until([](const Samples& s) {
        return at(s, R"(mxhook_smtp_connections_refused_total{reason="max_connections"})") == 1.0;
    });
    EXPECT_EQ(at(s, R"(mxhook_smtp_connections_refused_total{reason="max_connections"})"), 1.0);
    EXPECT_EQ(at(s, R"(mxhook_smtp_connections_refused_total{reason="max_connections_per_ip"})"), 0.0);
    EXPECT_EQ(at(s, "mxhook_smtp_connections_open"), 1.0);
}

// --- the endpoint itself ------------------------------------------------------------------------------

TEST_F(MetricsTest, HealthReadinessUnknownPathsAndOtherMethods) {
    ASSERT_TRUE(start_with_metrics());
    const HttpResponse health = get("/healthz");
    EXPECT_EQ(health.status, 200) << health;
    EXPECT_EQ(health.body, "ok\n");
    const HttpResponse ready = get("/readyz");
    EXPECT_EQ(ready.status, 200) << ready;
    EXPECT_EQ(ready.body, "ready\n");

    for (const char* path : {"/nope", "/", "/metrics/", "/METRICS", "/healthz/x"}) {
        const HttpResponse r = get(path);
        EXPECT_EQ(r.status, 404) << path << ": " << r;
    }
    const std::string no_body = "Content-Length: 0\r\n";
    for (const auto& [method, path] : std::vector<std::pair<std::string, std::string>>{
             {"POST", "/metrics"}, {"PUT", "/metrics"}, {"DELETE", "/healthz"}, {"POST", "/readyz"}}) {
        const HttpResponse r = http_exchange("127.0.0.1", metrics_port_, request_head(method, path, no_body));
        EXPECT_EQ(r.status, 405) << method << " " << path << ": " << r;
    }
    // Unknown path with another method: unknown first.
    EXPECT_EQ(http_exchange("127.0.0.1", metrics_port_, request_head("POST", "/nope", no_body)).status, 404);

    // Two requests on one kept-alive connection (what Prometheus does between scrapes).
    std::string error;
    const int fd = connect_to("127.0.0.1", metrics_port_, 5s, error);
    ASSERT_GE(fd, 0) << error;
    std::string buffer;
    ASSERT_TRUE(send_all(fd, "GET /healthz HTTP/1.1\r\nHost: metrics.test\r\n\r\n", error)) << error;
    const HttpResponse first = read_response(fd, buffer);
    ASSERT_TRUE(send_all(fd, request_head("GET", "/readyz"), error)) << error;
    const HttpResponse second = read_response(fd, buffer);
    ::close(fd);
    EXPECT_EQ(first.status, 200) << first;
    EXPECT_EQ(first.body, "ok\n");
    EXPECT_EQ(second.status, 200) << second;
    EXPECT_EQ(second.body, "ready\n");
}

// A request with a body (curl -X POST -d x) is read whole and answered 405, with the
// methods that are allowed; the body is not mistaken for the next request.
TEST_F(MetricsTest, OtherMethodWithABodyIs405) {
    ASSERT_TRUE(start_with_metrics());
    const HttpResponse r = http_exchange("127.0.0.1", metrics_port_,
                                         request_head("POST", "/metrics", "Content-Length: 3\r\n") + "a=b");
    EXPECT_EQ(r.status, 405) << r;
    EXPECT_EQ(r.header("Allow"), "GET, HEAD") << r;
}

// HEAD gets GET's status and headers and no body (RFC 9110 9.3.2): on a kept-alive
// connection the next response must start right after the head.
TEST_F(MetricsTest, AnswerToHeadHasNoBody) {
    ASSERT_TRUE(start_with_metrics());
    std::string error;
    const int fd = connect_to("127.0.0.1", metrics_port_, 5s, error);
    ASSERT_GE(fd, 0) << error;
    ASSERT_TRUE(send_all(fd, "HEAD /healthz HTTP/1.1\r\nHost: metrics.test\r\n\r\n", error)) << error;
    // The head alone, whatever Content-Length says.
    std::string buffer;
    char chunk[4096];
    while (buffer.find("\r\n\r\n") == std::string::npos) {
        const ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
        ASSERT_GT(n, 0) << "no answer to HEAD";
        buffer.append(chunk, static_cast<std::size_t>(n));
    }
    EXPECT_EQ(buffer.rfind("HTTP/1.1 200", 0), 0u) << "HEAD /healthz: " << buffer;
    buffer.erase(0, buffer.find("\r\n\r\n") + 4);
    ASSERT_TRUE(send_all(fd, request_head("GET", "/healthz"), error)) << error;
    const HttpResponse next = read_response(fd, buffer);
    ::close(fd);
    EXPECT_EQ(next.status, 200) << "the answer after a HEAD: " << next;
}

TEST_F(MetricsTest, OversizedRequestHeadIsNotServedAndHarmsNothing) {
    ASSERT_TRUE(start_with_metrics());
    const std::string filler = "X-Filler: " + std::string(10 * 1024, 'x') + "\r\n";
    const HttpResponse big = http_exchange("127.0.0.1", metrics_port_, request_head("GET", "/metrics", filler));
    EXPECT_TRUE(big.status == 0 || (big.status >= 400 && big.status < 500))
        << "a 10 KiB request head must be refused or cut off: " << big;
    // A long target too.
    const HttpResponse long_target =
        http_exchange("127.0.0.1", metrics_port_, request_head("GET", "/metrics?" + std::string(9000, 'a')));
    EXPECT_TRUE(long_target.status == 0 || (long_target.status >= 400 && long_target.status < 500)) << long_target;

    // The endpoint and SMTP go on.
    const HttpResponse after = get("/metrics");
    EXPECT_EQ(after.status, 200) << after;
    const std::string id = send_one(simple_message("after the big head"));
    ASSERT_FALSE(id.empty());
    EXPECT_TRUE(request_for(id).has_value());
    const HttpResponse health = get("/healthz");
    EXPECT_EQ(health.status, 200) << health;
}

// At most 16 connections at once, and one that sends nothing is closed after 5 s: a
// scraper gone wild costs the endpoint a few seconds and SMTP nothing.
TEST_F(MetricsTest, SilentConnectionsAreBoundedInNumberAndTime) {
    ASSERT_TRUE(start_with_metrics());
    std::vector<int> silent;
    for (int i = 0; i < 16; ++i) {
        std::string error;
        const int fd = connect_to("127.0.0.1", metrics_port_, 10s, error);
        ASSERT_GE(fd, 0) << error;
        silent.push_back(fd);
    }
    const auto opened = Clock::now();
    // The 17th is closed unanswered (once the server has taken the 16 in: bounded retry).
    HttpResponse extra;
    EXPECT_TRUE(wait_until(
        [&] {
            extra = get("/healthz");
            return extra.status == 0;
        },
        3s, 50ms))
        << "a 17th connection was served: " << extra;
    // SMTP does not mind.
    const std::string id = send_one(simple_message("while the endpoint is full"));
    EXPECT_FALSE(id.empty());

    // Each silent one is closed by the server after about 5 s.
    for (const int fd : silent) {
        char byte;
        const ssize_t n = ::recv(fd, &byte, 1, 0);  // SO_RCVTIMEO 10 s
        EXPECT_TRUE(n == 0 || (n < 0 && errno == ECONNRESET)) << "a silent connection was not closed within 10 s";
    }
    const auto waited = Clock::now() - opened;
    EXPECT_GE(waited, 4s) << "silent connections closed well before the 5 s bound";
    EXPECT_LE(waited, 8s);
    for (const int fd : silent) ::close(fd);
    const HttpResponse health = get_until("/healthz", 200, 3s);
    EXPECT_EQ(health.status, 200) << "the endpoint did not come back: " << health;
}

TEST_F(MetricsTest, ListensOnIpv6Loopback) {
    {
        const int probe = ::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in6 a{};
        a.sin6_family = AF_INET6;
        a.sin6_addr = in6addr_loopback;
        const bool usable = probe >= 0 && ::bind(probe, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
        if (probe >= 0) ::close(probe);
        if (!usable) GTEST_SKIP() << "no IPv6 loopback on this host";
    }
    const unsigned short smtp = free_port();
    unsigned short port;
    do port = free_port();
    while (port == smtp);
    ASSERT_TRUE(start_with_metrics({{"SMTP_LISTEN", "127.0.0.1:" + std::to_string(smtp)},
                                    {"METRICS_LISTEN", "[::1]:" + std::to_string(port)}}));
    const HttpResponse r = http_exchange("::1", port, request_head("GET", "/metrics"));
    EXPECT_EQ(r.status, 200) << r;
    EXPECT_EQ(r.header("Content-Type"), kExpositionType);
    EXPECT_EQ(http_exchange("::1", port, request_head("GET", "/readyz")).body, "ready\n");
}

// --- readiness ----------------------------------------------------------------------------------------

// Permission bits do not stop root, so this one needs an ordinary user; the next test
// covers the same answer for every user.
TEST_F(MetricsTest, ReadyzIs503WhileASpoolDirectoryIsReadOnly) {
    if (::geteuid() == 0) GTEST_SKIP() << "running as root: permission bits do not stop root from writing";
    ASSERT_TRUE(start_with_metrics());
    ASSERT_EQ(get("/readyz").status, 200);
    using std::filesystem::perms;
    std::filesystem::permissions(pending_dir(), perms::owner_read | perms::owner_exec);
    const HttpResponse r = get_until("/readyz", 503);
    std::filesystem::permissions(pending_dir(), std::filesystem::perms::owner_all);
    EXPECT_EQ(r.status, 503) << r;
    EXPECT_EQ(r.body.rfind("not ready: spool: cannot write ", 0), 0u) << r.body;
    EXPECT_NE(r.body.find("pending"), std::string::npos) << r.body;
    EXPECT_EQ(get("/healthz").status, 200) << "alive, only not ready";
    const HttpResponse back = get_until("/readyz", 200);
    EXPECT_EQ(back.status, 200) << back;
}

// A regular file where pending/ belongs cannot be written into, whoever the daemon runs
// as (root ignores permission bits, not file types).
TEST_F(MetricsTest, ReadyzIs503WhileASpoolDirectoryIsNotADirectory) {
    ASSERT_TRUE(start_with_metrics());
    ASSERT_EQ(get("/readyz").status, 200);
    std::filesystem::remove(pending_dir());
    write_file(pending_dir(), "in the way");
    const HttpResponse r = get_until("/readyz", 503);
    EXPECT_EQ(r.status, 503) << r;
    EXPECT_EQ(r.body.rfind("not ready: spool: cannot write ", 0), 0u) << r.body;
    EXPECT_NE(r.body.find("pending"), std::string::npos) << r.body;
    EXPECT_EQ(r.header("Content-Type"), "text/plain; charset=utf-8");
    EXPECT_EQ(get("/healthz").status, 200) << "alive, only not ready";

    std::filesystem::remove(pending_dir());
    std::filesystem::create_directory(pending_dir());
    std::filesystem::permissions(pending_dir(), std::filesystem::perms::owner_all);
    const HttpResponse back = get_until("/readyz", 200);
    EXPECT_EQ(back.status, 200) << back;
    EXPECT_EQ(back.body, "ready\n");
}

TEST_F(MetricsTest, ReadyzIs503DuringTheShutdownGrace) {
    ASSERT_TRUE(start_with_metrics({{"SHUTDOWN_GRACE_MS", "5000"}}));
    ASSERT_EQ(get("/readyz").status, 200);
    // A scraper's kept-alive connection, idle between scrapes: it must not hold the stop.
    std::string error;
    const int scraper = connect_to("127.0.0.1", metrics_port_, 10s, error);
    ASSERT_GE(scraper, 0) << error;
    std::string scraper_buffer;
    ASSERT_TRUE(send_all(scraper, "GET /metrics HTTP/1.1\r\nHost: metrics.test\r\n\r\n", error)) << error;
    ASSERT_EQ(read_response(scraper, scraper_buffer).status, 200);
    // A session in the middle of DATA holds the stop for up to the grace.
    auto client = connect();
    ASSERT_EQ(client->ehlo().code, 250);
    ASSERT_EQ(client->cmd("MAIL FROM:<sender@example.org>").code, 250);
    ASSERT_EQ(client->cmd("RCPT TO:<user@example.com>").code, 250);
    ASSERT_EQ(client->cmd("DATA").code, 354);
    ASSERT_TRUE(client->send_raw("Subject: finished during shutdown\r\n\r\nfirst half\r\n"));

    daemon().signal(SIGTERM);
    const HttpResponse r = get_until("/readyz", 503, 4s);
    EXPECT_EQ(r.status, 503) << r;
    EXPECT_EQ(r.body, "not ready: shutting down\n");
    EXPECT_TRUE(daemon().running()) << "the daemon must wait for the session in DATA";
    // Still alive, and still telling what it holds.
    EXPECT_EQ(get("/healthz").status, 200);
    const Samples s =
        scrape_until([](const Samples& s) { return at(s, "mxhook_smtp_connections_open") == 1.0; }, 2s);
    EXPECT_EQ(at(s, "mxhook_smtp_connections_open"), 1.0);

    // The message finishes within the grace; then the daemon stops, and so does the endpoint.
    ASSERT_TRUE(client->send_raw("second half\r\n.\r\n"));
    const Reply done = client->read_reply();
    EXPECT_EQ(done.code, 250) << done;
    const auto status = daemon().wait_exit(10s);
    ASSERT_TRUE(status.has_value()) << "still running 10 s after SIGTERM";
    EXPECT_TRUE(status->exited() && status->code() == 0) << status->describe();
    EXPECT_EQ(get("/healthz").status, 0) << "the endpoint outlived the daemon";
    char byte;
    EXPECT_LE(::recv(scraper, &byte, 1, 0), 0) << "the scraper's connection outlived the daemon";
    ::close(scraper);
}

// --- start-up errors ----------------------------------------------------------------------------------

struct BadListen {
    const char* name;
    const char* value;
};

void PrintTo(const BadListen& bad, std::ostream* out) { *out << "METRICS_LISTEN=" << bad.value; }

class MetricsListenErrorTest : public IntegrationTest, public ::testing::WithParamInterface<BadListen> {};

TEST_P(MetricsListenErrorTest, StopsTheStartWithExitTwoNamingTheVariable) {
    Env env = base_env(free_port());
    env["METRICS_LISTEN"] = GetParam().value;
    const auto err_path = tmp_.path() / "stderr.log";
    Daemon daemon(mxhook_binary(), env, tmp_.path() / "stdout.log", err_path);
    daemon.start();
    const auto status = daemon.wait_exit(5s);
    ASSERT_TRUE(status.has_value()) << "still running after 5 s";
    EXPECT_TRUE(status->exited() && status->code() == 2) << status->describe();
    const std::string err = read_file(err_path);
    std::istringstream lines(err);
    bool named = false;
    for (std::string line; std::getline(lines, line);) {
        named = named || line.find("METRICS_LISTEN") != std::string::npos;
    }
    EXPECT_TRUE(named) << "stderr does not name METRICS_LISTEN on a line:\n" << err;
}

INSTANTIATE_TEST_SUITE_P(Metrics, MetricsListenErrorTest,
                         ::testing::Values(BadListen{"Nonsense", "nonsense"}, BadListen{"NoPort", "127.0.0.1"},
                                           BadListen{"PortOutOfRange", "127.0.0.1:70000"},
                                           BadListen{"HostName", "localhost:9100"},
                                           BadListen{"Ipv6WithoutBrackets", "::1:9100"}),
                         [](const ::testing::TestParamInfo<BadListen>& info) { return std::string(info.param.name); });

TEST_F(MetricsTest, PortInUseStopsTheStartNamingTheVariable) {
    // Someone else listens on the port.
    const int taken = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(taken, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof addr;
    ASSERT_EQ(::bind(taken, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0) << std::strerror(errno);
    ASSERT_EQ(::listen(taken, 1), 0);
    ASSERT_EQ(::getsockname(taken, reinterpret_cast<sockaddr*>(&addr), &length), 0);
    const unsigned short port = ntohs(addr.sin_port);

    Env env = base_env(free_port());
    env["METRICS_LISTEN"] = "127.0.0.1:" + std::to_string(port);
    Daemon daemon(mxhook_binary(), env, tmp_.path() / "out.log");
    daemon.start();
    const auto status = daemon.wait_exit(5s);
    ::close(taken);
    ASSERT_TRUE(status.has_value()) << "still running after 5 s with its METRICS_LISTEN port taken";
    EXPECT_TRUE(status->exited() && status->code() != 0) << status->describe();
    const std::string log = daemon.log();
    std::istringstream lines(log);
    bool named = false;
    for (std::string line; std::getline(lines, line);) {
        named = named || line.find("METRICS_LISTEN") != std::string::npos;
    }
    EXPECT_TRUE(named) << "the output does not name METRICS_LISTEN on a line:\n" << log;
}

}  // namespace
}  // namespace itest
