// WebhookOutage proves that a webhook outage never reaches the SMTP side and costs no
// message: while the webhook first refuses connections, then answers 500, then hangs past
// WEBHOOK_TIMEOUT_MS, two senders keep sending and every message gets its 250 within 5 s;
// once the webhook answers 200 again everything acknowledged is delivered, nothing is
// dead-lettered, and the recorded attempts of any one id are never closer together than
// RETRY_INTERVAL_MS (the back-off holds, there is no hot retry loop).

#include "fault_support.hpp"

#include <algorithm>
#include <atomic>
#include <thread>

namespace faults {
namespace {

class WebhookOutage : public FaultTest {};

constexpr int kTimeoutMs = 1000;
constexpr int kRetryMs = 300;
constexpr Ms kSendBound{5000};

enum Phase : int { refused = 0, error500 = 1, hanging = 2, recovered = 3 };
const char* phase_name(int p) {
    static const char* names[] = {"refused", "500", "hanging", "recovered"};
    return names[p];
}

TEST_F(WebhookOutage, AcceptanceNeverStallsAndEverythingArrivesAfterRecovery) {
    scenario_ = "WebhookOutage";
    std::atomic<int> phase{refused};
    hook_.reply_with([&](const WebhookRequest&) {
        WebhookReply reply;
        switch (phase.load()) {
            case error500: reply.status = 500; break;
            case hanging:  // answered (if ever) long after the daemon gave up: not a delivery
                reply.status = 503;
                reply.delay = Ms(3 * kTimeoutMs);
                break;
            default: reply.status = 200;
        }
        return reply;
    });
    hook_.stop();
    ASSERT_TRUE(start_daemon({{"LOG_LEVEL", "info"},
                              {"WEBHOOK_TIMEOUT_MS", std::to_string(kTimeoutMs)},
                              {"RETRY_INTERVAL_MS", std::to_string(kRetryMs)},
                              {"RETRY_MAX_INTERVAL_MS", "1200"},
                              {"SHUTDOWN_GRACE_MS", "3000"}}));
    const unsigned short port = daemon().smtp_port();

    Ledger& ledger = ledger_;
    Problems problems;
    std::atomic<bool> stop{false};
    std::atomic<long> max_took_ms{0};
    std::atomic<int> sent_per_phase[4] = {0, 0, 0, 0};
    std::vector<std::thread> senders;
    JoinGuard join_senders(stop, senders);
    for (int s = 0; s < 2; ++s) {
        senders.emplace_back([&, s] {
            for (int n = 0; !stop; ++n) {
                const int p = phase.load();
                const std::string subject = "outage s" + std::to_string(s) + " n" + std::to_string(n);
                const SendResult r = send_in_session(port, simple_message(subject), Ms(10000));
                long seen = max_took_ms.load();
                while (r.took.count() > seen && !max_took_ms.compare_exchange_weak(seen, r.took.count())) {
                }
                if (!r.id.empty()) ledger.acked(r.id);
                else problems.add(subject + " (" + phase_name(p) + "): no 250 at " + r.step + ": " + r.reply.text());
                if (r.took > kSendBound) {
                    problems.add(subject + " (" + phase_name(p) + "): took " + std::to_string(r.took.count()) + " ms");
                }
                ++sent_per_phase[p];
                pause_unless(stop, Ms(150));  // pacing: about 13 messages a second in all
            }
        });
    }

    // Each phase lasts its time (cut short when acceptance is clearly broken).
    auto run_phase = [&](Ms length) {
        const auto until = Clock::now() + length;
        wait_until([&] { return Clock::now() >= until || problems.size() > 50; }, length + Ms(100), Ms(20));
    };
    run_phase(Ms(3000));  // connection refused
    phase = error500;
    hook_.start();
    run_phase(Ms(3000));
    phase = hanging;
    run_phase(Ms(3500));
    const std::size_t before_recovery = hook_.count();
    const auto early = delivered_counts(hook_.requests());
    phase = recovered;
    run_phase(Ms(1500));
    join_senders.join();

    std::cout << "  sent: refused " << sent_per_phase[0] << ", 500 " << sent_per_phase[1] << ", hanging "
              << sent_per_phase[2] << ", recovered " << sent_per_phase[3] << "; slowest 250 took "
              << max_took_ms.load() << " ms; " << before_recovery << " webhook request(s) before recovery\n";
    EXPECT_EQ(problems.size(), 0u) << "SMTP acceptance suffered from the webhook outage:" << problems.sample();
    EXPECT_TRUE(early.empty()) << "a 2xx was recorded before the webhook recovered";
    for (int p = refused; p <= hanging; ++p) EXPECT_GT(sent_per_phase[p].load(), 3) << phase_name(p);

    const auto acked = ledger.ids();
    EXPECT_TRUE(wait_settled(acked, Ms(60000))) << "not everything was delivered within 60 s of the recovery";
    note_rss();

    // The back-off: consecutive attempts of one id are at least RETRY_INTERVAL_MS apart.
    std::map<std::string, std::vector<std::chrono::system_clock::time_point>> attempts;
    for (const auto& request : hook_.requests()) attempts[request.id()].push_back(request.received_at);
    std::size_t retried = 0;
    long min_gap_ms = -1;
    std::string closest;
    for (auto& [id, times] : attempts) {
        if (times.size() < 2) continue;
        ++retried;
        std::sort(times.begin(), times.end());
        for (std::size_t i = 1; i < times.size(); ++i) {
            const long gap = std::chrono::duration_cast<Ms>(times[i] - times[i - 1]).count();
            if (min_gap_ms < 0 || gap < min_gap_ms) {
                min_gap_ms = gap;
                closest = id;
            }
        }
    }
    std::cout << "  " << retried << " id(s) seen more than once by the webhook; closest two attempts of one id: "
              << min_gap_ms << " ms apart\n";
    EXPECT_GT(retried, 0u) << "no id was retried in view of the webhook: the spacing check proved nothing";
    // 5 ms of slack: nextAttemptAt is stored with millisecond precision.
    EXPECT_GE(min_gap_ms, kRetryMs - 5) << "two attempts of " << closest << " closer than RETRY_INTERVAL_MS";

    stop_daemon();
    const Tally t = finish("WebhookOutage", acked);
    EXPECT_EQ(t.dead, 0u) << "nothing here deserves dead/";
}

}  // namespace
}  // namespace faults
