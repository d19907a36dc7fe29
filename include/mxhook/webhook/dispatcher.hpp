#pragma once
// Delivers spooled messages to the webhook: claims pending/<id> into processing/<id>,
// POSTs the signed payload through the shared HTTP client, and then deletes the item
// (2xx), dead-letters it (406, unreadable) or puts it back in pending/ with its next
// attempt time (anything else). Freshly queued messages are dispatched at once; a scan
// every RETRY_SCAN_INTERVAL_MS picks up due retries and items found on disk. Items wait
// for a slot in order of when they became due (a fresh message: its acknowledgment; a
// retry: its next attempt time), so neither a backlog of retries nor a stream of fresh
// mail starves the other.
// Runs on the io_context thread; all disk work goes to the worker pool.

#include "mxhook/blocking.hpp"
#include "mxhook/config.hpp"
#include "mxhook/http/client.hpp"
#include "mxhook/spool/spool.hpp"
#include "mxhook/webhook/body_source.hpp"
#include "mxhook/webhook/routes.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>

#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <cstdint>
#include <unordered_map>
#include <unordered_set>
#include <set>
#include <utility>
#include <vector>

namespace mxhook::webhook {

// What prepare_attempt() found: the item's state before its POST, and what the POST needs.
struct Prepared {
    enum Step {
        ready,           // claimed, body open
        gone,            // not in pending/ any more
        not_due,         // nextAttemptAt is still ahead
        meta_later,      // meta.json unreadable for now (I/O error): not claimed
        meta_broken,     // meta.json missing or unparsable: claimed, to dead-letter
        claim_failed,    // the rename failed
        too_old,         // claimed, past MAX_RETRY_AGE_MS
        message_later,   // claimed, the body cannot be made now (I/O, memory, randomness): a failed attempt
        message_broken,  // claimed, message.eml missing: to dead-letter
        dropped,         // claimed, every recipient's route is drop (or reject): to remove
    };
    Step step = gone;
    spool::Meta meta;
    // The request body when ready: streamed from the file (a large message), or whole in
    // body_bytes (a small one: held in memory, it is posted without a second hand-off).
    std::shared_ptr<FormBodySource> body;
    std::string body_bytes;
    std::string content_type;
    std::vector<std::string> headers;  // extra request headers (the JSON payload's signature)
    std::string url;                   // where the POST goes (the route's, or the default)
    std::size_t route_line = 0;        // the routes file's line that decided, 0 for none
    bool regrouped = false;            // the routes in force would split its recipients now
    Failure failure;
};

// Blocking (run it on the worker pool): everything a delivery attempt needs before its
// POST, in one hand-off: read pending/<id>/meta.json (unless `known`, the meta the session
// just committed, is given), claim the item, open the body. Failures are states, decided
// here once; the dispatcher only carries them out.
Prepared prepare_attempt(const spool::Spool& spool, const Config& config, const std::string& id,
                         std::chrono::system_clock::time_point now, boost::asio::thread_pool& pool,
                         const boost::asio::any_io_executor& executor,
                         std::optional<spool::Meta> known = std::nullopt, const Routes* routes = nullptr,
                         std::optional<std::chrono::system_clock::time_point> drain_since = std::nullopt);

// Whether an item is due at `now`: no next attempt set, or one not ahead of now; while
// draining (since `drain_since`), also any item not attempted since the drain began, so
// that each gets one attempt at once whatever its back-off.
bool attempt_due(const spool::Meta& meta, std::chrono::system_clock::time_point now,
                 std::optional<std::chrono::system_clock::time_point> drain_since);

class Dispatcher {
public:
    Dispatcher(boost::asio::io_context& io, boost::asio::thread_pool& pool, const spool::Spool& spool,
               http::Client& client, const Config& config);

