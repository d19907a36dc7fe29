#pragma once
// DKIM for tests: an RSA key pair made on the spot (OpenSSL 3), its DNS TXT record, and
// messages signed with it by libopendkim, so that tests of DKIM verification check mail
// signed the way real senders sign it. Header-only; link OpenSSL::Crypto and opendkim.

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

// dkim.h is C and uses _Bool, which C++ lacks (g++ defines it in <stdbool.h> as an
// extension; clang does not in strict modes such as -std=c++20). Same type: bool.
#ifndef _Bool
#define _Bool bool
#define TESTSUPPORT_DEFINED_BOOL
#endif
#include <opendkim/dkim.h>
#ifdef TESTSUPPORT_DEFINED_BOOL
#undef _Bool
#undef TESTSUPPORT_DEFINED_BOOL
#endif

#include <memory>
#include <stdexcept>
#include <string>

namespace testsupport {

struct DkimKey {
    std::string private_pem;  // PKCS#8 PEM, what dkim_sign takes
    std::string public_txt;   // the TXT record at <selector>._domainkey.<domain>
};

namespace dkim_detail {

template <auto Free>
struct Deleter {
    template <typename T>
    void operator()(T* p) const { Free(p); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY_free>>;
using PkeyCtxPtr = std::unique_ptr<EVP_PKEY_CTX, Deleter<EVP_PKEY_CTX_free>>;
using BioPtr = std::unique_ptr<BIO, Deleter<BIO_free>>;
using DkimLibPtr = std::unique_ptr<DKIM_LIB, Deleter<dkim_close>>;
using DkimPtr = std::unique_ptr<DKIM, Deleter<dkim_free>>;

inline PkeyPtr generate_rsa(int bits) {
    PkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(nullptr, "RSA", nullptr));
    EVP_PKEY* key = nullptr;
    if (!ctx || EVP_PKEY_keygen_init(ctx.get()) <= 0 ||
        EVP_PKEY_CTX_set_rsa_keygen_bits(ctx.get(), bits) <= 0 || EVP_PKEY_generate(ctx.get(), &key) <= 0)
        throw std::runtime_error("generate_dkim_key: RSA key generation failed");
    return PkeyPtr(key);
}

inline std::string private_pem(EVP_PKEY* key) {
    BioPtr bio(BIO_new(BIO_s_mem()));
    if (!bio || PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1)
        throw std::runtime_error("generate_dkim_key: PEM encoding failed");
    char* data = nullptr;
    const long len = BIO_get_mem_data(bio.get(), &data);
    return std::string(data, static_cast<std::size_t>(len));
}

// Base64 of the DER SubjectPublicKeyInfo: the p= tag (RFC 6376 3.6.1).
inline std::string public_key_base64(EVP_PKEY* key) {
    unsigned char* der = nullptr;
    const int der_len = i2d_PUBKEY(key, &der);
    if (der_len <= 0) throw std::runtime_error("generate_dkim_key: DER encoding failed");
    std::string b64(4 * ((static_cast<std::size_t>(der_len) + 2) / 3) + 1, '\0');
    const int b64_len = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(b64.data()), der, der_len);
    OPENSSL_free(der);
    b64.resize(static_cast<std::size_t>(b64_len));
    return b64;
}

// libopendkim wants CRLF line ends (what SMTP carries); tests write "\n".
inline std::string to_crlf(const std::string& text) {
    std::string out;
    out.reserve(text.size() + text.size() / 32);
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] == '\n' && (i == 0 || text[i - 1] != '\r')) out += '\r';
        out += text[i];
    }
    return out;
}

inline void check(DKIM_STAT status, DKIM* dkim, const char* step) {
    if (status == DKIM_STAT_OK) return;
    const char* error = dkim ? dkim_geterror(dkim) : nullptr;
    throw std::runtime_error(std::string("dkim_sign: ") + step + ": " +
                             (error && *error ? error : dkim_getresultstr(status)));
}

}  // namespace dkim_detail

// A fresh RSA key of `bits` bits (1024 is the least verifiers accept).
inline DkimKey generate_dkim_key(int bits = 2048) {
    const auto key = dkim_detail::generate_rsa(bits);
    return {dkim_detail::private_pem(key.get()), "v=DKIM1; k=rsa; p=" + dkim_detail::public_key_base64(key.get())};
}

// `message` (headers, blank line, body; LF or CRLF line ends) with CRLF line ends and a
// DKIM-Signature header on top: rsa-sha256, relaxed/relaxed, d=`domain`, s=`selector`,
// the headers libopendkim signs by default (all of them).
inline std::string dkim_sign(const std::string& message, const DkimKey& key, const std::string& domain,
                             const std::string& selector) {
    using namespace dkim_detail;
    const std::string crlf = to_crlf(message);
    DkimLibPtr lib(dkim_init(nullptr, nullptr));
    if (!lib) throw std::runtime_error("dkim_sign: dkim_init failed");
    DKIM_STAT status = DKIM_STAT_OK;
    // libopendkim's signatures want non-const buffers it does not write to.
    DkimPtr dkim(::dkim_sign(lib.get(), reinterpret_cast<const unsigned char*>("testsupport"), nullptr,
                             reinterpret_cast<dkim_sigkey_t>(const_cast<char*>(key.private_pem.c_str())),
                             reinterpret_cast<const unsigned char*>(selector.c_str()),
                             reinterpret_cast<const unsigned char*>(domain.c_str()), DKIM_CANON_RELAXED,
                             DKIM_CANON_RELAXED, DKIM_SIGN_RSASHA256, -1, &status));
    if (!dkim) check(status == DKIM_STAT_OK ? DKIM_STAT_INTERNAL : status, nullptr, "dkim_sign");
    auto* data = reinterpret_cast<unsigned char*>(const_cast<char*>(crlf.data()));
    check(dkim_chunk(dkim.get(), data, crlf.size()), dkim.get(), "dkim_chunk");
    check(dkim_chunk(dkim.get(), nullptr, 0), dkim.get(), "dkim_chunk (end)");
    check(dkim_eom(dkim.get(), nullptr), dkim.get(), "dkim_eom");
    const std::string name = "DKIM-Signature: ";
    unsigned char* value = nullptr;
    std::size_t value_len = 0;
    check(dkim_getsighdr_d(dkim.get(), name.size(), &value, &value_len), dkim.get(), "dkim_getsighdr_d");
    // The value comes folded; its line breaks become CRLF like the rest of the message.
    return name + to_crlf(std::string(reinterpret_cast<const char*>(value), value_len)) + "\r\n" + crlf;
}

}  // namespace testsupport
