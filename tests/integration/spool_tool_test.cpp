// `mxhook spool ...`: the operator's command for the spool (stats, list, show, requeue,
// purge), run as its own process with a clean environment against a spool the real daemon
// wrote, with and without the daemon running. Exit codes as documented for scripts: 0
// success, 1 some item could not be handled, 2 usage or spool configuration error, 3 purge
// without --yes.

#include "harness/fixture.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <system_error>
#include <vector>

namespace itest {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// --- running the command ---------------------------------------------------------------------

struct RunResult {
    int code = -1;           // exit code; -1 when killed by a signal or timed out
    int signal = 0;          // terminating signal, if any
    bool timed_out = false;  // killed (SIGKILL) because it outlived the timeout
    std::string out;
    std::string err;
    std::string command;     // for messages

    std::string describe() const {
        std::ostringstream s;
        s << "`" << command << "` -> ";
        if (timed_out) s << "TIMED OUT (killed)";
        else if (signal != 0) s << "killed by signal " << signal;
        else s << "exit " << code;
        s << "\n--- stdout ---\n" << out.substr(0, 4000) << "\n--- stderr ---\n" << err.substr(0, 4000)
          << "\n--------------";
        return s.str();
    }
};

std::ostream& operator<<(std::ostream& out, const RunResult& r) { return out << r.describe(); }

// Runs `mxhook <args...>` with exactly `env` as its environment, stdin from /dev/null, and
// stdout and stderr captured through pipes. Bounded: past `timeout` the child is killed by
// its PID.
RunResult run_tool(const std::vector<std::string>& args, const Env& env, std::chrono::milliseconds timeout = 15s) {
    RunResult result;
    result.command = "mxhook";
    for (const auto& a : args) result.command += " " + a;

    std::vector<std::string> argv{mxhook_binary()};
    argv.insert(argv.end(), args.begin(), args.end());
    ExecArgs exec(std::move(argv), env);

    int out_pipe[2];
    int err_pipe[2];
    if (::pipe2(out_pipe, O_CLOEXEC) != 0) throw std::system_error(errno, std::generic_category(), "pipe2");
    if (::pipe2(err_pipe, O_CLOEXEC) != 0) {
        ::close(out_pipe[0]);
        ::close(out_pipe[1]);
        throw std::system_error(errno, std::generic_category(), "pipe2");
    }
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0) throw std::system_error(errno, std::generic_category(), "fork");
    if (pid == 0) exec_child(parent, out_pipe[1], err_pipe[1], exec.argv(), exec.envp());
    ::close(out_pipe[1]);
    ::close(err_pipe[1]);

    const auto deadline = Clock::now() + timeout;
    pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
    std::string* sinks[2] = {&result.out, &result.err};
    int open_count = 2;
    while (open_count > 0) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
        if (left <= 0) {
            result.timed_out = true;
            break;
        }
        const int n = ::poll(fds, 2, static_cast<int>(std::min<long long>(left, 100)));
        if (n < 0) {
            if (errno == EINTR) continue;
            break;
        }
        for (int i = 0; i < 2; ++i) {
            if (fds[i].fd < 0 || fds[i].revents == 0) continue;
            char buf[8192];
            const ssize_t got = ::read(fds[i].fd, buf, sizeof buf);
            if (got > 0) {
                sinks[i]->append(buf, static_cast<std::size_t>(got));
            } else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
                ::close(fds[i].fd);
                fds[i].fd = -1;
                --open_count;
            }
        }
    }
    for (auto& f : fds) {
        if (f.fd >= 0) ::close(f.fd);
    }

    int status = 0;
    bool reaped = false;
    while (!result.timed_out) {
        const pid_t r = ::waitpid(pid, &status, WNOHANG);
        if (r == pid) {
            reaped = true;
            break;
        }
        if (r < 0 && errno != EINTR) break;
        if (Clock::now() >= deadline) {
            result.timed_out = true;
            break;
        }
        ::usleep(5000);
    }
    if (!reaped) {
        ::kill(pid, SIGKILL);
        while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
    }
    if (!result.timed_out) {
        if (WIFEXITED(status)) result.code = WEXITSTATUS(status);
        else if (WIFSIGNALED(status)) result.signal = WTERMSIG(status);
    }
    return result;
}

// --- parsing what it prints ------------------------------------------------------------------

std::vector<std::string> lines_of(const std::string& text) {
    std::vector<std::string> out;
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        out.push_back(line);
    }
    return out;
}

std::vector<std::string> split(const std::string& text, char sep) {
    std::vector<std::string> out;
    std::size_t start = 0;
    while (true) {
        const auto pos = text.find(sep, start);
        if (pos == std::string::npos) {
            out.push_back(text.substr(start));
            return out;
        }
        out.push_back(text.substr(start, pos - start));
        start = pos + 1;
    }
}

std::vector<std::string> words(const std::string& text) {
    std::vector<std::string> out;
    std::istringstream in(text);
    std::string w;
    while (in >> w) out.push_back(w);
    return out;
}

bool contains(const std::string& haystack, const std::string& needle) {
    return haystack.find(needle) != std::string::npos;
}

// Non-empty output lines that mention `id` (one per id the command reported).
std::size_t lines_naming(const std::string& text, const std::string& id) {
    std::size_t n = 0;
    for (const auto& line : lines_of(text)) {
        if (contains(line, id)) ++n;
    }
    return n;
}

// The data rows of `list` (the header is the first line): each split on tabs.
std::vector<std::vector<std::string>> list_rows(const std::string& out) {
    std::vector<std::vector<std::string>> rows;
    const auto lines = lines_of(out);
    for (std::size_t i = 1; i < lines.size(); ++i) {
        if (lines[i].empty()) continue;
        rows.push_back(split(lines[i], '\t'));
    }
    return rows;
}

// The row of `list` for `id`; empty when there is none.
std::vector<std::string> row_for(const std::vector<std::vector<std::string>>& rows, const std::string& id) {
    for (const auto& row : rows) {
        if (row.size() > 1 && row[1] == id) return row;
    }
    return {};
}

std::optional<json> parse_json(const std::string& text) {
    try {
        return json::parse(text);
    } catch (const std::exception&) {
        return std::nullopt;
    }
}

// The element of a `list --json` array whose "id" is `id`.
std::optional<json> entry_for(const json& array, const std::string& id) {
    if (!array.is_array()) return std::nullopt;
    for (const auto& e : array) {
        if (e.is_object() && e.contains("id") && e["id"] == id) return e;
    }
    return std::nullopt;
}

const std::regex kIsoTime(R"(^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$)");

bool is_iso_string(const json& value) {
    return value.is_string() && std::regex_match(value.get<std::string>(), kIsoTime);
}

long long now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

// An item id as mxhook names them, but from `age` ago.
std::string aged_id(std::chrono::seconds age) {
    const std::string fresh = new_spool_id();
    const auto dash = fresh.find('-');
    return std::to_string(now_ms() - std::chrono::duration_cast<std::chrono::milliseconds>(age).count()) +
           fresh.substr(dash);
}

// Sum of the sizes of `file` in every item directory of `state_dir` (names not ending in
// ".delivered"); with file empty, of every regular file in them.
std::uint64_t item_bytes(const fs::path& state_dir, const std::string& file = {}) {
    std::uint64_t total = 0;
    for (const auto& name : list_dir(state_dir)) {
        if (name.ends_with(".delivered") || name.starts_with(".")) continue;
        const fs::path dir = state_dir / name;
        if (!fs::is_directory(dir)) continue;
        for (const auto& entry : fs::directory_iterator(dir)) {
            if (!entry.is_regular_file()) continue;
            if (file.empty() || entry.path().filename() == file) total += entry.file_size();
        }
    }
    return total;
}

std::size_t item_count(const fs::path& state_dir) {
    std::size_t n = 0;
    for (const auto& name : list_dir(state_dir)) {
        if (!name.ends_with(".delivered") && !name.starts_with(".") && fs::is_directory(state_dir / name)) ++n;
    }
    return n;
}

// Sets the modification time of a path (and, for a directory, of what is in it) to `age` ago.
void age_files(const fs::path& path, std::chrono::seconds age) {
    timeval times[2];
    ::gettimeofday(&times[0], nullptr);
    times[0].tv_sec -= static_cast<time_t>(age.count());
    times[1] = times[0];
    if (fs::is_directory(path)) {
        for (const auto& entry : fs::directory_iterator(path)) ::utimes(entry.path().c_str(), times);
    }
    ::utimes(path.c_str(), times);
}

