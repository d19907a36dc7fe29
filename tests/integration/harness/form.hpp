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

// multipart/form-data (RFC 7578) with the given boundary: each part's name and its bytes,
// as a strict reader sees them (parts separated by CRLF--boundary, headers up to the
// first empty line, name from Content-Disposition). Part headers go to `part_headers` when
// given, one string per part. Throws std::invalid_argument on a malformed body.
FormFields parse_multipart(std::string_view body, std::string_view boundary,
                           std::vector<std::string>* part_headers = nullptr);
// One part of a multipart/form-data body, with what parse_multipart leaves out: the
// filename parameter of its Content-Disposition (nullopt when it has none; quoted-pair
// escapes undone, bytes otherwise as sent) and its Content-Type ("" when it has none).
struct FormPart {
    std::string name;
    std::optional<std::string> filename;
    std::string content_type;
    std::string headers;   // the part's header block, as sent
    std::string value;
};
// The parts of a multipart/form-data body, read as parse_multipart reads them (same
// errors).
std::vector<FormPart> parse_multipart_parts(std::string_view body, std::string_view boundary);
// The first part called `name`, if any.
const FormPart* find_part(const std::vector<FormPart>& parts, std::string_view name);

// The boundary parameter of a multipart/form-data Content-Type; nullopt for other types.
std::optional<std::string> multipart_boundary(std::string_view content_type);

// The value of the first field called `name`, if any.
std::optional<std::string> field(const FormFields& fields, std::string_view name);
std::vector<std::string> field_names(const FormFields& fields);

}  // namespace itest
