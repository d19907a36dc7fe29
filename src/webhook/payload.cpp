#include "mxhook/webhook/payload.hpp"

#include "mxhook/spool/json_text.hpp"

#include <openssl/evp.h>
#include <openssl/core_names.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include <array>
#include <stdexcept>

namespace mxhook::webhook {
namespace {

constexpr char hex_lower[] = "0123456789abcdef";
constexpr char hex_upper[] = "0123456789ABCDEF";

std::string to_hex(const unsigned char* bytes, std::size_t size) {
    std::string out;
    out.reserve(size * 2);
    for (std::size_t i = 0; i < size; ++i) {
        out += hex_lower[bytes[i] >> 4];
        out += hex_lower[bytes[i] & 0xf];
    }
    return out;
}

// The WHATWG application/x-www-form-urlencoded percent-encode set leaves exactly
// these bytes alone; everything else (8-bit bytes and NUL included) is escaped.
constexpr bool is_unreserved(unsigned char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '*' ||
           c == '-' || c == '.' || c == '_';
}

void append_field(std::string& out, std::string_view name, std::string_view value) {
    if (!out.empty()) out += '&';
    out += name;  // field names are all unreserved characters
    out += '=';
    form_encode_append(out, value);
}

// Like JavaScript's JSON.stringify(headers): compact, non-ASCII left as UTF-8. A header
// byte that is not valid UTF-8 becomes U+FFFD rather than failing the whole delivery.
std::string headers_json(const mail::Headers& headers) {
    std::string out = "[";
    for (const auto& [name, value] : headers) {
        if (out.size() > 1) out += ',';
        out += '[';
        spool::append_json_string(out, name);
        out += ',';
        spool::append_json_string(out, value);
        out += ']';
    }
    out += ']';
    return out;
}

}  // namespace

std::string make_token() {
    std::array<unsigned char, 25> bytes{};
    // A predictable token would let anyone replay signatures, so failure is fatal
    // for this delivery rather than silently weaker.
    if (RAND_bytes(bytes.data(), static_cast<int>(bytes.size())) != 1)
        throw std::runtime_error("RAND_bytes failed: no secure random bytes for the webhook token");
    return to_hex(bytes.data(), bytes.size());
}

namespace {

// HMAC-SHA256 keyed once per thread and copied for each signature: HMAC() fetches the
// algorithm and sets the key up again on every call, which costs more than the MAC itself.
class KeyedHmac {
public:
    KeyedHmac() = default;
    KeyedHmac(const KeyedHmac&) = delete;
    KeyedHmac& operator=(const KeyedHmac&) = delete;
    ~KeyedHmac() {
        EVP_MAC_CTX_free(keyed_);
        EVP_MAC_free(mac_);
    }

    // A fresh context with `key` set; the caller frees it.
    EVP_MAC_CTX* start(std::string_view key) {
        if (keyed_ == nullptr || key != key_) rekey(key);
        return EVP_MAC_CTX_dup(keyed_);
    }

private:
    void rekey(std::string_view key) {
        if (mac_ == nullptr) mac_ = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
        if (mac_ == nullptr) throw std::runtime_error("HMAC is not available");
        EVP_MAC_CTX* ctx = EVP_MAC_CTX_new(mac_);
        char digest[] = "SHA256";
        const OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("digest", digest, 0), OSSL_PARAM_END};
        // An empty key is a valid HMAC key; OpenSSL wants a non-null pointer for it.
        static const unsigned char empty = 0;
        const auto* key_data = key.empty() ? &empty : reinterpret_cast<const unsigned char*>(key.data());
        if (ctx == nullptr || EVP_MAC_init(ctx, key_data, key.size(), params) != 1) {
            EVP_MAC_CTX_free(ctx);
            throw std::runtime_error("HMAC-SHA256 key setup failed");
        }
        EVP_MAC_CTX_free(keyed_);
        keyed_ = ctx;
        key_.assign(key);
    }

    EVP_MAC* mac_ = nullptr;
    EVP_MAC_CTX* keyed_ = nullptr;
    std::string key_;
};

}  // namespace

Signer::Signer(std::string_view key) {
    thread_local KeyedHmac hmac;
    ctx_ = hmac.start(key);
    if (ctx_ == nullptr) throw std::runtime_error("HMAC-SHA256 failed");
}

Signer::~Signer() { EVP_MAC_CTX_free(ctx_); }

void Signer::update(std::string_view bytes) {
    if (EVP_MAC_update(ctx_, reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size()) != 1) {
        throw std::runtime_error("HMAC-SHA256 failed");
    }
}

std::string Signer::hex() {
    unsigned char digest[EVP_MAX_MD_SIZE];
    std::size_t digest_size = 0;
    if (EVP_MAC_final(ctx_, digest, &digest_size, sizeof digest) != 1) throw std::runtime_error("HMAC-SHA256 failed");
    return to_hex(digest, digest_size);
}

std::string sign(std::string_view key, std::string_view timestamp, std::string_view token) {
    Signer signer(key);
    signer.update(timestamp);
    signer.update(token);
    return signer.hex();
}

void form_encode_append(std::string& out, std::string_view bytes) {
    // Sized once for the worst case and written through a pointer: the body of every
    // delivery passes through here, and a push_back per byte costs more than the encoding.
    const std::size_t start = out.size();
    out.resize(start + 3 * bytes.size());
    char* w = out.data() + start;
    for (char ch : bytes) {
        const auto c = static_cast<unsigned char>(ch);
        if (is_unreserved(c)) {
            *w++ = ch;
        } else if (c == ' ') {
            *w++ = '+';
        } else {
            w[0] = '%';
            w[1] = hex_upper[c >> 4];
            w[2] = hex_upper[c & 0xf];
            w += 3;
        }
    }
    out.resize(static_cast<std::size_t>(w - out.data()));
}

