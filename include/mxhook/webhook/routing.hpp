#pragma once
// Role-address routing: a message for any role address (postmaster@, abuse@, ...) goes
// whole to WEBHOOK_ROLE_URL when one is set; everything else to WEBHOOK_URL. Decided at
// delivery time from meta.json, so items already spooled follow the configuration in force.

#include "mxhook/config.hpp"

#include <string>
#include <string_view>
#include <vector>

namespace mxhook::webhook {

// The text before the last '@' (the whole address when there is none), trimmed of
// spaces and tabs, ASCII lower-cased.
std::string local_part(std::string_view address);

// True when any recipient's local part is in roles (roles are lower-case).
bool has_role_recipient(const std::vector<std::string>& recipients, const std::vector<std::string>& roles);

// The URL the message goes to under this configuration.
const std::string& route(const Config& config, const std::vector<std::string>& recipients);

}  // namespace mxhook::webhook
