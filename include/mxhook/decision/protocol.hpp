#pragma once
// The decision protocol (haraka-webhook.decision.v1, see DecisionProtocol.md): the JSON
// request mxhook sends before it commits a message, and how it reads the answer.
// Pure functions, no I/O.

#include "mxhook/config.hpp"
#include "mxhook/spool/meta.hpp"

#include <string>
#include <string_view>

namespace mxhook::decision {

inline constexpr std::string_view kProtocol = "haraka-webhook.decision.v1";

enum class Verdict { allow, deny, silent_deny, unavailable };

struct Decision {
    Verdict verdict = Verdict::unavailable;
    std::string reason;   // from the answer; for unavailable, why
    std::string message;  // from the answer
};

// {"protocol": ..., "mode": ..., "message": {...}}; raw_mime is used in full mode only,
// with bytes that are not valid UTF-8 replaced by U+FFFD.
// `verdicts`: fields added to `message` (auth::decision_json: auth, spam, virus) when it
// is an object.
std::string request_body(const spool::Meta& meta, DecisionMode mode, std::string_view raw_mime,
                         const nlohmann::ordered_json& verdicts = nullptr);

// Reads the HTTP answer: only status 200 with a JSON object whose "decision" is allow,
// deny or silent_deny counts; everything else is unavailable with the reason why.
// transport_error is the HTTP client's error text ("" when a response arrived).
Decision parse_response(long status, std::string_view body, std::string_view transport_error);

// SMTP-safe text for a 550 reply: CR/LF runs become one space, other control and
// non-ASCII characters are dropped, trimmed, at most 200 characters; fallback when empty.
std::string smtp_safe(std::string_view text, std::string_view fallback = "Message rejected");

// The text a deny answer shows to the sender: message, else reason, else the fallback.
std::string deny_text(const Decision& decision);

}  // namespace mxhook::decision
