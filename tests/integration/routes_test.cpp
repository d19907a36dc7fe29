// WEBHOOK_ROUTES (a routes file: conditions on the envelope recipient, the envelope sender
// and header fields, then `post <url> [format=...]`, `drop` or `reject`) through the real
// binary. Route targets are TestWebhooks of their own (A, B, C, D besides the fixture's
// default one) and each route posts to a path of its own, so every request says which line
// sent it. Messages are told apart by their Subject.

#include "harness/fixture.hpp"

#include <csignal>

#include <algorithm>
#include <cctype>
#include <iostream>
#include <set>
#include <sstream>

namespace itest {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// Where a request went: the server's name (A, B, ..., "default") and the target path.
struct Hit {
    std::string where;   // "A/exact"
    WebhookRequest request;
};

class RoutesTest : public IntegrationTest {
protected:
    void TearDown() override {
        IntegrationTest::TearDown();
        if (!HasFailure()) return;
        for (const auto& [name, hook] : targets()) {
            const auto requests = hook->requests();
            std::cerr << "server " << name << " received " << requests.size() << " request(s)";
            for (std::size_t i = 0; i < requests.size() && i < 20; ++i) {
                std::cerr << (i ? ", " : ": ") << requests[i].target << " subject=\"" << subject_of(requests[i])
                          << "\" id=" << requests[i].id() << " -> " << requests[i].status;
            }
            std::cerr << "\n";
        }
        if (fs::exists(routes_path())) std::cerr << "routes file now:\n" << read_file(routes_path()) << "\n";
    }

    std::vector<std::pair<std::string, TestWebhook*>> targets() {
        return {{"default", &hook_}, {"A", &a_}, {"B", &b_}, {"C", &c_}, {"D", &d_}};
    }

    fs::path routes_path() const { return tmp_.path() / "routes.conf"; }

    // "{A}" in `text` becomes A's base URL (http://127.0.0.1:<port>), and so on for B, C, D.
    std::string expand(std::string text) {
        for (const auto& [name, hook] : targets()) {
            const std::string key = "{" + name + "}";
            const std::string base = "http://127.0.0.1:" + std::to_string(hook->port());
            for (auto at = text.find(key); at != std::string::npos; at = text.find(key, at + base.size())) {
                text.replace(at, key.size(), base);
            }
        }
        return text;
    }

    void write_routes(const std::string& text) { write_file(routes_path(), expand(text)); }

    bool start_with_routes(const std::string& text, Env extra = {}) {
        write_routes(text);
        extra["WEBHOOK_ROUTES"] = routes_path().string();
        return start_daemon(extra);
    }

    // Subject of a request in any format (json: the "Subject" member; else the form field).
    static std::string subject_of(const WebhookRequest& request) {
        if (request.header("Content-Type").rfind("application/json", 0) == 0) {
            try {
                return json::parse(request.body).value("Subject", std::string());
            } catch (const std::exception&) {
                return "(unparsable json)";
            }
        }
        return request.field("subject");
    }

    // Every request, on every server, for the message with this subject.
    std::vector<Hit> hits(const std::string& subject) {
        std::vector<Hit> out;
        for (const auto& [name, hook] : targets()) {
            for (auto& request : hook->requests()) {
                if (subject_of(request) == subject) out.push_back({name + request.target, std::move(request)});
            }
        }
        return out;
    }

    static std::vector<std::string> places(const std::vector<Hit>& hits) {
        std::vector<std::string> out;
        for (const auto& h : hits) out.push_back(h.where);
        std::sort(out.begin(), out.end());
        return out;
    }

    static std::string message(const std::string& subject, const std::string& extra_headers = "",
                               const std::string& from_header = "From: Sender <sender@example.org>\r\n") {
        return from_header + "To: someone@example.com\r\n" + extra_headers + "Subject: " + subject +
               "\r\nMessage-ID: <routes-test@example.org>\r\n\r\nBody of the message.\r\n";
    }

    // Sends `text` (its Subject is `subject`), waits (bounded) until at least `expected`
    // requests for it arrived and the spool drained, and returns them all. With expected 0
    // it only waits for the spool to drain: every item committed before the 250 has then
    // been posted.
    std::vector<Hit> deliver(const std::string& subject, const std::string& text,
                             const std::vector<std::string>& recipients, const std::string& from = "sender@example.org",
                             std::size_t expected = 1) {
        const std::string id = send_one(text, recipients, from);
        if (id.empty()) return {};
        if (expected > 0) {
            EXPECT_TRUE(wait_until([&] { return hits(subject).size() >= expected; }, std::chrono::seconds(10)))
                << "\"" << subject << "\": " << hits(subject).size() << " of " << expected << " request(s) within 10 s";
        }
        EXPECT_TRUE(spool_drains()) << "\"" << subject << "\": the spool did not drain";
        return hits(subject);
    }

    // Lines of the current daemon's log that contain `needle`.
    std::vector<std::string> log_lines_with(const std::string& needle) {
        std::vector<std::string> out;
        std::istringstream in(daemon().log());
        std::string line;
        while (std::getline(in, line)) {
            if (line.find(needle) != std::string::npos) out.push_back(line);
        }
        return out;
    }

    // Waits (bounded) until more than `before` log lines contain `needle`.
    bool wait_log(const std::string& needle, std::size_t before, std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
        return wait_until([&] { return log_lines_with(needle).size() > before; }, timeout);
    }

    // A daemon with exactly this environment (an empty value stays set, empty).
    bool start_env(const Env& env) {
        const auto log = tmp_.path() / ("daemon-" + std::to_string(daemons_.size() + 1) + ".log");
        daemons_.push_back(std::make_unique<Daemon>(mxhook_binary(), env, log));
        daemon().start();
        if (!daemon().wait_ready(std::chrono::seconds(10))) {
            ADD_FAILURE() << "mxhook did not answer 220 within 10 s";
            return false;
        }
        return true;
    }

