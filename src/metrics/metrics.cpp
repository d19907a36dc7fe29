#include "mxhook/metrics/metrics.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>

namespace mxhook::metrics {

void CodeCounters::add(int code) noexcept {
    counts_[code >= 100 && code <= 599 ? static_cast<std::size_t>(code - 99) : 0].add();
}

std::vector<std::pair<int, std::uint64_t>> CodeCounters::nonzero() const {
    std::vector<std::pair<int, std::uint64_t>> out;
    for (std::size_t i = 0; i < counts_.size(); ++i) {
        if (const auto n = counts_[i].value(); n > 0) out.emplace_back(i == 0 ? 0 : static_cast<int>(i) + 99, n);
    }
    return out;
}

Histogram::Histogram(std::initializer_list<double> bounds)
    : bounds_(bounds), buckets_(std::make_unique<Counter[]>(bounds.size() + 1)) {}

void Histogram::observe(double value) noexcept {
    // A few bounds: a linear search beats anything cleverer.
    std::size_t i = 0;
    while (i < bounds_.size() && value > bounds_[i]) ++i;
    buckets_[i].add();
    sum_.fetch_add(value, std::memory_order_relaxed);
}

Histogram::Snapshot Histogram::snapshot() const {
    Snapshot out;
    out.bounds = bounds_;
    std::uint64_t running = 0;
    for (std::size_t i = 0; i <= bounds_.size(); ++i) {
        running += buckets_[i].value();
        out.cumulative.push_back(running);
    }
    out.sum = sum_.load(std::memory_order_relaxed);
    return out;
}

TlsVersion tls_version_from(std::string_view name) noexcept {
    if (name == "TLSv1.3") return TlsVersion::tls1_3;
    if (name == "TLSv1.2") return TlsVersion::tls1_2;
    if (name == "TLSv1.1") return TlsVersion::tls1_1;
    if (name == "TLSv1") return TlsVersion::tls1_0;
    return TlsVersion::other;
}

Metrics::Metrics()
    // Sizes: a bounce or a one-liner is a few KiB, most mail under 100 KiB, attachments
    // up to the 25 MiB default limit.
    : smtp_message_size_bytes{1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864},
      // From 250 to 2xx: milliseconds when the webhook keeps up, minutes to hours in retries.
      delivery_latency_seconds{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600,
                               14400, 86400},
      delivery_attempts{1, 2, 3, 5, 8, 13, 21} {
    spool_free_bytes.set(-1);
}

Metrics& global() {
    static Metrics instance;
    return instance;
}

namespace {

// Prometheus floats: integers print without a fraction, others with enough digits to
// read back the same value; +Inf spelled the Prometheus way.
void append_number(std::string& out, double value) {
    if (std::isinf(value)) {
        out += value > 0 ? "+Inf" : "-Inf";
        return;
    }
    char buf[64];
    const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, value);
    out.append(buf, ec == std::errc() ? end : buf);
}

void append_number(std::string& out, std::uint64_t value) { out += std::to_string(value); }
void append_number(std::string& out, std::int64_t value) { out += std::to_string(value); }

void family(std::string& out, std::string_view name, std::string_view type, std::string_view help) {
    out.append("# HELP ").append(name).append(" ").append(help).append("\n");
    out.append("# TYPE ").append(name).append(" ").append(type).append("\n");
}

template <typename Number>
void sample(std::string& out, std::string_view name, std::string_view labels, Number value) {
    out.append(name);
    if (!labels.empty()) out.append("{").append(labels).append("}");
    out.append(" ");
    append_number(out, value);
    out.append("\n");
}

std::string label(std::string_view name, std::string_view value) {
    // Every value here comes from a fixed set or from digits: nothing to escape.
    return std::string(name) + "=\"" + std::string(value) + "\"";
}

void histogram(std::string& out, std::string_view name, std::string_view help, const Histogram& h) {
    family(out, name, "histogram", help);
    const auto snap = h.snapshot();
    const std::string bucket = std::string(name) + "_bucket";
    for (std::size_t i = 0; i < snap.bounds.size(); ++i) {
        std::string le;
        append_number(le, snap.bounds[i]);
        sample(out, bucket, label("le", le), snap.cumulative[i]);
    }
    sample(out, bucket, label("le", "+Inf"), snap.cumulative.back());
    sample(out, std::string(name) + "_sum", "", snap.sum);
    sample(out, std::string(name) + "_count", "", snap.cumulative.back());
}

void codes(std::string& out, std::string_view name, std::string_view label_name, const CodeCounters& counters) {
    for (const auto& [code, n] : counters.nonzero()) {
        sample(out, name, label(label_name, code == 0 ? std::string("none") : std::to_string(code)), n);
    }
}

}  // namespace

