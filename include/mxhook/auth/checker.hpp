#pragma once
// Sender authentication for one message after its DATA: SPF, DKIM and DMARC, as
// AUTH_CHECKS asks, within AUTH_DNS_TIMEOUT_MS.
//
// Runs on the io thread. Every DNS question goes through dns::Resolver (c-ares on the
// loop); SPF's rounds (auth/spf) run alongside the fetch of DKIM keys and DMARC records;
// the signatures' public-key checks run on the pool. What has no answer when the bound
// passes is a temperror: a DNS failure never refuses mail by itself.

#include "mxhook/auth/dkim.hpp"
#include "mxhook/auth/dmarc.hpp"
#include "mxhook/auth/spf.hpp"
#include "mxhook/auth/verdicts.hpp"
#include "mxhook/dns/resolver.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/thread_pool.hpp>

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace mxhook::auth {

struct Checks {
    bool spf = false, dkim = false, dmarc = false;
    bool any() const { return spf || dkim || dmarc; }
};

class Checker {
public:
    struct Options {
        Checks checks;
        std::string authserv_id;  // SMTP_HOSTNAME
        std::chrono::milliseconds dns_timeout{5000};
        std::filesystem::path public_suffix_list;  // for DMARC
    };

    // What the session knows of the message when its DATA has ended.
    struct Message {
        std::string client_ip;
        std::string helo;
        std::string sender;                    // bare; "" for the null sender
        std::vector<std::string> from_values;  // every From: header's value
        std::unique_ptr<DkimMessage> dkim;     // fed and finished on the pool; null without DKIM
    };

    // Throws std::runtime_error (with the reason) when a library cannot start.
    Checker(dns::Resolver& resolver, boost::asio::thread_pool& pool, Options options);
    ~Checker();

    const Checks& checks() const { return options_.checks; }
    const std::string& authserv_id() const { return options_.authserv_id; }
    // A DKIM verification for one message, or null when DKIM is not checked.
    std::unique_ptr<DkimMessage> start_dkim() const;

    // Never throws for what senders or DNS servers do; `latest` caps the bound (the
    // session's own deadline).
    boost::asio::awaitable<Verdicts> check(Message message, std::chrono::steady_clock::time_point latest);

private:
    boost::asio::awaitable<SpfVerdict> check_spf(const SpfRequest& request, std::chrono::steady_clock::time_point deadline);

    dns::Resolver& resolver_;
    boost::asio::thread_pool& pool_;
    Options options_;
    std::unique_ptr<SpfEvaluator> spf_;
    std::unique_ptr<DkimLibrary> dkim_;
    std::unique_ptr<DmarcLibrary> dmarc_;
};

}  // namespace mxhook::auth
