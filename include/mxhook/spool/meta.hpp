#pragma once
// meta.json, in exactly the format haraka-webhook writes (so an existing spool is
// adopted as it is): pretty-printed with two spaces and a trailing newline.

#include "mxhook/auth/verdicts.hpp"
#include "mxhook/mail/headers.hpp"

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace mxhook::spool {

using Clock = std::chrono::system_clock;

struct Remote {
    std::string ip;
    std::string host;
    std::string helo;
};

struct Meta {
    std::string id;
    Clock::time_point created_at;
    std::int64_t attempts = 0;
    std::optional<Clock::time_point> next_attempt_at;   // null in JSON when unset
    std::string sender;  // as written: "<a@b>", "a@b" or "" (null sender); see bare_address()
    std::vector<std::string> recipients;
    std::string from;
    std::string subject;
    mail::Headers headers;
    Remote remote;
    std::optional<Clock::time_point> last_attempt_at;   // written after the first attempt
    std::optional<std::string> last_error;
    // mxhook only ("interruptedAttempts", written when > 0): attempts cut short by a
    // crash or kill of the daemon, counted at start-up so a poison message is dead-lettered
    // instead of making the daemon crash-loop. haraka-webhook ignores the field.
    std::int64_t interrupted_attempts = 0;
    // mxhook only ("requeuedAt", written when set): when an operator last moved the item
    // back from dead/ (`mxhook spool requeue`). MAX_RETRY_AGE_MS counts from the later of
    // this and createdAt, so a requeued message gets its retry window again.
    std::optional<Clock::time_point> requeued_at;
    // mxhook only ("verdicts", written when sender authentication or a content scanner
    // ran): the summary the payload's X-Mailgun-Spf, X-Mailgun-Dkim-Check-Result,
    // X-Mxhook-Dmarc, X-Mailgun-Sflag, X-Mailgun-Sscore, X-Mxhook-Spam and X-Mxhook-Virus are
    // made from. An unknown value in it is ignored, never a reason to fail the item.
    std::optional<auth::Summary> auth;
};

// The time MAX_RETRY_AGE_MS counts from: createdAt, or requeuedAt when later.
inline Clock::time_point retry_age_origin(const Meta& meta) {
    return meta.requeued_at && *meta.requeued_at > meta.created_at ? *meta.requeued_at : meta.created_at;
}

// ISO-8601 UTC with milliseconds: "2026-11-25T17:03:14.123Z" (JavaScript's toISOString).
std::string iso8601(Clock::time_point t);
// Parses what iso8601 writes (and the same without milliseconds); nullopt when malformed.
std::optional<Clock::time_point> parse_iso8601(std::string_view text);

// Serialises meta.json (two-space indent, trailing newline, haraka-webhook's field order).
std::string to_json(const Meta& meta);
// Parses meta.json; throws std::runtime_error saying what is wrong. Accepts items written
// by haraka-webhook (sender may be "<user@example.com>", optional fields absent).
Meta parse_meta(std::string_view json);

// True when parse_meta(to_json(meta)) gives `meta` back field for field: every string is
// ASCII (8-bit bytes may come back as U+FFFD) and created_at has no part below a
// millisecond. Only then may a reader use the meta in memory instead of the file.
bool reads_back_unchanged(const Meta& meta);

// "<user@example.com>" -> "user@example.com"; "<>" -> ""; bare addresses unchanged.
std::string bare_address(std::string_view address);

}  // namespace mxhook::spool