// --- the fixture -----------------------------------------------------------------------------

class SpoolToolTest : public IntegrationTest {
protected:
    void TearDown() override {
        release_->store(true);  // a webhook answer held back must not outlive the test
        IntegrationTest::TearDown();
    }

    // The tool's environment: where the spool is, PATH, and nothing else (no WEBHOOK_URL).
    Env tool_env(const Env& extra = {}) const {
        Env env{{"SPOOL_DIR", spool_dir().string()}, {"PATH", "/usr/local/bin:/usr/bin:/bin"}};
        for (const auto& [key, value] : extra) env[key] = value;
        return env;
    }
    RunResult tool(std::vector<std::string> args, const Env& extra = {}) {
        args.insert(args.begin(), "spool");
        return run_tool(args, tool_env(extra));
    }

    // The webhook: 406 for subjects starting with "dead", 200 once `accept_` is set, 500
    // otherwise. A daemon with a long retry interval, so a message answered 500 rests in
    // pending/ after its first attempt.
    bool start_spool_daemon(const Env& overrides = {}) {
        auto accept = accept_;
        hook_.respond_with([accept](const WebhookRequest& r) {
            if (accept->load()) return 200u;
            return r.field("subject").starts_with("dead") ? 406u : 500u;
        });
        Env env{{"RETRY_INTERVAL_MS", "60000"}, {"RETRY_MAX_INTERVAL_MS", "60000"}};
        for (const auto& [key, value] : overrides) env[key] = value;
        return start_daemon(env);
    }

    // Sends a message with subject "dead..." and waits until the daemon has set it aside in
    // dead/ (meta.json with its lastError written). Its id, or "" with a failure recorded.
    std::string send_dead(const std::string& subject, const std::vector<std::string>& recipients = {"user@example.com"},
                          const std::string& from = "sender@example.org", const std::string& body = "Hello there.\r\n") {
        const std::string id = send_one(simple_message(subject, body), recipients, from);
        if (id.empty()) return id;
        const bool dead = wait_until(
            [&] {
                const auto meta = read_meta(dead_dir() / id);
                return meta && meta->contains("lastError") && (*meta)["lastError"].is_string() &&
                       fs::exists(dead_dir() / id / "message.eml");
            },
            10s);
        if (!dead) {
            ADD_FAILURE() << id << " never reached dead/ with a lastError";
            return {};
        }
        return id;
    }

    // Sends a message answered 500 and waits until it rests in pending/ with attempts >= 1.
    std::string send_pending(const std::string& subject, const std::vector<std::string>& recipients = {"user@example.com"},
                             const std::string& from = "sender@example.org") {
        const std::string id = send_one(simple_message(subject), recipients, from);
        if (id.empty()) return id;
        const bool rests = wait_until(
            [&] {
                const auto meta = read_meta(pending_dir() / id);
                return meta && (*meta)["attempts"].is_number_integer() && (*meta)["attempts"].get<int>() >= 1 &&
                       !fs::exists(processing_dir() / id);
            },
            10s);
        if (!rests) {
            ADD_FAILURE() << id << " never rested in pending/ after a failed attempt";
            return {};
        }
        return id;
    }

    // A spool item written by the test into `state_dir` (an id from `age` ago, createdAt
    // and file times to match); for states and ages the daemon cannot be made to produce
    // quickly.
    std::string put_item(const fs::path& state_dir, std::chrono::seconds age, const std::string& subject,
                         const std::function<void(nlohmann::ordered_json&)>& edit = {}) {
        const std::string id = aged_id(age);
        auto meta = spool_item_meta(id, subject);
        meta["createdAt"] = iso_time(std::chrono::system_clock::now() - age);
        meta["attempts"] = 3;
        meta["lastAttemptAt"] = iso_time(std::chrono::system_clock::now() - age / 2);
        meta["lastError"] = "webhook returned 406";
        if (edit) edit(meta);
        write_file(state_dir / id / "message.eml", "Subject: " + subject + "\r\nFrom: alice@example.org\r\n\r\nbody\r\n");
        write_file(state_dir / id / "meta.json", meta.dump(2) + "\n");
        age_files(state_dir / id, age);
        return id;
    }

    // The four state directories, as the daemon creates them, for tests without a daemon.
    void make_spool() {
        for (const auto& d : {tmp_spool_dir(), pending_dir(), processing_dir(), dead_dir()}) fs::create_directories(d);
    }

    bool wait_requests_for(const std::string& id, std::size_t n, std::chrono::milliseconds timeout = 10s) {
        return wait_until([&] { return requests_for(id) >= n; }, timeout);
    }

    std::shared_ptr<std::atomic<bool>> accept_ = std::make_shared<std::atomic<bool>>(false);
    std::shared_ptr<std::atomic<bool>> release_ = std::make_shared<std::atomic<bool>>(false);
};

// --- stats ---------------------------------------------------------------------------------------

TEST_F(SpoolToolTest, StatsCountsItemsAndBytesPerState) {
    ASSERT_TRUE(start_spool_daemon());
    std::vector<std::string> dead, pending;
    for (int i = 0; i < 2; ++i) dead.push_back(send_dead("dead " + std::to_string(i)));
    for (int i = 0; i < 3; ++i) pending.push_back(send_pending("later " + std::to_string(i)));
    for (const auto& id : dead) ASSERT_FALSE(id.empty());
    for (const auto& id : pending) ASSERT_FALSE(id.empty());
    stop_daemon();  // a graceful stop leaves processing/ empty and nothing moving
    // A delivered item kept for reuse is not mail: not counted.
    const std::string reused = new_spool_id() + ".delivered";
    write_file(tmp_spool_dir() / reused / "message.eml", simple_message());
    write_file(tmp_spool_dir() / reused / "meta.json", spool_item_meta(new_spool_id()).dump());

    ASSERT_EQ(item_count(dead_dir()), 2u);
    ASSERT_EQ(item_count(pending_dir()), 3u);
    ASSERT_EQ(item_count(processing_dir()), 0u);
    const std::size_t tmp_count = tmp_items().size();

    const RunResult js = tool({"stats", "--json"});
    ASSERT_EQ(js.code, 0) << js;
    const auto stats = parse_json(js.out);
    ASSERT_TRUE(stats.has_value() && stats->is_object()) << "stats --json is not a JSON object: " << js;
    const std::map<std::string, std::pair<std::size_t, fs::path>> expected{
        {"tmp", {tmp_count, tmp_spool_dir()}},
        {"pending", {3, pending_dir()}},
        {"processing", {0, processing_dir()}},
        {"dead", {2, dead_dir()}}};
    for (const auto& [state, want] : expected) {
        SCOPED_TRACE("state " + state);
        ASSERT_TRUE(stats->contains(state)) << stats->dump(2);
        const json& s = (*stats)[state];
        ASSERT_TRUE(s.contains("items") && s["items"].is_number_unsigned()) << s.dump();
        ASSERT_TRUE(s.contains("bytes") && s["bytes"].is_number_unsigned()) << s.dump();
        ASSERT_TRUE(s.contains("oldest_age_seconds")) << s.dump();
        EXPECT_EQ(s["items"].get<std::size_t>(), want.first) << s.dump();
        const auto bytes = s["bytes"].get<std::uint64_t>();
        if (want.first == 0) {
            EXPECT_EQ(bytes, 0u) << s.dump();
            EXPECT_TRUE(s["oldest_age_seconds"].is_null()) << s.dump();
        } else {
            // At least the messages, at most everything in the item directories.
            EXPECT_GT(bytes, 0u);
            EXPECT_GE(bytes, item_bytes(want.second, "message.eml")) << s.dump();
            EXPECT_LE(bytes, item_bytes(want.second)) << s.dump();
            ASSERT_TRUE(s["oldest_age_seconds"].is_number()) << s.dump();
            EXPECT_GE(s["oldest_age_seconds"].get<double>(), 0.0) << s.dump();
            EXPECT_LT(s["oldest_age_seconds"].get<double>(), 120.0) << s.dump();
        }
    }
    // The reused item made no difference to tmp/.
    EXPECT_EQ((*stats)["tmp"]["items"], tmp_count) << stats->dump(2);

    const RunResult text = tool({"stats"});
    ASSERT_EQ(text.code, 0) << text;
    const auto lines = lines_of(text.out);
    std::vector<std::string> rows;
    for (std::size_t i = 1; i < lines.size(); ++i) {
        if (!words(lines[i]).empty()) rows.push_back(lines[i]);
    }
    ASSERT_EQ(rows.size(), 4u) << "a header and one line per state expected: " << text;
    const std::vector<std::string> order{"tmp", "pending", "processing", "dead"};
    for (std::size_t i = 0; i < 4; ++i) {
        const auto w = words(rows[i]);
        ASSERT_GE(w.size(), 4u) << rows[i];
        EXPECT_EQ(w[0], order[i]) << text;
        const std::size_t want = expected.at(order[i]).first;
        EXPECT_EQ(w[1], std::to_string(want)) << "items of " << order[i] << ": " << rows[i];
        if (want == 0) {
            EXPECT_EQ(w.back(), "-") << "oldest of an empty state: " << rows[i];
        } else {
            EXPECT_NE(w.back(), "-") << "oldest of " << order[i] << ": " << rows[i];
            EXPECT_NE(w[2], "0") << "bytes of " << order[i] << ": " << rows[i];
            EXPECT_TRUE(std::regex_search(w.back(), std::regex(R"(^\d+[smhd]$)"))) << "a human age: " << rows[i];
        }
    }
}

