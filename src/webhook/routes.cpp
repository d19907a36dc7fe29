#include "mxhook/webhook/routes.hpp"

#include "mxhook/spool/meta.hpp"

#include <boost/algorithm/string/case_conv.hpp>
#include <boost/algorithm/string/predicate.hpp>
#include <boost/algorithm/string/trim.hpp>
#include <boost/regex.hpp>

#include <fstream>
#include <sstream>

namespace mxhook::webhook {

namespace {

std::string lower(std::string_view s) { return boost::algorithm::to_lower_copy(std::string(s)); }

// '*' matches any run of characters; both sides lower-cased already.
bool glob_match(std::string_view glob, std::string_view value) {
    std::size_t g = 0, v = 0, star = std::string_view::npos, resume = 0;
    while (v < value.size()) {
        if (g < glob.size() && glob[g] == '*') {
            star = g++;
            resume = v;
        } else if (g < glob.size() && glob[g] == value[v]) {
            ++g, ++v;
        } else if (star != std::string_view::npos) {
            g = star + 1;
            v = ++resume;
        } else {
            return false;
        }
    }
    while (g < glob.size() && glob[g] == '*') ++g;
    return g == glob.size();
}

std::string_view domain_of(std::string_view address) {
    const auto at = address.rfind('@');
    return at == std::string_view::npos ? std::string_view() : address.substr(at + 1);
}

std::string_view local_of(std::string_view address) { return address.substr(0, address.rfind('@')); }

}  // namespace

struct Pattern::Regex {
    boost::regex re;
};

Pattern Pattern::regex(std::string_view text) {
    Pattern p;
    p.kind_ = Kind::regex;
    try {
        // Perl syntax; match_default with regex_match: the whole value. Boost.Regex bounds
        // its own backtracking (it throws rather than running away).
        p.regex_ = std::make_shared<const Regex>(
            Regex{boost::regex(std::string(text.substr(1, text.size() - 2)), boost::regex::perl | boost::regex::icase)});
    } catch (const boost::regex_error& e) {
        throw std::invalid_argument("invalid regular expression " + std::string(text) + ": " + e.what());
    }
    return p;
}

Pattern Pattern::address(std::string_view text) {
    if (text.size() >= 2 && text.front() == '/' && text.back() == '/') return regex(text);
    Pattern p;
    if (text == "*") return p;
    if (text == "<>") {
        p.kind_ = Kind::exact;  // the null sender: the empty address
        return p;
    }
    const std::string_view domain = domain_of(text);
    const std::string_view local = local_of(text);
    if (domain.empty() || text.find('@') == std::string_view::npos) {
        throw std::invalid_argument("\"" + std::string(text) +
                                    "\" is not an address pattern (*, *@domain, local+*@domain, an address, /regex/)");
    }
    if (domain.find('*') != std::string_view::npos) {
        throw std::invalid_argument("\"" + std::string(text) + "\": a wildcard in the domain needs /regex/");
    }
    if (local == "*") {
        p.kind_ = Kind::domain;
        p.text_ = lower(domain);
    } else if (local.size() > 2 && local.substr(local.size() - 2) == "+*") {
        p.kind_ = Kind::plus;
        p.text_ = lower(local.substr(0, local.size() - 2));
        p.domain_ = lower(domain);
    } else if (local.find('*') != std::string_view::npos) {
        throw std::invalid_argument("\"" + std::string(text) + "\": '*' in a local part only as * or local+*; use /regex/");
    } else {
        p.kind_ = Kind::exact;
        p.text_ = lower(text);
    }
    return p;
}

Pattern Pattern::header_value(std::string_view text) {
    if (text.size() >= 2 && text.front() == '/' && text.back() == '/') return regex(text);
    Pattern p;
    if (text == "*") return p;
    p.kind_ = Kind::glob;
    p.text_ = lower(text);
    return p;
}

bool Pattern::matches(std::string_view value) const {
    switch (kind_) {
        case Kind::any: return true;
        case Kind::exact: return boost::algorithm::iequals(value, text_);
        case Kind::domain: return value.find('@') != std::string_view::npos && boost::algorithm::iequals(domain_of(value), text_);
        case Kind::plus: {
            if (value.find('@') == std::string_view::npos || !boost::algorithm::iequals(domain_of(value), domain_)) return false;
            const std::string local = lower(local_of(value));
            return local == text_ || (local.size() > text_.size() && local.compare(0, text_.size(), text_) == 0 &&
                                      local[text_.size()] == '+');
        }
        case Kind::glob: return glob_match(text_, lower(value));
        case Kind::regex:
            try {
                return boost::regex_match(value.begin(), value.end(), regex_->re);
            } catch (const std::runtime_error&) {
                return false;  // too complex for this value: Boost gave up; not a match
            }
    }
    return false;
}

namespace {

Route parse_line(std::size_t number, std::string_view line) {
    std::istringstream words{std::string(line)};
    std::vector<std::string> tokens;
    for (std::string word; words >> word;) tokens.push_back(std::move(word));
    Route route;
    route.line = number;
    bool has_to = false;
    std::size_t i = 0;
    const auto fail = [number](const std::string& reason) { throw RoutesError(number, reason); };
    try {
        for (; i < tokens.size(); ++i) {
            const std::string& word = tokens[i];
            if (boost::algorithm::istarts_with(word, "to:")) {
                if (has_to) fail("more than one to:");
                route.to = Pattern::address(std::string_view(word).substr(3));
                has_to = true;
            } else if (boost::algorithm::istarts_with(word, "from:")) {
                if (route.from) fail("more than one from:");
                route.from = Pattern::address(std::string_view(word).substr(5));
            } else if (boost::algorithm::istarts_with(word, "header:")) {
                const std::string_view spec = std::string_view(word).substr(7);
                const auto eq = spec.find('=');
                if (eq == std::string_view::npos || eq == 0 || eq + 1 == spec.size()) {
                    fail("\"" + word + "\" is not header:Name=pattern");
                }
                route.headers.emplace_back(std::string(spec.substr(0, eq)), Pattern::header_value(spec.substr(eq + 1)));
            } else {
                break;
            }
        }
    } catch (const std::invalid_argument& e) {
        fail(e.what());
    }
    if (!has_to) fail("no to: condition (every route starts with to:<pattern>)");
    if (i == tokens.size()) fail("no action (post <url>, drop or reject)");
    const std::string action = lower(tokens[i++]);
    if (action == "post") {
        route.action = Route::Action::post;
        if (i == tokens.size()) fail("post needs a URL");
        route.url = tokens[i++];
        if (auto problem = http_url_problem(route.url)) fail("the URL " + *problem);
        if (i < tokens.size() && boost::algorithm::istarts_with(tokens[i], "format=")) {
            const std::string format = lower(std::string_view(tokens[i++]).substr(7));
            if (format == "mime") {
                route.format = WebhookFormat::mime;
            } else if (format == "parsed") {
                route.format = WebhookFormat::parsed;
            } else if (format == "json") {
                route.format = WebhookFormat::json;
            } else {
                fail("unknown format \"" + format + "\" (mime, parsed or json)");
            }
        }
    } else if (action == "drop") {
        route.action = Route::Action::drop;
    } else if (action == "reject") {
        route.action = Route::Action::reject;
        if (!route.headers.empty()) {
            fail("reject cannot depend on header: (headers arrive after RCPT, where reject answers)");
        }
    } else {
        fail("unknown action \"" + tokens[i - 1] + "\" (post, drop or reject)");
    }
    if (i < tokens.size()) fail("unexpected \"" + tokens[i] + "\" after the action");
    return route;
}

bool envelope_matches(const Route& route, std::string_view recipient, std::string_view sender) {
    return route.to.matches(recipient) && (!route.from || route.from->matches(sender));
}

bool headers_match(const Route& route, const mail::Headers& headers) {
    for (const auto& [name, pattern] : route.headers) {
        bool found = false;
        for (const auto& [field, value] : headers) {
            // Trimmed: a value that starts on a folded line unfolds with a leading space.
            if (boost::algorithm::iequals(field, name) && pattern.matches(boost::algorithm::trim_copy(value))) {
                found = true;
                break;
            }
        }
        if (!found) return false;
    }
    return true;
}

}  // namespace

Routes Routes::parse(std::string_view text) {
    Routes out;
    std::size_t number = 0;
    std::size_t begin = 0;
    while (begin <= text.size()) {
        std::size_t end = text.find('\n', begin);
        if (end == std::string_view::npos) end = text.size();
        ++number;
        std::string_view line = text.substr(begin, end - begin);
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        const auto first = line.find_first_not_of(" \t");
        if (first != std::string_view::npos && line[first] != '#') out.routes_.push_back(parse_line(number, line));
        if (end == text.size()) break;
        begin = end + 1;
    }
    return out;
}

Routes Routes::load(const std::filesystem::path& path) {
    std::ifstream file(path, std::ios::binary);
    if (!file) throw RoutesError(0, "cannot read " + path.string());
    std::ostringstream text;
    text << file.rdbuf();
    if (file.bad()) throw RoutesError(0, "cannot read " + path.string());
    return parse(text.str());
}

Routes::Early Routes::at_rcpt(std::string_view recipient, std::string_view sender) const {
    const std::string rcpt = spool::bare_address(recipient);
    const std::string from = spool::bare_address(sender);
    for (const Route& route : routes_) {
        if (!envelope_matches(route, rcpt, from)) continue;
        if (!route.headers.empty()) return {nullptr, false};
        return {&route, true};
    }
    return {};
}

const Route* Routes::match(std::string_view recipient, std::string_view sender, const mail::Headers& headers) const {
    const std::string rcpt = spool::bare_address(recipient);
    const std::string from = spool::bare_address(sender);
    for (const Route& route : routes_) {
        if (envelope_matches(route, rcpt, from) && headers_match(route, headers)) return &route;
    }
    return nullptr;
}

std::vector<RecipientGroup> group_recipients(const Routes& routes, const std::vector<std::string>& recipients,
                                             std::string_view sender, const mail::Headers& headers,
                                             std::vector<std::pair<std::string, const Route*>>* dropped) {
    std::vector<RecipientGroup> groups;
    for (const auto& recipient : recipients) {
        const Route* route = routes.match(recipient, sender, headers);
        if (route && route->action != Route::Action::post) {
            if (dropped) dropped->emplace_back(recipient, route);
            continue;
        }
        auto group = std::find_if(groups.begin(), groups.end(), [route](const RecipientGroup& g) { return g.route == route; });
        if (group == groups.end()) {
            groups.push_back({route, {}});
            group = std::prev(groups.end());
        }
        group->recipients.push_back(recipient);
    }
    return groups;
}

}  // namespace mxhook::webhook
