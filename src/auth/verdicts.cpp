#include "mxhook/auth/verdicts.hpp"

#include <boost/algorithm/string/predicate.hpp>

#include <algorithm>
#include <array>
#include <cstdio>

namespace mxhook::auth {

namespace {

constexpr std::array<std::pair<Result, std::string_view>, 7> kResults{{
    {Result::none, "none"},
    {Result::pass, "pass"},
    {Result::fail, "fail"},
    {Result::softfail, "softfail"},
    {Result::neutral, "neutral"},
    {Result::temperror, "temperror"},
    {Result::permerror, "permerror"},
}};

// Letters, digits, '-', '_' and '.': what a domain or selector is made of. Anything else
// (spaces, ';', '(', quotes, CR, LF) would let a sender shape our header; such a value is
// left out rather than escaped.
bool plain_token(std::string_view text) {
    return !text.empty() && text.size() <= 253 && std::all_of(text.begin(), text.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
               c == '.';
    });
}

void property(std::string& out, std::string_view name, std::string_view value) {
    if (!plain_token(value)) return;
    out += ' ';
    out += name;
    out += '=';
    out += value;
}

// A comment's text: only what cannot end or nest it.
std::string comment_text(std::string_view text) {
    std::string out;
    for (char c : text) {
        if (c == '(' || c == ')' || c == '\\' || c == '\r' || c == '\n') continue;
        out += c;
    }
    return out;
}

std::string_view mailgun_spf(Result result) {
    switch (result) {
        case Result::pass: return "Pass";
        case Result::fail: return "Fail";
        case Result::softfail: return "SoftFail";
        case Result::neutral: return "Neutral";
        case Result::temperror: return "TempError";
        case Result::permerror: return "PermError";
        case Result::none: break;
    }
    return "None";
}

bool is_wsp(char c) { return c == ' ' || c == '\t'; }

// Skips folding white space and comments (which nest, and may hold quoted pairs).
std::size_t skip_cfws(std::string_view text, std::size_t i) {
    int depth = 0;
    while (i < text.size()) {
        const char c = text[i];
        if (depth > 0) {
            if (c == '\\') ++i;
            else if (c == '(') ++depth;
            else if (c == ')') --depth;
            ++i;
        } else if (c == '(') {
            ++depth;
            ++i;
        } else if (is_wsp(c) || c == '\r' || c == '\n') {
            ++i;
        } else {
            break;
        }
    }
    return i;
}

// The authserv-id at the start of an Authentication-Results value: a token, or a quoted
// string (RFC 8601 2.2: value = token / quoted-string).
std::string authserv_id_of(std::string_view value) {
    std::size_t i = skip_cfws(value, 0);
    std::string id;
    if (i < value.size() && value[i] == '"') {
        for (++i; i < value.size() && value[i] != '"'; ++i) {
            if (value[i] == '\\' && i + 1 < value.size()) ++i;
            id += value[i];
        }
        return id;
    }
    while (i < value.size()) {
        const char c = value[i];
        if (c == ';' || c == '(' || is_wsp(c) || c == '\r' || c == '\n') break;
        id += c;
        ++i;
    }
    return id;
}

}  // namespace

std::string_view result_name(Result result) {
    for (const auto& [r, name] : kResults) {
        if (r == result) return name;
    }
    return "none";
}

std::optional<Result> parse_result(std::string_view name) {
    for (const auto& [r, n] : kResults) {
        if (n == name) return r;
    }
    return std::nullopt;
}

std::string_view policy_name(DmarcPolicy policy) {
    switch (policy) {
        case DmarcPolicy::none: return "none";
        case DmarcPolicy::quarantine: return "quarantine";
        case DmarcPolicy::reject: return "reject";
        case DmarcPolicy::unspecified: break;
    }
    return "";
}

Result dkim_summary(const std::vector<DkimVerdict>& signatures) {
    if (signatures.empty()) return Result::none;
    const bool passed =
        std::any_of(signatures.begin(), signatures.end(), [](const auto& s) { return s.result == Result::pass; });
    return passed ? Result::pass : signatures.front().result;
}

