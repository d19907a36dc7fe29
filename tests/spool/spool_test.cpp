// The spool's directory state machine, on a real filesystem in a fresh temporary directory
// per test. The tests run as root, so failures are provoked by putting things in the way
// (a regular file where a directory belongs) or, for fsync, by the fault-injection hook.

#include "mxhook/spool/adopt.hpp"
#include "mxhook/spool/spool.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>

namespace mxhook::spool {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

std::string slurp(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream out;
    out << in.rdbuf();
    return out.str();
}

void write_text(const fs::path& path, std::string_view text) {
    std::ofstream out(path, std::ios::binary);
    out << text;
}

mode_t mode_of(const fs::path& path) {
    struct stat st {};
    EXPECT_EQ(::lstat(path.c_str(), &st), 0) << path;
    return st.st_mode & 07777;
}

struct stat stat_of(const fs::path& path) {
    struct stat st {};
    EXPECT_EQ(::lstat(path.c_str(), &st), 0) << path;
    return st;
}

std::set<std::string> entries(const fs::path& dir) {
    std::set<std::string> names;
    for (const auto& entry : fs::directory_iterator(dir)) names.insert(entry.path().filename().string());
    return names;
}

Meta meta_for(const std::string& id) {
    Meta m;
    m.id = id;
    m.created_at = Clock::now();
    m.sender = "alice@example.org";
    m.recipients = {"bob@example.com"};
    m.subject = "hello";
    m.headers = {{"Subject", "hello"}};
    m.remote = {"192.0.2.10", "", "mail.example.org"};
    return m;
}

// The path fsync must fail for; read by a plain function because the hook is a function pointer.
fs::path g_failing_fsync;
int fail_selected_fsync(const fs::path& path) {
    return path == g_failing_fsync ? EIO : 0;
}

class SpoolTest : public ::testing::Test {
protected:
    void SetUp() override {
        std::string pattern = (fs::temp_directory_path() / "mxhook-spool-test-XXXXXX").string();
        ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
        root_ = pattern;
        spool_.emplace(Layout{root_ / "spool/tmp", root_ / "spool/pending", root_ / "spool/processing",
                              root_ / "spool/dead"});
        spool_->ensure_dirs();
    }
    void TearDown() override {
        fault_injection::set_fsync_hook(nullptr);
        fs::remove_all(root_);
    }

    Spool& spool() { return *spool_; }
    const Layout& layout() { return spool_->layout(); }

    // A message received and committed the way the SMTP session does it.
    std::string receive(std::string_view body = "Subject: hello\r\n\r\nbody\r\n") {
        const std::string id = new_id();
        TmpItem item = spool().create(id);
        spool().append(item, body);
        spool().commit(item, meta_for(id));
        return id;
    }