std::string form_encode(std::string_view bytes) {
    std::string out;
    out.reserve(bytes.size());
    form_encode_append(out, bytes);
    return out;
}

std::uint64_t form_encoded_size(std::string_view bytes) {
    std::uint64_t size = 0;
    for (char ch : bytes) {
        const auto c = static_cast<unsigned char>(ch);
        size += (is_unreserved(c) || c == ' ') ? 1 : 3;
    }
    return size;
}

Fields payload_fields(const spool::Meta& meta, std::string_view signing_key,
                      std::chrono::system_clock::time_point now) {
    std::string recipients;
    for (const auto& rcpt : meta.recipients) {
        if (!recipients.empty()) recipients += ',';
        recipients += spool::bare_address(rcpt);  // haraka-webhook stored "<rcpt@example.com>"
    }
    std::string timestamp = std::to_string(std::chrono::floor<std::chrono::seconds>(now.time_since_epoch()).count());
    std::string token = make_token();

    Fields fields;
    fields.emplace_back("recipient", std::move(recipients));
    fields.emplace_back("sender", spool::bare_address(meta.sender));
    fields.emplace_back("from", meta.from);
    fields.emplace_back("subject", meta.subject);
    fields.emplace_back("message-headers", headers_json(meta.headers));
    std::string signature = signing_key.empty() ? std::string() : sign(signing_key, timestamp, token);
    fields.emplace_back("timestamp", std::move(timestamp));
    fields.emplace_back("token", std::move(token));
    if (!signing_key.empty()) fields.emplace_back("signature", std::move(signature));
    // Sender authentication's verdicts, as Mailgun names them (absent when it did not run).
    if (meta.auth) {
        for (auto& field : auth::payload_fields(*meta.auth)) fields.push_back(std::move(field));
    }
    return fields;
}

std::string urlencoded_prefix(const Fields& fields) {
    std::string out;
    for (const auto& [name, value] : fields) append_field(out, name, value);
    out += "&body-mime=";
    return out;
}

std::string payload_prefix(const spool::Meta& meta, std::string_view signing_key,
                           std::chrono::system_clock::time_point now) {
    return urlencoded_prefix(payload_fields(meta, signing_key, now));
}

void append_part_header(std::string& out, std::string_view boundary, std::string_view name,
                        std::string_view content_type, std::optional<std::string_view> filename) {
    out += "--";
    out += boundary;
    out += "\r\nContent-Disposition: form-data; name=\"";
    out += name;  // field names are fixed ASCII words
    out += '"';
    if (filename) {
        // As the WHATWG form-data encoder writes a file name: quote, CR and LF escaped.
        out += "; filename=\"";
        for (char c : *filename) {
            if (c == '"') {
                out += "%22";
            } else if (c == '\r') {
                out += "%0D";
            } else if (c == '\n') {
                out += "%0A";
            } else {
                out += c;
            }
        }
        out += '"';
    }
    out += "\r\n";
    if (!content_type.empty()) {
        out += "Content-Type: ";
        out += content_type;
        out += "\r\n";
    }
    out += "\r\n";
}

std::string_view binary_type(std::string_view value) { return is_valid_utf8(value) ? "" : kBinary; }

std::string multipart_prefix(const Fields& fields, std::string_view boundary) {
    std::string out;
    for (const auto& [name, value] : fields) {
        append_part_header(out, boundary, name, binary_type(value));
        out += value;
        out += "\r\n";
    }
    append_part_header(out, boundary, "body-mime", kBinary);
    return out;
}

std::string multipart_suffix(std::string_view boundary) { return "\r\n--" + std::string(boundary) + "--\r\n"; }

std::string multipart_content_type(std::string_view boundary) {
    return "multipart/form-data; boundary=" + std::string(boundary);
}

std::string make_boundary() { return "mxhook-" + make_token(); }

void Utf8Validator::feed(std::string_view bytes) {
    for (char ch : bytes) {
        if (failed_) return;
        const auto c = static_cast<unsigned char>(ch);
        if (pending_ > 0) {
            if (c < lower_ || c > upper_) {
                failed_ = true;
                return;
            }
            --pending_;
            lower_ = 0x80;
            upper_ = 0xBF;
            continue;
        }
        if (c < 0x80) continue;
        // RFC 3629's table: the first continuation byte's range depends on the lead byte.
        if (c >= 0xC2 && c <= 0xDF) {
            pending_ = 1;
        } else if (c == 0xE0) {
            pending_ = 2;
            lower_ = 0xA0;  // no overlongs
        } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
            pending_ = 2;
        } else if (c == 0xED) {
            pending_ = 2;
            upper_ = 0x9F;  // no surrogates
        } else if (c == 0xF0) {
            pending_ = 3;
            lower_ = 0x90;
        } else if (c >= 0xF1 && c <= 0xF3) {
            pending_ = 3;
        } else if (c == 0xF4) {
            pending_ = 3;
            upper_ = 0x8F;  // nothing above U+10FFFF
        } else {
            failed_ = true;
        }
    }
}

bool is_valid_utf8(std::string_view bytes) {
    Utf8Validator validator;
    validator.feed(bytes);
    return validator.valid();
}

}  // namespace mxhook::webhook