std::string authentication_results(std::string_view authserv_id, const Verdicts& verdicts) {
    std::string out = "Authentication-Results: ";
    out += authserv_id;
    bool any = false;
    const auto method = [&out, &any](std::string_view text) {
        out += ";\r\n\t";
        out += text;
        any = true;
    };
    if (verdicts.spf) {
        std::string text = "spf=" + std::string(result_name(verdicts.spf->result));
        property(text, verdicts.spf->helo ? "smtp.helo" : "smtp.mailfrom", verdicts.spf->domain);
        method(text);
    }
    if (verdicts.dkim) {
        if (verdicts.dkim->empty()) method("dkim=none");
        for (const auto& signature : *verdicts.dkim) {
            std::string text = "dkim=" + std::string(result_name(signature.result));
            if (!signature.reason.empty()) text += " (" + comment_text(signature.reason) + ")";
            property(text, "header.d", signature.domain);
            property(text, "header.s", signature.selector);
            method(text);
        }
    }
    if (verdicts.dmarc) {
        std::string text = "dmarc=" + std::string(result_name(verdicts.dmarc->result));
        if (verdicts.dmarc->policy != DmarcPolicy::unspecified)
            text += " (p=" + std::string(policy_name(verdicts.dmarc->policy)) + ")";
        property(text, "header.from", verdicts.dmarc->domain);
        method(text);
    }
    if (!any) out += "; none";  // RFC 8601 2.2: no method was applied
    out += "\r\n";
    return out;
}

namespace {

std::string score_text(double score) {
    char text[32];
    std::snprintf(text, sizeof text, "%.2f", score);
    return text;
}

// rspamd's action names are a fixed set of words; anything else is not shown.
std::string plain_words(std::string_view text) {
    std::string out;
    for (char c : text.substr(0, 64)) {
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == ' ' || c == '-' ||
            c == '_' || c == '.')
            out += c;
    }
    return out;
}

}  // namespace

std::string content_headers(const Verdicts& verdicts) {
    std::string out;
    if (verdicts.spam) {
        const SpamVerdict& s = *verdicts.spam;
        if (!s.checked) {
            out += "X-Spam-Status: Unchecked (rspamd unavailable)\r\n";
        } else {
            if (s.spam) out += "X-Spam-Flag: YES\r\n";
            out += "X-Spam-Status: " + std::string(s.spam ? "Yes" : "No") + ", score=" + score_text(s.score) +
                   " required=" + score_text(s.required) + " action=\"" + plain_words(s.action) + "\"\r\n";
        }
    }
    if (verdicts.virus) {
        const VirusVerdict& v = *verdicts.virus;
        out += !v.checked   ? "X-Virus-Status: Unchecked (clamd unavailable)\r\n"
               : v.infected ? "X-Virus-Status: Infected (" + comment_text(plain_words(v.name)) + ")\r\n"
                            : "X-Virus-Status: Clean\r\n";
    }
    return out;
}

std::vector<std::string> owned_fields(const Verdicts& verdicts) {
    std::vector<std::string> names;
    if (verdicts.spam) names = {"X-Spam-Flag", "X-Spam-Status"};
    if (verdicts.virus) names.emplace_back("X-Virus-Status");
    return names;
}

Summary summarize(const Verdicts& verdicts) {
    Summary s;
    if (verdicts.spf) s.spf = verdicts.spf->result;
    if (verdicts.dkim) s.dkim = dkim_summary(*verdicts.dkim);
    if (verdicts.dmarc) {
        s.dmarc = verdicts.dmarc->result;
        if (verdicts.dmarc->result == Result::fail) s.dmarc_policy = verdicts.dmarc->policy;
    }
    if (verdicts.spam) {
        const SpamVerdict& v = *verdicts.spam;
        s.spam = !v.checked ? "unchecked" : v.spam ? "yes" : "no";
        if (v.checked) {
            s.spam_score = score_text(v.score);
            s.spam_action = plain_words(v.action);
        }
    }
    if (verdicts.virus) {
        const VirusVerdict& v = *verdicts.virus;
        s.virus = !v.checked ? "unchecked" : v.infected ? "infected" : "clean";
        if (v.infected) s.virus_name = plain_words(v.name);
    }
    return s;
}

std::vector<std::pair<std::string, std::string>> payload_fields(const Summary& summary) {
    std::vector<std::pair<std::string, std::string>> fields;
    if (summary.spf) fields.emplace_back("X-Mailgun-Spf", std::string(mailgun_spf(*summary.spf)));
    // Mailgun's field knows two values: a message without a passing signature is not vouched for.
    if (summary.dkim) fields.emplace_back("X-Mailgun-Dkim-Check-Result", *summary.dkim == Result::pass ? "Pass" : "Fail");
    if (summary.dmarc) {
        std::string value(result_name(*summary.dmarc));
        if (summary.dmarc_policy != DmarcPolicy::unspecified)
            value += "; p=" + std::string(policy_name(summary.dmarc_policy));
        fields.emplace_back("X-Mxhook-Dmarc", std::move(value));
    }
    if (summary.spam) {
        if (*summary.spam != "unchecked") {
            fields.emplace_back("X-Mailgun-Sflag", *summary.spam == "yes" ? "Yes" : "No");
            fields.emplace_back("X-Mailgun-Sscore", summary.spam_score);
            fields.emplace_back("X-Mxhook-Spam", summary.spam_action);
        } else {
            fields.emplace_back("X-Mxhook-Spam", "unchecked");
        }
    }
    if (summary.virus) {
        fields.emplace_back("X-Mxhook-Virus",
                            *summary.virus == "infected" ? "infected; name=" + summary.virus_name : *summary.virus);
    }
    return fields;
}

