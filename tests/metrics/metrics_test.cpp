// The exposition an operator's Prometheus reads: families, labels, histogram buckets.

#include "mxhook/metrics/metrics.hpp"

#include <gtest/gtest.h>

#include <fstream>
#include <iterator>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>

namespace mxhook::metrics {
namespace {

// Sample lines by "name{labels}", and the TYPE of each family.
struct Parsed {
    std::map<std::string, std::string> samples;
    std::map<std::string, std::string> types;
};

Parsed parse(const std::string& text) {
    Parsed out;
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind("# TYPE ", 0) == 0) {
            const auto rest = line.substr(7);
            const auto space = rest.find(' ');
            out.types[rest.substr(0, space)] = rest.substr(space + 1);
        } else if (!line.empty() && line[0] != '#') {
            const auto space = line.rfind(' ');
            out.samples[line.substr(0, space)] = line.substr(space + 1);
        }
    }
    return out;
}

TEST(MetricsRender, CountersAndLabelsAppearWithTheirValues) {
    Metrics m;
    m.smtp_connections.add(3);
    m.smtp_connections_open.add(2);
    m.smtp_connections_open.sub();
    m.smtp_transactions.add(250);
    m.smtp_transactions.add(250);
    m.smtp_transactions.add(552);
    m.delivery_responses.add(0);  // no response at all
    m.delivery_responses.add(500);
    m.deliveries[static_cast<std::size_t>(DeliveryOutcome::retried)].add();
    const auto p = parse(render(m, {}, {"1.2.3", "abc"}));
    EXPECT_EQ(p.samples.at("mxhook_smtp_connections_total"), "3");
    EXPECT_EQ(p.samples.at("mxhook_smtp_connections_open"), "1");
    EXPECT_EQ(p.samples.at("mxhook_smtp_transactions_total{code=\"250\"}"), "2");
    EXPECT_EQ(p.samples.at("mxhook_smtp_transactions_total{code=\"552\"}"), "1");
    EXPECT_EQ(p.samples.count("mxhook_smtp_transactions_total{code=\"451\"}"), 0u) << "codes never seen stay out";
    EXPECT_EQ(p.samples.at("mxhook_delivery_responses_total{status=\"none\"}"), "1");
    EXPECT_EQ(p.samples.at("mxhook_delivery_responses_total{status=\"500\"}"), "1");
    EXPECT_EQ(p.samples.at("mxhook_deliveries_total{outcome=\"retried\"}"), "1");
    EXPECT_EQ(p.samples.at("mxhook_deliveries_total{outcome=\"delivered\"}"), "0");
    EXPECT_EQ(p.samples.at("mxhook_build_info{version=\"1.2.3\",commit=\"abc\"}"), "1");
    EXPECT_EQ(p.types.at("mxhook_smtp_transactions_total"), "counter");
    EXPECT_EQ(p.types.at("mxhook_smtp_connections_open"), "gauge");
}

TEST(MetricsRender, OutOfRangeCodesCountAsNone) {
    Metrics m;
    m.smtp_transactions.add(99);
    m.smtp_transactions.add(600);
    m.smtp_transactions.add(-1);
    const auto p = parse(render(m, {}, {}));
    EXPECT_EQ(p.samples.at("mxhook_smtp_transactions_total{code=\"none\"}"), "3");
}

TEST(MetricsRender, HistogramBucketsAreCumulativeWithInfCountAndSum) {
    Metrics m;
    m.delivery_attempts.observe(1);
    m.delivery_attempts.observe(3);
    m.delivery_attempts.observe(3);
    m.delivery_attempts.observe(100);  // above every bound: +Inf only
    const auto p = parse(render(m, {}, {}));
    EXPECT_EQ(p.types.at("mxhook_delivery_attempts"), "histogram");
    EXPECT_EQ(p.samples.at("mxhook_delivery_attempts_bucket{le=\"1\"}"), "1");
    EXPECT_EQ(p.samples.at("mxhook_delivery_attempts_bucket{le=\"2\"}"), "1");
    EXPECT_EQ(p.samples.at("mxhook_delivery_attempts_bucket{le=\"3\"}"), "3");
    EXPECT_EQ(p.samples.at("mxhook_delivery_attempts_bucket{le=\"21\"}"), "3");
    EXPECT_EQ(p.samples.at("mxhook_delivery_attempts_bucket{le=\"+Inf\"}"), "4");
    EXPECT_EQ(p.samples.at("mxhook_delivery_attempts_count"), "4");
    EXPECT_EQ(p.samples.at("mxhook_delivery_attempts_sum"), "107");
}

