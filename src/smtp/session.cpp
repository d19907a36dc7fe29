#include "mxhook/smtp/session.hpp"

#include "mxhook/webhook/routes.hpp"

#include "mxhook/blocking.hpp"
#include "mxhook/mail/headers.hpp"
#include "mxhook/mail/received.hpp"
#include "mxhook/metrics/metrics.hpp"

#include <boost/algorithm/string/predicate.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <openssl/ssl.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <optional>
#include <variant>

namespace mxhook::smtp {
namespace asio = boost::asio;
using asio::awaitable;
using asio::use_awaitable;

namespace {

void count_decision(decision::Verdict verdict) {
    using metrics::DecisionOutcome;
    const DecisionOutcome outcome = verdict == decision::Verdict::allow         ? DecisionOutcome::allow
                                    : verdict == decision::Verdict::deny        ? DecisionOutcome::deny
                                    : verdict == decision::Verdict::silent_deny ? DecisionOutcome::silent_deny
                                                                                : DecisionOutcome::error;
    metrics::global().decisions[static_cast<std::size_t>(outcome)].add();
}

void count_verdicts(const auth::Verdicts& verdicts) {
    auto& counted = metrics::global();
    const auto add = [&counted](metrics::AuthCheck check, auth::Result result) {
        counted.auth_results[static_cast<std::size_t>(check)][static_cast<std::size_t>(result)].add();
    };
    if (verdicts.spf) add(metrics::AuthCheck::spf, verdicts.spf->result);
    if (verdicts.dkim) add(metrics::AuthCheck::dkim, auth::dkim_summary(*verdicts.dkim));
    if (verdicts.dmarc) add(metrics::AuthCheck::dmarc, verdicts.dmarc->result);
    if (verdicts.spam) {
        const auto result = !verdicts.spam->checked ? metrics::ScanResult::unchecked
                            : verdicts.spam->spam   ? metrics::ScanResult::positive
                                                    : metrics::ScanResult::negative;
        counted.spam_checks[static_cast<std::size_t>(result)].add();
    }
    if (verdicts.virus) {
        const auto result = !verdicts.virus->checked  ? metrics::ScanResult::unchecked
                            : verdicts.virus->infected ? metrics::ScanResult::positive
                                                       : metrics::ScanResult::negative;
        counted.virus_scans[static_cast<std::size_t>(result)].add();
    }
}

// RFC 5321 4.5.3.1.4: a command line is at most 512 octets, CRLF included.
constexpr std::size_t kMaxCommandLine = 512;
// Replies are written once this much has piled up, even mid-pipeline.
constexpr std::size_t kMaxPendingReplies = 16 * 1024;
// Decoded DATA is written to the spool once this much has piled up (fewer, larger writes
// while the data keeps coming), and from kIdleFlushBytes on before every wait for the
// client: a client that stalls leaves less than that of its message in memory.
constexpr std::size_t kFlushBytes = 64 * 1024;
constexpr std::size_t kIdleFlushBytes = 4 * 1024;
// How long a client may take to read our last reply before we drop it.
constexpr auto kFinalReplyTimeout = std::chrono::seconds(10);
// The reverse-DNS name is a courtesy for the trace header and meta.json: never wait long.
constexpr auto kReverseLookupBound = std::chrono::seconds(3);

// Marks a read or write under way for the watchdog: SMTP_TIMEOUT_MS bounds socket
// operations only, not the disk work or the decision API call between them.
class IoUnderWay {
public:
    explicit IoUnderWay(bool& flag) : flag_(flag) { flag_ = true; }
    ~IoUnderWay() { flag_ = false; }
    IoUnderWay(const IoUnderWay&) = delete;
    IoUnderWay& operator=(const IoUnderWay&) = delete;

private:
    bool& flag_;
};

std::string joined(const std::vector<std::string>& items) {
    std::string out;
    for (const auto& item : items) {
        if (!out.empty()) out += ',';
        out += item;
    }
    return out;
}

}  // namespace

Session::Session(asio::ip::tcp::socket socket, SessionContext& context, std::string client_ip,
                 std::string_view initial_bytes)
    : socket_(std::move(socket)),
      context_(context),
      protocol_(context.protocol),
      watchdog_timer_(socket_.get_executor()),
      session_deadline_(std::chrono::steady_clock::now() + context.config.smtp_max_session),
      client_ip_(std::move(client_ip)),
      host_lookup_timer_(socket_.get_executor(), kReverseLookupBound) {
    const std::size_t n = std::min(initial_bytes.size(), rbuf_.size());
    std::memcpy(rbuf_.data(), initial_bytes.data(), n);
    rlen_ = n;
}

void Session::arm_deadline() {
    if (!timed_out_) deadline_ = std::chrono::steady_clock::now() + context_.config.smtp_timeout;
}

void Session::expire() {
    if (timed_out_) return;
    timed_out_ = true;
    deadline_ = std::chrono::steady_clock::now() + kFinalReplyTimeout;
    boost::system::error_code ec;
    socket_.cancel(ec);           // a read or write under way ends now
    host_lookup_timer_.cancel();  // a DATA waiting for the client's name: time is up too
}

bool Session::out_of_time() const {
    return timed_out_ || std::chrono::steady_clock::now() >= session_deadline_;
}

bool Session::client_idle() {
    if (tls_ && SSL_pending(tls_->native_handle()) > 0) return false;
    boost::system::error_code ec;
    return socket_.available(ec) == 0 || ec;
}

void Session::shutdown() {
    shutting_down_ = true;
    // An idle session is parked in a read: wake it so it can say 421. A session in
    // DATA is left alone to finish its message (bounded by the shutdown grace).
    if (!protocol_.in_data()) {
        boost::system::error_code ec;
        socket_.cancel(ec);
    }
}

// Looks up the client's reverse-DNS name (c-ares, on this thread) while the dialogue
// goes on. DATA waits for the answer only as long as the bound lets it
// (host_lookup_timer_ expires kReverseLookupBound after the connect).
void Session::lookup_client_host() {
    // The client's address, not the peer's: behind a balancer they differ.
    boost::system::error_code ec;
    const auto address = asio::ip::make_address(client_ip_, ec);
    if (ec || context_.dns == nullptr) {
        host_lookup_done_ = true;
        return;
    }
    std::weak_ptr<Session> weak = weak_from_this();
    context_.dns->lookup(address, [weak](std::string name) {
        auto self = weak.lock();
        if (!self) return;
        self->host_lookup_done_ = true;
        self->host_lookup_timer_.cancel();  // wakes a DATA that waits for the name
        self->client_host_ = std::move(name);
    });
}

awaitable<void> Session::run() {
    auto self = shared_from_this();
    arm_deadline();
    lookup_client_host();
    asio::co_spawn(socket_.get_executor(), [self] { return self->watchdog(); }, asio::detached);
    bool aborted = false;
    try {
        co_await serve();
    } catch (const std::exception& e) {
        spdlog::debug("smtp {}: connection ended: {}", client_ip_, e.what());
        aborted = true;
    }
    // A write cancelled by shutdown or the watchdog still owes the client its 421.
    if (aborted && (shutting_down_ || timed_out_)) {
        co_await close_with(timed_out_ ? Protocol::timeout_reply() : Protocol::shutdown_reply());
    }
    closed_ = true;
    watchdog_timer_.cancel();
    boost::system::error_code ec;
    socket_.shutdown(asio::ip::tcp::socket::shutdown_both, ec);
    socket_.close(ec);
}

awaitable<void> Session::watchdog() {
    auto self = shared_from_this();
    while (!closed_) {
        // The per-operation deadline, but never past the bound on the whole session (a
        // slow-drip client that sends a byte a minute is dropped all the same).
        const auto due = [this] { return timed_out_ ? deadline_ : std::min(deadline_, session_deadline_); };
        watchdog_timer_.expires_at(due());
        boost::system::error_code ec;
        co_await watchdog_timer_.async_wait(asio::redirect_error(use_awaitable, ec));
        if (closed_) break;
        const auto now = std::chrono::steady_clock::now();
        if (now < due()) continue;  // the deadline moved on
        if (timed_out_) {  // not even the timeout reply could be written
            socket_.close(ec);
            break;
        }
        if (now < session_deadline_ && !io_pending_) {
            // SMTP_TIMEOUT_MS is for reads and writes; between them (the disk, the decision
            // API) only the session bound counts. Look again one timeout later.
            deadline_ = now + context_.config.smtp_timeout;
            continue;
        }
        // Whatever the session is doing: a read or write is cancelled here; the DATA phase
        // notices between its steps (and abandons a decision call on its own timer).
        expire();
    }
}

awaitable<bool> Session::read_more() {
    if (rpos_ > 0) {
        std::memmove(rbuf_.data(), rbuf_.data() + rpos_, available());
        rlen_ -= rpos_;
        rpos_ = 0;
    }
    if (rlen_ == rbuf_.size()) co_return true;  // caller consumes before reading again
    if (timed_out_) co_return false;           // time is up: nothing more is read
    arm_deadline();
    const IoUnderWay reading(io_pending_);
    boost::system::error_code ec;
    const auto space = asio::buffer(rbuf_.data() + rlen_, rbuf_.size() - rlen_);
    const std::size_t n = tls_ ? co_await tls_->async_read_some(space, asio::redirect_error(use_awaitable, ec))
                               : co_await socket_.async_read_some(space, asio::redirect_error(use_awaitable, ec));
    if (ec) co_return false;
    rlen_ += n;
    co_return true;
}

awaitable<void> Session::flush() {
    if (out_.empty()) co_return;
    arm_deadline();
    const IoUnderWay writing(io_pending_);
    std::string data;
    data.swap(out_);
    if (tls_) co_await asio::async_write(*tls_, asio::buffer(data), use_awaitable);
    else co_await asio::async_write(socket_, asio::buffer(data), use_awaitable);
}

awaitable<void> Session::close_with(std::string_view reply) {
    out_ += reply;
    try {
        co_await flush();
    } catch (const std::exception&) {
    }
}

awaitable<void> Session::serve() {
    out_ = protocol_.greeting();
    co_await flush();
    for (;;) {
        if (shutting_down_) {
            co_await close_with(Protocol::shutdown_reply());
            co_return;
        }
        if (timed_out_) {  // e.g. while commands pipelined before the bound are worked off
            co_await close_with(Protocol::timeout_reply());
            co_return;
        }
        const char* begin = rbuf_.data() + rpos_;
        const auto* newline = static_cast<const char*>(std::memchr(begin, '\n', available()));
        std::optional<Step> step;
        if (newline == nullptr && available() < kMaxCommandLine) {
            co_await flush();  // answer everything pipelined so far before waiting for more
            if (!co_await read_more()) break;
            continue;
        }
        if (newline == nullptr || static_cast<std::size_t>(newline - begin) + 1 > kMaxCommandLine) {
            // Too long: drop everything up to the next LF, then say so, staying in sync.
            bool connected = true;
            while (newline == nullptr && connected) {
                rpos_ = rlen_ = 0;
                connected = co_await read_more();
                newline = static_cast<const char*>(std::memchr(rbuf_.data(), '\n', available()));
            }
            if (!connected) break;
            rpos_ = static_cast<std::size_t>(newline - rbuf_.data()) + 1;
            step = protocol_.on_line_too_long();
        } else {
            std::string_view line(begin, static_cast<std::size_t>(newline - begin));
            rpos_ += line.size() + 1;
            if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
            if (context_.disk_guard) protocol_.set_spare_storage(context_.disk_guard->spare());
            step = protocol_.on_line(line);
        }

        if (step->action == Action::start_tls) {
            // RFC 3207 / CVE-2011-0411: whatever the client pipelined behind STARTTLS was
            // sent in clear and is thrown away, never executed inside the TLS session.
            rpos_ = rlen_ = 0;
            out_ += step->reply;
            co_await flush();
            if (!co_await start_tls()) co_return;
            continue;
        }
        if (step->action == Action::start_data) {
            auto end = co_await receive_message(step->reply);
            if (!end) co_return;  // connection lost or timed out inside DATA
            step = std::move(end);
        }
        out_ += step->reply;
        if (step->action == Action::close) {
            co_await flush();
            co_return;
        }
        // A client pipelining thousands of commands without reading must not make us
        // hold all the answers: write them out as they pile up.
        if (out_.size() >= kMaxPendingReplies) co_await flush();
    }
    if (timed_out_) co_await close_with(Protocol::timeout_reply());
    else if (shutting_down_) co_await close_with(Protocol::shutdown_reply());
}

}  // namespace mxhook::smtp

