#include "mxhook/smtp/reverse_dns.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>

#include <netdb.h>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>

namespace mxhook::smtp {

std::string lookup_name(const boost::asio::ip::address& address) {
    boost::asio::ip::address target = address;
    if (target.is_v6() && target.to_v6().is_v4_mapped()) {
        target = boost::asio::ip::make_address_v4(boost::asio::ip::v4_mapped, target.to_v6());
    }
    const boost::asio::ip::tcp::endpoint endpoint(target, 0);  // Asio builds the sockaddr
    char host[NI_MAXHOST] = {};
    if (::getnameinfo(endpoint.data(), static_cast<socklen_t>(endpoint.size()), host, sizeof host, nullptr, 0,
                      NI_NAMEREQD) != 0) {
        return {};
    }
    return host;
}

struct ReverseDns::State {
    struct Job {
        boost::asio::ip::address address;
        boost::asio::any_io_executor executor;
        Callback done;
    };
    std::mutex mutex;
    std::condition_variable wake;
    std::deque<Job> queue;
    std::size_t max_queued = 0;
    bool stopped = false;

    // Posts under the lock, so that stop() (which the owner calls before the executor's
    // io_context goes away) orders it: after stop() returns, nothing is posted any more.
    void answer(Job& job, std::string name) {
        std::lock_guard lock(mutex);
        if (stopped) return;
        boost::asio::post(job.executor, [done = std::move(job.done), name = std::move(name)]() mutable {
            done(std::move(name));
        });
    }

    void work() {
        for (;;) {
            Job job;
            {
                std::unique_lock lock(mutex);
                wake.wait(lock, [this] { return stopped || !queue.empty(); });
                if (stopped) return;
                job = std::move(queue.front());
                queue.pop_front();
            }
            std::string name = lookup_name(job.address);
            answer(job, std::move(name));
        }
    }
};

ReverseDns::ReverseDns(std::size_t threads, std::size_t max_queued) : state_(std::make_shared<State>()) {
    state_->max_queued = max_queued;
    for (std::size_t i = 0; i < threads; ++i) {
        // Detached, each holding the state: stop() must not wait for a getnameinfo() that
        // may take the resolver's whole timeout.
        std::thread([state = state_] { state->work(); }).detach();
    }
}

ReverseDns::~ReverseDns() { stop(); }

void ReverseDns::lookup(const boost::asio::ip::address& address, const boost::asio::any_io_executor& executor,
                        Callback done) {
    State::Job job{address, executor, std::move(done)};
    {
        std::lock_guard lock(state_->mutex);
        if (!state_->stopped && state_->queue.size() < state_->max_queued) {
            state_->queue.push_back(std::move(job));
            state_->wake.notify_one();
            return;
        }
    }
    state_->answer(job, std::string());  // saturated or stopped: no name, at once
}

void ReverseDns::stop() {
    std::lock_guard lock(state_->mutex);
    state_->stopped = true;
    state_->queue.clear();
    state_->wake.notify_all();
}

}  // namespace mxhook::smtp