TEST_F(SpoolToolTest, StatsOldestAgeFollowsTheOldestItem) {
    make_spool();
    put_item(dead_dir(), 2h, "old");
    put_item(dead_dir(), 10s, "new");
    const RunResult r = tool({"stats", "--json"});
    ASSERT_EQ(r.code, 0) << r;
    const auto stats = parse_json(r.out);
    ASSERT_TRUE(stats.has_value()) << r;
    ASSERT_TRUE((*stats)["dead"]["oldest_age_seconds"].is_number()) << r;
    const double age = (*stats)["dead"]["oldest_age_seconds"].get<double>();
    EXPECT_GE(age, 7200.0 - 5) << r;
    EXPECT_LE(age, 7200.0 + 60) << r;
    EXPECT_EQ((*stats)["dead"]["items"], 2) << r;
    EXPECT_EQ((*stats)["pending"]["items"], 0) << r;

    const RunResult text = tool({"stats"});
    ASSERT_EQ(text.code, 0) << text;
    bool seen = false;
    for (const auto& line : lines_of(text.out)) {
        const auto w = words(line);
        if (!w.empty() && w[0] == "dead") {
            seen = true;
            // About two hours, however it is written ("2h 0m", "2h", "120m ..."): not seconds.
            EXPECT_TRUE(contains(line, "2h") || contains(line, "120m") || contains(line, "119m")) << line;
        }
    }
    EXPECT_TRUE(seen) << text;
}

// --- list ----------------------------------------------------------------------------------------

TEST_F(SpoolToolTest, ListShowsSenderRecipientsSubjectAndError) {
    ASSERT_TRUE(start_spool_daemon());
    const std::string dead = send_dead("dead letter one", {"ann@example.com", "bob@example.com"}, "alice@example.org");
    const std::string dead2 = send_dead("dead letter two", {"cy@example.com"}, "carol@example.org");
    const std::string pending = send_pending("still trying", {"dan@example.com"}, "dave@example.org");
    ASSERT_FALSE(dead.empty());
    ASSERT_FALSE(dead2.empty());
    ASSERT_FALSE(pending.empty());
    const auto dead_meta = read_meta(dead_dir() / dead);
    const auto pending_meta = read_meta(pending_dir() / pending);
    ASSERT_TRUE(dead_meta && pending_meta);

    // Text: a header, then one tab-separated row per item, all three states.
    const RunResult all = tool({"list"});
    ASSERT_EQ(all.code, 0) << all;
    ASSERT_FALSE(lines_of(all.out).empty()) << all;
    const auto rows = list_rows(all.out);
    EXPECT_EQ(rows.size(), 3u) << all;
    const auto d = row_for(rows, dead);
    ASSERT_EQ(d.size(), 8u) << "STATE ID AGE ATTEMPTS SENDER RECIPIENTS SUBJECT LAST_ERROR: " << all;
    EXPECT_EQ(d[0], "dead");
    EXPECT_TRUE(contains(d[4], "alice@example.org")) << d[4];
    EXPECT_TRUE(contains(d[5], "ann@example.com")) << d[5];
    EXPECT_TRUE(contains(d[5], "bob@example.com")) << d[5];
    EXPECT_TRUE(contains(d[5], ",")) << "recipients comma-joined: " << d[5];
    EXPECT_EQ(d[6], "dead letter one");
    EXPECT_EQ(d[7], (*dead_meta)["lastError"].get<std::string>());
    EXPECT_TRUE(contains(d[7], "406")) << d[7];
    EXPECT_EQ(d[3], std::to_string((*dead_meta)["attempts"].get<int>()));
    const auto p = row_for(rows, pending);
    ASSERT_EQ(p.size(), 8u) << all;
    EXPECT_EQ(p[0], "pending");
    EXPECT_TRUE(contains(p[4], "dave@example.org")) << p[4];
    EXPECT_TRUE(contains(p[5], "dan@example.com")) << p[5];
    EXPECT_EQ(p[6], "still trying");
    EXPECT_EQ(p[3], std::to_string((*pending_meta)["attempts"].get<int>()));
    EXPECT_GE((*pending_meta)["attempts"].get<int>(), 1);
    EXPECT_EQ(p[7], (*pending_meta)["lastError"].get<std::string>());
    EXPECT_FALSE(row_for(rows, dead2).empty()) << all;

    // A state narrows the list.
    const RunResult only_dead = tool({"list", "dead"});
    ASSERT_EQ(only_dead.code, 0) << only_dead;
    const auto dead_rows = list_rows(only_dead.out);
    EXPECT_EQ(dead_rows.size(), 2u) << only_dead;
    for (const auto& row : dead_rows) EXPECT_EQ(row[0], "dead") << only_dead;
    EXPECT_TRUE(row_for(dead_rows, pending).empty()) << only_dead;

    const RunResult only_pending = tool({"list", "pending"});
    ASSERT_EQ(only_pending.code, 0) << only_pending;
    const auto pending_rows = list_rows(only_pending.out);
    ASSERT_EQ(pending_rows.size(), 1u) << only_pending;
    EXPECT_EQ(pending_rows[0][1], pending);

    const RunResult none = tool({"list", "processing"});
    ASSERT_EQ(none.code, 0) << none;
    EXPECT_TRUE(list_rows(none.out).empty()) << none;

    const RunResult bad = tool({"list", "bogus"});
    EXPECT_EQ(bad.code, 2) << bad;
}