namespace mxhook::smtp {

awaitable<bool> Session::start_tls() {
    if (timed_out_) co_return false;
    tls_context_ = context_.tls->current();
    tls_ = std::make_unique<asio::ssl::stream<asio::ip::tcp::socket&>>(socket_, *tls_context_);
    arm_deadline();
    boost::system::error_code ec;
    {
        const IoUnderWay handshake(io_pending_);
        co_await tls_->async_handshake(asio::ssl::stream_base::server, asio::redirect_error(use_awaitable, ec));
    }
    if (ec) {
        // Scanners and broken clients fail handshakes all day: worth a line, not an alarm.
        spdlog::info("smtp client={} TLS handshake failed: {}", client_ip_, ec.message());
        co_return false;
    }
    protocol_.on_tls_started();
    metrics::global()
        .smtp_tls_sessions[static_cast<std::size_t>(metrics::tls_version_from(SSL_get_version(tls_->native_handle())))]
        .add();
    tls_description_ = describe_tls(tls_->native_handle());
    spdlog::debug("smtp client={} TLS established: {}", client_ip_, tls_description_);
    co_return true;
}

// One message being received: what the log line, the trace header and meta.json need.
struct Session::Incoming {
    std::string id = spool::new_id();
    Envelope envelope;
    std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
    std::uint64_t size = 0;        // bytes of the client's message, our trace header excluded
    std::size_t trace_bytes = 0;   // our Received: header, at the start of message.eml
    std::string client_host;       // as written into the trace header
};

awaitable<std::optional<Step>> Session::receive_message(const std::string& reply354) {
    Incoming in;
    in.envelope = protocol_.envelope();
    if (!co_await begin_data(reply354)) co_return std::nullopt;  // nothing is on disk yet
    Draft draft;
    draft.id = in.id;
    const auto facts = co_await pump(draft, in);
    if (!facts) co_return std::nullopt;
    if (const auto refused = check_message(*facts, context_.protocol)) {
        co_await discard(draft);
        co_return finish(in, *refused);
    }
    // Without a decision API, sender checks or scanners the rest of the message, meta.json
    // and the commit go to the pool in one hand-off; with any of them, the commit waits.
    const bool deciding = context_.decision != nullptr && context_.decision->enabled();
    const bool judging = context_.auth != nullptr || context_.rspamd != nullptr || context_.clamd != nullptr;
    auto dkim = context_.auth != nullptr ? context_.auth->start_dkim() : nullptr;
    auto written = co_await write_out(draft, in, /*commit_now=*/!deciding && !judging, judging, dkim.get());
    if (!written || (!deciding && !judging)) co_return co_await answer_commit(draft, in, written);
    nlohmann::ordered_json verdicts;
    if (judging) {
        auto judged = co_await judge(draft, in, *written, std::move(dkim));
        if (judged.refusal) {
            co_await discard(draft);
            co_return finish(in, judged.refusal->first, judged.refusal->second);
        }
        verdicts = std::move(judged.verdicts);
    }
    if (deciding) {
        if (const auto refused = co_await ask_decision(draft, written->meta, verdicts)) {
            co_await discard(draft);
            co_return finish(in, refused->first, refused->second);
        }
    }
    auto committed = co_await commit(draft, written->meta);
    if (committed) committed->meta = std::move(written->meta);
    co_return co_await answer_commit(draft, in, committed);
}

Step Session::finish(const Incoming& in, DataOutcome outcome, const std::string& detail) {
    // One log line per transaction, and the reply.
    const auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - in.started);
    spdlog::info("smtp client={} helo={} sender=<{}> recipients={} size={} id={} outcome={}{}{}{} ms={}", client_ip_,
                 protocol_.helo(), in.envelope.sender, joined(in.envelope.recipients), in.size, in.id,
                 outcome_name(outcome), protocol_.tls_active() ? " tls=yes" : "", detail.empty() ? "" : " detail=",
                 detail, ms.count());
    Step step = protocol_.on_data_end(outcome, outcome == DataOutcome::denied || outcome == DataOutcome::infected ? detail : in.id);
    auto& counted = metrics::global();
    counted.smtp_transactions.add(reply_code(step.reply));
    counted.smtp_received_bytes.add(in.size);
    counted.smtp_message_size_bytes.observe(static_cast<double>(in.size));
    return step;
}

