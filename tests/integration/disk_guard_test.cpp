// The disk guard (SPOOL_MIN_FREE_BYTES): below it MAIL gets 452 4.3.1 and nothing is
// written; when space returns, mail is taken again without a restart. Run on a small
// tmpfs that the test mounts (and grows with a remount), so it needs root; skipped with
// the reason otherwise.

#include "harness/fixture.hpp"

#include <cerrno>
#include <cstring>

#include <sys/mount.h>
#include <unistd.h>

namespace itest {
namespace {

// A tmpfs of `size` mounted on `dir` for the test's lifetime (lazily unmounted at the end).
class SmallTmpfs {
public:
    SmallTmpfs(const std::filesystem::path& dir, const std::string& size) : dir_(dir) {
        std::filesystem::create_directories(dir_);
        const std::string options = "size=" + size + ",mode=0700";
        if (::mount("tmpfs", dir_.c_str(), "tmpfs", 0, options.c_str()) != 0) error_ = std::strerror(errno);
        else mounted_ = true;
    }
    ~SmallTmpfs() {
        if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
    }
    bool mounted() const { return mounted_; }
    const std::string& error() const { return error_; }
    bool resize(const std::string& size) {
        const std::string options = "size=" + size + ",mode=0700";
        return ::mount("tmpfs", dir_.c_str(), "tmpfs", MS_REMOUNT, options.c_str()) == 0;
    }

private:
    std::filesystem::path dir_;
    bool mounted_ = false;
    std::string error_;
};

class DiskGuardTest : public IntegrationTest {
protected:
    void SetUp() override {
        if (::geteuid() != 0) GTEST_SKIP() << "needs root to mount a small tmpfs for the spool";
        fs_ = std::make_unique<SmallTmpfs>(tmp_.path() / "small", "8m");
        if (!fs_->mounted()) GTEST_SKIP() << "cannot mount a tmpfs here: " << fs_->error();
    }
    void TearDown() override {
        // The daemon first (it holds the spool open), then the filesystem.
        IntegrationTest::TearDown();
        fs_.reset();
    }
    std::filesystem::path small_spool() const { return tmp_.path() / "small" / "spool"; }

    // MAIL FROM's reply code in a fresh session.
    int mail_reply(const std::string& params = "") {
        auto client = connect();
        client->ehlo();
        return client->cmd("MAIL FROM:<sender@example.org>" + params).code;
    }

    std::unique_ptr<SmallTmpfs> fs_;
};

TEST_F(DiskGuardTest, BelowTheGuardMailGets452AndAcceptanceResumesWhenSpaceReturns) {
    // 8 MiB of tmpfs under a 16 MB guard: below it from the start.
    ASSERT_TRUE(start_daemon({{"SPOOL_DIR", small_spool().string()}, {"SPOOL_MIN_FREE_BYTES", "16000000"}}));
    {
        auto client = connect();
        client->ehlo();
        const Reply refused = client->cmd("MAIL FROM:<sender@example.org>");
        EXPECT_EQ(refused.code, 452) << refused;
        EXPECT_NE(refused.text().find("4.3.1"), std::string::npos) << refused;
        // The session goes on: a later MAIL is answered the same way, QUIT as usual.
        EXPECT_EQ(client->cmd("MAIL FROM:<sender@example.org>").code, 452);
        EXPECT_EQ(client->cmd("QUIT").code, 221);
    }
    EXPECT_TRUE(tmp_items().empty());
    EXPECT_NE(daemon().log().find("SPOOL_MIN_FREE_BYTES"), std::string::npos) << "the operator is told why";

    // Space returns: the guard measures every second, no restart needed.
    ASSERT_TRUE(fs_->resize("64m"));
    EXPECT_TRUE(wait_until([&] { return mail_reply() == 250; }, std::chrono::seconds(10)))
        << "MAIL still refused 10 s after the filesystem grew";
    const std::string id = send_one(simple_message("after the guard"));
    ASSERT_FALSE(id.empty());
    EXPECT_TRUE(request_for(id).has_value());
}

TEST_F(DiskGuardTest, ASizeLargerThanTheSpareSpaceIs452) {
    ASSERT_TRUE(fs_->resize("32m"));
    // About 16 MiB spare above a 16 MB guard: a 20 MB SIZE cannot fit, a 1 MB one can.
    ASSERT_TRUE(start_daemon({{"SPOOL_DIR", small_spool().string()},
                              {"SPOOL_MIN_FREE_BYTES", "16000000"},
                              {"SMTP_MAX_MESSAGE_BYTES", "50000000"}}));
    EXPECT_EQ(mail_reply(" SIZE=20000000"), 452);
    EXPECT_EQ(mail_reply(" SIZE=1000000"), 250);
}

TEST_F(DiskGuardTest, ZeroTurnsTheGuardOff) {
    ASSERT_TRUE(start_daemon({{"SPOOL_DIR", small_spool().string()}, {"SPOOL_MIN_FREE_BYTES", "0"}}));
    const std::string id = send_one(simple_message("no guard"));
    ASSERT_FALSE(id.empty());
    EXPECT_TRUE(request_for(id).has_value());
}

}  // namespace
}  // namespace itest
