#include "mxhook/webhook/routing.hpp"

#include <algorithm>

namespace mxhook::webhook {

std::string local_part(std::string_view address) {
    // "<admin@example.com>", as haraka-webhook stored recipients, is the same address.
    if (address.size() >= 2 && address.front() == '<' && address.back() == '>') {
        address = address.substr(1, address.size() - 2);
    }
    const auto at = address.rfind('@');
    std::string_view local = at == std::string_view::npos ? address : address.substr(0, at);
    while (!local.empty() && (local.front() == ' ' || local.front() == '\t')) local.remove_prefix(1);
    while (!local.empty() && (local.back() == ' ' || local.back() == '\t')) local.remove_suffix(1);
    std::string out(local);
    std::transform(out.begin(), out.end(), out.begin(),
                   [](char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; });
    return out;
}

bool has_role_recipient(const std::vector<std::string>& recipients, const std::vector<std::string>& roles) {
    return std::any_of(recipients.begin(), recipients.end(), [&roles](const std::string& recipient) {
        return std::find(roles.begin(), roles.end(), local_part(recipient)) != roles.end();
    });
}

const std::string& route(const Config& config, const std::vector<std::string>& recipients) {
    if (!config.webhook_role_url.empty() && has_role_recipient(recipients, config.role_addresses)) {
        return config.webhook_role_url;
    }
    return config.webhook_url;
}

}  // namespace mxhook::webhook
