#pragma once
// The whole configuration, read once from the environment at start-up.
// Every setting is an environment variable; every error names its variable.

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <string_view>
#include <vector>

namespace mxhook {

// Thrown by load_config; what() is one line that starts with the variable's name.
class ConfigError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// An IP address and a port: where to listen, or which server to ask.
struct HostPort {
    std::string host;  // "0.0.0.0", "::", "127.0.0.1" (IPv6 without brackets)
    std::uint16_t port = 25;
};
using ListenAddress = HostPort;

// Where clamd listens: a unix socket path, or a TCP host:port.
struct ClamdAddress {
    std::string unix_path;  // set for a unix socket
    HostPort tcp;           // else
};

// An address block, e.g. 10.0.0.0/8 or 2001:db8::/32 (a bare address is /32 or /128).
struct Cidr {
    std::array<unsigned char, 16> bytes{};  // IPv4 in the first 4
    bool v6 = false;
    unsigned prefix = 0;
};
// True when `ip` (text, IPv4 or IPv6) lies in the block. IPv4 never matches an IPv6 block.
bool cidr_contains(const Cidr& block, std::string_view ip);

enum class BareLfPolicy { normalize, reject };

// How much of the message the decision API sees (WEBHOOK_DECISION_PAYLOAD_MODE).
enum class DecisionMode { minimal, summary, full };

// One webhook POST per message (recipients comma-joined) or one per recipient.
enum class RecipientMode { joined, each };

// How the webhook body is encoded (WEBHOOK_ENCODING): urlencoded when the message (and
// every field) is valid UTF-8, multipart/form-data otherwise; or always one of them.
enum class WebhookEncoding { auto_detect, urlencoded, multipart };

// What the webhook receives (WEBHOOK_FORMAT): the raw MIME in body-mime (Mailgun's MIME
// forward), the message taken apart as multipart/form-data (Mailgun's parsed forward), or
// one JSON object (Postmark's inbound webhook).
enum class WebhookFormat { mime, parsed, json };

// The role list used when ROLE_ADDRESSES is unset.
std::vector<std::string> default_role_addresses();

struct Config {
    // SMTP
    std::vector<ListenAddress> smtp_listen;                 // SMTP_LISTEN, default 0.0.0.0:25
    std::string smtp_hostname;                              // SMTP_HOSTNAME, default gethostname()
    std::size_t smtp_max_message_bytes = 26214400;          // SMTP_MAX_MESSAGE_BYTES
    std::size_t smtp_max_recipients = 1000;                 // SMTP_MAX_RECIPIENTS
    BareLfPolicy smtp_bare_lf = BareLfPolicy::normalize;    // SMTP_BARE_LF: normalize | reject
    std::chrono::milliseconds smtp_timeout{300000};          // SMTP_TIMEOUT_MS
    std::chrono::milliseconds smtp_max_session{3600000};     // SMTP_MAX_SESSION_MS
    std::size_t smtp_max_connections = 1000;                // SMTP_MAX_CONNECTIONS
    std::size_t smtp_max_connections_per_ip = 20;           // SMTP_MAX_CONNECTIONS_PER_IP
    std::size_t smtp_max_errors = 20;                       // SMTP_MAX_ERRORS
    std::size_t smtp_max_junk_commands = 100;               // SMTP_MAX_JUNK_COMMANDS
    std::size_t smtp_max_header_bytes = 1048576;            // SMTP_MAX_HEADER_BYTES
    std::size_t smtp_max_header_lines = 10000;              // SMTP_MAX_HEADER_LINES
    std::size_t smtp_max_received_headers = 100;            // SMTP_MAX_RECEIVED_HEADERS
    // Peers allowed to speak PROXY protocol v1/v2 (a load balancer); when set, the SMTP
    // listeners take connections only from them, and only with a PROXY header.
    std::vector<Cidr> smtp_proxy_protocol_from;             // SMTP_PROXY_PROTOCOL_FROM (empty: off)

    // STARTTLS (both paths or neither)
    std::string smtp_tls_cert_path;                         // SMTP_TLS_CERT_PATH (full chain, PEM)
    std::string smtp_tls_key_path;                          // SMTP_TLS_KEY_PATH (PEM)
    std::chrono::milliseconds smtp_tls_watch_interval{60000};  // SMTP_TLS_WATCH_INTERVAL_MS
    std::chrono::milliseconds shutdown_grace{30000};         // SHUTDOWN_GRACE_MS
    std::chrono::milliseconds drain_timeout{60000};          // DRAIN_TIMEOUT_MS
    bool accept_all_recipients = true;                      // ACCEPT_ALL_RECIPIENTS
    std::vector<std::string> accepted_domains;              // ACCEPTED_DOMAINS, lower-cased

    // Spool
    std::filesystem::path spool_dir = "/var/spool/mxhook";  // SPOOL_DIR
    std::filesystem::path spool_tmp_dir;                    // SPOOL_TMP_DIR, default SPOOL_DIR/tmp
    std::filesystem::path spool_pending_dir;                // SPOOL_PENDING_DIR
    std::filesystem::path spool_processing_dir;             // SPOOL_PROCESSING_DIR
    std::filesystem::path spool_dead_dir;                   // SPOOL_DEAD_DIR
    // Below this much free space on the spool's filesystem MAIL gets 452 (0: no guard).
    std::uint64_t spool_min_free_bytes = 100000000;         // SPOOL_MIN_FREE_BYTES