awaitable<bool> Session::begin_data(const std::string& reply354) {
    out_ += reply354;
    try {
        co_await flush();
    } catch (const std::exception&) {
        co_return false;  // the client went away before the 354
    }
    if (!host_lookup_done_) {  // a fast client: give the lookup the rest of its bound
        boost::system::error_code wait_ec;
        co_await host_lookup_timer_.async_wait(asio::redirect_error(use_awaitable, wait_ec));
        if (timed_out_) {  // SMTP_TIMEOUT_MS or SMTP_MAX_SESSION_MS ran out meanwhile
            co_await close_with(Protocol::timeout_reply());
            co_return false;
        }
    }
    co_return true;
}

std::string Session::trace_header(Incoming& in) {
    mail::TraceInfo trace;
    trace.helo = protocol_.helo();
    trace.client_ip = client_ip_;
    trace.client_host = in.client_host = client_host_;
    trace.by_host = context_.config.smtp_hostname;
    // RFC 3848: ESMTPS when the message came over STARTTLS.
    trace.protocol = std::string(protocol_.esmtp() ? "ESMTP" : "SMTP") + (protocol_.tls_active() ? "S" : "");
    trace.tls = tls_description_;
    trace.id = in.id;
    if (in.envelope.recipients.size() == 1) trace.recipient = in.envelope.recipients.front();
    trace.when = std::chrono::system_clock::now();
    return mail::received_header(trace);
}

