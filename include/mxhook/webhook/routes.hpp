#pragma once
// Routes (WEBHOOK_ROUTES): which URL, in which format, each recipient's mail goes to, or
// whether it is dropped or refused. A file of lines, checked in order, first match wins:
//
//   to:orders@example.com                      post https://orders.example.com/in format=json
//   to:*@support.example.com from:*@partner.example  post https://support.example.com/hook
//   to:alerts+*@example.com header:X-Priority=1     post https://pager.example.com/
//   to:/^noreply(-[a-z]+)?@example\.com$/      reject
//   to:*@lists.example.com                     drop
//
// Pure: parsing and matching, no I/O (Routes::load reads the file). A recipient no line
// matches follows the default (WEBHOOK_URL, or WEBHOOK_ROLE_URL for role addresses).

#include "mxhook/config.hpp"
#include "mxhook/mail/headers.hpp"

#include <cstddef>
#include <filesystem>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace mxhook::webhook {

// An address or header-value pattern.
class Pattern {
public:
    // Address patterns: "*", "*@domain", "local+*@domain" (local@domain too), "/regex/",
    // "<>" (the null sender), or an exact address. Header patterns: "/regex/" or a glob
    // where '*' matches any run of characters. Case-insensitive; a regex must match the
    // whole value. Throws std::invalid_argument with the reason.
    static Pattern address(std::string_view text);
    static Pattern header_value(std::string_view text);
    bool matches(std::string_view value) const;

private:
    enum class Kind { any, domain, plus, exact, glob, regex };
    Kind kind_ = Kind::any;
    std::string text_;    // lower-cased: the domain, the local part, the address or the glob
    std::string domain_;  // plus: the domain
    struct Regex;
    std::shared_ptr<const Regex> regex_;
    static Pattern regex(std::string_view text);
};

struct Route {
    enum class Action { post, drop, reject };
    std::size_t line = 0;  // in the file, 1-based
    Pattern to;
    std::optional<Pattern> from;
    std::vector<std::pair<std::string, Pattern>> headers;  // name (as written), value pattern
    Action action = Action::post;
    std::string url;                     // post
    std::optional<WebhookFormat> format;  // post: none means WEBHOOK_FORMAT
};

// A line of the file that cannot be read: its number and why.
class RoutesError : public std::runtime_error {
public:
    RoutesError(std::size_t line, const std::string& reason)
        : std::runtime_error(line == 0 ? reason : "line " + std::to_string(line) + ": " + reason), line_(line) {}
    std::size_t line() const { return line_; }

private:
    std::size_t line_;
};

class Routes {
public:
    // Throws RoutesError.
    static Routes parse(std::string_view text);
    // Reads and parses the file; throws RoutesError (line 0 when the file cannot be read).
    static Routes load(const std::filesystem::path& path);

    const std::vector<Route>& routes() const { return routes_; }

    // At RCPT, before the message exists: the route a recipient certainly takes whatever
    // the headers turn out to be, or none. `decided` is false when an earlier line with a
    // header: condition matches its to:/from: (the route is only known after DATA).
    struct Early {
        const Route* route = nullptr;  // nullptr and decided: the default
        bool decided = true;
    };
    Early at_rcpt(std::string_view recipient, std::string_view sender) const;

    // With the message's headers: the first line that matches, nullptr for the default.
    // Addresses may be bare or in angle brackets.
    const Route* match(std::string_view recipient, std::string_view sender, const mail::Headers& headers) const;

private:
    std::vector<Route> routes_;
};

// How the recipients of one message travel: one group per route (nullptr: the default),
// in the order of first appearance; recipients whose route is drop or reject are left
// out (in `dropped`, with their route).
struct RecipientGroup {
    const Route* route = nullptr;
    std::vector<std::string> recipients;
};
std::vector<RecipientGroup> group_recipients(const Routes& routes, const std::vector<std::string>& recipients,
                                             std::string_view sender, const mail::Headers& headers,
                                             std::vector<std::pair<std::string, const Route*>>* dropped);

}  // namespace mxhook::webhook
