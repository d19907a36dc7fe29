#include "mxhook/webhook/dispatcher.hpp"

#include "mxhook/metrics/metrics.hpp"

#include "mxhook/blocking.hpp"
#include "mxhook/webhook/body_source.hpp"
#include "mxhook/mime/message.hpp"
#include "mxhook/webhook/parsed_payload.hpp"
#include "mxhook/webhook/payload.hpp"
#include "mxhook/webhook/retry_policy.hpp"
#include "mxhook/webhook/routing.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <spdlog/spdlog.h>

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <system_error>

namespace mxhook::webhook {

namespace {

// A delivered message: how long from its 250 (the time in meta.json's createdAt) to this
// 2xx, and how many attempts it took (the ones before, counted in meta.json, and this one).
void count_delivered(const spool::Meta& meta) {
    auto& counted = metrics::global();
    counted.deliveries[static_cast<std::size_t>(metrics::DeliveryOutcome::delivered)].add();
    const auto waited = std::chrono::duration<double>(spool::Clock::now() - meta.created_at).count();
    counted.delivery_latency_seconds.observe(std::max(0.0, waited));
    counted.delivery_attempts.observe(static_cast<double>(meta.attempts + 1));
}

}  // namespace
namespace asio = boost::asio;
using asio::awaitable;
using Clock = std::chrono::system_clock;

Dispatcher::Dispatcher(asio::io_context& io, asio::thread_pool& pool, const spool::Spool& spool,
                       http::Client& client, const Config& config)
    : io_(io),
      pool_(pool),
      spool_(spool),
      client_(client),
      config_(config),
      scan_timer_(io),
      shown_webhook_url_(masked_url(config.webhook_url)),
      shown_role_url_(masked_url(config.webhook_role_url)) {}

const std::string& Dispatcher::shown(const std::string& url) const {
    // A password in a URL (https://user:secret@host/) stays out of the log.
    return url == config_.webhook_role_url && !url.empty() ? shown_role_url_ : shown_webhook_url_;
}

namespace {

// When an item found on disk became due, as far as its name tells: ids start with the
// time of acknowledgment in ms. Names that don't (an operator's) count as oldest.
Clock::time_point arrival_time(const std::string& id) {
    const auto ms = spool::id_unix_ms(id);
    return ms ? Clock::time_point{std::chrono::milliseconds(*ms)} : Clock::time_point{};
}

}  // namespace

void Dispatcher::isolate(std::vector<std::string> suspects) {
    for (auto& id : suspects) {
        if (busy_.insert(id).second) suspects_.push_back(std::move(id));
    }
    isolating_ = !suspects_.empty();
}

void Dispatcher::start() {
    asio::co_spawn(io_, scan_loop(), asio::detached);
    pump();
}

namespace {

// About what a Meta holds in memory, for the bound on known_.
std::size_t footprint(const spool::Meta& meta) {
    std::size_t bytes = 512 + meta.id.size() + meta.sender.size() + meta.from.size() + meta.subject.size();
    for (const auto& r : meta.recipients) bytes += 32 + r.size();
    for (const auto& [name, value] : meta.headers) bytes += 64 + name.size() + value.size();
    return bytes;
}

}  // namespace

void Dispatcher::notify(const std::string& id, std::optional<spool::Meta> meta) {
    not_before_.erase(id);
    // Kept before enqueue(), which may launch the delivery at once. (An id not busy has no
    // entry: known_ only holds ids waiting in ready_.)
    if (meta && !stopping_ && busy_.count(id) == 0 && spool::reads_back_unchanged(*meta)) {
        const std::size_t bytes = footprint(*meta);
        if (known_bytes_ + bytes <= kMaxKnownBytes) {
            known_bytes_ += bytes;
            known_.emplace(id, std::pair{std::move(*meta), bytes});
        }
    }
    // The time in the id, not now: the scan may queue the same kind of item by its id,
    // and both must sort on one clock.
    if (!enqueue(id, arrival_time(id))) forget_known(id);
}

void Dispatcher::forget_known(const std::string& id) {
    if (auto it = known_.find(id); it != known_.end()) {
        known_bytes_ -= it->second.second;
        known_.erase(it);
    }
}

bool Dispatcher::enqueue(const std::string& id, Clock::time_point due) {
    if (stopping_ || busy_.count(id) != 0) return false;
    // The queue holds the earliest-due items only, so memory does not grow with a backlog.
    // One due later than all of them stays in pending/ alone, where a scan finds it again
    // (pump() asks for one early when the queue runs low).
    if (ready_.size() >= max_queued()) {
        const auto last = std::prev(ready_.end());
        overflowed_ = true;
        if (std::get<0>(*last) <= due) return false;
        busy_.erase(std::get<2>(*last));
        forget_known(std::get<2>(*last));
        ready_.erase(last);
    }
    busy_.insert(id);
    // Ids carry milliseconds: messages acknowledged within one keep the order they came in.
    ready_.emplace(due, enqueued_++, id);
    pump();
    return true;
}

void Dispatcher::launch(std::string id) {
    std::optional<spool::Meta> known;
    if (auto node = known_.extract(id); !node.empty()) {
        known_bytes_ -= node.mapped().second;
        known = std::move(node.mapped().first);
    }
    ++in_flight_;
    ++launched_;
    asio::co_spawn(io_, deliver(std::move(id), std::move(known)), asio::detached);
}

std::size_t Dispatcher::max_queued() const {
    return std::max<std::size_t>(kMinQueued, 2 * config_.webhook_concurrency);
}

void Dispatcher::pump() {
    if (isolating_) {
        // Isolation after a crash: nothing else is claimed until every suspect has had
        // its attempt, alone, and the last one has ended.
        if (stopping_ || in_flight_ > 0) return;
        if (suspects_.empty()) isolating_ = false;
    }
    if (isolating_) {
        std::string id = std::move(suspects_.front());
        suspects_.pop_front();
        spdlog::info("dispatch id={}: retrying alone (in flight when the last run died; {} more to go)", id,
                     suspects_.size());
        launch(std::move(id));
        return;
    }
    while (!stopping_ && in_flight_ < config_.webhook_concurrency && !ready_.empty()) {
        auto first = ready_.begin();
        std::string id = std::move(std::get<2>(*first));
        ready_.erase(first);
        launch(std::move(id));
    }
    // Items were left out of a full queue: scan again before it runs dry, not a whole
    // RETRY_SCAN_INTERVAL_MS later (the wait is cut short; the scan loop goes on).
    if (overflowed_ && !stopping_ && ready_.size() < max_queued() / 4) {
        overflowed_ = false;
        rescan_ = true;
        scan_timer_.cancel();
    }
}

void Dispatcher::delivery_done(const std::string& id) {
    --in_flight_;
    busy_.erase(id);
    if (stopping_) {
        if (in_flight_ == 0 && on_idle_) {
            auto done = std::move(on_idle_);
            on_idle_ = nullptr;
            done();
        }
        return;
    }
    pump();
}

void Dispatcher::drain() {
    if (stopping_) return;
    drain_since_ = Clock::now();  // again at each request: everything gets one more attempt now
    // Retry times known in memory would keep items out of the next scan: forget them, and
    // scan now rather than a RETRY_SCAN_INTERVAL_MS later.
    not_before_.clear();
    rescan_ = true;
    scan_timer_.cancel();
}

void Dispatcher::stop(std::function<void()> on_idle) {
    stopping_ = true;
    scan_timer_.cancel();
    ready_.clear();
    known_.clear();
    known_bytes_ = 0;
    suspects_.clear();
    on_idle_ = std::move(on_idle);
    if (in_flight_ == 0 && on_idle_) {
        auto done = std::move(on_idle_);
        on_idle_ = nullptr;
        asio::post(io_, std::move(done));
    }
}

awaitable<void> Dispatcher::scan_loop() {
    while (!stopping_) {
        // Whatever goes wrong in one scan, the next one still comes: a scan loop that
        // died would leave every retry waiting for a restart.
        try {
            co_await scan_once();
        } catch (const std::exception& e) {
            spdlog::error("dispatch: retry scan failed, next in {} ms: {}", config_.retry_scan_interval.count(),
                          e.what());
        } catch (...) {
            spdlog::error("dispatch: retry scan failed, next in {} ms", config_.retry_scan_interval.count());
        }
        if (std::exchange(rescan_, false)) continue;  // asked for while this scan ran
        scan_timer_.expires_after(config_.retry_scan_interval);
        co_await scan_timer_.async_wait(asio::as_tuple(asio::use_awaitable));
        rescan_ = false;
    }
}


awaitable<void> Dispatcher::scan_once() {
    struct Listing {
        std::vector<std::string> pending, processing, strays;
    };
    // One hand-off for the whole listing.
    auto listed = co_await try_blocking(pool_, [this] {
        return Listing{spool_.list_pending(), spool_.list_processing(), spool_.list_pending_strays()};
    });
    if (!listed) {
        spdlog::error("dispatch: cannot scan the spool: {}", listed.failure().message);
        co_return;
    }
    // Once per name (and never more than a bounded number of names): not ours, left alone.
    for (const auto& name : listed->strays) {
        if (reported_strays_.size() < kMaxReportedStrays && reported_strays_.insert(name).second) {
            spdlog::warn("dispatch: {} is not a spool item (a file, a dotfile or a link): left alone",
                         (spool_.layout().pending / name).string());
        }
    }
    co_await sweep_processing(listed->processing);

    const auto now = Clock::now();
    std::unordered_map<std::string, Clock::time_point> still_waiting;
    for (const auto& id : listed->pending) {
        const auto known = not_before_.find(id);
        if (known != not_before_.end() && known->second > now) {
            still_waiting.insert(*known);
            continue;
        }
        enqueue(id, known != not_before_.end() ? known->second : arrival_time(id));
    }
    // Forget retry times of items that left pending/ by other means (an operator).
    for (const auto& id : busy_) {
        if (auto it = not_before_.find(id); it != not_before_.end()) still_waiting.insert(*it);
    }
    not_before_ = std::move(still_waiting);
}

// An item in processing/ that no delivery owns was left there by an attempt that could
// not finish (a spool error after the claim). Give it back to pending/ rather than wait
// for a restart. Only ids that are not busy now: those cannot be claimed again until they
// are back in pending/. One whose delivery ended after the listing is simply gone.
awaitable<void> Dispatcher::sweep_processing(const std::vector<std::string>& in_processing) {
    for (const auto& id : in_processing) {
        if (busy_.count(id) != 0 || stopping_) continue;
        const auto moved = co_await try_blocking(pool_, [this, &id] { spool_.unclaim(id); });
        if (moved) {
            spdlog::warn("dispatch id={}: found unowned in processing/, moved back to pending/", id);
            continue;
        }
        const Failure& failure = moved.failure();
        if (failure.is(std::errc::no_such_file_or_directory)) continue;  // its delivery finished meanwhile
        if (failure.is(std::errc::file_exists) || failure.is(std::errc::directory_not_empty)) {
            co_await set_aside_duplicate(id);
            continue;
        }
        spdlog::error("dispatch id={}: cannot move it back to pending: {}", id, failure.message);
    }
}

// The same id in processing/ (unowned) and in pending/: keep the pending/ copy for delivery
// and set the other aside in dead/, instead of failing to move either on every scan.
awaitable<void> Dispatcher::set_aside_duplicate(const std::string& id) {
    const auto set_aside = co_await try_blocking(pool_, [this, &id] { spool_.set_aside_duplicate(id); });
    if (set_aside) {
        spdlog::error("dispatch id={}: in processing/ and pending/ at once; one copy is set aside in dead/ "
                      "(see its error.txt), the other delivered",
                      id);
    } else {
        spdlog::error("dispatch id={}: in processing/ and pending/ at once, and cannot set one aside: {}", id,
                      set_aside.failure().message);
    }
}

awaitable<void> Dispatcher::deliver(std::string id, std::optional<spool::Meta> known) {
    // Spool errors come back as values inside attempt(); this only guards against the
    // unforeseen (an allocation failure in the payload), which must not end the dispatcher.
    std::optional<Failure> unforeseen;
    try {
        co_await attempt(id, known);
    } catch (const std::exception& e) {
        unforeseen = failure_of(e);
    }
    if (unforeseen) co_await give_back(id, *unforeseen);
    delivery_done(id);
}

// A spool step of an attempt failed after the claim: the item goes back to pending/
// unchanged (no attempt counted) and is tried again after RETRY_INTERVAL_MS. When even
// this fails, the retry scan sweeps it out of processing/ later.
awaitable<void> Dispatcher::give_back(const std::string& id, const Failure& failure) {
    spdlog::error("dispatch id={}: {}; trying again in {} ms", id, failure.message, config_.retry_interval.count());
    const auto returned = co_await try_blocking(pool_, [this, &id] { spool_.unclaim(id); });
    if (!returned && !returned.failure().is(std::errc::no_such_file_or_directory)) {
        spdlog::error("dispatch id={}: cannot move it back to pending/ now ({}); the retry scan will", id,
                      returned.failure().message);
    }
    not_before_[id] = Clock::now() + config_.retry_interval;
}

awaitable<bool> Dispatcher::dead_letter(const std::string& id, const spool::Meta* meta, const std::string& reason) {
    const auto moved = co_await try_blocking(pool_, [this, &id, meta, &reason] { spool_.dead_letter(id, meta, reason); });
    if (moved) co_return true;
    co_await give_back(id, moved.failure());
    co_return false;
}

namespace {

// A file that is not there, or not parsable, will not get better by waiting; an I/O
// error, a lack of descriptors or memory may. Only the first kind dead-letters.
bool permanent(const Failure& failure) {
    return failure.is(std::errc::no_such_file_or_directory) || failure.is(std::errc::bad_message);
}

}  // namespace

namespace {

// WEBHOOK_FORMAT parsed or json: the message parsed and the body written to an anonymous
// file in the spool's tmp/ (on the spool's filesystem, gone when closed), then streamed.
std::shared_ptr<FormBodySource> open_parsed_body(const spool::Spool& spool, const Config& config, WebhookFormat format,
                                                 const std::string& id,
                                                 const spool::Meta& meta, const Fields& fields, Clock::time_point now,
                                                 asio::thread_pool& pool, const asio::any_io_executor& executor,
                                                 std::vector<std::string>& headers) {
    const auto message_path = spool.processing_message(id);
    const mime::Message message = mime::Message::open(message_path, spool.layout().tmp);
    const int fd = mime::open_scratch_file(spool.layout().tmp);
    BuiltBody built;
    try {
        if (format == WebhookFormat::parsed) {
            built = write_parsed_body(message, fields, fd);
        } else {
            JsonOptions options{config.webhook_signing_key, now, std::nullopt};
            if (config.webhook_json_raw_email) options.raw_email = message_path;
            built = write_json_body(message, meta, options, fd);
        }
    } catch (...) {
        ::close(fd);
        throw;
    }
    headers = std::move(built.headers);
    return FormBodySource::open_file(fd, std::move(built.content_type), pool, executor);
}

}  // namespace

bool attempt_due(const spool::Meta& meta, Clock::time_point now, std::optional<Clock::time_point> drain_since) {
    if (!meta.next_attempt_at || *meta.next_attempt_at <= now) return true;
    return drain_since && (!meta.last_attempt_at || *meta.last_attempt_at < *drain_since);
}

Prepared prepare_attempt(const spool::Spool& spool, const Config& config, const std::string& id,
                         Clock::time_point now, asio::thread_pool& pool, const asio::any_io_executor& executor,
                         std::optional<spool::Meta> known, const Routes* routes,
                         std::optional<Clock::time_point> drain_since) {
    Prepared out;
    const auto claim = [&] {
        try {
            if (spool.claim(id)) return true;
            out.step = Prepared::gone;
        } catch (const std::exception& e) {
            out.step = Prepared::claim_failed;
            out.failure = failure_of(e);
        }
        return false;
    };
    try {
        out.meta = known ? std::move(*known) : spool.read_pending_meta(id);
    } catch (const std::exception& e) {
        out.failure = failure_of(e);
        out.step = Prepared::meta_later;
        // Claim first: when the item is simply gone there is nothing to dead-letter.
        if (permanent(out.failure) && claim()) out.step = Prepared::meta_broken;
        return out;
    }
    if (!attempt_due(out.meta, now, drain_since)) {
        out.step = Prepared::not_due;
        return out;
    }
    if (!claim()) return out;
    if (config.max_retry_age.count() > 0 && now - spool::retry_age_origin(out.meta) > config.max_retry_age) {
        out.step = Prepared::too_old;
        return out;
    }
    // The routes in force decide. An item holds the recipients of one route as they were
    // grouped when it was accepted; after a reload they may disagree: the item then goes
    // whole where its first recipient that is still posted to points (mail is never
    // dropped for a recipient whose route posts it), and is dropped only when every
    // recipient's route is drop or reject. None, or no match: the default URL.
    WebhookFormat format = config.webhook_format;
    out.url = route(config, out.meta.recipients);
    if (routes != nullptr && !out.meta.recipients.empty()) {
        const auto groups = group_recipients(*routes, out.meta.recipients, out.meta.sender, out.meta.headers, nullptr);
        if (groups.empty()) {
            const Route* dropping = routes->match(out.meta.recipients.front(), out.meta.sender, out.meta.headers);
            out.route_line = dropping != nullptr ? dropping->line : 0;
            out.step = Prepared::dropped;
            return out;
        }
        out.regrouped = groups.size() > 1 || groups.front().recipients.size() != out.meta.recipients.size();
        if (const Route* chosen = groups.front().route) {
            out.route_line = chosen->line;
            out.url = chosen->url;
            if (chosen->format) format = *chosen->format;
        }
    }
    Fields fields;
    try {
        fields = payload_fields(out.meta, config.webhook_signing_key, now);
    } catch (const std::exception& e) {
        // No random bytes for the token, or no memory: nothing wrong with the message.
        out.failure = {std::make_error_code(std::errc::resource_unavailable_try_again), e.what()};
        out.step = Prepared::message_later;
        return out;
    }
    try {
        if (format == WebhookFormat::mime) {
            out.body = FormBodySource::open(fields, config.webhook_encoding, spool.processing_message(id), pool, executor);
        } else {
            out.body = open_parsed_body(spool, config, format, id, out.meta, fields, now, pool, executor, out.headers);
        }
        out.content_type = out.body->content_type();
        if (auto whole = out.body->take_whole()) {
            out.body_bytes = std::move(*whole);
            out.body.reset();  // closes the file
        }
        out.step = Prepared::ready;
    } catch (const std::exception& e) {
        out.failure = failure_of(e);
        out.step = permanent(out.failure) ? Prepared::message_broken : Prepared::message_later;
    }
    return out;
}

awaitable<void> Dispatcher::attempt(const std::string& id, std::optional<spool::Meta>& known) {
    const auto now = Clock::now();
    const asio::any_io_executor executor = io_.get_executor();
    // Captures are references only: g++ 12 mishandles non-trivial temporaries that
    // live across a co_await (it destroys them twice).
    const std::shared_ptr<const Routes> routes = routes_ != nullptr ? *routes_ : nullptr;
    // Read on the pool: a copy, as drain() may change the member meanwhile on this thread.
    const std::optional<Clock::time_point> drain_since = drain_since_;
    auto prepared = co_await run_blocking(pool_, [this, &id, now, &executor, &known, &routes, &drain_since] {
        return prepare_attempt(spool_, config_, id, now, pool_, executor, std::move(known), routes.get(),
                               drain_since);
    });
    spool::Meta& meta = prepared.meta;
    http::Response response;
    switch (prepared.step) {
        case Prepared::gone: co_return;  // delivered meanwhile, or taken by an operator
        case Prepared::not_due: not_before_[id] = *meta.next_attempt_at; co_return;
        case Prepared::meta_later:
            spdlog::warn("dispatch id={}: cannot read meta.json now, will try again: {}", id,
                         prepared.failure.message);
            not_before_[id] = now + config_.retry_interval;
            co_return;
        case Prepared::claim_failed:
            spdlog::error("dispatch id={}: cannot claim it: {}", id, prepared.failure.message);
            not_before_[id] = now + config_.retry_interval;
            co_return;
        case Prepared::meta_broken: {
            const std::string reason = "invalid metadata: " + prepared.failure.message;
            if (co_await dead_letter(id, nullptr, reason)) spdlog::error("dispatch id={} dead-lettered: {}", id, reason);
            co_return;
        }
        case Prepared::too_old:
            meta.last_error = "max retry age exceeded";
            if (co_await dead_letter(id, &meta, "")) {
                spdlog::warn("dispatch id={} dead-lettered: max retry age exceeded after {} attempts", id,
                             meta.attempts);
            }
            co_return;
        case Prepared::message_broken: {
            const std::string reason = "cannot read message: " + prepared.failure.message;
            meta.last_error = reason;
            if (co_await dead_letter(id, &meta, reason)) spdlog::error("dispatch id={} dead-lettered: {}", id, reason);
            co_return;
        }
        case Prepared::message_later:
            // A passing failure (I/O, memory, randomness): counts as a failed attempt.
            response.error = "cannot make the request body: " + prepared.failure.message;
            break;
        case Prepared::dropped: {
            const auto removed = co_await try_blocking(pool_, [this, &id] { spool_.remove(id); });
            if (!removed) {
                co_await give_back(id, removed.failure());
                co_return;
            }
            not_before_.erase(id);
            spdlog::info("delivery id={} outcome=dropped route={} (the routes in force drop it)", id,
                         prepared.route_line);
            co_return;
        }
        case Prepared::ready: break;
    }
    const std::string& url = prepared.url;
    const std::string shown_url = prepared.route_line != 0 ? masked_url(url) : shown(url);
    if (prepared.regrouped) {
        spdlog::warn("delivery id={}: under the routes reloaded since it was queued, its recipients take different "
                     "routes (or some are dropped); sent whole to {} (route line {})",
                     id, shown_url, prepared.route_line);
    }
    if (prepared.step == Prepared::ready) {
        http::Request request;
        request.url = url;
        request.headers.push_back("X-Mxhook-Id: " + id);
        for (auto& header : prepared.headers) request.headers.push_back(std::move(header));
        request.content_type = std::move(prepared.content_type);
        request.body = std::move(prepared.body);
        request.body_bytes = std::move(prepared.body_bytes);
        request.timeout = config_.webhook_timeout;
        auto& in_flight = metrics::global().webhook_requests_in_flight;
        in_flight.add();
        response = co_await client_.post(std::move(request));
        in_flight.sub();
    }
    metrics::global().delivery_responses.add(static_cast<int>(response.status));

    const auto status = response.status == 0 ? std::string("none") : std::to_string(response.status);
    Settlement settled = settle(response.status, response.error, std::move(meta), Clock::now(),
                                {config_.retry_interval, config_.retry_max_interval});
    switch (settled.action) {
        case Settle::remove: {
            // Delivered: if the item cannot be removed it is delivered again later (at
            // least once; the webhook drops the duplicate by X-Mxhook-Id).
            const auto removed = co_await try_blocking(pool_, [this, &id] { spool_.remove(id); });
            if (!removed) {
                co_await give_back(id, removed.failure());
                break;
            }
            not_before_.erase(id);
            count_delivered(settled.meta);
            spdlog::info("delivery id={} url={} status={} ms={} outcome=delivered", id, shown_url, status,
                         response.duration.count());
            break;
        }
        case Settle::dead_letter:
            if (co_await dead_letter(id, &settled.meta, "")) {
                metrics::global().deliveries[static_cast<std::size_t>(metrics::DeliveryOutcome::dead_lettered)].add();
                spdlog::warn("delivery id={} url={} status={} ms={} outcome=dead", id, shown_url, status,
                             response.duration.count());
            }
            break;
        case Settle::release: {
            const auto released = co_await try_blocking(pool_, [this, &id, &settled] { spool_.release(id, settled.meta); });
            if (!released) {
                co_await give_back(id, released.failure());
                break;
            }
            not_before_[id] = *settled.meta.next_attempt_at;
            metrics::global().deliveries[static_cast<std::size_t>(metrics::DeliveryOutcome::retried)].add();
            spdlog::warn("delivery id={} url={} status={} ms={} outcome=retry attempts={} error=\"{}\" next={}", id,
                         shown_url, status, response.duration.count(), settled.meta.attempts, *settled.meta.last_error,
                         spool::iso8601(*settled.meta.next_attempt_at));
            break;
        }
    }
}

}  // namespace mxhook::webhook