TEST_F(SpoolToolTest, ListJsonHasTheFieldsOldestFirst) {
    ASSERT_TRUE(start_spool_daemon());
    const std::string first = send_dead("dead first", {"ann@example.com", "bob@example.com"}, "alice@example.org");
    const std::string second = send_dead("dead second");
    const std::string pending = send_pending("waiting");
    ASSERT_FALSE(first.empty());
    ASSERT_FALSE(second.empty());
    ASSERT_FALSE(pending.empty());

    const RunResult r = tool({"list", "--json"});
    ASSERT_EQ(r.code, 0) << r;
    const auto list = parse_json(r.out);
    ASSERT_TRUE(list && list->is_array()) << r;
    EXPECT_EQ(list->size(), 3u) << list->dump(2);
    for (const auto& e : *list) {
        SCOPED_TRACE(e.dump());
        for (const char* key : {"state", "id", "age_seconds", "attempts", "sender", "recipients", "subject",
                                "last_error", "created_at", "next_attempt_at"}) {
            EXPECT_TRUE(e.contains(key)) << "missing " << key;
        }
        if (!e.contains("id") || !e.contains("state")) continue;
        EXPECT_TRUE(e["state"] == "dead" || e["state"] == "pending");
        EXPECT_TRUE(e["age_seconds"].is_number() && e["age_seconds"].get<double>() >= 0 &&
                    e["age_seconds"].get<double>() < 120);
        EXPECT_TRUE(e["attempts"].is_number_integer());
        EXPECT_TRUE(e["recipients"].is_array());
        EXPECT_TRUE(e["last_error"].is_string() || e["last_error"].is_null());
        EXPECT_TRUE(e["next_attempt_at"].is_string() || e["next_attempt_at"].is_null());
        EXPECT_TRUE(is_iso_string(e["created_at"]));
        const fs::path dir = (e["state"] == "dead" ? dead_dir() : pending_dir()) / e["id"].get<std::string>();
        const auto meta = read_meta(dir);
        ASSERT_TRUE(meta.has_value()) << dir;
        EXPECT_EQ(e["created_at"], (*meta)["createdAt"]);
        EXPECT_EQ(e["attempts"], (*meta)["attempts"]);
        EXPECT_EQ(e["last_error"], (*meta)["lastError"]);
        EXPECT_EQ(e["next_attempt_at"], (*meta)["nextAttemptAt"]);
        EXPECT_EQ(e["subject"], (*meta)["subject"]);
    }
    const auto f = entry_for(*list, first);
    ASSERT_TRUE(f.has_value()) << list->dump(2);
    EXPECT_EQ((*f)["state"], "dead");
    EXPECT_TRUE(contains((*f)["sender"].get<std::string>(), "alice@example.org")) << f->dump();
    ASSERT_EQ((*f)["recipients"].size(), 2u) << f->dump();
    EXPECT_TRUE(contains((*f)["recipients"][0].get<std::string>(), "ann@example.com")) << f->dump();
    EXPECT_TRUE(contains((*f)["recipients"][1].get<std::string>(), "bob@example.com")) << f->dump();
    EXPECT_EQ((*f)["subject"], "dead first");
    EXPECT_TRUE((*f)["last_error"].is_string() && contains((*f)["last_error"].get<std::string>(), "406")) << f->dump();
    const auto p = entry_for(*list, pending);
    ASSERT_TRUE(p.has_value()) << list->dump(2);
    EXPECT_EQ((*p)["state"], "pending");
    EXPECT_GE((*p)["attempts"].get<int>(), 1);
    EXPECT_TRUE(is_iso_string((*p)["next_attempt_at"])) << p->dump();

    // Oldest first within a state: the first dead letter before the second.
    const RunResult dead_only = tool({"list", "dead", "--json"});
    ASSERT_EQ(dead_only.code, 0) << dead_only;
    const auto dl = parse_json(dead_only.out);
    ASSERT_TRUE(dl && dl->is_array() && dl->size() == 2u) << dead_only;
    EXPECT_EQ((*dl)[0]["id"], first) << dl->dump(2);
    EXPECT_EQ((*dl)[1]["id"], second) << dl->dump(2);
}

TEST_F(SpoolToolTest, ListOrdersOldestFirstAndFlattensControlCharacters) {
    make_spool();
    const std::string newer = put_item(dead_dir(), 60s, "newer");
    const std::string oldest = put_item(dead_dir(), 3h, "oldest");
    const std::string middle = put_item(dead_dir(), 1h, "middle", [](nlohmann::ordered_json& m) {
        m["lastError"] = "line one\r\nline two\tand a tab";
    });
    const RunResult js = tool({"list", "dead", "--json"});
    ASSERT_EQ(js.code, 0) << js;
    const auto list = parse_json(js.out);
    ASSERT_TRUE(list && list->is_array() && list->size() == 3u) << js;
    EXPECT_EQ((*list)[0]["id"], oldest) << list->dump(2);
    EXPECT_EQ((*list)[1]["id"], middle) << list->dump(2);
    EXPECT_EQ((*list)[2]["id"], newer) << list->dump(2);
    // JSON keeps the error as it is.
    EXPECT_EQ((*list)[1]["last_error"], "line one\r\nline two\tand a tab");
    EXPECT_GE((*list)[0]["age_seconds"].get<double>(), 3 * 3600 - 5);

    const RunResult text = tool({"list", "dead"});
    ASSERT_EQ(text.code, 0) << text;
    const auto rows = list_rows(text.out);
    ASSERT_EQ(rows.size(), 3u) << "one line per item, whatever the error holds: " << text;
    EXPECT_EQ(rows[0][1], oldest);
    EXPECT_EQ(rows[1][1], middle);
    EXPECT_EQ(rows[2][1], newer);
    ASSERT_EQ(rows[1].size(), 8u) << text;
    EXPECT_EQ(rows[1][7].find_first_of("\r\n\t"), std::string::npos) << rows[1][7];
    EXPECT_TRUE(contains(rows[1][7], "line one")) << rows[1][7];
    EXPECT_TRUE(contains(rows[1][7], "line two")) << rows[1][7];
    EXPECT_TRUE(contains(rows[1][7], "and a tab")) << rows[1][7];
}

// --- show ----------------------------------------------------------------------------------------

TEST_F(SpoolToolTest, ShowPrintsStateMetaAndHeaders) {
    ASSERT_TRUE(start_spool_daemon());
    const std::string id = send_dead("dead to show", {"user@example.com"}, "sender@example.org",
                                     "BODY-MARKER-not-a-header\r\n");
    ASSERT_FALSE(id.empty());
    const RunResult r = tool({"show", id});
    ASSERT_EQ(r.code, 0) << r;
    EXPECT_TRUE(contains(r.out, "dead")) << r;
    EXPECT_TRUE(contains(r.out, (dead_dir() / id).string())) << "the item's directory: " << r;
    EXPECT_TRUE(contains(r.out, "Subject: dead to show")) << "the header section: " << r;
    EXPECT_TRUE(contains(r.out, "Message-ID: <itest@example.org>")) << r;
    EXPECT_FALSE(contains(r.out, "BODY-MARKER")) << "only the header section, not the body: " << r;
    EXPECT_TRUE(contains(r.out, "\"" + id + "\"")) << "meta's id: " << r;
    // meta.json as stored.
    std::string meta = read_file(dead_dir() / id / "meta.json");
    while (!meta.empty() && (meta.back() == '\n' || meta.back() == '\r')) meta.pop_back();
    EXPECT_TRUE(contains(r.out, meta)) << "meta.json as stored:\n" << meta << "\n" << r;

    // A pending item too.
    const std::string pending = send_pending("shown while pending");
    ASSERT_FALSE(pending.empty());
    const RunResult p = tool({"show", pending});
    ASSERT_EQ(p.code, 0) << p;
    EXPECT_TRUE(contains(p.out, "pending")) << p;
    EXPECT_TRUE(contains(p.out, "Subject: shown while pending")) << p;

    const std::string unknown = new_spool_id();
    const RunResult u = tool({"show", unknown});
    EXPECT_EQ(u.code, 1) << u;
    EXPECT_TRUE(contains(u.err, unknown)) << u;
    EXPECT_TRUE(contains(u.err, "not found")) << u;
}

// --- requeue -------------------------------------------------------------------------------------

TEST_F(SpoolToolTest, RequeueWhileRunningDeliversAgain) {
    ASSERT_TRUE(start_spool_daemon());
    const std::string id = send_dead("dead then requeued");
    ASSERT_FALSE(id.empty());
    ASSERT_EQ(requests_for(id), 1u);
    const std::string first_body = request_for(id)->field("body-mime");
    accept_->store(true);

    const RunResult r = tool({"requeue", id});
    ASSERT_EQ(r.code, 0) << r;
    EXPECT_EQ(lines_naming(r.out, id), 1u) << r;
    ASSERT_TRUE(wait_requests_for(id, 2)) << "requeued " << id << " was not delivered again";
    const auto requests = hook_.requests();
    EXPECT_EQ(requests.back().id(), id);
    EXPECT_EQ(requests.back().status, 200u);
    EXPECT_EQ(requests.back().field("body-mime"), first_body);
    EXPECT_TRUE(spool_drains());
    EXPECT_TRUE(wait_until([&] { return item_count(dead_dir()) == 0; }, 5s)) << "dead/ still holds it";
    EXPECT_FALSE(hook_.wait_for(3, 500ms)) << "delivered once more, not more";
    EXPECT_TRUE(daemon().running());
}

