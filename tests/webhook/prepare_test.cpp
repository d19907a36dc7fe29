// prepare_attempt: what a delivery attempt finds before its POST, on a real spool in a
// fresh temporary directory. Each state decides what the dispatcher then does: post,
// wait, retry later or dead-letter, so each is checked with where the item ends up.
#include "mxhook/webhook/dispatcher.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/thread_pool.hpp>
#include <gtest/gtest.h>

#include <fstream>

namespace mxhook::webhook {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::system_clock;
using namespace std::chrono_literals;

class PrepareAttemptTest : public ::testing::Test {
protected:
    void SetUp() override {
        char tmpl[] = "/tmp/mxhook-prepare-XXXXXX";
        ASSERT_NE(::mkdtemp(tmpl), nullptr);
        root_ = tmpl;
        spool_.emplace(spool::Layout{root_ / "tmp", root_ / "pending", root_ / "processing", root_ / "dead"});
        spool_->ensure_dirs();
        config_.webhook_url = "http://127.0.0.1:9/hook";
        config_.webhook_signing_key = "key";
    }
    void TearDown() override {
        pool_.join();
        std::error_code ignored;
        fs::remove_all(root_, ignored);
    }

    spool::Meta meta_for(const std::string& id) const {
        spool::Meta m;
        m.id = id;
        m.created_at = Clock::now();
        m.sender = "alice@example.org";
        m.recipients = {"bob@example.com"};
        m.headers = {{"Subject", "hello"}};
        return m;
    }
    std::string queue(const spool::Meta& meta) {
        auto item = spool_->create(meta.id);
        spool_->append(item, "Subject: hello\r\n\r\nbody\r\n");
        spool_->commit(item, meta);
        return meta.id;
    }
    Prepared prepare(const std::string& id, Clock::time_point now = Clock::now()) {
        return prepare_attempt(*spool_, config_, id, now, pool_, io_.get_executor());
    }
    bool in(const char* state, const std::string& id) const { return fs::exists(root_ / state / id); }

    fs::path root_;
    std::optional<spool::Spool> spool_;
    Config config_;
    boost::asio::io_context io_;
    boost::asio::thread_pool pool_{1};
};

TEST_F(PrepareAttemptTest, ReadyItemIsClaimedWithItsBodyOpen) {
    const auto id = queue(meta_for(spool::new_id()));
    auto prepared = prepare(id);
    ASSERT_EQ(prepared.step, Prepared::ready);
    // A small message: the whole form body is in memory, to be posted in one write.
    EXPECT_FALSE(prepared.body);
    EXPECT_EQ(prepared.content_type, "application/x-www-form-urlencoded");
    EXPECT_NE(prepared.body_bytes.find("&body-mime=Subject%3A+hello%0D%0A%0D%0Abody%0D%0A"), std::string::npos)
        << prepared.body_bytes;
    EXPECT_EQ(prepared.meta.id, id);
    EXPECT_TRUE(in("processing", id));
    EXPECT_FALSE(in("pending", id));
}

TEST_F(PrepareAttemptTest, LargeMessageIsStreamedNotHeld) {
    const auto meta = meta_for(spool::new_id());
    auto item = spool_->create(meta.id);
    spool_->append(item, "Subject: big\r\n\r\n" + std::string(100 * 1024, 'x') + "\r\n");
    spool_->commit(item, meta);
    auto prepared = prepare(meta.id);
    ASSERT_EQ(prepared.step, Prepared::ready);
    ASSERT_TRUE(prepared.body);
    EXPECT_TRUE(prepared.body_bytes.empty());
    EXPECT_GT(prepared.body->size(), 100u * 1024);
}

TEST_F(PrepareAttemptTest, GoneItemIsNothingToDo) {
    const auto prepared = prepare(spool::new_id());
    EXPECT_EQ(prepared.step, Prepared::gone);
}

TEST_F(PrepareAttemptTest, RetryNotYetDueStaysInPending) {
    auto meta = meta_for(spool::new_id());
    meta.attempts = 1;
    meta.next_attempt_at = Clock::now() + 1h;
    const auto id = queue(meta);
    const auto prepared = prepare(id);
    EXPECT_EQ(prepared.step, Prepared::not_due);
    EXPECT_TRUE(in("pending", id));
}

// A drain (`mxhook drain`) gives every queued message one attempt now, whatever its
// back-off: an item last tried before the drain began is due; one tried since is not.
TEST_F(PrepareAttemptTest, DrainMakesARetryDueOnceWhateverItsBackOff) {
    const auto now = Clock::now();
    auto meta = meta_for(spool::new_id());
    meta.attempts = 3;
    meta.last_attempt_at = now - 10min;
    meta.next_attempt_at = now + 1h;
    EXPECT_FALSE(attempt_due(meta, now, std::nullopt));
    EXPECT_TRUE(attempt_due(meta, now, now - 1s));  // drain began after its last attempt
    meta.last_attempt_at = now - 500ms;
    EXPECT_FALSE(attempt_due(meta, now, now - 1s));  // already tried during this drain
    meta.last_attempt_at.reset();                    // never tried: due in a drain
    EXPECT_TRUE(attempt_due(meta, now, now - 1s));
    meta.next_attempt_at = now - 1s;  // due anyway
    EXPECT_TRUE(attempt_due(meta, now, std::nullopt));

    meta.last_attempt_at = now - 10min;
    meta.next_attempt_at = now + 1h;
    const auto id = queue(meta);
    const auto prepared = prepare_attempt(*spool_, config_, id, now, pool_, io_.get_executor(), std::nullopt, nullptr,
                                          now - 1s);
    EXPECT_EQ(prepared.step, Prepared::ready);
    EXPECT_TRUE(in("processing", id));
}

TEST_F(PrepareAttemptTest, UnparsableMetaIsClaimedToBeDeadLettered) {
    const auto id = queue(meta_for(spool::new_id()));
    std::ofstream(root_ / "pending" / id / "meta.json", std::ios::trunc) << "{not json";
    const auto prepared = prepare(id);
    EXPECT_EQ(prepared.step, Prepared::meta_broken);
    EXPECT_TRUE(prepared.failure.is(std::errc::bad_message)) << prepared.failure.message;
    EXPECT_TRUE(in("processing", id));
}

TEST_F(PrepareAttemptTest, MissingMessageIsClaimedToBeDeadLettered) {
    const auto id = queue(meta_for(spool::new_id()));
    fs::remove(root_ / "pending" / id / "message.eml");
    const auto prepared = prepare(id);
    EXPECT_EQ(prepared.step, Prepared::message_broken);
    EXPECT_TRUE(prepared.failure.is(std::errc::no_such_file_or_directory)) << prepared.failure.message;
    EXPECT_TRUE(in("processing", id));
}

TEST_F(PrepareAttemptTest, PastMaxRetryAgeIsClaimedToBeDeadLettered) {
    config_.max_retry_age = 1h;
    auto meta = meta_for(spool::new_id());
    meta.created_at = Clock::now() - 2h;
    const auto id = queue(meta);
    const auto prepared = prepare(id);
    EXPECT_EQ(prepared.step, Prepared::too_old);
    EXPECT_FALSE(prepared.body);
    EXPECT_TRUE(in("processing", id));
}

}  // namespace
}  // namespace mxhook::webhook
