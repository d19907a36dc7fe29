#pragma once
// IntegrationTest: the fixture every integration test derives from. It owns a temporary
// directory (the spool lives under it), a TestWebhook, and the daemons the test starts;
// at the end it stops them by PID and, when the test failed, prints their logs.

#include "harness/daemon.hpp"
#include "harness/files.hpp"
#include "harness/smtp_client.hpp"
#include "harness/webhook_server.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace itest {

inline constexpr const char* kSigningKey = "integration-test-signing-key";
inline constexpr const char* kHostname = "mx.test";

// Path of the binary under test: $MXHOOK_TEST_BINARY, or the one this build made.
std::string mxhook_binary();

// Lowercase hex HMAC-SHA256(key, data), computed with OpenSSL.
std::string hmac_sha256_hex(std::string_view key, std::string_view data);
// Lowercase hex SHA-256 of bytes.
std::string sha256_hex(std::string_view bytes);

// A small well-formed message with CRLF line ends.
std::string simple_message(std::string_view subject = "Hello", std::string_view body = "Hello there.\r\n");

// A valid meta.json of a spool item due now (created a minute ago, no attempts yet), one
// recipient, for tests that put items into the spool themselves.
nlohmann::ordered_json spool_item_meta(const std::string& id, std::string_view subject = "Hello");

// Splits body-mime into the Received trace header the daemon prepends (its first line and
// the continuation lines that follow) and the rest. nullopt when it does not start with one.
struct TraceSplit {
    std::string received;
    std::string rest;
};
std::optional<TraceSplit> split_received(const std::string& body_mime);

// Bytes readable in a failure message: CR, LF and other controls escaped, at most `limit`
// of them (then "...").
std::string printable(std::string_view bytes, std::size_t limit = 120);

// Describes where two byte strings first differ (offset, and a few escaped bytes of each).
std::string first_difference(const std::string& expected, const std::string& actual);

class IntegrationTest : public ::testing::Test {
protected:
    void TearDown() override;

    std::filesystem::path spool_dir() const { return tmp_.path() / "spool"; }
    std::filesystem::path pending_dir() const { return spool_dir() / "pending"; }
    std::filesystem::path processing_dir() const { return spool_dir() / "processing"; }
    std::filesystem::path dead_dir() const { return spool_dir() / "dead"; }
    std::filesystem::path tmp_spool_dir() const { return spool_dir() / "tmp"; }

    // The environment of the brief: loopback SMTP port, spool under the temp dir, the test
    // webhook, a signing key, fast retries, debug logs.
    Env base_env(unsigned short smtp_port) const;

    // `base` with `overrides` applied (an empty value unsets the variable).
    static Env with_overrides(Env base, const Env& overrides);

    // Starts mxhook with base_env() plus `overrides` (an empty value unsets the variable)
    // and waits until it greets. False (with a failure recorded) when it does not.
    bool start_daemon(const Env& overrides = {});
    Daemon& daemon() { return *daemons_.back(); }
    // Stops the current daemon with SIGTERM; records a failure when it does not exit 0.
    void stop_daemon();

    // A new session with the current daemon, greeting read (and checked to be 220); from
    // `source` (another loopback address) when given.
    std::unique_ptr<SmtpClient> connect(const std::string& source = {});
    // Sends one message in a session of its own (EHLO, MAIL, RCPT..., DATA, QUIT) and
    // returns the queued id; "" with a failure recorded when it was not accepted.
    std::string send_one(const std::string& message,
                         const std::vector<std::string>& recipients = {"user@example.com"},
                         const std::string& from = "sender@example.org");

    // The single request whose X-Mxhook-Id is `id`, waiting for it (bounded).
    std::optional<WebhookRequest> request_for(const std::string& id,
                                              std::chrono::milliseconds timeout = std::chrono::seconds(10));

    // How many requests the webhook received with X-Mxhook-Id `id` (at `target`, when given).
    std::size_t requests_for(const std::string& id, const std::string& target = {}) const;
    // True once `d`'s log contains `text` (bounded).
    static bool log_shows(Daemon& d, const std::string& text,
                          std::chrono::milliseconds timeout = std::chrono::seconds(10));

    // True when pending/ and processing/ are both empty (waits, bounded).
    bool spool_drains(std::chrono::milliseconds timeout = std::chrono::seconds(10));

    // Entries of tmp/ that are messages being received, i.e. all but "<id>.delivered": a
    // delivered item passes through that name on its way out, and small ones stay there
    // for reuse (spool::Spool::remove).
    std::vector<std::string> tmp_items() const;

    // meta.json of an item, parsed; nullopt while it is missing or being replaced.
    static std::optional<nlohmann::json> read_meta(const std::filesystem::path& item_dir);
    // meta.json of pending/<id> once its first (refused) attempt is recorded (waits up to
    // 10 s); nullopt, with a failure recorded, when it never is.
    std::optional<nlohmann::json> meta_after_attempt(const std::string& id) const;

    TempDir tmp_;
    TestWebhook hook_;
    std::vector<std::unique_ptr<Daemon>> daemons_;
};

}  // namespace itest
