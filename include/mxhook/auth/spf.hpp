#pragma once
// SPF (RFC 7208) with libspf2, without letting it touch the network.
//
// libspf2 asks its DNS layer synchronously, which would block the event loop. So the
// evaluation is replayed: it runs over the answers known so far, through a DNS layer of
// ours that answers from them and notes every question it could not answer (telling
// libspf2 "try again"). The caller fetches those asynchronously (auth::Checker, with
// c-ares) and evaluates again, until an evaluation needs nothing new. Each evaluation is
// pure CPU, a few microseconds; the rounds are as many as the chain of lookups is long,
// which a resolver walking the record would wait for one after another as well.
//
// Not thread-safe: one evaluator per thread (the io thread has one).

#include "mxhook/auth/verdicts.hpp"
#include "mxhook/dns/resolver.hpp"

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace mxhook::auth {

// A DNS question: the name (lower case, no trailing dot) and the record type.
using Question = std::pair<std::string, dns::RecordType>;
using Answers = std::map<Question, dns::Answer>;

// "Example.COM." -> "example.com"
std::string question_name(std::string_view name);

struct SpfRequest {
    std::string client_ip;  // as text, IPv4 or IPv6
    std::string helo;
    std::string sender;     // bare address; "" for the null sender (the HELO name is checked)
};

struct SpfOutcome {
    SpfVerdict verdict;
    std::vector<Question> missing;  // empty: the verdict is final
};

class SpfEvaluator {
public:
    // receiver: our name, for the %{r} macro. Throws std::runtime_error when libspf2 cannot start.
    explicit SpfEvaluator(const std::string& receiver);
    ~SpfEvaluator();
    SpfEvaluator(const SpfEvaluator&) = delete;
    SpfEvaluator& operator=(const SpfEvaluator&) = delete;

    SpfOutcome evaluate(const SpfRequest& request, const Answers& answers);

private:
    struct Layer;
    Layer* layer_;
    void* server_;  // SPF_server_t
};

}  // namespace mxhook::auth
