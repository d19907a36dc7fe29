#include "mxhook/webhook/routes.hpp"

#include <gtest/gtest.h>

using namespace mxhook;
using namespace mxhook::webhook;

namespace {

std::string error_of(std::string_view text) {
    try {
        Routes::parse(text);
    } catch (const RoutesError& e) {
        return e.what();
    }
    return "";
}

std::size_t line_for(const Routes& routes, std::string_view rcpt, std::string_view sender = "a@example.org",
                     const mail::Headers& headers = {}) {
    const Route* r = routes.match(rcpt, sender, headers);
    return r ? r->line : 0;
}

}  // namespace

TEST(Pattern, AddressKinds) {
    EXPECT_TRUE(Pattern::address("*").matches("anyone@anywhere.example"));
    EXPECT_TRUE(Pattern::address("Bob@Example.com").matches("bob@example.COM"));
    EXPECT_FALSE(Pattern::address("bob@example.com").matches("bob@example.org"));
    EXPECT_TRUE(Pattern::address("*@example.com").matches("x@EXAMPLE.com"));
    EXPECT_FALSE(Pattern::address("*@example.com").matches("x@sub.example.com"));
    const auto plus = Pattern::address("orders+*@example.com");
    EXPECT_TRUE(plus.matches("orders@example.com"));
    EXPECT_TRUE(plus.matches("Orders+42@example.com"));
    EXPECT_FALSE(plus.matches("ordersx@example.com"));
    EXPECT_FALSE(plus.matches("orders+42@example.org"));
    const auto regex = Pattern::address("/^no-?reply@.*$/");
    EXPECT_TRUE(regex.matches("NoReply@example.com"));
    EXPECT_FALSE(regex.matches("a-noreply@example.com"));  // the whole address
    EXPECT_TRUE(Pattern::address("<>").matches(""));
    EXPECT_FALSE(Pattern::address("<>").matches("a@b.example"));
    EXPECT_THROW(Pattern::address("bob"), std::invalid_argument);
    EXPECT_THROW(Pattern::address("b*b@example.com"), std::invalid_argument);
    EXPECT_THROW(Pattern::address("*@*.example.com"), std::invalid_argument);
    EXPECT_THROW(Pattern::address("/(unclosed/"), std::invalid_argument);
}

TEST(Pattern, HeaderGlobs) {
    EXPECT_TRUE(Pattern::header_value("1*").matches("1 (Highest)"));
    EXPECT_TRUE(Pattern::header_value("*invoice*").matches("Your INVOICE for May"));
    EXPECT_FALSE(Pattern::header_value("*invoice").matches("invoice for May"));
    EXPECT_TRUE(Pattern::header_value("a*b*c").matches("aXbYbZc"));
    EXPECT_TRUE(Pattern::header_value("/^[0-9]+$/").matches("42"));
}

TEST(Routes, FirstMatchWinsAndCommentsAndBlankLinesAreSkipped) {
    const auto routes = Routes::parse(
        "# orders first\n"
        "\n"
        "to:orders@example.com post https://a.example/in format=json\n"
        "   # indented comment\r\n"
        "to:*@example.com post http://b.example/hook\n"
        "to:*@lists.example.com drop\n"
        "to:/^noreply@.*$/ reject\n");
    ASSERT_EQ(routes.routes().size(), 4u);
    EXPECT_EQ(line_for(routes, "orders@example.com"), 3u);
    EXPECT_EQ(routes.routes()[0].format, WebhookFormat::json);
    EXPECT_EQ(line_for(routes, "<Someone@example.com>"), 5u);
    EXPECT_EQ(line_for(routes, "x@lists.example.com"), 6u);
    EXPECT_EQ(routes.routes()[2].action, Route::Action::drop);
    EXPECT_EQ(line_for(routes, "noreply@example.org"), 7u);
    EXPECT_EQ(line_for(routes, "nobody@example.net"), 0u);  // the default
}

