// Role-address routing and WEBHOOK_RECIPIENT_MODE through the real binary. The role URL is
// the same TestWebhook on another path (/role), so every request says where it went.

#include "harness/fixture.hpp"

#include <algorithm>
#include <map>
#include <mutex>
#include <set>

namespace itest {
namespace {

class RoutingTest : public IntegrationTest {
protected:
    Env with_role_url(Env extra = {}) {
        extra["WEBHOOK_ROLE_URL"] = hook_.url("/role");
        return extra;
    }

    // Every request that carried `id`.
    std::vector<WebhookRequest> posts_of(const std::string& id) const {
        std::vector<WebhookRequest> out;
        for (auto& request : hook_.requests()) {
            if (request.id() == id) out.push_back(std::move(request));
        }
        return out;
    }

    // Sends, waits until delivered and the spool is empty; the single request for it.
    std::optional<WebhookRequest> deliver(const std::vector<std::string>& recipients, const std::string& subject) {
        const std::string id = send_one(simple_message(subject), recipients);
        if (id.empty()) return std::nullopt;
        auto request = request_for(id);
        EXPECT_TRUE(request.has_value()) << subject << " never arrived";
        EXPECT_TRUE(spool_drains()) << subject;
        EXPECT_EQ(posts_of(id).size(), 1u) << subject << " was posted more than once";
        return request;
    }
};

// --- role-address routing -----------------------------------------------------------------------

TEST_F(RoutingTest, RoleRecipientGoesToTheRoleUrl) {
    ASSERT_TRUE(start_daemon(with_role_url()));
    const auto request = deliver({"postmaster@example.com"}, "to postmaster");
    ASSERT_TRUE(request.has_value());
    EXPECT_EQ(request->target, "/role");
    EXPECT_EQ(request->field("recipient"), "postmaster@example.com");
    // Same payload and signature as the main URL gets.
    EXPECT_EQ(request->field("signature"),
              hmac_sha256_hex(kSigningKey, request->field("timestamp") + request->field("token")));
    EXPECT_EQ(request->field("subject"), "to postmaster");
}

TEST_F(RoutingTest, RoleLocalPartIsCaseInsensitive) {
    ASSERT_TRUE(start_daemon(with_role_url()));
    const auto request = deliver({"Abuse@Example.COM"}, "to Abuse");
    ASSERT_TRUE(request.has_value());
    EXPECT_EQ(request->target, "/role");
}

TEST_F(RoutingTest, OrdinaryRecipientGoesToTheMainUrl) {
    ASSERT_TRUE(start_daemon(with_role_url()));
    const auto request = deliver({"user@example.com"}, "to user");
    ASSERT_TRUE(request.has_value());
    EXPECT_EQ(request->target, "/hook");
    // Local parts that merely contain a role word are not roles.
    const auto other = deliver({"postmasters@example.com", "my-abuse@example.com"}, "near misses");
    ASSERT_TRUE(other.has_value());
    EXPECT_EQ(other->target, "/hook");
}

TEST_F(RoutingTest, MixedRecipientsGoWholeToTheRoleUrlOnce) {
    ASSERT_TRUE(start_daemon(with_role_url()));
    const auto request = deliver({"user@example.com", "abuse@example.com"}, "mixed");
    ASSERT_TRUE(request.has_value());
    EXPECT_EQ(request->target, "/role");
    EXPECT_EQ(request->field("recipient"), "user@example.com,abuse@example.com");
    EXPECT_EQ(hook_.count(), 1u) << "the main URL got a copy as well";
}

TEST_F(RoutingTest, OverriddenListReplacesTheDefault) {
    ASSERT_TRUE(start_daemon(with_role_url({{"ROLE_ADDRESSES", "ceo,hr"}})));
    const auto postmaster = deliver({"postmaster@example.com"}, "postmaster is not a role now");
    ASSERT_TRUE(postmaster.has_value());
    EXPECT_EQ(postmaster->target, "/hook");
    const auto ceo = deliver({"CEO@example.com"}, "to the CEO");
    ASSERT_TRUE(ceo.has_value());
    EXPECT_EQ(ceo->target, "/role");
    const auto hr = deliver({"someone@example.com", "Hr@example.com"}, "to hr");
    ASSERT_TRUE(hr.has_value());
    EXPECT_EQ(hr->target, "/role");
}

TEST_F(RoutingTest, WithoutRoleUrlRoleRecipientsGoToTheMainUrl) {
    ASSERT_TRUE(start_daemon());
    const auto request = deliver({"postmaster@example.com"}, "no role url");
    ASSERT_TRUE(request.has_value());
    EXPECT_EQ(request->target, "/hook");
}

TEST_F(RoutingTest, RouteIsDecidedAtDeliveryTimeFromTheConfigurationInForce) {
    // Spooled while no role URL was configured and the webhook was failing...
    hook_.respond_with([](const WebhookRequest&) { return 503u; });
    ASSERT_TRUE(start_daemon());
    const std::string id = send_one(simple_message("spooled before"), {"postmaster@example.com"});
    ASSERT_FALSE(id.empty());
    const auto first = request_for(id);
    ASSERT_TRUE(first.has_value());
    EXPECT_EQ(first->target, "/hook");
    stop_daemon();

    // ...then delivered by a daemon that has one: it goes to the role URL.
    hook_.respond_with([](const WebhookRequest&) { return 200u; });
    ASSERT_TRUE(start_daemon(with_role_url()));
    ASSERT_TRUE(wait_until(
        [&] {
            for (const auto& r : posts_of(id)) {
                if (r.status == 200) return true;
            }
            return false;
        },
        std::chrono::seconds(10)))
        << "the spooled item was never delivered after the restart";
    for (const auto& r : posts_of(id)) {
        if (r.status == 200) {
            EXPECT_EQ(r.target, "/role");
        }
    }
    EXPECT_TRUE(spool_drains());
}

// --- WEBHOOK_RECIPIENT_MODE ---------------------------------------------------------------------

TEST_F(RoutingTest, EachModePostsOncePerRecipient) {
    ASSERT_TRUE(start_daemon({{"WEBHOOK_RECIPIENT_MODE", "each"}}));
    const std::vector<std::string> rcpts{"a@example.com", "b@example.com", "c@example.com"};
    const std::string sent = simple_message("three of them");
    const std::string id = send_one(sent, rcpts);
    ASSERT_FALSE(id.empty());
    ASSERT_TRUE(hook_.wait_for(3, std::chrono::seconds(10))) << "got " << hook_.count() << " POST(s)";
    ASSERT_TRUE(spool_drains());
    const auto all = hook_.requests();
    ASSERT_EQ(all.size(), 3u);

    std::set<std::string> recipients, ids;
    for (const auto& request : all) {
        EXPECT_EQ(request.status, 200u);
        EXPECT_EQ(request.target, "/hook");
        recipients.insert(request.field("recipient"));
        ids.insert(request.id());
        EXPECT_TRUE(is_spool_id(request.id())) << request.id();
        EXPECT_EQ(request.field("body-mime"), all[0].field("body-mime")) << "body-mime differs between recipients";
        EXPECT_EQ(request.field("subject"), "three of them");
        EXPECT_EQ(request.field("sender"), "sender@example.org");
    }
    EXPECT_EQ(recipients, (std::set<std::string>(rcpts.begin(), rcpts.end())));
    EXPECT_EQ(ids.size(), 3u) << "X-Mxhook-Id must differ per recipient";
    EXPECT_EQ(ids.count(id), 1u) << "one of the items keeps the id the client was told";

    const auto split = split_received(all[0].field("body-mime"));
    ASSERT_TRUE(split.has_value());
    EXPECT_EQ(split->rest, with_final_crlf(sent));
}

TEST_F(RoutingTest, EachModeWithOneRecipientIsOnePost) {
    ASSERT_TRUE(start_daemon({{"WEBHOOK_RECIPIENT_MODE", "EACH"}}));
    const auto request = deliver({"solo@example.com"}, "just one");
    ASSERT_TRUE(request.has_value());
    EXPECT_EQ(request->field("recipient"), "solo@example.com");
    EXPECT_EQ(hook_.count(), 1u);
}

TEST_F(RoutingTest, EachModeFailureOfOneRecipientDoesNotRedeliverTheOthers) {
    std::mutex mutex;
    int b_failures = 0;
    hook_.respond_with([&](const WebhookRequest& request) {
        std::lock_guard lock(mutex);
        if (request.field("recipient") == "b@example.com" && b_failures < 3) {
            ++b_failures;
            return 500u;
        }
        return 200u;
    });
    ASSERT_TRUE(start_daemon({{"WEBHOOK_RECIPIENT_MODE", "each"}}));
    const std::string id = send_one(simple_message("b fails first"),
                                    {"a@example.com", "b@example.com", "c@example.com"});
    ASSERT_FALSE(id.empty());

    auto delivered_to = [&](const std::string& rcpt) {
        for (const auto& r : hook_.requests()) {
            if (r.field("recipient") == rcpt && r.status == 200) return true;
        }
        return false;
    };
    ASSERT_TRUE(wait_until([&] { return delivered_to("b@example.com"); }, std::chrono::seconds(15)))
        << "b@ was never delivered";
    ASSERT_TRUE(spool_drains());
    EXPECT_TRUE(list_dir(dead_dir()).empty());

    std::map<std::string, std::vector<WebhookRequest>> by_rcpt;
    for (const auto& r : hook_.requests()) by_rcpt[r.field("recipient")].push_back(r);
    ASSERT_EQ(by_rcpt.size(), 3u);
    EXPECT_EQ(by_rcpt["a@example.com"].size(), 1u) << "a@ was re-delivered";
    EXPECT_EQ(by_rcpt["c@example.com"].size(), 1u) << "c@ was re-delivered";
    const auto& b = by_rcpt["b@example.com"];
    ASSERT_EQ(b.size(), 4u) << "b@: three 500s then one 200";
    for (std::size_t i = 0; i < b.size(); ++i) {
        EXPECT_EQ(b[i].status, i < 3 ? 500u : 200u) << i;
        EXPECT_EQ(b[i].id(), b[0].id()) << "a retry keeps its X-Mxhook-Id";
        EXPECT_EQ(b[i].field("body-mime"), by_rcpt["a@example.com"][0].field("body-mime"));
    }
    const std::set<std::string> ids{by_rcpt["a@example.com"][0].id(), b[0].id(), by_rcpt["c@example.com"][0].id()};
    EXPECT_EQ(ids.size(), 3u);
}

TEST_F(RoutingTest, EachModeDeadLettersOneRecipientOnItsOwn) {
    // b@'s webhook refuses for good (406): only b@'s item goes to dead/.
    hook_.respond_with(
        [](const WebhookRequest& request) { return request.field("recipient") == "b@example.com" ? 406u : 200u; });
    ASSERT_TRUE(start_daemon({{"WEBHOOK_RECIPIENT_MODE", "each"}}));
    const std::string id = send_one(simple_message("b refuses"), {"a@example.com", "b@example.com", "c@example.com"});
    ASSERT_FALSE(id.empty());
    ASSERT_TRUE(hook_.wait_for(3, std::chrono::seconds(10)));
    ASSERT_TRUE(spool_drains());
    const auto dead = list_dir(dead_dir());
    ASSERT_EQ(dead.size(), 1u) << "exactly one item in dead/";
    const auto meta = read_meta(dead_dir() / dead[0]);
    ASSERT_TRUE(meta.has_value());
    EXPECT_EQ((*meta)["recipients"], nlohmann::json::array({"b@example.com"})) << meta->dump();
    EXPECT_TRUE(std::filesystem::exists(dead_dir() / dead[0] / "message.eml"))
        << "the dead item keeps its own link to the message";
    std::map<std::string, std::vector<WebhookRequest>> by_rcpt;
    for (const auto& r : hook_.requests()) by_rcpt[r.field("recipient")].push_back(r);
    EXPECT_EQ(by_rcpt["a@example.com"].size(), 1u);
    EXPECT_EQ(by_rcpt["b@example.com"].size(), 1u) << "a 406 is never retried";
    EXPECT_EQ(by_rcpt["c@example.com"].size(), 1u);
    EXPECT_EQ(dead[0], by_rcpt["b@example.com"][0].id());
}

TEST_F(RoutingTest, EachModeRoutesEveryRecipientOnItsOwn) {
    ASSERT_TRUE(start_daemon(with_role_url({{"WEBHOOK_RECIPIENT_MODE", "each"}})));
    const std::string id = send_one(simple_message("split route"), {"user@example.com", "postmaster@example.com"});
    ASSERT_FALSE(id.empty());
    ASSERT_TRUE(hook_.wait_for(2, std::chrono::seconds(10)));
    ASSERT_TRUE(spool_drains());
    const auto all = hook_.requests();
    ASSERT_EQ(all.size(), 2u);
    for (const auto& r : all) {
        if (r.field("recipient") == "postmaster@example.com") {
            EXPECT_EQ(r.target, "/role");
        } else if (r.field("recipient") == "user@example.com") {
            EXPECT_EQ(r.target, "/hook");
        } else {
            ADD_FAILURE() << "unexpected recipient field " << r.field("recipient");
        }
    }
}

TEST_F(RoutingTest, JoinedModeIsTheDefaultAndPostsOnce) {
    ASSERT_TRUE(start_daemon());
    const auto request = deliver({"a@example.com", "b@example.com", "c@example.com"}, "joined");
    ASSERT_TRUE(request.has_value());
    EXPECT_EQ(request->field("recipient"), "a@example.com,b@example.com,c@example.com");
    EXPECT_EQ(hook_.count(), 1u);
}

TEST_F(RoutingTest, JoinedModeByName) {
    ASSERT_TRUE(start_daemon({{"WEBHOOK_RECIPIENT_MODE", "Joined"}}));
    const auto request = deliver({"a@example.com", "b@example.com"}, "joined by name");
    ASSERT_TRUE(request.has_value());
    EXPECT_EQ(request->field("recipient"), "a@example.com,b@example.com");
    EXPECT_EQ(hook_.count(), 1u);
}

TEST_F(RoutingTest, BadRecipientModeStopsTheStart) {
    Env env = base_env(free_port());
    env["WEBHOOK_RECIPIENT_MODE"] = "bogus";
    Daemon d(mxhook_binary(), env, tmp_.path() / "bad-mode.log");
    d.start();
    const auto status = d.wait_exit(std::chrono::seconds(10));
    ASSERT_TRUE(status.has_value()) << "mxhook kept running with WEBHOOK_RECIPIENT_MODE=bogus";
    EXPECT_TRUE(status->exited() && status->code() != 0) << status->describe();
    EXPECT_NE(d.log().find("WEBHOOK_RECIPIENT_MODE"), std::string::npos) << d.log();
}

}  // namespace
}  // namespace itest