    // Items that were in flight when the last run died (spool::RecoveryReport::suspects):
    // delivered one at a time, before anything else is claimed, so that a crash during
    // one of them is that item's alone. Call before start().
    void isolate(std::vector<std::string> suspects);
    // The routes in force (WEBHOOK_ROUTES), read at each attempt on the io thread; the
    // pointer must outlive the dispatcher. Not called, or null routes: no routes.
    void use_routes(const std::shared_ptr<const Routes>* routes) { routes_ = routes; }
    void start();
    // A message was just committed to pending/: deliver it now. `meta`, when given, is
    // what was committed as its meta.json: its first attempt then skips reading and
    // parsing the file (kept for as long as the item waits in the queue, within a bound).
    void notify(const std::string& id, std::optional<spool::Meta> meta = std::nullopt);
    // Drain (`mxhook drain`): every item in pending/ gets an attempt now, whatever its
    // back-off (once; a failed one is then scheduled as usual), so the spool empties as fast
    // as the webhook allows. Each call starts that over (an operator who fixed the webhook
    // drains again).
    void drain();
    // Stops claiming new items; on_idle runs once no delivery is in flight. Items still
    // in processing/ at exit go back to pending/ at the next start.
    void stop(std::function<void()> on_idle);
    std::size_t in_flight() const { return in_flight_; }
    // Attempts launched so far: with in_flight(), tells a drain that no item moved between
    // two looks (only an attempt moves items once no session is open).
    std::uint64_t launched() const { return launched_; }

private:
    boost::asio::awaitable<void> scan_loop();
    boost::asio::awaitable<void> scan_once();
    boost::asio::awaitable<void> deliver(std::string id, std::optional<spool::Meta> known);
    boost::asio::awaitable<void> attempt(const std::string& id, std::optional<spool::Meta>& known);
    boost::asio::awaitable<void> sweep_processing(const std::vector<std::string>& in_processing);
    boost::asio::awaitable<void> set_aside_duplicate(const std::string& id);
    boost::asio::awaitable<void> give_back(const std::string& id, const Failure& failure);
    // Moves a claimed item to dead/; false (and the item given back) when the spool fails.
    boost::asio::awaitable<bool> dead_letter(const std::string& id, const spool::Meta* meta,
                                             const std::string& reason);
    // Queues the item for a delivery slot, ordered by `due` (then by id); false when it is
    // not queued (busy, stopping, or later than everything in a full queue).
    bool enqueue(const std::string& id, std::chrono::system_clock::time_point due);
    // Launches the delivery of `id`, with its committed meta when known_ has it.
    void launch(std::string id);
    void forget_known(const std::string& id);
    void pump();
    void delivery_done(const std::string& id);
    // WEBHOOK_URL and WEBHOOK_ROLE_URL as the log shows them (password masked), made once.
    const std::string& shown(const std::string& url) const;

    boost::asio::io_context& io_;
    boost::asio::thread_pool& pool_;
    const spool::Spool& spool_;
    http::Client& client_;
    const Config& config_;
    const std::shared_ptr<const Routes>* routes_ = nullptr;
    boost::asio::steady_timer scan_timer_;
    std::string shown_webhook_url_;
    std::string shown_role_url_;
    // Waiting for a slot: by due time, then by order of enqueue().
    std::set<std::tuple<std::chrono::system_clock::time_point, std::uint64_t, std::string>> ready_;
    std::uint64_t enqueued_ = 0;
    // ready_ holds at most max_queued() items (the earliest due); overflowed_: some were
    // left out since the last scan.
    static constexpr std::size_t kMinQueued = 4096;
    std::size_t max_queued() const;
    bool overflowed_ = false;
    bool rescan_ = false;  // scan again now: the queue runs low and items were left out
    std::deque<std::string> suspects_;              // isolate(): one at a time, before ready_
    bool isolating_ = false;                        // until the last suspect's attempt has ended
    static constexpr std::size_t kMaxReportedStrays = 1000;
    std::unordered_set<std::string> reported_strays_;  // non-items in pending/ already logged
    std::unordered_set<std::string> busy_;          // ids queued or in flight
    std::unordered_map<std::string, std::chrono::system_clock::time_point> not_before_;  // known retry times
    // Metas of fresh items waiting in ready_, as their sessions committed them, at most
    // kMaxKnownBytes of them (roughly counted): the rest are read from disk as usual.
    static constexpr std::size_t kMaxKnownBytes = 256 * 1024;
    std::unordered_map<std::string, std::pair<spool::Meta, std::size_t>> known_;
    std::size_t known_bytes_ = 0;
    std::size_t in_flight_ = 0;
    std::uint64_t launched_ = 0;
    bool stopping_ = false;
    std::optional<std::chrono::system_clock::time_point> drain_since_;
    std::function<void()> on_idle_;
};

}  // namespace mxhook::webhook
