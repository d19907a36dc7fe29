#pragma once
// Shared machinery of the fault-injection suite (tests/faults/): the FaultTest fixture on top
// of the integration harness, the ledger of acknowledged ids, the end-of-scenario accounting
// (acknowledged vs delivered vs dead-lettered, lost, duplicates) and the result table row,
// peak RSS of the daemon, and a one-session SMTP send with its latency. What each scenario
// proves is said at the top of its own file.

#include "harness/fixture.hpp"

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace faults {

using namespace itest;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using Ms = std::chrono::milliseconds;

// Every id the daemon answered 250 for, from any thread.
class Ledger {
public:
    void acked(const std::string& id);
    std::set<std::string> ids() const;
    std::size_t size() const;

private:
    mutable std::mutex mutex_;
    std::set<std::string> ids_;
};

// Thread-safe list of problems seen by helper threads, asserted on the test thread.
class Problems {
public:
    void add(const std::string& what);
    std::vector<std::string> all() const;
    std::size_t size() const;
    // The first few, one per line, for a failure message.
    std::string sample(std::size_t n = 10) const;

private:
    mutable std::mutex mutex_;
    std::vector<std::string> items_;
};

// VmHWM (peak resident set) of a process in KiB, from /proc/<pid>/status; -1 when unreadable.
long peak_rss_kib(pid_t pid);

// True when the daemon under test is built with AddressSanitizer: MXHOOK_TEST_ASAN=1, or the
// binary carries the ASan runtime (libasan.so needed, or __asan_init linked in).
bool daemon_is_asan(const std::string& binary);

// The id a dead/ entry stands for: move_to_dead may name it "<id>.<n>" when dead/<id> is taken.
std::string dead_entry_id(const std::string& name);

// The ids delivered: X-Mxhook-Id of every request the webhook answered 2xx, with counts.
std::map<std::string, int> delivered_counts(const std::vector<WebhookRequest>& requests);

// The end-of-scenario accounting.
struct Tally {
    std::string scenario;
    std::size_t acknowledged = 0;
    std::size_t delivered = 0;         // distinct ids with a 2xx answer (acknowledged or not)
    std::size_t dead = 0;              // entries in dead/
    std::size_t lost = 0;              // acknowledged, never delivered, not in dead/
    std::size_t duplicates = 0;        // 2xx deliveries beyond the first of an id
    std::size_t unacked_delivered = 0; // delivered, never acknowledged (e.g. the 250 was cut off)
    long peak_rss_kib = -1;
    double seconds = 0;
    std::vector<std::string> lost_ids;
    std::vector<std::string> acked_in_dead;  // healthy messages dead-lettered and never delivered
};

Tally make_tally(const std::string& scenario, const std::set<std::string>& acked,
                 const std::vector<WebhookRequest>& requests, const std::filesystem::path& dead_dir);

// Prints the row (with a header) to stdout, and appends it to $MXHOOK_FAULTS_TABLE when set
// (the header only when that file is new or empty).
void print_row(const Tally& tally);
std::string table_header();
std::string table_row(const Tally& tally);

// One message in a session of its own: connect, greeting, EHLO, MAIL/RCPT/DATA, QUIT.
struct SendResult {
    Reply reply;          // the final reply, or the first one that went wrong
    std::string id;       // queued id when 250
    Ms took{0};           // from connect to the final reply
    std::string step;     // where it stopped: "connect", "greeting", "ehlo", "message"
};
SendResult send_in_session(unsigned short port, const std::string& message, Ms timeout = 15s,
                           const std::vector<std::string>& recipients = {"user@example.com"});

// A message of about `bytes` bytes whose subject is `subject` (CRLF line ends).
std::string sized_message(const std::string& subject, std::size_t bytes);

// Pauses a simulated client for `duration` (a slow drip, pacing of a sender), cut short
// when `stop` becomes true. Never used to wait for the daemon: that is always polled.
void pause_unless(const std::atomic<bool>& stop, Ms duration);

// Sets `stop` and joins `threads` when it goes out of scope: an ASSERT that returns early
// must not leave a joinable std::thread behind (its destructor would std::terminate).
class JoinGuard {
public:
    JoinGuard(std::atomic<bool>& stop, std::vector<std::thread>& threads) : stop_(stop), threads_(threads) {}
    ~JoinGuard() { join(); }
    JoinGuard(const JoinGuard&) = delete;
    JoinGuard& operator=(const JoinGuard&) = delete;
    void join() {
        stop_ = true;
        for (auto& t : threads_) {
            if (t.joinable()) t.join();
        }
    }

private:
    std::atomic<bool>& stop_;
    std::vector<std::thread>& threads_;
};

class FaultTest : public IntegrationTest {
protected:
    void SetUp() override;
    // Prints the scenario's row even when an ASSERT ended it early (marked "aborted"; the
    // spool was not drained, so its "lost" column is only what was still undelivered), then
    // stops the daemons as IntegrationTest does.
    void TearDown() override;

    // Reads VmHWM of the current daemon (when it runs) into the scenario's peak.
    void note_rss();
    long peak_rss() const { return peak_rss_kib_; }

    // Waits (bounded) until every acknowledged id was delivered or is in dead/, and pending/
    // and processing/ are both empty. True when that happened.
    bool wait_settled(const std::set<std::string>& acked, Ms timeout);

    // The accounting, its row printed; records failures for lost ids and for acknowledged
    // (healthy) ids found in dead/. Returns the tally for further checks.
    Tally finish(const std::string& scenario, const std::set<std::string>& acked);

    // Seconds since SetUp.
    double elapsed_seconds() const;

    // base_env() of a daemon already started (for a second instance on the same spool).
    Env env_with(const Env& overrides) const;

    std::string scenario_;      // the row's name; set at the start of each test
    Ledger ledger_;             // ids acknowledged in this scenario
    bool row_printed_ = false;
    long peak_rss_kib_ = -1;
    Clock::time_point started_;
};

}  // namespace faults
