#pragma once
// One SMTP connection: owns the socket, runs the protocol state machine, streams DATA
// through the decoder into the spool, and commits before it answers 250. Straight-line
// coroutine code; a watchdog timer enforces SMTP_TIMEOUT_MS on every read and write and
// SMTP_MAX_SESSION_MS on the whole session, whatever it is doing.
//
// Memory: a session holds its 16 KiB read buffer and, while DATA streams, at most one
// piece of decoded bytes waiting to be written (flushed at 64 KiB, and from 4 KiB on
// before every wait for the client, so a stalled client holds less than that). The header
// section is never held apart while it streams, only counted (mail::HeaderScanner); after
// the end of data it is parsed from that piece when the whole message fits in it, and read
// back from the spool otherwise.

#include "mxhook/auth/checker.hpp"
#include "mxhook/blocking.hpp"
#include "mxhook/scan/scanners.hpp"
#include "mxhook/config.hpp"
#include "mxhook/decision/client.hpp"
#include "mxhook/smtp/data_decoder.hpp"
#include "mxhook/smtp/protocol.hpp"
#include "mxhook/dns/resolver.hpp"
#include "mxhook/smtp/tls.hpp"
#include "mxhook/spool/disk_guard.hpp"
#include "mxhook/spool/spool.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>

#include <array>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace mxhook::webhook {
class Routes;
}

namespace mxhook::smtp {

// What every session shares; lives as long as the server.
struct SessionContext {
    const Config& config;
    ProtocolSettings protocol;
    spool::Spool& spool;
    boost::asio::thread_pool& pool;
    // Called on the io thread after 250, for each item committed; with its meta.json's
    // content when the message is one item (for the dispatcher, which then need not read it).
    std::function<void(const std::string& id, std::optional<spool::Meta> meta)> on_queued;
    decision::Client* decision = nullptr;                  // asked before commit when enabled
    TlsCredentials* tls = nullptr;                         // STARTTLS offered when set
    dns::Resolver* dns = nullptr;                          // client names looked up when set
    const spool::DiskGuard* disk_guard = nullptr;          // MAIL gets 452 below SPOOL_MIN_FREE_BYTES
    auth::Checker* auth = nullptr;                         // sender checks after DATA when set
    scan::Rspamd* rspamd = nullptr;                        // spam verdict after DATA when set
    scan::Clamd* clamd = nullptr;                          // virus scan after DATA when set
    // The routes in force (WEBHOOK_ROUTES), read and replaced on the io thread only; null
    // pointer or null routes: no routes.
    const std::shared_ptr<const webhook::Routes>* routes = nullptr;
};

// What a commit made: the ids of the items (empty: it failed, or every recipient was
// dropped by a route).
struct Committed {
    std::vector<std::string> ids;
    bool all_dropped = false;
    bool meta_is_item = true;  // one item whose meta is the message's (recipients untouched)
};

class Session : public std::enable_shared_from_this<Session> {
public:
    // client_ip: the client's address as text (IPv4-mapped IPv6 shown as IPv4): the peer's,
    // or the one a trusted balancer's PROXY header gave.
    // initial_bytes: what arrived behind a PROXY header, read before anything else.
    Session(boost::asio::ip::tcp::socket socket, SessionContext& context, std::string client_ip,
            std::string_view initial_bytes = {});

    boost::asio::awaitable<void> run();
    // Server shutdown: an idle session answers 421 and closes at once; a session in
    // DATA finishes its message first.
    void shutdown();

private:
    boost::asio::awaitable<void> serve();
    boost::asio::awaitable<void> watchdog();
    boost::asio::awaitable<bool> read_more();
    boost::asio::awaitable<void> flush();
    // Runs the DATA phase after the DATA command was accepted (reply354 is its 354):
    // 354, pump, checks, write_out (and with a decision API: decide, commit), answer.
    // Returns the final reply, or nullopt when the connection was lost.
    boost::asio::awaitable<std::optional<Step>> receive_message(const std::string& reply354);