TEST_F(SpoolToolTest, RequeueResetsTheMetaAndKeepsTheMessage) {
    ASSERT_TRUE(start_spool_daemon());
    const std::string id = send_dead("dead, reset me");
    ASSERT_FALSE(id.empty());
    stop_daemon();
    // What a dead item may carry besides: an error.txt and interrupted attempts.
    const fs::path dir = dead_dir() / id;
    write_file(dir / "error.txt", "something went wrong\n");
    auto meta = nlohmann::ordered_json::parse(read_file(dir / "meta.json"));
    meta["interruptedAttempts"] = 2;
    write_file(dir / "meta.json", meta.dump(2) + "\n");
    const std::string eml = read_file(dir / "message.eml");

    const long long before = now_ms();
    const RunResult r = tool({"requeue", id});
    const long long after = now_ms();
    ASSERT_EQ(r.code, 0) << r;
    EXPECT_EQ(lines_naming(r.out, id), 1u) << r;
    EXPECT_FALSE(fs::exists(dir)) << "still in dead/";
    const fs::path moved = pending_dir() / id;
    ASSERT_TRUE(fs::is_directory(moved)) << "not in pending/";
    EXPECT_EQ(read_file(moved / "message.eml"), eml);
    EXPECT_FALSE(fs::exists(moved / "error.txt"));
    const auto m = read_meta(moved);
    ASSERT_TRUE(m.has_value());
    EXPECT_EQ((*m)["id"], id) << m->dump(2);
    EXPECT_EQ((*m)["attempts"], 0) << m->dump(2);
    EXPECT_FALSE(m->contains("interruptedAttempts")) << m->dump(2);
    EXPECT_EQ((*m)["lastError"], json(meta["lastError"])) << "lastError is kept: " << m->dump(2);
    EXPECT_EQ((*m)["createdAt"], json(meta["createdAt"])) << m->dump(2);
    EXPECT_EQ((*m)["subject"], json(meta["subject"])) << m->dump(2);
    EXPECT_EQ((*m)["recipients"], json(meta["recipients"])) << m->dump(2);
    EXPECT_EQ((*m)["sender"], json(meta["sender"])) << m->dump(2);
    // Everything else as it was.
    for (const auto& [key, value] : meta.items()) {
        if (key == "attempts" || key == "nextAttemptAt" || key == "interruptedAttempts") continue;
        EXPECT_TRUE(m->contains(key) && (*m)[key] == json(value)) << key << " changed: " << m->dump(2);
    }
    ASSERT_TRUE(is_iso_string((*m)["nextAttemptAt"])) << m->dump(2);
    const long long next = iso_ms((*m)["nextAttemptAt"].get<std::string>());
    EXPECT_GE(next, before - 1000) << m->dump(2);
    EXPECT_LE(next, after + 1000) << "due now: " << m->dump(2);

    // A daemon started on it delivers it, with the same id.
    accept_->store(true);
    ASSERT_TRUE(start_spool_daemon());
    EXPECT_TRUE(wait_requests_for(id, 2)) << "not delivered after the requeue";
    EXPECT_TRUE(spool_drains());
}

TEST_F(SpoolToolTest, RequeueAllDeliversEveryDeadItem) {
    ASSERT_TRUE(start_spool_daemon());
    const std::string a = send_dead("dead a");
    const std::string b = send_dead("dead b");
    ASSERT_FALSE(a.empty());
    ASSERT_FALSE(b.empty());
    accept_->store(true);
    const RunResult r = tool({"requeue", "--all"});
    ASSERT_EQ(r.code, 0) << r;
    EXPECT_EQ(lines_naming(r.out, a), 1u) << r;
    EXPECT_EQ(lines_naming(r.out, b), 1u) << r;
    EXPECT_TRUE(wait_requests_for(a, 2)) << a << " not delivered again";
    EXPECT_TRUE(wait_requests_for(b, 2)) << b << " not delivered again";
    EXPECT_TRUE(spool_drains());
    EXPECT_TRUE(wait_until([&] { return item_count(dead_dir()) == 0; }, 5s));

    // Nothing dead: nothing to do, and that is fine.
    const RunResult again = tool({"requeue", "--all"});
    EXPECT_EQ(again.code, 0) << again;
    EXPECT_EQ(lines_naming(again.out, a), 0u) << again;
}

TEST_F(SpoolToolTest, RequeueRefusesPendingUnknownAndInFlightIds) {
    ASSERT_TRUE(start_spool_daemon());
    const std::string pending = send_pending("pending, not dead");
    ASSERT_FALSE(pending.empty());
    const auto attempts = (*read_meta(pending_dir() / pending))["attempts"];

    const RunResult p = tool({"requeue", pending});
    EXPECT_EQ(p.code, 1) << p;
    EXPECT_TRUE(contains(p.err, pending)) << p;
    EXPECT_TRUE(contains(p.err, "already pending")) << p;
    ASSERT_TRUE(fs::exists(pending_dir() / pending / "meta.json"));
    EXPECT_EQ((*read_meta(pending_dir() / pending))["attempts"], attempts) << "a pending item was rewritten";

    const std::string unknown = new_spool_id();
    const RunResult u = tool({"requeue", unknown});
    EXPECT_EQ(u.code, 1) << u;
    EXPECT_TRUE(contains(u.err, unknown)) << u;
    EXPECT_TRUE(contains(u.err, "not found")) << u;

    stop_daemon();
    // An item in processing/ (a delivery in flight, as far as the tool can tell).
    const std::string busy = put_item(processing_dir(), 5s, "in flight");
    const RunResult b = tool({"requeue", busy});
    EXPECT_EQ(b.code, 1) << b;
    EXPECT_TRUE(contains(b.err, busy)) << b;
    EXPECT_TRUE(contains(b.err, "in use")) << b;
    EXPECT_TRUE(fs::exists(processing_dir() / busy / "meta.json"));
    EXPECT_FALSE(fs::exists(pending_dir() / busy));
}

TEST_F(SpoolToolTest, RequeueHandlesTheGoodIdsAmongBadOnes) {
    ASSERT_TRUE(start_spool_daemon());
    const std::string a = send_dead("dead a");
    const std::string b = send_dead("dead b");
    const std::string c = send_dead("dead c");
    const std::string pending = send_pending("pending");
    ASSERT_FALSE(a.empty() || b.empty() || c.empty() || pending.empty());
    stop_daemon();  // nothing moves while we look

    const std::string unknown = new_spool_id();
    const RunResult r = tool({"requeue", a, unknown, pending, b});
    EXPECT_EQ(r.code, 1) << r;
    EXPECT_TRUE(contains(r.err, unknown)) << r;
    EXPECT_TRUE(contains(r.err, pending)) << r;
    EXPECT_EQ(lines_naming(r.out, a), 1u) << r;
    EXPECT_EQ(lines_naming(r.out, b), 1u) << r;
    EXPECT_TRUE(fs::exists(pending_dir() / a / "meta.json")) << "good id before the bad ones not requeued";
    EXPECT_TRUE(fs::exists(pending_dir() / b / "meta.json")) << "good id after the bad ones not requeued";
    EXPECT_FALSE(fs::exists(dead_dir() / a));
    EXPECT_FALSE(fs::exists(dead_dir() / b));
    EXPECT_TRUE(fs::exists(dead_dir() / c / "meta.json")) << "an id not named was requeued";

    // The same id twice: requeued once, the second time it is already pending.
    const RunResult twice = tool({"requeue", c, c});
    EXPECT_EQ(twice.code, 1) << twice;
    EXPECT_TRUE(contains(twice.err, c)) << twice;
    EXPECT_EQ(lines_naming(twice.out, c), 1u) << twice;
    EXPECT_TRUE(fs::exists(pending_dir() / c / "meta.json"));
    EXPECT_FALSE(fs::exists(dead_dir() / c));

    // And they are delivered by the next daemon (the pending one waits for its retry time).
    accept_->store(true);
    ASSERT_TRUE(start_spool_daemon());
    EXPECT_TRUE(wait_requests_for(a, 2));
    EXPECT_TRUE(wait_requests_for(b, 2));
    EXPECT_TRUE(wait_requests_for(c, 2));
    EXPECT_TRUE(wait_until([&] { return item_count(pending_dir()) == 1 && item_count(processing_dir()) == 0; }, 10s));
    EXPECT_TRUE(fs::exists(pending_dir() / pending / "meta.json"));
    EXPECT_EQ(item_count(dead_dir()), 0u);
}