TEST(MetricsRender, ABoundaryValueFallsInItsOwnBucket) {
    Metrics m;
    m.smtp_message_size_bytes.observe(1024);  // le="1024" includes 1024 itself
    m.delivery_latency_seconds.observe(0.0125);
    const auto p = parse(render(m, {}, {}));
    EXPECT_EQ(p.samples.at("mxhook_smtp_message_size_bytes_bucket{le=\"1024\"}"), "1");
    EXPECT_EQ(p.samples.at("mxhook_delivery_latency_seconds_bucket{le=\"0.01\"}"), "0");
    EXPECT_EQ(p.samples.at("mxhook_delivery_latency_seconds_bucket{le=\"0.025\"}"), "1");
    EXPECT_EQ(p.samples.at("mxhook_delivery_latency_seconds_sum"), "0.0125");
}

TEST(MetricsRender, SpoolGaugesOnlyWhenTheSpoolWasCounted) {
    Metrics m;
    EXPECT_EQ(parse(render(m, {}, {})).samples.count("mxhook_spool_items{state=\"pending\"}"), 0u)
        << "a failed scan must not report an empty spool";
    SpoolSnapshot spool;
    spool.ok = true;
    spool.pending = {3, 4096};
    spool.dead = {1, 100};
    spool.oldest_pending_age_seconds = 12.5;
    const auto p = parse(render(m, spool, {}));
    EXPECT_EQ(p.samples.at("mxhook_spool_items{state=\"pending\"}"), "3");
    EXPECT_EQ(p.samples.at("mxhook_spool_bytes{state=\"pending\"}"), "4096");
    EXPECT_EQ(p.samples.at("mxhook_spool_items{state=\"dead\"}"), "1");
    EXPECT_EQ(p.samples.at("mxhook_spool_items{state=\"processing\"}"), "0");
    EXPECT_EQ(p.samples.at("mxhook_spool_oldest_pending_age_seconds"), "12.5");
}

TEST(MetricsRender, EveryFamilyHasHelpAndTypeBeforeItsSamples) {
    Metrics m;
    SpoolSnapshot spool;
    spool.ok = true;
    std::istringstream in(render(m, spool, {"v", "c"}));
    std::string line, typed;
    std::size_t samples = 0;
    while (std::getline(in, line)) {
        if (line.rfind("# TYPE ", 0) == 0) {
            typed = line.substr(7, line.find(' ', 7) - 7);
            continue;
        }
        if (line.empty() || line[0] == '#') continue;
        ++samples;
        const std::string name = line.substr(0, line.find_first_of("{ "));
        EXPECT_EQ(name.rfind(typed, 0), 0u) << name << " comes under # TYPE " << typed;
    }
    EXPECT_GT(samples, 40u);
}

TEST(TlsVersionNames, OpenSslNamesMapToTheirLabel) {
    EXPECT_EQ(tls_version_from("TLSv1.3"), TlsVersion::tls1_3);
    EXPECT_EQ(tls_version_from("TLSv1.2"), TlsVersion::tls1_2);
    EXPECT_EQ(tls_version_from("TLSv1"), TlsVersion::tls1_0);
    EXPECT_EQ(tls_version_from("unknown"), TlsVersion::other);
}

}  // namespace
}  // namespace mxhook::metrics

namespace mxhook::metrics {
namespace {

// The alert rules and the Grafana dashboard shipped in contrib/ only name metrics that
// mxhook exports: a renamed metric must not leave a silent alert or an empty panel.
TEST(ShippedQueries, NameOnlyExportedMetrics) {
    Metrics m;
    m.spool_free_bytes.set(1);
    SpoolSnapshot spool;
    spool.ok = true;
    std::set<std::string> families;
    std::istringstream exposition(render(m, spool, {"v", "c"}, true));
    std::string line;
    while (std::getline(exposition, line)) {
        if (line.rfind("# TYPE ", 0) == 0) families.insert(line.substr(7, line.find(' ', 7) - 7));
    }
    for (const char* file : {"contrib/prometheus/alerts.yml", "contrib/grafana/mxhook.json"}) {
        std::ifstream in(std::string(MXHOOK_SOURCE_DIR) + "/" + file);
        ASSERT_TRUE(in) << file;
        const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        const std::regex name(R"(mxhook_[a-z_]+)");
        std::size_t used = 0;
        for (auto it = std::sregex_iterator(text.begin(), text.end(), name); it != std::sregex_iterator(); ++it) {
            std::string metric = it->str();
            for (const char* suffix : {"_bucket", "_sum", "_count"}) {
                const std::string s(suffix);
                if (metric.size() > s.size() && metric.ends_with(s) &&
                    families.count(metric.substr(0, metric.size() - s.size()))) {
                    metric.resize(metric.size() - s.size());
                }
            }
            EXPECT_TRUE(families.count(metric)) << file << " uses " << it->str() << ", which mxhook does not export";
            ++used;
        }
        EXPECT_GT(used, 5u) << file;
    }
}

}  // namespace
}  // namespace mxhook::metrics
