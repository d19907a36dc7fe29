// The decision API through the real binary: a second TestWebhook plays the decision service
// and answers JSON. Every branch (allow, deny, silent_deny, each way of being unavailable),
// every payload mode, the exact request bodies and headers, and an empty spool whenever the
// message was not accepted.

#include "harness/fixture.hpp"

#include <nlohmann/json.hpp>

#include <atomic>
#include <csignal>
#include <chrono>
#include <future>
#include <regex>
#include <thread>

namespace itest {
namespace {

using OrderedJson = nlohmann::ordered_json;
using namespace std::string_literals;

constexpr const char* kToken = "decision-token-42";

std::vector<std::string> keys_of(const OrderedJson& object) {
    std::vector<std::string> keys;
    for (auto it = object.begin(); it != object.end(); ++it) keys.push_back(it.key());
    return keys;
}

// JSON string literal as JSON.stringify / nlohmann write it.
std::string quoted(const std::string& text) { return OrderedJson(text).dump(); }

// The client host mxhook put in the Received header it added ("from <helo> (<host> [<ip>])"),
// so the decision request's remote.host can be checked against what the daemon resolved.
std::string host_in_received(const std::string& body_mime) {
    static const std::regex pattern(R"(^Received: from \S+ \((?:(\S+) )?\[127\.0\.0\.1\]\))");
    std::smatch match;
    if (!std::regex_search(body_mime, match, pattern)) return "<no Received header>";
    return match[1].matched ? match[1].str() : "";
}

class DecisionTest : public IntegrationTest {
protected:
    // base_env plus the decision URL (and token when asked).
    bool start_with_decision(Env extra = {}, bool with_token = true) {
        Env env{{"WEBHOOK_DECISION_URL", decider_.url("/decide")}};
        if (with_token) env["WEBHOOK_DECISION_TOKEN"] = kToken;
        for (auto& [key, value] : extra) env[key] = value;
        return start_daemon(env);
    }

    // pending/, processing/ and tmp/ all empty.
    void expect_spool_empty(const std::string& where) {
        EXPECT_TRUE(list_dir(pending_dir()).empty()) << where << ": pending/ holds " << list_dir(pending_dir()).size();
        EXPECT_TRUE(list_dir(processing_dir()).empty()) << where << ": processing/ holds "
                                                        << list_dir(processing_dir()).size();
        EXPECT_TRUE(tmp_items().empty()) << where << ": tmp/ holds " << tmp_items().size();
    }

    // The decision request for a message, parsed keeping key order.
    std::optional<OrderedJson> decision_body(std::size_t index) {
        if (!decider_.wait_for(index + 1, std::chrono::seconds(10))) return std::nullopt;
        try {
            return OrderedJson::parse(decider_.requests().at(index).body);
        } catch (const std::exception& e) {
            ADD_FAILURE() << "decision request " << index << " is not JSON: " << e.what();
            return std::nullopt;
        }
    }

    // Sends a message in `client`'s session; the final reply.
    static Reply send(SmtpClient& client, const std::string& subject,
                      const std::vector<std::string>& recipients = {"user@example.com"}) {
        return client.send_message("sender@example.org", recipients, simple_message(subject));
    }

    // A later message that the decision service allows must reach the webhook, and be the
    // only one there: a bounded proof that the refused ones were never posted.
    void expect_only_later_message_delivered(SmtpClient& client, const std::string& refused_what) {
        decider_.reply_json(R"({"decision":"allow"})");
        const Reply reply = send(client, "later allowed");
        const std::string id = queued_id(reply);
        ASSERT_FALSE(id.empty()) << reply;
        const auto delivered = request_for(id);
        ASSERT_TRUE(delivered.has_value()) << "the allowed message never arrived";
        EXPECT_EQ(delivered->field("subject"), "later allowed");
        ASSERT_TRUE(spool_drains());
        const auto all = hook_.requests();
        EXPECT_EQ(all.size(), 1u) << refused_what << " reached the webhook";
        for (const auto& request : all) EXPECT_EQ(request.id(), id);
    }

