// Taking a replica out of service, as an operator (or a Kubernetes preStop hook) does:
// `mxhook drain` (or SIGUSR1 sent with kill) makes the daemon take no more mail (421 4.3.2,
// /readyz 503, mxhook_draining 1), finish a message in DATA, try every queued message at
// once whatever its back-off, and the command waits until the spool is empty or
// DRAIN_TIMEOUT_MS passes. Then `mxhook spool adopt <dir>` moves what another replica left
// (pending, interrupted, dead, and the leftovers of an adopt cut short) into this spool,
// keeping ids, bytes and retry schedule, without a message reaching the webhook twice even
// while the other daemon still runs. Two spools on different filesystems (adopt copies
// instead of linking) cannot be arranged here and are not tested.

#include "harness/fixture.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <map>
#include <memory>
#include <regex>
#include <sstream>
#include <string>
#include <system_error>
#include <vector>

namespace itest {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

bool contains(const std::string& haystack, const std::string& needle) {
    return haystack.find(needle) != std::string::npos;
}

// --- `mxhook <args>` as a process of its own -------------------------------------------------------

struct ToolResult {
    int code = -1;          // exit code; -1 when killed or timed out
    bool timed_out = false;
    std::string out;
    std::string err;
    std::string command;

    std::string describe() const {
        std::ostringstream s;
        s << "`" << command << "` -> " << (timed_out ? std::string("TIMED OUT (killed)") : "exit " + std::to_string(code))
          << "\n--- stdout ---\n" << out.substr(0, 4000) << "\n--- stderr ---\n" << err.substr(0, 4000)
          << "\n--------------";
        return s.str();
    }
};
std::ostream& operator<<(std::ostream& out, const ToolResult& r) { return out << r.describe(); }

// `mxhook <args...>` started with exactly `env`, stdout and stderr into files under `dir`,
// running while the test goes on (a drain waits; the test meanwhile probes the daemon).
// finish() is bounded; a run still going at destruction is killed by its PID.
class ToolRun {
public:
    ToolRun(const std::vector<std::string>& args, const Env& env, const fs::path& dir) {
        static std::atomic<int> serial{0};
        const std::string stem = "tool-" + std::to_string(++serial);
        out_path_ = dir / (stem + ".out");
        err_path_ = dir / (stem + ".err");
        command_ = "mxhook";
        std::vector<std::string> argv{mxhook_binary()};
        for (const auto& a : args) {
            argv.push_back(a);
            command_ += " " + a;
        }
        ExecArgs exec(std::move(argv), env);
        const int out_fd = ::open(out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        const int err_fd = ::open(err_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (out_fd < 0 || err_fd < 0) throw std::system_error(errno, std::generic_category(), "open tool output");
        const pid_t parent = ::getpid();
        pid_ = ::fork();
        if (pid_ < 0) throw std::system_error(errno, std::generic_category(), "fork");
        if (pid_ == 0) exec_child(parent, out_fd, err_fd, exec.argv(), exec.envp());
        ::close(out_fd);
        ::close(err_fd);
    }
    ~ToolRun() {
        if (pid_ > 0) {
            ::kill(pid_, SIGKILL);
            int status = 0;
            while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
            }
        }
    }
    ToolRun(const ToolRun&) = delete;
    ToolRun& operator=(const ToolRun&) = delete;

    // What it printed on stdout so far.
    std::string out_so_far() const {
        try {
            return read_file(out_path_);
        } catch (const std::exception&) {
            return {};
        }
    }

    ToolResult finish(std::chrono::milliseconds timeout = 30s) {
        ToolResult result;
        result.command = command_;
        int status = 0;
        const bool exited = pid_ > 0 && wait_until(
                                            [&] {
                                                const pid_t r = ::waitpid(pid_, &status, WNOHANG);
                                                return r == pid_ || (r < 0 && errno != EINTR);
                                            },
                                            timeout, 10ms);
        if (exited) {
            pid_ = -1;
            if (WIFEXITED(status)) result.code = WEXITSTATUS(status);
        } else {
            result.timed_out = true;
        }
        try {
            result.out = read_file(out_path_);
            result.err = read_file(err_path_);
        } catch (const std::exception&) {
        }
        return result;
    }

private:
    pid_t pid_ = -1;
    fs::path out_path_;
    fs::path err_path_;
    std::string command_;
};

// Non-empty lines of a text.
std::vector<std::string> lines_of(const std::string& text) {
    std::vector<std::string> out;
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
        if (!line.empty()) out.push_back(line);
    }
    return out;
}

// Bytes of an item's two files, to show an adopted item is the same item.
struct ItemBytes {
    std::string message;
    std::string meta;
};
ItemBytes item_bytes(const fs::path& item_dir) {
    return {read_file(item_dir / "message.eml"), read_file(item_dir / "meta.json")};
}

// Spool items (not ".delivered" leftovers, not dot-names) in a state directory.
std::vector<std::string> items_in(const fs::path& state_dir) {
    std::vector<std::string> ids;
    for (auto& name : list_dir(state_dir)) {
        if (!name.ends_with(".delivered") && !name.starts_with(".")) ids.push_back(std::move(name));
    }
    return ids;
}

// --- the fixture -----------------------------------------------------------------------------------

class DrainTest : public IntegrationTest {
protected:
    void TearDown() override {
        release_->store(true);  // a webhook answer held back must not outlive the test
        IntegrationTest::TearDown();
    }

