#include "mxhook/config.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <set>
#include <string>

namespace mxhook {
namespace {

using namespace std::string_literals;

using Vars = std::map<std::string, std::string, std::less<>>;

constexpr const char* url = "https://hooks.example.com/mail";

EnvLookup env_of(Vars vars) {
    return [vars = std::move(vars)](std::string_view name) -> std::optional<std::string> {
        auto it = vars.find(name);
        if (it == vars.end()) return std::nullopt;
        return it->second;
    };
}

// The minimal environment that loads: only WEBHOOK_URL is required.
Config load(Vars vars) {
    vars.emplace("WEBHOOK_URL", url);
    return load_config(env_of(std::move(vars)));
}

// Loads and returns the error line, or "" when loading succeeded.
std::string error_of(Vars vars) {
    vars.emplace("WEBHOOK_URL", url);
    try {
        load_config(env_of(std::move(vars)));
    } catch (const ConfigError& e) {
        return e.what();
    }
    return "";
}

bool starts_with(const std::string& text, const std::string& prefix) {
    return text.rfind(prefix, 0) == 0;
}

// Asserts that the value is refused with one line naming the variable.
void expect_rejected(const std::string& name, const std::string& value) {
    auto error = error_of({{name, value}});
    EXPECT_TRUE(starts_with(error, name + ": ")) << name << "=" << value << " gave: " << error;
    EXPECT_EQ(error.find('\n'), std::string::npos) << error;
}

TEST(ConfigTest, DefaultsWhenOnlyWebhookUrlIsSet) {
    auto c = load({});
    ASSERT_EQ(c.smtp_listen.size(), 1u);
    EXPECT_EQ(c.smtp_listen[0].host, "0.0.0.0");
    EXPECT_EQ(c.smtp_listen[0].port, 25);
    EXPECT_FALSE(c.smtp_hostname.empty());
    EXPECT_EQ(c.smtp_max_message_bytes, 26214400u);
    EXPECT_EQ(c.smtp_max_recipients, 1000u);
    EXPECT_EQ(c.smtp_bare_lf, BareLfPolicy::normalize);
    EXPECT_EQ(c.smtp_timeout.count(), 300000);
    EXPECT_EQ(c.shutdown_grace.count(), 30000);
    EXPECT_EQ(c.drain_timeout.count(), 60000);
    EXPECT_TRUE(c.accept_all_recipients);
    EXPECT_TRUE(c.accepted_domains.empty());
    EXPECT_EQ(c.spool_dir, "/var/spool/mxhook");
    EXPECT_EQ(c.spool_tmp_dir, "/var/spool/mxhook/tmp");
    EXPECT_EQ(c.spool_pending_dir, "/var/spool/mxhook/pending");
    EXPECT_EQ(c.spool_processing_dir, "/var/spool/mxhook/processing");
    EXPECT_EQ(c.spool_dead_dir, "/var/spool/mxhook/dead");
    EXPECT_EQ(c.webhook_url, url);
    EXPECT_EQ(c.webhook_signing_key, "");
    EXPECT_EQ(c.webhook_concurrency, 16u);
    EXPECT_EQ(c.webhook_timeout.count(), 10000);
    EXPECT_EQ(c.retry_scan_interval.count(), 5000);
    EXPECT_EQ(c.retry_interval.count(), 30000);
    EXPECT_EQ(c.retry_max_interval.count(), 3600000);
    EXPECT_EQ(c.max_retry_age.count(), 0);
    EXPECT_EQ(c.log_level, "info");
}

TEST(ConfigTest, EmptyVariablesTakeDefaults) {
    auto c = load({{"SMTP_LISTEN", ""}, {"SMTP_MAX_RECIPIENTS", ""}, {"LOG_LEVEL", ""},
                   {"ACCEPT_ALL_RECIPIENTS", ""}, {"SPOOL_DIR", ""}, {"SMTP_BARE_LF", ""}});
    EXPECT_EQ(c.smtp_listen[0].host, "0.0.0.0");
    EXPECT_EQ(c.smtp_max_recipients, 1000u);
    EXPECT_EQ(c.log_level, "info");
    EXPECT_TRUE(c.accept_all_recipients);
    EXPECT_EQ(c.spool_dir, "/var/spool/mxhook");
}

TEST(ConfigTest, WebhookUrlIsRequired) {
    EXPECT_THROW(load_config(env_of({})), ConfigError);
    try {
        load_config(env_of({{"WEBHOOK_URL", ""}}));
        FAIL() << "empty WEBHOOK_URL accepted";
    } catch (const ConfigError& e) {
        EXPECT_STREQ(e.what(), "WEBHOOK_URL: is required");
    }
}

TEST(ConfigTest, WebhookUrlAcceptsHttpAndHttps) {
    for (std::string good : {"http://localhost:8080/hook", "https://example.com", "HTTPS://Example.com/a?b=c",
                             "http://[::1]:9000/x", "https://user:pw@example.com/in"}) {
        auto c = load_config(env_of({{"WEBHOOK_URL", good}}));
        EXPECT_EQ(c.webhook_url, good);
    }
}

TEST(ConfigTest, WebhookUrlRejectsOtherSchemesAndGarbage) {
    for (std::string bad : {"ftp://example.com/x", "example.com/hook", "/hook", "http://", "not a url",
                            "mailto:a@example.com", "http://exa mple.com/"}) {
        try {
            load_config(env_of({{"WEBHOOK_URL", bad}}));
            ADD_FAILURE() << "accepted " << bad;
        } catch (const ConfigError& e) {
            EXPECT_TRUE(starts_with(e.what(), "WEBHOOK_URL: ")) << e.what();
        }
    }
}

TEST(ConfigTest, WebhookUrlErrorDoesNotEchoCredentials) {
    try {
        load_config(env_of({{"WEBHOOK_URL", "ftp://user:s3cret@example.com/"}}));
        FAIL();
    } catch (const ConfigError& e) {
        EXPECT_EQ(std::string(e.what()).find("s3cret"), std::string::npos) << e.what();
    }
}

TEST(ConfigTest, ListenParsesIpv4AndIpv6Lists) {
    auto c = load({{"SMTP_LISTEN", "127.0.0.1:2525, [::]:25,[::1]:2526 "}});
    ASSERT_EQ(c.smtp_listen.size(), 3u);
    EXPECT_EQ(c.smtp_listen[0].host, "127.0.0.1");
    EXPECT_EQ(c.smtp_listen[0].port, 2525);
    EXPECT_EQ(c.smtp_listen[1].host, "::");
    EXPECT_EQ(c.smtp_listen[1].port, 25);
    EXPECT_EQ(c.smtp_listen[2].host, "::1");
    EXPECT_EQ(c.smtp_listen[2].port, 2526);
}

TEST(ConfigTest, ListenPortLimits) {
    EXPECT_EQ(load({{"SMTP_LISTEN", "0.0.0.0:1"}}).smtp_listen[0].port, 1);
    EXPECT_EQ(load({{"SMTP_LISTEN", "0.0.0.0:65535"}}).smtp_listen[0].port, 65535);
}

TEST(ConfigTest, ListenRejectsJunk) {
    for (std::string bad : {"0.0.0.0", "0.0.0.0:", ":25", "[]:25", "[::1]", "[::1]25", "[::1:25", "::1:25",
                            "0.0.0.0:0", "0.0.0.0:65536", "0.0.0.0:99999999999999999999", "0.0.0.0:+25",
                            "0.0.0.0:25x", "0.0.0.0: 25", "localhost:25", "300.1.1.1:25", "[1.2.3.4]:25",
                            "[zz::1]:25", "0.0.0.0:25,junk", ","}) {
        expect_rejected("SMTP_LISTEN", bad);
    }
}

TEST(ConfigTest, DnsServersTakeAPortOrDefaultTo53) {
    EXPECT_TRUE(load({}).dns_servers.empty());
    auto c = load({{"DNS_SERVERS", "127.0.0.1, 192.0.2.1:5353,[::1],[2001:db8::1]:5300"}});
    ASSERT_EQ(c.dns_servers.size(), 4u);
    EXPECT_EQ(c.dns_servers[0].host, "127.0.0.1");
    EXPECT_EQ(c.dns_servers[0].port, 53);
    EXPECT_EQ(c.dns_servers[1].port, 5353);
    EXPECT_EQ(c.dns_servers[2].host, "::1");
    EXPECT_EQ(c.dns_servers[2].port, 53);
    EXPECT_EQ(c.dns_servers[3].host, "2001:db8::1");
    EXPECT_EQ(c.dns_servers[3].port, 5300);
}

TEST(ConfigTest, DnsServersRejectJunk) {
    for (std::string bad : {"::1", "::1:53", "ns.example.com", "127.0.0.1:0", "127.0.0.1:", "[::1]53", "[::1",
                            "300.1.1.1", "127.0.0.1,junk", ","}) {
        expect_rejected("DNS_SERVERS", bad);
    }
}

TEST(ConfigTest, MetricsListenIsOffUnlessSet) {
    EXPECT_FALSE(load({}).metrics_listen.has_value());
    auto c = load({{"METRICS_LISTEN", "127.0.0.1:9425"}});
    ASSERT_TRUE(c.metrics_listen.has_value());
    EXPECT_EQ(c.metrics_listen->host, "127.0.0.1");
    EXPECT_EQ(c.metrics_listen->port, 9425);
    EXPECT_EQ(load({{"METRICS_LISTEN", "[::1]:9425"}}).metrics_listen->host, "::1");
    // One address, with its port: there is no default port to guess.
    for (std::string bad : {"127.0.0.1", "nonsense", "127.0.0.1:0", "::1:9425", "127.0.0.1:9425,127.0.0.1:9426"}) {
        expect_rejected("METRICS_LISTEN", bad);
    }
}

TEST(ConfigTest, ListenErrorQuotesTheBadItem) {
    auto error = error_of({{"SMTP_LISTEN", "0.0.0.0:25,1.2.3.4:70000"}});
    EXPECT_NE(error.find("\"1.2.3.4:70000\""), std::string::npos) << error;
}

TEST(ConfigTest, Hostname) {
    EXPECT_EQ(load({{"SMTP_HOSTNAME", "mx1.example.com"}}).smtp_hostname, "mx1.example.com");
    for (std::string bad : {"mx 1"s, "mx\t1"s, "mx1\r\n"s, "mx\0x"s, "mx\x7f"s}) expect_rejected("SMTP_HOSTNAME", bad);
}

TEST(ConfigTest, ErrorLineStaysOneLineWithControlCharacters) {
    auto error = error_of({{"SMTP_HOSTNAME", "evil\r\nINJECTED"}});
    EXPECT_TRUE(starts_with(error, "SMTP_HOSTNAME: "));
    EXPECT_EQ(error.find('\n'), std::string::npos);
    EXPECT_EQ(error.find('\r'), std::string::npos);
    EXPECT_NE(error.find("\\x0d\\x0a"), std::string::npos) << error;
}

const char* const positive_vars[] = {
    "SMTP_MAX_MESSAGE_BYTES", "SMTP_MAX_RECIPIENTS", "SMTP_TIMEOUT_MS",       "SHUTDOWN_GRACE_MS",
    "WEBHOOK_CONCURRENCY",    "WEBHOOK_TIMEOUT_MS",  "RETRY_SCAN_INTERVAL_MS", "RETRY_INTERVAL_MS",
    "RETRY_MAX_INTERVAL_MS",  "SMTP_MAX_JUNK_COMMANDS", "DRAIN_TIMEOUT_MS",
};

TEST(ConfigTest, PositiveIntegersAreRead) {
    auto c = load({{"SMTP_MAX_MESSAGE_BYTES", "1048576"}, {"SMTP_MAX_RECIPIENTS", "1"},
                   {"SMTP_TIMEOUT_MS", "60000"},         {"SHUTDOWN_GRACE_MS", "5"}, {"DRAIN_TIMEOUT_MS", "1500"},
                   {"WEBHOOK_CONCURRENCY", "4"},          {"WEBHOOK_TIMEOUT_MS", "2500"},
                   {"RETRY_SCAN_INTERVAL_MS", "100"},     {"RETRY_INTERVAL_MS", "1000"},
                   {"RETRY_MAX_INTERVAL_MS", "86400000"}, {"MAX_RETRY_AGE_MS", "604800000"}});
    EXPECT_EQ(c.smtp_max_message_bytes, 1048576u);
    EXPECT_EQ(c.smtp_max_recipients, 1u);
    EXPECT_EQ(c.smtp_timeout.count(), 60000);
    EXPECT_EQ(c.shutdown_grace.count(), 5);
    EXPECT_EQ(c.drain_timeout.count(), 1500);
    EXPECT_EQ(c.webhook_concurrency, 4u);
    EXPECT_EQ(c.webhook_timeout.count(), 2500);
    EXPECT_EQ(c.retry_scan_interval.count(), 100);
    EXPECT_EQ(c.retry_interval.count(), 1000);
    EXPECT_EQ(c.retry_max_interval.count(), 86400000);
    EXPECT_EQ(c.max_retry_age.count(), 604800000);
}

TEST(ConfigTest, PositiveIntegersRejectEverythingElse) {
    for (const char* name : positive_vars) {
        for (std::string bad : {"0", "00", "-1", "+5", " 5", "5 ", "5ms", "1e3", "1.5", "0x10", "abc",
                                "18446744073709551616", "99999999999999999999999"}) {
            expect_rejected(name, bad);
        }
    }
}

TEST(ConfigTest, MaxJunkCommands) {
    EXPECT_EQ(load({}).smtp_max_junk_commands, 100u);
    EXPECT_EQ(load({{"SMTP_MAX_JUNK_COMMANDS", ""}}).smtp_max_junk_commands, 100u);
    EXPECT_EQ(load({{"SMTP_MAX_JUNK_COMMANDS", "5"}}).smtp_max_junk_commands, 5u);
    EXPECT_EQ(error_of({{"SMTP_MAX_JUNK_COMMANDS", "0"}}),
              "SMTP_MAX_JUNK_COMMANDS: must be a positive integer (got \"0\")");
}

TEST(ConfigTest, SpoolWorkerThreads) {
    EXPECT_EQ(load({}).spool_worker_threads, 4u);
    EXPECT_EQ(load({{"SPOOL_WORKER_THREADS", "32"}}).spool_worker_threads, 32u);
    EXPECT_EQ(error_of({{"SPOOL_WORKER_THREADS", "0"}}),
              "SPOOL_WORKER_THREADS: must be a positive integer (got \"0\")");
    EXPECT_NE(error_of({{"SPOOL_WORKER_THREADS", "5000"}}).find("SPOOL_WORKER_THREADS"), std::string::npos);
}

TEST(ConfigTest, PositiveIntegerErrorMessageFormat) {
    EXPECT_EQ(error_of({{"SMTP_MAX_RECIPIENTS", "abc"}}),
              "SMTP_MAX_RECIPIENTS: must be a positive integer (got \"abc\")");
}

TEST(ConfigTest, DurationsTooLargeForTheClockAreRefused) {
    // Would overflow system_clock's nanoseconds when added to now.
    expect_rejected("RETRY_MAX_INTERVAL_MS", "9223372036854775807");
    expect_rejected("MAX_RETRY_AGE_MS", "9223372036854775807");
    EXPECT_EQ(load({{"SMTP_MAX_MESSAGE_BYTES", "9223372036854775807"}}).smtp_max_message_bytes,
              9223372036854775807u);
}

TEST(ConfigTest, MaxRetryAgeAllowsZero) {
    EXPECT_EQ(load({{"MAX_RETRY_AGE_MS", "0"}}).max_retry_age.count(), 0);
    EXPECT_EQ(load({{"MAX_RETRY_AGE_MS", "1"}}).max_retry_age.count(), 1);
    for (std::string bad : {"-1", "x", " 0", "1d"}) expect_rejected("MAX_RETRY_AGE_MS", bad);
    EXPECT_NE(error_of({{"MAX_RETRY_AGE_MS", "-1"}}).find("non-negative"), std::string::npos);
}

TEST(ConfigTest, BareLfPolicy) {
    EXPECT_EQ(load({{"SMTP_BARE_LF", "reject"}}).smtp_bare_lf, BareLfPolicy::reject);
    EXPECT_EQ(load({{"SMTP_BARE_LF", "REJECT"}}).smtp_bare_lf, BareLfPolicy::reject);
    EXPECT_EQ(load({{"SMTP_BARE_LF", "Normalize"}}).smtp_bare_lf, BareLfPolicy::normalize);
    for (std::string bad : {"accept", "normalise", " reject", "1"}) expect_rejected("SMTP_BARE_LF", bad);
}

TEST(ConfigTest, ParseBool) {
    for (std::string yes : {"1", "true", "TRUE", "Yes", "on", "ON"}) EXPECT_EQ(parse_bool(yes), true) << yes;
    for (std::string no : {"0", "false", "False", "NO", "off", "Off"}) EXPECT_EQ(parse_bool(no), false) << no;
    for (std::string bad : {"", "2", "y", "n", "enabled", " true", "true "}) EXPECT_EQ(parse_bool(bad), std::nullopt) << bad;
}

TEST(ConfigTest, AcceptAllRecipientsFlag) {
    EXPECT_FALSE(load({{"ACCEPT_ALL_RECIPIENTS", "off"}, {"ACCEPTED_DOMAINS", "example.com"}}).accept_all_recipients);
    EXPECT_TRUE(load({{"ACCEPT_ALL_RECIPIENTS", "Yes"}}).accept_all_recipients);
    for (std::string bad : {"maybe", "2", "y"}) expect_rejected("ACCEPT_ALL_RECIPIENTS", bad);
}

TEST(ConfigTest, AcceptedDomainsAreTrimmedLowerCasedAndCompacted) {
    auto c = load({{"ACCEPTED_DOMAINS", " Example.COM,,mail.example.org , ,\tX.test\t"}});
    EXPECT_EQ(c.accepted_domains, (std::vector<std::string>{"example.com", "mail.example.org", "x.test"}));
}

TEST(ConfigTest, RefusingEveryRecipientIsAnError) {
    auto error = error_of({{"ACCEPT_ALL_RECIPIENTS", "false"}});
    EXPECT_TRUE(starts_with(error, "ACCEPTED_DOMAINS: ")) << error;
    error = error_of({{"ACCEPT_ALL_RECIPIENTS", "false"}, {"ACCEPTED_DOMAINS", " , ,"}});
    EXPECT_TRUE(starts_with(error, "ACCEPTED_DOMAINS: ")) << error;
}

TEST(ConfigTest, SplitList) {
    EXPECT_EQ(split_list(""), std::vector<std::string>{});
    EXPECT_EQ(split_list(",, ,"), std::vector<std::string>{});
    EXPECT_EQ(split_list("a"), std::vector<std::string>{"a"});
    EXPECT_EQ(split_list(" a , b c ,\tc\t,"), (std::vector<std::string>{"a", "b c", "c"}));
}

TEST(ConfigTest, SpoolDirectoriesFollowSpoolDir) {
    auto c = load({{"SPOOL_DIR", "/srv/spool"}});
    EXPECT_EQ(c.spool_tmp_dir, "/srv/spool/tmp");
    EXPECT_EQ(c.spool_pending_dir, "/srv/spool/pending");
    EXPECT_EQ(c.spool_processing_dir, "/srv/spool/processing");
    EXPECT_EQ(c.spool_dead_dir, "/srv/spool/dead");
}

TEST(ConfigTest, SpoolDirectoriesCanBeSetOneByOne) {
    auto c = load({{"SPOOL_DIR", "/srv/spool"}, {"SPOOL_TMP_DIR", "/fast/tmp"}, {"SPOOL_PENDING_DIR", "/q/p"},
                   {"SPOOL_PROCESSING_DIR", "/q/a"}, {"SPOOL_DEAD_DIR", "/q/d"}});
    EXPECT_EQ(c.spool_dir, "/srv/spool");
    EXPECT_EQ(c.spool_tmp_dir, "/fast/tmp");
    EXPECT_EQ(c.spool_pending_dir, "/q/p");
    EXPECT_EQ(c.spool_processing_dir, "/q/a");
    EXPECT_EQ(c.spool_dead_dir, "/q/d");
}

TEST(ConfigTest, SigningKey) {
    EXPECT_EQ(load({{"WEBHOOK_SIGNING_KEY", "key-123"}}).webhook_signing_key, "key-123");
    EXPECT_EQ(load({{"WEBHOOK_SIGNING_KEY", ""}}).webhook_signing_key, "");
}

TEST(ConfigTest, LogLevel) {
    for (std::string level : {"trace", "debug", "info", "warn", "error", "critical", "off"}) {
        EXPECT_EQ(load({{"LOG_LEVEL", level}}).log_level, level);
    }
    EXPECT_EQ(load({{"LOG_LEVEL", "DEBUG"}}).log_level, "debug");
    EXPECT_EQ(load({{"LOG_LEVEL", "warning"}}).log_level, "warn");
    EXPECT_EQ(load({{"LOG_LEVEL", "Warning"}}).log_level, "warn");
    for (std::string bad : {"verbose", "err", "fatal", " info", "5"}) expect_rejected("LOG_LEVEL", bad);
}

TEST(ConfigTest, ProcessEnvReadsTheEnvironment) {
    ::setenv("MXHOOK_CONFIG_TEST_VAR", "hello", 1);
    ::unsetenv("MXHOOK_CONFIG_TEST_UNSET");
    auto env = process_env();
    EXPECT_EQ(env("MXHOOK_CONFIG_TEST_VAR"), "hello");
    EXPECT_EQ(env("MXHOOK_CONFIG_TEST_UNSET"), std::nullopt);
    ::unsetenv("MXHOOK_CONFIG_TEST_VAR");
}


// --- issue 4: decision API, role routing, recipient mode ----------------------------------------

TEST(ConfigTest, Issue4DefaultsWhenUnset) {
    auto c = load({});
    EXPECT_EQ(c.decision_url, "");
    EXPECT_EQ(c.decision_token, "");
    EXPECT_EQ(c.decision_mode, DecisionMode::minimal);
    EXPECT_EQ(c.webhook_role_url, "");
    EXPECT_EQ(c.webhook_recipient_mode, RecipientMode::joined);
    const std::vector<std::string> roles{
        "abuse",     "admin",   "administrator", "billing",  "contact",      "daemon",    "help",
        "hostmaster", "info",   "legal",         "mail",     "mailerdaemon", "marketing", "noc",
        "noreply",   "nostr",   "postmaster",    "privacy",  "root",         "sales",     "security",
        "spam",      "sysadmin", "support",      "usenet",   "uucp",         "webmaster", "www"};
    auto sorted = c.role_addresses;
    std::sort(sorted.begin(), sorted.end());
    auto expected = roles;
    std::sort(expected.begin(), expected.end());
    EXPECT_EQ(sorted, expected);
    EXPECT_EQ(default_role_addresses().size(), 28u);
}

TEST(ConfigTest, Issue4EmptyVariablesTakeDefaults) {
    auto c = load({{"WEBHOOK_DECISION_URL", ""}, {"WEBHOOK_DECISION_TOKEN", ""},
                   {"WEBHOOK_DECISION_PAYLOAD_MODE", ""}, {"WEBHOOK_ROLE_URL", ""}, {"ROLE_ADDRESSES", ""},
                   {"WEBHOOK_RECIPIENT_MODE", ""}});
    EXPECT_EQ(c.decision_url, "");
    EXPECT_EQ(c.decision_mode, DecisionMode::minimal);
    EXPECT_EQ(c.webhook_role_url, "");
    EXPECT_EQ(c.role_addresses.size(), 28u);
    EXPECT_EQ(c.webhook_recipient_mode, RecipientMode::joined);
}

TEST(ConfigTest, DecisionAndRoleUrlsAcceptHttpAndHttps) {
    for (std::string good : {"http://127.0.0.1:9000/decide", "https://policy.example.com/haraka/decision",
                             "HTTP://Example.com/x?y=z", "https://user:pw@example.com/in"}) {
        auto c = load({{"WEBHOOK_DECISION_URL", good}, {"WEBHOOK_ROLE_URL", good}});
        EXPECT_EQ(c.decision_url, good);
        EXPECT_EQ(c.webhook_role_url, good);
    }
}

TEST(ConfigTest, DecisionAndRoleUrlsRejectOtherSchemesAndGarbage) {
    for (std::string name : {"WEBHOOK_DECISION_URL", "WEBHOOK_ROLE_URL"}) {
        for (std::string bad : {"ftp://example.com/x", "example.com/hook", "/decide", "http://", "not a url",
                                "mailto:a@example.com", "file:///etc/passwd"}) {
            expect_rejected(name, bad);
        }
    }
}

TEST(ConfigTest, DecisionUrlErrorDoesNotEchoCredentials) {
    for (std::string name : {"WEBHOOK_DECISION_URL", "WEBHOOK_ROLE_URL"}) {
        auto error = error_of({{name, "ftp://user:s3cret@example.com/"}});
        EXPECT_TRUE(starts_with(error, name + ": ")) << error;
        EXPECT_EQ(error.find("s3cret"), std::string::npos) << error;
    }
}

TEST(ConfigTest, DecisionTokenIsKeptVerbatim) {
    EXPECT_EQ(load({{"WEBHOOK_DECISION_TOKEN", "s3cr3t-Token_42"}}).decision_token, "s3cr3t-Token_42");
}

TEST(ConfigTest, DecisionPayloadModeWordsAnyCase) {
    EXPECT_EQ(load({{"WEBHOOK_DECISION_PAYLOAD_MODE", "minimal"}}).decision_mode, DecisionMode::minimal);
    EXPECT_EQ(load({{"WEBHOOK_DECISION_PAYLOAD_MODE", "summary"}}).decision_mode, DecisionMode::summary);
    EXPECT_EQ(load({{"WEBHOOK_DECISION_PAYLOAD_MODE", "full"}}).decision_mode, DecisionMode::full);
    EXPECT_EQ(load({{"WEBHOOK_DECISION_PAYLOAD_MODE", "FULL"}}).decision_mode, DecisionMode::full);
    EXPECT_EQ(load({{"WEBHOOK_DECISION_PAYLOAD_MODE", "Summary"}}).decision_mode, DecisionMode::summary);
    EXPECT_EQ(load({{"WEBHOOK_DECISION_PAYLOAD_MODE", "MiNiMaL"}}).decision_mode, DecisionMode::minimal);
}

TEST(ConfigTest, DecisionPayloadModeRejectsOtherWords) {
    for (std::string bad : {"bogus", "raw", "fulll", "headers", "0"}) expect_rejected("WEBHOOK_DECISION_PAYLOAD_MODE", bad);
    auto error = error_of({{"WEBHOOK_DECISION_PAYLOAD_MODE", "bogus"}});
    EXPECT_NE(error.find("bogus"), std::string::npos) << error;
}

TEST(ConfigTest, RecipientModeWordsAnyCase) {
    EXPECT_EQ(load({{"WEBHOOK_RECIPIENT_MODE", "joined"}}).webhook_recipient_mode, RecipientMode::joined);
    EXPECT_EQ(load({{"WEBHOOK_RECIPIENT_MODE", "each"}}).webhook_recipient_mode, RecipientMode::each);
    EXPECT_EQ(load({{"WEBHOOK_RECIPIENT_MODE", "EACH"}}).webhook_recipient_mode, RecipientMode::each);
    EXPECT_EQ(load({{"WEBHOOK_RECIPIENT_MODE", "Joined"}}).webhook_recipient_mode, RecipientMode::joined);
}

TEST(ConfigTest, WebhookEncodingWords) {
    EXPECT_EQ(load({}).webhook_encoding, WebhookEncoding::auto_detect);
    EXPECT_EQ(load({{"WEBHOOK_ENCODING", "auto"}}).webhook_encoding, WebhookEncoding::auto_detect);
    EXPECT_EQ(load({{"WEBHOOK_ENCODING", "urlencoded"}}).webhook_encoding, WebhookEncoding::urlencoded);
    EXPECT_EQ(load({{"WEBHOOK_ENCODING", "Multipart"}}).webhook_encoding, WebhookEncoding::multipart);
    for (std::string bad : {"form", "json", "utf8", "1"}) expect_rejected("WEBHOOK_ENCODING", bad);
}

TEST(ConfigTest, WebhookFormatWords) {
    EXPECT_EQ(load({}).webhook_format, WebhookFormat::mime);
    EXPECT_EQ(load({{"WEBHOOK_FORMAT", "parsed"}}).webhook_format, WebhookFormat::parsed);
    EXPECT_EQ(load({{"WEBHOOK_FORMAT", "JSON"}}).webhook_format, WebhookFormat::json);
    EXPECT_FALSE(load({}).webhook_json_raw_email);
    EXPECT_TRUE(load({{"WEBHOOK_JSON_RAW_EMAIL", "true"}}).webhook_json_raw_email);
    for (std::string bad : {"xml", "form", "raw"}) expect_rejected("WEBHOOK_FORMAT", bad);
    expect_rejected("WEBHOOK_JSON_RAW_EMAIL", "maybe");
}

TEST(ConfigTest, RecipientModeRejectsOtherWords) {
    for (std::string bad : {"bogus", "per-recipient", "single", "all", "1"}) expect_rejected("WEBHOOK_RECIPIENT_MODE", bad);
    auto error = error_of({{"WEBHOOK_RECIPIENT_MODE", "bogus"}});
    EXPECT_NE(error.find("bogus"), std::string::npos) << error;
}

TEST(ConfigTest, RoleAddressesReplaceTheDefaultTrimmedAndLowerCased) {
    auto c = load({{"ROLE_ADDRESSES", " CEO, hr ,,Board "}});
    EXPECT_EQ(c.role_addresses, (std::vector<std::string>{"ceo", "hr", "board"}));
}

}  // namespace
}  // namespace mxhook