awaitable<std::optional<MessageFacts>> Session::pump(Draft& draft, Incoming& in) {
    std::string& pending = draft.held;  // decoded bytes not yet written
    pending = trace_header(in);
    in.trace_bytes = pending.size();
    DataDecoder decoder;
    mail::HeaderScanner headers;  // the client's header section, counted and never kept
    bool store_failed = false;
    // Over the size bound or after a failed write: keep reading to the end of DATA, store nothing more.
    const auto storing = [&] { return !store_failed && in.size <= context_.protocol.max_message_bytes; };
    for (;;) {
        if (available() == 0) {
            // About to wait for the client: when it has nothing more for us right now, what
            // was decoded goes to disk first and the buffer is let go, so a stalled client
            // holds next to nothing. Under kIdleFlushBytes it waits for more instead (a pool
            // round trip for every few bytes a slow client drips would cost more than they do).
            if (client_idle()) {
                if (pending.size() >= kIdleFlushBytes) {
                    if (storing()) store_failed = !co_await store(draft);
                    pending.clear();
                }
                pending.shrink_to_fit();
            }
            if (!co_await read_more()) {
                co_await discard(draft);
                if (timed_out_) co_await close_with(Protocol::timeout_reply());
                spdlog::info("smtp client={} id={} connection lost during DATA after {} bytes", client_ip_, in.id,
                             in.size);
                co_return std::nullopt;
            }
        }
        const std::size_t before = pending.size();
        const auto result = decoder.feed(std::string_view(rbuf_.data() + rpos_, available()), pending);
        rpos_ += result.consumed;
        const std::string_view fresh = std::string_view(pending).substr(before);
        in.size += fresh.size();
        headers.feed(fresh);
        if (!storing()) {
            pending.clear();
        } else if (pending.size() >= kFlushBytes && !result.finished) {
            store_failed = !co_await store(draft);
            pending.clear();
        }
        // At the end, what is held goes to disk with the commit (write_out).
        if (result.finished) break;
    }
    MessageFacts facts;
    facts.size = in.size;
    facts.header_bytes = headers.bytes();
    facts.header_lines = headers.lines();
    facts.received_headers = headers.received();
    facts.bare_lf_refused = decoder.saw_bare_lf() && context_.config.smtp_bare_lf == BareLfPolicy::reject;
    facts.store_failed = store_failed;
    co_return facts;
}

