#include "mxhook/smtp/session.hpp"

#include "mxhook/blocking.hpp"
#include "mxhook/mail/headers.hpp"
#include "mxhook/mail/received.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>
#include <optional>

namespace mxhook::smtp {
namespace asio = boost::asio;
using asio::awaitable;
using asio::use_awaitable;

namespace {

// RFC 5321 4.5.3.1.4: a command line is at most 512 octets, CRLF included.
constexpr std::size_t kMaxCommandLine = 512;
// Replies are written once this much has piled up, even mid-pipeline.
constexpr std::size_t kMaxPendingReplies = 16 * 1024;
// Decoded DATA is written to the spool in pieces of about this size.
constexpr std::size_t kFlushBytes = 256 * 1024;
// How long a client may take to read our last reply before we drop it.
constexpr auto kFinalReplyTimeout = std::chrono::seconds(10);
// The reverse-DNS name is a courtesy for the trace header and meta.json: never wait long.
constexpr auto kReverseLookupBound = std::chrono::seconds(3);

std::string joined(const std::vector<std::string>& items) {
    std::string out;
    for (const auto& item : items) {
        if (!out.empty()) out += ',';
        out += item;
    }
    return out;
}

}  // namespace

Session::Session(asio::ip::tcp::socket socket, SessionContext& context, std::string client_ip)
    : socket_(std::move(socket)),
      context_(context),
      protocol_(context.protocol),
      watchdog_timer_(socket_.get_executor()),
      session_deadline_(std::chrono::steady_clock::now() + context.config.smtp_max_session),
      client_ip_(std::move(client_ip)),
      host_lookup_timer_(socket_.get_executor(), kReverseLookupBound) {}

void Session::arm_deadline() { deadline_ = std::chrono::steady_clock::now() + context_.config.smtp_timeout; }

void Session::shutdown() {
    shutting_down_ = true;
    // An idle session is parked in a read: wake it so it can say 421. A session in
    // DATA is left alone to finish its message (bounded by the shutdown grace).
    if (!protocol_.in_data()) {
        boost::system::error_code ec;
        socket_.cancel(ec);
    }
}

// Looks up the client's reverse-DNS name on the ReverseDns threads while the dialogue
// goes on. DATA waits for the answer only as long as the bound lets it
// (host_lookup_timer_ expires kReverseLookupBound after the connect).
void Session::lookup_client_host() {
    boost::system::error_code ec;
    const auto endpoint = socket_.remote_endpoint(ec);
    if (ec || context_.reverse_dns == nullptr) {
        host_lookup_done_ = true;
        return;
    }
    std::weak_ptr<Session> weak = weak_from_this();
    context_.reverse_dns->lookup(endpoint.address(), socket_.get_executor(), [weak](std::string name) {
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
        if (std::chrono::steady_clock::now() < due()) continue;  // the deadline moved on
        if (timed_out_) {  // not even the timeout reply could be written
            socket_.close(ec);
            break;
        }
        timed_out_ = true;
        deadline_ = std::chrono::steady_clock::now() + kFinalReplyTimeout;
        socket_.cancel(ec);
        host_lookup_timer_.cancel();  // a DATA waiting for the client's name: time is up too
    }
}

awaitable<bool> Session::read_more() {
    if (rpos_ > 0) {
        std::memmove(rbuf_.data(), rbuf_.data() + rpos_, available());
        rlen_ -= rpos_;
        rpos_ = 0;
    }
    if (rlen_ == rbuf_.size()) co_return true;  // caller consumes before reading again
    arm_deadline();
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
    if (!timed_out_) arm_deadline();
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
    tls_context_ = context_.tls->current();
    tls_ = std::make_unique<asio::ssl::stream<asio::ip::tcp::socket&>>(socket_, *tls_context_);
    arm_deadline();
    boost::system::error_code ec;
    co_await tls_->async_handshake(asio::ssl::stream_base::server, asio::redirect_error(use_awaitable, ec));
    if (ec) {
        // Scanners and broken clients fail handshakes all day: worth a line, not an alarm.
        spdlog::info("smtp client={} TLS handshake failed: {}", client_ip_, ec.message());
        co_return false;
    }
    protocol_.on_tls_started();
    tls_description_ = describe_tls(tls_->native_handle());
    spdlog::debug("smtp client={} TLS established: {}", client_ip_, tls_description_);
    co_return true;
}

awaitable<void> Session::discard(spool::TmpItem& item) {
    auto& spool = context_.spool;
    co_await run_blocking(context_.pool, [&spool, &item] { spool.discard(item); });
}

awaitable<std::optional<Step>> Session::receive_message(const std::string& reply354) {
    const auto started = std::chrono::steady_clock::now();
    const std::string id = spool::new_id();
    const Envelope envelope = protocol_.envelope();
    auto& spool = context_.spool;
    auto& pool = context_.pool;

    // One log line per transaction, and the reply; `ids` are the queued spool items.
    auto finish = [&](DataOutcome outcome, std::size_t size, const std::string& detail = {}) {
        const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started);
        spdlog::info("smtp client={} helo={} sender=<{}> recipients={} size={} id={} outcome={}{}{}{} ms={}",
                     client_ip_, protocol_.helo(), envelope.sender, joined(envelope.recipients), size, id,
                     outcome_name(outcome), protocol_.tls_active() ? " tls=yes" : "", detail.empty() ? "" : " detail=",
                     detail, ms.count());
        return std::optional<Step>(protocol_.on_data_end(outcome, outcome == DataOutcome::denied ? detail : id));
    };

    spool::TmpItem item;
    try {
        item = co_await run_blocking(pool, [&spool, &id] { return spool.create(id); });
    } catch (const std::exception& e) {
        spdlog::error("spool: cannot create {}: {}", id, e.what());
        co_return finish(DataOutcome::local_error, 0);
    }
    out_ += reply354;
    bool greeted = false;
    try {
        co_await flush();
        greeted = true;
    } catch (const std::exception&) {
    }
    if (!greeted) {  // the client went away before the 354: nothing may stay in tmp/
        co_await discard(item);
        co_return std::nullopt;
    }

    if (!host_lookup_done_) {  // a fast client: give the lookup the rest of its bound
        boost::system::error_code wait_ec;
        co_await host_lookup_timer_.async_wait(asio::redirect_error(use_awaitable, wait_ec));
        if (timed_out_) {  // SMTP_TIMEOUT_MS or SMTP_MAX_SESSION_MS ran out meanwhile
            co_await discard(item);
            co_await close_with(Protocol::timeout_reply());
            co_return std::nullopt;
        }
    }
    mail::TraceInfo trace;
    trace.helo = protocol_.helo();
    trace.client_ip = client_ip_;
    trace.client_host = client_host_;
    trace.by_host = context_.config.smtp_hostname;
    // RFC 3848: ESMTPS when the message came over STARTTLS.
    trace.protocol = std::string(protocol_.esmtp() ? "ESMTP" : "SMTP") + (protocol_.tls_active() ? "S" : "");
    trace.tls = tls_description_;
    trace.id = id;
    if (envelope.recipients.size() == 1) trace.recipient = envelope.recipients.front();
    trace.when = std::chrono::system_clock::now();

    std::string pending = mail::received_header(trace);
    const auto trace_lines = static_cast<std::size_t>(std::count(pending.begin(), pending.end(), '\n'));
    // Bounded: the client's header section may take max_header_bytes after our trace header.
    mail::HeaderCollector header_section(pending.size() + context_.protocol.max_header_bytes);
    header_section.feed(pending);

    DataDecoder decoder;
    std::size_t size = 0;  // bytes of the client's message, our trace header excluded
    bool too_big = false;
    bool write_failed = false;
    for (;;) {
        if (available() == 0 && !co_await read_more()) {
            co_await discard(item);
            if (timed_out_) co_await close_with(Protocol::timeout_reply());
            spdlog::info("smtp client={} id={} connection lost during DATA after {} bytes", client_ip_, id, size);
            co_return std::nullopt;
        }
        const std::size_t before = pending.size();
        const auto result = decoder.feed(std::string_view(rbuf_.data() + rpos_, available()), pending);
        rpos_ += result.consumed;
        const std::string_view fresh = std::string_view(pending).substr(before);
        size += fresh.size();
        if (!header_section.done()) header_section.feed(fresh);
        if (size > context_.protocol.max_message_bytes) too_big = true;
        if (too_big || write_failed) {
            pending.clear();  // keep reading to the end of DATA, store nothing more
        } else if (pending.size() >= kFlushBytes || result.finished) {
            try {
                co_await run_blocking(pool, [&spool, &item, &pending] { spool.append(item, pending); });
            } catch (const std::exception& e) {
                spdlog::error("spool: write of {} failed: {}", id, e.what());
                write_failed = true;
            }
            pending.clear();
        }
        if (result.finished) break;
    }

    const bool refuse_bare_lf = decoder.saw_bare_lf() && context_.config.smtp_bare_lf == BareLfPolicy::reject;
    const auto& section = header_section.section();
    // The client's own lines only: not our trace header, not the empty line that ends the section.
    const auto section_lines = static_cast<std::size_t>(std::count(section.begin(), section.end(), '\n'));
    const std::size_t client_lines = section_lines - trace_lines - (header_section.done() ? 1 : 0);
    const bool headers_too_big = header_section.truncated() || client_lines > context_.protocol.max_header_lines;
    auto headers = mail::parse_headers(section);
    const bool loop = mail::count_headers(headers, "Received") > context_.protocol.max_received_headers + 1;
    if (too_big || headers_too_big || write_failed || refuse_bare_lf || loop) {
        co_await discard(item);
        co_return finish(too_big           ? DataOutcome::too_big
                         : headers_too_big ? DataOutcome::headers_too_big
                         : write_failed    ? DataOutcome::local_error
                         : refuse_bare_lf  ? DataOutcome::bare_lf
                                           : DataOutcome::loop,
                         size);
    }

    spool::Meta meta;
    meta.id = id;
    meta.created_at = std::chrono::system_clock::now();
    meta.sender = envelope.sender;
    meta.recipients = envelope.recipients;
    meta.from = mail::header_value(headers, "From");
    meta.subject = mail::header_value(headers, "Subject");
    meta.headers = std::move(headers);
    meta.remote = {client_ip_, trace.client_host, protocol_.helo()};

    if (auto refused = co_await ask_decision(item, meta)) {
        co_await discard(item);
        co_return finish(refused->first, size, refused->second);
    }

    std::vector<std::string> ids;
    try {
        ids = co_await commit(item, meta);
    } catch (const std::exception& e) {
        spdlog::error("spool: commit of {} failed: {}", id, e.what());
    }
    if (ids.empty()) {
        co_await discard(item);
        co_return finish(DataOutcome::local_error, size);
    }
    if (context_.on_queued) {
        for (const auto& queued : ids) context_.on_queued(queued);
    }
    co_return finish(DataOutcome::queued, size, ids.size() > 1 ? "items=" + joined(ids) : std::string());
}

awaitable<std::optional<std::pair<DataOutcome, std::string>>> Session::ask_decision(const spool::TmpItem& item,
                                                                                   const spool::Meta& meta) {
    using Result = std::optional<std::pair<DataOutcome, std::string>>;
    auto* client = context_.decision;
    if (client == nullptr || !client->enabled()) co_return Result{};

    std::string raw_mime;
    if (client->mode() == DecisionMode::full) {
        bool read = false;
        try {
            const auto path = item.dir() / "message.eml";
            raw_mime = co_await run_blocking(context_.pool, [&path] { return spool::read_message(path); });
            read = true;
        } catch (const std::exception& e) {
            spdlog::error("spool: cannot read {} for the decision API: {}", meta.id, e.what());
        }
        if (!read) co_return Result{{DataOutcome::local_error, std::string()}};
    }
    const decision::Decision answer = co_await client->decide(meta, raw_mime);
    switch (answer.verdict) {
        case decision::Verdict::allow: co_return Result{};
        case decision::Verdict::deny: co_return Result{{DataOutcome::denied, decision::deny_text(answer)}};
        case decision::Verdict::silent_deny:
            spdlog::info("decision id={} silent_deny reason=\"{}\" message=\"{}\"", meta.id, answer.reason,
                         answer.message);
            co_return Result{{DataOutcome::discarded, std::string()}};
        case decision::Verdict::unavailable: break;
    }
    spdlog::warn("decision id={} unavailable: {}", meta.id, answer.reason);
    co_return Result{{DataOutcome::decision_unavailable, answer.reason}};
}

awaitable<std::vector<std::string>> Session::commit(spool::TmpItem& item, const spool::Meta& meta) {
    std::vector<spool::Meta> metas;
    if (context_.config.webhook_recipient_mode == RecipientMode::each && meta.recipients.size() > 1) {
        // One item per recipient: the first keeps the message's id, the others get new ones.
        for (std::size_t i = 0; i < meta.recipients.size(); ++i) {
            spool::Meta one = meta;
            if (i > 0) one.id = spool::new_id();
            one.recipients = {meta.recipients[i]};
            metas.push_back(std::move(one));
        }
    } else {
        metas.push_back(meta);
    }
    auto& spool = context_.spool;
    co_await run_blocking(context_.pool, [&spool, &item, &metas] { spool.commit(item, metas); });
    std::vector<std::string> ids;
    for (const auto& m : metas) ids.push_back(m.id);
    co_return ids;
}

}  // namespace mxhook::smtp