namespace mxhook {
namespace {

// `mxhook config` lists every variable the loader reads, once, in the loader's spelling.
TEST(ConfigDescribe, ListsExactlyTheVariablesTheLoaderReads) {
    std::set<std::string> asked;
    const EnvLookup recorder = [&asked](std::string_view name) -> std::optional<std::string> {
        asked.emplace(name);
        if (name == "WEBHOOK_URL") return "http://127.0.0.1/hook";
        return std::nullopt;
    };
    const auto described = describe(load_config(recorder));
    std::set<std::string> listed;
    for (const auto& [name, value] : described) EXPECT_TRUE(listed.insert(name).second) << name << " listed twice";
    EXPECT_EQ(listed, asked);
}

TEST(ConfigDescribe, SecretsAndUrlPasswordsAreMasked) {
    const auto c = load({{"WEBHOOK_URL", "https://user:hunter2@example.com/hook"},
                         {"WEBHOOK_SIGNING_KEY", "topsecretkey"},
                         {"WEBHOOK_DECISION_URL", "https://api:pw@decide.example/"},
                         {"WEBHOOK_DECISION_TOKEN", "tok123"}});
    std::map<std::string, std::string> shown;
    for (const auto& [name, value] : describe(c)) shown[name] = value;
    for (const auto& [name, value] : shown) {
        for (const char* secret : {"hunter2", "topsecretkey", "tok123", ":pw@"}) {
            EXPECT_EQ(value.find(secret), std::string::npos) << name << "=" << value;
        }
    }
    EXPECT_EQ(shown["WEBHOOK_URL"], "https://user:********@example.com/hook");
    EXPECT_EQ(shown["WEBHOOK_SIGNING_KEY"], "********");
    EXPECT_EQ(shown["WEBHOOK_DECISION_TOKEN"], "********");
    EXPECT_EQ(shown["SMTP_LISTEN"], "0.0.0.0:25");
    EXPECT_EQ(shown["SPOOL_MIN_FREE_BYTES"], "100000000");
    EXPECT_EQ(load({{"METRICS_LISTEN", "[::1]:9425"}}).metrics_listen->host, "::1");
}

TEST(ConfigDescribe, UnsetSecretsStayEmpty) {
    std::map<std::string, std::string> shown;
    for (const auto& [name, value] : describe(load({}))) shown[name] = value;
    EXPECT_EQ(shown["WEBHOOK_SIGNING_KEY"], "");
    EXPECT_EQ(shown["WEBHOOK_DECISION_TOKEN"], "");
    EXPECT_EQ(shown["METRICS_LISTEN"], "");
}

}  // namespace
}  // namespace mxhook