TEST(Routes, SenderAndHeaderConditions) {
    const auto routes = Routes::parse(
        "to:*@example.com from:*@partner.example post https://p.example/\n"
        "to:*@example.com header:X-Priority=1* header:subject=/.*urgent.*/ post https://u.example/\n"
        "to:*@example.com from:<> post https://bounces.example/\n");
    EXPECT_EQ(line_for(routes, "a@example.com", "x@partner.example"), 1u);
    EXPECT_EQ(line_for(routes, "a@example.com", "x@other.example"), 0u);
    EXPECT_EQ(line_for(routes, "a@example.com", "x@other.example", {{"X-Priority", "1 (Highest)"}, {"Subject", "URGENT: now"}}), 2u);
    EXPECT_EQ(line_for(routes, "a@example.com", "x@other.example", {{"X-Priority", "1"}}), 0u);  // every header: holds
    EXPECT_EQ(line_for(routes, "a@example.com", ""), 3u);
}

TEST(Routes, AtRcptIsDecidedOnlyWithoutAnEarlierHeaderRoute) {
    const auto routes = Routes::parse(
        "to:vip@example.com header:X-Token=secret post https://v.example/\n"
        "to:*@example.com reject\n");
    const auto vip = routes.at_rcpt("vip@example.com", "a@b.example");
    EXPECT_FALSE(vip.decided);
    const auto other = routes.at_rcpt("other@example.com", "a@b.example");
    EXPECT_TRUE(other.decided);
    ASSERT_NE(other.route, nullptr);
    EXPECT_EQ(other.route->action, Route::Action::reject);
    const auto outside = routes.at_rcpt("x@example.org", "a@b.example");
    EXPECT_TRUE(outside.decided);
    EXPECT_EQ(outside.route, nullptr);
}

TEST(Routes, ErrorsNameTheLineAndTheReason) {
    EXPECT_EQ(error_of("to:a@example.com post https://x.example/\nto:b@example.com pots https://x.example/\n"),
              "line 2: unknown action \"pots\" (post, drop or reject)");
    EXPECT_EQ(error_of("from:a@example.com drop"), "line 1: no to: condition (every route starts with to:<pattern>)");
    EXPECT_EQ(error_of("to:a@example.com"), "line 1: no action (post <url>, drop or reject)");
    EXPECT_EQ(error_of("to:a@example.com post"), "line 1: post needs a URL");
    EXPECT_EQ(error_of("to:a@example.com post ftp://x.example/"),
              "line 1: the URL must start with http:// or https:// (got scheme \"ftp\")");
    EXPECT_EQ(error_of("to:a@example.com post https://x.example/ format=xml"),
              "line 1: unknown format \"xml\" (mime, parsed or json)");
    EXPECT_EQ(error_of("to:a@example.com header:X=1 reject"),
              "line 1: reject cannot depend on header: (headers arrive after RCPT, where reject answers)");
    EXPECT_EQ(error_of("to:a@example.com drop now"), "line 1: unexpected \"now\" after the action");
    EXPECT_EQ(error_of("to:a@example.com to:b@example.com drop"), "line 1: more than one to:");
    EXPECT_NE(error_of("\n\nto:/(/ drop").find("line 3: invalid regular expression /(/"), std::string::npos);
    EXPECT_EQ(error_of("to:a@example.com header:X drop"), "line 1: \"header:X\" is not header:Name=pattern");
    EXPECT_EQ(error_of(""), "");
}

TEST(Routes, GroupsRecipientsByRouteAndLeavesTheDroppedOut) {
    const auto routes = Routes::parse(
        "to:a@example.com post https://a.example/\n"
        "to:b@example.com post https://b.example/\n"
        "to:*@lists.example.com drop\n");
    std::vector<std::pair<std::string, const Route*>> dropped;
    const auto groups = group_recipients(routes, {"a@example.com", "x@example.org", "l@lists.example.com",
                                                  "b@example.com", "y@example.org"},
                                         "s@example.net", {}, &dropped);
    ASSERT_EQ(groups.size(), 3u);
    EXPECT_EQ(groups[0].route->line, 1u);
    EXPECT_EQ(groups[0].recipients, std::vector<std::string>{"a@example.com"});
    EXPECT_EQ(groups[1].route, nullptr);
    EXPECT_EQ(groups[1].recipients, (std::vector<std::string>{"x@example.org", "y@example.org"}));
    EXPECT_EQ(groups[2].route->line, 2u);
    ASSERT_EQ(dropped.size(), 1u);
    EXPECT_EQ(dropped[0].first, "l@lists.example.com");
}