namespace {

// Blocking, on the pool. One spool item; or, with routes, one per route the recipients
// take (those dropped or refused by a route get none); and in "each" mode one per
// recipient. The first keeps the message's id, the others get new ones. Their meta.json
// files are made one at a time from one working copy, so memory does not grow with
// recipients x header size.
Committed commit_item(spool::Spool& spool, spool::TmpItem& item, const spool::Meta& meta, RecipientMode mode,
                      const webhook::Routes* routes) {
    Committed out;
    std::vector<std::vector<std::string>> groups;
    if (routes != nullptr) {
        std::vector<std::pair<std::string, const webhook::Route*>> dropped;
        for (auto& group : webhook::group_recipients(*routes, meta.recipients, meta.sender, meta.headers, &dropped)) {
            groups.push_back(std::move(group.recipients));
        }
        for (const auto& [recipient, route] : dropped) {
            spdlog::info("route id={} recipient=<{}> action={} line={}", meta.id, recipient,
                         route->action == webhook::Route::Action::drop ? "drop" : "reject", route->line);
        }
        if (groups.empty()) {
            out.all_dropped = true;
            return out;
        }
    } else {
        groups.push_back(meta.recipients);
    }
    if (mode == RecipientMode::each) {
        std::vector<std::vector<std::string>> one_each;
        for (const auto& group : groups) {
            for (const auto& recipient : group) one_each.push_back({recipient});
        }
        groups = std::move(one_each);
    }
    if (groups.size() == 1 && groups.front() == meta.recipients) {
        spool.commit(item, meta);
        out.ids = {meta.id};
        return out;
    }
    out.meta_is_item = false;
    out.ids = {meta.id};
    for (std::size_t i = 1; i < groups.size(); ++i) out.ids.push_back(spool::new_id());
    spool::Meta one = meta;
    spool.commit(item, groups.size(), [&one, &groups, &out](std::size_t i) -> const spool::Meta& {
        one.id = out.ids[i];
        one.recipients = groups[i];
        return one;
    });
    return out;
}

}  // namespace

awaitable<bool> Session::store(Draft& draft) {
    auto& spool = context_.spool;
    const auto written = co_await try_blocking(context_.pool, [&spool, &draft] {
        if (!draft.item) draft.item = spool.create(draft.id);
        spool.append(*draft.item, draft.held);
    });
    if (!written) spdlog::error("spool: write of {} failed: {}", draft.id, written.failure().message);
    co_return written.ok();
}

namespace {

// A read-only stream over bytes in memory (std::ispanstream is C++23).
class ViewBuffer : public std::streambuf {
public:
    explicit ViewBuffer(std::string_view bytes) {
        char* begin = const_cast<char*>(bytes.data());  // never written: get area only
        setg(begin, begin, begin + bytes.size());
    }
};

}  // namespace

