#include "harness/fixture.hpp"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>

namespace itest {

std::string mxhook_binary() {
    const char* override_path = std::getenv("MXHOOK_TEST_BINARY");
    return override_path && *override_path ? override_path : MXHOOK_BINARY;
}

namespace {

std::string hex(const unsigned char* bytes, unsigned int length) {
    static const char* digits = "0123456789abcdef";
    std::string out;
    for (unsigned int i = 0; i < length; ++i) {
        out += digits[bytes[i] >> 4];
        out += digits[bytes[i] & 0xF];
    }
    return out;
}

}  // namespace

std::string hmac_sha256_hex(std::string_view key, std::string_view data) {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
         reinterpret_cast<const unsigned char*>(data.data()), data.size(), digest, &length);
    return hex(digest, length);
}

std::string sha256_hex(std::string_view bytes) {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    EVP_Digest(bytes.data(), bytes.size(), digest, &length, EVP_sha256(), nullptr);
    return hex(digest, length);
}

nlohmann::ordered_json spool_item_meta(const std::string& id, std::string_view subject) {
    using nlohmann::ordered_json;
    ordered_json meta;
    meta["id"] = id;
    meta["createdAt"] = iso_time(std::chrono::system_clock::now() - std::chrono::minutes(1));
    meta["attempts"] = 0;
    meta["nextAttemptAt"] = nullptr;
    meta["sender"] = "alice@example.org";
    meta["recipients"] = ordered_json::array({"bob@example.com"});
    meta["from"] = "Alice <alice@example.org>";
    meta["subject"] = std::string(subject);
    meta["headers"] = ordered_json::array({ordered_json::array({"From", "Alice <alice@example.org>"}),
                                           ordered_json::array({"Subject", std::string(subject)})});
    meta["remote"] = {{"ip", "192.0.2.10"}, {"host", ""}, {"helo", "mail.example.org"}};
    return meta;
}

std::string simple_message(std::string_view subject, std::string_view body) {
    return "From: Sender <sender@example.org>\r\n"
           "To: User <user@example.com>\r\n"
           "Subject: " + std::string(subject) + "\r\n"
           "Message-ID: <itest@example.org>\r\n"
           "\r\n" + std::string(body);
}

std::optional<TraceSplit> split_received(const std::string& body_mime) {
    if (body_mime.rfind("Received: ", 0) != 0) return std::nullopt;
    std::size_t pos = 0;
    while (true) {
        const auto eol = body_mime.find("\r\n", pos);
        if (eol == std::string::npos) return std::nullopt;
        pos = eol + 2;
        if (pos >= body_mime.size() || (body_mime[pos] != ' ' && body_mime[pos] != '\t')) break;
    }
    return TraceSplit{body_mime.substr(0, pos), body_mime.substr(pos)};
}

std::string printable(std::string_view bytes, std::size_t limit) {
    std::string out;
    for (std::size_t i = 0; i < bytes.size() && i < limit; ++i) {
        const char c = bytes[i];
        const auto u = static_cast<unsigned char>(c);
        if (c == '\r') out += "\\r";
        else if (c == '\n') out += "\\n";
        else if (u < 0x20 || u >= 0x7F) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\x%02x", u);
            out += buf;
        } else out += c;
    }
    if (bytes.size() > limit) out += "...";
    return out;
}

namespace {

std::string escaped(std::string_view bytes) { return printable(bytes, bytes.size()); }

}  // namespace

std::string first_difference(const std::string& expected, const std::string& actual) {
    std::size_t i = 0;
    while (i < expected.size() && i < actual.size() && expected[i] == actual[i]) ++i;
    if (i == expected.size() && i == actual.size()) return "identical";
    const std::size_t from = i > 20 ? i - 20 : 0;
    std::ostringstream out;
    out << "sizes: expected " << expected.size() << ", got " << actual.size() << "; first difference at byte "
        << i << ": expected \"" << escaped(std::string_view(expected).substr(from, 60)) << "\" got \""
        << escaped(std::string_view(actual).substr(from, 60)) << "\"";
    return out.str();
}

Env IntegrationTest::base_env(unsigned short smtp_port) const {
    return {
        {"SMTP_LISTEN", "127.0.0.1:" + std::to_string(smtp_port)},
        {"SMTP_HOSTNAME", kHostname},
        {"SPOOL_DIR", spool_dir().string()},
        {"WEBHOOK_URL", hook_.url("/hook")},
        {"WEBHOOK_SIGNING_KEY", kSigningKey},
        {"RETRY_SCAN_INTERVAL_MS", "100"},
        {"RETRY_INTERVAL_MS", "100"},
        {"RETRY_MAX_INTERVAL_MS", "400"},
        {"LOG_LEVEL", "debug"},
        // Sender checks would ask this machine's resolver (no network here) and add a
        // header to every message; the tests of them turn them on (tests/integration/auth_test.cpp).
        {"AUTH_CHECKS", "none"},
    };
}

Env IntegrationTest::with_overrides(Env base, const Env& overrides) {
    for (const auto& [key, value] : overrides) {
        if (value.empty()) base.erase(key);
        else base[key] = value;
    }
    return base;
}

std::size_t IntegrationTest::requests_for(const std::string& id, const std::string& target) const {
    std::size_t n = 0;
    for (const auto& r : hook_.requests()) {
        if (r.id() == id && (target.empty() || r.target == target)) ++n;
    }
    return n;
}

bool IntegrationTest::log_shows(Daemon& d, const std::string& text, std::chrono::milliseconds timeout) {
    return wait_until([&] { return d.log().find(text) != std::string::npos; }, timeout);
}

