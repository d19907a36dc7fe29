// CrashUnderLoad proves that `250` means durable and that a crash never costs a healthy
// message its delivery: 8 SMTP clients send without pause while the daemon is killed with
// SIGKILL at least 10 times on one spool, at moments chosen to hit webhook POSTs in flight
// (the webhook answers after 50-200 ms), sessions in the middle of DATA, and random instants.
// After the last restart everything drains, and every acknowledged id must have reached the
// webhook (at least once; duplicates are counted, not failed), none may be in dead/, and
// pending/ and processing/ must be empty. MAX_INTERRUPTED_ATTEMPTS keeps its default (3):
// a message that was merely in flight next to others when the daemon died is a bystander,
// not a poison message. (The kills are never timed to hit the same message alone in flight
// twice: that pattern is what the poison-message heuristic is there to catch.)

#include "fault_support.hpp"

#include <atomic>
#include <random>
#include <sstream>
#include <thread>

namespace faults {
namespace {

class CrashUnderLoad : public FaultTest {};

constexpr int kClients = 8;
constexpr int kKills = 12;

TEST_F(CrashUnderLoad, EveryAcknowledgedMessageArrivesAfterRepeatedSigkill) {
    scenario_ = "CrashUnderLoad";
    // The webhook is slow, so that POSTs overlap and a kill finds some in flight.
    std::atomic<int> hook_in_flight{0};
    hook_.respond_with([&](const WebhookRequest&) {
        thread_local std::mt19937 rng(std::random_device{}());
        ++hook_in_flight;
        std::this_thread::sleep_for(Ms(std::uniform_int_distribution<int>(50, 200)(rng)));
        --hook_in_flight;
        return 200u;
    });
    const Env env{{"LOG_LEVEL", "info"},
                  {"WEBHOOK_TIMEOUT_MS", "5000"},
                  {"RETRY_INTERVAL_MS", "200"},
                  {"RETRY_MAX_INTERVAL_MS", "1000"},
                  {"SHUTDOWN_GRACE_MS", "5000"}};
    ASSERT_TRUE(start_daemon(env));

    Ledger& ledger = ledger_;
    Problems unexpected;  // replies that must never come (5xx, a 250 without an id)
    std::atomic<unsigned short> port{daemon().smtp_port()};
    std::atomic<bool> stop{false};
    std::atomic<long> cut_off{0};  // transactions the kill cut short (no final reply)
    std::vector<std::thread> clients;
    JoinGuard join_clients(stop, clients);
    for (int c = 0; c < kClients; ++c) {
        clients.emplace_back([&, c] {
            // Two clients send large messages, so DATA takes long enough to be hit by a kill.
            const std::size_t size = c < 2 ? 192 * 1024 : 600;
            int n = 0;
            while (!stop) {
                const unsigned short p = port.load();
                if (p == 0) {
                    pause_unless(stop, Ms(10));
                    continue;
                }
                SmtpClient client(p, Ms(10000));
                if (!client.connected() || client.greeting().code != 220 || client.ehlo().code != 250) {
                    pause_unless(stop, Ms(10));  // the daemon is down or restarting
                    continue;
                }
                while (!stop) {
                    const std::string subject = "crash c" + std::to_string(c) + " n" + std::to_string(n++);
                    const Reply reply = client.send_message("sender@example.org", {"user@example.com"},
                                                            sized_message(subject, size));
                    if (reply.code == 250) {
                        const std::string id = queued_id(reply);
                        if (id.empty()) unexpected.add("250 without a queued id: " + reply.text());
                        else ledger.acked(id);
                        continue;
                    }
                    if (reply.code <= 0) {  // the daemon died under us
                        ++cut_off;
                        break;
                    }
                    if (reply.code >= 500) unexpected.add(subject + ": " + reply.text());
                    if (client.cmd("RSET").code != 250) break;
                }
            }
        });
    }

    std::mt19937 rng(std::random_device{}());
    std::vector<std::string> kills;
    std::map<std::string, int> alone_at_kill;  // id -> kills that found it alone in processing/
    int hit_posts = 0, hit_data = 0;
    bool restarted = true;
    for (int round = 0; round < kKills && restarted; ++round) {
        // Let the new daemon do some work first: a few more messages acknowledged.
        const std::size_t before = ledger.size();
        if (!wait_until([&] { return ledger.size() >= before + 5; }, Ms(10000), Ms(5))) {
            ADD_FAILURE() << "the daemon acknowledged " << ledger.size() - before << " message(s) in 10 s after "
                          << (round == 0 ? "its start" : "restart " + std::to_string(round)) << ": not serving";
            break;
        }
        const int mode = round % 3;
        if (mode == 0) {  // while POSTs are in flight
            wait_until([&] { return hook_in_flight.load() > 0; }, Ms(5000), Ms(2));
            std::this_thread::sleep_for(Ms(std::uniform_int_distribution<int>(0, 40)(rng)));
        } else if (mode == 1) {  // while a session is in DATA
            wait_until([&] { return tmp_items().size() > 0; }, Ms(5000), Ms(1));
        } else {  // at a random instant
            std::this_thread::sleep_for(Ms(std::uniform_int_distribution<int>(0, 600)(rng)));
        }
        // Never kill while the one delivery in flight is an item that was already alone in
        // flight at an earlier kill. Such an item is counted (MAX_INTERRUPTED_ATTEMPTS): three
        // kills timed to its isolated retries would make any message look like a poison
        // message, which is the heuristic working as documented, not a lost bystander. Kills
        // that are not aimed at one message's retries must never dead-letter anything.
        wait_until(
            [&] {
                const auto now = list_dir(processing_dir());
                return now.size() != 1 || alone_at_kill.count(now.front()) == 0;
            },
            Ms(5000), Ms(1));
        const int posts = hook_in_flight.load();
        const std::size_t data = tmp_items().size();
        note_rss();
        daemon().kill9();
        port = 0;
        const auto left = list_dir(processing_dir());  // frozen now: what recovery will see
        if (left.size() == 1) ++alone_at_kill[left.front()];
        if (posts > 0) ++hit_posts;
        if (data > 0) ++hit_data;
        std::ostringstream what;
        what << "kill " << round + 1 << " (" << (mode == 0 ? "POSTs" : mode == 1 ? "DATA" : "random")
             << "): " << posts << " POST(s) in flight, " << data << " session(s) in DATA, " << left.size()
             << " in processing/, " << ledger.size() << " acknowledged so far";
        kills.push_back(what.str());
        restarted = start_daemon(env);
        if (restarted) port = daemon().smtp_port();
    }
    join_clients.join();
    for (const auto& k : kills) std::cout << "  " << k << "\n";
    std::cout << "  " << alone_at_kill.size() << " distinct item(s) were alone in processing/ at a kill\n";
    std::cout << "  " << cut_off.load() << " transaction(s) cut short by a kill (never acknowledged)\n";

    ASSERT_TRUE(restarted) << "the daemon did not come back after kill " << kills.size();
    EXPECT_GE(static_cast<int>(kills.size()), 10);
    EXPECT_GE(hit_posts, 1) << "no kill hit a POST in flight";
    EXPECT_GE(hit_data, 1) << "no kill hit a session in DATA";
    EXPECT_EQ(unexpected.size(), 0u) << "replies that must never come:" << unexpected.sample();
    EXPECT_GE(ledger.size(), 50u) << "too little load to prove anything";

    const auto acked = ledger.ids();
    EXPECT_TRUE(wait_settled(acked, Ms(90000))) << "the spool did not drain within 90 s of the last restart";
    note_rss();
    stop_daemon();
    const Tally t = finish("CrashUnderLoad", acked);
    // Every message here is healthy: nothing at all belongs in dead/ (an unacknowledged one
    // that was committed before the kill included).
    EXPECT_EQ(t.dead, 0u) << "dead/ holds " << t.dead << " item(s)";
}

}  // namespace
}  // namespace faults