    TestWebhook a_, b_, c_, d_;
};

// --- 1. the first matching line wins -------------------------------------------------------

TEST_F(RoutesTest, FirstMatchingLineWinsAndReorderingChangesTheWinner) {
    ASSERT_TRUE(start_with_routes("to:bob@example.com post {A}/bob\n"
                                  "to:*@example.com post {B}/domain\n"
                                  "to:* post {C}/any\n"));
    EXPECT_EQ(places(deliver("order 1 bob", message("order 1 bob"), {"bob@example.com"})),
              std::vector<std::string>{"A/bob"});
    EXPECT_EQ(places(deliver("order 1 carol", message("order 1 carol"), {"carol@example.com"})),
              std::vector<std::string>{"B/domain"});
    // `to:*` matches any address: nothing is left for the default.
    EXPECT_EQ(places(deliver("order 1 other", message("order 1 other"), {"x@example.net"})),
              std::vector<std::string>{"C/any"});
    ASSERT_NO_FATAL_FAILURE(stop_daemon());

    // The same lines, the first two swapped: bob@ now matches the domain line first.
    ASSERT_TRUE(start_with_routes("to:*@example.com post {B}/domain\n"
                                  "to:bob@example.com post {A}/bob\n"
                                  "to:* post {C}/any\n"));
    EXPECT_EQ(places(deliver("order 2 bob", message("order 2 bob"), {"bob@example.com"})),
              std::vector<std::string>{"B/domain"});
    // And `to:*` first takes everything.
    ASSERT_NO_FATAL_FAILURE(stop_daemon());
    ASSERT_TRUE(start_with_routes("to:* post {C}/any\n"
                                  "to:bob@example.com post {A}/bob\n"
                                  "to:*@example.com post {B}/domain\n"));
    EXPECT_EQ(places(deliver("order 3 bob", message("order 3 bob"), {"bob@example.com"})),
              std::vector<std::string>{"C/any"});
    EXPECT_EQ(hook_.count(), 0u) << "the default URL got a request although `to:*` matches every recipient";
}

// --- 2. every kind of condition -----------------------------------------------------------

struct MatchCase {
    const char* name;
    const char* recipient;
    const char* sender;          // "" is the null sender <>
    std::string extra_headers;   // before Subject:
    std::string from_header;     // "" keeps the default From: header
    const char* expected;        // where it must go
};

TEST_F(RoutesTest, EveryKindOfMatch) {
    ASSERT_TRUE(start_with_routes("# every kind of match, each to a path of its own on A\n"
                                  "   # an indented comment, then blank lines\n"
                                  "\n"
                                  "   \t \n"
                                  "to:bob@example.com post {A}/exact\n"
                                  "to:*@sales.example.com post {A}/domain\n"
                                  "  to:orders+*@example.com   post   {A}/plus  \n"
                                  "to:/ticket-[0-9]+@help\\.example\\.com/ post {A}/regex\n"
                                  "to:* from:boss@example.org post {A}/from\n"
                                  "to:* from:<> post {A}/null\n"
                                  "to:* header:X-Priority=urgent* post {A}/glob\n"
                                  "to:* header:list-id=/.*<announce\\.example\\.com>/ post {A}/hregex\n"
                                  "# the end\n"));
    const std::vector<MatchCase> cases = {
        {"exact", "bob@example.com", "other@example.org", "", "", "A/exact"},
        {"exact, other case", "BOB@Example.COM", "other@example.org", "", "", "A/exact"},
        {"exact, longer local part", "bobby@example.com", "other@example.org", "", "", "default/hook"},
        {"exact, longer domain", "bob@example.com.au", "other@example.org", "", "", "default/hook"},
        {"domain", "anyone@sales.example.com", "other@example.org", "", "", "A/domain"},
        {"domain, other case", "Anyone@SALES.Example.com", "other@example.org", "", "", "A/domain"},
        {"domain, subdomain", "x@eu.sales.example.com", "other@example.org", "", "", "default/hook"},
        {"domain, parent", "x@example.com", "other@example.org", "", "", "default/hook"},
        {"plus, no tag", "orders@example.com", "other@example.org", "", "", "A/plus"},
        {"plus, tag", "orders+42@example.com", "other@example.org", "", "", "A/plus"},
        {"plus, tag, other case", "Orders+Big-Tag@EXAMPLE.com", "other@example.org", "", "", "A/plus"},
        {"plus, longer local part", "ordersx@example.com", "other@example.org", "", "", "default/hook"},
        {"plus, other domain", "orders+1@example.org", "other@example.org", "", "", "default/hook"},
        {"regex", "ticket-42@help.example.com", "other@example.org", "", "", "A/regex"},
        {"regex, other case", "TICKET-7@HELP.EXAMPLE.COM", "other@example.org", "", "", "A/regex"},
        {"regex, prefix (whole address)", "old-ticket-42@help.example.com", "other@example.org", "", "", "default/hook"},
        {"regex, suffix (whole address)", "ticket-42@help.example.com.evil.net", "other@example.org", "", "", "default/hook"},
        {"from", "nobody@example.com", "boss@example.org", "", "", "A/from"},
        {"from, to: line first", "bob@example.com", "boss@example.org", "", "", "A/exact"},
        {"from is the envelope, not the header", "nobody@example.com", "other@example.org", "",
         "From: Boss <boss@example.org>\r\n", "default/hook"},
        {"from:<> and the null sender", "nobody@example.com", "", "", "", "A/null"},
        {"header glob", "nobody@example.com", "other@example.org", "X-Priority: Urgent, call back\r\n", "", "A/glob"},
        {"header glob is whole-value", "nobody@example.com", "other@example.org", "X-Priority: not urgent\r\n", "",
         "default/hook"},
        {"header glob, name in other case, second field", "nobody@example.com", "other@example.org",
         "x-priority: low\r\nX-PRIORITY: urgent\r\n", "", "A/glob"},
        {"header glob, folded value (unfolded, trimmed)", "nobody@example.com", "other@example.org",
         "X-Priority:\r\n   urgent\r\n", "", "A/glob"},
        {"header regex, folded", "nobody@example.com", "other@example.org",
         "List-Id: Announcements\r\n <announce.example.com>\r\n", "", "A/hregex"},
        {"header regex is whole-value", "nobody@example.com", "other@example.org",
         "List-Id: <announce.example.com> (archived)\r\n", "", "default/hook"},
        {"nothing matches", "nobody@example.com", "other@example.org", "X-Other: urgent\r\n", "", "default/hook"},
    };
    int n = 0;
    for (const auto& c : cases) {
        SCOPED_TRACE(c.name);
        const std::string subject = "kind " + std::to_string(++n);
        const std::string text = c.from_header.empty() ? message(subject, c.extra_headers)
                                                       : message(subject, c.extra_headers, c.from_header);
        const auto got = deliver(subject, text, {c.recipient}, c.sender);
        EXPECT_EQ(places(got), std::vector<std::string>{c.expected})
            << c.name << ": RCPT " << c.recipient << ", MAIL <" << c.sender << ">"
            << (got.size() == 1 ? "; message-headers as posted: " + got[0].request.field("message-headers") : "");
        if (got.size() == 1 && got[0].request.form_error.empty()) {
            std::string field = got[0].request.field("recipient"), sent = c.recipient;
            for (auto* s : {&field, &sent}) {
                std::transform(s->begin(), s->end(), s->begin(), [](unsigned char ch) { return std::tolower(ch); });
            }
            EXPECT_EQ(field, sent) << c.name;
        }
    }
}

// Recipients no line matches follow the default: WEBHOOK_URL, or WEBHOOK_ROLE_URL for role
// addresses; an empty WEBHOOK_ROUTES is off (today's behaviour, the role URL taking the
// whole message).
TEST_F(RoutesTest, UnmatchedRecipientsFollowTheDefaultAndEmptyValueIsOff) {
    ASSERT_TRUE(start_with_routes("to:*@a.example.com post {A}/a\n", {{"WEBHOOK_ROLE_URL", hook_.url("/role")}}));
    EXPECT_EQ(places(deliver("default role", message("default role"), {"postmaster@example.com"})),
              std::vector<std::string>{"default/role"});
    EXPECT_EQ(places(deliver("default main", message("default main"), {"user@example.com"})),
              std::vector<std::string>{"default/hook"});
    const auto split = deliver("default split", message("default split"), {"x@a.example.com", "postmaster@example.com"},
                               "sender@example.org", 2);
    EXPECT_EQ(places(split), (std::vector<std::string>{"A/a", "default/role"}));
    for (const auto& h : split) {
        EXPECT_EQ(h.request.field("recipient"), h.where == "A/a" ? "x@a.example.com" : "postmaster@example.com")
            << h.where;
    }
    // The recipients that follow the default are one group: today's rule sends it whole to
    // the role URL when one of them is a role address.
    const auto group = deliver("default group", message("default group"),
                               {"user@example.com", "x@a.example.com", "postmaster@example.com"}, "sender@example.org", 2);
    EXPECT_EQ(places(group), (std::vector<std::string>{"A/a", "default/role"}));
    for (const auto& h : group) {
        if (h.where == "default/role") {
            EXPECT_EQ(h.request.field("recipient"), "user@example.com,postmaster@example.com");
        }
    }
    ASSERT_NO_FATAL_FAILURE(stop_daemon());

    Env env = base_env(free_port());
    env["WEBHOOK_ROLE_URL"] = hook_.url("/role");
    env["WEBHOOK_ROUTES"] = "";
    ASSERT_TRUE(start_env(env)) << "WEBHOOK_ROUTES= (empty) must be accepted as off";
    const auto whole = deliver("routes off", message("routes off"), {"x@a.example.com", "postmaster@example.com"});
    EXPECT_EQ(places(whole), std::vector<std::string>{"default/role"});
    if (!whole.empty()) {
        EXPECT_EQ(whole[0].request.field("recipient"), "x@a.example.com,postmaster@example.com");
    }
}

// --- 3. one POST per matched route ------------------------------------------------------------

TEST_F(RoutesTest, RecipientsOfDifferentRoutesAreSplitWithEachRoutesFormat) {
    ASSERT_TRUE(start_with_routes("to:*@a.example.com post {A}/json format=json\n"
                                  "to:*@b.example.com post {B}/mime\n"
                                  "to:*@c.example.com post {C}/parsed format=parsed\n"));
    const std::string subject = "split four ways";
    const std::string sent = message(subject);
    const std::string queued =
        send_one(sent, {"x@a.example.com", "y@b.example.com", "z@a.example.com", "p@c.example.com", "w@other.example.com",
                       "v@b.example.com"});
    ASSERT_FALSE(queued.empty());
    ASSERT_TRUE(wait_until([&] { return hits(subject).size() >= 4; }, std::chrono::seconds(10)))
        << hits(subject).size() << " of 4 requests";
    ASSERT_TRUE(spool_drains());
    const auto got = hits(subject);
    ASSERT_EQ(places(got), (std::vector<std::string>{"A/json", "B/mime", "C/parsed", "default/hook"}));

    std::set<std::string> ids;
    for (const auto& h : got) {
        SCOPED_TRACE(h.where);
        const WebhookRequest& r = h.request;
        EXPECT_EQ(r.status, 200u);
        EXPECT_TRUE(is_spool_id(r.id())) << r.id();
        ids.insert(r.id());
        const std::string type = r.header("Content-Type");
        if (h.where == "A/json") {
            EXPECT_EQ(type.rfind("application/json", 0), 0u) << type;
            json body;
            ASSERT_NO_THROW(body = json::parse(r.body)) << printable(r.body, 300);
            EXPECT_EQ(body.value("Envelope", json()),
                      (json{{"From", "sender@example.org"}, {"To", json::array({"x@a.example.com", "z@a.example.com"})}}))
                << "the json POST's envelope must list only its route's recipients";
            EXPECT_EQ(body.value("OriginalRecipient", json()), "x@a.example.com");
            const std::string timestamp = r.header("X-Mxhook-Timestamp");
            const std::string token = r.header("X-Mxhook-Token");
            EXPECT_EQ(r.header("X-Mxhook-Signature"), hmac_sha256_hex(kSigningKey, timestamp + token + r.body));
        } else if (h.where == "B/mime") {
            EXPECT_EQ(type, "application/x-www-form-urlencoded");
            EXPECT_EQ(r.field("recipient"), "y@b.example.com,v@b.example.com");
            EXPECT_EQ(r.field("sender"), "sender@example.org");
            const auto split = split_received(r.field("body-mime"));
            ASSERT_TRUE(split.has_value()) << printable(r.field("body-mime"));
            EXPECT_TRUE(split->rest == with_final_crlf(sent)) << first_difference(with_final_crlf(sent), split->rest);
            EXPECT_EQ(r.field("signature"), hmac_sha256_hex(kSigningKey, r.field("timestamp") + r.field("token")));
        } else if (h.where == "C/parsed") {
            EXPECT_EQ(type.rfind("multipart/form-data", 0), 0u) << type;
            EXPECT_EQ(r.form_error, "");
            EXPECT_EQ(r.field("recipient"), "p@c.example.com");
            EXPECT_TRUE(r.has_field("body-plain")) << ::testing::PrintToString(field_names(r.form));
            EXPECT_NE(r.field("body-plain").find("Body of the message."), std::string::npos) << r.field("body-plain");
            EXPECT_FALSE(r.has_field("body-mime")) << "the parsed format has no body-mime";
        } else {
            EXPECT_EQ(type, "application/x-www-form-urlencoded");
            EXPECT_EQ(r.field("recipient"), "w@other.example.com");
            EXPECT_TRUE(r.has_field("body-mime"));
        }
    }
    EXPECT_EQ(ids.size(), 4u) << "every POST must have its own X-Mxhook-Id";
    if (!ids.count(queued)) {
        std::cout << "[ note     ] the queued id " << queued << " is not one of the POSTs' X-Mxhook-Ids\n";
    }
}

// WEBHOOK_RECIPIENT_MODE=each still gives one item (and POST) per recipient, each to its
// route.
TEST_F(RoutesTest, EachModeStillPostsOncePerRecipient) {
    ASSERT_TRUE(start_with_routes("to:*@a.example.com post {A}/a\n"
                                  "to:*@b.example.com post {B}/b format=json\n",
                                  {{"WEBHOOK_RECIPIENT_MODE", "each"}}));
    const auto got = deliver("each mode", message("each mode"), {"x@a.example.com", "y@b.example.com", "z@a.example.com"},
                             "sender@example.org", 3);
    ASSERT_EQ(places(got), (std::vector<std::string>{"A/a", "A/a", "B/b"}));
    std::set<std::string> a_recipients, ids;
    for (const auto& h : got) {
        ids.insert(h.request.id());
        if (h.where == "A/a") a_recipients.insert(h.request.field("recipient"));
        else {
            json body;
            ASSERT_NO_THROW(body = json::parse(h.request.body));
            EXPECT_EQ(body.value("Envelope", json()).value("To", json()), json::array({"y@b.example.com"}));
        }
    }
    EXPECT_EQ(a_recipients, (std::set<std::string>{"x@a.example.com", "z@a.example.com"}));
    EXPECT_EQ(ids.size(), 3u);
}

// --- 4. drop -----------------------------------------------------------------------------

TEST_F(RoutesTest, DropAcceptsButDeliversNothing) {
    // If `drop` were ignored the next line (D) or the default would get the recipient.
    ASSERT_TRUE(start_with_routes("to:*@spam.example.com drop\n"
                                  "to:*@spam.example.com post {D}/not-dropped\n"
                                  "to:keep@example.com post {A}/keep\n"));
    const std::size_t drops_before = log_lines_with("action=drop").size();
    const auto got = deliver("drop one", message("drop one"), {"junk@spam.example.com", "keep@example.com"});
    ASSERT_EQ(places(got), std::vector<std::string>{"A/keep"});
    EXPECT_EQ(got[0].request.field("recipient"), "keep@example.com") << "the dropped recipient must not be listed";
    EXPECT_EQ(d_.count(), 0u) << "the dropped recipient was posted by the next line";
    EXPECT_EQ(hook_.count(), 0u) << "the dropped recipient was posted to the default";
    EXPECT_TRUE(wait_log("action=drop", drops_before)) << "no log line with action=drop";

    // Every recipient dropped: still 250 Queued as <id>, no POST and no spool item.
    const std::size_t drops_mid = log_lines_with("action=drop").size();
    const std::string subject = "drop all";
    auto client = connect();
    ASSERT_EQ(client->ehlo().code, 250);
    const Reply reply = client->send_message("sender@example.org", {"junk1@spam.example.com", "JUNK2@Spam.Example.COM"},
                                             message(subject));
    ASSERT_EQ(reply.code, 250) << reply;
    EXPECT_EQ(reply.last().rfind("2.0.0 Queued as ", 0), 0u) << reply;
    const std::string id = queued_id(reply);
    EXPECT_TRUE(is_spool_id(id)) << reply;
    client->cmd("QUIT");
    // Best effort: an item for it right after the 250 is a failure (its absence proves less).
    for (const auto& name : list_dir(pending_dir())) EXPECT_NE(name, id) << "an all-dropped message left an item";
    for (const auto& name : list_dir(processing_dir())) EXPECT_NE(name, id) << "an all-dropped message is being delivered";
    // Once the spool is drained, any item committed before the 250 has been posted.
    ASSERT_TRUE(spool_drains());
    EXPECT_TRUE(hits(subject).empty()) << "an all-dropped message was posted to " << ::testing::PrintToString(places(hits(subject)));
    EXPECT_TRUE(list_dir(pending_dir()).empty());
    EXPECT_TRUE(list_dir(dead_dir()).empty());
    EXPECT_TRUE(wait_log("action=drop", drops_mid)) << "no action=drop line for the all-dropped message";
    EXPECT_EQ(d_.count(), 0u);
    EXPECT_EQ(hook_.count(), 0u);
}

// --- 5. reject -------------------------------------------------------------------------------

class RoutesRejectTest : public RoutesTest {
protected:
    static constexpr const char* kRoutes =
        "to:*@blocked.example.com reject\n"
        "to:* from:spammer@bad.example reject\n"
        "to:*@maybe.example.com header:X-Let-In=yes post {B}/let-in\n"
        "to:*@maybe.example.com reject\n"
        "to:*@late.example.com reject\n"
        "to:*@vip.example.com from:vip@example.org header:X-Let-In=yes post {B}/vip\n"
        "to:*@vip.example.com reject\n"
        "to:*@nobounce.example.com from:<> reject\n"
        "to:*@example.com post {A}/ok\n";

