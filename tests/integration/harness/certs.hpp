#pragma once
// Test certificates made with OpenSSL's API at run time: EC P-256 keys, self-signed
// certificates and small CA chains, written as PEM. Nothing is committed to the repository.

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace itest {

// A key and its certificate, both as PEM text.
struct CertKey {
    std::string cert_pem;
    std::string key_pem;
    std::string common_name;
};

// A self-signed certificate for `common_name` (also its DNS subjectAltName), valid from an
// hour ago for a year.
CertKey make_self_signed(const std::string& common_name);

// A root CA, an intermediate CA signed by it, and a leaf for `leaf_name` signed by the
// intermediate. `leaf.cert_pem` holds the leaf only; `fullchain_pem` is leaf then
// intermediate, as certbot's fullchain.pem.
struct CertChain {
    CertKey root;
    CertKey intermediate;
    CertKey leaf;
    std::string fullchain_pem;
};
CertChain make_chain(const std::string& leaf_name);

// Writes the pair as certbot renews: each file to a temporary name in the same directory,
// then rename(2) over the final path, the certificate first. Each file is replaced
// atomically; between the two renames the pair on disk does not match.
void install_pair(const std::filesystem::path& cert_path, const std::filesystem::path& key_path,
                  const std::string& cert_pem, const std::string& key_pem);
// Replaces one file atomically (temporary file + rename).
void replace_file_atomically(const std::filesystem::path& path, const std::string& bytes);

// The subject common name of a PEM or DER certificate; "" when it cannot be read.
std::string common_name_of_pem(const std::string& pem);

}  // namespace itest
