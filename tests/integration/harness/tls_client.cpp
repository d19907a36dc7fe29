#include "harness/files.hpp"
#include "harness/tls_client.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>

namespace itest {
namespace {

std::string openssl_errors() {
    std::string out;
    while (const unsigned long code = ERR_get_error()) {
        char text[256];
        ERR_error_string_n(code, text, sizeof text);
        if (!out.empty()) out += "; ";
        out += text;
    }
    return out;
}

constexpr const char* kClosed = "connection closed by server";

}  // namespace

TlsSmtpClient::TlsSmtpClient(unsigned short port, std::chrono::milliseconds timeout) {
    fd_ = connect_loopback(port, timeout, connect_error_);
}

TlsSmtpClient::~TlsSmtpClient() { close(); }

void TlsSmtpClient::close() {
    if (ssl_ != nullptr) {
        SSL_free(ssl_);
        ssl_ = nullptr;
    }
    if (ctx_ != nullptr) {
        SSL_CTX_free(ctx_);
        ctx_ = nullptr;
    }
    handshake_done_ = false;
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    ERR_clear_error();
}

long TlsSmtpClient::receive(char* buf, std::size_t size, std::string& error) {
    if (fd_ < 0) {
        error = "not connected";
        return -1;
    }
    if (ssl_ == nullptr) {
        while (true) {
            const ssize_t n = ::recv(fd_, buf, size, 0);
            if (n > 0) return static_cast<long>(n);
            if (n == 0) {
                error = kClosed;
                return 0;
            }
            if (errno == EINTR) continue;
            error = (errno == EAGAIN || errno == EWOULDBLOCK) ? "timeout waiting for a reply"
                                                             : std::string("recv: ") + std::strerror(errno);
            return errno == ECONNRESET ? 0 : -1;
        }
    }
    errno = 0;
    const int n = SSL_read(ssl_, buf, static_cast<int>(size));
    if (n > 0) return n;
    const int err = SSL_get_error(ssl_, n);
    const int sys = errno;
    const std::string detail = openssl_errors();
    if (err == SSL_ERROR_ZERO_RETURN || (err == SSL_ERROR_SYSCALL && (sys == 0 || sys == ECONNRESET))) {
        error = kClosed;
        return 0;
    }
    if (sys == EAGAIN || sys == EWOULDBLOCK || err == SSL_ERROR_WANT_READ) {
        error = "timeout waiting for a reply (TLS)";
        return -1;
    }
    error = "SSL_read error " + std::to_string(err) + (sys ? std::string(" ") + std::strerror(sys) : "") +
            (detail.empty() ? "" : ": " + detail);
    // A TLS alert or a protocol error from the server ends the connection as well.
    return err == SSL_ERROR_SSL ? 0 : -1;
}

bool TlsSmtpClient::read_line(std::string& line, std::string& error) {
    while (true) {
        const auto eol = buffer_.find("\r\n");
        if (eol != std::string::npos) {
            line = buffer_.substr(0, eol);
            buffer_.erase(0, eol + 2);
            return true;
        }
        char chunk[4096];
        const long n = receive(chunk, sizeof chunk, error);
        if (n <= 0) return false;
        buffer_.append(chunk, static_cast<std::size_t>(n));
    }
}

Reply TlsSmtpClient::read_reply() {
    Reply reply;
    std::string line;
    while (true) {
        std::string error;
        if (!read_line(line, error)) {
            reply.code = error == kClosed ? 0 : -1;
            reply.error = error + (reply.lines.empty() ? "" : " (after a partial reply)");
            return reply;
        }
        if (line.size() < 3 || !std::isdigit(static_cast<unsigned char>(line[0])) ||
            !std::isdigit(static_cast<unsigned char>(line[1])) || !std::isdigit(static_cast<unsigned char>(line[2])) ||
            (line.size() > 3 && line[3] != ' ' && line[3] != '-')) {
            reply.code = -1;
            reply.error = "malformed reply line: " + line;
            return reply;
        }
        reply.code = std::stoi(line.substr(0, 3));
        reply.lines.push_back(line.size() > 4 ? line.substr(4) : std::string());
        if (line.size() == 3 || line[3] == ' ') return reply;
    }
}

bool TlsSmtpClient::send_raw(std::string_view bytes) {
    if (fd_ < 0) return false;
    if (ssl_ != nullptr) {
        std::size_t sent = 0;
        while (sent < bytes.size()) {
            const int n = SSL_write(ssl_, bytes.data() + sent, static_cast<int>(bytes.size() - sent));
            if (n <= 0) {
                ERR_clear_error();
                return false;
            }
            sent += static_cast<std::size_t>(n);
        }
        return true;
    }
    std::size_t sent = 0;
    while (sent < bytes.size()) {
        const ssize_t n = ::send(fd_, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        sent += static_cast<std::size_t>(n);
    }
    return true;
}

Reply TlsSmtpClient::cmd(std::string_view line) {
    if (!send_raw(std::string(line) + "\r\n")) {
        Reply reply;
        reply.error = "send failed";
        return reply;
    }
    return read_reply();
}

Reply TlsSmtpClient::send_message(std::string_view from, const std::vector<std::string>& recipients,
                                  std::string_view message) {
    Reply reply = cmd("MAIL FROM:<" + std::string(from) + ">");
    if (reply.code != 250) return reply;
    for (const auto& rcpt : recipients) {
        reply = cmd("RCPT TO:<" + rcpt + ">");
        if (reply.code != 250) return reply;
    }
    reply = cmd("DATA");
    if (reply.code != 354) return reply;
    if (!send_raw(encode_data(message))) {
        reply = Reply{};
        reply.error = "send of DATA failed";
        return reply;
    }
    return read_reply();
}

bool TlsSmtpClient::starttls(const TlsOptions& options) {
    starttls_reply_ = cmd("STARTTLS");
    if (starttls_reply_.code != 220) {
        handshake_error_ = "STARTTLS answered " + starttls_reply_.text();
        return false;
    }
    return handshake(options);
}

bool TlsSmtpClient::handshake(const TlsOptions& options) {
    if (fd_ < 0) {
        handshake_error_ = "not connected";
        return false;
    }
    buffered_before_handshake_ = buffer_.size();
    buffer_.clear();
    ERR_clear_error();
    ctx_ = SSL_CTX_new(TLS_client_method());
    if (ctx_ == nullptr) {
        handshake_error_ = "SSL_CTX_new: " + openssl_errors();
        return false;
    }
    if (options.security_level >= 0) SSL_CTX_set_security_level(ctx_, options.security_level);
    if (options.min_version != 0 && SSL_CTX_set_min_proto_version(ctx_, options.min_version) != 1) {
        handshake_error_ = "set_min_proto_version: " + openssl_errors();
        return false;
    }
    if (options.max_version != 0 && SSL_CTX_set_max_proto_version(ctx_, options.max_version) != 1) {
        handshake_error_ = "set_max_proto_version: " + openssl_errors();
        return false;
    }
    if (!options.cipher_list.empty() && SSL_CTX_set_cipher_list(ctx_, options.cipher_list.c_str()) != 1) {
        handshake_error_ = "set_cipher_list: " + openssl_errors();
        return false;
    }
    if (!options.trust_pem.empty()) {
        BIO* bio = BIO_new_mem_buf(options.trust_pem.data(), static_cast<int>(options.trust_pem.size()));
        X509* root = bio ? PEM_read_bio_X509(bio, nullptr, nullptr, nullptr) : nullptr;
        BIO_free(bio);
        if (root == nullptr || X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx_), root) != 1) {
            X509_free(root);
            handshake_error_ = "cannot use trust_pem: " + openssl_errors();
            return false;
        }
        X509_free(root);
        SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER, nullptr);
    } else {
        SSL_CTX_set_verify(ctx_, SSL_VERIFY_NONE, nullptr);
    }
    ssl_ = SSL_new(ctx_);
    if (ssl_ == nullptr || SSL_set_fd(ssl_, fd_) != 1) {
        handshake_error_ = "SSL_new/SSL_set_fd: " + openssl_errors();
        return false;
    }
    if (!options.server_name.empty()) {
        SSL_set_tlsext_host_name(ssl_, options.server_name.c_str());
        if (!options.trust_pem.empty()) SSL_set1_host(ssl_, options.server_name.c_str());
    }
    errno = 0;
    const int r = SSL_connect(ssl_);
    if (r != 1) {
        const int err = SSL_get_error(ssl_, r);
        const int sys = errno;
        handshake_error_ = "SSL_connect failed (error " + std::to_string(err) +
                           (sys ? std::string(", ") + std::strerror(sys) : "") + "): " + openssl_errors();
        if (!options.trust_pem.empty() && SSL_get_verify_result(ssl_) != X509_V_OK) {
            handshake_error_ += std::string("; verify: ") +
                                X509_verify_cert_error_string(SSL_get_verify_result(ssl_));
        }
        return false;
    }
    handshake_done_ = true;
    return true;
}