namespace {

// Reads message.eml back in pieces: the header section (up to `limit` bytes) is kept for
// meta.json and the forged-header search, and every byte after our trace header goes
// through DKIM. Blocking, on the pool.
std::string read_back(const std::filesystem::path& path, std::size_t limit, std::size_t trace_bytes,
                      auth::DkimMessage* dkim) {
    std::ifstream file(path, std::ios::binary);
    if (!file) throw std::system_error(errno, std::generic_category(), "cannot read back " + path.string());
    std::string section;
    std::vector<char> buffer(64 * 1024);
    std::size_t offset = 0;
    while (file) {
        file.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
        const auto n = static_cast<std::size_t>(file.gcount());
        if (n == 0) break;
        const std::string_view piece(buffer.data(), n);
        if (section.size() < limit) section.append(piece.substr(0, std::min(n, limit - section.size())));
        if (dkim != nullptr && offset + n > trace_bytes)
            dkim->feed(piece.substr(offset >= trace_bytes ? 0 : trace_bytes - offset));
        offset += n;
        if (dkim == nullptr && section.size() >= limit) break;
    }
    if (file.bad()) throw std::system_error(EIO, std::generic_category(), "cannot read back " + path.string());
    return section;
}

}  // namespace

awaitable<Result<Session::Written>> Session::write_out(Draft& draft, const Incoming& in, bool commit_now,
                                                       bool checking, auth::DkimMessage* dkim) {
    // The fields known on the io thread; the header section is added on the pool.
    spool::Meta meta;
    meta.id = in.id;
    // Milliseconds, as meta.json keeps it: the meta handed to the dispatcher is the file's.
    meta.created_at = std::chrono::floor<std::chrono::milliseconds>(std::chrono::system_clock::now());
    meta.sender = in.envelope.sender;
    meta.recipients = in.envelope.recipients;
    meta.remote = {client_ip_, in.client_host, protocol_.helo()};
    // The header section as stored: our trace header, then the client's section, which
    // the checks have bounded to max_header_bytes.
    const std::size_t limit = in.trace_bytes + context_.protocol.max_header_bytes;
    const std::size_t trace_bytes = in.trace_bytes;
    const std::string authserv_id = checking && context_.auth != nullptr ? context_.auth->authserv_id() : std::string();
    const std::vector<std::string> owned = checking ? owned_fields() : std::vector<std::string>();
    auto& spool = context_.spool;
    const RecipientMode mode = context_.config.webhook_recipient_mode;
    // Never written out so far: the whole message is in memory, and so is its header
    // section. Otherwise it is read back from the file (not kept while it streamed).
    const bool in_memory = !draft.item;
    // With sender checks such a message stays in memory until its verdicts are known.
    const bool keep = checking && in_memory;
    const std::shared_ptr<const webhook::Routes> routes = current_routes();
    auto written = co_await try_blocking(context_.pool, [&spool, &draft, &meta, &authserv_id, &owned, limit, trace_bytes,
                                                         mode, commit_now, checking, keep, in_memory, dkim, &routes] {
        if (!keep) {
            if (!draft.item) draft.item = spool.create(draft.id);
            if (!draft.held.empty()) spool.append(*draft.item, draft.held);
            spool.seal(*draft.item);  // before the file is read back (here or by the decision API)
        }
        std::string from_file;
        if (!in_memory) from_file = read_back(draft.item->dir() / "message.eml", limit, trace_bytes, dkim);
        const std::string_view section = in_memory ? std::string_view(draft.held).substr(0, limit)
                                                   : std::string_view(from_file);
        if (in_memory && dkim != nullptr && draft.held.size() > trace_bytes)
            dkim->feed(std::string_view(draft.held).substr(trace_bytes));
        if (dkim != nullptr) dkim->finish_input();
        ViewBuffer view(section);
        std::istream stream(&view);
        meta.headers = mail::read_headers(stream, limit);
        meta.from = mail::header_value(meta.headers, "From");
        meta.subject = mail::header_value(meta.headers, "Subject");
        Written out{std::move(meta), {}, {}};
        if (checking) {
            for (const auto& [first, second] : auth::forged_results(section, authserv_id, owned))
                out.forged.emplace_back(first, second);
        }
        if (commit_now) out.committed = commit_item(spool, *draft.item, out.meta, mode, routes.get());
        return out;
    });
    if (!keep) {
        draft.held.clear();
        draft.held.shrink_to_fit();
    }
    if (!written) spdlog::error("spool: cannot store {}: {}", in.id, written.failure().message);
    co_return written;
}

