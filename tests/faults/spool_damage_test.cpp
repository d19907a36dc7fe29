// SpoolDamage proves that a damaged or misused spool never stops the daemon from doing its
// job, and never costs an acknowledged message:
//  - Entries: garbage, empty and unreadable meta.json, an item without message.eml, a meta.json
//    that is a directory, stray regular files and dotfiles, the same id in both pending/ and
//    processing/, put there before the start and while the daemon runs. Each must end
//    dead-lettered, delivered (recovered) or left where it is with a log line naming it --
//    never silently vanish -- and a normal message sent afterwards is still delivered.
//  - OverlappingDirectories: SPOOL_TMP_DIR equal to the pending directory must stop the start
//    (non-zero exit, a line naming SPOOL_TMP_DIR) before anything in pending/ is touched.
//  - SecondInstance: a second mxhook on the same SPOOL_DIR while the first runs must exit
//    non-zero at once with a clear line, without touching the spool: the first keeps
//    working, its message in the middle of DATA is accepted, and nothing is lost.

#include "fault_support.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <sstream>
#include <thread>

namespace faults {
namespace {

namespace fs = std::filesystem;

class SpoolDamage : public FaultTest {
protected:
    // One damaged entry and where it was put.
    struct Entry {
        std::string what;
        fs::path path;   // as created
        std::string id;  // its name (an id for item directories)
    };

    void write_item(const fs::path& dir, const std::string& id, bool with_message = true,
                    const std::string& meta = {}) {
        if (with_message) write_file(dir / "message.eml", simple_message("damage " + id));
        write_file(dir / "meta.json", meta.empty() ? spool_item_meta(id).dump(2) + "\n" : meta);
    }

    // Creates the damage under `pending` / `processing` (real spool dirs, or a staging copy
    // that is renamed into place while the daemon runs). Returns the entries as they will be
    // found in the real spool.
    std::vector<Entry> make_damage(const fs::path& pending, const fs::path& processing, const std::string& tag) {
        std::vector<Entry> entries;
        auto add = [&](std::string what, const fs::path& where, const std::string& name) {
            const fs::path real = (where == pending ? pending_dir() : processing_dir()) / name;
            entries.push_back({std::move(what) + " (" + tag + ")", real, name});
        };
        std::string id = new_spool_id();
        write_item(pending / id, id, true, "\x01\x02 not json {{{");
        add("garbage meta.json", pending, id);

        id = new_spool_id();
        write_item(pending / id, id, true, "");
        write_file(pending / id / "meta.json", "");
        add("empty meta.json", pending, id);

        id = new_spool_id();
        write_item(pending / id, id, /*with_message=*/false);
        add("no message.eml", pending, id);

        id = new_spool_id();
        write_item(pending / id, id);
        ::chmod((pending / id / "meta.json").c_str(), 0);  // root reads it anyway: then it is simply delivered
        add("meta.json mode 000", pending, id);

        id = new_spool_id();
        write_file(pending / id / "message.eml", simple_message("meta is a dir"));
        fs::create_directories(pending / id / "meta.json");
        add("meta.json is a directory", pending, id);

        write_file(pending / ("stray-" + tag + ".txt"), "not a spool item\n");
        add("stray regular file", pending, "stray-" + tag + ".txt");

        write_file(pending / (".hidden-" + tag), "dotfile\n");
        add("dotfile", pending, ".hidden-" + tag);

        id = new_spool_id();
        write_item(processing / id, id, true, "garbage");
        add("garbage meta.json in processing/", processing, id);
        return entries;
    }

    enum class Outcome { none, dead, delivered, left_logged };

