// Role-address routing: the local-part rule, the role list and the URL chosen.

#include "mxhook/webhook/routing.hpp"

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

namespace mxhook::webhook {
namespace {

const std::string kMain = "https://hooks.example.com/main";
const std::string kRole = "https://hooks.example.com/role";

Config config_with(const std::map<std::string, std::string, std::less<>>& vars) {
    return load_config([vars](std::string_view name) -> std::optional<std::string> {
        const auto it = vars.find(name);
        if (it == vars.end()) return std::nullopt;
        return it->second;
    });
}

TEST(LocalPart, IsTheTextBeforeTheAtLowerCased) {
    EXPECT_EQ(local_part("user@example.com"), "user");
    EXPECT_EQ(local_part("PostMaster@Example.COM"), "postmaster");
    EXPECT_EQ(local_part("first.last+tag@example.com"), "first.last+tag");
    EXPECT_EQ(local_part("<Admin@example.com>"), "admin");  // as haraka-webhook stored it
}

TEST(LocalPart, UsesTheLastAt) {
    EXPECT_EQ(local_part("\"abuse@other\"@example.com"), "\"abuse@other\"");
    EXPECT_EQ(local_part("a@b@example.com"), "a@b");
    EXPECT_EQ(local_part("abuse@@example.com"), "abuse@");
}

TEST(LocalPart, IsTrimmed) {
    EXPECT_EQ(local_part("  Abuse  @example.com"), "abuse");
    EXPECT_EQ(local_part("\tabuse\t@example.com"), "abuse");
    EXPECT_EQ(local_part(" root "), "root");
}

TEST(LocalPart, WithoutAnAtIsTheWholeAddress) {
    EXPECT_EQ(local_part("Postmaster"), "postmaster");
    EXPECT_EQ(local_part(""), "");
    EXPECT_EQ(local_part("@example.com"), "");
}

TEST(LocalPart, OnlyAsciiIsLowerCased) {
    EXPECT_EQ(local_part("\xC3\x89LODIE@example.com"), "\xC3\x89lodie");
}

TEST(HasRoleRecipient, DefaultList) {
    const auto roles = default_role_addresses();
    EXPECT_TRUE(has_role_recipient({"postmaster@example.com"}, roles));
    EXPECT_TRUE(has_role_recipient({"ABUSE@example.com"}, roles));
    EXPECT_TRUE(has_role_recipient({"user@example.com", "webmaster@example.com"}, roles));
    EXPECT_TRUE(has_role_recipient({"user@example.com", "x@y", " Root @example.com"}, roles));
    EXPECT_FALSE(has_role_recipient({"user@example.com"}, roles));
    EXPECT_FALSE(has_role_recipient({"postmasters@example.com", "xabuse@example.com"}, roles));
    EXPECT_FALSE(has_role_recipient({"example.com@postmaster"}, roles));
    EXPECT_FALSE(has_role_recipient({"mailer-daemon@example.com"}, roles));  // the list says "mailerdaemon"
    EXPECT_TRUE(has_role_recipient({"mailerdaemon@example.com"}, roles));
    EXPECT_FALSE(has_role_recipient({}, roles));
}

TEST(HasRoleRecipient, EveryDefaultRoleMatchesInAnyCase) {
    for (const auto& role : default_role_addresses()) {
        std::string upper = role;
        for (auto& c : upper) c = static_cast<char>(c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c);
        EXPECT_TRUE(has_role_recipient({upper + "@example.com"}, default_role_addresses())) << role;
    }
}

TEST(Route, WithoutRoleUrlEverythingGoesToTheMainUrl) {
    const Config c = config_with({{"WEBHOOK_URL", kMain}});
    EXPECT_TRUE(c.webhook_role_url.empty());
    EXPECT_EQ(route(c, {"postmaster@example.com"}), kMain);
    EXPECT_EQ(route(c, {"user@example.com"}), kMain);
    EXPECT_EQ(route(c, {"user@example.com", "abuse@example.com"}), kMain);
}

TEST(Route, WithRoleUrlRoleRecipientsGoToIt) {
    const Config c = config_with({{"WEBHOOK_URL", kMain}, {"WEBHOOK_ROLE_URL", kRole}});
    EXPECT_EQ(route(c, {"postmaster@example.com"}), kRole);
    EXPECT_EQ(route(c, {"Abuse@Example.com"}), kRole);
    EXPECT_EQ(route(c, {"user@example.com"}), kMain);
    EXPECT_EQ(route(c, {"user@example.com", "abuse@example.com"}), kRole);  // mixed: whole message
    EXPECT_EQ(route(c, {"abuse@example.com", "user@example.com"}), kRole);
    EXPECT_EQ(route(c, {}), kMain);
}

TEST(Route, OverriddenListReplacesTheDefault) {
    const Config c =
        config_with({{"WEBHOOK_URL", kMain}, {"WEBHOOK_ROLE_URL", kRole}, {"ROLE_ADDRESSES", " CEO, hr ,,"}});
    EXPECT_EQ(c.role_addresses, (std::vector<std::string>{"ceo", "hr"}));
    EXPECT_EQ(route(c, {"postmaster@example.com"}), kMain);
    EXPECT_EQ(route(c, {"abuse@example.com"}), kMain);
    EXPECT_EQ(route(c, {"CEO@example.com"}), kRole);
    EXPECT_EQ(route(c, {"user@example.com", "Hr@example.com"}), kRole);
}

TEST(Route, OverriddenListWithoutRoleUrlStillGoesToMain) {
    const Config c = config_with({{"WEBHOOK_URL", kMain}, {"ROLE_ADDRESSES", "ceo"}});
    EXPECT_EQ(route(c, {"ceo@example.com"}), kMain);
}

}  // namespace
}  // namespace mxhook::webhook