bool TlsSmtpClient::renegotiate() {
    if (!tls_active()) {
        handshake_error_ = "no TLS session";
        return false;
    }
    ERR_clear_error();
    if (SSL_renegotiate(ssl_) != 1) {
        handshake_error_ = "SSL_renegotiate: " + openssl_errors();
        return false;
    }
    // The new handshake runs on this blocking socket (reads bounded by SO_RCVTIMEO).
    const int r = SSL_do_handshake(ssl_);
    if (r != 1) {
        handshake_error_ = "renegotiation failed (error " + std::to_string(SSL_get_error(ssl_, r)) +
                           "): " + openssl_errors();
        return false;
    }
    if (SSL_renegotiate_pending(ssl_) == 1) {
        handshake_error_ = "renegotiation still pending after the handshake";
        return false;
    }
    return true;
}

std::string TlsSmtpClient::protocol() const { return ssl_ ? SSL_get_version(ssl_) : ""; }

std::string TlsSmtpClient::cipher() const {
    if (ssl_ == nullptr) return {};
    const SSL_CIPHER* c = SSL_get_current_cipher(ssl_);
    return c ? SSL_CIPHER_get_name(c) : "";
}

std::string TlsSmtpClient::peer_common_name() const {
    if (!tls_active()) return {};
    X509* cert = SSL_get1_peer_certificate(ssl_);
    if (cert == nullptr) return {};
    char name[256] = "";
    const int n = X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, name, sizeof name);
    X509_free(cert);
    return n < 0 ? std::string() : std::string(name);
}

int TlsSmtpClient::peer_chain_length() const {
    if (!tls_active()) return 0;
    STACK_OF(X509)* chain = SSL_get_peer_cert_chain(ssl_);
    return chain ? sk_X509_num(chain) : 0;
}

long TlsSmtpClient::verify_result() const { return ssl_ ? SSL_get_verify_result(ssl_) : -1; }

bool TlsSmtpClient::wait_closed() {
    while (fd_ >= 0) {
        char chunk[4096];
        std::string error;
        const long n = receive(chunk, sizeof chunk, error);
        if (n == 0) return true;
        if (n < 0) return false;
    }
    return true;
}

}  // namespace itest
