#pragma once
// DMARC (RFC 7489) with OpenDMARC's libopendmarc: alignment of the SPF and DKIM results
// with the From: domain, and the policy that domain publishes. The records are fetched by
// the caller (c-ares, on the io thread) and handed in: libopendmarc's own lookups block,
// so it never makes one. The organizational domain comes from the public suffix list
// (Debian's `publicsuffix`).

#include "mxhook/auth/verdicts.hpp"
#include "mxhook/dns/resolver.hpp"

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace mxhook::auth {

// The process's libopendmarc (its public suffix list is global to the library).
class DmarcLibrary {
public:
    // Throws std::runtime_error naming the file when the list cannot be read.
    explicit DmarcLibrary(const std::filesystem::path& public_suffix_list);
    ~DmarcLibrary();
    DmarcLibrary(const DmarcLibrary&) = delete;
    DmarcLibrary& operator=(const DmarcLibrary&) = delete;

    // "mail.example.co.uk" -> "example.co.uk"; the domain itself when no suffix matches.
    std::string organizational_domain(const std::string& domain) const;
};

// The domain of the message's From: address (lower case), or nullopt when there is not
// exactly one From: header with one address that has a domain (RFC 7489 6.6.1).
std::optional<std::string> from_domain(const std::vector<std::string>& from_values);

// The one DMARC record among a TXT answer's records: nullopt when none starts with
// "v=DMARC1" or more than one does (RFC 7489 6.6.3: no policy then).
std::optional<std::string> dmarc_record(const dns::Answer& answer);

struct DmarcInput {
    std::string client_ip;
    std::string from_domain;
    std::string organizational_domain;
    dns::Answer from_answer;  // _dmarc.<from domain> TXT
    dns::Answer org_answer;   // _dmarc.<organizational domain> TXT (unused when the same)
    std::optional<SpfVerdict> spf;
    std::optional<std::vector<DkimVerdict>> dkim;
};

DmarcVerdict evaluate_dmarc(const DmarcLibrary& library, const DmarcInput& input);

}  // namespace mxhook::auth
