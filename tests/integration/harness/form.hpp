#pragma once
// application/x-www-form-urlencoded, decoded byte for byte: '+' is a space, %XX is one
// byte, anything else is itself. Order and duplicates are kept.

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace itest {

using FormFields = std::vector<std::pair<std::string, std::string>>;

// Throws std::invalid_argument on a malformed escape (a '%' not followed by two hex digits).
std::string percent_decode(std::string_view text);
FormFields parse_form(std::string_view body);

// The value of the first field called `name`, if any.
std::optional<std::string> field(const FormFields& fields, std::string_view name);
std::vector<std::string> field_names(const FormFields& fields);

}  // namespace itest