awaitable<Session::Judged> Session::judge(Draft& draft, const Incoming& in, Written& written,
                                          std::unique_ptr<auth::DkimMessage> dkim) {
    using namespace asio::experimental::awaitable_operators;
    spool::Meta& meta = written.meta;
    // The message as it stands: in memory, or in tmp/. Untouched until all three are done.
    scan::MessageBytes bytes;
    bytes.in_memory = !draft.item;
    if (bytes.in_memory) bytes.memory = draft.held;
    else bytes.file = draft.item->dir() / "message.eml";

    const auto authenticate = [&]() -> awaitable<auth::Verdicts> {
        if (context_.auth == nullptr) co_return auth::Verdicts{};
        auth::Checker::Message message;
        message.client_ip = client_ip_;
        message.helo = protocol_.helo();
        message.sender = spool::bare_address(in.envelope.sender);
        for (const auto& [name, value] : meta.headers) {
            if (boost::algorithm::iequals(name, "From")) message.from_values.push_back(value);
        }
        message.dkim = std::move(dkim);
        co_return co_await context_.auth->check(std::move(message), session_deadline_);
    };
    const auto spam = [&]() -> awaitable<std::optional<auth::SpamVerdict>> {
        if (context_.rspamd == nullptr) co_return std::nullopt;
        scan::Envelope envelope{in.id, client_ip_, in.client_host, protocol_.helo(),
                                spool::bare_address(in.envelope.sender), {}};
        for (const auto& r : in.envelope.recipients) envelope.recipients.push_back(spool::bare_address(r));
        co_return co_await context_.rspamd->check(envelope, bytes);
    };
    const auto virus = [&]() -> awaitable<std::optional<auth::VirusVerdict>> {
        if (context_.clamd == nullptr) co_return std::nullopt;
        co_return co_await context_.clamd->scan(bytes);
    };
    auto [verdicts, spam_verdict, virus_verdict] = co_await (authenticate() && spam() && virus());
    verdicts.spam = std::move(spam_verdict);
    verdicts.virus = std::move(virus_verdict);
    count_verdicts(verdicts);

    const Config& config = context_.config;
    if (verdicts.virus && verdicts.virus->infected && config.clamd_reject)
        co_return Judged{Refusal{DataOutcome::infected, verdicts.virus->name}, {}};
    if ((verdicts.virus && !verdicts.virus->checked && config.clamd_required) ||
        (verdicts.spam && !verdicts.spam->checked && config.rspamd_required))
        co_return Judged{Refusal{DataOutcome::scan_unavailable, verdicts.virus && !verdicts.virus->checked ? "clamd" : "rspamd"}, {}};

    // Our headers first; a sender's copies of them go (see write_out).
    const std::string authserv_id = context_.auth != nullptr ? context_.auth->authserv_id() : std::string();
    const std::string results = context_.auth != nullptr ? auth::authentication_results(authserv_id, verdicts) : "";
    const std::string header = results + auth::content_headers(verdicts);
    const std::vector<std::string> owned = owned_fields();
    // meta.json and the payload's message-headers show the message as it is posted.
    std::erase_if(meta.headers, [&authserv_id, &owned](const mail::Header& h) {
        if (boost::algorithm::iequals(h.first, "Authentication-Results"))
            return !authserv_id.empty() && auth::claims_authserv_id(h.second, authserv_id);
        return std::any_of(owned.begin(), owned.end(), [&h](const std::string& n) { return boost::algorithm::iequals(h.first, n); });
    });
    {
        ViewBuffer view(header);
        std::istream stream(&view);
        auto ours = mail::read_headers(stream, header.size() + 2);
        meta.headers.insert(meta.headers.begin(), ours.begin(), ours.end());
    }
    meta.auth = auth::summarize(verdicts);
    if (!results.empty()) spdlog::debug("auth id={} {}", in.id, results.substr(0, results.size() - 2));

    if (!draft.item) {  // all in memory: edited here (at most a flush's worth of bytes)
        std::string edited;
        edited.reserve(header.size() + draft.held.size());
        edited = header;
        std::size_t pos = 0;
        for (const auto& [first, second] : written.forged) {
            edited.append(draft.held, pos, first - pos);
            pos = second;
        }
        edited.append(draft.held, pos);
        draft.held = std::move(edited);
    } else {
        auto& spool = context_.spool;
        const auto rewritten = co_await try_blocking(context_.pool, [&spool, &draft, &header, &written] {
            spool.rewrite(*draft.item, header, written.forged);
        });
        if (!rewritten) {
            spdlog::error("spool: cannot add the verdict headers to {}: {}", in.id, rewritten.failure().message);
            co_return Judged{Refusal{DataOutcome::local_error, std::string()}, {}};
        }
    }
    // The header's value: after "Authentication-Results: ", without its CRLF.
    const std::string_view value = results.empty() ? std::string_view() : std::string_view(results).substr(24, results.size() - 26);
    co_return Judged{std::nullopt, auth::decision_json(verdicts, value)};
}

std::vector<std::string> Session::owned_fields() const {
    auth::Verdicts configured;
    if (context_.rspamd != nullptr) configured.spam = auth::SpamVerdict{};
    if (context_.clamd != nullptr) configured.virus = auth::VirusVerdict{};
    return auth::owned_fields(configured);
}