    fs::path root_;
    std::optional<Spool> spool_;
};

// --- ids and set-up --------------------------------------------------------------------------

TEST(NewId, IsUnixMillisecondsDashUuidV4) {
    const auto before = std::chrono::duration_cast<std::chrono::milliseconds>(
                            std::chrono::system_clock::now().time_since_epoch()).count();
    const std::string id = new_id();
    static const std::regex shape(
        "([0-9]+)-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}");
    std::smatch match;
    ASSERT_TRUE(std::regex_match(id, match, shape)) << id;
    const long long ms = std::stoll(match[1].str());
    EXPECT_GE(ms, before);
    EXPECT_LT(ms, before + 60'000);
}

TEST(NewId, IsUniqueAcrossThreads) {
    std::vector<std::vector<std::string>> per_thread(4);
    std::vector<std::thread> threads;
    for (auto& ids : per_thread) {
        threads.emplace_back([&ids] {
            for (int i = 0; i < 500; ++i) ids.push_back(new_id());
        });
    }
    for (auto& t : threads) t.join();
    std::set<std::string> all;
    for (const auto& ids : per_thread) all.insert(ids.begin(), ids.end());
    EXPECT_EQ(all.size(), 2000u);
}

TEST_F(SpoolTest, EnsureDirsCreatesPrivateDirectoriesAndIsIdempotent) {
    for (const fs::path& dir : {layout().tmp, layout().pending, layout().processing, layout().dead}) {
        EXPECT_TRUE(fs::is_directory(dir)) << dir;
        EXPECT_EQ(mode_of(dir), 0700u) << dir;
    }
    EXPECT_EQ(mode_of(root_ / "spool"), 0700u);  // parents too
    EXPECT_NO_THROW(spool().ensure_dirs());
}

TEST_F(SpoolTest, EnsureDirsNamesThePathThatFailed) {
    write_text(root_ / "blocker", "not a directory");
    Spool blocked(Layout{root_ / "blocker/tmp", root_ / "blocker/pending", root_ / "blocker/processing",
                         root_ / "blocker/dead"});
    try {
        blocked.ensure_dirs();
        FAIL() << "ensure_dirs succeeded";
    } catch (const SpoolError& e) {
        EXPECT_NE(std::string(e.what()).find((root_ / "blocker").string()), std::string::npos) << e.what();
    }
}

// --- receiving ----------------------------------------------------------------------------

TEST_F(SpoolTest, CommittedMessageIsInPendingWithBothFiles) {
    const std::string id = new_id();
    TmpItem item = spool().create(id);
    ASSERT_TRUE(item.valid());
    EXPECT_EQ(item.id(), id);
    EXPECT_EQ(item.dir(), layout().tmp / id);
    EXPECT_EQ(mode_of(layout().tmp / id), 0700u);

    spool().append(item, "Subject: hi\r\n\r\n");
    spool().append(item, "");
    spool().append(item, std::string(200'000, 'x'));
    const Meta meta = meta_for(id);
    spool().commit(item, meta);
    EXPECT_FALSE(item.valid());

    const fs::path dir = layout().pending / id;
    EXPECT_TRUE(entries(layout().tmp).empty());
    EXPECT_EQ(entries(layout().pending), std::set<std::string>{id});
    EXPECT_EQ(entries(dir), (std::set<std::string>{"message.eml", "meta.json"}));
    EXPECT_EQ(slurp(dir / "message.eml"), "Subject: hi\r\n\r\n" + std::string(200'000, 'x'));
    EXPECT_EQ(slurp(dir / "meta.json"), to_json(meta));
    EXPECT_EQ(mode_of(dir), 0700u);
    EXPECT_EQ(mode_of(dir / "message.eml"), 0600u);
    EXPECT_EQ(mode_of(dir / "meta.json"), 0600u);
}

TEST_F(SpoolTest, CreateRejectsIdsThatAreNotPlainNames) {
    for (const std::string bad : {"", ".", "..", "../escape", "a/b", ".hidden"}) {
        EXPECT_THROW(spool().create(bad), SpoolError) << bad;
    }
    EXPECT_TRUE(entries(layout().tmp).empty());
    EXPECT_FALSE(fs::exists(root_ / "spool/escape"));
}

TEST_F(SpoolTest, CreateOfAnExistingIdFails) {
    TmpItem first = spool().create("dup");
    EXPECT_THROW(spool().create("dup"), SpoolError);
    spool().discard(first);
}

TEST_F(SpoolTest, DiscardRemovesTheTmpItem) {
    TmpItem item = spool().create(new_id());
    spool().append(item, "partial");
    spool().discard(item);
    EXPECT_FALSE(item.valid());
    EXPECT_TRUE(entries(layout().tmp).empty());
    spool().discard(item);  // twice is harmless

    TmpItem empty;
    spool().discard(empty);  // a default item names nothing
    EXPECT_TRUE(fs::is_directory(layout().tmp));
}

TEST_F(SpoolTest, AppendAndCommitOnAClosedItemThrow) {
    TmpItem item;
    EXPECT_THROW(spool().append(item, "x"), SpoolError);
    EXPECT_THROW(spool().commit(item, meta_for("x")), SpoolError);
}

TEST_F(SpoolTest, CommitRefusesMetaForAnotherId) {
    TmpItem item = spool().create("one");
    EXPECT_THROW(spool().commit(item, meta_for("two")), SpoolError);
    spool().discard(item);
    EXPECT_TRUE(entries(layout().pending).empty());
}

TEST_F(SpoolTest, TmpItemMovesOwnership) {
    TmpItem a = spool().create("moved");
    TmpItem b = std::move(a);
    EXPECT_FALSE(a.valid());  // NOLINT(bugprone-use-after-move): checking the moved-from state
    ASSERT_TRUE(b.valid());
    TmpItem c;
    c = std::move(b);
    spool().append(c, "x");
    spool().commit(c, meta_for("moved"));
    EXPECT_EQ(slurp(layout().pending / "moved/message.eml"), "x");
}

TEST_F(SpoolTest, FailedRenameThrowsAndDiscardLeavesNothing) {
    // pending/ replaced by a regular file: the publishing rename fails.
    fs::remove(layout().pending);
    write_text(layout().pending, "in the way");

    const std::string id = new_id();
    TmpItem item = spool().create(id);
    spool().append(item, "body");
    EXPECT_THROW(spool().commit(item, meta_for(id)), SpoolError);
    spool().discard(item);
    EXPECT_TRUE(entries(layout().tmp).empty());
    EXPECT_EQ(slurp(layout().pending), "in the way");
}

TEST_F(SpoolTest, FailedFsyncOfPendingPullsTheItemBack) {
    // The rename succeeded but was not made durable: the client hears 451 and retries, so this
    // copy must not stay visible to the dispatcher.
    g_failing_fsync = layout().pending;
    fault_injection::set_fsync_hook(&fail_selected_fsync);

    const std::string id = new_id();
    TmpItem item = spool().create(id);
    spool().append(item, "body");
    try {
        spool().commit(item, meta_for(id));
        FAIL() << "commit succeeded";
    } catch (const SpoolError& e) {
        EXPECT_EQ(e.code(), std::error_code(EIO, std::system_category()));
        const std::string what = e.what();
        EXPECT_NE(what.find("fsync " + layout().pending.string()), std::string::npos) << what;
    }
    EXPECT_TRUE(entries(layout().pending).empty());
    spool().discard(item);
    EXPECT_TRUE(entries(layout().tmp).empty());
}

TEST_F(SpoolTest, FailedFsyncOfTheMessageFailsTheCommit) {
    const std::string id = new_id();
    g_failing_fsync = layout().tmp / id / "message.eml";
    fault_injection::set_fsync_hook(&fail_selected_fsync);

    TmpItem item = spool().create(id);
    spool().append(item, "body");
    EXPECT_THROW(spool().commit(item, meta_for(id)), SpoolError);
    spool().discard(item);
    EXPECT_TRUE(entries(layout().tmp).empty());
    EXPECT_TRUE(entries(layout().pending).empty());
}

// What the fsync hook saw during one commit: each path in order and, for pending/, whether
// the item had already been renamed into it (the fsync must make that rename durable).
struct FsyncRecord {
    fs::path path;
    bool item_in_pending = false;
};
std::vector<FsyncRecord> g_fsyncs;
fs::path g_pending_item;  // pending/<id> of the commit being recorded
int record_fsync(const fs::path& path) {
    // Called on the committing thread only: GroupSync runs the fsync on its caller's thread.
    struct stat st {};
    g_fsyncs.push_back({path, ::lstat(g_pending_item.c_str(), &st) == 0});
    return 0;
}

TEST_F(SpoolTest, CommitFsyncsMessageThenMetaThenItemDirThenPendingAfterTheRename) {
    const std::string id = new_id();
    g_fsyncs.clear();
    g_pending_item = layout().pending / id;
    TmpItem item = spool().create(id);
    spool().append(item, "body");
    fault_injection::set_fsync_hook(&record_fsync);
    spool().commit(item, meta_for(id));
    fault_injection::set_fsync_hook(nullptr);

    const std::vector<fs::path> expected{layout().tmp / id / "message.eml", layout().tmp / id / "meta.json",
                                         layout().tmp / id, layout().pending};
    std::vector<fs::path> seen;
    for (const auto& record : g_fsyncs) seen.push_back(record.path);
    ASSERT_EQ(seen, expected);
    for (std::size_t i = 0; i + 1 < g_fsyncs.size(); ++i) {
        EXPECT_FALSE(g_fsyncs[i].item_in_pending) << g_fsyncs[i].path << " was fsynced after the rename";
    }
    EXPECT_TRUE(g_fsyncs.back().item_in_pending) << "pending/ was fsynced before the rename into it";
    EXPECT_EQ(slurp(layout().pending / id / "message.eml"), "body");
}

// A failed fsync of the item's meta.json or of tmp/<id>/ (before the rename) fails the
// commit with an error naming the path, and discard() leaves nothing anywhere.
TEST_F(SpoolTest, FailedFsyncBeforeTheRenameFailsTheCommitAndLeavesNothing) {
    for (const std::string target : {"meta.json", "tmp/<id>/"}) {
        SCOPED_TRACE(target);
        const std::string id = new_id();
        g_failing_fsync = target == "meta.json" ? layout().tmp / id / "meta.json" : layout().tmp / id;
        fault_injection::set_fsync_hook(&fail_selected_fsync);

        TmpItem item = spool().create(id);
        spool().append(item, "body");
        try {
            spool().commit(item, meta_for(id));
            ADD_FAILURE() << "commit succeeded although fsync of " << target << " failed";
        } catch (const SpoolError& e) {
            EXPECT_EQ(e.code(), std::error_code(EIO, std::system_category()));
            const std::string what = e.what();
            EXPECT_NE(what.find("fsync " + g_failing_fsync.string()), std::string::npos) << what;
        }
        fault_injection::set_fsync_hook(nullptr);
        EXPECT_TRUE(entries(layout().pending).empty());
        spool().discard(item);
        EXPECT_TRUE(entries(layout().tmp).empty());
        EXPECT_TRUE(entries(layout().pending).empty());
    }
}

TEST_F(SpoolTest, ConcurrentCommitsAllLand) {
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([this] {
            for (int i = 0; i < 10; ++i) receive();
        });
    }
    for (auto& t : threads) t.join();
    EXPECT_EQ(spool().list_pending().size(), 40u);
    EXPECT_TRUE(entries(layout().tmp).empty());
}

// --- recovery -------------------------------------------------------------------------------

TEST_F(SpoolTest, RecoverRequeuesProcessingAndClearsTmp) {
    const std::string a = receive("a");
    const std::string b = receive("b");
    ASSERT_TRUE(spool().claim(a));
    ASSERT_TRUE(spool().claim(b));
    TmpItem unfinished = spool().create(new_id());
    spool().append(unfinished, "half a message");
    write_text(layout().tmp / "stray-file", "x");

    const RecoveryReport report = spool().recover();
    EXPECT_EQ(report.requeued, 2u);
    EXPECT_EQ(report.removed_tmp, 1u);
    EXPECT_EQ(report.removed_tmp_names, std::vector<std::string>{unfinished.id()});
    // Not a name the spool makes: a misconfigured SPOOL_TMP_DIR must not cost its files.
    EXPECT_EQ(report.foreign_tmp_names, std::vector<std::string>{"stray-file"});
    EXPECT_TRUE(entries(layout().processing).empty());
    EXPECT_EQ(entries(layout().tmp), (std::set<std::string>{"stray-file"}));
    EXPECT_EQ(entries(layout().pending), (std::set<std::string>{a, b}));
    EXPECT_EQ(slurp(layout().pending / a / "message.eml"), "a");
}

// Several in flight at the crash: none is blamed, all are suspects to retry alone.
// After a crash on a filesystem without a journal, a rename out of tmp/ can survive in the
// new directory while the old name is still in tmp/: two names for one item directory.
// Recovery must not empty the acknowledged item through the stale name. A bind mount makes
// such a second name (a directory cannot be hard-linked); without the right to mount (e.g.
// in a container build) the test is skipped.
TEST_F(SpoolTest, RecoverLeavesATmpNameOfAnAcknowledgedItemAlone) {
    const std::string id = receive("acknowledged");
    const fs::path alias = layout().tmp / (new_id() + ".delivered");
    fs::create_directory(alias);
    if (::mount((layout().pending / id).c_str(), alias.c_str(), nullptr, MS_BIND, nullptr) != 0) {
        GTEST_SKIP() << "cannot bind-mount here: " << std::strerror(errno);
    }
    struct Unmount {
        fs::path at;
        ~Unmount() { ::umount2(at.c_str(), MNT_DETACH); }
    } unmount{alias};
    TmpItem unfinished = spool().create(new_id());  // an ordinary leftover, removed as before
    spool().append(unfinished, "half");
    RecoveryReport report;
    EXPECT_NO_THROW(report = spool().recover());

    EXPECT_EQ(report.aliased_tmp_names, std::vector<std::string>{alias.filename().string()});
    EXPECT_EQ(report.removed_tmp_names, std::vector<std::string>{unfinished.id()});
    EXPECT_EQ(slurp(layout().pending / id / "message.eml"), "acknowledged");
    EXPECT_TRUE(fs::exists(layout().pending / id / "meta.json"));
}

TEST_F(SpoolTest, RecoverCountsNoInterruptionWhenSeveralWereInFlight) {
    std::vector<std::string> ids;
    for (int i = 0; i < 8; ++i) ids.push_back(receive("m"));
    for (const auto& id : ids) ASSERT_TRUE(spool().claim(id));
    for (int crash = 0; crash < 3; ++crash) {
        const RecoveryReport report = spool().recover(3);
        EXPECT_EQ(report.poisoned, 0u);
        EXPECT_EQ(report.requeued, 8u);
        std::vector<std::string> sorted = ids;
        std::sort(sorted.begin(), sorted.end());
        EXPECT_EQ(report.suspects, sorted);
        for (const auto& id : ids) {
            EXPECT_EQ(spool().read_pending_meta(id).interrupted_attempts, 0) << id;
            ASSERT_TRUE(spool().claim(id));
        }
    }
    EXPECT_TRUE(entries(layout().dead).empty());
}

// Alone in flight at the crash: that item counts it, and at the limit it is set aside.
TEST_F(SpoolTest, RecoverBlamesAnItemThatWasAloneInFlight) {
    const std::string poison = receive("poison");
    for (int crash = 1; crash <= 2; ++crash) {
        ASSERT_TRUE(spool().claim(poison));
        const RecoveryReport report = spool().recover(3);
        EXPECT_EQ(report.suspects, std::vector<std::string>{poison});
        EXPECT_EQ(spool().read_pending_meta(poison).interrupted_attempts, crash);
    }
    ASSERT_TRUE(spool().claim(poison));
    const RecoveryReport report = spool().recover(3);
    EXPECT_EQ(report.poisoned, 1u);
    EXPECT_TRUE(report.suspects.empty());
    EXPECT_EQ(entries(layout().dead), (std::set<std::string>{poison}));
    EXPECT_NE(slurp(layout().dead / poison / "error.txt").find("interrupted 3 times"), std::string::npos);
}

TEST(SpoolNamesTest, OnlyItemNamesAreItemNames) {
    EXPECT_TRUE(is_item_name(new_id()));
    EXPECT_TRUE(is_item_name(new_id() + ".delivered"));
    EXPECT_TRUE(is_item_name("1732554194123-4F1C2D3E-AAAA-4BBB-8CCC-0123456789AB.1"));  // Haraka's
    for (const char* name : {"", "stray-file", ".lock", "systemd-private-abc", "1732554194123-",
                             "1732554194123-not-a-uuid", "12-0f8e1c2d-aaaa-4bbb-8ccc-0123456789ab",
                             "1732554194123-0f8e1c2d-aaaa-4bbb-8ccc-0123456789ab.tmp",
                             "1732554194123-0f8e1c2d-aaaa-4bbb-8ccc-0123456789abc"}) {
        EXPECT_FALSE(is_item_name(name)) << name;
    }
}

class SpoolLayoutTest : public SpoolTest {
protected:
    std::vector<NamedDir> named() {
        return {{"SPOOL_TMP_DIR", layout().tmp},
                {"SPOOL_PENDING_DIR", layout().pending},
                {"SPOOL_PROCESSING_DIR", layout().processing},
                {"SPOOL_DEAD_DIR", layout().dead}};
    }
    static std::string error_of(const std::vector<NamedDir>& dirs) {
        try {
            check_layout(dirs);
        } catch (const LayoutError& e) {
            return e.what();
        }
        return "";
    }
};

TEST_F(SpoolLayoutTest, TheDefaultLayoutPasses) { EXPECT_EQ(error_of(named()), ""); }

TEST_F(SpoolLayoutTest, OverlapsNameTheVariable) {
    auto dirs = named();
    dirs[0].path = layout().pending;  // SPOOL_TMP_DIR = the pending directory
    EXPECT_EQ(error_of(dirs).rfind("SPOOL_PENDING_DIR: ", 0), 0u) << error_of(dirs);
    EXPECT_NE(error_of(dirs).find("same directory as SPOOL_TMP_DIR"), std::string::npos);

    dirs = named();
    dirs[0].path = layout().tmp.parent_path();  // SPOOL_TMP_DIR = SPOOL_DIR: the others inside it
    EXPECT_EQ(error_of(dirs).rfind("SPOOL_PENDING_DIR: ", 0), 0u) << error_of(dirs);
    EXPECT_NE(error_of(dirs).find("inside SPOOL_TMP_DIR"), std::string::npos);

    dirs = named();
    fs::create_directories(layout().pending / "nested");
    dirs[3].path = layout().pending / "nested";
    EXPECT_EQ(error_of(dirs).rfind("SPOOL_DEAD_DIR: ", 0), 0u) << error_of(dirs);

    dirs = named();  // the same directory through a symlink
    fs::create_directory_symlink(layout().processing, root_ / "alias");
    dirs[3].path = root_ / "alias";
    EXPECT_EQ(error_of(dirs).rfind("SPOOL_DEAD_DIR: ", 0), 0u) << error_of(dirs);

    dirs = named();
    dirs[2].path = root_ / "missing";
    EXPECT_EQ(error_of(dirs).rfind("SPOOL_PROCESSING_DIR: ", 0), 0u) << error_of(dirs);
}

TEST_F(SpoolLayoutTest, AnotherFilesystemIsRefused) {
    struct stat here {}, shm {};
    if (::stat(layout().tmp.c_str(), &here) != 0 || ::stat("/dev/shm", &shm) != 0 || here.st_dev == shm.st_dev) {
        GTEST_SKIP() << "no second filesystem at /dev/shm";
    }
    auto dirs = named();
    dirs[3].path = "/dev/shm";
    EXPECT_NE(error_of(dirs).find("another filesystem"), std::string::npos) << error_of(dirs);
}

TEST_F(SpoolLayoutTest, OnlyOneInstanceLockAtATime) {
    const fs::path dir = root_ / "spool";
    std::optional<InstanceLock> first(std::in_place, dir);
    try {
        InstanceLock second(dir);
        ADD_FAILURE() << "a second lock on the same spool was granted";
    } catch (const LayoutError& e) {
        EXPECT_EQ(e.variable(), "SPOOL_DIR");
        EXPECT_NE(std::string(e.what()).find("in use by another mxhook process (pid " + std::to_string(::getpid())),
                  std::string::npos)
            << e.what();
    }
    first.reset();
    EXPECT_NO_THROW(InstanceLock again(dir));
}

// A graceful stop: processing/ back to pending/ as it is (no interruption counted), one
// fsync of pending/ for all; a name already taken in pending/ stays in processing/.
TEST_F(SpoolTest, UnclaimAllHandsProcessingBackUnchanged) {
    const std::string a = receive("a");
    const std::string b = receive("b");
    const std::string taken = receive("taken");
    ASSERT_TRUE(spool().claim(a));
    ASSERT_TRUE(spool().claim(b));
    ASSERT_TRUE(spool().claim(taken));
    std::filesystem::create_directory(layout().pending / taken);
    const std::string meta_before = slurp(layout().processing / a / "meta.json");
    g_fsyncs.clear();
    fault_injection::set_fsync_hook(&record_fsync);

    EXPECT_EQ(spool().unclaim_all(), 2u);
    fault_injection::set_fsync_hook(nullptr);
    EXPECT_EQ(entries(layout().processing), (std::set<std::string>{taken}));
    EXPECT_EQ(entries(layout().pending), (std::set<std::string>{a, b, taken}));
    EXPECT_EQ(slurp(layout().pending / a / "meta.json"), meta_before);
    EXPECT_EQ(slurp(layout().pending / b / "message.eml"), "b");
    ASSERT_EQ(g_fsyncs.size(), 1u);
    EXPECT_EQ(g_fsyncs[0].path, layout().pending);
}

// The same id in processing/ and pending/: one is a stale copy. The pending/ one is kept
// for delivery, the other set aside in dead/ with error.txt (never lost, never stuck).
TEST_F(SpoolTest, RecoverSetsAsideTheProcessingCopyOfAnIdAlsoInPending) {
    const std::string id = receive("pending copy");
    fs::create_directory(layout().processing / id);
    write_text(layout().processing / id / "message.eml", "processing copy");

    const RecoveryReport report = spool().recover();
    EXPECT_EQ(report.requeued, 0u);
    EXPECT_EQ(report.duplicates, std::vector<std::string>{id});
    EXPECT_EQ(slurp(layout().pending / id / "message.eml"), "pending copy");
    EXPECT_FALSE(fs::exists(layout().processing / id));
    EXPECT_EQ(slurp(layout().dead / id / "message.eml"), "processing copy");
    EXPECT_NE(slurp(layout().dead / id / "error.txt").find("the same id was in pending/ too"), std::string::npos);
}

// Never replaced by an empty directory in the way (plain rename(2) silently would): the
// whole copy in processing/ is the one kept, the empty one goes to dead/.
TEST_F(SpoolTest, RecoverKeepsTheWholeCopyWhenPendingHasABrokenOne) {
    const std::string id = receive("in flight");
    ASSERT_TRUE(spool().claim(id));
    fs::create_directory(layout().pending / id);
    const RecoveryReport report = spool().recover();
    EXPECT_EQ(report.duplicates, std::vector<std::string>{id});
    EXPECT_EQ(report.suspects, std::vector<std::string>{id});
    EXPECT_EQ(slurp(layout().pending / id / "message.eml"), "in flight");
    EXPECT_FALSE(fs::exists(layout().processing / id));
    EXPECT_TRUE(fs::exists(layout().dead / id / "error.txt"));
}

// --- dispatching --------------------------------------------------------------------------

TEST_F(SpoolTest, ListPendingReturnsOnlyItemDirectories) {
    const std::string a = receive();
    const std::string b = receive();
    write_text(layout().pending / "a-file", "x");
    fs::create_directory(layout().pending / ".hidden");
    fs::create_directory_symlink(layout().pending / a, layout().pending / "link");

    const auto ids = spool().list_pending();
    EXPECT_EQ(std::set<std::string>(ids.begin(), ids.end()), (std::set<std::string>{a, b}));
    // The rest, for the log.
    const auto strays = spool().list_pending_strays();
    EXPECT_EQ(std::set<std::string>(strays.begin(), strays.end()),
              (std::set<std::string>{"a-file", ".hidden", "link"}));
}

TEST_F(SpoolTest, ClaimMovesToProcessing) {
    const std::string id = receive("the message");
    EXPECT_EQ(spool().read_pending_meta(id).id, id);
    ASSERT_TRUE(spool().claim(id));
    EXPECT_TRUE(entries(layout().pending).empty());
    EXPECT_EQ(spool().processing_message(id), layout().processing / id / "message.eml");
    EXPECT_EQ(slurp(spool().processing_message(id)), "the message");
    EXPECT_EQ(spool().read_processing_meta(id).recipients, std::vector<std::string>{"bob@example.com"});
}

TEST_F(SpoolTest, ClaimOfAMissingIdReturnsFalse) {
    EXPECT_FALSE(spool().claim("no-such-id"));
    const std::string id = receive();
    ASSERT_TRUE(spool().claim(id));
    EXPECT_FALSE(spool().claim(id));  // someone else took it
}

TEST_F(SpoolTest, ClaimThrowsWhenProcessingIsMissingRatherThanLoseTheItem) {
    const std::string id = receive();
    fs::remove(layout().processing);
    EXPECT_THROW(spool().claim(id), SpoolError);
    EXPECT_EQ(spool().list_pending(), std::vector<std::string>{id});
}

TEST_F(SpoolTest, ReleaseRewritesMetaAndReturnsToPending) {
    const std::string id = receive("keep me");
    ASSERT_TRUE(spool().claim(id));
    Meta meta = spool().read_processing_meta(id);
    meta.attempts += 1;
    meta.last_attempt_at = Clock::now();
    meta.next_attempt_at = *meta.last_attempt_at + 5min;
    meta.last_error = "retryable webhook failure";
    spool().release(id, meta);

    EXPECT_TRUE(entries(layout().processing).empty());
    EXPECT_EQ(entries(layout().pending / id), (std::set<std::string>{"message.eml", "meta.json"}));
    const Meta back = spool().read_pending_meta(id);
    EXPECT_EQ(back.attempts, 1);
    EXPECT_EQ(back.next_attempt_at, parse_iso8601(iso8601(*meta.next_attempt_at)));
    EXPECT_EQ(back.last_error, "retryable webhook failure");
    EXPECT_EQ(slurp(layout().pending / id / "message.eml"), "keep me");
    EXPECT_EQ(mode_of(layout().pending / id / "meta.json"), 0600u);
}

TEST_F(SpoolTest, DeadLetterWritesErrorTxtAndMeta) {
    const std::string id = receive();
    ASSERT_TRUE(spool().claim(id));
    Meta meta = spool().read_processing_meta(id);
    meta.last_error = "webhook returned 406";
    spool().dead_letter(id, &meta, "webhook returned 406");

    const fs::path dir = layout().dead / id;
    EXPECT_TRUE(entries(layout().processing).empty());
    EXPECT_EQ(entries(dir), (std::set<std::string>{"error.txt", "message.eml", "meta.json"}));
    EXPECT_EQ(slurp(dir / "error.txt"), "webhook returned 406\n");
    EXPECT_EQ(parse_meta(slurp(dir / "meta.json")).last_error, "webhook returned 406");
}

TEST_F(SpoolTest, DeadLetterWithoutMetaOrReasonOnlyMoves) {
    const std::string id = receive();
    write_text(layout().pending / id / "meta.json", "{ broken");
    ASSERT_TRUE(spool().claim(id));
    spool().dead_letter(id, nullptr, "");
    EXPECT_EQ(entries(layout().dead / id), (std::set<std::string>{"message.eml", "meta.json"}));
    EXPECT_EQ(slurp(layout().dead / id / "meta.json"), "{ broken");
}

TEST_F(SpoolTest, DeadLetterNeverOverwritesAnEarlierDeadItem) {
    fs::create_directories(layout().dead / "same");
    write_text(layout().dead / "same/error.txt", "first\n");
    fs::create_directories(layout().dead / "same.1");
    write_text(layout().dead / "same.1/error.txt", "second\n");

    TmpItem item = spool().create("same");
    spool().commit(item, meta_for("same"));
    ASSERT_TRUE(spool().claim("same"));
    spool().dead_letter("same", nullptr, "third");

    EXPECT_EQ(slurp(layout().dead / "same/error.txt"), "first\n");
    EXPECT_EQ(slurp(layout().dead / "same.1/error.txt"), "second\n");
    EXPECT_EQ(slurp(layout().dead / "same.2/error.txt"), "third\n");
}

TEST_F(SpoolTest, RemoveTakesTheDeliveredItemOutOfProcessingAndKeepsASmallOneForReuse) {
    const std::string id = receive();
    ASSERT_TRUE(spool().claim(id));
    spool().remove(id);
    EXPECT_TRUE(entries(layout().processing).empty());
    EXPECT_TRUE(entries(layout().pending).empty());
    EXPECT_EQ(entries(layout().tmp), std::set<std::string>{id + ".delivered"});
    EXPECT_NO_THROW(spool().remove(id));  // already gone

    spool().drop_recycled();  // a graceful stop leaves nothing in tmp/
    EXPECT_TRUE(entries(layout().tmp).empty());
}

TEST_F(SpoolTest, ALargeDeliveredItemIsRemovedAtOnce) {
    const std::string id = receive(std::string(Spool::kRecycleMaxBytes + 1, 'x'));
    ASSERT_TRUE(spool().claim(id));
    spool().remove(id);
    EXPECT_TRUE(entries(layout().tmp).empty());
    EXPECT_TRUE(entries(layout().processing).empty());
}

TEST_F(SpoolTest, RecycledItemHoldsOnlyTheNewMessageAndMeta) {
    // The old message and meta are longer than the new ones: nothing of them may remain.
    const std::string old_id = receive("Subject: old\r\n\r\n" + std::string(5000, 'o'));
    const ino_t old_inode = stat_of(layout().pending / old_id / "message.eml").st_ino;
    ASSERT_TRUE(spool().claim(old_id));
    spool().remove(old_id);

    const std::string id = new_id();
    g_fsyncs.clear();
    g_pending_item = layout().pending / id;
    TmpItem item = spool().create(id);
    EXPECT_TRUE(item.recycled());
    EXPECT_EQ(item.dir(), layout().tmp / id);
    spool().append(item, "Subject: new\r\n\r\n");
    spool().append(item, "short");
    spool().seal(item);  // what the session does before reading the message back
    EXPECT_EQ(slurp(layout().tmp / id / "message.eml"), "Subject: new\r\n\r\nshort");
    Meta meta = meta_for(id);
    meta.recipients = {"<a@example.com>"};
    fault_injection::set_fsync_hook(&record_fsync);
    spool().commit(item, meta);
    fault_injection::set_fsync_hook(nullptr);

    const fs::path dir = layout().pending / id;
    EXPECT_TRUE(entries(layout().tmp).empty());
    EXPECT_EQ(entries(dir), (std::set<std::string>{"message.eml", "meta.json"}));
    EXPECT_EQ(slurp(dir / "message.eml"), "Subject: new\r\n\r\nshort");
    EXPECT_EQ(slurp(dir / "meta.json"), to_json(meta));
    EXPECT_EQ(stat_of(dir / "message.eml").st_ino, old_inode) << "the delivered item's file was not reused";
    EXPECT_EQ(mode_of(dir), 0700u);
    EXPECT_EQ(mode_of(dir / "message.eml"), 0600u);
    EXPECT_EQ(mode_of(dir / "meta.json"), 0600u);
    // Both files are fsynced before the rename and pending/ after it; the item directory's
    // entries did not change, so it needs no fsync.
    std::vector<fs::path> seen;
    for (const auto& record : g_fsyncs) seen.push_back(record.path);
    EXPECT_EQ(seen, (std::vector<fs::path>{layout().tmp / id / "message.eml", layout().tmp / id / "meta.json",
                                           layout().pending}));
}

TEST_F(SpoolTest, DiscardOfARecycledItemRemovesIt) {
    const std::string old_id = receive();
    ASSERT_TRUE(spool().claim(old_id));
    spool().remove(old_id);
    TmpItem item = spool().create(new_id());
    ASSERT_TRUE(item.recycled());
    spool().append(item, "x");
    spool().discard(item);
    EXPECT_TRUE(entries(layout().tmp).empty());
    EXPECT_TRUE(entries(layout().pending).empty());
}

TEST_F(SpoolTest, TheRecycleBinIsBounded) {
    std::vector<std::string> ids;
    for (std::size_t i = 0; i < Spool::kRecycleItems + 3; ++i) ids.push_back(receive());
    for (const auto& id : ids) {
        ASSERT_TRUE(spool().claim(id));
        spool().remove(id);
    }
    EXPECT_EQ(entries(layout().tmp).size(), Spool::kRecycleItems);
    // Each create takes one, then creates afresh once the bin is empty.
    std::size_t recycled = 0;
    for (std::size_t i = 0; i < Spool::kRecycleItems + 2; ++i) {
        TmpItem item = spool().create(new_id());
        recycled += item.recycled() ? 1 : 0;
        spool().discard(item);
    }
    EXPECT_EQ(recycled, Spool::kRecycleItems);
    EXPECT_TRUE(entries(layout().tmp).empty());
}

TEST_F(SpoolTest, AdoptsAnItemWrittenByHarakaWebhook) {
    const std::string id = "1732554194123-5D6F1A2B-3C4D-4E5F-8A9B-0C1D2E3F4A5B";
    const fs::path dir = layout().pending / id;
    fs::create_directory(dir);  // haraka-webhook's directories are 0755: fine
    write_text(dir / "message.eml", "From: alice@example.org\r\nSubject: hi\r\n\r\nhello\r\n");
    const std::string meta_text = R"({
  "id": "1732554194123-5D6F1A2B-3C4D-4E5F-8A9B-0C1D2E3F4A5B",
  "createdAt": "2024-11-25T17:03:14.123Z",
  "attempts": 1,
  "nextAttemptAt": "2024-11-25T17:04:14.123Z",
  "sender": "<alice@example.org>",
  "recipients": [
    "bob@example.com"
  ],
  "from": "alice@example.org",
  "subject": "hi",
  "headers": [
    [
      "From",
      "alice@example.org"
    ],
    [
      "Subject",
      "hi"
    ]
  ],
  "remote": {
    "ip": "192.0.2.10",
    "host": "",
    "helo": "mail.example.org"
  },
  "lastAttemptAt": "2024-11-25T17:03:44.000Z",
  "lastError": "retryable webhook failure"
}
)";
    write_text(dir / "meta.json", meta_text);

    EXPECT_EQ(spool().list_pending(), std::vector<std::string>{id});
    const Meta meta = spool().read_pending_meta(id);
    EXPECT_EQ(meta.attempts, 1);
    EXPECT_EQ(bare_address(meta.sender), "alice@example.org");
    ASSERT_TRUE(spool().claim(id));
    EXPECT_EQ(slurp(spool().processing_message(id)),
              "From: alice@example.org\r\nSubject: hi\r\n\r\nhello\r\n");
    // Released unchanged, it is written back byte for byte.
    spool().release(id, spool().read_processing_meta(id));
    EXPECT_EQ(slurp(dir / "meta.json"), meta_text);
}

TEST_F(SpoolTest, ReadingABrokenMetaThrowsRuntimeError) {
    const std::string id = receive();
    write_text(layout().pending / id / "meta.json", R"({"id": "x", "createdAt": "2024-11-25T17:03:14Z"})");
    try {
        spool().read_pending_meta(id);
        FAIL() << "parsed";
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find("recipients"), std::string::npos) << e.what();
    }
    fs::remove(layout().pending / id / "meta.json");
    EXPECT_THROW(spool().read_pending_meta(id), SpoolError);
}


// --- several items for one message (WEBHOOK_RECIPIENT_MODE=each) ------------------------------

// The per-recipient metas the SMTP session builds: the first keeps the item's id.
std::vector<Meta> per_recipient_metas(const std::string& id, const std::vector<std::string>& ids,
                                      const std::vector<std::string>& recipients) {
    std::vector<Meta> metas;
    for (std::size_t i = 0; i < ids.size(); ++i) {
        Meta m = meta_for(i == 0 ? id : ids[i]);
        m.recipients = {recipients[i]};
        metas.push_back(std::move(m));
    }
    return metas;
}

std::vector<std::string> read_pending_meta_recipients(const Spool& spool, const std::string& id) {
    return spool.read_pending_meta(id).recipients;
}

TEST_F(SpoolTest, CommitWithThreeMetasPublishesThreeItemsSharingOneMessage) {
    const std::string id = new_id();
    const std::vector<std::string> ids{id, new_id(), new_id()};
    TmpItem item = spool().create(id);
    const std::string body = "Subject: each\r\n\r\n" + std::string(100'000, 'e');
    spool().append(item, body);
    const auto metas = per_recipient_metas(id, ids, {"a@example.com", "b@example.com", "c@example.com"});
    spool().commit(item, metas);
    EXPECT_FALSE(item.valid());

    EXPECT_TRUE(entries(layout().tmp).empty());
    EXPECT_EQ(entries(layout().pending), (std::set<std::string>(ids.begin(), ids.end())));
    const struct stat first = stat_of(layout().pending / id / "message.eml");
    EXPECT_EQ(first.st_nlink, 3u);
    for (std::size_t i = 0; i < ids.size(); ++i) {
        const fs::path dir = layout().pending / ids[i];
        EXPECT_EQ(entries(dir), (std::set<std::string>{"message.eml", "meta.json"})) << ids[i];
        EXPECT_EQ(slurp(dir / "meta.json"), to_json(metas[i])) << ids[i];
        EXPECT_EQ(slurp(dir / "message.eml"), body) << ids[i];
        const struct stat st = stat_of(dir / "message.eml");
        EXPECT_EQ(st.st_ino, first.st_ino) << ids[i] << ": a copy, not a hard link";
        EXPECT_EQ(st.st_dev, first.st_dev);
        EXPECT_EQ(st.st_nlink, 3u) << ids[i];
        EXPECT_EQ(mode_of(dir), 0700u) << ids[i];
        EXPECT_EQ(mode_of(dir / "meta.json"), 0600u) << ids[i];
        EXPECT_EQ(read_pending_meta_recipients(spool(), ids[i]), metas[i].recipients);
    }

    // Each item lives on its own: delivering one leaves the others' message intact.
    ASSERT_TRUE(spool().claim(ids[1]));
    spool().remove(ids[1]);
    EXPECT_EQ(slurp(layout().pending / id / "message.eml"), body);
    EXPECT_EQ(stat_of(layout().pending / ids[2] / "message.eml").st_nlink, 2u);
    // A shared message.eml is never recycled (it would be overwritten under the others).
    EXPECT_TRUE(entries(layout().tmp).empty());
}

TEST_F(SpoolTest, CommitWithOneMetaInAVectorIsAPlainCommit) {
    const std::string id = new_id();
    TmpItem item = spool().create(id);
    spool().append(item, "x");
    spool().commit(item, std::vector<Meta>{meta_for(id)});
    EXPECT_EQ(entries(layout().pending), std::set<std::string>{id});
    EXPECT_EQ(stat_of(layout().pending / id / "message.eml").st_nlink, 1u);
    EXPECT_TRUE(entries(layout().tmp).empty());
}

TEST_F(SpoolTest, CommitWithSeveralMetasRefusesBadInput) {
    const std::string id = new_id();
    TmpItem item = spool().create(id);
    spool().append(item, "x");
    EXPECT_THROW(spool().commit(item, std::vector<Meta>{}), SpoolError);
    EXPECT_THROW(spool().commit(item, std::vector<Meta>{meta_for(new_id()), meta_for(id)}), SpoolError);
    EXPECT_THROW(spool().commit(item, std::vector<Meta>{meta_for(id), meta_for("../escape")}), SpoolError);
    EXPECT_TRUE(entries(layout().pending).empty());
    spool().discard(item);
    EXPECT_TRUE(entries(layout().tmp).empty());
    EXPECT_TRUE(entries(root_ / "spool").count("escape") == 0);
}

TEST_F(SpoolTest, CommitWithSeveralMetasIsAllOrNothingWhenAPublishedNameIsTaken) {
    // The third item's name is already in pending/: as a regular file, then as a directory
    // with something in it. The first two were already renamed when that fails.
    for (const bool as_directory : {false, true}) {
        SCOPED_TRACE(as_directory ? "directory in the way" : "file in the way");
        const std::string id = new_id();
        const std::vector<std::string> ids{id, new_id(), new_id()};
        const fs::path blocker = layout().pending / ids[2];
        if (as_directory) {
            fs::create_directory(blocker);
            write_text(blocker / "meta.json", "{}");
        } else {
            write_text(blocker, "in the way");
        }

        TmpItem item = spool().create(id);
        spool().append(item, "Subject: x\r\n\r\nbody\r\n");
        EXPECT_THROW(spool().commit(item, per_recipient_metas(id, ids, {"a@x", "b@x", "c@x"})), SpoolError);
        EXPECT_EQ(entries(layout().pending), std::set<std::string>{ids[2]}) << "a published item was left";
        if (as_directory) {
            EXPECT_EQ(entries(blocker), std::set<std::string>{"meta.json"});
            EXPECT_EQ(slurp(blocker / "meta.json"), "{}");
        } else {
            EXPECT_EQ(slurp(blocker), "in the way");
        }
        spool().discard(item);
        EXPECT_TRUE(entries(layout().tmp).empty()) << "tmp/ still holds " << entries(layout().tmp).size();
        fs::remove_all(blocker);
    }
}

TEST_F(SpoolTest, CommitWithSeveralMetasIsAllOrNothingWhenTheSecondNameIsTaken) {
    // The very first publishing rename succeeds, the second fails.
    const std::string id = new_id();
    const std::vector<std::string> ids{id, new_id(), new_id()};
    write_text(layout().pending / ids[1], "in the way");
    TmpItem item = spool().create(id);
    spool().append(item, "body");
    EXPECT_THROW(spool().commit(item, per_recipient_metas(id, ids, {"a@x", "b@x", "c@x"})), SpoolError);
    EXPECT_EQ(entries(layout().pending), std::set<std::string>{ids[1]});
    spool().discard(item);
    EXPECT_TRUE(entries(layout().tmp).empty());
}

TEST_F(SpoolTest, CommitWithSeveralMetasCleansUpWhenStagingASiblingFails) {
    // A sibling's name is taken in tmp/ (by someone else's item): its mkdir fails. That item
    // is not ours and stays; nothing of ours is left anywhere.
    const std::string id = new_id();
    const std::vector<std::string> ids{id, new_id(), new_id()};
    fs::create_directory(layout().tmp / ids[2]);
    write_text(layout().tmp / ids[2] / "message.eml", "other");
    TmpItem item = spool().create(id);
    spool().append(item, "body");
    EXPECT_THROW(spool().commit(item, per_recipient_metas(id, ids, {"a@x", "b@x", "c@x"})), SpoolError);
    EXPECT_TRUE(entries(layout().pending).empty());
    spool().discard(item);
    EXPECT_EQ(entries(layout().tmp), std::set<std::string>{ids[2]});
    EXPECT_EQ(slurp(layout().tmp / ids[2] / "message.eml"), "other");
}

TEST_F(SpoolTest, CommitWithSeveralMetasPullsEverythingBackWhenPendingFsyncFails) {
    g_failing_fsync = layout().pending;
    fault_injection::set_fsync_hook(&fail_selected_fsync);
    const std::string id = new_id();
    const std::vector<std::string> ids{id, new_id(), new_id()};
    TmpItem item = spool().create(id);
    spool().append(item, "body");
    EXPECT_THROW(spool().commit(item, per_recipient_metas(id, ids, {"a@x", "b@x", "c@x"})), SpoolError);
    EXPECT_TRUE(entries(layout().pending).empty());
    spool().discard(item);
    EXPECT_TRUE(entries(layout().tmp).empty());
}

TEST_F(SpoolTest, CommitWithSeveralMetasCleansUpWhenASiblingMetaFsyncFails) {
    const std::string id = new_id();
    const std::vector<std::string> ids{id, new_id(), new_id()};
    g_failing_fsync = layout().tmp / ids[2] / "meta.json";
    fault_injection::set_fsync_hook(&fail_selected_fsync);
    TmpItem item = spool().create(id);
    spool().append(item, "body");
    EXPECT_THROW(spool().commit(item, per_recipient_metas(id, ids, {"a@x", "b@x", "c@x"})), SpoolError);
    EXPECT_TRUE(entries(layout().pending).empty());
    spool().discard(item);
    EXPECT_TRUE(entries(layout().tmp).empty());
}

// --- adopt: another replica's spool moved into this one ---------------------------------

class AdoptTest : public SpoolTest {
protected:
    void SetUp() override {
        SpoolTest::SetUp();
        other_dir_ = root_ / "other";
        other_.emplace(Layout{other_dir_ / "tmp", other_dir_ / "pending", other_dir_ / "processing",
                              other_dir_ / "dead"});
        other_->ensure_dirs();
    }
    // A message the other replica acknowledged.
    std::string receive_there(std::string_view body) {
        const std::string id = new_id();
        TmpItem item = other_->create(id);
        other_->append(item, body);
        other_->commit(item, meta_for(id));
        return id;
    }
    fs::path other_dir_;
    std::optional<Spool> other_;
};

TEST_F(AdoptTest, EveryItemMovesInWithItsIdAndBytes) {
    const auto a = receive_there("Subject: a\r\n\r\na\r\n");
    const auto b = receive_there("Subject: b\r\n\r\nb\r\n");
    const auto in_flight = receive_there("Subject: c\r\n\r\nc\r\n");
    ASSERT_TRUE(other_->claim(in_flight));  // its daemon died during the attempt
    const auto dead = receive_there("Subject: d\r\n\r\nd\r\n");
    ASSERT_TRUE(other_->claim(dead));
    other_->dead_letter(dead, nullptr, "406 from the webhook");
    const std::string meta_a = slurp(other_dir_ / "pending" / a / "meta.json");

    std::vector<std::string> seen;
    bool locked_as_adopt = true;  // `mxhook drain` must not take the adopt for a daemon
    const AdoptReport report =
        adopt(spool(), other_dir_, [&](const std::string& id, std::string_view from, bool imported) {
            if (imported) seen.push_back(id + " " + std::string(from));
            const auto holder = InstanceLock::holder(other_dir_);
            locked_as_adopt = locked_as_adopt && holder && holder->adopting && holder->pid == ::getpid();
        });
    EXPECT_TRUE(locked_as_adopt);
    EXPECT_FALSE(report.other_daemon_running);
    EXPECT_EQ(report.from_pending, 2u);
    EXPECT_EQ(report.from_processing, 1u);
    EXPECT_EQ(report.from_dead, 1u);
    EXPECT_TRUE(report.errors.empty());
    EXPECT_EQ(seen.size(), 4u);
    EXPECT_EQ(entries(layout().pending), (std::set<std::string>{a, b, in_flight}));
    EXPECT_EQ(entries(layout().dead), std::set<std::string>{dead});
    EXPECT_EQ(slurp(layout().pending / a / "message.eml"), "Subject: a\r\n\r\na\r\n");
    EXPECT_EQ(slurp(layout().pending / a / "meta.json"), meta_a);
    EXPECT_EQ(slurp(layout().dead / dead / "error.txt").find("406"), 0u);
    for (const char* state : {"pending", "processing", "dead", "adopting", "adopting-dead"}) {
        EXPECT_TRUE(entries(other_dir_ / state).empty()) << state;
    }
    // Linked, not shared: the other spool's copy is gone, so this one is alone again.
    EXPECT_EQ(stat_of(layout().pending / a / "message.eml").st_nlink, 1u);
    // A second run finds nothing.
    EXPECT_EQ(adopt(spool(), other_dir_).adopted(), 0u);
}

TEST_F(AdoptTest, WhileItsDaemonRunsWhatIsInFlightThereStays) {
    const auto waiting = receive_there("Subject: a\r\n\r\na\r\n");
    const auto in_flight = receive_there("Subject: b\r\n\r\nb\r\n");
    ASSERT_TRUE(other_->claim(in_flight));
    const InstanceLock daemon(other_dir_);
    const AdoptReport report = adopt(spool(), other_dir_);
    EXPECT_TRUE(report.other_daemon_running);
    EXPECT_EQ(report.from_pending, 1u);
    EXPECT_EQ(report.from_processing, 0u);
    EXPECT_EQ(report.left_in_flight, 1u);
    EXPECT_EQ(entries(layout().pending), std::set<std::string>{waiting});
    EXPECT_EQ(entries(other_dir_ / "processing"), std::set<std::string>{in_flight});
}

TEST_F(AdoptTest, ARunCutShortIsFinishedWithoutDuplicates) {
    // Taken from pending/ into the staging directory, then the tool died: adopted next time.
    fs::create_directories(other_dir_ / "adopting");
    const auto staged = receive_there("Subject: a\r\n\r\na\r\n");
    ASSERT_TRUE(other_->hand_over(Spool::State::pending, staged, other_dir_ / "adopting"));
    // Already imported here when the tool died: only the copy there goes.
    const auto imported = receive_there("Subject: b\r\n\r\nb\r\n");
    ASSERT_TRUE(other_->hand_over(Spool::State::pending, imported, other_dir_ / "adopting"));
    ASSERT_EQ(spool().import_item(other_dir_ / "adopting" / imported, imported, Spool::State::pending),
              Spool::Imported::imported);

    const AdoptReport report = adopt(spool(), other_dir_);
    EXPECT_EQ(report.from_pending, 1u);
    EXPECT_EQ(report.already_here, 1u);
    EXPECT_EQ(entries(layout().pending), (std::set<std::string>{staged, imported}));
    EXPECT_TRUE(entries(other_dir_ / "adopting").empty());
}

// An item that cannot be imported (here: torn, its message.eml gone) goes back to the other
// spool's pending/, where its daemon or a next adopt finds it, not left in adopting/.
TEST_F(AdoptTest, AnItemThatCannotBeImportedGoesBack) {
    const auto good = receive_there("Subject: a\r\n\r\na\r\n");
    const auto torn = receive_there("Subject: b\r\n\r\nb\r\n");
    fs::remove(other_dir_ / "pending" / torn / "message.eml");
    const AdoptReport report = adopt(spool(), other_dir_);
    EXPECT_EQ(report.from_pending, 1u);
    ASSERT_EQ(report.errors.size(), 1u);
    EXPECT_NE(report.errors.front().find(torn), std::string::npos) << report.errors.front();
    EXPECT_EQ(entries(layout().pending), std::set<std::string>{good});
    EXPECT_EQ(entries(other_dir_ / "pending"), std::set<std::string>{torn});
    EXPECT_TRUE(entries(other_dir_ / "adopting").empty());
    EXPECT_TRUE(entries(layout().tmp).empty());  // no staging left behind here either
}

// An adopt that died with items in the other spool's adopting/: when that spool's own
// daemon starts again, they are its again (delivered and counted there).
TEST_F(AdoptTest, ADaemonStartingTakesBackWhatAnUnfinishedAdoptTook) {
    const auto taken = receive_there("Subject: a\r\n\r\na\r\n");
    const auto dead = receive_there("Subject: d\r\n\r\nd\r\n");
    ASSERT_TRUE(other_->claim(dead));
    other_->dead_letter(dead, nullptr, "406");
    fs::create_directories(other_dir_ / "adopting");
    fs::create_directories(other_dir_ / "adopting-dead");
    ASSERT_TRUE(other_->hand_over(Spool::State::pending, taken, other_dir_ / "adopting"));
    ASSERT_TRUE(other_->hand_over(Spool::State::dead, dead, other_dir_ / "adopting-dead"));
    {
        // An adopt still running: its items are left to it.
        const int fd = ::open((other_dir_ / ".adopt.lock").c_str(), O_RDWR | O_CREAT, 0600);
        ASSERT_GE(fd, 0);
        ASSERT_EQ(::flock(fd, LOCK_EX), 0);
        EXPECT_EQ(return_unfinished_adoption(*other_, other_dir_), 0u);
        ::close(fd);
    }
    EXPECT_EQ(return_unfinished_adoption(*other_, other_dir_), 2u);
    EXPECT_EQ(entries(other_dir_ / "pending"), std::set<std::string>{taken});
    EXPECT_EQ(entries(other_dir_ / "dead"), std::set<std::string>{dead});
    EXPECT_EQ(return_unfinished_adoption(spool(), root_ / "spool"), 0u);  // nothing to do: no adopting/
}

TEST_F(AdoptTest, RefusesItsOwnSpoolANonSpoolAndASecondAdopt) {
    EXPECT_THROW(adopt(spool(), root_ / "spool"), AdoptError);
    fs::create_directories(root_ / "empty");
    EXPECT_THROW(adopt(spool(), root_ / "empty"), AdoptError);
    const int fd = ::open((other_dir_ / ".adopt.lock").c_str(), O_RDWR | O_CREAT, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::flock(fd, LOCK_EX), 0);
    try {
        adopt(spool(), other_dir_);
        ADD_FAILURE() << "a second adopt of the same spool ran";
    } catch (const AdoptError& e) {
        EXPECT_NE(std::string(e.what()).find("another"), std::string::npos) << e.what();
    }
    ::close(fd);
}

}  // namespace
}  // namespace mxhook::spool