    // RCPT TO:<rcpt> after MAIL FROM:<from> in a session of its own: the reply code.
    int rcpt_code(const std::string& from, const std::string& rcpt) {
        auto client = connect();
        if (client->ehlo().code != 250) return -1;
        const Reply mail = client->cmd("MAIL FROM:<" + from + ">");
        if (mail.code != 250) return -2;
        const int code = client->cmd("RCPT TO:<" + rcpt + ">").code;
        client->cmd("QUIT");
        return code;
    }
};

TEST_F(RoutesRejectTest, RejectedAtRcptWhileOthersInTheSessionGoOn) {
    ASSERT_TRUE(start_with_routes(kRoutes));
    auto client = connect();
    ASSERT_EQ(client->ehlo().code, 250);
    ASSERT_EQ(client->cmd("MAIL FROM:<alice@example.org>").code, 250);
    const Reply blocked = client->cmd("RCPT TO:<x@blocked.example.com>");
    EXPECT_EQ(blocked.code, 550) << blocked;
    EXPECT_EQ(blocked.last().rfind("5.7.1", 0), 0u) << blocked;
    const Reply ok = client->cmd("RCPT TO:<ok@example.com>");
    EXPECT_EQ(ok.code, 250) << ok;
    const Reply blocked_again = client->cmd("RCPT TO:<Y@BLOCKED.Example.com>");
    EXPECT_EQ(blocked_again.code, 550) << blocked_again;
    ASSERT_EQ(client->cmd("DATA").code, 354);
    const std::string subject = "reject one";
    ASSERT_TRUE(client->send_raw(encode_data(message(subject))));
    const Reply queued = client->read_reply();
    ASSERT_EQ(queued.code, 250) << queued;
    EXPECT_FALSE(queued_id(queued).empty()) << queued;

    // The same session goes on: a sender-based reject, then a new transaction.
    ASSERT_EQ(client->cmd("MAIL FROM:<spammer@bad.example>").code, 250);
    const Reply by_sender = client->cmd("RCPT TO:<ok@example.com>");
    EXPECT_EQ(by_sender.code, 550) << "from:spammer@bad.example reject: " << by_sender;
    EXPECT_EQ(client->cmd("RSET").code, 250);
    ASSERT_EQ(client->cmd("MAIL FROM:<alice@example.org>").code, 250);
    EXPECT_EQ(client->cmd("RCPT TO:<second@example.com>").code, 250);
    ASSERT_EQ(client->cmd("DATA").code, 354);
    ASSERT_TRUE(client->send_raw(encode_data(message("reject two"))));
    EXPECT_EQ(client->read_reply().code, 250);
    client->cmd("QUIT");

    ASSERT_TRUE(wait_until([&] { return hits(subject).size() >= 1 && hits("reject two").size() >= 1; },
                           std::chrono::seconds(10)));
    ASSERT_TRUE(spool_drains());
    const auto one = hits(subject);
    ASSERT_EQ(places(one), std::vector<std::string>{"A/ok"});
    EXPECT_EQ(one[0].request.field("recipient"), "ok@example.com");
    const auto two = hits("reject two");
    ASSERT_EQ(places(two), std::vector<std::string>{"A/ok"});
    EXPECT_EQ(two[0].request.field("recipient"), "second@example.com");
    EXPECT_EQ(hook_.count(), 0u);
    EXPECT_EQ(b_.count(), 0u);
}

// An earlier header: line could still match: accepted at RCPT, then posted by the header
// line, or dropped when after DATA its route is the reject line.
TEST_F(RoutesRejectTest, HeaderRouteBeforeRejectDefersTheDecisionToAfterData) {
    ASSERT_TRUE(start_with_routes(kRoutes));
    {
        auto client = connect();
        ASSERT_EQ(client->ehlo().code, 250);
        ASSERT_EQ(client->cmd("MAIL FROM:<alice@example.org>").code, 250);
        const Reply maybe = client->cmd("RCPT TO:<y@maybe.example.com>");
        ASSERT_EQ(maybe.code, 250) << "an earlier header: line could still match, so RCPT must be accepted: " << maybe;
        ASSERT_EQ(client->cmd("DATA").code, 354);
        ASSERT_TRUE(client->send_raw(encode_data(message("let in", "X-Let-In: yes\r\n"))));
        const Reply r = client->read_reply();
        EXPECT_EQ(r.code, 250) << r;
        client->cmd("QUIT");
    }
    ASSERT_TRUE(wait_until([&] { return !hits("let in").empty(); }, std::chrono::seconds(10)));
    ASSERT_TRUE(spool_drains());
    const auto let_in = hits("let in");
    ASSERT_EQ(places(let_in), std::vector<std::string>{"B/let-in"});
    EXPECT_EQ(let_in[0].request.field("recipient"), "y@maybe.example.com");

    // Without the header its route is the reject line: dropped after DATA, the other
    // recipient delivered.
    const auto kept_out = deliver("kept out", message("kept out", "X-Let-In: no\r\n"),
                                  {"y@maybe.example.com", "ok@example.com"}, "alice@example.org");
    ASSERT_EQ(places(kept_out), std::vector<std::string>{"A/ok"});
    EXPECT_EQ(kept_out[0].request.field("recipient"), "ok@example.com");
    EXPECT_EQ(b_.requests().size(), 1u) << "the header route got the message without the header";
    EXPECT_EQ(hook_.count(), 0u);
    // "it is dropped (logged)": some line names the recipient and says drop or reject.
    EXPECT_TRUE(wait_until(
        [&] {
            for (const auto& line : log_lines_with("y@maybe.example.com")) {
                if (line.find("drop") != std::string::npos || line.find("reject") != std::string::npos) return true;
            }
            return false;
        },
        std::chrono::seconds(10)))
        << "no log line names y@maybe.example.com as dropped or rejected";
}

// Only header: lines whose to:/from: match the recipient defer the decision: a header line
// for another domain, or whose from: does not match the sender, does not.
TEST_F(RoutesRejectTest, RcptDecisionLooksOnlyAtHeaderLinesMatchingTheEnvelope) {
    ASSERT_TRUE(start_with_routes(kRoutes));
    EXPECT_EQ(rcpt_code("alice@example.org", "x@late.example.com"), 550)
        << "the only earlier header: line is for another domain";
    EXPECT_EQ(rcpt_code("alice@example.org", "x@vip.example.com"), 550)
        << "the earlier header: line's from: does not match alice@";
    EXPECT_EQ(rcpt_code("vip@example.org", "x@vip.example.com"), 250)
        << "the earlier header: line's to: and from: match: the decision waits for the headers";
    EXPECT_EQ(rcpt_code("", "x@nobounce.example.com"), 550) << "from:<> reject with the null sender";
    EXPECT_EQ(rcpt_code("alice@example.org", "x@nobounce.example.com"), 250) << "from:<> must not match a real sender";
    EXPECT_EQ(rcpt_code("alice@example.org", "x@example.com"), 250);
    EXPECT_EQ(rcpt_code("spammer@bad.example", "x@example.com"), 550);
}

// A message whose only recipient is deferred at RCPT and then rejected after DATA: still
// 250, nothing posted.
TEST_F(RoutesRejectTest, DeferredRecipientRejectedAfterDataAlone) {
    ASSERT_TRUE(start_with_routes(kRoutes));
    const std::string id = send_one(message("deferred alone"), {"y@maybe.example.com"}, "alice@example.org");
    ASSERT_FALSE(id.empty());
    ASSERT_TRUE(spool_drains());
    EXPECT_TRUE(hits("deferred alone").empty()) << ::testing::PrintToString(places(hits("deferred alone")));
    EXPECT_TRUE(list_dir(dead_dir()).empty());
}

// --- 6. SIGHUP reloads the routes --------------------------------------------------------

TEST_F(RoutesTest, SighupReloadsAGoodFileAndKeepsTheOldRoutesOnABadOne) {
    ASSERT_TRUE(start_with_routes("to:*@example.com post {A}/a\n"));
    EXPECT_EQ(places(deliver("reload 1", message("reload 1"), {"u@example.com"})), std::vector<std::string>{"A/a"});

    const std::size_t reloads = log_lines_with("routes: reloaded").size();
    write_routes("# file B\nto:*@example.com post {B}/b\n");
    daemon().signal(SIGHUP);
    ASSERT_TRUE(wait_log("routes: reloaded", reloads)) << "no `routes: reloaded` line within 10 s of SIGHUP";
    EXPECT_EQ(places(deliver("reload 2", message("reload 2"), {"u@example.com"})), std::vector<std::string>{"B/b"});

    const std::size_t keeping = log_lines_with("keeping").size();
    const std::size_t reloads_after_b = log_lines_with("routes: reloaded").size();
    write_routes("# broken\n\nto:*@example.com pots {C}/c\n");
    daemon().signal(SIGHUP);
    ASSERT_TRUE(wait_log("keeping", keeping)) << "no error line containing `keeping` within 10 s of SIGHUP";
    const auto lines = log_lines_with("keeping");
    const std::string& error_line = lines.back();
    EXPECT_NE(error_line.find("pots"), std::string::npos) << "the reason is missing: " << error_line;
    EXPECT_NE(error_line.find("line 3"), std::string::npos) << "the line number is missing: " << error_line;
    EXPECT_EQ(log_lines_with("routes: reloaded").size(), reloads_after_b) << "a bad file was reported as reloaded";
    ASSERT_TRUE(daemon().running()) << "the daemon stopped on a bad routes file";
    EXPECT_EQ(places(deliver("reload 3", message("reload 3"), {"u@example.com"})), std::vector<std::string>{"B/b"});
    EXPECT_EQ(c_.count(), 0u);

    // A file that went missing keeps them too.
    fs::remove(routes_path());
    const std::size_t keeping_after_bad = log_lines_with("keeping").size();
    daemon().signal(SIGHUP);
    ASSERT_TRUE(wait_log("keeping", keeping_after_bad)) << "no `keeping` line after SIGHUP with the file missing";
    ASSERT_TRUE(daemon().running());
    EXPECT_EQ(places(deliver("reload 3b", message("reload 3b"), {"u@example.com"})), std::vector<std::string>{"B/b"});

    // A good file again after the bad one is taken.
    write_routes("to:*@example.com post {D}/d\n");
    daemon().signal(SIGHUP);
    ASSERT_TRUE(wait_log("routes: reloaded", reloads_after_b));
    EXPECT_EQ(places(deliver("reload 4", message("reload 4"), {"u@example.com"})), std::vector<std::string>{"D/d"});
}

// Queued items follow the routes in force when they are (re)tried.
TEST_F(RoutesTest, QueuedItemsFollowTheRoutesInForceAtDelivery) {
    a_.respond_with([](const WebhookRequest&) { return 503u; });
    ASSERT_TRUE(start_with_routes("to:*@example.com post {A}/a\n"));
    const std::string id = send_one(message("retried"), {"u@example.com"});
    ASSERT_FALSE(id.empty());
    ASSERT_TRUE(a_.wait_for(1, std::chrono::seconds(10))) << "the first attempt never reached A";

    const std::size_t reloads = log_lines_with("routes: reloaded").size();
    write_routes("to:*@example.com post {B}/b\n");
    daemon().signal(SIGHUP);
    ASSERT_TRUE(wait_log("routes: reloaded", reloads));
    ASSERT_TRUE(wait_until(
        [&] {
            for (const auto& r : b_.requests()) {
                if (subject_of(r) == "retried" && r.status == 200) return true;
            }
            return false;
        },
        std::chrono::seconds(10)))
        << "the queued item was not retried to the reloaded route";
    ASSERT_TRUE(spool_drains());
    const auto b_requests = b_.requests();
    ASSERT_EQ(b_requests.size(), 1u);
    const std::string a_id = a_.requests()[0].id();
    EXPECT_EQ(b_requests[0].id(), a_id) << "the retry keeps its X-Mxhook-Id";
    EXPECT_EQ(b_requests[0].target, "/b");
    for (const auto& r : a_.requests()) EXPECT_EQ(r.status, 503u);
    EXPECT_EQ(hook_.count(), 0u);
}

// A queued item whose route became `drop` is dropped at its next attempt: no more POSTs,
// nothing dead-lettered, the drop logged.
TEST_F(RoutesTest, QueuedItemWhoseRouteBecameDropIsDropped) {
    a_.respond_with([](const WebhookRequest&) { return 503u; });
    ASSERT_TRUE(start_with_routes("to:*@example.com post {A}/a\n"));
    const std::string id = send_one(message("to be dropped"), {"u@example.com"});
    ASSERT_FALSE(id.empty());
    ASSERT_TRUE(a_.wait_for(1, std::chrono::seconds(10)));
    const std::size_t reloads = log_lines_with("routes: reloaded").size();
    write_routes("to:*@example.com drop\n");
    daemon().signal(SIGHUP);
    ASSERT_TRUE(wait_log("routes: reloaded", reloads));
    ASSERT_TRUE(spool_drains()) << "the queued item was neither dropped nor delivered";
    const std::size_t a_count = a_.count();
    // Logged, naming the item (the words are not asked for: at delivery the daemon says
    // `outcome=dropped`, at reception `action=drop`).
    EXPECT_TRUE(wait_until(
        [&] {
            for (const auto& line : log_lines_with(id)) {
                if (line.find("drop") != std::string::npos) return true;
            }
            return false;
        },
        std::chrono::seconds(10)))
        << "no log line says the queued item " << id << " was dropped";
    EXPECT_TRUE(list_dir(dead_dir()).empty());
    EXPECT_EQ(hook_.count(), 0u);
    // With the spool empty there is nothing left to retry; the drop line came after the
    // last POST A saw.
    EXPECT_EQ(a_.count(), a_count) << "A got the dropped item again";
    for (const auto& r : a_.requests()) EXPECT_EQ(r.status, 503u);
}

// The groups of one message are delivered and retried on their own: B's failures do not
// re-deliver A's POST.
TEST_F(RoutesTest, GroupsAreRetriedOnTheirOwn) {
    b_.queue_statuses({500, 500, 500});
    ASSERT_TRUE(start_with_routes("to:*@a.example.com post {A}/a\n"
                                  "to:*@b.example.com post {B}/b\n"));
    const std::string subject = "b fails thrice";
    ASSERT_FALSE(send_one(message(subject), {"x@a.example.com", "y@b.example.com"}).empty());
    ASSERT_TRUE(wait_until([&] { return b_.count() >= 4; }, std::chrono::seconds(15))) << "B got " << b_.count();
    ASSERT_TRUE(spool_drains());
    const auto b = b_.requests();
    ASSERT_EQ(b.size(), 4u);
    for (std::size_t i = 0; i < b.size(); ++i) {
        EXPECT_EQ(b[i].status, i < 3 ? 500u : 200u) << i;
        EXPECT_EQ(b[i].id(), b[0].id()) << "a retry keeps its X-Mxhook-Id";
        EXPECT_EQ(b[i].field("recipient"), "y@b.example.com");
    }
    ASSERT_EQ(a_.count(), 1u) << "A's group was posted again when B's was retried";
    EXPECT_NE(a_.requests()[0].id(), b[0].id());
    EXPECT_EQ(a_.requests()[0].field("recipient"), "x@a.example.com");
    EXPECT_TRUE(list_dir(dead_dir()).empty());
}

// A queued item of several recipients whose routes differ after a reload is not split
// (README "Routes"): it goes whole to the route of its first recipient that is still
// posted to, with a warning, and is dropped only when every recipient's route drops it.
// Here the first recipient's route became `drop`: the item must still reach B (mail for
// z@, whose route posts it, is never thrown away).
TEST_F(RoutesTest, QueuedGroupIsNotDroppedWhileOneOfItsRecipientsIsStillPosted) {
    a_.respond_with([](const WebhookRequest&) { return 503u; });
    ASSERT_TRUE(start_with_routes("to:*@a.example.com post {A}/a\n"));
    ASSERT_FALSE(send_one(message("regrouped drop"), {"x@a.example.com", "z@a.example.com"}).empty());
    ASSERT_TRUE(a_.wait_for(1, std::chrono::seconds(10)));
    EXPECT_EQ(a_.requests()[0].field("recipient"), "x@a.example.com,z@a.example.com");
    const std::size_t reloads = log_lines_with("routes: reloaded").size();
    write_routes("to:x@a.example.com drop\n"
                 "to:*@a.example.com post {B}/b\n");
    daemon().signal(SIGHUP);
    ASSERT_TRUE(wait_log("routes: reloaded", reloads));
    EXPECT_TRUE(wait_until([&] { return b_.count() >= 1; }, std::chrono::seconds(10)))
        << "z@a.example.com, whose route in force posts to B, was never delivered (the queued item was "
        << (list_dir(pending_dir()).empty() && list_dir(processing_dir()).empty() ? "removed" : "kept") << ")";
    ASSERT_TRUE(spool_drains());
    ASSERT_EQ(b_.count(), 1u);
    EXPECT_EQ(b_.requests()[0].field("recipient"), "x@a.example.com,z@a.example.com");
    EXPECT_FALSE(log_lines_with("take different routes").empty());
    EXPECT_EQ(hook_.count(), 0u);
}

// The same with two posts, x@ now to B and z@ to C: the item goes whole to B (its first
// recipient's route), C gets nothing, and the log says so.
TEST_F(RoutesTest, QueuedGroupGoesWholeToItsFirstRecipientsRouteWhenTheyNowDiffer) {
    a_.respond_with([](const WebhookRequest&) { return 503u; });
    ASSERT_TRUE(start_with_routes("to:*@a.example.com post {A}/a\n"));
    ASSERT_FALSE(send_one(message("regrouped posts"), {"x@a.example.com", "z@a.example.com"}).empty());
    ASSERT_TRUE(a_.wait_for(1, std::chrono::seconds(10)));
    const std::size_t reloads = log_lines_with("routes: reloaded").size();
    write_routes("to:x@a.example.com post {B}/b\n"
                 "to:*@a.example.com post {C}/c\n");
    daemon().signal(SIGHUP);
    ASSERT_TRUE(wait_log("routes: reloaded", reloads));
    ASSERT_TRUE(wait_until([&] { return b_.count() + c_.count() >= 1; }, std::chrono::seconds(10)));
    ASSERT_TRUE(spool_drains());
    ASSERT_EQ(b_.count(), 1u);
    EXPECT_EQ(b_.requests()[0].field("recipient"), "x@a.example.com,z@a.example.com");
    EXPECT_EQ(c_.count(), 0u);
    EXPECT_FALSE(log_lines_with("take different routes").empty());
}

// WEBHOOK_FORMAT is the default of a post route without format=, and a route's format=
// overrides it.
TEST_F(RoutesTest, RouteFormatOverridesWebhookFormat) {
    ASSERT_TRUE(start_with_routes("to:*@b.example.com post {B}/b format=mime\n"
                                  "to:*@c.example.com post {C}/c\n",
                                  {{"WEBHOOK_FORMAT", "json"}}));
    const auto got = deliver("formats", message("formats"), {"x@b.example.com", "y@c.example.com", "w@example.net"},
                             "sender@example.org", 3);
    ASSERT_EQ(places(got), (std::vector<std::string>{"B/b", "C/c", "default/hook"}));
    for (const auto& h : got) {
        const std::string type = h.request.header("Content-Type");
        if (h.where == "B/b") {
            EXPECT_EQ(type, "application/x-www-form-urlencoded");
            EXPECT_EQ(h.request.field("recipient"), "x@b.example.com");
        } else {
            EXPECT_EQ(type.rfind("application/json", 0), 0u) << h.where << ": " << type;
        }
    }
}

// A file with only comments and blank lines is valid: everything follows the default.
TEST_F(RoutesTest, FileWithOnlyCommentsIsValid) {
    ASSERT_TRUE(start_with_routes("# nothing yet\n\n   # really nothing\n"));
    EXPECT_EQ(places(deliver("no routes", message("no routes"), {"u@example.com", "v@example.org"})),
              std::vector<std::string>{"default/hook"});
}

// A file written with CRLF line ends reads as with LF.
TEST_F(RoutesTest, CrlfLineEndsAreAccepted) {
    ASSERT_TRUE(start_with_routes("# windows\r\n\r\nto:*@a.example.com post {A}/a format=json\r\nto:* drop\r\n"));
    const auto got = deliver("crlf", message("crlf"), {"x@a.example.com"});
    ASSERT_EQ(places(got), std::vector<std::string>{"A/a"});
    EXPECT_EQ(got[0].request.header("Content-Type").rfind("application/json", 0), 0u)
        << "format=json\\r was not read as json";
}

// A regex that backtracks catastrophically on a value does not hang the daemon: the
// message is answered and delivered (the line counts as not matching, or matching, but
// something happens within the bounds).
TEST_F(RoutesTest, PathologicalRegexDoesNotHang) {
    ASSERT_TRUE(start_with_routes("to:* header:Subject=/(a+)+b/ post {A}/evil\n"));
    const std::string subject(40, 'a');
    const auto started = std::chrono::steady_clock::now();
    const auto got = deliver(subject + "c", message(subject + "c"), {"x@example.com"});
    EXPECT_EQ(places(got), std::vector<std::string>{"default/hook"});
    EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(5));
    // And the daemon still answers.
    const auto again = deliver("after", message("after"), {"x@example.com"});
    EXPECT_EQ(places(again), std::vector<std::string>{"default/hook"});
}

