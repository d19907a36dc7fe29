#include "mxhook/auth/checker.hpp"

#include "mxhook/blocking.hpp"

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <set>

namespace mxhook::auth {
namespace asio = boost::asio;
using asio::awaitable;
using Clock = std::chrono::steady_clock;

namespace {

// SPF's rounds: one per step of the longest chain of lookups a record makes; RFC 7208
// 4.6.4 caps a check at 10 lookups (and 10 names per mx/ptr), so a record needing more
// rounds is broken or hostile.
constexpr int kMaxSpfRounds = 32;

// Asks every question at once and returns when each has its answer or `deadline` passes;
// a question left unanswered then is a temporary error.
awaitable<Answers> fetch(dns::Resolver& resolver, std::vector<Question> questions, Clock::time_point deadline) {
    std::sort(questions.begin(), questions.end());
    questions.erase(std::unique(questions.begin(), questions.end()), questions.end());
    Answers answers;
    if (questions.empty()) co_return answers;
    struct Wait {
        explicit Wait(asio::any_io_executor executor, Clock::time_point deadline, std::size_t left)
            : timer(std::move(executor), deadline), left(left) {}
        asio::steady_timer timer;
        std::size_t left;
        Answers answers;
        bool over = false;
    };
    auto wait = std::make_shared<Wait>(co_await asio::this_coro::executor, deadline, questions.size());
    for (const auto& question : questions) {
        // Answers are posted to this thread: none can arrive before the wait below starts.
        resolver.query(question.first, question.second, [wait, question](dns::Answer answer) {
            if (wait->over) return;
            wait->answers[question] = std::move(answer);
            if (--wait->left == 0) wait->timer.cancel();
        });
    }
    boost::system::error_code ec;
    co_await wait->timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    wait->over = true;
    answers = std::move(wait->answers);
    for (const auto& question : questions) answers.try_emplace(question, dns::Answer{dns::Status::temp_error, {}});
    co_return answers;
}

}  // namespace

Checker::Checker(dns::Resolver& resolver, asio::thread_pool& pool, Options options)
    : resolver_(resolver), pool_(pool), options_(std::move(options)) {
    if (options_.checks.spf) spf_ = std::make_unique<SpfEvaluator>(options_.authserv_id);
    if (options_.checks.dkim) dkim_ = std::make_unique<DkimLibrary>();
    if (options_.checks.dmarc) dmarc_ = std::make_unique<DmarcLibrary>(options_.public_suffix_list);
}

Checker::~Checker() = default;

std::unique_ptr<DkimMessage> Checker::start_dkim() const {
    return dkim_ ? std::make_unique<DkimMessage>(*dkim_) : nullptr;
}

awaitable<SpfVerdict> Checker::check_spf(const SpfRequest& request, Clock::time_point deadline) {
    Answers answers;
    // Outside the loop: g++ 12 destroys a variable initialised by a co_await in a loop body
    // twice.
    Answers more;
    for (int round = 0; round < kMaxSpfRounds; ++round) {
        SpfOutcome outcome = spf_->evaluate(request, answers);
        if (outcome.missing.empty()) co_return outcome.verdict;
        // Past the deadline, fetch() answers every question with a temporary error at
        // once, and the next round concludes temperror.
        more = co_await fetch(resolver_, std::move(outcome.missing), deadline);
        answers.merge(more);
        more.clear();
    }
    co_return SpfVerdict{Result::permerror, {}, request.sender.empty()};
}

awaitable<Verdicts> Checker::check(Message message, Clock::time_point latest) {
    const Clock::time_point deadline = std::min(Clock::now() + options_.dns_timeout, latest);
    const Checks& checks = options_.checks;

    // DKIM keys and DMARC records are asked for while SPF walks its record.
    std::vector<Question> questions;
    if (message.dkim) {
        for (const auto& name : message.dkim->key_names()) questions.emplace_back(question_name(name), dns::RecordType::txt);
    }
    std::optional<std::string> from;
    std::string org;
    if (checks.dmarc) {
        from = from_domain(message.from_values);
        if (from) {
            org = dmarc_->organizational_domain(*from);
            questions.emplace_back("_dmarc." + *from, dns::RecordType::txt);
            if (org != *from) questions.emplace_back("_dmarc." + org, dns::RecordType::txt);
        }
    }

    Verdicts verdicts;
    Answers answers;
    if (checks.spf) {
        using namespace asio::experimental::awaitable_operators;
        const SpfRequest request{message.client_ip, message.helo, message.sender};
        auto [spf, fetched] = co_await (check_spf(request, deadline) && fetch(resolver_, questions, deadline));
        verdicts.spf = std::move(spf);
        answers = std::move(fetched);
    } else {
        answers = co_await fetch(resolver_, questions, deadline);
    }

    if (message.dkim) {
        for (const auto& name : message.dkim->key_names()) {
            const auto it = answers.find({question_name(name), dns::RecordType::txt});
            if (it != answers.end()) message.dkim->set_key(name, it->second);
        }
        if (message.dkim->key_names().empty()) {
            verdicts.dkim = message.dkim->verify();  // malformed signatures only: no key to check
        } else {
            DkimMessage* dkim = message.dkim.get();
            auto verified = co_await try_blocking(pool_, [dkim] { return dkim->verify(); });
            if (verified) {
                verdicts.dkim = std::move(*verified);
            } else {
                verdicts.dkim = std::vector<DkimVerdict>{};
                for (const auto& name : message.dkim->key_names())
                    verdicts.dkim->push_back({Result::temperror, name.substr(name.find("._domainkey.") + 12),
                                              name.substr(0, name.find("._domainkey.")), "not verified"});
            }
        }
    } else if (checks.dkim) {
        verdicts.dkim = std::vector<DkimVerdict>{};
    }

    if (checks.dmarc) {
        if (!from) {
            verdicts.dmarc = DmarcVerdict{Result::permerror, DmarcPolicy::unspecified, {}};
        } else {
            DmarcInput input;
            input.client_ip = message.client_ip;
            input.from_domain = *from;
            input.organizational_domain = org;
            const auto answer_for = [&answers](const std::string& domain) {
                const auto it = answers.find({"_dmarc." + domain, dns::RecordType::txt});
                return it == answers.end() ? dns::Answer{dns::Status::no_domain, {}} : it->second;
            };
            input.from_answer = answer_for(*from);
            input.org_answer = answer_for(org);
            input.spf = verdicts.spf;
            input.dkim = verdicts.dkim;
            verdicts.dmarc = evaluate_dmarc(*dmarc_, input);
        }
    }
    co_return verdicts;
}

}  // namespace mxhook::auth