awaitable<Step> Session::answer_commit(Draft& draft, const Incoming& in, Result<Written>& written) {
    if (written && written->committed.all_dropped) {
        // Every recipient's route is drop: taken (250) and not kept.
        co_await discard(draft);
        co_return finish(in, DataOutcome::discarded, "route=drop");
    }
    // An empty list: the commit failed (logged) and nothing was acknowledged.
    std::vector<std::string> ids;
    if (written) ids = std::move(written->committed.ids);
    if (ids.empty()) co_await discard(draft);
    if (context_.on_queued) {
        if (ids.size() == 1 && written->committed.meta_is_item) {
            context_.on_queued(ids.front(), std::move(written->meta));
        } else {
            for (const auto& queued : ids) context_.on_queued(queued, std::nullopt);
        }
    }
    Step step = ids.empty() ? finish(in, DataOutcome::local_error)
                            : finish(in, DataOutcome::queued, ids.size() > 1 ? "items=" + joined(ids) : std::string());
    // A commit runs on the pool and cannot be abandoned half-way, so the session bound may
    // pass while it runs. The message still gets its own answer: a 421 alone for a message
    // that was committed would make the client send it again. Then the 421.
    if (out_of_time()) {
        expire();
        spdlog::info("smtp client={} id={} session bound passed during the commit: answered, then 421", client_ip_,
                     in.id);
        step.reply += Protocol::timeout_reply();
        step.action = Action::close;
    }
    co_return step;
}

awaitable<void> Session::discard(Draft& draft) {
    draft.held.clear();
    if (!draft.item) co_return;  // never written out: nothing on disk
    auto& spool = context_.spool;
    const auto discarded = co_await try_blocking(context_.pool, [&spool, &draft] { spool.discard(*draft.item); });
    // What is left is never acknowledged; the next start clears tmp/.
    if (!discarded) spdlog::error("spool: cannot discard {}: {}", draft.id, discarded.failure().message);
}

awaitable<std::optional<Session::Refusal>> Session::ask_decision(const Draft& draft, const spool::Meta& meta,
                                                                 const nlohmann::ordered_json& auth) {
    using Answer = std::optional<Refusal>;
    auto* client = context_.decision;
    if (client == nullptr || !client->enabled()) co_return Answer{};

    std::string raw_mime;
    if (client->mode() == DecisionMode::full && !draft.item) {
        raw_mime = draft.held;
    } else if (client->mode() == DecisionMode::full) {
        const auto path = draft.item->dir() / "message.eml";
        auto read = co_await try_blocking(context_.pool, [&path] { return spool::read_message(path); });
        if (!read) {
            spdlog::error("spool: cannot read {} for the decision API: {}", meta.id, read.failure().message);
            co_return Answer{{DataOutcome::local_error, std::string()}};
        }
        raw_mime = std::move(*read);
    }
    // The decision API may take longer than the session may last: the session bound wins,
    // the request is cancelled (curl drops it) and the message is not taken.
    using namespace asio::experimental::awaitable_operators;
    const auto abandoned = [this, &meta] {
        spdlog::info("decision id={} abandoned: SMTP_MAX_SESSION_MS passed first", meta.id);
        expire();
        return Answer{{DataOutcome::timed_out, std::string()}};
    };
    if (out_of_time()) co_return abandoned();
    asio::steady_timer session_bound(socket_.get_executor(), session_deadline_);
    auto raced = co_await (client->decide(meta, raw_mime, auth) || session_bound.async_wait(use_awaitable));
    if (raced.index() == 1) co_return abandoned();
    const decision::Decision answer = std::move(std::get<0>(raced));
    count_decision(answer.verdict);
    switch (answer.verdict) {
        case decision::Verdict::allow: co_return Answer{};
        case decision::Verdict::deny: co_return Answer{{DataOutcome::denied, decision::deny_text(answer)}};
        case decision::Verdict::silent_deny:
            spdlog::info("decision id={} silent_deny reason=\"{}\" message=\"{}\"", meta.id, answer.reason,
                         answer.message);
            co_return Answer{{DataOutcome::discarded, std::string()}};
        case decision::Verdict::unavailable: break;
    }
    spdlog::warn("decision id={} unavailable: {}", meta.id, answer.reason);
    co_return Answer{{DataOutcome::decision_unavailable, answer.reason}};
}

awaitable<Result<Session::Written>> Session::commit(Draft& draft, const spool::Meta& meta) {
    auto& spool = context_.spool;
    const RecipientMode mode = context_.config.webhook_recipient_mode;
    const std::shared_ptr<const webhook::Routes> routes = current_routes();
    auto committed = co_await try_blocking(context_.pool, [&spool, &draft, &meta, mode, &routes] {
        if (!draft.item) {  // kept in memory for the sender checks
            draft.item = spool.create(draft.id);
            spool.append(*draft.item, draft.held);
        }
        return Written{spool::Meta(), commit_item(spool, *draft.item, meta, mode, routes.get()), {}};
    });
    draft.held.clear();
    draft.held.shrink_to_fit();
    if (!committed) spdlog::error("spool: commit of {} failed: {}", meta.id, committed.failure().message);
    co_return committed;
}

}  // namespace mxhook::smtp
