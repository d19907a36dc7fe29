#include "harness/certs.hpp"

#include "harness/files.hpp"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <atomic>
#include <cstdio>
#include <stdexcept>

namespace itest {
namespace {

struct PkeyFree {
    void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct X509Free {
    void operator()(X509* p) const { X509_free(p); }
};
struct BioFree {
    void operator()(BIO* p) const { BIO_free(p); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;
using X509Ptr = std::unique_ptr<X509, X509Free>;
using BioPtr = std::unique_ptr<BIO, BioFree>;

[[noreturn]] void fail(const std::string& what) {
    char text[256] = "no OpenSSL error";
    const unsigned long code = ERR_get_error();
    if (code != 0) ERR_error_string_n(code, text, sizeof text);
    ERR_clear_error();
    throw std::runtime_error("certs: " + what + ": " + text);
}

PkeyPtr new_key() {
    PkeyPtr key(EVP_EC_gen("P-256"));
    if (!key) fail("EC P-256 key generation");
    return key;
}

std::string bio_text(BIO* bio) {
    char* data = nullptr;
    const long size = BIO_get_mem_data(bio, &data);
    return size > 0 ? std::string(data, static_cast<std::size_t>(size)) : std::string();
}

std::string key_pem(EVP_PKEY* key) {
    BioPtr bio(BIO_new(BIO_s_mem()));
    if (!bio || PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
        fail("PEM_write_bio_PrivateKey");
    }
    return bio_text(bio.get());
}

std::string cert_pem(X509* cert) {
    BioPtr bio(BIO_new(BIO_s_mem()));
    if (!bio || PEM_write_bio_X509(bio.get(), cert) != 1) fail("PEM_write_bio_X509");
    return bio_text(bio.get());
}

void add_extension(X509* cert, X509* issuer, int nid, const std::string& value) {
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
    if (ext == nullptr) fail("extension " + value);
    const int ok = X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
    if (ok != 1) fail("X509_add_ext");
}

// A certificate for `subject_key` named `name`, signed by `issuer_key` (issuer_cert null:
// self-signed).
X509Ptr make_cert(const std::string& name, EVP_PKEY* subject_key, EVP_PKEY* issuer_key, X509* issuer_cert,
                  bool is_ca) {
    static std::atomic<long> serial{1};
    X509Ptr cert(X509_new());
    if (!cert) fail("X509_new");
    X509_set_version(cert.get(), 2);  // v3
    ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), serial++);
    X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
    X509_gmtime_adj(X509_getm_notAfter(cert.get()), 365L * 24 * 3600);
    X509_NAME* subject = X509_get_subject_name(cert.get());
    X509_NAME_add_entry_by_txt(subject, "O", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("mxhook tests"),
                               -1, -1, 0);
    X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(name.c_str()),
                               -1, -1, 0);
    X509_set_issuer_name(cert.get(), issuer_cert ? X509_get_subject_name(issuer_cert) : subject);
    if (X509_set_pubkey(cert.get(), subject_key) != 1) fail("X509_set_pubkey");
    X509* issuer = issuer_cert ? issuer_cert : cert.get();
    add_extension(cert.get(), issuer, NID_subject_key_identifier, "hash");
    add_extension(cert.get(), issuer, NID_authority_key_identifier, "keyid:always");
    if (is_ca) {
        add_extension(cert.get(), issuer, NID_basic_constraints, "critical,CA:TRUE");
        add_extension(cert.get(), issuer, NID_key_usage, "critical,keyCertSign,cRLSign");
    } else {
        add_extension(cert.get(), issuer, NID_basic_constraints, "critical,CA:FALSE");
        add_extension(cert.get(), issuer, NID_key_usage, "critical,digitalSignature");
        add_extension(cert.get(), issuer, NID_ext_key_usage, "serverAuth");
        add_extension(cert.get(), issuer, NID_subject_alt_name, "DNS:" + name);
    }
    if (X509_sign(cert.get(), issuer_key, EVP_sha256()) == 0) fail("X509_sign");
    return cert;
}

}  // namespace

CertKey make_self_signed(const std::string& common_name) {
    PkeyPtr key = new_key();
    X509Ptr cert = make_cert(common_name, key.get(), key.get(), nullptr, false);
    return {cert_pem(cert.get()), key_pem(key.get()), common_name};
}

CertChain make_chain(const std::string& leaf_name) {
    PkeyPtr root_key = new_key();
    X509Ptr root = make_cert("mxhook test root CA", root_key.get(), root_key.get(), nullptr, true);
    PkeyPtr mid_key = new_key();
    X509Ptr mid = make_cert("mxhook test intermediate CA", mid_key.get(), root_key.get(), root.get(), true);
    PkeyPtr leaf_key = new_key();
    X509Ptr leaf = make_cert(leaf_name, leaf_key.get(), mid_key.get(), mid.get(), false);
    CertChain chain;
    chain.root = {cert_pem(root.get()), key_pem(root_key.get()), "mxhook test root CA"};
    chain.intermediate = {cert_pem(mid.get()), key_pem(mid_key.get()), "mxhook test intermediate CA"};
    chain.leaf = {cert_pem(leaf.get()), key_pem(leaf_key.get()), leaf_name};
    chain.fullchain_pem = chain.leaf.cert_pem + chain.intermediate.cert_pem;
    return chain;
}

void replace_file_atomically(const std::filesystem::path& path, const std::string& bytes) {
    static std::atomic<int> counter{0};
    // Appended piece by piece: g++ 12 warns falsely (-Wrestrict, GCC bug 105329) on "x" + string.
    std::string name = ".";
    name += path.filename().string();
    name += ".tmp";
    name += std::to_string(counter++);
    const auto temp = path.parent_path() / name;
    write_file(temp, bytes);
    std::filesystem::rename(temp, path);
}

void install_pair(const std::filesystem::path& cert_path, const std::filesystem::path& key_path,
                  const std::string& cert_pem_text, const std::string& key_pem_text) {
    replace_file_atomically(cert_path, cert_pem_text);
    replace_file_atomically(key_path, key_pem_text);
}

std::string common_name_of_pem(const std::string& pem) {
    BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
    if (!bio) return {};
    X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (!cert) {
        ERR_clear_error();
        return {};
    }
    char name[256] = "";
    if (X509_NAME_get_text_by_NID(X509_get_subject_name(cert.get()), NID_commonName, name, sizeof name) < 0) {
        return {};
    }
    return name;
}

}  // namespace itest