    // --- the steps of receive_message ---
    struct Incoming;  // one message being received
    // The message on its way to the spool: held in memory until a flush makes tmp/<id>/
    // (the first write creates it), so a message that fits one flush reaches the disk in
    // the same hand-off as its commit.
    struct Draft {
        std::string id;
        std::string held;                       // decoded bytes not yet written
        std::optional<spool::TmpItem> item;     // tmp/<id>/, once something was written
    };
    // What write_out and commit hand back: meta.json's content and the committed ids
    // (empty when not committed yet).
    std::shared_ptr<const webhook::Routes> current_routes() const {
        return context_.routes != nullptr ? *context_.routes : nullptr;
    }
    struct Written {
        spool::Meta meta;
        Committed committed;
        // Authentication-Results fields the client sent that claim our authserv-id: byte
        // ranges of the message, removed before ours is added (only with sender checks).
        std::vector<std::pair<std::uint64_t, std::uint64_t>> forged;
    };
    // Writes the 354 and gives the reverse-DNS lookup the rest of its bound; false when the
    // client went away or the session's time ran out meanwhile.
    boost::asio::awaitable<bool> begin_data(const std::string& reply354);
    // Our Received: header for the message, which goes first in message.eml.
    std::string trace_header(Incoming& in);
    // Streams the client's message behind our trace header into the draft (flushing to
    // tmp/ at 64 KiB, and before waiting on an idle client). nullopt when the connection
    // was lost or timed out (the client has been told what it can be told; the draft is
    // discarded).
    boost::asio::awaitable<std::optional<MessageFacts>> pump(Draft& draft, Incoming& in);
    // Appends what the draft holds to message.eml on the pool (creating the item first);
    // false (logged) when the write failed.
    boost::asio::awaitable<bool> store(Draft& draft);
    // One hand-off: the rest of the message to disk, meta.json's content (the header section
    // from memory, or read back from the file) and, when commit_now, the commit.
    // With sender checks (`checking`), a message held whole in memory stays there (our
    // Authentication-Results header goes in front of it, known only after the checks), the
    // forged Authentication-Results fields are found, and `dkim` (when set) reads the message.
    boost::asio::awaitable<Result<Written>> write_out(Draft& draft, const Incoming& in, bool commit_now,
                                                      bool checking, auth::DkimMessage* dkim);
    using Refusal = std::pair<DataOutcome, std::string>;  // outcome, and the text for the reply
    // The decision API's additions to `message` (auth, spam, virus), or why the message is
    // refused (a virus with CLAMD_ACTION=reject, an unchecked message with *_REQUIRED, a
    // spool error).
    struct Judged {
        std::optional<Refusal> refusal;
        nlohmann::ordered_json verdicts;
    };
    // Runs the sender checks and the content scanners side by side and writes their
    // verdicts into the message (our headers first, a sender's copies of them gone) and into
    // `written.meta`.
    boost::asio::awaitable<Judged> judge(Draft& draft, const Incoming& in, Written& written,
                                         std::unique_ptr<auth::DkimMessage> dkim);
    // Header fields the configured scanners write, which a sender may not bring along.
    std::vector<std::string> owned_fields() const;
    // Asks the decision API (when enabled); nullopt means allow, else the outcome to answer.
    // Abandoned when SMTP_MAX_SESSION_MS passes first (DataOutcome::timed_out).
    // In full mode the message is read back from the draft: from tmp/, or from memory when
    // it was never written out.
    boost::asio::awaitable<std::optional<Refusal>> ask_decision(const Draft& draft, const spool::Meta& meta,
                                                                const nlohmann::ordered_json& auth);
    // Commits a written draft (writing it out first when it is still all in memory): one
    // spool item, or one per recipient in "each" mode.
    boost::asio::awaitable<Result<Written>> commit(Draft& draft, const spool::Meta& meta);
    // Answers a commit (250 with the ids, or 451 and the draft discarded). A commit cannot
    // be abandoned: when SMTP_MAX_SESSION_MS passed while it ran, the message's own answer
    // comes first, then the 421.
    boost::asio::awaitable<Step> answer_commit(Draft& draft, const Incoming& in, Result<Written>& written);
    boost::asio::awaitable<void> discard(Draft& draft);
    // Logs the transaction's line and ends the DATA phase in the protocol.
    Step finish(const Incoming& in, DataOutcome outcome, const std::string& detail = {});

    boost::asio::awaitable<void> close_with(std::string_view reply);
    // Runs the handshake after "220 Ready to start TLS"; false when it failed.
    boost::asio::awaitable<bool> start_tls();
    // Starts SMTP_TIMEOUT_MS for the read or write about to begin (not once time is up).
    void arm_deadline();
    // The session's time is up (a read or write took too long, or SMTP_MAX_SESSION_MS
    // passed): nothing more is read, and only the final reply may still be written, within
    // a short bound.
    void expire();
    // SMTP_MAX_SESSION_MS has passed, or the session already timed out.
    bool out_of_time() const;
    // The client has nothing more for us right now (the kernel holds no unread bytes).
    bool client_idle();
    void lookup_client_host();
    std::size_t available() const { return rlen_ - rpos_; }

    boost::asio::ip::tcp::socket socket_;
    SessionContext& context_;
    Protocol protocol_;
    boost::asio::steady_timer watchdog_timer_;
    std::chrono::steady_clock::time_point deadline_;          // of the read or write under way
    bool io_pending_ = false;                                 // a read or write is under way
    std::chrono::steady_clock::time_point session_deadline_;  // SMTP_MAX_SESSION_MS from the start
    std::shared_ptr<boost::asio::ssl::context> tls_context_;  // kept alive while tls_ uses it
    std::unique_ptr<boost::asio::ssl::stream<boost::asio::ip::tcp::socket&>> tls_;
    std::string tls_description_;
    std::string client_ip_;
    std::string client_host_;              // reverse-DNS name once known, else ""
    boost::asio::steady_timer host_lookup_timer_;  // expires at the lookup's bound; cancelled on its answer
    bool host_lookup_done_ = false;
    std::string out_;                      // replies not yet written
    std::array<char, 16384> rbuf_{};       // bytes read, [rpos_, rlen_) not yet consumed
    std::size_t rpos_ = 0;
    std::size_t rlen_ = 0;
    bool shutting_down_ = false;
    bool timed_out_ = false;
    bool closed_ = false;
};

}  // namespace mxhook::smtp
