#include "mxhook/smtp/tls.hpp"

#include "mxhook/config.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

namespace mxhook::smtp {
namespace ssl = boost::asio::ssl;

namespace {

std::string openssl_error() {
    const unsigned long code = ERR_get_error();
    ERR_clear_error();
    if (code == 0) return "unknown OpenSSL error";
    char text[256];
    ERR_error_string_n(code, text, sizeof text);
    return text;
}

std::string stat_text(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return "missing";
    return std::to_string(st.st_size) + ':' + std::to_string(st.st_mtim.tv_sec) + '.' +
           std::to_string(st.st_mtim.tv_nsec) + ':' + std::to_string(st.st_ino);
}

}  // namespace

std::shared_ptr<ssl::context> make_tls_context(const std::string& cert_path, const std::string& key_path) {
    auto context = std::make_shared<ssl::context>(ssl::context::tls_server);
    SSL_CTX* ctx = context->native_handle();
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_NO_SSLv2 | SSL_OP_NO_SSLv3 | SSL_OP_NO_TLSv1 | SSL_OP_NO_TLSv1_1);
    // No session tickets or cache to manage across reloads: SMTP sessions are long and few.
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(ctx, 0);
    ERR_clear_error();
    // The whole chain (fullchain.pem), so clients that check can build the path.
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_path.c_str()) != 1) {
        throw ConfigError("SMTP_TLS_CERT_PATH: cannot load a PEM certificate chain from \"" + cert_path +
                          "\": " + openssl_error());
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_path.c_str(), SSL_FILETYPE_PEM) != 1) {
        // OpenSSL already compares the key with the certificate here; say so plainly.
        if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH) {
            ERR_clear_error();
            throw ConfigError("SMTP_TLS_KEY_PATH: the key in \"" + key_path +
                              "\" does not match the certificate in SMTP_TLS_CERT_PATH");
        }
        throw ConfigError("SMTP_TLS_KEY_PATH: cannot load a PEM private key from \"" + key_path +
                          "\": " + openssl_error());
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        throw ConfigError("SMTP_TLS_KEY_PATH: the key does not match the certificate in SMTP_TLS_CERT_PATH (" +
                          openssl_error() + ")");
    }
    return context;
}

std::string describe_tls(const SSL* ssl) {
    const SSL_CIPHER* cipher = SSL_get_current_cipher(ssl);
    if (cipher == nullptr) return {};
    int alg_bits = 0;
    const int bits = SSL_CIPHER_get_bits(cipher, &alg_bits);
    return std::string("using ") + SSL_get_version(ssl) + " with cipher " + SSL_CIPHER_get_name(cipher) + " (" +
           std::to_string(bits) + '/' + std::to_string(alg_bits) + " bits)";
}

TlsCredentials::TlsCredentials(boost::asio::io_context& io, std::string cert_path, std::string key_path,
                               std::chrono::milliseconds watch_interval)
    : timer_(io),
      cert_path_(std::move(cert_path)),
      key_path_(std::move(key_path)),
      watch_interval_(watch_interval) {
    loaded_fingerprint_ = fingerprint();
    context_ = make_tls_context(cert_path_, key_path_);
}

std::string TlsCredentials::fingerprint() const { return stat_text(cert_path_) + '|' + stat_text(key_path_); }

bool TlsCredentials::reload() {
    // Small files, read once per renewal: not worth a trip to the worker pool.
    const std::string seen = fingerprint();
    try {
        context_ = make_tls_context(cert_path_, key_path_);
        loaded_fingerprint_ = seen;
        spdlog::info("tls: certificate reloaded from {}", cert_path_);
        return true;
    } catch (const std::exception& e) {
        // Keep serving with the pair we have; a half-written renewal is retried next time.
        loaded_fingerprint_ = seen;
        spdlog::error("tls: reload failed, keeping the previous certificate: {}", e.what());
        return false;
    }
}

void TlsCredentials::watch() {
    timer_.expires_after(watch_interval_);
    timer_.async_wait([this](const boost::system::error_code& ec) {
        if (ec) return;
        if (fingerprint() != loaded_fingerprint_) reload();
        watch();
    });
}

void TlsCredentials::stop() { timer_.cancel(); }

}  // namespace mxhook::smtp
