#include "mxhook/auth/spf.hpp"

extern "C" {
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <spf2/spf.h>
}

#include <cstdlib>
#include <cstring>
#include <set>
#include <stdexcept>

namespace mxhook::auth {

namespace {

SPF_server_t* server_of(void* p) { return static_cast<SPF_server_t*>(p); }

std::optional<dns::RecordType> record_type(ns_type type) {
    switch (type) {
        case ns_t_a: return dns::RecordType::a;
        case ns_t_aaaa: return dns::RecordType::aaaa;
        case ns_t_txt: return dns::RecordType::txt;
        case ns_t_mx: return dns::RecordType::mx;
        case ns_t_ptr: return dns::RecordType::ptr;
        default: return std::nullopt;
    }
}

// libspf2's results, in RFC 7208's names.
Result result_of(SPF_result_t result) {
    switch (result) {
        case SPF_RESULT_PASS: return Result::pass;
        case SPF_RESULT_FAIL: return Result::fail;
        case SPF_RESULT_SOFTFAIL: return Result::softfail;
        case SPF_RESULT_NEUTRAL: return Result::neutral;
        case SPF_RESULT_TEMPERROR: return Result::temperror;
        case SPF_RESULT_PERMERROR: return Result::permerror;
        case SPF_RESULT_NONE:
        case SPF_RESULT_INVALID: break;
    }
    return Result::none;
}

// A name SPF can be checked for: at least two labels of letters, digits, '-' and '_'
// (an address literal or a bare word in HELO is not one).
bool domain_like(std::string_view name) {
    if (name.empty() || name.size() > 253 || name.find('.') == std::string_view::npos) return false;
    if (name.front() == '.' || name.back() == '.') return false;
    for (char c : name) {
        const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
                        c == '_' || c == '.';
        if (!ok) return false;
    }
    return true;
}

// libspf2's messages are about the records senders publish; they are not ours to log
// louder than debug, and stderr is the daemon's log.
void quiet(const char*, int, const char*) {}

}  // namespace

std::string question_name(std::string_view name) {
    while (!name.empty() && name.back() == '.') name.remove_suffix(1);
    std::string out(name);
    for (char& c : out) {
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    }
    return out;
}

// Our DNS layer under libspf2: answers from the known answers, notes what is missing.
struct SpfEvaluator::Layer {
    SPF_dns_server_t* server = nullptr;  // what libspf2 holds; hook points back here
    const Answers* answers = nullptr;    // during evaluate() only
    std::vector<Question> missing;
    std::set<Question> noted;

    static SPF_dns_rr_t* lookup(SPF_dns_server_t* server, const char* domain, ns_type type, int /*cache*/) {
        auto& self = *static_cast<Layer*>(server->hook);
        const auto kind = record_type(type);
        // RFC 7208 3.1: SPF records are TXT only; type 99 (and anything else) has no data.
        if (!kind || self.answers == nullptr) return SPF_dns_rr_new_init(server, domain, type, 0, NO_DATA);
        const Question question{question_name(domain), *kind};
        const auto it = self.answers->find(question);
        if (it == self.answers->end()) {
            if (self.noted.insert(question).second) self.missing.push_back(question);
            return SPF_dns_rr_new_init(server, domain, type, 0, TRY_AGAIN);
        }
        const dns::Answer& answer = it->second;
        switch (answer.status) {
            case dns::Status::no_data: return SPF_dns_rr_new_init(server, domain, type, 0, NO_DATA);
            case dns::Status::no_domain: return SPF_dns_rr_new_init(server, domain, type, 0, HOST_NOT_FOUND);
            case dns::Status::temp_error: return SPF_dns_rr_new_init(server, domain, type, 0, TRY_AGAIN);
            case dns::Status::ok: break;
        }
        SPF_dns_rr_t* rr = SPF_dns_rr_new_init(server, domain, type, 0, NETDB_SUCCESS);
        if (rr == nullptr) return nullptr;
        int n = 0;
        for (const auto& record : answer.records) {
            if (*kind == dns::RecordType::a || *kind == dns::RecordType::aaaa) {
                const bool v4 = *kind == dns::RecordType::a;
                if (SPF_dns_rr_buf_realloc(rr, n, v4 ? sizeof(in_addr) : sizeof(in6_addr)) != SPF_E_SUCCESS) break;
                void* target = v4 ? static_cast<void*>(&rr->rr[n]->a) : static_cast<void*>(&rr->rr[n]->aaaa);
                if (::inet_pton(v4 ? AF_INET : AF_INET6, record.c_str(), target) != 1) continue;
            } else {
                if (SPF_dns_rr_buf_realloc(rr, n, record.size() + 1) != SPF_E_SUCCESS) break;
                std::memcpy(rr->rr[n]->txt, record.c_str(), record.size() + 1);
            }
            ++n;
        }
        rr->num_rr = n;
        return rr;
    }