    // The webhook: a subject starting "slow" is held until release_ (at most 20 s); then,
    // at /old (the other replica's URL) 200 once old_ok_, at /hook 200 once accept_; 406
    // for a subject starting "dead"; 500 otherwise.
    void program_webhook() {
        hook_.respond_with([accept = accept_, old_ok = old_ok_, release = release_](const WebhookRequest& r) {
            const std::string subject = r.field("subject");
            if (subject.starts_with("slow")) {
                wait_until([&] { return release->load(); }, 20s, 10ms);
            }
            if (subject.starts_with("dead")) return 406u;
            if (r.target == "/old") return old_ok->load() ? 200u : 500u;
            return accept->load() ? 200u : 500u;
        });
    }

    // start_daemon() with METRICS_LISTEN on a port of its own.
    bool start_with_metrics(Env overrides = {}) {
        const unsigned short smtp = free_port();
        do metrics_port_ = free_port();
        while (metrics_port_ == smtp);
        overrides["SMTP_LISTEN"] = "127.0.0.1:" + std::to_string(smtp);
        overrides["METRICS_LISTEN"] = "127.0.0.1:" + std::to_string(metrics_port_);
        return start_daemon(overrides);
    }

    std::string readyz() { return http_get(metrics_port_, "/readyz"); }
    double metric(const std::string& series) { return sample_value(http_get(metrics_port_, "/metrics"), series); }

    // `mxhook drain` with the environment of `d` (the daemon's own, as in its container),
    // plus `extra`; waits for it.
    ToolResult drain(Daemon& d, const Env& extra = {}, std::chrono::milliseconds timeout = 30s) {
        ToolRun run({"drain"}, with_overrides(d.env(), extra), tmp_.path());
        return run.finish(timeout);
    }
    // `mxhook spool adopt <args>` on this replica's spool (SPOOL_DIR and PATH only).
    ToolResult adopt(const std::vector<std::string>& operands) {
        std::vector<std::string> args{"spool", "adopt"};
        args.insert(args.end(), operands.begin(), operands.end());
        ToolRun run(args, {{"SPOOL_DIR", spool_dir().string()}, {"PATH", "/usr/local/bin:/usr/bin:/bin"}},
                    tmp_.path());
        return run.finish(30s);
    }

    // Requests the webhook answered 200 for `id`.
    std::size_t delivered(const std::string& id) const {
        std::size_t n = 0;
        for (const auto& r : hook_.requests()) {
            if (r.id() == id && r.status == 200) ++n;
        }
        return n;
    }

    // Sends a message (to the current daemon) that its webhook refuses and waits until it
    // rests in `state_dir` (pending/ of that spool) after its first attempt.
    std::string send_refused(const std::string& subject, const fs::path& pending) {
        const std::string id = send_one(simple_message(subject, "Body of " + subject + ".\r\n"));
        if (id.empty()) return id;
        const bool rests = wait_until(
            [&] {
                const auto meta = read_meta(pending / id);
                return meta && (*meta)["attempts"].is_number_integer() && (*meta)["attempts"].get<int>() >= 1;
            },
            10s);
        if (!rests) ADD_FAILURE() << id << " never rested in " << pending << " after a refused attempt";
        return rests ? id : std::string();
    }
    // Sends a message answered 406 and waits until it is in `dead` with its lastError.
    std::string send_dead(const std::string& subject, const fs::path& dead) {
        const std::string id = send_one(simple_message(subject));
        if (id.empty()) return id;
        const bool there = wait_until(
            [&] {
                const auto meta = read_meta(dead / id);
                return meta && meta->contains("lastError");
            },
            10s);
        if (!there) ADD_FAILURE() << id << " never reached " << dead;
        return there ? id : std::string();
    }

    static void make_spool(const fs::path& root) {
        for (const char* state : {"tmp", "pending", "processing", "dead"}) fs::create_directories(root / state);
    }
    // A spool item written by the test (due now, no attempt yet).
    static void put_item(const fs::path& state_dir, const std::string& id, const std::string& subject) {
        write_file(state_dir / id / "message.eml", simple_message(subject, "Body of " + subject + ".\r\n"));
        write_file(state_dir / id / "meta.json", spool_item_meta(id, subject).dump(2) + "\n");
    }

    fs::path other_spool() const { return tmp_.path() / "other-spool"; }

