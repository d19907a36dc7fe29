#pragma once
// The Mailgun-style payload: application/x-www-form-urlencoded fields in the order
// recipient, sender, from, subject, message-headers, timestamp, token, signature,
// body-mime. body-mime is last so the (large) message can be streamed after a small
// prefix held in memory.

#include "mxhook/spool/meta.hpp"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

struct evp_mac_ctx_st;  // OpenSSL's EVP_MAC_CTX

namespace mxhook::webhook {

// 50 lowercase hex characters from OpenSSL's CSPRNG (RAND_bytes, 25 bytes).
std::string make_token();

// Lowercase hex HMAC-SHA256 of timestamp + token keyed by key (OpenSSL HMAC).
std::string sign(std::string_view key, std::string_view timestamp, std::string_view token);

// The same MAC over bytes given in pieces (the JSON payload signs its whole body).
class Signer {
public:
    explicit Signer(std::string_view key);
    Signer(const Signer&) = delete;
    Signer& operator=(const Signer&) = delete;
    ~Signer();
    void update(std::string_view bytes);
    std::string hex();  // once, after the last update

private:
    ::evp_mac_ctx_st* ctx_ = nullptr;
};

// application/x-www-form-urlencoded serialisation of arbitrary bytes, as the WHATWG URL
// standard (and so URLSearchParams) does: [A-Za-z0-9*-._] unchanged, space -> '+',
// every other byte -> %XX (uppercase hex). Byte-exact, never a UTF-8 conversion.
std::string form_encode(std::string_view bytes);
// Appends the encoding of bytes to out.
void form_encode_append(std::string& out, std::string_view bytes);
// Length of form_encode(bytes) without building it.
std::uint64_t form_encoded_size(std::string_view bytes);

// The fields before body-mime, in order: recipient, sender, from, subject,
// message-headers, timestamp (unix seconds of now), token (fresh) and, when key is not
// empty, signature.
using Fields = std::vector<std::pair<std::string, std::string>>;
Fields payload_fields(const spool::Meta& meta, std::string_view signing_key, std::chrono::system_clock::time_point now);

// application/x-www-form-urlencoded: everything up to and including "&body-mime=". The
// caller appends the form-encoded message bytes.
std::string urlencoded_prefix(const Fields& fields);
// The same for payload_fields(meta, key, now).
std::string payload_prefix(const spool::Meta& meta, std::string_view signing_key,
                           std::chrono::system_clock::time_point now);

// multipart/form-data (RFC 7578), for messages that are not valid UTF-8: a consumer such
// as Rails refuses a urlencoded field that is not (400 "Invalid encoding for parameter").
// Each field is a part; one whose value is not valid UTF-8, and body-mime always, is
// labelled "text/plain; charset=binary" so the consumer keeps the bytes as they are.
// The prefix ends with body-mime's part header; the caller appends the raw message bytes,
// then multipart_suffix.
std::string multipart_prefix(const Fields& fields, std::string_view boundary);
// The Content-Type of a part whose bytes are not text in UTF-8, and the one a field's
// part gets (kBinary when the value is not valid UTF-8, empty otherwise).
inline constexpr std::string_view kBinary = "text/plain; charset=binary";
std::string_view binary_type(std::string_view value);
// One part's header (from its boundary line to the empty line): Content-Type only when
// content_type is not empty, a filename parameter when filename is given.
void append_part_header(std::string& out, std::string_view boundary, std::string_view name,
                        std::string_view content_type, std::optional<std::string_view> filename = std::nullopt);
std::string multipart_suffix(std::string_view boundary);
std::string multipart_content_type(std::string_view boundary);
// A boundary that cannot occur by chance: "mxhook-" + 50 random hex characters.
std::string make_boundary();

// UTF-8 validation (RFC 3629: no overlongs, no surrogates, nothing above U+10FFFF), fed in
// pieces that may split a character anywhere.
class Utf8Validator {
public:
    void feed(std::string_view bytes);
    // True when everything fed so far is valid and no character is left unfinished.
    bool valid() const { return !failed_ && pending_ == 0; }

private:
    bool failed_ = false;
    int pending_ = 0;             // continuation bytes still expected
    unsigned char lower_ = 0x80;  // bounds of the next continuation byte
    unsigned char upper_ = 0xBF;
};
bool is_valid_utf8(std::string_view bytes);

}  // namespace mxhook::webhook
