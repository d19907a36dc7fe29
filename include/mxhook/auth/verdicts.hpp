#pragma once
// What sender authentication concluded about one message, and the pure transforms of it:
// the Authentication-Results header (RFC 8601), the summary kept in meta.json, the
// payload's Mailgun-style fields and the decision API's `auth` object. Also finds the
// Authentication-Results headers a message brought that claim to be ours (RFC 8601 5).
//
// Knows nothing of DNS or of the libraries that reach the verdicts (auth/checker).

#include <nlohmann/json.hpp>

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mxhook::auth {

// RFC 8601 2.7's result names (softfail only for SPF).
enum class Result { none, pass, fail, softfail, neutral, temperror, permerror };
std::string_view result_name(Result result);
std::optional<Result> parse_result(std::string_view name);

struct SpfVerdict {
    Result result = Result::none;
    std::string domain;  // the domain checked: MAIL FROM's, or the HELO name for a null sender
    bool helo = false;   // checked for the HELO name (null sender)
};

struct DkimVerdict {
    Result result = Result::none;
    std::string domain;    // d=
    std::string selector;  // s=
    std::string reason;    // why it did not pass ("signature mismatch", "no key"), else ""
};

enum class DmarcPolicy { unspecified, none, quarantine, reject };
std::string_view policy_name(DmarcPolicy policy);  // "", "none", "quarantine", "reject"

struct DmarcVerdict {
    Result result = Result::none;  // none, pass, fail, temperror, permerror
    DmarcPolicy policy = DmarcPolicy::unspecified;  // the policy that applies (p=, or sp= for a subdomain)
    std::string domain;                             // the From: domain
};

// rspamd's opinion (RSPAMD_URL).
struct SpamVerdict {
    bool checked = false;  // false: rspamd was down, slow or answered nonsense (unchecked)
    bool spam = false;     // its action says so: "add header", "rewrite subject" or "reject"
    double score = 0, required = 0;
    std::string action;    // rspamd's action, e.g. "no action", "greylist", "add header"
};

// ClamAV's (CLAMD_ADDRESS).
struct VirusVerdict {
    bool checked = false;  // false: clamd was down or slow (unchecked)
    bool infected = false;
    std::string name;      // the signature found, e.g. "Eicar-Test-Signature"
};

// What was checked; an absent part was not asked for (AUTH_CHECKS, RSPAMD_URL, CLAMD_ADDRESS).
struct Verdicts {
    std::optional<SpfVerdict> spf;
    std::optional<std::vector<DkimVerdict>> dkim;  // empty: the message had no signature
    std::optional<DmarcVerdict> dmarc;
    std::optional<SpamVerdict> spam;
    std::optional<VirusVerdict> virus;
};

// One result for all of a message's signatures: pass when one passed, none when there was
// none, else the first signature's result.
Result dkim_summary(const std::vector<DkimVerdict>& signatures);

// The header line, CRLF included, folded one method per line:
//   Authentication-Results: mx.example.net;\r\n\tspf=pass smtp.mailfrom=example.org;\r\n...
// Property values taken from the message (domains, selectors) are written only when they
// are plain domain-like tokens, so nothing a sender chose can break the header.
std::string authentication_results(std::string_view authserv_id, const Verdicts& verdicts);

// The headers the content scanners' verdicts add to the message, CRLF included: X-Spam-Flag
// (only for spam) and X-Spam-Status (rspamd), X-Virus-Status (clamd); "" when neither ran.
std::string content_headers(const Verdicts& verdicts);

// Names of the header fields mxhook writes for these verdicts besides
// Authentication-Results: a sender's own copies are removed, as they would pass for ours.
std::vector<std::string> owned_fields(const Verdicts& verdicts);

// The summary meta.json keeps (mxhook only: haraka-webhook ignores it) and the payload is
// made from: result names, dmarcPolicy when DMARC failed under a policy, the spam and virus
// verdicts as they are posted.
struct Summary {
    std::optional<Result> spf, dkim, dmarc;
    DmarcPolicy dmarc_policy = DmarcPolicy::unspecified;
    std::optional<std::string> spam;   // "yes", "no", "unchecked"
    std::string spam_score;            // "7.10" (when checked)
    std::string spam_action;           // rspamd's action (when checked)
    std::optional<std::string> virus;  // "clean", "infected", "unchecked"
    std::string virus_name;            // when infected
    bool operator==(const Summary&) const = default;
};
Summary summarize(const Verdicts& verdicts);

// Payload fields, in order, for the parts that were checked: X-Mailgun-Spf (Pass, Neutral,
// Fail, SoftFail, None, TempError, PermError), X-Mailgun-Dkim-Check-Result (Pass or Fail),
// X-Mxhook-Dmarc ("pass", "fail; p=reject", "none", ...), X-Mailgun-Sflag (Yes or No) and
// X-Mailgun-Sscore with X-Mxhook-Spam (rspamd's action, or "unchecked"), X-Mxhook-Virus
// ("clean", "unchecked", "infected; name=...").
std::vector<std::pair<std::string, std::string>> payload_fields(const Summary& summary);

// The decision API request's additions to `message`: `auth` (when sender authentication
// ran; `authentication_results` is its header's value), `spam`, `virus`.
nlohmann::ordered_json decision_json(const Verdicts& verdicts, std::string_view authentication_results);

// True when an Authentication-Results value names `authserv_id` as its authserv-id
// (ASCII case-insensitive; a token or a quoted string, after comments).
bool claims_authserv_id(std::string_view value, std::string_view authserv_id);

// Byte ranges [first, second) of `header_section` that are Authentication-Results fields
// (folded lines included) whose authserv-id is `authserv_id` (ASCII case-insensitive), and
// fields named in `also` (any case): a sender may not speak for us, so they are removed
// before ours are added.
std::vector<std::pair<std::size_t, std::size_t>> forged_results(std::string_view header_section,
                                                               std::string_view authserv_id,
                                                               const std::vector<std::string>& also = {});

}  // namespace mxhook::auth
