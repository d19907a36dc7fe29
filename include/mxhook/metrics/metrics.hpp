#pragma once
// What mxhook counts, and its rendering in the Prometheus text exposition format (0.0.4).
//
// Every metric is a field of `Metrics`, one instance per process, written on the hot path
// with relaxed atomic adds (no lock, no allocation, no lookup by name) and read by the
// scrape. Labels come from small fixed sets (an SMTP reply code, an HTTP status, a TLS
// version), so each labelled family is an array indexed by its label: a scrape of a busy
// server costs the same as one of an idle server.

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mxhook::metrics {

class Counter {
public:
    void add(std::uint64_t n = 1) noexcept { value_.fetch_add(n, std::memory_order_relaxed); }
    std::uint64_t value() const noexcept { return value_.load(std::memory_order_relaxed); }

private:
    std::atomic<std::uint64_t> value_{0};
};

class Gauge {
public:
    void add(std::int64_t n = 1) noexcept { value_.fetch_add(n, std::memory_order_relaxed); }
    void sub(std::int64_t n = 1) noexcept { value_.fetch_sub(n, std::memory_order_relaxed); }
    void set(std::int64_t n) noexcept { value_.store(n, std::memory_order_relaxed); }
    std::int64_t value() const noexcept { return value_.load(std::memory_order_relaxed); }

private:
    std::atomic<std::int64_t> value_{0};
};

// Counters keyed by a three-digit code (SMTP reply codes, HTTP statuses). Codes outside
// 100..599 count under 0, rendered as the label value "none" (no reply at all).
class CodeCounters {
public:
    void add(int code) noexcept;
    // Non-zero counts, lowest code first; code 0 stands for "none".
    std::vector<std::pair<int, std::uint64_t>> nonzero() const;

private:
    std::array<Counter, 501> counts_{};  // [0] none, [code - 99] for 100..599
};

// Cumulative histogram with fixed upper bounds (Prometheus `le`), plus +Inf, count and sum.
class Histogram {
public:
    Histogram(std::initializer_list<double> bounds);
    void observe(double value) noexcept;

    struct Snapshot {
        std::vector<double> bounds;
        std::vector<std::uint64_t> cumulative;  // one per bound, then +Inf
        double sum = 0;
    };
    Snapshot snapshot() const;

private:
    std::vector<double> bounds_;
    std::unique_ptr<Counter[]> buckets_;  // per bucket (not cumulative), last is +Inf
    std::atomic<double> sum_{0};
};

enum class TlsVersion { tls1_0, tls1_1, tls1_2, tls1_3, other };
inline constexpr std::size_t kTlsVersions = 5;
TlsVersion tls_version_from(std::string_view openssl_name) noexcept;  // "TLSv1.3" -> tls1_3

enum class DecisionOutcome { allow, deny, silent_deny, error };
inline constexpr std::size_t kDecisionOutcomes = 4;

// Sender authentication: the check, and its result in the order of auth::Result
// (none, pass, fail, softfail, neutral, temperror, permerror).
enum class AuthCheck { spf, dkim, dmarc };
inline constexpr std::size_t kAuthChecks = 3;
inline constexpr std::size_t kAuthResults = 7;

// Content scanners: positive is spam (rspamd) or infected (clamd).
enum class ScanResult { negative, positive, unchecked };
inline constexpr std::size_t kScanResults = 3;

enum class DeliveryOutcome { delivered, retried, dead_lettered };
inline constexpr std::size_t kDeliveryOutcomes = 3;

// Items and bytes in one spool state, counted at scrape time.
struct SpoolState {
    std::uint64_t items = 0;
    std::uint64_t bytes = 0;
};

// What a scrape reads from the spool directories (on the disk pool, not on the loop).
struct SpoolSnapshot {
    SpoolState tmp, pending, processing, dead;
    // Age of the oldest item in pending/ and processing/ (from the time in its id); 0 when none.
    double oldest_pending_age_seconds = 0;
    bool ok = false;  // false: the scan failed; the spool gauges are left out
};

struct Metrics {
    Metrics();

    // SMTP
    Gauge smtp_connections_open;
    Counter smtp_connections;
    Counter smtp_refused_max_connections;
    Counter smtp_refused_max_connections_per_ip;
    Counter smtp_refused_draining;   // new connections while draining (421 4.3.2)
    Gauge draining;                  // 1 from `mxhook drain` (SIGUSR1) on
    CodeCounters smtp_transactions;  // by the reply that ended each DATA transaction
    Counter smtp_received_bytes;     // message bytes (after dot-unstuffing) at end of data
    Histogram smtp_message_size_bytes;
    std::array<Counter, kTlsVersions> smtp_tls_sessions;

    // Decision API
    std::array<Counter, kDecisionOutcomes> decisions;

    // Sender authentication (DKIM: one result per message, as X-Mailgun-Dkim-Check-Result)
    std::array<std::array<Counter, kAuthResults>, kAuthChecks> auth_results;
    std::array<Counter, kScanResults> spam_checks;  // rspamd: ham, spam, unchecked
    std::array<Counter, kScanResults> virus_scans;  // clamd: clean, infected, unchecked

    // Deliveries
    std::array<Counter, kDeliveryOutcomes> deliveries;
    CodeCounters delivery_responses;       // by HTTP status; "none" when no response came
    Histogram delivery_latency_seconds;    // from the message's 250 to its 2xx
    Histogram delivery_attempts;           // attempts a delivered message took
    Gauge webhook_requests_in_flight;

    // Spool
    Gauge spool_free_bytes;  // free space on the spool's filesystem, at the last measurement (-1: none)

    // Process
    double start_time_seconds = 0;  // Unix time
};

// The process's one instance (set up by main before anything counts).
Metrics& global();

struct BuildInfo {
    std::string version;
    std::string commit;
};

// The whole exposition, families in a stable order, each with # HELP and # TYPE. `ready`:
// what /readyz would answer now (left out when unknown).
std::string render(const Metrics& metrics, const SpoolSnapshot& spool, const BuildInfo& build,
                   std::optional<bool> ready = std::nullopt);

}  // namespace mxhook::metrics
