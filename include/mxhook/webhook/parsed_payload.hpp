#pragma once
// The parsed payloads (WEBHOOK_FORMAT): the message taken apart for consumers that do not
// parse MIME.
//  - parsed: multipart/form-data as Mailgun's parsed forward posts it: the fields of
//    the mime payload, then body-plain, body-html, stripped-text, stripped-signature,
//    stripped-html, attachment-count, content-id-map and attachment-1..N as file parts.
//  - json: one application/json object in the shape of Postmark's inbound webhook,
//    signed over timestamp + token + body in request headers.
// Both are written to a file (the request body is then streamed from it): attachments
// and texts pass through in pieces, so memory does not grow with the message. Blocking:
// run on the worker pool.

#include "mxhook/mime/message.hpp"
#include "mxhook/spool/meta.hpp"
#include "mxhook/webhook/payload.hpp"

#include <chrono>
#include <cstddef>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace mxhook::webhook {

// Which leaves are the text bodies and which the attachments: depth first, the first
// text/plain leaf that is not an attachment is the plain body, the first such text/html
// the HTML body; every other leaf is an attachment, numbered in walk order.
struct BodyLayout {
    std::optional<std::size_t> plain;
    std::optional<std::size_t> html;
    std::vector<std::size_t> attachments;
};
BodyLayout layout_of(const std::vector<mime::Leaf>& leaves);

// An attachment's name in the payload: its own filename, or "attachment-<n>" (1-based).
std::string attachment_name(const mime::Leaf& leaf, std::size_t n);

// What the request needs besides the body written to the file.
struct BuiltBody {
    std::string content_type;
    std::vector<std::string> headers;  // extra request headers, "Name: value"
    std::uint64_t size = 0;            // bytes written
};

// WEBHOOK_FORMAT=parsed: `fields` (payload_fields of the item) then the parsed fields,
// written to fd (an empty file open for writing).
BuiltBody write_parsed_body(const mime::Message& message, const Fields& fields, int fd);

struct JsonOptions {
    std::string_view signing_key;  // empty: no X-Mxhook-Signature
    std::chrono::system_clock::time_point now;
    // The raw message for RawEmail (WEBHOOK_JSON_RAW_EMAIL); none: no RawEmail.
    std::optional<std::filesystem::path> raw_email;
};
// WEBHOOK_FORMAT=json, written to fd. Request headers X-Mxhook-Timestamp, X-Mxhook-Token
// and (with a key) X-Mxhook-Signature, the hex HMAC-SHA256 of timestamp + token + body.
BuiltBody write_json_body(const mime::Message& message, const spool::Meta& meta, const JsonOptions& options, int fd);

// The part of an address's local part after its first '+' (Postmark's MailboxHash);
// empty when there is none.
std::string mailbox_hash(std::string_view address);

}  // namespace mxhook::webhook