// --- 7. invalid files stop the start -----------------------------------------------------

struct BadRoutes {
    const char* name;
    const char* text;     // "{URL}" is a valid webhook URL; nullptr: the file does not exist
    int line;             // the line the error must name; 0: no line number asked for
    const char* reason;   // a word the error line must hold; "" for none
};

void PrintTo(const BadRoutes& bad, std::ostream* out) { *out << bad.name; }

class RoutesConfigErrorTest : public IntegrationTest, public ::testing::WithParamInterface<BadRoutes> {};

TEST_P(RoutesConfigErrorTest, ExitsWithCode2NamingTheLine) {
    const BadRoutes& bad = GetParam();
    const fs::path path = tmp_.path() / "routes.conf";
    if (bad.text) {
        std::string text = bad.text;
        const std::string url = hook_.url("/hook");
        for (auto at = text.find("{URL}"); at != std::string::npos; at = text.find("{URL}", at + url.size())) {
            text.replace(at, 5, url);
        }
        write_file(path, text);
    }
    Env env = base_env(free_port());
    env["WEBHOOK_ROUTES"] = path.string();
    const auto err_path = tmp_.path() / "stderr.log";
    Daemon d(mxhook_binary(), env, tmp_.path() / "stdout.log", err_path);
    d.start();
    const auto status = d.wait_exit(std::chrono::seconds(5));
    ASSERT_TRUE(status.has_value()) << bad.name << ": still running after 5 s";
    EXPECT_TRUE(status->exited() && status->code() == 2) << status->describe();

    const std::string err = read_file(err_path);
    std::istringstream lines(err);
    std::string line;
    std::size_t naming = 0;
    bool complete = false;
    const std::string where = "line " + std::to_string(bad.line);
    while (std::getline(lines, line)) {
        if (line.find("WEBHOOK_ROUTES") == std::string::npos) continue;
        ++naming;
        const bool has_line = bad.line == 0 || (line.find(where) != std::string::npos &&
                                                 // "line 3", not "line 30"
                                                 !std::isdigit(static_cast<unsigned char>(
                                                     line[line.find(where) + where.size()])));
        const bool has_reason = !*bad.reason || line.find(bad.reason) != std::string::npos;
        complete = complete || (has_line && has_reason);
    }
    EXPECT_EQ(naming, 1u) << "one stderr line must name WEBHOOK_ROUTES:\n" << err;
    EXPECT_TRUE(complete) << "no stderr line names WEBHOOK_ROUTES" << (bad.line ? ", " + where : std::string())
                          << (*bad.reason ? std::string(" and \"") + bad.reason + "\"" : std::string()) << ":\n"
                          << err << "\n(stdout: " << read_file(tmp_.path() / "stdout.log") << ")";
}