    // Webhook
    std::string webhook_url;                                // WEBHOOK_URL (required, http/https)
    std::string webhook_signing_key;                        // WEBHOOK_SIGNING_KEY (empty: unsigned)
    std::size_t webhook_concurrency = 16;                   // WEBHOOK_CONCURRENCY
    std::chrono::milliseconds webhook_timeout{10000};        // WEBHOOK_TIMEOUT_MS
    RecipientMode webhook_recipient_mode = RecipientMode::joined;  // WEBHOOK_RECIPIENT_MODE
    WebhookEncoding webhook_encoding = WebhookEncoding::auto_detect;  // WEBHOOK_ENCODING
    WebhookFormat webhook_format = WebhookFormat::mime;     // WEBHOOK_FORMAT
    bool webhook_json_raw_email = false;                    // WEBHOOK_JSON_RAW_EMAIL

    // Role-address routing
    std::string webhook_role_url;                           // WEBHOOK_ROLE_URL (empty: off)
    std::filesystem::path webhook_routes;                   // WEBHOOK_ROUTES: the routes file (empty: off)
    std::vector<std::string> role_addresses = default_role_addresses();  // ROLE_ADDRESSES, lower-cased

    // Decision API
    std::string decision_url;                               // WEBHOOK_DECISION_URL (empty: off)
    std::string decision_token;                             // WEBHOOK_DECISION_TOKEN
    DecisionMode decision_mode = DecisionMode::minimal;     // WEBHOOK_DECISION_PAYLOAD_MODE

    // Disk work: threads that write, fsync and rename spool files. Commits beyond this
    // many wait for a thread; fsyncs that run together are batched by the filesystem.
    std::size_t spool_worker_threads = 4;                   // SPOOL_WORKER_THREADS

    // Retries
    std::chrono::milliseconds retry_scan_interval{5000};     // RETRY_SCAN_INTERVAL_MS
    std::chrono::milliseconds retry_interval{30000};         // RETRY_INTERVAL_MS
    std::chrono::milliseconds retry_max_interval{3600000};   // RETRY_MAX_INTERVAL_MS
    std::chrono::milliseconds max_retry_age{0};              // MAX_RETRY_AGE_MS (0 = for ever)
    std::int64_t max_interrupted_attempts = 3;              // MAX_INTERRUPTED_ATTEMPTS (poison messages)

    // DNS (client names and sender authentication)
    std::vector<HostPort> dns_servers;                      // DNS_SERVERS (empty: /etc/resolv.conf)

    // Sender authentication: which checks run after DATA, and their bound per message
    bool auth_spf = true, auth_dkim = true, auth_dmarc = true;  // AUTH_CHECKS ("none": all off)
    std::chrono::milliseconds auth_dns_timeout{5000};        // AUTH_DNS_TIMEOUT_MS
    std::filesystem::path auth_public_suffix_list{"/usr/share/publicsuffix/public_suffix_list.dat"};  // AUTH_PUBLIC_SUFFIX_LIST

    // Content scanners after DATA (off when unset)
    std::string rspamd_url;                                 // RSPAMD_URL, e.g. http://127.0.0.1:11333
    std::chrono::milliseconds rspamd_timeout{10000};        // RSPAMD_TIMEOUT_MS
    bool rspamd_required = false;                           // RSPAMD_REQUIRED: 451 when unchecked
    std::optional<ClamdAddress> clamd_address;              // CLAMD_ADDRESS: /path/clamd.ctl or host:port
    std::chrono::milliseconds clamd_timeout{30000};         // CLAMD_TIMEOUT_MS
    bool clamd_reject = true;                               // CLAMD_ACTION: reject (554) or mark
    bool clamd_required = false;                            // CLAMD_REQUIRED: 451 when unchecked

    // Operation
    std::optional<HostPort> metrics_listen;                 // METRICS_LISTEN (unset: no HTTP endpoint)
    std::string log_level = "info";                         // LOG_LEVEL: trace debug info warn error critical off
    bool log_json = false;                                  // LOG_FORMAT: text (default) or json
};

using EnvLookup = std::function<std::optional<std::string>(std::string_view name)>;

// Reads the process environment.
EnvLookup process_env();

// Every setting with its effective value, in the README's order and the environment's
// spelling ("SMTP_LISTEN", "0.0.0.0:25"), for `mxhook config`. Secrets are masked:
// WEBHOOK_SIGNING_KEY and WEBHOOK_DECISION_TOKEN show as "********" when set, and the
// password of a URL (https://user:secret@host/) as "********".
std::vector<std::pair<std::string, std::string>> describe(const Config& config);
// A URL as it may be shown (logs, `mxhook config`): its password, if any, as "********".
std::string masked_url(const std::string& url);

// Why `url` is not an absolute http:// or https:// URL with a host (curl's URL parser);
// nullopt when it is. The URL itself is not repeated (it may carry a password).
std::optional<std::string> http_url_problem(const std::string& url);

// Where the spool is (SPOOL_DIR and the four state directories), without the rest of the
// configuration: what `mxhook spool` needs, which must work without WEBHOOK_URL.
struct SpoolPaths {
    std::filesystem::path root, tmp, pending, processing, dead;
};
SpoolPaths load_spool_paths(const EnvLookup& env);

// Builds the configuration; throws ConfigError naming the variable on any bad value.
// Unset and empty variables take their defaults (except WEBHOOK_URL, which is required).
Config load_config(const EnvLookup& env);

// "1", "true", "yes", "on" (any case) -> true; "0", "false", "no", "off" -> false;
// anything else -> nullopt.
std::optional<bool> parse_bool(std::string_view text);

// Splits a comma list, trims each item, drops empty items.
std::vector<std::string> split_list(std::string_view text);

}  // namespace mxhook
