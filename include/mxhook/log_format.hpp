#pragma once
// LOG_FORMAT=json: one JSON object per line for log shippers (Loki, Elasticsearch,
// CloudWatch), carrying the same events as the text format. Every line has "time"
// (RFC 3339, UTC, milliseconds), "level" and "msg" (the text line's message, whole); the
// message's key=value pairs (client=203.0.113.9, id=..., error="...") also become fields
// of their own, so `jq 'select(.outcome == "retry")'` works without parsing text.

#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <spdlog/formatter.h>

namespace mxhook {

// The key=value pairs of a log message, in order: keys of lowercase letters, digits and
// '_' starting a word; a value runs to the next space, or is a "quoted string" (with \"
// and \\ escapes, as the text lines write it). Keys "time", "level" and "msg" are left out.
std::vector<std::pair<std::string, std::string>> log_fields(std::string_view message);

// One JSON line (with its newline) for an event.
std::string json_log_line(std::chrono::system_clock::time_point time, std::string_view level,
                          std::string_view message);

// The spdlog formatter that writes json_log_line.
std::unique_ptr<spdlog::formatter> make_json_formatter();

}  // namespace mxhook
