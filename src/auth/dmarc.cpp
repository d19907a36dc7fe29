#include "mxhook/auth/dmarc.hpp"

#include "mxhook/auth/spf.hpp"  // question_name

#include "opendkim.h"

extern "C" {
#include <opendmarc/dmarc.h>
// Exported by libopendmarc, missing from its header.
int opendmarc_get_tld(unsigned char* domain, unsigned char* tld, size_t tld_len);
}

#include <cstring>
#include <stdexcept>

namespace mxhook::auth {

namespace {

unsigned char* bytes(std::string& text) { return reinterpret_cast<unsigned char*>(text.data()); }

// A comma outside quotes, comments and angle brackets: more than one mailbox.
bool several_mailboxes(std::string_view value) {
    bool quoted = false;
    int comment = 0, angle = 0;
    for (std::size_t i = 0; i < value.size(); ++i) {
        const char c = value[i];
        if (c == '\\') {
            ++i;
        } else if (quoted) {
            quoted = c != '"';
        } else if (c == '"') {
            quoted = true;
        } else if (c == '(') {
            ++comment;
        } else if (c == ')' && comment > 0) {
            --comment;
        } else if (comment == 0 && c == '<') {
            ++angle;
        } else if (comment == 0 && c == '>' && angle > 0) {
            --angle;
        } else if (comment == 0 && angle == 0 && c == ',') {
            return true;
        }
    }
    return false;
}

int spf_outcome(Result result) {
    switch (result) {
        case Result::pass: return DMARC_POLICY_SPF_OUTCOME_PASS;
        case Result::temperror: return DMARC_POLICY_SPF_OUTCOME_TMPFAIL;
        case Result::none:
        case Result::permerror: return DMARC_POLICY_SPF_OUTCOME_NONE;
        default: return DMARC_POLICY_SPF_OUTCOME_FAIL;
    }
}

int dkim_outcome(Result result) {
    switch (result) {
        case Result::pass: return DMARC_POLICY_DKIM_OUTCOME_PASS;
        case Result::temperror: return DMARC_POLICY_DKIM_OUTCOME_TMPFAIL;
        case Result::none: return DMARC_POLICY_DKIM_OUTCOME_NONE;
        default: return DMARC_POLICY_DKIM_OUTCOME_FAIL;
    }
}

DmarcPolicy policy_of(int p) {
    switch (p) {
        case DMARC_RECORD_P_NONE: return DmarcPolicy::none;
        case DMARC_RECORD_P_QUARANTINE: return DmarcPolicy::quarantine;
        case DMARC_RECORD_P_REJECT: return DmarcPolicy::reject;
        default: return DmarcPolicy::unspecified;
    }
}

// Frees libopendmarc's per-message context on every path.
struct PolicyContext {
    DMARC_POLICY_T* p;
    ~PolicyContext() {
        if (p != nullptr) opendmarc_policy_connect_shutdown(p);
    }
};

}  // namespace

DmarcLibrary::DmarcLibrary(const std::filesystem::path& public_suffix_list) {
    OPENDMARC_LIB_T lib{};
    lib.tld_type = OPENDMARC_TLD_TYPE_MOZILLA;
    const std::string path = public_suffix_list.string();
    if (path.size() >= sizeof lib.tld_source_file) throw std::runtime_error("path too long: " + path);
    std::memcpy(lib.tld_source_file, path.c_str(), path.size() + 1);
    if (!std::filesystem::is_regular_file(public_suffix_list))
        throw std::runtime_error("cannot read the public suffix list " + path);
    if (opendmarc_policy_library_init(&lib) != DMARC_PARSE_OKAY)
        throw std::runtime_error("libopendmarc cannot load the public suffix list " + path);
}

DmarcLibrary::~DmarcLibrary() {
    OPENDMARC_LIB_T lib{};
    opendmarc_policy_library_shutdown(&lib);
}

namespace {

// libopendmarc's lookup: the registrable domain, or the name itself when no rule matched.
std::string registrable(const std::string& domain) {
    std::string copy = domain;
    unsigned char tld[256] = {};
    if (opendmarc_get_tld(bytes(copy), tld, sizeof tld) != 0 || tld[0] == '\0') return domain;
    return question_name(reinterpret_cast<const char*>(tld));
}

}  // namespace

std::string DmarcLibrary::organizational_domain(const std::string& domain) const {
    const std::string found = registrable(domain);
    if (found != domain) return found;
    // The name itself: it is registrable, or its top-level domain is in no rule (.test,
    // an internal one), where the list's default rule "*" makes the last label the
    // suffix. A probe two labels under that TLD tells which: a known TLD cuts it short.
    const auto last_dot = domain.rfind('.');
    if (last_dot == std::string::npos) return domain;
    const auto before = domain.rfind('.', last_dot - 1);
    if (before == std::string::npos) return domain;  // already two labels
    const std::string probe = "a.b" + domain.substr(last_dot);
    if (registrable(probe) != probe) return domain;
    return domain.substr(before + 1);
}

std::optional<std::string> from_domain(const std::vector<std::string>& from_values) {
    if (from_values.size() != 1 || several_mailboxes(from_values.front())) return std::nullopt;
    std::string value = from_values.front();
    unsigned char* user = nullptr;
    unsigned char* domain = nullptr;
    // libopendkim's RFC 5322 mailbox parser (display names, comments, quoted local parts);
    // it works in place.
    if (dkim_mail_parse(bytes(value), &user, &domain) != 0 || domain == nullptr || *domain == '\0')
        return std::nullopt;
    return question_name(reinterpret_cast<const char*>(domain));
}

std::optional<std::string> dmarc_record(const dns::Answer& answer) {
    std::optional<std::string> found;
    for (const auto& record : answer.records) {
        std::size_t i = 0;
        const auto skip_ws = [&] {
            while (i < record.size() && (record[i] == ' ' || record[i] == '\t')) ++i;
        };
        skip_ws();
        if (record.compare(i, 1, "v") != 0) continue;
        ++i;
        skip_ws();
        if (record.compare(i, 1, "=") != 0) continue;
        ++i;
        skip_ws();
        if (record.compare(i, 6, "DMARC1") != 0) continue;
        i += 6;
        skip_ws();
        if (i < record.size() && record[i] != ';') continue;
        if (found) return std::nullopt;  // more than one
        found = record;
    }
    return found;
}

DmarcVerdict evaluate_dmarc(const DmarcLibrary& /*library: loaded*/, const DmarcInput& input) {
    DmarcVerdict verdict;
    verdict.domain = input.from_domain;
    // Where the policy comes from: the From: domain's record, else its organizational domain's.
    const dns::Answer* used = &input.from_answer;
    std::optional<std::string> record;
    if (input.from_answer.status == dns::Status::temp_error) {
        verdict.result = Result::temperror;
        return verdict;
    }
    record = dmarc_record(input.from_answer);
    const bool at_org = !record && input.organizational_domain != input.from_domain;
    if (at_org) {
        used = &input.org_answer;
        if (used->status == dns::Status::temp_error) {
            verdict.result = Result::temperror;
            return verdict;
        }
        record = dmarc_record(*used);
    }
    if (!record) return verdict;  // none: no policy published

    const bool v6 = input.client_ip.find(':') != std::string::npos;
    std::string ip = input.client_ip;
    PolicyContext ctx{opendmarc_policy_connect_init(bytes(ip), v6 ? DMARC_POLICY_IP_TYPE_IPV6 : DMARC_POLICY_IP_TYPE_IPV4)};
    if (ctx.p == nullptr) {
        verdict.result = Result::temperror;
        return verdict;
    }
    std::string from = input.from_domain;
    if (opendmarc_policy_store_from_domain(ctx.p, bytes(from)) != DMARC_PARSE_OKAY) {
        verdict.result = Result::permerror;
        return verdict;
    }
    if (input.spf && !input.spf->domain.empty()) {
        std::string domain = input.spf->domain;
        std::string human(result_name(input.spf->result));
        opendmarc_policy_store_spf(ctx.p, bytes(domain), spf_outcome(input.spf->result),
                                   input.spf->helo ? DMARC_POLICY_SPF_ORIGIN_HELO : DMARC_POLICY_SPF_ORIGIN_MAILFROM,
                                   bytes(human));
    }
    if (input.dkim) {
        for (const auto& signature : *input.dkim) {
            if (signature.domain.empty()) continue;
            std::string domain = signature.domain, selector = signature.selector;
            std::string human(result_name(signature.result));
            opendmarc_policy_store_dkim(ctx.p, bytes(domain), bytes(selector), dkim_outcome(signature.result),
                                        bytes(human));
        }
    }
    std::string text = *record;
    std::string org = input.organizational_domain;
    if (opendmarc_policy_store_dmarc(ctx.p, bytes(text), bytes(from), at_org ? bytes(org) : nullptr) !=
        DMARC_PARSE_OKAY) {
        verdict.result = Result::permerror;  // a record that does not parse
        return verdict;
    }
    int p = 0, sp = 0;
    opendmarc_policy_fetch_p(ctx.p, &p);
    opendmarc_policy_fetch_sp(ctx.p, &sp);
    // RFC 7489 6.3: sp= applies to subdomains of the organizational domain whose record is used.
    verdict.policy = policy_of(at_org && sp != DMARC_RECORD_P_UNSPECIFIED ? sp : p);
    switch (opendmarc_get_policy_to_enforce(ctx.p)) {
        case DMARC_POLICY_PASS: verdict.result = Result::pass; break;
        case DMARC_POLICY_REJECT: verdict.result = Result::fail; break;
        case DMARC_POLICY_QUARANTINE: verdict.result = Result::fail; break;
        case DMARC_POLICY_NONE: verdict.result = Result::fail; break;
        case DMARC_POLICY_ABSENT: verdict.result = Result::none; break;
        default: verdict.result = Result::permerror; break;
    }
    return verdict;
}

}  // namespace mxhook::auth
