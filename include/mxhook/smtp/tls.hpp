#pragma once
// The STARTTLS server credentials: an OpenSSL context built from the certificate chain
// and key files, swapped for a new one when the files change on disk (certbot, acme.sh
// and lego renew in place) or on SIGHUP. Sessions take the current context when a
// client says STARTTLS, so a reload affects new handshakes only.

#include <boost/asio/io_context.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <memory>
#include <string>

namespace mxhook::smtp {

// TLS 1.2 and 1.3 only, server cipher preference, no compression, no renegotiation,
// the whole chain served. Throws ConfigError naming SMTP_TLS_CERT_PATH or
// SMTP_TLS_KEY_PATH when a file cannot be used or the key does not match.
std::shared_ptr<boost::asio::ssl::context> make_tls_context(const std::string& cert_path,
                                                           const std::string& key_path);

// "using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)" for a live connection.
std::string describe_tls(const SSL* ssl);

class TlsCredentials {
public:
    // Loads the files at once (throws as make_tls_context).
    TlsCredentials(boost::asio::io_context& io, std::string cert_path, std::string key_path,
                   std::chrono::milliseconds watch_interval);

    std::shared_ptr<boost::asio::ssl::context> current() const { return context_; }

    // Loads the files again; on failure keeps the old context and logs why. Returns
    // whether a new context is in use.
    bool reload();
    // Starts checking the files every watch_interval and reloading when they change.
    void watch();
    void stop();

private:
    std::string fingerprint() const;  // size, mtime and inode of both files

    boost::asio::steady_timer timer_;
    std::string cert_path_;
    std::string key_path_;
    std::chrono::milliseconds watch_interval_;
    std::shared_ptr<boost::asio::ssl::context> context_;
    std::string loaded_fingerprint_;
};

}  // namespace mxhook::smtp
