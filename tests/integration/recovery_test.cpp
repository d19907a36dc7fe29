// Start-up recovery and process lifecycle: items left in processing/ or tmp/, a spool
// written by haraka-webhook, broken and not-yet-due items, kill -9, SIGTERM.

#include "harness/fixture.hpp"

#include <signal.h>

#include <atomic>
#include <ctime>
#include <random>
#include <set>
#include <thread>

namespace itest {
namespace {

using ordered_json = nlohmann::ordered_json;


const std::string kHarakaMessage =
    "Received: from mail.example.org (mail.example.org [192.0.2.10])\r\n"
    "\tby haraka.example.com (Haraka/3.0.3) with ESMTPS id 4F1C2D3E-AAAA-4BBB-8CCC-0123456789AB.1\r\n"
    "\tenvelope-from <alice@example.org>;\r\n"
    "\tMon, 25 Nov 2024 17:03:14 +0000\r\n"
    "From: Alice <alice@example.org>\r\n"
    "To: bob@example.com\r\n"
    "Subject: Written by haraka-webhook\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "\r\n"
    "Gr\xc3\xbc\xc3\x9f\x65 aus dem alten Spool.\r\n"
    "..not unstuffed again\r\n";

// meta.json exactly as haraka-webhook writes it: JSON.stringify(meta, null, 2) + "\n".
ordered_json haraka_meta(const std::string& id) {
    ordered_json meta;
    meta["id"] = id;
    meta["createdAt"] = iso_time(std::chrono::system_clock::now() - std::chrono::minutes(5));
    meta["attempts"] = 0;
    meta["nextAttemptAt"] = nullptr;
    meta["sender"] = "<alice@example.org>";
    meta["recipients"] = ordered_json::array({"bob@example.com"});
    meta["from"] = "Alice <alice@example.org>";
    meta["subject"] = "Written by haraka-webhook";
    meta["headers"] = ordered_json::array({
        ordered_json::array({"Received", "from mail.example.org (mail.example.org [192.0.2.10]) by "
                                         "haraka.example.com (Haraka/3.0.3) with ESMTPS id "
                                         "4F1C2D3E-AAAA-4BBB-8CCC-0123456789AB.1 envelope-from "
                                         "<alice@example.org>; Mon, 25 Nov 2024 17:03:14 +0000"}),
        ordered_json::array({"From", "Alice <alice@example.org>"}),
        ordered_json::array({"To", "bob@example.com"}),
        ordered_json::array({"Subject", "Written by haraka-webhook"}),
        ordered_json::array({"Content-Type", "text/plain; charset=utf-8"}),
    });
    meta["remote"] = {{"ip", "192.0.2.10"}, {"host", "mail.example.org"}, {"helo", "mail.example.org"}};
    return meta;
}

void write_item(const std::filesystem::path& dir, const ordered_json& meta, const std::string& eml) {
    write_file(dir / "message.eml", eml);
    write_file(dir / "meta.json", meta.dump(2) + "\n");
}

class RecoveryTest : public IntegrationTest {};

TEST_F(RecoveryTest, AdoptsHarakaWebhookSpool) {
    const std::string id = new_spool_id();
    const ordered_json meta = haraka_meta(id);
    write_item(pending_dir() / id, meta, kHarakaMessage);
    ASSERT_TRUE(start_daemon());
    const auto request = request_for(id);
    ASSERT_TRUE(request.has_value()) << "the haraka-webhook item was not delivered";
    EXPECT_EQ(request->field("sender"), "alice@example.org");
    EXPECT_EQ(request->field("recipient"), "bob@example.com");
    EXPECT_EQ(request->field("from"), "Alice <alice@example.org>");
    EXPECT_EQ(request->field("subject"), "Written by haraka-webhook");
    EXPECT_EQ(nlohmann::json::parse(request->field("message-headers"), nullptr, false),
              nlohmann::json::parse(meta["headers"].dump()));
    const std::string body = request->field("body-mime");
    EXPECT_TRUE(body == kHarakaMessage) << "stored bytes, no second trace header: "
                                        << first_difference(kHarakaMessage, body);
    EXPECT_EQ(request->field("signature"),
              hmac_sha256_hex(kSigningKey, request->field("timestamp") + request->field("token")));
    EXPECT_TRUE(spool_drains());
}

TEST_F(RecoveryTest, ProcessingItemIsDeliveredAfterStart) {
    const std::string id = new_spool_id();
    write_item(processing_dir() / id, haraka_meta(id), kHarakaMessage);
    ASSERT_TRUE(start_daemon());
    const auto request = request_for(id);
    ASSERT_TRUE(request.has_value()) << "an item left in processing/ must be tried again";
    EXPECT_TRUE(request->field("body-mime") == kHarakaMessage);
    EXPECT_TRUE(spool_drains());
}

TEST_F(RecoveryTest, StaleTmpIsRemovedAtStart) {
    const std::string id = new_spool_id();
    write_file(tmp_spool_dir() / id / "message.eml", "Subject: half received\r\n\r\npart");
    ASSERT_TRUE(start_daemon());
    EXPECT_TRUE(wait_until([&] { return !std::filesystem::exists(tmp_spool_dir() / id); }, std::chrono::seconds(5)))
        << "tmp/" << id << " still there";
    // A message received now is delivered; the half-received one never is.
    const std::string fresh = send_one(simple_message());
    ASSERT_TRUE(request_for(fresh).has_value());
    EXPECT_EQ(hook_.count(), 1u);
}

TEST_F(RecoveryTest, InvalidMetaIsDeadLettered) {
    const std::string id = new_spool_id();
    write_file(pending_dir() / id / "message.eml", kHarakaMessage);
    write_file(pending_dir() / id / "meta.json", "{ \"id\": \"" + id + "\", \"attempts\": ");
    ASSERT_TRUE(start_daemon());
    EXPECT_TRUE(wait_until([&] { return std::filesystem::exists(dead_dir() / id / "error.txt"); },
                           std::chrono::seconds(10)))
        << "dead/" << id << "/error.txt never appeared; dead/ holds " << list_dir(dead_dir()).size();
    EXPECT_TRUE(std::filesystem::exists(dead_dir() / id / "message.eml"));
    EXPECT_FALSE(std::filesystem::exists(pending_dir() / id));
    for (const auto& request : hook_.requests()) EXPECT_NE(request.id(), id);
}

TEST_F(RecoveryTest, ItemNotYetDueStaysInPending) {
    const std::string later = new_spool_id();
    ordered_json meta = haraka_meta(later);
    meta["attempts"] = 3;
    meta["nextAttemptAt"] = iso_time(std::chrono::system_clock::now() + std::chrono::hours(24));
    write_item(pending_dir() / later, meta, kHarakaMessage);
    const std::string due = new_spool_id();
    write_item(pending_dir() / due, haraka_meta(due), kHarakaMessage);

    ASSERT_TRUE(start_daemon());
    ASSERT_TRUE(request_for(due).has_value()) << "the due item was not delivered";
    // Several scans later (a new message goes all the way through), the future one still waits.
    const std::string fresh = send_one(simple_message());
    ASSERT_TRUE(request_for(fresh).has_value());
    EXPECT_TRUE(wait_until([&] { return hook_.count() >= 2; }, std::chrono::seconds(1)));
    for (const auto& request : hook_.requests()) EXPECT_NE(request.id(), later) << "delivered before it was due";
    EXPECT_TRUE(std::filesystem::exists(pending_dir() / later / "message.eml"));
}

TEST_F(RecoveryTest, KillNineLosesNothing) {
    hook_.stop();
    ASSERT_TRUE(start_daemon());
    constexpr int kSessions = 5, kPerSession = 10;
    std::vector<std::string> ids(kSessions * kPerSession);
    std::vector<std::thread> threads;
    std::atomic<int> failures{0};
    const unsigned short port = daemon().smtp_port();
    for (int s = 0; s < kSessions; ++s) {
        threads.emplace_back([&, s] {
            SmtpClient client(port);
            if (client.greeting().code != 220 || client.ehlo().code != 250) {
                ++failures;
                return;
            }
            for (int i = 0; i < kPerSession; ++i) {
                const int n = s * kPerSession + i;
                ids[n] = queued_id(client.send_message("a@example.org", {"user@example.com"},
                                                       simple_message("crash " + std::to_string(n))));
                if (ids[n].empty()) ++failures;
            }
        });
    }
    for (auto& t : threads) t.join();
    ASSERT_EQ(failures.load(), 0) << "not every message got 250";

    daemon().kill9();
    hook_.start();
    ASSERT_TRUE(start_daemon());
    std::set<std::string> expected(ids.begin(), ids.end()), received;
    ASSERT_EQ(expected.size(), ids.size()) << "ids must be unique";
    wait_until(
        [&] {
            received.clear();
            for (const auto& request : hook_.requests()) received.insert(request.id());
            return received == expected;
        },
        std::chrono::seconds(30));
    std::vector<std::string> missing;
    for (const auto& id : expected) {
        if (!received.count(id)) missing.push_back(id);
    }
    EXPECT_TRUE(missing.empty()) << missing.size() << " of " << ids.size() << " messages lost, e.g. "
                                 << missing.front();
    EXPECT_TRUE(spool_drains());
}

TEST_F(RecoveryTest, SigtermExitsCleanly) {
    ASSERT_TRUE(start_daemon({{"SHUTDOWN_GRACE_MS", "2000"}}));
    const std::string id = send_one(simple_message());
    ASSERT_TRUE(request_for(id).has_value());
    auto idle = connect();  // an idle session must not hold the shutdown for ever
    ASSERT_EQ(idle->ehlo().code, 250);
    const unsigned short port = daemon().smtp_port();

    daemon().signal(SIGTERM);
    // From now on a new connection is refused, or is told 421.
    ASSERT_TRUE(wait_until(
        [&] {
            SmtpClient late(port, std::chrono::seconds(5));
            if (!late.connected()) return true;
            const Reply r = late.greeting();
            return r.code == 421 || r.code == 0;
        },
        std::chrono::seconds(5), std::chrono::milliseconds(50)))
        << "new connections were still greeted 5 s after SIGTERM";
    const auto status = daemon().wait_exit(std::chrono::seconds(15));
    ASSERT_TRUE(status.has_value()) << "still running 15 s after SIGTERM";
    EXPECT_TRUE(status->exited() && status->code() == 0) << status->describe();
    SmtpClient after(port);
    EXPECT_FALSE(after.connected()) << "the port must be closed after exit";
}

TEST_F(RecoveryTest, SigtermDuringRetriesKeepsTheItem) {
    hook_.stop();
    ASSERT_TRUE(start_daemon({{"SHUTDOWN_GRACE_MS", "2000"}}));
    const std::string id = send_one(simple_message("kept"));
    ASSERT_FALSE(id.empty());
    ASSERT_NO_FATAL_FAILURE(stop_daemon());
    EXPECT_TRUE(std::filesystem::exists(pending_dir() / id / "message.eml"))
        << "after SIGTERM an undelivered item is back in pending/";
    EXPECT_TRUE(list_dir(processing_dir()).empty());
    hook_.start();
    ASSERT_TRUE(start_daemon());
    const auto request = request_for(id);
    ASSERT_TRUE(request.has_value());
    EXPECT_EQ(request->field("subject"), "kept");
}

}  // namespace
}  // namespace itest