// An id in dead/ and in pending/ at once (the dispatcher sets one copy aside in dead/ with
// an error.txt saying so): not requeued over the pending copy, and the dead copy is left as
// it was, error.txt included.
TEST_F(SpoolToolTest, RequeueRefusesAnIdThatIsAlsoPending) {
    make_spool();
    const std::string id = put_item(pending_dir(), 60s, "the copy in pending");
    fs::create_directories(dead_dir() / id);
    fs::copy(pending_dir() / id, dead_dir() / id, fs::copy_options::recursive);
    write_file(dead_dir() / id / "error.txt", "the same id was in processing/ too: that copy is delivered, this one was set aside\n");
    const std::string pending_meta = read_file(pending_dir() / id / "meta.json");
    const std::string dead_meta = read_file(dead_dir() / id / "meta.json");

    const RunResult r = tool({"requeue", id});
    EXPECT_EQ(r.code, 1) << r;
    EXPECT_TRUE(contains(r.err, id)) << r;
    EXPECT_EQ(read_file(pending_dir() / id / "meta.json"), pending_meta) << "the pending copy was changed";
    ASSERT_TRUE(fs::exists(dead_dir() / id / "meta.json")) << "the dead copy is gone";
    EXPECT_EQ(read_file(dead_dir() / id / "meta.json"), dead_meta) << "a refused requeue rewrote the dead copy's meta.json";
    EXPECT_TRUE(fs::exists(dead_dir() / id / "error.txt")) << "a refused requeue removed the dead copy's error.txt";
}

// A message dead-lettered because it outlived MAX_RETRY_AGE_MS, requeued once the webhook
// works again: it is delivered (it gets its attempt), not set aside again unseen.
TEST_F(SpoolToolTest, RequeuedItemPastMaxRetryAgeIsDelivered) {
    hook_.respond_with([accept = accept_](const WebhookRequest&) { return accept->load() ? 200u : 503u; });
    ASSERT_TRUE(start_daemon({{"MAX_RETRY_AGE_MS", "1000"}, {"RETRY_INTERVAL_MS", "100"},
                              {"RETRY_MAX_INTERVAL_MS", "200"}}));
    const std::string id = send_one(simple_message("too old"));
    ASSERT_FALSE(id.empty());
    ASSERT_TRUE(wait_until(
        [&] {
            const auto meta = read_meta(dead_dir() / id);
            return meta && meta->contains("lastError") && (*meta)["lastError"] == "max retry age exceeded";
        },
        10s))
        << id << " was not dead-lettered for its age";
    const std::size_t before = requests_for(id);
    accept_->store(true);
    const RunResult r = tool({"requeue", id});
    ASSERT_EQ(r.code, 0) << r;
    EXPECT_TRUE(wait_requests_for(id, before + 1, 3s))
        << "requeued " << id << " was never posted again; dead/ now holds: " << ::testing::PrintToString(list_dir(dead_dir()));
    EXPECT_TRUE(spool_drains());
    EXPECT_TRUE(wait_until([&] { return item_count(dead_dir()) == 0; }, 1s))
        << "back in dead/: " << [&] {
               const auto meta = read_meta(dead_dir() / id);
               return meta ? meta->dump(2) : std::string("(none)");
           }();
}

// A dead item whose meta.json cannot be parsed (the daemon sets such items aside as
// "invalid metadata"): listed, not requeued (exit 1, left in dead/), the others still are;
// purgeable.
TEST_F(SpoolToolTest, UnreadableMetaIsReportedPerItem) {
    make_spool();
    const std::string good = put_item(dead_dir(), 120s, "good");
    const std::string broken = put_item(dead_dir(), 60s, "broken");
    write_file(dead_dir() / broken / "meta.json", "{\"id\": \"" + broken + "\", \"attempts\": ");
    write_file(dead_dir() / broken / "error.txt", "invalid metadata: unexpected end of input\n");

    const RunResult l = tool({"list", "dead"});
    EXPECT_EQ(l.code, 0) << l;
    EXPECT_FALSE(row_for(list_rows(l.out), broken).empty()) << l;
    EXPECT_FALSE(row_for(list_rows(l.out), good).empty()) << l;
    const RunResult j = tool({"list", "dead", "--json"});
    EXPECT_EQ(j.code, 0) << j;
    const auto list = parse_json(j.out);
    ASSERT_TRUE(list && list->is_array()) << j;
    EXPECT_TRUE(entry_for(*list, broken).has_value()) << j;
    const RunResult sh = tool({"show", broken});
    EXPECT_TRUE(sh.code == 0 || sh.code == 1) << sh;

    const RunResult r = tool({"requeue", "--all"});
    EXPECT_EQ(r.code, 1) << r;
    EXPECT_TRUE(contains(r.err, broken)) << r;
    EXPECT_TRUE(fs::exists(pending_dir() / good / "meta.json")) << "the good one was not requeued: " << r;
    EXPECT_TRUE(fs::exists(dead_dir() / broken / "meta.json")) << "the broken one left dead/: " << r;
    EXPECT_FALSE(fs::exists(pending_dir() / broken)) << r;

    const RunResult p = tool({"purge", broken, "--yes"});
    EXPECT_EQ(p.code, 0) << p;
    EXPECT_FALSE(fs::exists(dead_dir() / broken)) << p;
}

TEST_F(SpoolToolTest, RequeueWithoutIdsIsAUsageError) {
    make_spool();
    const RunResult r = tool({"requeue"});
    EXPECT_EQ(r.code, 2) << r;
}

// --- purge ---------------------------------------------------------------------------------------

TEST_F(SpoolToolTest, PurgeNeedsYes) {
    ASSERT_TRUE(start_spool_daemon());
    const std::string id = send_dead("dead, purge me");
    ASSERT_FALSE(id.empty());

    const RunResult dry = tool({"purge", id});
    EXPECT_EQ(dry.code, 3) << dry;
    EXPECT_TRUE(contains(dry.out, id)) << "lists what it would delete: " << dry;
    EXPECT_TRUE(fs::exists(dead_dir() / id / "message.eml")) << "deleted without --yes";
    EXPECT_TRUE(fs::exists(dead_dir() / id / "meta.json")) << "deleted without --yes";

    const RunResult yes = tool({"purge", id, "--yes"});
    EXPECT_EQ(yes.code, 0) << yes;
    EXPECT_EQ(lines_naming(yes.out, id), 1u) << yes;
    EXPECT_FALSE(fs::exists(dead_dir() / id)) << "still in dead/";
    EXPECT_EQ(item_count(dead_dir()), 0u);

    const RunResult gone = tool({"purge", id, "--yes"});
    EXPECT_EQ(gone.code, 1) << gone;
    EXPECT_TRUE(contains(gone.err, "not found")) << gone;
    EXPECT_TRUE(daemon().running());
}

TEST_F(SpoolToolTest, PurgeOlderThan) {
    ASSERT_TRUE(start_spool_daemon());
    const std::string fresh = send_dead("dead, fresh");
    ASSERT_FALSE(fresh.empty());
    stop_daemon();
    const std::string old = put_item(dead_dir(), 2h, "two hours dead");
    const std::string old_pending = put_item(pending_dir(), 2h, "two hours pending", [](nlohmann::ordered_json& m) {
        m["nextAttemptAt"] = iso_time(std::chrono::system_clock::now() + std::chrono::hours(1));
        m["lastError"] = "webhook returned 500";
    });

    // Without --yes: the list, nothing deleted.
    const RunResult dry = tool({"purge", "--older-than", "1h"});
    EXPECT_EQ(dry.code, 3) << dry;
    EXPECT_TRUE(contains(dry.out, old)) << dry;
    EXPECT_FALSE(contains(dry.out, fresh)) << dry;
    EXPECT_FALSE(contains(dry.out, old_pending)) << dry;
    EXPECT_TRUE(fs::exists(dead_dir() / old / "meta.json"));

    // Too young for 3h: both stay.
    const RunResult young = tool({"purge", "--older-than", "3h", "--yes"});
    EXPECT_EQ(young.code, 0) << young;
    EXPECT_TRUE(fs::exists(dead_dir() / old / "meta.json"));
    EXPECT_TRUE(fs::exists(dead_dir() / fresh / "meta.json"));

    // Plain seconds: 5400 s = 90 min takes the two-hour-old one only; dead only.
    const RunResult secs = tool({"purge", "--older-than", "5400", "--yes"});
    EXPECT_EQ(secs.code, 0) << secs;
    EXPECT_EQ(lines_naming(secs.out, old), 1u) << secs;
    EXPECT_FALSE(fs::exists(dead_dir() / old)) << "older than 5400 s, not purged";
    EXPECT_TRUE(fs::exists(dead_dir() / fresh / "meta.json")) << "a fresh dead item was purged";
    EXPECT_TRUE(fs::exists(pending_dir() / old_pending / "meta.json")) << "a pending item was purged";

    const RunResult hour = tool({"purge", "--older-than", "1h", "--yes"});
    EXPECT_EQ(hour.code, 0) << hour;
    EXPECT_TRUE(fs::exists(dead_dir() / fresh / "meta.json")) << "a fresh dead item was purged by 1h";

    const RunResult zero = tool({"purge", "--older-than", "0s", "--yes"});
    EXPECT_EQ(zero.code, 0) << zero;
    EXPECT_EQ(lines_naming(zero.out, fresh), 1u) << zero;
    EXPECT_FALSE(fs::exists(dead_dir() / fresh)) << "--older-than 0s left it";
    EXPECT_TRUE(fs::exists(pending_dir() / old_pending / "meta.json")) << "a pending item was purged";

    // Nothing left to purge: fine.
    const RunResult empty = tool({"purge", "--older-than", "0", "--yes"});
    EXPECT_EQ(empty.code, 0) << empty;
}

