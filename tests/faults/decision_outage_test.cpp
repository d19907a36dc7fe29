// DecisionOutage proves that an unusable decision API (WEBHOOK_DECISION_URL) makes mxhook
// answer 451 and nothing else: while the decision service is down (connection refused),
// answers 500, or is slower than its timeout (WEBHOOK_TIMEOUT_MS, which also bounds a
// decision request), every message gets 451 (never a 5xx that would bounce the mail, never
// a 250 for a message that is then dropped), nothing is spooled or posted, and a probe
// session beside the waiting ones keeps getting its replies quickly (one slow decision does
// not hold up other sessions). When the decision API recovers, mail is accepted and
// delivered again.

#include "fault_support.hpp"

#include <atomic>
#include <memory>
#include <thread>

namespace faults {
namespace {

constexpr int kDecisionTimeoutMs = 3000;
constexpr int kSenders = 6;
constexpr int kPerSender = 2;
// A session not waiting for a decision answers within this, even while others wait (a
// blocked event loop would show the decision timeout here).
constexpr Ms kProbeBound{1500};
constexpr Ms kReplyBound{kDecisionTimeoutMs + 3000};

class DecisionOutage : public FaultTest {
protected:
    TestWebhook decider_;
};

struct PhaseResult {
    std::map<int, int> codes;
    long max_took_ms = 0;
};

TEST_F(DecisionOutage, SendersGet451AndOthersAreNotHeldUp) {
    scenario_ = "DecisionOutage";
    ASSERT_TRUE(start_daemon({{"LOG_LEVEL", "info"},
                              {"WEBHOOK_DECISION_URL", decider_.url("/decide")},
                              {"WEBHOOK_TIMEOUT_MS", std::to_string(kDecisionTimeoutMs)}}));
    const unsigned short port = daemon().smtp_port();
    Ledger& ledger = ledger_;
    Problems problems;

    // The probe: one open session sending NOOP, and fresh connections (greeting + EHLO),
    // each timed, for the whole outage.
    std::atomic<bool> probe_stop{false};
    std::atomic<long> probe_max_ms{0};
    std::atomic<long> probe_ops{0};
    auto probe_note = [&](Clock::time_point since, const std::string& what, bool ok) {
        const long ms = std::chrono::duration_cast<Ms>(Clock::now() - since).count();
        long seen = probe_max_ms.load();
        while (ms > seen && !probe_max_ms.compare_exchange_weak(seen, ms)) {
        }
        ++probe_ops;
        if (!ok) problems.add("probe " + what + " failed");
        if (Ms(ms) > kProbeBound) problems.add("probe " + what + " took " + std::to_string(ms) + " ms");
    };
    std::vector<std::thread> probe;
    JoinGuard join_probe(probe_stop, probe);
    probe.emplace_back([&] {
        // A new session every 50 NOOPs: past SMTP_MAX_JUNK_COMMANDS (100) the daemon would
        // rightly close it.
        std::unique_ptr<SmtpClient> session;
        bool ok = true;
        for (int i = 0; ok && !probe_stop; ++i) {
            if (i % 50 == 0) {
                session = std::make_unique<SmtpClient>(port, Ms(10000));
                ok = session->connected() && session->greeting().code == 220 && session->ehlo().code == 250;
                if (!ok) problems.add("probe session could not start");
            }
            auto t0 = Clock::now();
            probe_note(t0, "NOOP", ok && session->cmd("NOOP").code == 250);
            if (i % 5 == 0) {
                t0 = Clock::now();
                SmtpClient fresh(port, Ms(10000));
                const bool greeted = fresh.connected() && fresh.greeting().code == 220 && fresh.ehlo().code == 250;
                probe_note(t0, "connect+EHLO", greeted);
                fresh.cmd("QUIT");
            }
            pause_unless(probe_stop, Ms(50));
        }
    });

    auto run_senders = [&](const std::string& phase) {
        PhaseResult result;
        std::mutex mutex;
        std::vector<std::thread> senders;
        for (int s = 0; s < kSenders; ++s) {
            senders.emplace_back([&, s] {
                for (int n = 0; n < kPerSender; ++n) {
                    const std::string subject = phase + " s" + std::to_string(s) + " n" + std::to_string(n);
                    const SendResult r = send_in_session(port, simple_message(subject), Ms(10000));
                    if (!r.id.empty()) ledger.acked(r.id);
                    std::lock_guard lock(mutex);
                    ++result.codes[r.step == "message" ? r.reply.code : -100 - r.reply.code];
                    result.max_took_ms = std::max<long>(result.max_took_ms, r.took.count());
                    if (phase != "recovered" && r.reply.code != 451) {
                        problems.add(subject + ": expected 451, got " + r.reply.text() + " at " + r.step);
                    }
                    if (phase == "recovered" && r.id.empty()) {
                        problems.add(subject + ": expected 250, got " + r.reply.text() + " at " + r.step);
                    }
                    if (r.took > kReplyBound) {
                        problems.add(subject + ": reply after " + std::to_string(r.took.count()) + " ms");
                    }
                }
            });
        }
        for (auto& t : senders) t.join();
        std::cout << "  " << phase << ":";
        for (const auto& [code, n] : result.codes) std::cout << " " << n << "x" << code;
        std::cout << ", slowest " << result.max_took_ms << " ms\n";
        return result;
    };

    decider_.stop();
    const auto down = run_senders("down");
    ASSERT_GT(down.codes.count(451), 0u) << "no 451 at all while the decision API is down:" << problems.sample();
    decider_.reply_with([](const WebhookRequest&) {
        WebhookReply reply;
        reply.status = 500;
        reply.body = R"({"error":"internal"})";
        reply.content_type = "application/json";
        return reply;
    });
    decider_.start();
    run_senders("500");
    const std::size_t asked_before_slow = decider_.count();
    decider_.reply_with([](const WebhookRequest&) {
        WebhookReply reply;  // would allow, but far too late
        reply.body = R"({"decision":"allow"})";
        reply.content_type = "application/json";
        reply.delay = Ms(3 * kDecisionTimeoutMs);
        return reply;
    });
    const auto slow = run_senders("slow");
    join_probe.join();
    std::cout << "  probe: " << probe_ops.load() << " timed operations, slowest " << probe_max_ms.load() << " ms\n";

    EXPECT_EQ(asked_before_slow, static_cast<std::size_t>(kSenders * kPerSender))
        << "each message of the 500 phase asks the decision API once";
    EXPECT_GE(slow.max_took_ms, kDecisionTimeoutMs - 100) << "the slow phase did not wait for the decision";
    EXPECT_EQ(hook_.count(), 0u) << "a message refused with 451 reached the webhook";
    EXPECT_TRUE(list_dir(pending_dir()).empty()) << "a refused message was spooled";
    EXPECT_TRUE(wait_until([&] { return list_dir(tmp_spool_dir()).empty(); }, Ms(10000)))
        << "tmp/ still holds " << list_dir(tmp_spool_dir()).size() << " refused message(s)";
    EXPECT_TRUE(ledger.ids().empty()) << "250 during the outage";

    decider_.reply_json(R"({"decision":"allow"})");
    const auto after = run_senders("recovered");
    EXPECT_EQ(after.codes.count(250) ? after.codes.at(250) : 0, kSenders * kPerSender);

    EXPECT_EQ(problems.size(), 0u) << problems.sample(15);
    const auto acked = ledger.ids();
    EXPECT_TRUE(wait_settled(acked, Ms(30000))) << "the accepted messages were not all delivered";
    note_rss();
    stop_daemon();
    const Tally t = finish("DecisionOutage", acked);
    EXPECT_EQ(t.dead, 0u);
}

}  // namespace
}  // namespace faults