    // One daemon log line saying `text`, waiting for it (bounded).
    bool log_mentions(const std::string& text) {
        return wait_until([&] { return daemon().log().find(text) != std::string::npos; }, std::chrono::seconds(5));
    }

    TestWebhook decider_;
};

// --- allow ------------------------------------------------------------------------------------

TEST_F(DecisionTest, AllowCommitsAndDeliversAfterAnExactMinimalRequest) {
    // When the request arrives the message is in tmp/ and not yet in pending/: asked after
    // DATA, before the commit.
    std::atomic<int> seen_in_tmp{-1};
    std::atomic<int> seen_in_pending{-1};
    decider_.reply_with([&](const WebhookRequest& request) {
        std::string id;
        try {
            id = nlohmann::json::parse(request.body)["message"]["id"].get<std::string>();
        } catch (const std::exception&) {
        }
        const auto tmp = tmp_items();
        const auto pending = list_dir(pending_dir());
        seen_in_tmp = std::find(tmp.begin(), tmp.end(), id) != tmp.end();
        seen_in_pending = std::find(pending.begin(), pending.end(), id) != pending.end();
        WebhookReply reply;
        reply.body = R"({"decision":"allow","reason":"looks fine"})";
        reply.content_type = "application/json";
        return reply;
    });
    // The first webhook attempt fails, so meta.json can be read in pending/ afterwards.
    hook_.queue_statuses({503});
    ASSERT_TRUE(start_with_decision());

    auto client = connect();
    ASSERT_EQ(client->ehlo("helo.client.test").code, 250);
    const Reply reply =
        client->send_message("sender@example.org", {"user@example.com", "Other@Example.com"}, simple_message("Hi"));
    const std::string id = queued_id(reply);
    ASSERT_FALSE(id.empty()) << reply;
    EXPECT_EQ(reply.code, 250);

    ASSERT_EQ(decider_.count(), 1u);
    EXPECT_EQ(seen_in_tmp.load(), 1) << "the message was not in tmp/ while the decision was asked";
    EXPECT_EQ(seen_in_pending.load(), 0) << "the message was committed before the decision";

    const WebhookRequest request = decider_.requests().at(0);
    EXPECT_EQ(request.method, "POST");
    EXPECT_EQ(request.target, "/decide");
    EXPECT_EQ(request.header("Content-Type"), "application/json");
    EXPECT_EQ(request.header("Accept"), "application/json");
    EXPECT_EQ(request.header("Authorization"), "Bearer "s + kToken);
    EXPECT_FALSE(request.has_header("X-Mxhook-Id"));

    const auto delivered = request_for(id);
    ASSERT_TRUE(delivered.has_value()) << "an allowed message must be delivered";
    EXPECT_EQ(delivered->target, "/hook");
    EXPECT_EQ(delivered->field("recipient"), "user@example.com,Other@Example.com");

    OrderedJson body;
    ASSERT_NO_THROW(body = OrderedJson::parse(request.body)) << request.body;
    ASSERT_TRUE(body.is_object());
    EXPECT_EQ(keys_of(body), (std::vector<std::string>{"protocol", "mode", "message"}));
    EXPECT_EQ(body["protocol"], "haraka-webhook.decision.v1");
    EXPECT_EQ(body["mode"], "minimal");
    const auto& message = body["message"];
    EXPECT_EQ(keys_of(message),
              (std::vector<std::string>{"id", "createdAt", "sender", "recipients", "from", "subject", "remote"}));
    EXPECT_EQ(message["id"], id);
    const std::string created_at = message["createdAt"];
    EXPECT_TRUE(std::regex_match(created_at, std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)"))) << created_at;
    EXPECT_EQ(message["sender"], "sender@example.org");
    EXPECT_EQ(message["recipients"], OrderedJson::array({"user@example.com", "Other@Example.com"}));
    EXPECT_EQ(message["from"], "Sender <sender@example.org>");
    EXPECT_EQ(message["subject"], "Hi");
    EXPECT_EQ(keys_of(message["remote"]), (std::vector<std::string>{"ip", "host", "helo"}));
    EXPECT_EQ(message["remote"]["ip"], "127.0.0.1");
    EXPECT_EQ(message["remote"]["helo"], "helo.client.test");
    EXPECT_EQ(message["remote"]["host"], host_in_received(delivered->field("body-mime")))
        << "remote.host differs from the host in the Received header";

    // Byte for byte: compact JSON, as JSON.stringify writes it.
    const std::string expected = R"({"protocol":"haraka-webhook.decision.v1","mode":"minimal","message":{"id":)" +
                                 quoted(id) + R"(,"createdAt":)" + quoted(created_at) +
                                 R"(,"sender":"sender@example.org","recipients":["user@example.com","Other@Example.com"],)"
                                 R"("from":"Sender <sender@example.org>","subject":"Hi","remote":{"ip":"127.0.0.1","host":)" +
                                 quoted(message["remote"]["host"].get<std::string>()) +
                                 R"(,"helo":"helo.client.test"}}})";
    EXPECT_EQ(request.body, expected) << first_difference(expected, request.body);

    // The decision service saw what meta.json holds.
    std::optional<nlohmann::json> meta;
    wait_until(
        [&] {
            meta = read_meta(pending_dir() / id);
            if (!meta) meta = read_meta(processing_dir() / id);
            return meta.has_value() || hook_.count() >= 2;
        },
        std::chrono::seconds(10));
    EXPECT_TRUE(meta.has_value()) << "meta.json of " << id << " was never readable";
    if (meta) {
        EXPECT_EQ((*meta)["createdAt"], created_at);
        EXPECT_EQ((*meta)["sender"], nlohmann::json(message["sender"]));
        EXPECT_EQ((*meta)["recipients"], nlohmann::json(message["recipients"]));
        EXPECT_EQ((*meta)["from"], nlohmann::json(message["from"]));
        EXPECT_EQ((*meta)["subject"], nlohmann::json(message["subject"]));
        EXPECT_EQ((*meta)["remote"]["ip"], nlohmann::json(message["remote"]["ip"]));
        EXPECT_EQ((*meta)["remote"]["host"], nlohmann::json(message["remote"]["host"]));
        EXPECT_EQ((*meta)["remote"]["helo"], nlohmann::json(message["remote"]["helo"]));
    }
    ASSERT_TRUE(spool_drains());
    EXPECT_EQ(decider_.count(), 1u) << "a retry must not ask the decision service again";
}

TEST_F(DecisionTest, NoAuthorizationHeaderWithoutAToken) {
    decider_.reply_json(R"({"decision":"allow"})");
    ASSERT_TRUE(start_with_decision({}, /*with_token=*/false));
    const std::string id = send_one(simple_message());
    ASSERT_FALSE(id.empty());
    ASSERT_EQ(decider_.count(), 1u);
    const auto request = decider_.requests().at(0);
    EXPECT_FALSE(request.has_header("Authorization")) << request.header("Authorization");
    EXPECT_EQ(request.header("Content-Type"), "application/json");
    EXPECT_EQ(request.header("Accept"), "application/json");
    EXPECT_TRUE(request_for(id).has_value());
}

TEST_F(DecisionTest, WithoutDecisionUrlNothingIsAsked) {
    decider_.reply_json(R"({"decision":"deny"})");
    ASSERT_TRUE(start_daemon());
    const std::string id = send_one(simple_message());
    ASSERT_FALSE(id.empty());
    EXPECT_TRUE(request_for(id).has_value());
    EXPECT_EQ(decider_.count(), 0u);
}

// --- deny ---------------------------------------------------------------------------------------

TEST_F(DecisionTest, DenyAnswers550WithTheSanitisedMessageAndSpoolsNothing) {
    decider_.reply_json(
        R"({"decision":"deny","reason":"blocked_sender","message":"  Delivery rejected\r\n\r\nby policy \u270b\t(see https://x.test/p)  "})");
    ASSERT_TRUE(start_with_decision());
    auto client = connect();
    ASSERT_EQ(client->ehlo().code, 250);

    const Reply reply = send(*client, "denied one");
    EXPECT_EQ(reply.code, 550) << reply;
    EXPECT_EQ(reply.text(), "550 5.7.1 Delivery rejected by policy (see https://x.test/p)") << reply;
    EXPECT_EQ(decider_.count(), 1u);
    expect_spool_empty("after deny");

    // The session goes on, and the denied message never reaches the webhook.
    expect_only_later_message_delivered(*client, "the denied message");
}

TEST_F(DecisionTest, DenyWithoutMessageOrReasonSaysMessageRejected) {
    decider_.reply_json(R"({"decision":"deny"})");
    ASSERT_TRUE(start_with_decision());
    auto client = connect();
    ASSERT_EQ(client->ehlo().code, 250);
    const Reply reply = send(*client, "denied");
    EXPECT_EQ(reply.text(), "550 5.7.1 Message rejected") << reply;
    expect_spool_empty("after deny");

    // Only a reason: the reason is shown.
    decider_.reply_json(R"({"decision":"deny","reason":"blocked_sender"})");
    EXPECT_EQ(send(*client, "denied again").text(), "550 5.7.1 blocked_sender");
    // A message of nothing but dropped characters: the fallback.
    decider_.reply_json(R"({"decision":"deny","reason":"r","message":"\r\n\u00e9"})");
    EXPECT_EQ(send(*client, "denied thrice").text(), "550 5.7.1 Message rejected");
    // At most 200 characters.
    decider_.reply_json(R"({"decision":"deny","message":")" + std::string(300, 'z') + R"("})");
    EXPECT_EQ(send(*client, "denied long").text(), "550 5.7.1 " + std::string(200, 'z'));
    expect_spool_empty("after the denials");
    expect_only_later_message_delivered(*client, "a denied message");
}

// --- silent_deny ------------------------------------------------------------------------------

TEST_F(DecisionTest, SilentDenyAnswers250ButDiscardsAndNeverPosts) {
    decider_.reply_json(R"({"decision":"silent_deny","reason":"shadow_block_7","message":"internal note"})");
    ASSERT_TRUE(start_with_decision());
    auto client = connect();
    ASSERT_EQ(client->ehlo().code, 250);

    const Reply reply = send(*client, "silently dropped");
    EXPECT_EQ(reply.code, 250) << reply;
    const std::string silent_id = queued_id(reply);
    EXPECT_TRUE(is_spool_id(silent_id)) << "a silent deny must look queued: " << reply;
    expect_spool_empty("after silent_deny");
    EXPECT_TRUE(log_mentions("shadow_block_7")) << "the reason of a silent deny is logged";

    expect_only_later_message_delivered(*client, "the silently denied message");
    for (const auto& request : hook_.requests()) EXPECT_NE(request.id(), silent_id);
    expect_spool_empty("at the end");
}

// --- unavailable --------------------------------------------------------------------------------

struct Unavailable {
    const char* what;
    WebhookReply reply;
    const char* logged;  // a piece of the log line saying why
};

TEST_F(DecisionTest, EveryInvalidAnswerIs451AndSpoolsNothing) {
    auto json = [](unsigned status, std::string body) {
        WebhookReply r;
        r.status = status;
        r.body = std::move(body);
        r.content_type = "application/json";
        return r;
    };
    const std::vector<Unavailable> cases = {
        {"HTTP 500", json(500, R"({"decision":"allow"})"), "returned 500"},
        {"HTTP 503", json(503, "busy"), "returned 503"},
        {"HTTP 201 allow", json(201, R"({"decision":"allow"})"), "returned 201"},
        {"invalid JSON", json(200, "{\"decision\": allow"), "invalid JSON"},
        {"empty body", json(200, " "), "invalid JSON"},
        {"JSON array", json(200, R"(["allow"])"), "invalid decision"},
        {"JSON string", json(200, R"("allow")"), "invalid decision"},
        {"unknown decision", json(200, R"({"decision":"maybe"})"), "invalid decision"},
        {"decision in capitals", json(200, R"({"decision":"ALLOW"})"), "invalid decision"},
        {"no decision", json(200, R"({"reason":"x"})"), "invalid decision"},
    };
    ASSERT_TRUE(start_with_decision());
    auto client = connect();
    ASSERT_EQ(client->ehlo().code, 250);
    std::size_t asked = 0;
    for (const auto& c : cases) {
        SCOPED_TRACE(c.what);
        decider_.reply_with([r = c.reply](const WebhookRequest&) { return r; });
        const Reply reply = send(*client, std::string("unavailable: ") + c.what);
        EXPECT_EQ(reply.code, 451) << reply;
        EXPECT_EQ(reply.last().rfind("4.7.1 ", 0), 0u) << reply;
        EXPECT_EQ(decider_.count(), ++asked);
        expect_spool_empty(c.what);
        EXPECT_TRUE(log_mentions(c.logged)) << "the log should say why (" << c.logged << ")";
    }
    expect_only_later_message_delivered(*client, "a message refused with 451");
}

TEST_F(DecisionTest, TimeoutIs451WithinTheWebhookTimeout) {
    decider_.reply_with([](const WebhookRequest&) {
        WebhookReply r;
        r.body = R"({"decision":"allow"})";
        r.content_type = "application/json";
        r.delay = std::chrono::seconds(5);
        return r;
    });
    ASSERT_TRUE(start_with_decision({{"WEBHOOK_TIMEOUT_MS", "300"}}));
    auto client = connect();
    ASSERT_EQ(client->ehlo().code, 250);
    const auto started = std::chrono::steady_clock::now();
    const Reply reply = send(*client, "too slow");
    const auto took = std::chrono::steady_clock::now() - started;
    EXPECT_EQ(reply.code, 451) << reply;
    EXPECT_EQ(reply.last().rfind("4.7.1 ", 0), 0u) << reply;
    EXPECT_LT(took, std::chrono::milliseconds(3000)) << "WEBHOOK_TIMEOUT_MS=300 did not bound the decision request";
    EXPECT_EQ(decider_.count(), 1u);
    expect_spool_empty("after the timeout");
    expect_only_later_message_delivered(*client, "the timed-out message");
}

TEST_F(DecisionTest, ConnectionRefusedIs451AndSpoolsNothing) {
    decider_.stop();  // the decision URL now points at a closed port
    ASSERT_TRUE(start_with_decision());
    auto client = connect();
    ASSERT_EQ(client->ehlo().code, 250);
    const Reply reply = send(*client, "nobody home");
    EXPECT_EQ(reply.code, 451) << reply;
    EXPECT_EQ(reply.last().rfind("4.7.1 ", 0), 0u) << reply;
    expect_spool_empty("after connection refused");
    EXPECT_TRUE(log_mentions("decision")) << "the log should say the decision API failed";

    decider_.start();  // the same port again
    expect_only_later_message_delivered(*client, "the refused message");
}

// --- payload modes ----------------------------------------------------------------------------

TEST_F(DecisionTest, SummaryModeAddsHeadersButNoRawMime) {
    decider_.reply_json(R"({"decision":"allow"})");
    ASSERT_TRUE(start_with_decision({{"WEBHOOK_DECISION_PAYLOAD_MODE", "summary"}}));
    const std::string id = send_one(simple_message("Summary please"));
    ASSERT_FALSE(id.empty());
    const auto body = decision_body(0);
    ASSERT_TRUE(body.has_value());
    EXPECT_EQ((*body)["mode"], "summary");
    const auto& message = (*body)["message"];
    EXPECT_EQ(keys_of(message), (std::vector<std::string>{"id", "createdAt", "sender", "recipients", "from",
                                                           "subject", "remote", "headers"}));
    EXPECT_FALSE(message.contains("rawMime"));
    const auto delivered = request_for(id);
    ASSERT_TRUE(delivered.has_value());
    // The same ordered [name, value] pairs as the webhook's message-headers, Received first.
    const auto headers = message["headers"];
    ASSERT_TRUE(headers.is_array());
    EXPECT_EQ(headers, OrderedJson::parse(delivered->field("message-headers")));
    ASSERT_GE(headers.size(), 5u);
    EXPECT_EQ(headers[0][0], "Received");
    EXPECT_EQ(headers[1], OrderedJson::array({"From", "Sender <sender@example.org>"}));
    EXPECT_EQ(headers[3], OrderedJson::array({"Subject", "Summary please"}));
}

TEST_F(DecisionTest, FullModeAddsRawMimeEqualToTheStoredMessage) {
    decider_.reply_json(R"({"decision":"allow"})");
    // Upper case is accepted.
    ASSERT_TRUE(start_with_decision({{"WEBHOOK_DECISION_PAYLOAD_MODE", "FULL"}}));
    const std::string sent = simple_message("Full please", "Line one.\r\n..dot-stuffed line\r\nLast line.\r\n");
    const std::string id = send_one(sent);
    ASSERT_FALSE(id.empty());
    const auto body = decision_body(0);
    ASSERT_TRUE(body.has_value());
    EXPECT_EQ((*body)["mode"], "full");
    const auto& message = (*body)["message"];
    EXPECT_EQ(keys_of(message), (std::vector<std::string>{"id", "createdAt", "sender", "recipients", "from",
                                                           "subject", "remote", "headers", "rawMime"}));
    const auto delivered = request_for(id);
    ASSERT_TRUE(delivered.has_value());
    const std::string body_mime = delivered->field("body-mime");
    const std::string raw_mime = message["rawMime"];
    EXPECT_EQ(raw_mime, body_mime) << first_difference(body_mime, raw_mime);
    const auto split = split_received(raw_mime);
    ASSERT_TRUE(split.has_value()) << "rawMime must start with the Received header mxhook adds";
    EXPECT_NE(split->received.find(" id " + id), std::string::npos) << split->received;
    EXPECT_EQ(split->rest, with_final_crlf(sent));
    EXPECT_EQ(message["headers"], OrderedJson::parse(delivered->field("message-headers")));
}

TEST_F(DecisionTest, FullModeReplacesInvalidUtf8InRawMimeButDeliversTheBytes) {
    decider_.reply_json(R"({"decision":"allow"})");
    ASSERT_TRUE(start_with_decision({{"WEBHOOK_DECISION_PAYLOAD_MODE", "full"}}));
    const std::string sent = simple_message("Latin-1", "Caf\xE9 cr\xE8me \xFF\r\nUTF-8 \xC3\xA9t\xC3\xA9\r\n");
    const std::string id = send_one(sent);
    ASSERT_FALSE(id.empty());
    const auto body = decision_body(0);
    ASSERT_TRUE(body.has_value());
    const std::string raw_mime = (*body)["message"]["rawMime"];
    const auto delivered = request_for(id);
    ASSERT_TRUE(delivered.has_value());
    const std::string body_mime = delivered->field("body-mime");
    EXPECT_NE(body_mime.find("Caf\xE9 cr\xE8me \xFF\r\n"), std::string::npos) << "body-mime must keep the bytes";
    std::string expected = body_mime;
    for (const std::string bad : {"\xE9", "\xE8", "\xFF"}) {
        for (auto pos = expected.find(bad); pos != std::string::npos; pos = expected.find(bad, pos + 3)) {
            expected.replace(pos, 1, "\xEF\xBF\xBD");
        }
    }
    EXPECT_EQ(raw_mime, expected) << first_difference(expected, raw_mime);
}

TEST_F(DecisionTest, MinimalModeByNameHasNeitherHeadersNorRawMime) {
    decider_.reply_json(R"({"decision":"allow"})");
    ASSERT_TRUE(start_with_decision({{"WEBHOOK_DECISION_PAYLOAD_MODE", "Minimal"}}));
    ASSERT_FALSE(send_one(simple_message()).empty());
    const auto body = decision_body(0);
    ASSERT_TRUE(body.has_value());
    EXPECT_EQ((*body)["mode"], "minimal");
    EXPECT_FALSE((*body)["message"].contains("headers"));
    EXPECT_FALSE((*body)["message"].contains("rawMime"));
}

TEST_F(DecisionTest, BadPayloadModeStopsTheStart) {
    Env env = base_env(free_port());
    env["WEBHOOK_DECISION_URL"] = decider_.url("/decide");
    env["WEBHOOK_DECISION_PAYLOAD_MODE"] = "bogus";
    Daemon d(mxhook_binary(), env, tmp_.path() / "bad-mode.log");
    d.start();
    const auto status = d.wait_exit(std::chrono::seconds(10));
    ASSERT_TRUE(status.has_value()) << "mxhook kept running with WEBHOOK_DECISION_PAYLOAD_MODE=bogus";
    EXPECT_TRUE(status->exited() && status->code() != 0) << status->describe();
    EXPECT_NE(d.log().find("WEBHOOK_DECISION_PAYLOAD_MODE"), std::string::npos) << d.log();
}

TEST_F(DecisionTest, NullSenderIsAnEmptyString) {
    decider_.reply_json(R"({"decision":"allow"})");
    ASSERT_TRUE(start_with_decision());
    auto client = connect();
    ASSERT_EQ(client->cmd("HELO plain.helo.test").code, 250);
    const Reply reply = client->send_message("", {"user@example.com"}, simple_message("bounce"));
    ASSERT_EQ(reply.code, 250) << reply;
    const auto body = decision_body(0);
    ASSERT_TRUE(body.has_value());
    EXPECT_EQ((*body)["message"]["sender"], "");
    EXPECT_EQ((*body)["message"]["remote"]["helo"], "plain.helo.test");
}

TEST_F(DecisionTest, MessagesRefusedByMxhookItselfAreNotAsked) {
    decider_.reply_json(R"({"decision":"allow"})");
    ASSERT_TRUE(start_with_decision({{"SMTP_MAX_MESSAGE_BYTES", "2000"}}));
    auto client = connect();
    ASSERT_EQ(client->ehlo().code, 250);
    const Reply reply = client->send_message("sender@example.org", {"user@example.com"},
                                             simple_message("big", std::string(5000, 'x') + "\r\n"));
    EXPECT_EQ(reply.code, 552) << reply;
    EXPECT_EQ(decider_.count(), 0u);
    expect_spool_empty("after 552");
    expect_only_later_message_delivered(*client, "the oversized message");
}

// --- shutdown while waiting -------------------------------------------------------------------------

TEST_F(DecisionTest, ShutdownWhileWaitingForADecisionKeepsTheReplyTruthful) {
    // SIGTERM arrives while a session waits for its answer, which comes within the grace.
    decider_.reply_with([](const WebhookRequest&) {
        WebhookReply r;
        r.body = R"({"decision":"allow"})";
        r.content_type = "application/json";
        r.delay = std::chrono::milliseconds(800);
        return r;
    });
    ASSERT_TRUE(start_with_decision({{"SHUTDOWN_GRACE_MS", "5000"}}));
    auto client = connect();
    ASSERT_EQ(client->ehlo().code, 250);
    auto pending_reply = std::async(std::launch::async, [&] { return send(*client, "during shutdown"); });
    ASSERT_TRUE(decider_.wait_for(1, std::chrono::seconds(10)));
    daemon().signal(SIGTERM);
    const Reply reply = pending_reply.get();
    const auto status = daemon().wait_exit(std::chrono::seconds(15));
    ASSERT_TRUE(status.has_value()) << "mxhook did not exit after SIGTERM";
    EXPECT_TRUE(status->exited() && status->code() == 0) << status->describe();

    // The transaction in DATA finishes: allowed within the grace, so 250 and durable.
    EXPECT_EQ(reply.code, 250) << reply;
    const std::string id = queued_id(reply);
    if (!id.empty()) {
        const bool kept = !list_dir(pending_dir()).empty() || request_for(id, std::chrono::milliseconds(0)).has_value();
        EXPECT_TRUE(kept) << "250 was answered but the message is neither spooled nor delivered";
    } else {
        expect_spool_empty("a refused message");
    }
    EXPECT_TRUE(tmp_items().empty());
}

// --- with WEBHOOK_RECIPIENT_MODE=each --------------------------------------------------------------

TEST_F(DecisionTest, EachModeAsksOncePerMessageThenPostsPerRecipient) {
    decider_.reply_json(R"({"decision":"allow"})");
    ASSERT_TRUE(start_with_decision({{"WEBHOOK_RECIPIENT_MODE", "each"}}));
    auto client = connect();
    ASSERT_EQ(client->ehlo().code, 250);
    const Reply reply = send(*client, "each allowed", {"a@example.com", "b@example.com"});
    const std::string id = queued_id(reply);
    ASSERT_FALSE(id.empty()) << reply;
    ASSERT_TRUE(hook_.wait_for(2, std::chrono::seconds(10)));
    ASSERT_TRUE(spool_drains());
    EXPECT_EQ(hook_.count(), 2u);
    ASSERT_EQ(decider_.count(), 1u);
    const auto body = OrderedJson::parse(decider_.requests().at(0).body);
    EXPECT_EQ(body["message"]["id"], id);
    EXPECT_EQ(body["message"]["recipients"], OrderedJson::array({"a@example.com", "b@example.com"}));

    // silent_deny and deny in each mode: nothing for any recipient.
    decider_.reply_json(R"({"decision":"silent_deny"})");
    EXPECT_EQ(send(*client, "each silent", {"a@example.com", "b@example.com"}).code, 250);
    expect_spool_empty("each + silent_deny");
    decider_.reply_json(R"({"decision":"deny","message":"no"})");
    EXPECT_EQ(send(*client, "each denied", {"a@example.com", "b@example.com"}).text(), "550 5.7.1 no");
    expect_spool_empty("each + deny");
    decider_.reply_json(R"({"decision":"allow"})");
    const std::string later = queued_id(send(*client, "each later", {"c@example.com"}));
    ASSERT_FALSE(later.empty());
    ASSERT_TRUE(request_for(later).has_value());
    ASSERT_TRUE(spool_drains());
    EXPECT_EQ(hook_.count(), 3u) << "a refused message was posted";
}

// --- never blocks other sessions ------------------------------------------------------------------

TEST_F(DecisionTest, WaitingForADecisionDoesNotBlockOtherSessions) {
    decider_.reply_with([](const WebhookRequest& request) {
        WebhookReply r;
        r.body = R"({"decision":"allow"})";
        r.content_type = "application/json";
        if (request.body.find("\"subject\":\"slow\"") != std::string::npos) r.delay = std::chrono::seconds(3);
        return r;
    });
    ASSERT_TRUE(start_with_decision());

    auto slow_client = connect();
    ASSERT_EQ(slow_client->ehlo().code, 250);
    std::atomic<bool> slow_done{false};
    auto slow = std::async(std::launch::async, [&] {
        Reply r = send(*slow_client, "slow");
        slow_done = true;
        return r;
    });
    ASSERT_TRUE(decider_.wait_for(1, std::chrono::seconds(10))) << "the slow decision was never asked";

    // While the first session waits for its answer, a second one goes through end to end.
    auto fast_client = connect();
    ASSERT_EQ(fast_client->ehlo().code, 250);
    const Reply fast = send(*fast_client, "fast");
    EXPECT_EQ(fast.code, 250) << fast;
    EXPECT_FALSE(slow_done.load()) << "the second session had to wait for the first one's decision";

    const Reply slow_reply = slow.get();
    EXPECT_EQ(slow_reply.code, 250) << slow_reply;
    EXPECT_TRUE(request_for(queued_id(slow_reply)).has_value());
    EXPECT_TRUE(request_for(queued_id(fast)).has_value());
}

}  // namespace
}  // namespace itest