INSTANTIATE_TEST_SUITE_P(
    Routes, RoutesConfigErrorTest,
    ::testing::Values(
        BadRoutes{"UnknownAction", "# routes\n\nto:*@example.com pots {URL}\n", 3, "pots"},
        BadRoutes{"MissingFile", nullptr, 0, ""},
        BadRoutes{"InvalidRegex", "to:a@example.com post {URL}\n  # fine so far\nto:/([a-z/ post {URL}\n", 3, ""},
        BadRoutes{"InvalidHeaderRegex", "to:* header:Subject=/(unclosed/ post {URL}\n", 1, ""},
        BadRoutes{"NotHttpUrl", "\n\n\n\nto:* post ftp://127.0.0.1/hook\n", 5, ""},
        BadRoutes{"NotAUrl", "to:* post not-a-url\n", 1, ""},
        BadRoutes{"PostWithoutUrl", "to:a@example.com post {URL}\nto:* post\n", 2, ""},
        BadRoutes{"RejectWithHeader", "to:*@example.com drop\nto:* header:X-Spam=yes reject\n", 2, ""},
        BadRoutes{"NoTo", "to:a@example.com drop\nfrom:b@example.org post {URL}\n", 2, ""},
        BadRoutes{"TwoTo", "to:a@example.com to:b@example.com drop\n", 1, ""},
        BadRoutes{"TwoFrom", "to:* from:a@example.org from:b@example.org drop\n", 1, ""},
        BadRoutes{"UnknownFormat", "# x\nto:* post {URL} format=xml\n", 2, ""},
        BadRoutes{"UnknownCondition", "to:* cc:a@example.com drop\n", 1, ""},
        BadRoutes{"NoAction", "to:*@example.com\n", 1, ""}),
    [](const ::testing::TestParamInfo<BadRoutes>& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace itest