    unsigned short metrics_port_ = 0;
    std::shared_ptr<std::atomic<bool>> accept_ = std::make_shared<std::atomic<bool>>(true);
    std::shared_ptr<std::atomic<bool>> old_ok_ = std::make_shared<std::atomic<bool>>(false);
    std::shared_ptr<std::atomic<bool>> release_ = std::make_shared<std::atomic<bool>>(false);
};

const std::regex kDrainedAfter(R"(drain: done after (\d+) ms: nothing left to deliver)");
const std::regex kDoneIn(R"(drain: done in (\d+) ms: nothing left to deliver)");

// --- mxhook drain ------------------------------------------------------------------------------------

TEST_F(DrainTest, DrainRetriesBackedOffMailAtOnceAndExitsZeroOnceTheSpoolIsEmpty) {
    program_webhook();
    accept_->store(false);
    // A retry ten minutes away: only the drain can bring these messages out in time.
    ASSERT_TRUE(start_with_metrics({{"RETRY_INTERVAL_MS", "600000"}, {"RETRY_MAX_INTERVAL_MS", "600000"}}));
    Daemon& d = daemon();
    const std::string dead = send_dead("dead letter", dead_dir());
    ASSERT_FALSE(dead.empty());
    std::vector<std::string> ids;
    for (int i = 0; i < 3; ++i) ids.push_back(send_refused("later " + std::to_string(i), pending_dir()));
    const auto now_ms = iso_ms(iso_time(std::chrono::system_clock::now()));
    for (const auto& id : ids) {
        ASSERT_FALSE(id.empty());
        const auto meta = read_meta(pending_dir() / id);
        ASSERT_TRUE(meta.has_value());
        EXPECT_GT(iso_ms((*meta)["nextAttemptAt"].get<std::string>()), now_ms + 500000) << meta->dump();
    }
    accept_->store(true);  // the webhook is back; the daemon would not notice for ten minutes

    const ToolResult r = drain(d, {{"DRAIN_TIMEOUT_MS", "20000"}});
    EXPECT_EQ(r.code, 0) << r;
    EXPECT_TRUE(contains(r.out, "drain: asked mxhook (pid " + std::to_string(d.pid()) + ")")) << r;
    std::smatch m;
    ASSERT_TRUE(std::regex_search(r.out, m, kDrainedAfter)) << r;
    EXPECT_LT(std::stol(m[1].str()), 10000) << r;
    // The dead letter is mentioned, and does not make the drain fail.
    EXPECT_TRUE(contains(r.out, "1 dead letter(s) stay in dead/")) << r;

    for (const auto& id : ids) {
        EXPECT_EQ(requests_for(id), 2u) << id << ": refused once, then once more at the drain";
        EXPECT_EQ(delivered(id), 1u) << id;
    }
    EXPECT_EQ(requests_for(dead), 1u) << "a dead letter is not retried by a drain";
    EXPECT_TRUE(items_in(pending_dir()).empty());
    EXPECT_TRUE(items_in(processing_dir()).empty());
    EXPECT_EQ(items_in(dead_dir()), std::vector<std::string>{dead});

    EXPECT_TRUE(log_shows(d, "received SIGUSR1: draining")) << d.log();
    EXPECT_TRUE(wait_until([&] { return std::regex_search(d.log(), kDoneIn); }, 10s)) << d.log();
    // Still running, not ready, and stops as usual.
    EXPECT_TRUE(d.running());
    EXPECT_EQ(readyz(), "not ready: draining\n");
    stop_daemon();
}

TEST_F(DrainTest, DrainingReplicaIsNotReadyRefusesNewMailAndReportsWhatIsLeftWhenTimeRunsOut) {
    program_webhook();
    accept_->store(false);
    ASSERT_TRUE(start_with_metrics(
        {{"RETRY_INTERVAL_MS", "600000"}, {"RETRY_MAX_INTERVAL_MS", "600000"}, {"DRAIN_TIMEOUT_MS", "2000"}}));
    Daemon& d = daemon();
    ASSERT_TRUE(wait_until([&] { return readyz() == "ready\n"; }, 5s)) << readyz();
    EXPECT_EQ(metric("mxhook_draining"), 0.0);
    const std::string id = send_refused("stuck", pending_dir());
    ASSERT_FALSE(id.empty());
    ASSERT_EQ(requests_for(id), 1u);

    ToolRun run({"drain"}, d.env(), tmp_.path());
    // At once: out of rotation, and new mail is turned away.
    EXPECT_TRUE(wait_until([&] { return readyz() == "not ready: draining\n"; }, 2s)) << readyz();
    EXPECT_EQ(metric("mxhook_draining"), 1.0);
    EXPECT_EQ(metric("mxhook_ready"), 0.0);
    {
        SmtpClient late(d.smtp_port());
        ASSERT_TRUE(late.connected()) << late.connect_error();
        const Reply greeting = late.greeting();
        EXPECT_EQ(greeting.code, 421) << greeting;
        EXPECT_TRUE(contains(greeting.text(), "4.3.2")) << greeting;
        EXPECT_TRUE(late.wait_closed());
    }
    EXPECT_TRUE(wait_until([&] { return metric(R"(mxhook_smtp_connections_refused_total{reason="draining"})") == 1.0; },
                           5s))
        << http_get(metrics_port_, "/metrics");
    // The stuck message got one more attempt right away, not in ten minutes.
    EXPECT_TRUE(wait_until([&] { return requests_for(id) >= 2; }, 3s)) << requests_for(id);

    const ToolResult r = run.finish(15s);
    EXPECT_EQ(r.code, 1) << r;
    EXPECT_TRUE(contains(r.out, "drain: DRAIN_TIMEOUT_MS=2000 passed: 1 message(s) left to deliver (1 pending, 0 in "
                                "flight, 0 being received;"))
        << r;
    EXPECT_TRUE(log_shows(d, "drain: DRAIN_TIMEOUT_MS=2000 passed")) << d.log();
    EXPECT_EQ(items_in(pending_dir()), std::vector<std::string>{id}) << "what is left stays in the spool";
    EXPECT_EQ(requests_for(id), 2u) << "one attempt per drain request";

    // The webhook is fixed: a second drain gives the message one more attempt at once.
    accept_->store(true);
    const ToolResult again = drain(d, {{"DRAIN_TIMEOUT_MS", "20000"}});
    EXPECT_EQ(again.code, 0) << again;
    EXPECT_TRUE(std::regex_search(again.out, kDrainedAfter)) << again;
    EXPECT_EQ(requests_for(id), 3u);
    EXPECT_EQ(delivered(id), 1u);
    EXPECT_TRUE(log_shows(d, "received SIGUSR1: draining again")) << d.log();
    EXPECT_TRUE(wait_until([&] { return std::regex_search(d.log(), kDoneIn); }, 10s)) << d.log();

    EXPECT_TRUE(d.running());
    EXPECT_EQ(readyz(), "not ready: draining\n");
    stop_daemon();
}

TEST_F(DrainTest, SignalSentWithKillDrainsIdleSessionIsClosedAndMessageInDataIsAcceptedAndDelivered) {
    program_webhook();
    ASSERT_TRUE(start_with_metrics());
    Daemon& d = daemon();
    auto idle = connect();
    ASSERT_EQ(idle->ehlo().code, 250);
    auto sending = connect();
    ASSERT_EQ(sending->ehlo().code, 250);
    ASSERT_EQ(sending->cmd("MAIL FROM:<sender@example.org>").code, 250);
    ASSERT_EQ(sending->cmd("RCPT TO:<user@example.com>").code, 250);
    ASSERT_EQ(sending->cmd("DATA").code, 354);
    const std::string message = simple_message("in flight", "First half,\r\nsecond half.\r\n");
    const std::string wire = encode_data(message);
    const std::size_t half = wire.size() / 2;
    ASSERT_TRUE(sending->send_raw(wire.substr(0, half)));

    d.signal(SIGUSR1);  // no command: the signal alone
    ASSERT_TRUE(log_shows(d, "received SIGUSR1: draining")) << d.log();

    // The idle session is told at once, without sending anything.
    const Reply told = idle->read_reply();
    EXPECT_EQ(told.code, 421) << told;
    EXPECT_TRUE(contains(told.text(), "4.3.2")) << told;
    EXPECT_TRUE(idle->wait_closed());
    EXPECT_EQ(readyz(), "not ready: draining\n");

    // The message in DATA is finished and acknowledged: a 250 is never taken back.
    ASSERT_TRUE(sending->send_raw(wire.substr(half)));
    const Reply queued = sending->read_reply();
    ASSERT_EQ(queued.code, 250) << queued;
    const std::string id = queued_id(queued);
    ASSERT_TRUE(is_spool_id(id)) << queued;
    // ...after which the session is over.
    const Reply after = sending->cmd("NOOP");
    EXPECT_TRUE(after.code == 421 || after.code == 0) << after;
    EXPECT_TRUE(sending->wait_closed());

    const auto request = request_for(id);
    ASSERT_TRUE(request.has_value()) << "the message acknowledged during the drain was never delivered";
    const auto split = split_received(request->field("body-mime"));
    ASSERT_TRUE(split.has_value());
    EXPECT_EQ(split->rest, with_final_crlf(message)) << first_difference(with_final_crlf(message), split->rest);
    EXPECT_TRUE(wait_until([&] { return std::regex_search(d.log(), kDoneIn); }, 10s)) << d.log();
    stop_daemon();
}

// The command must not report the replica empty while a client is still sending a message
// the daemon is about to acknowledge: the operator (a preStop hook) stops the replica on
// its word, and the 250 that follows would leave mail behind in a spool nobody delivers.
TEST_F(DrainTest, DrainCommandWaitsForAMessageStillInData) {
    program_webhook();
    ASSERT_TRUE(start_with_metrics());
    Daemon& d = daemon();
    auto sending = connect();
    ASSERT_EQ(sending->ehlo().code, 250);
    ASSERT_EQ(sending->cmd("MAIL FROM:<sender@example.org>").code, 250);
    ASSERT_EQ(sending->cmd("RCPT TO:<user@example.com>").code, 250);
    ASSERT_EQ(sending->cmd("DATA").code, 354);
    const std::string wire = encode_data(simple_message("still in DATA"));
    const std::size_t half = wire.size() / 2;
    ASSERT_TRUE(sending->send_raw(wire.substr(0, half)));

    ToolRun run({"drain"}, with_overrides(d.env(), {{"DRAIN_TIMEOUT_MS", "20000"}}), tmp_.path());
    ASSERT_TRUE(log_shows(d, "received SIGUSR1: draining")) << d.log();
    // It counts the spool every 200 ms: two seconds are ten looks at it.
    const bool said_empty = wait_until([&] { return contains(run.out_so_far(), "nothing left to deliver"); }, 2s, 50ms);
    EXPECT_FALSE(said_empty) << "`mxhook drain` reported the replica empty while a message was still in DATA:\n"
                             << run.out_so_far();

    ASSERT_TRUE(sending->send_raw(wire.substr(half)));
    const Reply queued = sending->read_reply();
    ASSERT_EQ(queued.code, 250) << queued;
    const std::string id = queued_id(queued);
    const ToolResult r = run.finish(30s);
    EXPECT_EQ(r.code, 0) << r;
    // The draining daemon delivers it (it keeps running), whatever the command said.
    const auto request = request_for(id);
    ASSERT_TRUE(request.has_value()) << "the message acknowledged during the drain was never delivered";
    EXPECT_EQ(request->status, 200u);
    EXPECT_TRUE(wait_until([&] { return std::regex_search(d.log(), kDoneIn); }, 10s)) << d.log();
    stop_daemon();
}

TEST_F(DrainTest, WithoutADaemonDrainSaysSoAndFailsOnlyWhenMailIsLeft) {
    program_webhook();
    ASSERT_TRUE(start_daemon());
    const Env env = daemon().env();
    stop_daemon();  // its .lock stays, naming a pid that is gone
    ASSERT_TRUE(fs::exists(spool_dir() / ".lock"));

    const std::string none = "drain: no mxhook runs on " + spool_dir().string() + "; ";
    {
        ToolRun run({"drain"}, env, tmp_.path());
        const ToolResult r = run.finish(10s);
        EXPECT_EQ(r.code, 0) << r;
        EXPECT_TRUE(contains(r.out, none + "nothing left to deliver")) << r;
    }
    put_item(pending_dir(), new_spool_id(), "left behind");
    {
        ToolRun run({"drain"}, env, tmp_.path());
        const ToolResult r = run.finish(10s);
        EXPECT_EQ(r.code, 1) << r;
        EXPECT_TRUE(contains(r.out, none + "1 message(s) left to deliver (1 pending")) << r;
    }
}

TEST_F(DrainTest, BadDrainTimeoutIsAConfigurationErrorAndSignalsNothing) {
    program_webhook();
    ASSERT_TRUE(start_with_metrics());
    Daemon& d = daemon();
    for (const std::string value : {"0", "abc", "-5", "10s"}) {
        SCOPED_TRACE("DRAIN_TIMEOUT_MS=" + value);
        const ToolResult r = drain(d, {{"DRAIN_TIMEOUT_MS", value}}, 10s);
        EXPECT_EQ(r.code, 2) << r;
        const auto lines = lines_of(r.err);
        ASSERT_EQ(lines.size(), 1u) << r;
        EXPECT_TRUE(contains(lines.front(), "DRAIN_TIMEOUT_MS")) << r;
        EXPECT_TRUE(r.out.empty()) << r;
    }
    EXPECT_FALSE(contains(d.log(), "SIGUSR1")) << d.log();
    EXPECT_EQ(readyz(), "ready\n");
    stop_daemon();
}

// Behind a load balancer (SMTP_PROXY_PROTOCOL_FROM): a connection that comes through it
// after the drain began, and one still sending its PROXY header when it began, are both
// answered 421 4.3.2 (so the balancer's health check takes the replica out of rotation).
TEST_F(DrainTest, ConnectionsThroughTheBalancerAreRefusedWhileDraining) {
    program_webhook();
    const unsigned short smtp = free_port();
    do metrics_port_ = free_port();
    while (metrics_port_ == smtp);
    Env env = base_env(smtp);
    env["SMTP_PROXY_PROTOCOL_FROM"] = "127.0.0.1";
    env["METRICS_LISTEN"] = "127.0.0.1:" + std::to_string(metrics_port_);
    // start_daemon() probes with a bare connection, which a proxied listener does not
    // greet: ready here is /readyz saying so (every SMTP listener up).
    daemons_.push_back(std::make_unique<Daemon>(mxhook_binary(), env, tmp_.path() / "daemon-proxied.log"));
    Daemon& d = daemon();
    d.start();
    ASSERT_TRUE(wait_until([&] { return readyz() == "ready\n" || !d.running(); }, 10s) && d.running()) << d.log();
    // The container's health check behind a balancer: /healthz when METRICS_LISTEN is set,
    // else an SMTP greeting after a PROXY v2 LOCAL header; a bare connection would get none.
    const auto healthcheck = [&](const Env& e) { return ToolRun({"healthcheck"}, e, tmp_.path()).finish(15s); };
    Env without_metrics = env;
    without_metrics.erase("METRICS_LISTEN");
    EXPECT_EQ(healthcheck(env).code, 0) << healthcheck(env);
    EXPECT_EQ(healthcheck(without_metrics).code, 0) << healthcheck(without_metrics);
    const std::string header = "PROXY TCP4 203.0.113.9 127.0.0.1 40000 25\r\n";
    {
        SmtpClient before(smtp);
        ASSERT_TRUE(before.send_raw(header));
        EXPECT_EQ(before.greeting().code, 220);
    }
    SmtpClient midway(smtp);
    ASSERT_TRUE(midway.send_raw(header.substr(0, 12)));

    d.signal(SIGUSR1);
    ASSERT_TRUE(log_shows(d, "received SIGUSR1: draining")) << d.log();
    ASSERT_TRUE(midway.send_raw(header.substr(12)));
    const Reply told = midway.greeting();
    EXPECT_EQ(told.code, 421) << told;
    EXPECT_TRUE(contains(told.text(), "4.3.2")) << told;
    EXPECT_TRUE(midway.wait_closed());

    SmtpClient after(smtp);
    ASSERT_TRUE(after.send_raw(header));
    const Reply refused = after.greeting();
    EXPECT_EQ(refused.code, 421) << refused;
    EXPECT_TRUE(contains(refused.text(), "4.3.2")) << refused;
    EXPECT_TRUE(after.wait_closed());
    EXPECT_TRUE(wait_until([&] { return metric(R"(mxhook_smtp_connections_refused_total{reason="draining"})") == 2.0; },
                           5s))
        << http_get(metrics_port_, "/metrics");
    EXPECT_TRUE(log_shows(d, "smtp client=203.0.113.9 refused: draining")) << d.log();
    // Draining is alive: a restart by the health check would cut the drain short.
    const ToolResult draining = healthcheck(without_metrics);
    EXPECT_EQ(draining.code, 0) << draining;
    EXPECT_TRUE(contains(draining.err, "healthcheck: draining")) << draining;
    stop_daemon();
}

// A spool's .lock held by `mxhook spool adopt <dir>` (which writes "<pid> adopt" in it) is
// not a daemon to drain. In containers every mxhook is pid 1: a drain of the adopted spool
// must not take this replica (the same pid) out of service, nor end the adopt.
TEST_F(DrainTest, DrainOfASpoolLockedByAnAdoptSignalsNoOtherDaemon) {
    program_webhook();
    ASSERT_TRUE(start_with_metrics());
    Daemon& d = daemon();
    const fs::path other = other_spool();
    make_spool(other);
    write_file(other / ".lock", std::to_string(d.pid()) + " adopt\n");  // as a running adopt writes it
    const int fd = ::open((other / ".lock").c_str(), O_RDWR | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::flock(fd, LOCK_EX | LOCK_NB), 0);  // and holds it
    const ToolResult r = drain(d, {{"SPOOL_DIR", other.string()}, {"DRAIN_TIMEOUT_MS", "1000"}}, 10s);
    ::close(fd);
    EXPECT_EQ(r.code, 2) << r;
    EXPECT_TRUE(contains(r.err, "is being adopted by `mxhook spool adopt`")) << r;
    EXPECT_FALSE(contains(r.out, "asked mxhook (pid " + std::to_string(d.pid()) + ")"))
        << "the drain of " << other << " signalled the daemon of " << spool_dir() << ": " << r;
    EXPECT_EQ(readyz(), "ready\n") << "this replica was taken out of service by a drain of another spool";
    EXPECT_FALSE(contains(d.log(), "received SIGUSR1")) << d.log();
    stop_daemon();
}

// --- mxhook spool adopt ----------------------------------------------------------------------------

TEST_F(DrainTest, AdoptMovesPendingInterruptedAndDeadItemsKeepingIdsBytesAndSchedule) {
    program_webhook();
    // The replica that goes away: its webhook refuses, so it leaves pending mail (due a few
    // seconds later) and a dead letter; then it stops, and one item is made to look like an
    // attempt that was in flight when it died.
    const fs::path other = other_spool();
    ASSERT_TRUE(start_daemon({{"SPOOL_DIR", other.string()},
                              {"WEBHOOK_URL", hook_.url("/old")},
                              {"RETRY_INTERVAL_MS", "6000"},
                              {"RETRY_MAX_INTERVAL_MS", "6000"}}));
    const std::string dead = send_dead("dead letter", other / "dead");
    std::vector<std::string> pending;
    for (int i = 0; i < 3; ++i) pending.push_back(send_refused("left " + std::to_string(i), other / "pending"));
    stop_daemon();
    ASSERT_FALSE(dead.empty());
    for (const auto& id : pending) ASSERT_FALSE(id.empty());
    const std::string interrupted = pending.back();
    fs::rename(other / "pending" / interrupted, other / "processing" / interrupted);

    std::map<std::string, ItemBytes> before;
    std::map<std::string, long long> due_ms;
    for (const auto& id : pending) {
        const fs::path dir = other / (id == interrupted ? "processing" : "pending") / id;
        before[id] = item_bytes(dir);
        due_ms[id] = iso_ms(json::parse(before[id].meta)["nextAttemptAt"].get<std::string>());
        ASSERT_GT(due_ms[id], 0) << before[id].meta;
    }
    before[dead] = item_bytes(other / "dead" / dead);

    // This replica runs, and its webhook accepts.
    ASSERT_TRUE(start_daemon({{"RETRY_SCAN_INTERVAL_MS", "200"}}));
    const ToolResult r = adopt({other.string()});
    ASSERT_EQ(r.code, 0) << r;
    const auto adopted_at_ms = iso_ms(iso_time(std::chrono::system_clock::now()));
    for (const auto& id : pending) {
        const std::string was = id == interrupted ? "processing" : "pending";
        EXPECT_TRUE(contains(r.out, "adopted " + id + " (was " + was + ")")) << r;
    }
    EXPECT_TRUE(contains(r.out, "adopted " + dead + " (was dead)")) << r;
    EXPECT_TRUE(contains(r.out, "adopted 4 item(s) from " + other.string() +
                                    ": 2 pending, 1 interrupted in flight, 1 dead"))
        << r;
    EXPECT_TRUE(r.err.empty()) << r;

    // Gone from there...
    for (const char* state : {"pending", "processing", "dead", "adopting", "adopting-dead"}) {
        EXPECT_TRUE(items_in(other / state).empty()) << state << " of the adopted spool";
    }
    // ...here under the same ids, byte for byte (not due yet, so still in pending/).
    for (const auto& id : pending) {
        if (due_ms[id] <= adopted_at_ms + 200) continue;  // a slow machine: it may be on its way already
        ASSERT_TRUE(fs::is_directory(pending_dir() / id)) << id << " is not in this spool's pending/";
        const ItemBytes here = item_bytes(pending_dir() / id);
        EXPECT_EQ(here.message, before[id].message) << first_difference(before[id].message, here.message);
        EXPECT_EQ(here.meta, before[id].meta) << first_difference(before[id].meta, here.meta);
    }
    const ItemBytes dead_here = item_bytes(dead_dir() / dead);
    EXPECT_EQ(dead_here.message, before[dead].message);
    EXPECT_EQ(dead_here.meta, before[dead].meta);

    // This daemon delivers them at its retry scan when they are due, not before, with the
    // ids (X-Mxhook-Id) and the messages the other replica had.
    for (const auto& id : pending) {
        const auto request = [&]() -> std::optional<WebhookRequest> {
            std::optional<WebhookRequest> found;
            wait_until(
                [&] {
                    for (auto& q : hook_.requests()) {
                        if (q.id() == id && q.target == "/hook") found = q;
                    }
                    return found.has_value();
                },
                std::chrono::milliseconds(std::max<long long>(due_ms[id] - adopted_at_ms, 0) + 10000));
            return found;
        }();
        ASSERT_TRUE(request.has_value()) << id << " was never delivered by this replica";
        EXPECT_EQ(request->status, 200u);
        const long long at = std::chrono::duration_cast<std::chrono::milliseconds>(
                                 request->received_at.time_since_epoch())
                                 .count();
        EXPECT_GE(at, due_ms[id] - 50) << id << ": delivered before its nextAttemptAt";
        EXPECT_LE(at, due_ms[id] + 5000) << id << ": not delivered at the scan after its nextAttemptAt";
        EXPECT_EQ(request->field("body-mime"), before[id].message)
            << first_difference(before[id].message, request->field("body-mime"));
    }
    EXPECT_TRUE(spool_drains());
    for (const auto& id : pending) {
        EXPECT_EQ(requests_for(id, "/hook"), 1u) << id;
        EXPECT_EQ(requests_for(id, "/old"), 1u) << id << ": the other replica's one refused attempt";
    }
    EXPECT_EQ(requests_for(dead, "/hook"), 0u) << "a dead letter stays a dead letter";
    EXPECT_TRUE(fs::is_directory(dead_dir() / dead));
    stop_daemon();
}

TEST_F(DrainTest, AdoptWhileTheOtherDaemonRunsTakesItsPendingMailAndNoMessageArrivesTwice) {
    program_webhook();
    const fs::path other = other_spool();
    ASSERT_TRUE(start_daemon({{"SPOOL_DIR", other.string()},
                              {"WEBHOOK_URL", hook_.url("/old")},
                              {"RETRY_INTERVAL_MS", "600000"},
                              {"RETRY_MAX_INTERVAL_MS", "600000"},
                              {"WEBHOOK_TIMEOUT_MS", "30000"}}));
    Daemon& old = daemon();
    std::vector<std::string> ids;
    for (int i = 0; i < 3; ++i) ids.push_back(send_refused("waiting " + std::to_string(i), other / "pending"));
    for (const auto& id : ids) ASSERT_FALSE(id.empty());
    // One delivery held in flight by the webhook: the running daemon's own.
    const std::string slow = send_one(simple_message("slow one"));
    ASSERT_FALSE(slow.empty());
    ASSERT_TRUE(wait_until([&] { return fs::is_directory(other / "processing" / slow); }, 10s));
    std::map<std::string, std::string> first_body;
    for (const auto& q : hook_.requests()) first_body[q.id()] = q.field("body-mime");

    ASSERT_TRUE(start_daemon());
    Daemon& mine = daemon();
    const ToolResult r = adopt({other.string()});
    EXPECT_EQ(r.code, 1) << "an item left in flight there is reported: " << r;
    for (const auto& id : ids) EXPECT_TRUE(contains(r.out, "adopted " + id + " (was pending)")) << r;
    EXPECT_FALSE(contains(r.out, "adopted " + slow)) << r;
    EXPECT_TRUE(contains(r.out, "adopted 3 item(s) from " + other.string() + ": 3 pending, 0 interrupted in flight, 0 dead"))
        << r;
    EXPECT_TRUE(contains(r.out, "left 1 item(s) in " + (other / "processing").string())) << r;
    EXPECT_TRUE(items_in(other / "pending").empty());
    EXPECT_EQ(items_in(other / "processing"), std::vector<std::string>{slow});

    // The old replica's webhook answers again, and it is asked to try everything it has now:
    // it finishes its own delivery, and has nothing else.
    old_ok_->store(true);
    release_->store(true);
    old.signal(SIGUSR1);
    ASSERT_TRUE(wait_until([&] { return std::regex_search(old.log(), kDoneIn); }, 15s)) << old.log();
    EXPECT_EQ(delivered(slow), 1u);
    // This replica delivers what it adopted (a drain here too, as their retry is ten minutes off).
    mine.signal(SIGUSR1);
    EXPECT_TRUE(wait_until([&] { return std::regex_search(mine.log(), kDoneIn); }, 15s)) << mine.log();
    for (const auto& id : ids) {
        EXPECT_EQ(requests_for(id, "/old"), 1u) << id << ": the old replica tried it once before the adopt, never after";
        EXPECT_EQ(requests_for(id, "/hook"), 1u) << id;
        EXPECT_EQ(delivered(id), 1u) << id << " must reach the webhook exactly once";
        const auto request = request_for(id);
        ASSERT_TRUE(request.has_value());
        EXPECT_EQ(request->field("body-mime"), first_body[id]) << "the same message under the same X-Mxhook-Id";
    }
    EXPECT_EQ(requests_for(slow, "/hook"), 0u);
    EXPECT_TRUE(items_in(other / "processing").empty());
    EXPECT_TRUE(items_in(pending_dir()).empty());

    // With nothing in flight there any more, a second run has nothing to do and succeeds.
    const ToolResult again = adopt({other.string()});
    EXPECT_EQ(again.code, 0) << again;
    EXPECT_TRUE(contains(again.out, "adopted 0 item(s)")) << again;
}

TEST_F(DrainTest, AdoptFinishesARunCutShortWithoutDuplicatingAnItemAlreadyHere) {
    program_webhook();
    const fs::path other = other_spool();
    make_spool(spool_dir());
    make_spool(other);
    // What an adopt killed half-way leaves: an item taken into <dir>/adopting/ but not
    // imported yet, and one imported here whose copy there was not removed yet.
    const std::string staged = new_spool_id();
    const std::string twice = new_spool_id();
    put_item(other / "adopting", staged, "staged");
    put_item(pending_dir(), twice, "imported");
    fs::create_directories(other / "adopting" / twice);
    fs::copy(pending_dir() / twice, other / "adopting" / twice, fs::copy_options::recursive);
    const ItemBytes staged_before = item_bytes(other / "adopting" / staged);
    const ItemBytes twice_before = item_bytes(pending_dir() / twice);

    const ToolResult r = adopt({other.string()});
    EXPECT_EQ(r.code, 0) << r;
    EXPECT_TRUE(contains(r.out, "adopted " + staged)) << r;
    EXPECT_TRUE(contains(r.out, "adopted 1 item(s) from " + other.string())) << r;
    EXPECT_TRUE(contains(r.out, "1 already here")) << r;
    // Its copy there was removed, not adopted: no line may say it was.
    EXPECT_FALSE(contains(r.out, "adopted " + twice)) << "an id already here is reported as adopted: " << r;
    EXPECT_TRUE(items_in(other / "adopting").empty());
    ASSERT_TRUE(fs::is_directory(pending_dir() / staged));
    EXPECT_EQ(item_bytes(pending_dir() / staged).message, staged_before.message);
    EXPECT_EQ(item_bytes(pending_dir() / staged).meta, staged_before.meta);
    EXPECT_EQ(item_bytes(pending_dir() / twice).meta, twice_before.meta);
    EXPECT_EQ(items_in(pending_dir()).size(), 2u);

    // Each is delivered once.
    ASSERT_TRUE(start_daemon());
    ASSERT_TRUE(request_for(staged).has_value());
    ASSERT_TRUE(request_for(twice).has_value());
    EXPECT_TRUE(spool_drains());
    EXPECT_EQ(requests_for(staged), 1u);
    EXPECT_EQ(requests_for(twice), 1u);
    stop_daemon();
}

TEST_F(DrainTest, AdoptRefusesItsOwnSpoolWhatIsNotASpoolAndAMissingOperand) {
    make_spool(spool_dir());
    const std::string id = new_spool_id();
    put_item(pending_dir(), id, "mine");
    fs::create_directories(tmp_.path() / "empty");
    fs::create_symlink(spool_dir(), tmp_.path() / "alias");

    for (const fs::path& own : {spool_dir(), spool_dir() / ".", tmp_.path() / "alias"}) {
        const ToolResult r = adopt({own.string()});
        EXPECT_EQ(r.code, 2) << r;
        EXPECT_TRUE(contains(r.err, "is this replica's own spool")) << r;
    }
    for (const fs::path& nothing : {tmp_.path() / "empty", tmp_.path() / "missing"}) {
        const ToolResult r = adopt({nothing.string()});
        EXPECT_EQ(r.code, 2) << r;
        EXPECT_TRUE(contains(r.err, "no spool at")) << r;
    }
    for (const auto& operands : {std::vector<std::string>{}, std::vector<std::string>{"a", "b"}}) {
        const ToolResult r = adopt(operands);
        EXPECT_EQ(r.code, 2) << r;
        EXPECT_TRUE(contains(r.err, "usage: mxhook spool")) << r;
    }
    // Nothing moved, nothing staged in this spool.
    EXPECT_EQ(items_in(pending_dir()), std::vector<std::string>{id});
    EXPECT_FALSE(fs::exists(spool_dir() / "adopting"));
    EXPECT_FALSE(fs::exists(tmp_.path() / "empty" / "adopting"));
}

// Two adopts of one spool would both take its adopting/ leftovers: the second is refused
// (the first is played here by a lock the test holds, as a running adopt holds it).
TEST_F(DrainTest, AdoptRefusesWhileAnotherAdoptOfTheSameSpoolRuns) {
    const fs::path other = other_spool();
    make_spool(spool_dir());
    make_spool(other);
    const std::string id = new_spool_id();
    put_item(other / "pending", id, "waiting");
    const int fd = ::open((other / ".adopt.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::flock(fd, LOCK_EX | LOCK_NB), 0);
    const ToolResult busy = adopt({other.string()});
    ::close(fd);
    EXPECT_EQ(busy.code, 2) << busy;
    EXPECT_TRUE(contains(busy.err, "another `mxhook spool adopt` of " + other.string() + " is running")) << busy;
    EXPECT_EQ(items_in(other / "pending"), std::vector<std::string>{id});

    const ToolResult r = adopt({other.string()});
    EXPECT_EQ(r.code, 0) << r;
    EXPECT_TRUE(contains(r.out, "adopted " + id + " (was pending)")) << r;
    EXPECT_EQ(items_in(pending_dir()), std::vector<std::string>{id});
}

}  // namespace
}  // namespace itest