// Without --yes the list is of what would be deleted: an id that is pending, or unknown,
// would not be, so it is not on it.
TEST_F(SpoolToolTest, PurgeDryRunListsOnlyWhatItWouldDelete) {
    make_spool();
    const std::string dead = put_item(dead_dir(), 60s, "dead");
    const std::string pending = put_item(pending_dir(), 60s, "pending");
    const std::string unknown = new_spool_id();
    const RunResult r = tool({"purge", dead, pending, unknown});
    EXPECT_TRUE(r.code == 3 || r.code == 1) << r;
    EXPECT_EQ(lines_naming(r.out, dead), 1u) << r;
    EXPECT_EQ(lines_naming(r.out, pending), 0u) << "listed as to be deleted, but --yes would refuse it: " << r;
    EXPECT_EQ(lines_naming(r.out, unknown), 0u) << "listed as to be deleted, but it does not exist: " << r;
    EXPECT_TRUE(fs::exists(dead_dir() / dead / "meta.json"));
    EXPECT_TRUE(fs::exists(pending_dir() / pending / "meta.json"));
}

TEST_F(SpoolToolTest, PurgeOlderThanZeroPlainSeconds) {
    ASSERT_TRUE(start_spool_daemon());
    const std::string id = send_dead("dead, zero");
    ASSERT_FALSE(id.empty());
    const RunResult r = tool({"purge", "--older-than", "0", "--yes"});
    EXPECT_EQ(r.code, 0) << r;
    EXPECT_FALSE(fs::exists(dead_dir() / id));
}

TEST_F(SpoolToolTest, PurgeRefusesItemsThatAreNotDead) {
    ASSERT_TRUE(start_spool_daemon());
    const std::string pending = send_pending("pending, keep me");
    const std::string dead = send_dead("dead, purge me");
    ASSERT_FALSE(pending.empty() || dead.empty());

    const RunResult r = tool({"purge", pending, "--yes"});
    EXPECT_EQ(r.code, 1) << r;
    EXPECT_TRUE(contains(r.err, pending)) << r;
    EXPECT_TRUE(fs::exists(pending_dir() / pending / "meta.json")) << "a pending item was purged";
    EXPECT_TRUE(fs::exists(pending_dir() / pending / "message.eml")) << "a pending item was purged";

    // Mixed: the dead one goes, the pending one stays, exit 1.
    const RunResult mixed = tool({"purge", pending, dead, "--yes"});
    EXPECT_EQ(mixed.code, 1) << mixed;
    EXPECT_FALSE(fs::exists(dead_dir() / dead)) << "the dead one among them was not purged";
    EXPECT_TRUE(fs::exists(pending_dir() / pending / "meta.json")) << "a pending item was purged";

    stop_daemon();
    const std::string busy = put_item(processing_dir(), 5s, "in flight");
    const RunResult b = tool({"purge", busy, "--yes"});
    EXPECT_EQ(b.code, 1) << b;
    EXPECT_TRUE(fs::exists(processing_dir() / busy / "meta.json")) << "an item in processing/ was purged";
}

// An id is a name in dead/, not a path: "../pending/<id>" must not reach outside dead/.
TEST_F(SpoolToolTest, IdsThatArePathsAreNotFollowed) {
    make_spool();
    const std::string pending = put_item(pending_dir(), 60s, "pending");
    const std::string processing = put_item(processing_dir(), 60s, "processing");
    for (const std::string& sneaky : {"../pending/" + pending, "../processing/" + processing,
                                      (pending_dir() / pending).string()}) {
        SCOPED_TRACE(sneaky);
        const RunResult p = tool({"purge", sneaky, "--yes"});
        EXPECT_TRUE(p.code == 1 || p.code == 2) << p;
        const RunResult q = tool({"requeue", sneaky});
        EXPECT_TRUE(q.code == 1 || q.code == 2) << q;
    }
    EXPECT_TRUE(fs::exists(pending_dir() / pending / "meta.json"));
    EXPECT_TRUE(fs::exists(pending_dir() / pending / "message.eml"));
    EXPECT_TRUE(fs::exists(processing_dir() / processing / "meta.json"));
    EXPECT_TRUE(fs::exists(processing_dir() / processing / "message.eml"));
}

TEST_F(SpoolToolTest, PurgeUsageErrors) {
    make_spool();
    const std::string id = put_item(dead_dir(), 2h, "old");
    for (const std::vector<std::string>& args :
         {std::vector<std::string>{"purge", "--older-than", "soon", "--yes"},
          std::vector<std::string>{"purge", "--older-than", "soon"},
          std::vector<std::string>{"purge", "--older-than", "-5", "--yes"},
          std::vector<std::string>{"purge", "--older-than", "5x", "--yes"},
          std::vector<std::string>{"purge", "--older-than"},
          std::vector<std::string>{"purge", "--yes"},
          std::vector<std::string>{"purge"}}) {
        const RunResult r = tool(args);
        EXPECT_EQ(r.code, 2) << r;
        EXPECT_FALSE(r.err.empty()) << "a usage error says why: " << r;
    }
    EXPECT_TRUE(fs::exists(dead_dir() / id / "meta.json")) << "a usage error deleted something";
    // The units of the brief are all accepted.
    for (const char* duration : {"90s", "15m", "12h", "7d", "86400"}) {
        const RunResult r = tool({"purge", "--older-than", duration});
        EXPECT_TRUE(r.code == 3 || r.code == 0) << r;
    }
}

// --- errors ----------------------------------------------------------------------------------------

TEST_F(SpoolToolTest, NoSpoolAtTheConfiguredPlaceIsExitTwo) {
    TempDir empty;
    for (const std::vector<std::string>& args : {std::vector<std::string>{"stats"}, std::vector<std::string>{"list"},
                                                 std::vector<std::string>{"requeue", "--all"},
                                                 std::vector<std::string>{"purge", "--older-than", "0", "--yes"}}) {
        const RunResult r = run_tool([&] {
            std::vector<std::string> a{"spool"};
            a.insert(a.end(), args.begin(), args.end());
            return a;
        }(), {{"SPOOL_DIR", empty.path().string()}, {"PATH", "/usr/bin:/bin"}});
        EXPECT_EQ(r.code, 2) << r;
        EXPECT_TRUE(contains(r.err, empty.path().string())) << "names the directory: " << r;
    }
    EXPECT_TRUE(list_dir(empty.path()).empty()) << "the tool created a spool: it must only look";

    const fs::path missing = empty.path() / "no" / "such" / "spool";
    const RunResult m = run_tool({"spool", "stats"}, {{"SPOOL_DIR", missing.string()}, {"PATH", "/usr/bin:/bin"}});
    EXPECT_EQ(m.code, 2) << m;
    EXPECT_TRUE(contains(m.err, missing.string())) << "names the directory: " << m;
    EXPECT_FALSE(fs::exists(empty.path() / "no"));
}

