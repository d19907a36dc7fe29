#pragma once
// TlsSmtpClient: a blocking SMTP client that can upgrade its connection with STARTTLS,
// written on raw OpenSSL over the connected socket. Every read is bounded by the timeout
// given at construction (SO_RCVTIMEO / SO_SNDTIMEO apply inside TLS too); failures are
// reported in Reply::error or handshake_error(), never by throwing or hanging.

#include "harness/smtp_client.hpp"

#include <chrono>
#include <string>
#include <string_view>
#include <vector>

struct ssl_st;
struct ssl_ctx_st;

namespace itest {

struct TlsOptions {
    int min_version = 0;        // e.g. TLS1_2_VERSION; 0: OpenSSL's default
    int max_version = 0;        // e.g. TLS1_2_VERSION; 0: OpenSSL's default
    int security_level = -1;    // SSL_CTX_set_security_level; -1: OpenSSL's default
    std::string server_name = "mx.test";  // SNI, and the name checked when trust_pem is set
    std::string trust_pem;      // when set: verify the server's chain against this root
    std::string cipher_list;    // TLS 1.2 ciphers offered, in the client's order; "": default
};

class TlsSmtpClient {
public:
    explicit TlsSmtpClient(unsigned short port, std::chrono::milliseconds timeout = std::chrono::seconds(10));
    ~TlsSmtpClient();
    TlsSmtpClient(const TlsSmtpClient&) = delete;
    TlsSmtpClient& operator=(const TlsSmtpClient&) = delete;

    bool connected() const { return fd_ >= 0; }
    const std::string& connect_error() const { return connect_error_; }

    Reply read_reply();
    bool send_raw(std::string_view bytes);   // in clear before the handshake, inside TLS after
    Reply cmd(std::string_view line);
    Reply greeting() { return read_reply(); }
    Reply ehlo(std::string_view name = "client.test") { return cmd("EHLO " + std::string(name)); }
    Reply send_message(std::string_view from, const std::vector<std::string>& recipients, std::string_view message);

    // Sends STARTTLS, expects 220, then handshakes. False with the reason in
    // handshake_error() (the STARTTLS reply is in starttls_reply()).
    bool starttls(const TlsOptions& options = {});
    // The TLS handshake alone, for a test that sent STARTTLS and read the 220 itself.
    bool handshake(const TlsOptions& options = {});

    // Asks for a renegotiation (TLS 1.2) and drives it to the end; true when the server
    // went through with it, false (reason in handshake_error()) when it refused.
    bool renegotiate();

    bool tls_active() const { return ssl_ != nullptr && handshake_done_; }
    const std::string& handshake_error() const { return handshake_error_; }
    const Reply& starttls_reply() const { return starttls_reply_; }
    // Bytes the server sent in clear after its 220 and before the handshake (should be none).
    std::size_t buffered_before_handshake() const { return buffered_before_handshake_; }

    std::string protocol() const;          // "TLSv1.3"
    std::string cipher() const;            // "TLS_AES_256_GCM_SHA384"
    std::string peer_common_name() const;  // subject CN of the server's certificate
    int peer_chain_length() const;         // certificates the server sent (leaf included)
    long verify_result() const;            // X509_V_OK when trust_pem verified the chain

    // True when the server closes the connection (EOF, reset, TLS close) within the timeout.
    bool wait_closed();
    void close();

private:
    bool read_line(std::string& line, std::string& error);
    long receive(char* buf, std::size_t size, std::string& error);  // >0 bytes, 0 closed, <0 error

    int fd_ = -1;
    ssl_ctx_st* ctx_ = nullptr;
    ssl_st* ssl_ = nullptr;
    bool handshake_done_ = false;
    std::string connect_error_;
    std::string handshake_error_;
    Reply starttls_reply_;
    std::size_t buffered_before_handshake_ = 0;
    std::string buffer_;
};

}  // namespace itest