    Outcome outcome_of(const Entry& e, const std::map<std::string, int>& delivered, const std::string& log) {
        for (const auto& name : list_dir(dead_dir())) {
            if (name == e.id || dead_entry_id(name) == e.id) return Outcome::dead;
        }
        if (delivered.count(e.id)) return Outcome::delivered;
        std::error_code ec;
        if (fs::symlink_status(e.path, ec).type() != fs::file_type::not_found && log.find(e.id) != std::string::npos) {
            return Outcome::left_logged;
        }
        return Outcome::none;
    }
};

const char* describe(int outcome) {
    static const char* names[] = {"unresolved", "dead-lettered", "delivered", "left, logged"};
    return names[outcome];
}

TEST_F(SpoolDamage, Entries) {
    scenario_ = "SpoolDamage.Entries";
    std::vector<Entry> entries = make_damage(pending_dir(), processing_dir(), "at-start");
    // The same id in pending/ and processing/ (a copy an operator made, or a half-done move).
    const std::string twin = new_spool_id();
    write_item(pending_dir() / twin, twin);
    write_item(processing_dir() / twin, twin);
    entries.push_back({"same id in pending/ and processing/", pending_dir() / twin, twin});

    ASSERT_TRUE(start_daemon({{"RETRY_INTERVAL_MS", "200"}, {"RETRY_MAX_INTERVAL_MS", "1000"}}));
    Ledger& ledger = ledger_;
    // Both copies of the twin are whole, acknowledged messages: a log line is not enough,
    // it must be delivered (or at worst dead-lettered), like any acknowledged id.
    ledger.acked(twin);
    const std::string first = send_one(simple_message("first normal"));
    if (!first.empty()) ledger.acked(first);
    EXPECT_TRUE(request_for(first, Ms(15000)).has_value()) << "a normal message was not delivered next to the damage";

    // The same damage again while the daemon runs: built in a staging area on the same
    // filesystem, then renamed into the spool in one step each.
    const fs::path stage = tmp_.path() / "stage";
    const auto staged = make_damage(stage / "pending", stage / "processing", "while-running");
    for (const auto& e : staged) {
        const fs::path from = (e.path.parent_path() == pending_dir() ? stage / "pending" : stage / "processing") / e.id;
        fs::rename(from, e.path);
        entries.push_back(e);
    }

    std::map<std::string, int> outcome;
    auto all_resolved = [&] {
        const auto delivered = delivered_counts(hook_.requests());
        const std::string log = daemon().log();
        bool all = true;
        for (const auto& e : entries) {
            outcome[e.what] = static_cast<int>(outcome_of(e, delivered, log));
            all = all && outcome[e.what] != 0;
        }
        return all;
    };
    const bool resolved = wait_until(all_resolved, Ms(10000), Ms(100));
    all_resolved();
    for (const auto& e : entries) std::cout << "  " << e.what << ": " << describe(outcome[e.what]) << "\n";
    for (const auto& e : entries) {
        EXPECT_NE(outcome[e.what], 0) << e.what << " (" << e.path
                                      << ") was neither dead-lettered, delivered, nor left with a log line naming it";
    }
    EXPECT_TRUE(resolved);

    // The dispatcher keeps going.
    ASSERT_TRUE(daemon().running()) << "the daemon died on the damaged spool";
    const std::string after = send_one(simple_message("after the damage"));
    if (!after.empty()) ledger.acked(after);
    EXPECT_TRUE(request_for(after, Ms(15000)).has_value()) << "a normal message sent after the damage never arrived";
    EXPECT_TRUE(wait_until([&] { return list_dir(processing_dir()).empty() || !daemon().running(); }, Ms(15000)))
        << "processing/ still holds " << list_dir(processing_dir()).size() << " item(s)";

    const auto acked = ledger.ids();
    note_rss();
    stop_daemon();
    finish("SpoolDamage.Entries", acked);
}

TEST_F(SpoolDamage, OverlappingDirectoriesRefuseToStart) {
    scenario_ = "SpoolDamage.Overlap";
    const std::string id = new_spool_id();
    write_item(pending_dir() / id, id);
    const std::string eml = read_file(pending_dir() / id / "message.eml");
    const std::string meta = read_file(pending_dir() / id / "meta.json");

    const Env env = env_with({{"SPOOL_TMP_DIR", pending_dir().string()}});
    daemons_.push_back(std::make_unique<Daemon>(mxhook_binary(), env, tmp_.path() / "overlap.log"));
    Daemon& d = *daemons_.back();
    d.start();
    const auto status = d.wait_exit(Ms(5000));
    if (!status) {
        ADD_FAILURE() << "mxhook started with SPOOL_TMP_DIR equal to the pending directory (still running after 5 s)";
        note_rss();
        d.stop(Ms(5000));
    } else {
        EXPECT_FALSE(status->exited() && status->code() == 0) << status->describe();
    }
    const std::string log = d.log();
    std::size_t naming = 0;
    std::istringstream lines(log);
    for (std::string line; std::getline(lines, line);) {
        if (line.find("SPOOL_TMP_DIR") != std::string::npos) ++naming;
    }
    EXPECT_GE(naming, 1u) << "no line names SPOOL_TMP_DIR; output:\n" << log.substr(0, 2000);
    std::cout << "  output: " << log.substr(0, log.find('\n')) << "\n";

    // pending/ untouched.
    EXPECT_TRUE(fs::exists(pending_dir() / id)) << "the acknowledged item was removed from pending/";
    std::string eml_after, meta_after;
    try {
        eml_after = read_file(pending_dir() / id / "message.eml");
        meta_after = read_file(pending_dir() / id / "meta.json");
    } catch (const std::exception& e) {
        ADD_FAILURE() << e.what();
    }
    EXPECT_TRUE(eml_after == eml) << "message.eml changed";
    EXPECT_TRUE(meta_after == meta) << "meta.json changed";

    // The item counts as acknowledged: it must be there (not delivered, no daemon ran for it).
    Tally t = make_tally("SpoolDamage.Overlap", {}, hook_.requests(), dead_dir());
    t.acknowledged = 1;
    t.lost = fs::exists(pending_dir() / id / "message.eml") ? 0 : 1;
    t.peak_rss_kib = peak_rss_kib_;
    t.seconds = elapsed_seconds();
    print_row(t);
    row_printed_ = true;
}

TEST_F(SpoolDamage, SecondInstanceExitsAndTheFirstLosesNothing) {
    scenario_ = "SpoolDamage.SecondInstance";
    // A slow webhook keeps deliveries in processing/ while the second instance starts.
    hook_.reply_with([](const WebhookRequest&) {
        WebhookReply reply;
        reply.delay = Ms(1500);
        return reply;
    });
    ASSERT_TRUE(start_daemon({{"WEBHOOK_TIMEOUT_MS", "10000"}}));
    Ledger& ledger = ledger_;
    for (int i = 0; i < 5; ++i) {
        const std::string id = send_one(simple_message("before " + std::to_string(i)));
        if (!id.empty()) ledger.acked(id);
    }
    // A session of the first instance in the middle of DATA.
    auto mid = connect();
    ASSERT_EQ(mid->ehlo().code, 250);
    ASSERT_EQ(mid->cmd("MAIL FROM:<sender@example.org>").code, 250);
    ASSERT_EQ(mid->cmd("RCPT TO:<user@example.com>").code, 250);
    ASSERT_EQ(mid->cmd("DATA").code, 354);
    const std::string data = encode_data(sized_message("across the second start", 64 * 1024));
    const std::size_t half = data.size() / 2;
    ASSERT_TRUE(mid->send_raw(std::string_view(data).substr(0, half)));
    EXPECT_TRUE(wait_until([&] { return !tmp_items().empty(); }, Ms(5000)));
    wait_until([&] { return !list_dir(processing_dir()).empty(); }, Ms(5000));
    const std::size_t in_processing = list_dir(processing_dir()).size();
    const std::vector<std::string> in_data = tmp_items();  // the session's tmp/<id>
    const std::size_t in_tmp = in_data.size();

    // The second instance: same spool, its own port (so only the spool can be the reason).
    const Env env = env_with({});
    // Kept at the front: daemon() stays the first instance; TearDown stops and logs both.
    daemons_.insert(daemons_.begin(), std::make_unique<Daemon>(mxhook_binary(), env, tmp_.path() / "second.log"));
    Daemon& second = *daemons_.front();
    const auto t0 = Clock::now();
    second.start();
    const auto status = second.wait_exit(Ms(5000));
    const long took = std::chrono::duration_cast<Ms>(Clock::now() - t0).count();
    if (!status) {
        ADD_FAILURE() << "a second mxhook on the same SPOOL_DIR was still running 5 s later";
        second.stop(Ms(5000));
    } else {
        EXPECT_FALSE(status->exited() && status->code() == 0) << "second instance: " << status->describe();
        std::cout << "  second instance " << status->describe() << " after " << took << " ms\n";
    }
    const std::string log = second.log();
    const bool clear = log.find(spool_dir().string()) != std::string::npos ||
                       log.find("SPOOL_DIR") != std::string::npos || log.find("lock") != std::string::npos ||
                       log.find("in use") != std::string::npos;
    std::cout << "  second instance output: " << log.substr(0, 400) << "\n";
    EXPECT_TRUE(clear) << "the second instance's output does not say why (spool path, SPOOL_DIR, lock, in use):\n"
                       << log.substr(0, 2000);
    for (const auto& name : in_data) {
        EXPECT_TRUE(fs::exists(tmp_spool_dir() / name / "message.eml"))
            << "the second instance removed tmp/" << name << " of a session of the first";
    }
    std::cout << "  at the second start: " << in_processing << " in processing/, " << in_tmp << " in tmp/\n";

    // The first instance goes on: the message in DATA is accepted, new ones too.
    ASSERT_TRUE(daemon().running()) << "the first instance died";
    ASSERT_TRUE(mid->send_raw(std::string_view(data).substr(half)));
    const Reply reply = mid->read_reply();
    const std::string mid_id = queued_id(reply);
    EXPECT_FALSE(mid_id.empty()) << "the message in DATA across the second start was not accepted: " << reply;
    if (!mid_id.empty()) ledger.acked(mid_id);
    for (int i = 0; i < 5; ++i) {
        const std::string id = send_one(simple_message("after " + std::to_string(i)));
        if (!id.empty()) ledger.acked(id);
    }
    hook_.reply_with([](const WebhookRequest&) { return WebhookReply{}; });
    const auto acked = ledger.ids();
    EXPECT_TRUE(wait_settled(acked, Ms(30000)));
    note_rss();
    stop_daemon();
    const Tally t = finish("SpoolDamage.SecondInstance", acked);
    EXPECT_EQ(t.dead, 0u);
}

}  // namespace
}  // namespace faults
