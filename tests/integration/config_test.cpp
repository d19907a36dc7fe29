// Start-up configuration errors: the process must exit non-zero promptly, and its stderr
// must name the offending variable on one line.

#include "harness/fixture.hpp"

#include <sstream>

namespace itest {
namespace {

struct BadConfig {
    const char* name;       // test name suffix
    const char* variable;   // the variable the error must name
    const char* value;      // "" = unset it
};

void PrintTo(const BadConfig& bad, std::ostream* out) {
    *out << bad.variable << "=" << (*bad.value ? bad.value : "(unset)");
}

class ConfigErrorTest : public IntegrationTest, public ::testing::WithParamInterface<BadConfig> {};

TEST_P(ConfigErrorTest, ExitsNonZeroNamingTheVariable) {
    const BadConfig& bad = GetParam();
    Env env = base_env(free_port());
    if (*bad.value) env[bad.variable] = bad.value;
    else env.erase(bad.variable);

    const auto err_path = tmp_.path() / "stderr.log";
    Daemon daemon(mxhook_binary(), env, tmp_.path() / "stdout.log", err_path);
    daemon.start();
    const auto status = daemon.wait_exit(std::chrono::seconds(5));
    ASSERT_TRUE(status.has_value()) << bad.variable << "=" << bad.value << ": still running after 5 s";
    EXPECT_TRUE(status->exited() && status->code() == 2) << status->describe();

    const std::string err = read_file(err_path);
    std::istringstream lines(err);
    std::string line;
    bool named = false;
    while (std::getline(lines, line)) named = named || line.find(bad.variable) != std::string::npos;
    EXPECT_TRUE(named) << "stderr does not name " << bad.variable << " on a line:\n" << err
                       << "\n(stdout: " << read_file(tmp_.path() / "stdout.log") << ")";
}

INSTANTIATE_TEST_SUITE_P(
    Config, ConfigErrorTest,
    ::testing::Values(BadConfig{"MissingWebhookUrl", "WEBHOOK_URL", ""},
                      BadConfig{"FtpWebhookUrl", "WEBHOOK_URL", "ftp://x"},
                      BadConfig{"NonNumericMaxRecipients", "SMTP_MAX_RECIPIENTS", "abc"},
                      BadConfig{"ZeroMaxRecipients", "SMTP_MAX_RECIPIENTS", "0"},
                      BadConfig{"NonBooleanAcceptAll", "ACCEPT_ALL_RECIPIENTS", "maybe"},
                      BadConfig{"NonsenseListen", "SMTP_LISTEN", "nonsense"},
                      // Beyond the brief's list: every typed variable is checked.
                      BadConfig{"UnknownBareLfMode", "SMTP_BARE_LF", "sometimes"},
                      BadConfig{"NonNumericMessageSize", "SMTP_MAX_MESSAGE_BYTES", "lots"},
                      BadConfig{"ZeroConcurrency", "WEBHOOK_CONCURRENCY", "0"},
                      BadConfig{"NegativeTimeout", "WEBHOOK_TIMEOUT_MS", "-5"},
                      BadConfig{"PortOutOfRange", "SMTP_LISTEN", "127.0.0.1:70000"},
                      BadConfig{"DnsServerByName", "DNS_SERVERS", "ns1.example.com"},
                      BadConfig{"NegativeDiskGuard", "SPOOL_MIN_FREE_BYTES", "-1"},
                      BadConfig{"DiskGuardInWords", "SPOOL_MIN_FREE_BYTES", "100MB"},
                      // The content scanners (README "Spam and virus verdicts").
                      BadConfig{"ClamdActionDelete", "CLAMD_ACTION", "delete"},
                      BadConfig{"FtpRspamdUrl", "RSPAMD_URL", "ftp://x"},
                      BadConfig{"ClamdAddressNotAnAddress", "CLAMD_ADDRESS", "not-an-address"},
                      BadConfig{"RspamdRequiredMaybe", "RSPAMD_REQUIRED", "maybe"},
                      BadConfig{"ClamdTimeoutInWords", "CLAMD_TIMEOUT_MS", "soon"},
                      BadConfig{"RspamdTimeoutNegative", "RSPAMD_TIMEOUT_MS", "-5"},
                      // The payload formats (README "Parsed and JSON payloads").
                      BadConfig{"BogusWebhookFormat", "WEBHOOK_FORMAT", "bogus"},
                      BadConfig{"JsonRawEmailMaybe", "WEBHOOK_JSON_RAW_EMAIL", "maybe"}),
    [](const ::testing::TestParamInfo<BadConfig>& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace itest
