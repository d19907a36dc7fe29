// The life of a message and of the process around it: a fresh message is posted at once
// (not at the next scan), a spool that cannot commit answers 451 and keeps the session,
// SIGTERM/SIGINT stop the daemon cleanly (421 to idle sessions, DATA allowed to finish
// within the grace), and broken spool items are set aside with an error.txt that says why.

#include "harness/fixture.hpp"

#include <signal.h>

namespace itest {
namespace {

using ordered_json = nlohmann::ordered_json;

class LifecycleTest : public IntegrationTest {
protected:
    // Waits for dead/<id>/error.txt and returns its text; "" (with a failure) when it never came.
    std::string dead_error_text(const std::string& id) {
        const auto path = dead_dir() / id / "error.txt";
        std::string text;
        const bool found = wait_until(
            [&] {
                try {
                    text = read_file(path);
                    return !text.empty();
                } catch (const std::exception&) {
                    return false;
                }
            },
            std::chrono::seconds(10));
        EXPECT_TRUE(found) << "dead/" << id << "/error.txt never appeared; dead/ holds "
                           << list_dir(dead_dir()).size() << " entries";
        return text;
    }

    // Opens a session and takes it into DATA (354 read). nullptr with a failure recorded otherwise.
    std::unique_ptr<SmtpClient> session_in_data() {
        auto client = connect();
        if (!client->connected()) return nullptr;
        for (const char* command : {"EHLO client.test", "MAIL FROM:<sender@example.org>",
                                          "RCPT TO:<user@example.com>"}) {
            const Reply reply = client->cmd(command);
            if (reply.code != 250) {
                ADD_FAILURE() << command << ": " << reply;
                return nullptr;
            }
        }
        const Reply data = client->cmd("DATA");
        if (data.code != 354) {
            ADD_FAILURE() << "DATA: " << data;
            return nullptr;
        }
        return client;
    }
};

// --- immediate dispatch -----------------------------------------------------------------------

TEST_F(LifecycleTest, FreshMessageIsPostedAtOnceNotAtTheNextScan) {
    // The scan runs at start and then only once a minute: a delivery within 5 s can only
    // come from the session handing the committed id to the dispatcher.
    ASSERT_TRUE(start_daemon({{"RETRY_SCAN_INTERVAL_MS", "60000"}}));
    // The first message also makes sure the start-up scan is long over before the second.
    const std::string first = send_one(simple_message("first"));
    ASSERT_FALSE(first.empty());
    ASSERT_TRUE(request_for(first, std::chrono::seconds(5)).has_value())
        << "a fresh message was not posted within 5 s (scan interval 60 s)";

    const std::string second = send_one(simple_message("second"));
    ASSERT_FALSE(second.empty());
    const auto request = request_for(second, std::chrono::seconds(5));
    ASSERT_TRUE(request.has_value()) << "a fresh message was not posted within 5 s (scan interval 60 s)";
    EXPECT_EQ(request->field("subject"), "second");
    EXPECT_TRUE(spool_drains(std::chrono::seconds(5)));
}

// --- 451 when the spool cannot commit ------------------------------------------------------------

TEST_F(LifecycleTest, CommitFailureAnswers451KeepsTheSessionAndLeavesNothingBehind) {
    ASSERT_TRUE(start_daemon());
    auto client = connect();
    ASSERT_EQ(client->ehlo().code, 250);

    // A regular file where pending/ belongs: the rename that publishes the item fails,
    // whoever the daemon runs as (root ignores permission bits, not file types).
    std::filesystem::remove(pending_dir());
    write_file(pending_dir(), "in the way");

    const std::string message = simple_message("not committed");
    const Reply failed = client->send_message("sender@example.org", {"user@example.com"}, message);
    EXPECT_EQ(failed.code, 451) << failed;
    EXPECT_NE(failed.text().find("4.3.0"), std::string::npos) << failed;
    EXPECT_TRUE(queued_id(failed).empty()) << failed;

    // Nothing half-received stays in tmp/ and nothing was published.
    EXPECT_TRUE(tmp_items().empty()) << "tmp/ holds " << tmp_items().size()
                                                   << " entries after the 451";
    EXPECT_EQ(read_file(pending_dir()), "in the way");

    // The session goes on.
    const Reply rset = client->cmd("RSET");
    EXPECT_EQ(rset.code, 250) << rset;
    const Reply noop = client->cmd("NOOP");
    EXPECT_EQ(noop.code, 250) << noop;

    // With pending/ back, the same session queues a message, and only that one is ever posted.
    std::filesystem::remove(pending_dir());
    std::filesystem::create_directory(pending_dir());
    std::filesystem::permissions(pending_dir(), std::filesystem::perms::owner_all);
    EXPECT_TRUE(list_dir(pending_dir()).empty());
    const Reply ok = client->send_message("sender@example.org", {"user@example.com"}, simple_message("committed"));
    const std::string id = queued_id(ok);
    ASSERT_FALSE(id.empty()) << ok;
    EXPECT_EQ(client->cmd("QUIT").code, 221);
    const auto request = request_for(id);
    ASSERT_TRUE(request.has_value());
    EXPECT_EQ(request->field("subject"), "committed");
    EXPECT_TRUE(spool_drains());
    EXPECT_EQ(hook_.count(), 1u) << "the message answered 451 must never be posted";
    // (A delivered item passes through tmp/<id>.delivered on its way out: wait for that.)
    EXPECT_TRUE(wait_until([&] { return tmp_items().empty(); }, 5s));
}

// --- signals ----------------------------------------------------------------------------------------

TEST_F(LifecycleTest, SigtermAndSigintTellAnIdleSession421AndExitZero) {
    for (const int sig : {SIGTERM, SIGINT}) {
        SCOPED_TRACE(sig == SIGTERM ? "SIGTERM" : "SIGINT");
        ASSERT_TRUE(start_daemon({{"SHUTDOWN_GRACE_MS", "10000"}}));
        auto idle = connect();
        ASSERT_EQ(idle->ehlo().code, 250);

        daemon().signal(sig);
        const Reply reply = idle->read_reply();
        EXPECT_EQ(reply.code, 421) << reply;
        EXPECT_TRUE(idle->wait_closed()) << "the connection stays open after 421";

        // An idle session does not hold the stop: well within the 10 s grace.
        const auto status = daemon().wait_exit(std::chrono::seconds(5));
        ASSERT_TRUE(status.has_value()) << "still running 5 s after the signal with only an idle session";
        EXPECT_TRUE(status->exited() && status->code() == 0) << status->describe();
    }
}

TEST_F(LifecycleTest, SigtermLetsAMessageInDataFinishWithinTheGrace) {
    ASSERT_TRUE(start_daemon({{"SHUTDOWN_GRACE_MS", "15000"}}));
    auto client = session_in_data();
    ASSERT_NE(client, nullptr);

    const std::string head = "From: Alice <alice@example.org>\r\n"
                             "To: user@example.com\r\n"
                             "Subject: finished during shutdown\r\n"
                             "\r\n"
                             "first half of the body\r\n";
    const std::string tail = "second half of the body\r\n";
    ASSERT_TRUE(client->send_raw(head));

    daemon().signal(SIGTERM);
    // Go on only once the daemon has taken the signal in, so the rest really arrives during
    // the shutdown.
    ASSERT_TRUE(log_shows(daemon(), "received signal 15", std::chrono::seconds(5))) << "no sign of SIGTERM in the log within 5 s";
    ASSERT_TRUE(daemon().running());

    ASSERT_TRUE(client->send_raw(tail + ".\r\n"));
    const Reply done = client->read_reply();
    EXPECT_EQ(done.code, 250) << done;
    const std::string id = queued_id(done);
    ASSERT_FALSE(id.empty()) << done;
    // Then the session is told the server is going away.
    const Reply bye = client->read_reply();
    EXPECT_EQ(bye.code, 421) << bye;

    const auto status = daemon().wait_exit(std::chrono::seconds(10));
    ASSERT_TRUE(status.has_value()) << "still running 10 s after SIGTERM";
    EXPECT_TRUE(status->exited() && status->code() == 0) << status->describe();

    // Acknowledged means kept: posted before the stop, or in pending/ for the next start.
    const bool posted = request_for(id, std::chrono::milliseconds(0)).has_value();
    if (!posted) {
        EXPECT_TRUE(std::filesystem::exists(pending_dir() / id / "message.eml"))
            << "the message answered 250 is neither posted nor in pending/";
        ASSERT_TRUE(start_daemon());
    }
    const auto request = request_for(id);
    ASSERT_TRUE(request.has_value()) << "the message answered 250 during shutdown was never posted";
    const auto split = split_received(request->field("body-mime"));
    ASSERT_TRUE(split.has_value());
    EXPECT_TRUE(split->rest == head + tail) << first_difference(head + tail, split->rest);
    EXPECT_TRUE(spool_drains());
}

TEST_F(LifecycleTest, SigtermDoesNotWaitPastTheGraceForAnUnfinishedMessage) {
    ASSERT_TRUE(start_daemon({{"SHUTDOWN_GRACE_MS", "1000"}}));
    auto client = session_in_data();
    ASSERT_NE(client, nullptr);
    ASSERT_TRUE(client->send_raw("Subject: never finished\r\n\r\npart of the body\r\n"));

    daemon().signal(SIGTERM);
    const auto status = daemon().wait_exit(std::chrono::seconds(10));
    ASSERT_TRUE(status.has_value()) << "still running 10 s after SIGTERM with a 1 s grace";
    EXPECT_TRUE(status->exited() && status->code() == 0) << status->describe();

    // Never acknowledged, never published.
    const Reply reply = client->read_reply();
    EXPECT_NE(reply.code, 250) << reply;
    EXPECT_TRUE(list_dir(pending_dir()).empty());
    EXPECT_EQ(hook_.count(), 0u);
}

// --- broken spool items -----------------------------------------------------------------------------

TEST_F(LifecycleTest, ItemWithoutMessageFileIsDeadLetteredWithTheReason) {
    const std::string id = new_spool_id();
    write_file(pending_dir() / id / "meta.json", spool_item_meta(id).dump(2) + "\n");
    ASSERT_TRUE(start_daemon());

    const std::string error = dead_error_text(id);
    EXPECT_NE(error.find("message.eml"), std::string::npos) << "error.txt: " << error;
    EXPECT_NE(error.find("No such file or directory"), std::string::npos) << "error.txt: " << error;
    EXPECT_TRUE(std::filesystem::exists(dead_dir() / id / "meta.json"));
    EXPECT_FALSE(std::filesystem::exists(pending_dir() / id));
    EXPECT_TRUE(list_dir(processing_dir()).empty());
    for (const auto& request : hook_.requests()) EXPECT_NE(request.id(), id);

    // The daemon carries on: a new message is delivered as usual.
    const std::string fresh = send_one(simple_message());
    ASSERT_TRUE(request_for(fresh).has_value());
}

TEST_F(LifecycleTest, InvalidMetaIsDeadLetteredWithTheReason) {
    const std::string truncated = new_spool_id();
    write_file(pending_dir() / truncated / "message.eml", simple_message());
    write_file(pending_dir() / truncated / "meta.json", "{ \"id\": \"" + truncated + "\", \"attempts\": ");
    const std::string no_recipients = new_spool_id();
    ordered_json meta = spool_item_meta(no_recipients);
    meta.erase("recipients");
    write_file(pending_dir() / no_recipients / "message.eml", simple_message());
    write_file(pending_dir() / no_recipients / "meta.json", meta.dump(2) + "\n");
    ASSERT_TRUE(start_daemon());

    const std::string truncated_error = dead_error_text(truncated);
    EXPECT_NE(truncated_error.find("meta.json"), std::string::npos) << "error.txt: " << truncated_error;
    EXPECT_NE(truncated_error.find("invalid JSON"), std::string::npos) << "error.txt: " << truncated_error;

    const std::string missing_error = dead_error_text(no_recipients);
    EXPECT_NE(missing_error.find("meta.json"), std::string::npos) << "error.txt: " << missing_error;
    EXPECT_NE(missing_error.find("\"recipients\" is missing"), std::string::npos) << "error.txt: " << missing_error;

    EXPECT_TRUE(spool_drains());
    EXPECT_EQ(hook_.count(), 0u);
}

}  // namespace
}  // namespace itest
