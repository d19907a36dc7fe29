#pragma once
// The Mailgun-style payload: application/x-www-form-urlencoded fields in the order
// recipient, sender, from, subject, message-headers, timestamp, token, signature,
// body-mime. body-mime is last so the (large) message can be streamed after a small
// prefix held in memory.

#include "mxhook/spool/meta.hpp"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace mxhook::webhook {

// 50 lowercase hex characters from OpenSSL's CSPRNG (RAND_bytes, 25 bytes).
std::string make_token();

// Lowercase hex HMAC-SHA256 of timestamp + token keyed by key (OpenSSL HMAC).
std::string sign(std::string_view key, std::string_view timestamp, std::string_view token);

// application/x-www-form-urlencoded serialisation of arbitrary bytes, as the WHATWG URL
// standard (and so URLSearchParams) does: [A-Za-z0-9*-._] unchanged, space -> '+',
// every other byte -> %XX (uppercase hex). Byte-exact, never a UTF-8 conversion.
std::string form_encode(std::string_view bytes);
// Appends the encoding of bytes to out.
void form_encode_append(std::string& out, std::string_view bytes);
// Length of form_encode(bytes) without building it.
std::uint64_t form_encoded_size(std::string_view bytes);

// Everything up to and including "&body-mime=": the encoded fields built from meta,
// the timestamp (unix seconds of now), a fresh token and, when key is not empty, the
// signature. The caller appends the form-encoded message bytes.
std::string payload_prefix(const spool::Meta& meta, std::string_view signing_key,
                           std::chrono::system_clock::time_point now);

}  // namespace mxhook::webhook
