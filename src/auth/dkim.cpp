#include "mxhook/auth/dkim.hpp"

#include "opendkim.h"

#include <cstring>
#include <stdexcept>

namespace mxhook::auth {

namespace {

DKIM* handle_of(void* p) { return static_cast<DKIM*>(p); }

std::string text_of(const unsigned char* text) { return text == nullptr ? std::string() : reinterpret_cast<const char*>(text); }

// The library asks for a signature's key during dkim_eom(): answered from the keys the
// caller fetched beforehand, never from the network.
DKIM_CBSTAT lookup_key(DKIM* dkim, DKIM_SIGINFO* sig, unsigned char* buf, size_t buflen) {
    const auto* message = static_cast<const DkimMessage*>(dkim_get_user_context(dkim));
    const std::string name =
        text_of(dkim_sig_getselector(sig)) + "._domainkey." + text_of(dkim_sig_getdomain(sig));
    const dns::Answer* answer = message == nullptr ? nullptr : message->key(name);
    if (answer == nullptr || answer->status == dns::Status::temp_error) return DKIM_CBSTAT_TRYAGAIN;
    if (answer->status != dns::Status::ok || answer->records.empty()) return DKIM_CBSTAT_NOTFOUND;
    // RFC 6376 3.6.2.2: several records are ambiguous; the first is used, as OpenDKIM does.
    const std::string& record = answer->records.front();
    if (record.size() + 1 > buflen) return DKIM_CBSTAT_ERROR;
    std::memcpy(buf, record.c_str(), record.size() + 1);
    return DKIM_CBSTAT_CONTINUE;
}

std::string reason_of(DKIM_SIGINFO* sig) {
    const char* text = dkim_sig_geterrorstr(dkim_sig_geterror(sig));
    return text == nullptr ? std::string() : std::string(text);
}

DkimVerdict verdict_of(DKIM_SIGINFO* sig) {
    DkimVerdict v;
    v.domain = text_of(dkim_sig_getdomain(sig));
    v.selector = text_of(dkim_sig_getselector(sig));
    if (DKIM_SIG_CHECK(sig)) {
        v.result = Result::pass;
        return v;
    }
    // A body changed on the way: the header signature may still verify (PASSED) or not
    // (BADSIG); either way the body hash says what happened.
    if (dkim_sig_getbh(sig) == DKIM_SIGBH_MISMATCH) {
        v.result = Result::fail;
        v.reason = "body hash mismatch";
        return v;
    }
    switch (dkim_sig_geterror(sig)) {
        case DKIM_SIGERROR_KEYFAIL:
            v.result = Result::temperror;
            v.reason = "key lookup failed";
            return v;
        case DKIM_SIGERROR_BADSIG:
        case DKIM_SIGERROR_EXPIRED:
        case DKIM_SIGERROR_FUTURE:
        case DKIM_SIGERROR_TOOLARGE_L:
            v.result = Result::fail;
            v.reason = reason_of(sig);
            return v;
        case DKIM_SIGERROR_OK:
        case DKIM_SIGERROR_UNKNOWN:
            if (dkim_sig_getbh(sig) == DKIM_SIGBH_MISMATCH) {
                v.result = Result::fail;
                v.reason = "body hash mismatch";
            } else if ((dkim_sig_getflags(sig) & DKIM_SIGFLAG_PROCESSED) == 0) {
                v.result = Result::temperror;
                v.reason = "not verified";
            } else {
                v.result = Result::fail;
                v.reason = "signature mismatch";
            }
            return v;
        default:  // a malformed signature or key, or none published: RFC 6376 PERMFAIL
            v.result = Result::permerror;
            v.reason = reason_of(sig);
            return v;
    }
}

}  // namespace

DkimLibrary::DkimLibrary() : lib_(dkim_init(nullptr, nullptr)) {
    auto* lib = static_cast<DKIM_LIB*>(lib_);
    if (lib == nullptr) throw std::runtime_error("libopendkim: cannot start");
    // Bare LFs are taken as line ends, as the message was stored. DELAYSIGPROC: keys are
    // looked up at dkim_eom(), not when the header section ends (inside feed(), on the
    // pool, before the keys have been fetched).
    unsigned int flags = 0;
    dkim_options(lib, DKIM_OP_GETOPT, DKIM_OPTS_FLAGS, &flags, sizeof flags);
    flags |= DKIM_LIBFLAGS_FIXCRLF | DKIM_LIBFLAGS_DELAYSIGPROC;
    dkim_options(lib, DKIM_OP_SETOPT, DKIM_OPTS_FLAGS, &flags, sizeof flags);
    dkim_set_key_lookup(lib, &lookup_key);
}

DkimLibrary::~DkimLibrary() { dkim_close(static_cast<DKIM_LIB*>(lib_)); }

DkimMessage::DkimMessage(const DkimLibrary& library) {
    DKIM_STAT status = DKIM_STAT_OK;
    dkim_ = dkim_verify(static_cast<DKIM_LIB*>(library.handle()), reinterpret_cast<const unsigned char*>("mxhook"),
                        nullptr, &status);
    if (dkim_ == nullptr) {
        failed_ = true;
        return;
    }
    dkim_set_user_context(handle_of(dkim_), this);
}

DkimMessage::~DkimMessage() {
    if (dkim_ != nullptr) dkim_free(handle_of(dkim_));
}

void DkimMessage::feed(std::string_view bytes) {
    if (failed_ || finished_ || bytes.empty()) return;
    auto* data = reinterpret_cast<unsigned char*>(const_cast<char*>(bytes.data()));  // read only
    const DKIM_STAT status = dkim_chunk(handle_of(dkim_), data, bytes.size());
    // NOSIG: the header section ended without a signature; nothing more to hash.
    if (status != DKIM_STAT_OK) finished_ = true;
}

void DkimMessage::finish_input() {
    if (failed_) return;
    if (!finished_) dkim_chunk(handle_of(dkim_), nullptr, 0);
    finished_ = true;
    DKIM_SIGINFO** sigs = nullptr;
    int count = 0;
    if (dkim_getsiglist(handle_of(dkim_), &sigs, &count) != DKIM_STAT_OK) return;
    for (int i = 0; i < count; ++i) {
        if (static_cast<std::size_t>(i) >= kMaxSignatures) {
            dkim_sig_ignore(sigs[i]);
            continue;
        }
        const std::string domain = text_of(dkim_sig_getdomain(sigs[i]));
        const std::string selector = text_of(dkim_sig_getselector(sigs[i]));
        if (!domain.empty() && !selector.empty()) key_names_.push_back(selector + "._domainkey." + domain);
    }
}

void DkimMessage::set_key(const std::string& name, dns::Answer answer) { keys_[name] = std::move(answer); }

const dns::Answer* DkimMessage::key(const std::string& name) const {
    const auto it = keys_.find(name);
    return it == keys_.end() ? nullptr : &it->second;
}

std::vector<DkimVerdict> DkimMessage::verify() {
    std::vector<DkimVerdict> verdicts;
    if (failed_) return verdicts;
    DKIM* dkim = handle_of(dkim_);
    DKIM_SIGINFO** sigs = nullptr;
    int count = 0;
    if (dkim_getsiglist(dkim, &sigs, &count) != DKIM_STAT_OK || count == 0) return verdicts;
    dkim_eom(dkim, nullptr);  // per-signature outcomes are read below, whatever the overall status
    for (int i = 0; i < count && static_cast<std::size_t>(i) < kMaxSignatures; ++i)
        verdicts.push_back(verdict_of(sigs[i]));
    return verdicts;
}

}  // namespace mxhook::auth