    static void destroy(SPF_dns_server_t* server) { std::free(server); }
};

SpfEvaluator::SpfEvaluator(const std::string& receiver) : layer_(new Layer), server_(nullptr) {
    SPF_warning_handler = &quiet;
    SPF_info_handler = &quiet;
    SPF_debug_handler = &quiet;
    auto* dns = static_cast<SPF_dns_server_t*>(std::calloc(1, sizeof(SPF_dns_server_t)));
    if (dns == nullptr) {
        delete layer_;
        throw std::runtime_error("libspf2: out of memory");
    }
    dns->destroy = &Layer::destroy;
    dns->lookup = &Layer::lookup;
    dns->name = "mxhook";
    dns->hook = layer_;
    layer_->server = dns;
    SPF_server_t* server = SPF_server_new_dns(dns, 0);
    if (server == nullptr) {
        std::free(dns);
        delete layer_;
        throw std::runtime_error("libspf2: cannot start an SPF server");
    }
    server_ = server;
    if (!receiver.empty()) SPF_server_set_rec_dom(server, receiver.c_str());
}

SpfEvaluator::~SpfEvaluator() {
    SPF_server_free(server_of(server_));  // leaves a resolver it did not make to its owner
    std::free(layer_->server);
    delete layer_;
}

SpfOutcome SpfEvaluator::evaluate(const SpfRequest& request, const Answers& answers) {
    SpfOutcome outcome;
    // RFC 7208 2.4: for the null sender, the HELO identity is checked as postmaster@helo.
    const bool helo = request.sender.empty();
    const std::string identity = helo ? "postmaster@" + request.helo : request.sender;
    const auto at = identity.rfind('@');
    outcome.verdict.helo = helo;
    outcome.verdict.domain = at == std::string::npos ? std::string() : identity.substr(at + 1);
    if (!domain_like(outcome.verdict.domain)) {
        outcome.verdict.result = Result::none;  // RFC 7208 4.3: not a domain we can check
        return outcome;
    }

    layer_->answers = &answers;
    layer_->missing.clear();
    layer_->noted.clear();
    SPF_request_t* spf = SPF_request_new(server_of(server_));
    SPF_response_t* response = nullptr;
    const bool v6 = request.client_ip.find(':') != std::string::npos;
    const SPF_errcode_t ip_ok = v6 ? SPF_request_set_ipv6_str(spf, request.client_ip.c_str())
                                   : SPF_request_set_ipv4_str(spf, request.client_ip.c_str());
    if (spf == nullptr || ip_ok != SPF_E_SUCCESS) {
        outcome.verdict.result = Result::permerror;
    } else {
        if (domain_like(request.helo)) SPF_request_set_helo_dom(spf, request.helo.c_str());
        if (SPF_request_set_env_from(spf, identity.c_str()) != 0) {
            outcome.verdict.result = Result::none;
        } else {
            const SPF_errcode_t rc = SPF_request_query_mailfrom(spf, &response);
            const SPF_result_t result = response != nullptr ? SPF_response_result(response) : SPF_RESULT_INVALID;
            if (result != SPF_RESULT_INVALID) {
                outcome.verdict.result = result_of(result);
            } else {
                // libspf2 stopped without a result: on a DNS failure (RFC 7208 temperror),
                // or on a record it could not compile (permerror).
                outcome.verdict.result = rc == SPF_E_DNS_ERROR || rc == SPF_E_NO_MEMORY ? Result::temperror
                                                                                       : Result::permerror;
            }
        }
    }
    if (response != nullptr) SPF_response_free(response);
    if (spf != nullptr) SPF_request_free(spf);
    layer_->answers = nullptr;
    outcome.missing = std::move(layer_->missing);
    return outcome;
}

}  // namespace mxhook::auth
