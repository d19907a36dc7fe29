// Delivery outcomes: 2xx deletes, 406 dead-letters, anything else (or no webhook) retries
// with the same id until it succeeds or the retry age runs out.

#include "harness/fixture.hpp"

#include <atomic>
#include <fstream>
#include <iostream>
#include <map>
#include <regex>
#include <set>
#include <thread>

namespace itest {
namespace {

using nlohmann::json;

const std::regex kIsoTime(R"(^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$)");

bool is_iso_string(const json& value) {
    return value.is_string() && std::regex_match(value.get<std::string>(), kIsoTime);
}


class DeliveryTest : public IntegrationTest {};

TEST_F(DeliveryTest, SuccessDeletesTheItem) {
    ASSERT_TRUE(start_daemon());
    const std::string id = send_one(simple_message());
    ASSERT_FALSE(id.empty());
    ASSERT_TRUE(request_for(id).has_value());
    EXPECT_TRUE(spool_drains()) << "pending/ and processing/ must be empty after a 200";
    EXPECT_TRUE(list_dir(dead_dir()).empty());
}

TEST_F(DeliveryTest, AnyTwoHundredIsSuccess) {
    hook_.respond_with([](const WebhookRequest&) { return 204u; });
    ASSERT_TRUE(start_daemon());
    const std::string id = send_one(simple_message());
    ASSERT_FALSE(id.empty());
    ASSERT_TRUE(request_for(id).has_value());
    EXPECT_TRUE(spool_drains());
    EXPECT_FALSE(hook_.wait_for(2, std::chrono::milliseconds(600))) << "a 204 must not be retried";
}

TEST_F(DeliveryTest, NotAcceptableDeadLetters) {
    hook_.respond_with([](const WebhookRequest&) { return 406u; });
    ASSERT_TRUE(start_daemon());
    const std::string id = send_one(simple_message("refused"));
    ASSERT_FALSE(id.empty());
    ASSERT_TRUE(request_for(id).has_value());
    const auto item = dead_dir() / id;
    ASSERT_TRUE(wait_until([&] { return std::filesystem::exists(item / "meta.json"); }, std::chrono::seconds(10)))
        << "dead/" << id << " never appeared";
    EXPECT_TRUE(std::filesystem::exists(item / "message.eml"));
    EXPECT_TRUE(spool_drains());
    // Six retry scans' worth of time: a dead item is never tried again.
    EXPECT_FALSE(hook_.wait_for(2, std::chrono::milliseconds(600))) << "a 406 must not be retried";
    const auto meta = read_meta(item);
    ASSERT_TRUE(meta.has_value());
    EXPECT_EQ((*meta)["id"], id);
    EXPECT_EQ((*meta)["subject"], "refused");
}

TEST_F(DeliveryTest, ServerErrorIsRetriedWithTheSameId) {
    hook_.queue_statuses({500, 500});
    ASSERT_TRUE(start_daemon());
    const std::string id = send_one(simple_message("retry me"));
    ASSERT_FALSE(id.empty());
    ASSERT_TRUE(hook_.wait_for(3, std::chrono::seconds(15))) << "got " << hook_.count() << " POSTs";
    ASSERT_TRUE(spool_drains());
    EXPECT_FALSE(hook_.wait_for(4, std::chrono::milliseconds(600))) << "delivered: no more POSTs";
    const auto requests = hook_.requests();
    ASSERT_EQ(requests.size(), 3u);
    for (const auto& request : requests) {
        EXPECT_EQ(request.id(), id);
        EXPECT_EQ(request.field("subject"), "retry me");
        EXPECT_EQ(request.field("signature"),
                  hmac_sha256_hex(kSigningKey, request.field("timestamp") + request.field("token")));
    }
    EXPECT_EQ(requests[0].status, 500u);
    EXPECT_EQ(requests[1].status, 500u);
    EXPECT_EQ(requests[2].status, 200u);
    EXPECT_EQ(requests[0].field("body-mime"), requests[2].field("body-mime"));
    // Each attempt is signed afresh: a webhook that refuses a replayed token accepts a retry.
    EXPECT_NE(requests[0].field("token"), requests[1].field("token"));
    EXPECT_NE(requests[1].field("token"), requests[2].field("token"));
    EXPECT_TRUE(list_dir(dead_dir()).empty());
}

TEST_F(DeliveryTest, FailedAttemptIsRecordedInMeta) {
    hook_.respond_with([](const WebhookRequest&) { return 500u; });
    // A long interval keeps the item in pending/ after its first failure.
    ASSERT_TRUE(start_daemon({{"RETRY_INTERVAL_MS", "60000"}, {"RETRY_MAX_INTERVAL_MS", "60000"}}));
    const std::string id = send_one(simple_message());
    ASSERT_FALSE(id.empty());
    std::optional<json> meta;
    ASSERT_TRUE(wait_until(
        [&] {
            meta = read_meta(pending_dir() / id);
            return meta && (*meta)["attempts"].is_number_integer() && (*meta)["attempts"].get<int>() >= 1;
        },
        std::chrono::seconds(10)))
        << "pending/" << id << "/meta.json never recorded an attempt; last read: "
        << (meta ? meta->dump(2) : std::string("(none)"));
    EXPECT_TRUE((*meta)["lastError"].is_string() && !(*meta)["lastError"].get<std::string>().empty())
        << meta->dump(2);
    EXPECT_TRUE(is_iso_string((*meta)["lastAttemptAt"])) << meta->dump(2);
    EXPECT_TRUE(is_iso_string((*meta)["nextAttemptAt"])) << meta->dump(2);
    EXPECT_GT((*meta)["nextAttemptAt"].get<std::string>(), (*meta)["lastAttemptAt"].get<std::string>());
    EXPECT_EQ(hook_.count(), 1u);
}

// The back-off as the README states it: nextAttemptAt = lastAttemptAt +
// min(RETRY_INTERVAL_MS * 2^(attempts-1), RETRY_MAX_INTERVAL_MS), read off meta.json
// between attempts: 300, 600, 1200, 1200 ms with 300/1200.
TEST_F(DeliveryTest, BackoffDoublesUpToTheMaximum) {
    hook_.respond_with([](const WebhookRequest&) { return 500u; });
    ASSERT_TRUE(start_daemon({{"RETRY_INTERVAL_MS", "300"}, {"RETRY_MAX_INTERVAL_MS", "1200"}}));
    const std::string id = send_one(simple_message("back-off"));
    ASSERT_FALSE(id.empty());
    std::map<int, long long> gap;  // attempts -> nextAttemptAt - lastAttemptAt (ms)
    EXPECT_TRUE(wait_until(
        [&] {
            if (const auto meta = read_meta(pending_dir() / id)) {
                const json& m = *meta;
                // (const operator[] must not be asked for a key that is not there yet)
                if (m.contains("lastAttemptAt") && m.contains("nextAttemptAt") && m["attempts"].is_number_integer() &&
                    is_iso_string(m["lastAttemptAt"]) && is_iso_string(m["nextAttemptAt"])) {
                    gap[m["attempts"].get<int>()] = iso_ms(m["nextAttemptAt"].get<std::string>()) -
                                                     iso_ms(m["lastAttemptAt"].get<std::string>());
                }
            }
            return gap.count(1) && gap.count(2) && gap.count(3) && gap.count(4);
        },
        std::chrono::seconds(20), std::chrono::milliseconds(10)))
        << "saw attempts " << [&] {
               std::string seen;
               for (const auto& [attempts, ms] : gap) seen += std::to_string(attempts) + " ";
               return seen;
           }();
    EXPECT_EQ(gap[1], 300);
    EXPECT_EQ(gap[2], 600);
    EXPECT_EQ(gap[3], 1200);
    EXPECT_EQ(gap[4], 1200);
}

// The body is streamed from the spool into the request: 16 deliveries of 25 MB at once
// (WEBHOOK_CONCURRENCY's default) must not cost the daemon hundreds of MB.
TEST_F(DeliveryTest, SixteenLargeDeliveriesAtOnceStayLean) {
#ifdef MXHOOK_TEST_ASAN
    GTEST_SKIP() << "AddressSanitizer's shadow memory and quarantine make the resident size meaningless";
#endif
    constexpr std::size_t kItems = 16;
    constexpr std::size_t kBytes = 25u * 1024 * 1024;
    // Mostly unreserved characters, so the form body stays near the message size.
    std::string body;
    body.reserve(kBytes);
    const std::string line = std::string(76, 'x') + "\r\n";
    while (body.size() + line.size() <= kBytes) body += line;
    std::map<std::string, std::size_t> sizes;  // id -> size of message.eml
    for (std::size_t i = 0; i < kItems; ++i) {
        const std::string id = new_spool_id();
        const std::string head = "Subject: large " + std::to_string(i) + "\r\n\r\n";
        sizes[id] = head.size() + body.size();
        write_file(pending_dir() / id / "message.eml", head + body);
        write_file(pending_dir() / id / "meta.json", spool_item_meta(id, "large").dump(2) + "\n");
    }
    // Each answer waits a little, so the 16 requests overlap.
    hook_.reply_with([](const WebhookRequest&) {
        WebhookReply r;
        r.delay = std::chrono::milliseconds(300);
        return r;
    });
    ASSERT_TRUE(start_daemon({{"WEBHOOK_CONCURRENCY", "16"}}));
    ASSERT_TRUE(hook_.wait_for(kItems, std::chrono::seconds(120))) << "delivered " << hook_.count();
    ASSERT_TRUE(spool_drains(std::chrono::seconds(30)));
    const long peak = proc_status_kib(daemon().pid(), "VmHWM");
    ASSERT_GT(peak, 0);
    for (const auto& request : hook_.requests()) {
        EXPECT_EQ(request.field("body-mime").size(), sizes[request.id()]) << request.id();
    }
    std::cout << "[ info     ] daemon peak resident size: " << peak / 1024 << " MiB\n";
    EXPECT_LT(peak, 100L * 1024) << "peak resident size " << peak / 1024 << " MiB for " << kItems << " x "
                                 << kBytes / (1024 * 1024) << " MB deliveries";
}

TEST_F(DeliveryTest, WebhookDownThenUp) {
    hook_.stop();
    ASSERT_TRUE(start_daemon());
    const std::string id = send_one(simple_message("patience"));
    ASSERT_FALSE(id.empty());
    // At least one attempt failed while the webhook was down.
    ASSERT_TRUE(wait_until(
        [&] {
            const auto meta = read_meta(pending_dir() / id);
            return meta && (*meta)["attempts"].is_number_integer() && (*meta)["attempts"].get<int>() >= 1;
        },
        std::chrono::seconds(10)));
    hook_.start();
    const auto request = request_for(id, std::chrono::seconds(10));
    ASSERT_TRUE(request.has_value());
    EXPECT_EQ(request->field("subject"), "patience");
    EXPECT_TRUE(spool_drains());
}

// MAX_RETRY_AGE_MS: a message keeps being retried while it is younger than the limit,
// and is dead-lettered (lastError says why, no further POST) once it is older.
TEST_F(DeliveryTest, RetryAgeExhaustedDeadLetters) {
    hook_.respond_with([](const WebhookRequest&) { return 503u; });
    ASSERT_TRUE(start_daemon({{"MAX_RETRY_AGE_MS", "1500"}, {"RETRY_INTERVAL_MS", "100"},
                              {"RETRY_MAX_INTERVAL_MS", "200"}}));
    const std::string id = send_one(simple_message());
    ASSERT_FALSE(id.empty());
    EXPECT_TRUE(wait_until([&] { return std::filesystem::exists(dead_dir() / id / "meta.json"); },
                           std::chrono::seconds(10)))
        << id << " never reached dead/";
    const auto seen_dead_at = std::chrono::duration_cast<std::chrono::milliseconds>(
                                  std::chrono::system_clock::now().time_since_epoch())
                                  .count();
    EXPECT_TRUE(std::filesystem::exists(dead_dir() / id / "message.eml"));
    EXPECT_TRUE(spool_drains());
    const auto meta = read_meta(dead_dir() / id);
    ASSERT_TRUE(meta.has_value());
    EXPECT_EQ((*meta)["lastError"], "max retry age exceeded") << meta->dump(2);
    // Retried while young: several attempts in 1.5 s at 100-200 ms intervals...
    const auto attempts = (*meta)["attempts"].get<int>();
    EXPECT_GE(attempts, 3) << meta->dump(2);
    EXPECT_EQ(hook_.count(), static_cast<std::size_t>(attempts)) << "a POST after the age ran out";
    // ...and not set aside before the age ran out.
    EXPECT_GE(seen_dead_at, iso_ms((*meta)["createdAt"].get<std::string>()) + 1500) << meta->dump(2);
}

TEST_F(DeliveryTest, ManyMessagesConcurrently) {
    // Several sessions at once, bounded webhook concurrency: everything arrives, once.
    ASSERT_TRUE(start_daemon({{"WEBHOOK_CONCURRENCY", "4"}}));
    constexpr int kSessions = 4, kPerSession = 10;
    std::vector<std::string> ids(kSessions * kPerSession);
    std::vector<std::thread> threads;
    std::atomic<int> failures{0};
    for (int s = 0; s < kSessions; ++s) {
        threads.emplace_back([&, s] {
            SmtpClient client(daemon().smtp_port());
            if (client.greeting().code != 220 || client.ehlo().code != 250) {
                ++failures;
                return;
            }
            for (int i = 0; i < kPerSession; ++i) {
                const int n = s * kPerSession + i;
                const Reply r = client.send_message("a@example.org", {"user@example.com"},
                                                    simple_message("message " + std::to_string(n)));
                ids[n] = queued_id(r);
                if (ids[n].empty()) ++failures;
            }
        });
    }
    for (auto& t : threads) t.join();
    ASSERT_EQ(failures.load(), 0);
    ASSERT_TRUE(hook_.wait_for(ids.size(), std::chrono::seconds(20))) << hook_.count() << " of " << ids.size();
    ASSERT_TRUE(spool_drains());
    std::set<std::string> received;
    for (const auto& request : hook_.requests()) received.insert(request.id());
    EXPECT_EQ(received, std::set<std::string>(ids.begin(), ids.end()));
    EXPECT_EQ(hook_.count(), ids.size()) << "duplicates";
}

TEST_F(DeliveryTest, ClientErrorsOtherThan406AreRetried) {
    hook_.queue_statuses({404, 410, 302});
    ASSERT_TRUE(start_daemon());
    const std::string id = send_one(simple_message());
    ASSERT_FALSE(id.empty());
    ASSERT_TRUE(hook_.wait_for(4, std::chrono::seconds(15))) << "got " << hook_.count() << " POSTs";
    ASSERT_TRUE(spool_drains());
    for (const auto& request : hook_.requests()) EXPECT_EQ(request.id(), id);
    EXPECT_TRUE(list_dir(dead_dir()).empty());
}

TEST_F(DeliveryTest, SlowWebhookTimesOutAndIsRetried) {
    std::atomic<int> calls{0};
    hook_.respond_with([&](const WebhookRequest&) {
        if (calls++ == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2000));
        return 200u;
    });
    ASSERT_TRUE(start_daemon({{"WEBHOOK_TIMEOUT_MS", "300"}}));
    const std::string id = send_one(simple_message());
    ASSERT_FALSE(id.empty());
    // The second POST arrives while the first is still being answered: the daemon gave up
    // on it after 300 ms.
    EXPECT_TRUE(wait_until([&] { return calls.load() >= 2; }, std::chrono::milliseconds(1800)))
        << "no retry before the slow answer came";
    ASSERT_TRUE(spool_drains());
    for (const auto& request : hook_.requests()) EXPECT_EQ(request.id(), id);
}

TEST_F(DeliveryTest, ConcurrencyIsBounded) {
    std::atomic<int> in_flight{0}, peak{0};
    hook_.respond_with([&](const WebhookRequest&) {
        const int now = ++in_flight;
        int seen = peak.load();
        while (now > seen && !peak.compare_exchange_weak(seen, now)) {
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(150));
        --in_flight;
        return 200u;
    });
    ASSERT_TRUE(start_daemon({{"WEBHOOK_CONCURRENCY", "2"}}));
    auto client = connect();
    ASSERT_EQ(client->ehlo().code, 250);
    std::vector<std::string> ids;
    for (int i = 0; i < 8; ++i) {
        ids.push_back(queued_id(client->send_message("a@example.org", {"user@example.com"}, simple_message())));
        ASSERT_FALSE(ids.back().empty());
    }
    ASSERT_TRUE(hook_.wait_for(ids.size(), std::chrono::seconds(15)));
    ASSERT_TRUE(spool_drains());
    EXPECT_LE(peak.load(), 2) << "WEBHOOK_CONCURRENCY=2 exceeded";
    EXPECT_EQ(peak.load(), 2) << "deliveries were not run in parallel";
}

TEST_F(DeliveryTest, SigtermLetsAnInFlightDeliveryFinish) {
    std::atomic<bool> arrived{false};
    hook_.respond_with([&](const WebhookRequest&) {
        arrived = true;
        std::this_thread::sleep_for(std::chrono::milliseconds(700));
        return 200u;
    });
    ASSERT_TRUE(start_daemon({{"SHUTDOWN_GRACE_MS", "5000"}}));
    const std::string id = send_one(simple_message());
    ASSERT_FALSE(id.empty());
    ASSERT_TRUE(wait_until([&] { return arrived.load(); }, std::chrono::seconds(10)));
    ASSERT_NO_FATAL_FAILURE(stop_daemon());
    EXPECT_TRUE(list_dir(processing_dir()).empty()) << "nothing may be left in processing/";
    EXPECT_TRUE(list_dir(pending_dir()).empty()) << "the answered delivery was done: its item is deleted";
}

}  // namespace
}  // namespace itest