namespace mxhook {
namespace {

TEST(ConfigProxy, OffUnlessSet) { EXPECT_TRUE(load({}).smtp_proxy_protocol_from.empty()); }

TEST(ConfigProxy, BlocksAndBareAddresses) {
    const auto c = load({{"SMTP_PROXY_PROTOCOL_FROM", "10.0.0.0/8, 127.0.0.1,2001:db8::/32,::1"}});
    ASSERT_EQ(c.smtp_proxy_protocol_from.size(), 4u);
    const auto& from = c.smtp_proxy_protocol_from;
    EXPECT_TRUE(cidr_contains(from[0], "10.200.3.4"));
    EXPECT_FALSE(cidr_contains(from[0], "11.0.0.1"));
    EXPECT_TRUE(cidr_contains(from[1], "127.0.0.1"));
    EXPECT_FALSE(cidr_contains(from[1], "127.0.0.2")) << "a bare address is a /32";
    EXPECT_TRUE(cidr_contains(from[2], "2001:db8:ffff::1"));
    EXPECT_FALSE(cidr_contains(from[2], "2001:db9::1"));
    EXPECT_TRUE(cidr_contains(from[3], "::1"));
    EXPECT_FALSE(cidr_contains(from[0], "::ffff:10.0.0.1")) << "IPv6 text never matches an IPv4 block";
    EXPECT_FALSE(cidr_contains(from[0], "not an address"));
}

TEST(ConfigProxy, OddPrefixLengthsMaskBits) {
    const auto c = load({{"SMTP_PROXY_PROTOCOL_FROM", "192.168.4.0/22,0.0.0.0/0"}});
    EXPECT_TRUE(cidr_contains(c.smtp_proxy_protocol_from[0], "192.168.7.255"));
    EXPECT_FALSE(cidr_contains(c.smtp_proxy_protocol_from[0], "192.168.8.0"));
    EXPECT_TRUE(cidr_contains(c.smtp_proxy_protocol_from[1], "203.0.113.9")) << "/0 is everyone";
}

TEST(ConfigProxy, RejectsJunk) {
    for (std::string bad : {"10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0/8", "lb.example.com", "10.0.0.0/8,x", ","}) {
        expect_rejected("SMTP_PROXY_PROTOCOL_FROM", bad);
    }
}

}  // namespace
}  // namespace mxhook