TEST_F(SpoolToolTest, BadSpoolVariablesAreExitTwo) {
    make_spool();
    // A state directory that does not exist.
    const fs::path nowhere = tmp_.path() / "elsewhere" / "dead";
    const RunResult missing = tool({"stats"}, {{"SPOOL_DEAD_DIR", nowhere.string()}});
    EXPECT_EQ(missing.code, 2) << missing;
    EXPECT_TRUE(contains(missing.err, nowhere.string())) << missing;
    // Two states in one directory.
    const RunResult clash = tool({"stats"}, {{"SPOOL_DEAD_DIR", pending_dir().string()}});
    EXPECT_EQ(clash.code, 2) << clash;
    EXPECT_TRUE(contains(clash.err, "SPOOL_")) << "names the variable: " << clash;
    // What is at stake: with dead/ and pending/ one directory, purging "dead" items would
    // delete mail waiting for delivery.
    const std::string waiting = put_item(pending_dir(), 2h, "waiting for delivery");
    const RunResult purge = tool({"purge", "--older-than", "1h", "--yes"}, {{"SPOOL_DEAD_DIR", pending_dir().string()}});
    EXPECT_EQ(purge.code, 2) << purge;
    EXPECT_TRUE(fs::exists(pending_dir() / waiting / "meta.json")) << "pending mail deleted as dead: " << purge;
}

TEST_F(SpoolToolTest, StateDirectoriesFromTheEnvironment) {
    // The daemon with its dead letters elsewhere (same filesystem); the tool, given the
    // same environment, finds them there.
    const fs::path dead_elsewhere = tmp_.path() / "graveyard";
    fs::create_directories(dead_elsewhere);
    ::chmod(dead_elsewhere.c_str(), 0700);
    ASSERT_TRUE(start_spool_daemon({{"SPOOL_DEAD_DIR", dead_elsewhere.string()}}));
    const std::string id = send_one(simple_message("dead elsewhere"));
    ASSERT_FALSE(id.empty());
    ASSERT_TRUE(wait_until([&] { return fs::exists(dead_elsewhere / id / "meta.json"); }, 10s));
    const Env env{{"SPOOL_DEAD_DIR", dead_elsewhere.string()}};
    const RunResult r = tool({"list", "dead", "--json"}, env);
    ASSERT_EQ(r.code, 0) << r;
    const auto list = parse_json(r.out);
    ASSERT_TRUE(list && list->is_array()) << r;
    EXPECT_TRUE(entry_for(*list, id).has_value()) << r;
    const RunResult s = tool({"stats", "--json"}, env);
    ASSERT_EQ(s.code, 0) << s;
    EXPECT_EQ(parse_json(s.out).value_or(json())["dead"]["items"], 1) << s;
    const RunResult p = tool({"purge", id, "--yes"}, env);
    EXPECT_EQ(p.code, 0) << p;
    EXPECT_FALSE(fs::exists(dead_elsewhere / id));
}

TEST_F(SpoolToolTest, UsageErrors) {
    make_spool();
    const RunResult none = tool({});
    EXPECT_EQ(none.code, 2) << none;
    EXPECT_FALSE(none.err.empty()) << "usage on stderr: " << none;

    const RunResult unknown = tool({"frobnicate"});
    EXPECT_EQ(unknown.code, 2) << unknown;
    EXPECT_FALSE(unknown.err.empty()) << unknown;

    const RunResult bad_flag = tool({"stats", "--frobnicate"});
    EXPECT_EQ(bad_flag.code, 2) << bad_flag;

    const RunResult help = tool({"help"});
    EXPECT_EQ(help.code, 0) << help;
    for (const char* word : {"stats", "list", "show", "requeue", "purge"}) {
        EXPECT_TRUE(contains(help.out, word)) << "help mentions " << word << ": " << help;
    }
}

TEST_F(SpoolToolTest, StatsNeedsNoWebhookUrl) {
    make_spool();
    // tool_env() has SPOOL_DIR and PATH only: no WEBHOOK_URL, no signing key.
    const RunResult r = tool({"stats"});
    EXPECT_EQ(r.code, 0) << r;
    const RunResult l = tool({"list"});
    EXPECT_EQ(l.code, 0) << l;
    EXPECT_TRUE(list_rows(l.out).empty()) << l;
    const RunResult j = tool({"list", "--json"});
    EXPECT_EQ(j.code, 0) << j;
    EXPECT_EQ(parse_json(j.out).value_or(json("not json")), json::array()) << j;
}

// --- alongside the running daemon ----------------------------------------------------------------

TEST_F(SpoolToolTest, WorksBesideARunningDaemonHoldingItsLock) {
    // Deliveries held by the webhook until released, so one is in processing/.
    // (The webhook records a request only once it answers: count arrivals separately.)
    auto release = release_;
    auto arrived = std::make_shared<std::atomic<int>>(0);
    hook_.respond_with([release, arrived](const WebhookRequest&) {
        ++*arrived;
        wait_until([&] { return release->load(); }, 8s, 5ms);
        return 200u;
    });
    ASSERT_TRUE(start_daemon({{"WEBHOOK_CONCURRENCY", "2"}}));
    EXPECT_TRUE(fs::exists(spool_dir() / ".lock")) << "the daemon's lock file";
    std::vector<std::string> ids;
    for (int i = 0; i < 4; ++i) {
        ids.push_back(send_one(simple_message("held " + std::to_string(i))));
        ASSERT_FALSE(ids.back().empty());
    }
    ASSERT_TRUE(wait_until([&] { return arrived->load() == 2; }, 10s)) << "deliveries did not start";
    ASSERT_TRUE(wait_until([&] { return item_count(processing_dir()) == 2; }, 5s));

    // While the daemon holds its lock and two POSTs are in flight.
    const RunResult stats = tool({"stats", "--json"});
    ASSERT_EQ(stats.code, 0) << stats;
    const auto s = parse_json(stats.out);
    ASSERT_TRUE(s.has_value()) << stats;
    EXPECT_EQ((*s)["processing"]["items"], 2) << stats;
    EXPECT_EQ((*s)["pending"]["items"], 2) << stats;

    const RunResult busy = tool({"list", "processing", "--json"});
    ASSERT_EQ(busy.code, 0) << busy;
    const auto in_flight = parse_json(busy.out);
    ASSERT_TRUE(in_flight && in_flight->is_array() && in_flight->size() == 2u) << busy;
    const std::string flying = (*in_flight)[0]["id"].get<std::string>();
    EXPECT_EQ((*in_flight)[0]["state"], "processing");
    const RunResult shown = tool({"show", flying});
    EXPECT_EQ(shown.code, 0) << shown;
    EXPECT_TRUE(contains(shown.out, "processing")) << shown;

    // A delivery in flight is not touched.
    const RunResult requeue = tool({"requeue", flying});
    EXPECT_EQ(requeue.code, 1) << requeue;
    EXPECT_TRUE(contains(requeue.err, "in use")) << requeue;
    const RunResult purge = tool({"purge", flying, "--yes"});
    EXPECT_EQ(purge.code, 1) << purge;
    EXPECT_TRUE(fs::exists(processing_dir() / flying / "message.eml")) << "a delivery in flight was purged";

    // Keep looking while everything is delivered: nothing is disturbed.
    release_->store(true);
    const auto deadline = Clock::now() + 10s;
    int runs = 0;
    while (Clock::now() < deadline) {
        const bool drained = list_dir(pending_dir()).empty() && list_dir(processing_dir()).empty() &&
                             hook_.count() >= ids.size();
        const RunResult l = tool({"list", "--json"});
        EXPECT_EQ(l.code, 0) << l;
        EXPECT_TRUE(parse_json(l.out).has_value()) << l;
        const RunResult st = tool({"stats"});
        EXPECT_EQ(st.code, 0) << st;
        ++runs;
        if (drained) break;
    }
    EXPECT_GE(runs, 1);
    EXPECT_TRUE(spool_drains());
    for (const auto& id : ids) EXPECT_EQ(requests_for(id), 1u) << id << " delivered more than once, or never";
    EXPECT_EQ(item_count(dead_dir()), 0u);
    EXPECT_TRUE(daemon().running()) << "the daemon stopped";
    const RunResult after = tool({"stats", "--json"});
    ASSERT_EQ(after.code, 0) << after;
    const auto a = parse_json(after.out);
    ASSERT_TRUE(a.has_value()) << after;
    EXPECT_EQ((*a)["pending"]["items"], 0) << after;
    EXPECT_EQ((*a)["processing"]["items"], 0) << after;
    // The daemon still takes mail after all this.
    const std::string later = send_one(simple_message("after"));
    ASSERT_FALSE(later.empty());
    EXPECT_TRUE(request_for(later).has_value());
}

}  // namespace
}  // namespace itest