nlohmann::ordered_json decision_json(const Verdicts& verdicts, std::string_view authentication_results) {
    using Json = nlohmann::ordered_json;
    Json out = Json::object();
    if (verdicts.spf || verdicts.dkim || verdicts.dmarc) {
        Json auth = Json::object();
        if (verdicts.spf) {
            auth["spf"] = {{"result", result_name(verdicts.spf->result)},
                           {"domain", verdicts.spf->domain},
                           {"scope", verdicts.spf->helo ? "helo" : "mailfrom"}};
        }
        if (verdicts.dkim) {
            Json signatures = Json::array();
            for (const auto& s : *verdicts.dkim) {
                Json one = {{"result", result_name(s.result)}, {"domain", s.domain}, {"selector", s.selector}};
                if (!s.reason.empty()) one["reason"] = s.reason;
                signatures.push_back(std::move(one));
            }
            auth["dkim"] = std::move(signatures);
        }
        if (verdicts.dmarc) {
            auth["dmarc"] = {{"result", result_name(verdicts.dmarc->result)},
                             {"policy", verdicts.dmarc->policy == DmarcPolicy::unspecified
                                            ? Json(nullptr)
                                            : Json(policy_name(verdicts.dmarc->policy))},
                             {"domain", verdicts.dmarc->domain}};
        }
        auth["authenticationResults"] = authentication_results;
        out["auth"] = std::move(auth);
    }
    if (verdicts.spam) {
        const SpamVerdict& v = *verdicts.spam;
        out["spam"] = v.checked ? Json{{"checked", true}, {"spam", v.spam}, {"score", v.score},
                                       {"required", v.required}, {"action", plain_words(v.action)}}
                                : Json{{"checked", false}};
    }
    if (verdicts.virus) {
        const VirusVerdict& v = *verdicts.virus;
        out["virus"] = v.checked ? Json{{"checked", true}, {"infected", v.infected}, {"name", v.infected ? Json(plain_words(v.name)) : Json(nullptr)}}
                                 : Json{{"checked", false}};
    }
    return out;
}

bool claims_authserv_id(std::string_view value, std::string_view authserv_id) {
    return boost::algorithm::iequals(authserv_id_of(value), authserv_id);
}

std::vector<std::pair<std::size_t, std::size_t>> forged_results(std::string_view section,
                                                               std::string_view authserv_id,
                                                               const std::vector<std::string>& also) {
    static constexpr std::string_view kName = "Authentication-Results";
    std::vector<std::pair<std::size_t, std::size_t>> ranges;
    std::size_t pos = 0;
    while (pos < section.size()) {
        // One field: its first line, then every line that starts with white space.
        const std::size_t start = pos;
        std::size_t end = section.find('\n', pos);
        end = end == std::string_view::npos ? section.size() : end + 1;
        if (end - start <= 2 && (section[start] == '\r' || section[start] == '\n')) break;  // the blank line
        while (end < section.size() && is_wsp(section[end])) {
            const std::size_t next = section.find('\n', end);
            end = next == std::string_view::npos ? section.size() : next + 1;
        }
        const std::string_view field = section.substr(start, end - start);
        const std::size_t colon = field.find(':');
        if (colon != std::string_view::npos) {
            std::string_view name = field.substr(0, colon);
            while (!name.empty() && is_wsp(name.back())) name.remove_suffix(1);
            const bool ours = boost::algorithm::iequals(name, kName) && !authserv_id.empty() &&
                              claims_authserv_id(field.substr(colon + 1), authserv_id);
            const bool owned = std::any_of(also.begin(), also.end(),
                                           [name](const std::string& n) { return boost::algorithm::iequals(name, n); });
            if (ours || owned) ranges.emplace_back(start, end);
        }
        pos = end;
    }
    return ranges;
}

}  // namespace mxhook::auth