bool IntegrationTest::start_daemon(const Env& overrides) {
    Env env = with_overrides(base_env(free_port()), overrides);
    const auto log = tmp_.path() / ("daemon-" + std::to_string(daemons_.size() + 1) + ".log");
    daemons_.push_back(std::make_unique<Daemon>(mxhook_binary(), env, log));
    Daemon& d = *daemons_.back();
    d.start();
    if (!d.wait_ready(std::chrono::seconds(10))) {
        const auto status = d.wait_exit(std::chrono::milliseconds(0));
        ADD_FAILURE() << "mxhook did not answer 220 on port " << d.smtp_port() << " within 10 s ("
                      << (status ? status->describe() : std::string("still running")) << ")";
        return false;
    }
    return true;
}

void IntegrationTest::stop_daemon() {
    const auto status = daemon().stop(std::chrono::seconds(15));
    ASSERT_TRUE(status.has_value()) << "mxhook did not exit within 15 s of SIGTERM";
    EXPECT_TRUE(status->exited() && status->code() == 0) << "SIGTERM: " << status->describe();
}

std::unique_ptr<SmtpClient> IntegrationTest::connect(const std::string& source) {
    auto client = std::make_unique<SmtpClient>(daemon().smtp_port(), std::chrono::seconds(10), source);
    EXPECT_TRUE(client->connected()) << "connect: " << client->connect_error();
    const Reply greeting = client->greeting();
    EXPECT_EQ(greeting.code, 220) << greeting;
    return client;
}

std::string IntegrationTest::send_one(const std::string& message, const std::vector<std::string>& recipients,
                                      const std::string& from) {
    auto client = connect();
    const Reply ehlo = client->ehlo();
    if (ehlo.code != 250) {
        ADD_FAILURE() << "EHLO: " << ehlo;
        return {};
    }
    const Reply reply = client->send_message(from, recipients, message);
    const std::string id = queued_id(reply);
    if (id.empty()) {
        ADD_FAILURE() << "message not queued: " << reply;
        return {};
    }
    client->cmd("QUIT");
    return id;
}

std::optional<WebhookRequest> IntegrationTest::request_for(const std::string& id,
                                                           std::chrono::milliseconds timeout) {
    std::optional<WebhookRequest> found;
    wait_until(
        [&] {
            for (auto& request : hook_.requests()) {
                if (request.id() == id) {
                    found = std::move(request);
                    return true;
                }
            }
            return false;
        },
        timeout);
    return found;
}

bool IntegrationTest::spool_drains(std::chrono::milliseconds timeout) {
    return wait_until([&] { return list_dir(pending_dir()).empty() && list_dir(processing_dir()).empty(); },
                      timeout);
}

std::vector<std::string> IntegrationTest::tmp_items() const {
    std::vector<std::string> items;
    for (auto& name : list_dir(tmp_spool_dir())) {
        if (!name.ends_with(".delivered")) items.push_back(std::move(name));
    }
    return items;
}

std::optional<nlohmann::json> IntegrationTest::read_meta(const std::filesystem::path& item_dir) {
    try {
        return nlohmann::json::parse(read_file(item_dir / "meta.json"));
    } catch (const std::exception&) {
        return std::nullopt;
    }
}

std::optional<nlohmann::json> IntegrationTest::meta_after_attempt(const std::string& id) const {
    std::optional<nlohmann::json> meta;
    wait_until(
        [&] {
            meta = read_meta(pending_dir() / id);
            return meta && meta->value("attempts", 0) >= 1;
        },
        std::chrono::seconds(10));
    if (!meta || meta->value("attempts", 0) < 1) {
        ADD_FAILURE() << "meta.json of " << id << " never showed an attempt in pending/";
    }
    return meta;
}

void IntegrationTest::TearDown() {
    for (auto& d : daemons_) {
        if (d->running()) d->stop(std::chrono::seconds(5));
    }
    // In the sanitizer build a report at any point (shutdown leaks included) fails the test
    // that ran the daemon, whether or not the test looked at how it exited.
    for (std::size_t i = 0; i < daemons_.size(); ++i) {
        const std::string log = daemons_[i]->log();
        for (const char* marker : {"ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"}) {
            if (log.find(marker) != std::string::npos) {
                ADD_FAILURE() << "daemon " << i + 1 << " log has a sanitizer report (" << marker << ")";
            }
        }
    }
    if (!HasFailure()) return;
    for (std::size_t i = 0; i < daemons_.size(); ++i) {
        std::string log = daemons_[i]->log();
        constexpr std::size_t keep = 30000;
        if (log.size() > keep) log = "[... " + std::to_string(log.size() - keep) + " bytes cut ...]\n" + log.substr(log.size() - keep);
        std::cerr << "----- mxhook log (daemon " << i + 1 << ", port " << daemons_[i]->smtp_port() << ") -----\n"
                  << log << "\n----- end of log -----\n";
    }
    const auto requests = hook_.requests();
    std::cerr << "webhook received " << requests.size() << " request(s)";
    for (std::size_t i = 0; i < requests.size() && i < 20; ++i) {
        std::cerr << (i ? ", " : ": ") << requests[i].id() << " -> " << requests[i].status;
    }
    std::cerr << "\nspool: pending=" << list_dir(pending_dir()).size()
              << " processing=" << list_dir(processing_dir()).size() << " dead=" << list_dir(dead_dir()).size()
              << " tmp=" << list_dir(tmp_spool_dir()).size() << "\n";
}

}  // namespace itest