std::string render(const Metrics& m, const SpoolSnapshot& spool, const BuildInfo& build, std::optional<bool> ready) {
    std::string out;
    out.reserve(8192);

    if (ready) {
        family(out, "mxhook_ready", "gauge", "1 when /readyz answers 200 (mail can be taken), else 0.");
        sample(out, "mxhook_ready", "", std::uint64_t{*ready ? 1u : 0u});
    }
    family(out, "mxhook_draining", "gauge",
           "1 once `mxhook drain` (SIGUSR1) told this replica to take no more mail and empty its spool.");
    sample(out, "mxhook_draining", "", m.draining.value());

    family(out, "mxhook_build_info", "gauge", "Version and git commit of the running binary (always 1).");
    sample(out, "mxhook_build_info", label("version", build.version) + "," + label("commit", build.commit),
           std::uint64_t{1});
    family(out, "process_start_time_seconds", "gauge", "Start time of the process since the Unix epoch, in seconds.");
    sample(out, "process_start_time_seconds", "", m.start_time_seconds);

    family(out, "mxhook_smtp_connections_open", "gauge", "SMTP sessions open now.");
    sample(out, "mxhook_smtp_connections_open", "", m.smtp_connections_open.value());
    family(out, "mxhook_smtp_connections_total", "counter", "SMTP connections accepted into a session.");
    sample(out, "mxhook_smtp_connections_total", "", m.smtp_connections.value());
    family(out, "mxhook_smtp_connections_refused_total", "counter",
           "SMTP connections answered 421 and closed because of a connection limit, or while draining.");
    sample(out, "mxhook_smtp_connections_refused_total", label("reason", "max_connections"),
           m.smtp_refused_max_connections.value());
    sample(out, "mxhook_smtp_connections_refused_total", label("reason", "max_connections_per_ip"),
           m.smtp_refused_max_connections_per_ip.value());
    sample(out, "mxhook_smtp_connections_refused_total", label("reason", "draining"), m.smtp_refused_draining.value());
    family(out, "mxhook_smtp_transactions_total", "counter",
           "Mail transactions that reached DATA, by the reply code that ended them (250: queued).");
    codes(out, "mxhook_smtp_transactions_total", "code", m.smtp_transactions);
    family(out, "mxhook_smtp_received_bytes_total", "counter",
           "Message bytes received at the end of DATA (after dot-unstuffing), whatever the reply.");
    sample(out, "mxhook_smtp_received_bytes_total", "", m.smtp_received_bytes.value());
    histogram(out, "mxhook_smtp_message_size_bytes", "Size of each message received at the end of DATA.",
              m.smtp_message_size_bytes);
    family(out, "mxhook_smtp_tls_sessions_total", "counter", "STARTTLS handshakes completed, by protocol version.");
    static constexpr std::array<std::string_view, kTlsVersions> tls_names{"TLSv1.0", "TLSv1.1", "TLSv1.2", "TLSv1.3",
                                                                          "other"};
    for (std::size_t i = 0; i < kTlsVersions; ++i) {
        sample(out, "mxhook_smtp_tls_sessions_total", label("version", tls_names[i]), m.smtp_tls_sessions[i].value());
    }

    family(out, "mxhook_decisions_total", "counter",
           "Answers of the decision API by outcome (error: no usable answer in time; the message then gets 451).");
    static constexpr std::array<std::string_view, kDecisionOutcomes> decision_names{"allow", "deny", "silent_deny",
                                                                                    "error"};
    for (std::size_t i = 0; i < kDecisionOutcomes; ++i) {
        sample(out, "mxhook_decisions_total", label("outcome", decision_names[i]), m.decisions[i].value());
    }

    family(out, "mxhook_auth_results_total", "counter",
           "Sender authentication results by check (spf, dkim, dmarc) and result; dkim counts one per message.");
    static constexpr std::array<std::string_view, kAuthChecks> check_names{"spf", "dkim", "dmarc"};
    static constexpr std::array<std::string_view, kAuthResults> result_names{
        "none", "pass", "fail", "softfail", "neutral", "temperror", "permerror"};
    for (std::size_t c = 0; c < kAuthChecks; ++c) {
        for (std::size_t r = 0; r < kAuthResults; ++r) {
            if (c != 0 && (r == 3 || r == 4)) continue;  // softfail and neutral are SPF's only
            sample(out, "mxhook_auth_results_total",
                   label("check", check_names[c]) + "," + label("result", result_names[r]),
                   m.auth_results[c][r].value());
        }
    }

    family(out, "mxhook_spam_checks_total", "counter",
           "rspamd verdicts by result (unchecked: rspamd down, slow or unreadable).");
    static constexpr std::array<std::string_view, kScanResults> spam_names{"ham", "spam", "unchecked"};
    for (std::size_t i = 0; i < kScanResults; ++i)
        sample(out, "mxhook_spam_checks_total", label("result", spam_names[i]), m.spam_checks[i].value());
    family(out, "mxhook_virus_scans_total", "counter",
           "clamd verdicts by result (unchecked: clamd down, slow or refusing the stream).");
    static constexpr std::array<std::string_view, kScanResults> virus_names{"clean", "infected", "unchecked"};
    for (std::size_t i = 0; i < kScanResults; ++i)
        sample(out, "mxhook_virus_scans_total", label("result", virus_names[i]), m.virus_scans[i].value());

    family(out, "mxhook_deliveries_total", "counter",
           "Webhook delivery attempts by outcome: delivered (2xx), retried later, dead-lettered.");
    static constexpr std::array<std::string_view, kDeliveryOutcomes> delivery_names{"delivered", "retried",
                                                                                    "dead_lettered"};
    for (std::size_t i = 0; i < kDeliveryOutcomes; ++i) {
        sample(out, "mxhook_deliveries_total", label("outcome", delivery_names[i]), m.deliveries[i].value());
    }
    family(out, "mxhook_delivery_responses_total", "counter",
           "Webhook responses by HTTP status (none: no response, e.g. refused or timed out).");
    codes(out, "mxhook_delivery_responses_total", "status", m.delivery_responses);
    histogram(out, "mxhook_delivery_latency_seconds",
              "Time from a message's 250 to the 2xx of its webhook, retries included.", m.delivery_latency_seconds);
    histogram(out, "mxhook_delivery_attempts", "Attempts each delivered message took.", m.delivery_attempts);
    family(out, "mxhook_webhook_requests_in_flight", "gauge", "Webhook POSTs in flight now.");
    sample(out, "mxhook_webhook_requests_in_flight", "", m.webhook_requests_in_flight.value());

    if (const auto free = m.spool_free_bytes.value(); free >= 0) {
        family(out, "mxhook_spool_free_bytes", "gauge",
               "Free space on the spool's filesystem (for an unprivileged writer) at the last measurement.");
        sample(out, "mxhook_spool_free_bytes", "", free);
    }
    if (spool.ok) {
        const std::array<std::pair<std::string_view, const SpoolState*>, 4> states{
            {{"tmp", &spool.tmp}, {"pending", &spool.pending}, {"processing", &spool.processing}, {"dead", &spool.dead}}};
        family(out, "mxhook_spool_items", "gauge",
               "Items in each spool state (tmp: being received; pending and processing: acknowledged, not yet "
               "delivered; dead: given up).");
        for (const auto& [name, state] : states) sample(out, "mxhook_spool_items", label("state", name), state->items);
        family(out, "mxhook_spool_bytes", "gauge", "Bytes of message.eml and meta.json in each spool state.");
        for (const auto& [name, state] : states) sample(out, "mxhook_spool_bytes", label("state", name), state->bytes);
        family(out, "mxhook_spool_oldest_pending_age_seconds", "gauge",
               "Age of the oldest acknowledged message not yet delivered (pending/ or processing/); 0 when none.");
        sample(out, "mxhook_spool_oldest_pending_age_seconds", "", spool.oldest_pending_age_seconds);
    }
    return out;
}

}  // namespace mxhook::metrics
