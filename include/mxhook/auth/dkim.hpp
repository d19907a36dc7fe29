#pragma once
// DKIM verification (RFC 6376) with OpenDKIM's libopendkim, in three steps so that no
// step blocks the event loop on the network:
//   1. on the pool, the message streams through feed() (libopendkim hashes headers and
//      body as they come; nothing is kept but its bounded header copy), then finish_input();
//   2. on the io thread, the caller fetches the keys key_names() lists (c-ares) and gives
//      them with set_key();
//   3. on the pool, verify() checks each signature against its key (RSA or Ed25519).
// A DkimMessage is used by one thread at a time and handed over between the steps.

#include "mxhook/auth/verdicts.hpp"
#include "mxhook/dns/resolver.hpp"

#include <cstddef>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace mxhook::auth {

// The process's libopendkim handle; thread-safe once made.
class DkimLibrary {
public:
    DkimLibrary();  // throws std::runtime_error when the library cannot start
    ~DkimLibrary();
    DkimLibrary(const DkimLibrary&) = delete;
    DkimLibrary& operator=(const DkimLibrary&) = delete;
    void* handle() const { return lib_; }

private:
    void* lib_;  // DKIM_LIB
};

class DkimMessage {
public:
    // Signatures past this many are not verified (each costs a DNS query and a public-key
    // operation, and a sender chooses how many to add).
    static constexpr std::size_t kMaxSignatures = 8;

    explicit DkimMessage(const DkimLibrary& library);
    ~DkimMessage();
    DkimMessage(const DkimMessage&) = delete;
    DkimMessage& operator=(const DkimMessage&) = delete;

    // The message as received (CRLF lines), in pieces of any size.
    void feed(std::string_view bytes);
    void finish_input();

    // "<selector>._domainkey.<domain>" for each signature to verify (at most kMaxSignatures).
    const std::vector<std::string>& key_names() const { return key_names_; }
    void set_key(const std::string& name, dns::Answer answer);

    // One verdict per signature found (empty when the message has none).
    std::vector<DkimVerdict> verify();

    // Used by the library's key lookup.
    const dns::Answer* key(const std::string& name) const;

private:
    void* dkim_ = nullptr;  // DKIM
    bool failed_ = false;   // libopendkim refused the input: every signature is a permerror
    bool finished_ = false;
    std::vector<std::string> key_names_;
    std::map<std::string, dns::Answer> keys_;
};

}  // namespace mxhook::auth
