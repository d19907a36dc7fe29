// mxhook: wiring only. Read the configuration, build the pieces, run the loop.

#include "mxhook/auth/checker.hpp"
#include "mxhook/config.hpp"
#include "mxhook/decision/client.hpp"
#include "mxhook/drain_monitor.hpp"
#include "mxhook/healthcheck.hpp"
#include "mxhook/http/client.hpp"
#include "mxhook/log_format.hpp"
#include "mxhook/metrics/metrics.hpp"
#include "mxhook/metrics/server.hpp"
#include "mxhook/smtp/server.hpp"
#include "mxhook/smtp/tls.hpp"
#include "mxhook/spool/adopt.hpp"
#include "mxhook/spool/disk_guard.hpp"
#include "mxhook/spool/spool.hpp"
#include "mxhook/tool/drain_command.hpp"
#include "mxhook/tool/spool_command.hpp"
#include "mxhook/webhook/dispatcher.hpp"
#include "mxhook/webhook/routes.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <exception>
#include <functional>
#include <memory>
#include <iostream>

#include <sys/statvfs.h>
#include <unistd.h>

namespace {

using namespace mxhook;

// PTR lookups in flight at once (c-ares, on the io thread; one that gets no answer lasts
// c-ares's timeout and tries); past this many a new client simply gets no name.
constexpr std::size_t kReverseDnsMaxInFlight = 256;

void setup_logging(const Config& config) {
    auto logger = spdlog::stderr_color_mt("mxhook");
    spdlog::set_default_logger(logger);
    if (config.log_json) spdlog::set_formatter(make_json_formatter());
    else spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %^%l%$ %v", spdlog::pattern_time_type::utc);
    spdlog::set_level(spdlog::level::from_str(config.log_level));
}

// Why the spool cannot take mail now, for /readyz: a state directory mxhook may not write,
// or a filesystem mounted read-only. Blocking (access, statvfs): on the pool.
std::optional<std::string> spool_problem(const spool::Layout& layout, spool::DiskGuard& guard) {
    for (const auto* dir : {&layout.tmp, &layout.pending, &layout.processing, &layout.dead}) {
        if (::access(dir->c_str(), W_OK | X_OK) != 0) return "spool: cannot write " + dir->string();
    }
    struct statvfs fs {};
    if (::statvfs(layout.tmp.c_str(), &fs) != 0) return "spool: cannot stat " + layout.tmp.string();
    if ((fs.f_flag & ST_RDONLY) != 0) return "spool: " + layout.tmp.string() + " is on a read-only filesystem";
    if (std::uint64_t free = 0; guard.check_low(&free)) {
        return "spool: " + std::to_string(free) + " bytes free, below SPOOL_MIN_FREE_BYTES=" +
               std::to_string(guard.min_free());
    }
    return std::nullopt;
}

metrics::SpoolSnapshot spool_snapshot(const spool::Spool& spool) {
    const auto census = spool.census();
    const auto state = [](const spool::StateCensus& c) { return metrics::SpoolState{c.items, c.bytes}; };
    metrics::SpoolSnapshot out{state(census.tmp), state(census.pending), state(census.processing),
                               state(census.dead), 0, true};
    std::optional<std::int64_t> oldest = census.pending.oldest_unix_ms;
    if (census.processing.oldest_unix_ms && (!oldest || *census.processing.oldest_unix_ms < *oldest)) {
        oldest = census.processing.oldest_unix_ms;
    }
    if (oldest) {
        const auto now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                std::chrono::system_clock::now().time_since_epoch())
                                .count();
        out.oldest_pending_age_seconds = std::max<double>(0, static_cast<double>(now_ms - *oldest) / 1000.0);
    }
    return out;
}

int run(const Config& config) {
    metrics::global().start_time_seconds =
        std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    boost::asio::io_context io(1);
    // SIGUSR1 (`mxhook drain`) is caught from here on, before the spool lock that tells
    // `mxhook drain` whom to signal is taken: its default action would end the process,
    // and one that arrives while the spool is recovered waits for the handler below.
    boost::asio::signal_set usr1(io, SIGUSR1);
    // The certificate first: a pair that does not load stops the start before anything
    // touches the spool.
    std::unique_ptr<smtp::TlsCredentials> tls;
    if (!config.smtp_tls_cert_path.empty()) {
        tls = std::make_unique<smtp::TlsCredentials>(io, config.smtp_tls_cert_path, config.smtp_tls_key_path,
                                                     config.smtp_tls_watch_interval);
        tls->watch();
        spdlog::info("tls: STARTTLS offered with {}", config.smtp_tls_cert_path);
    }

    // Before anything is removed or moved: one owner per spool, and a layout in which
    // recovery cannot touch acknowledged mail (a wrong setting stops the start instead).
    spool::Spool spool({config.spool_tmp_dir, config.spool_pending_dir, config.spool_processing_dir,
                        config.spool_dead_dir});
    spool.ensure_dirs();
    const spool::InstanceLock lock(config.spool_dir);
    // The last run's drain report answers no request of this one (`mxhook drain` waits
    // for a report newer than its request, but clocks can step back).
    {
        std::error_code ignored;
        std::filesystem::remove(tool::drain_status_path(config.spool_dir), ignored);
    }
    tool::check_spool_layout({config.spool_dir, config.spool_tmp_dir, config.spool_pending_dir,
                              config.spool_processing_dir, config.spool_dead_dir});
    if (const std::size_t returned = spool::return_unfinished_adoption(spool, config.spool_dir); returned > 0) {
        spdlog::warn("spool: {} item(s) an unfinished `mxhook spool adopt` of this spool had taken are back in "
                     "pending/ or dead/ (delivered here; twice if that adopt had already moved them)",
                     returned);
    }
    const auto recovered = spool.recover(config.max_interrupted_attempts);
    for (const auto& name : recovered.removed_tmp_names) {
        // "<id>.delivered": a delivered item that was on its way out or kept for reuse.
        spdlog::info("spool: removed {} {}", name.ends_with(".delivered") ? "delivered" : "unacknowledged",
                     (config.spool_tmp_dir / name).string());
    }
    for (const auto& name : recovered.aliased_tmp_names) {
        spdlog::error("spool: left {} alone: it is another name of an item directory in pending/, processing/ or "
                      "dead/ (the filesystem lost half of a rename in a crash); check the filesystem with fsck",
                      (config.spool_tmp_dir / name).string());
    }
    for (const auto& name : recovered.foreign_tmp_names) {
        spdlog::warn("spool: left {} alone: not a name mxhook gives its items",
                     (config.spool_tmp_dir / name).string());
    }
    for (const auto& error : recovered.errors) spdlog::error("spool: {}", error);
    for (const auto& id : recovered.duplicates) {
        spdlog::error("spool: id={} was in processing/ and pending/ at once; one copy is set aside in dead/ "
                      "(see its error.txt), the other delivered",
                      id);
    }
    spdlog::info("spool: {} ready; {} item(s) back from processing, {} unacknowledged tmp item(s) removed",
                 config.spool_dir.string(), recovered.requeued, recovered.removed_tmp);
    if (recovered.suspects.size() > 1) {
        spdlog::warn("spool: {} deliveries were in flight when the last run ended; retrying them one at a time "
                     "before anything else",
                     recovered.suspects.size());
    }
    if (recovered.poisoned > 0) {
        spdlog::error("spool: {} item(s) dead-lettered after {} interrupted delivery attempts (see dead/*/error.txt)",
                      recovered.poisoned, config.max_interrupted_attempts);
    }

    // Routes (WEBHOOK_ROUTES): a file that does not load stops the start. Replaced as a
    // whole on SIGHUP, on the io thread, which alone reads it.
    std::shared_ptr<const webhook::Routes> routes;
    if (!config.webhook_routes.empty()) {
        try {
            routes = std::make_shared<const webhook::Routes>(webhook::Routes::load(config.webhook_routes));
        } catch (const webhook::RoutesError& e) {
            throw ConfigError("WEBHOOK_ROUTES: " + config.webhook_routes.string() + ": " + e.what());
        }
        spdlog::info("routes: {} route(s) from {}", routes->routes().size(), config.webhook_routes.string());
    }

    boost::asio::thread_pool pool(config.spool_worker_threads);
    http::Client client(io);
    webhook::Dispatcher dispatcher(io, pool, spool, client, config);
    dispatcher.isolate(recovered.suspects);
    dispatcher.use_routes(&routes);
    decision::Client decision(client, config);

    smtp::ProtocolSettings protocol;
    protocol.hostname = config.smtp_hostname;
    protocol.max_message_bytes = config.smtp_max_message_bytes;
    protocol.max_recipients = config.smtp_max_recipients;
    protocol.accept_all_recipients = config.accept_all_recipients;
    protocol.accepted_domains = config.accepted_domains;
    protocol.max_errors = config.smtp_max_errors;
    protocol.max_junk_commands = config.smtp_max_junk_commands;
    protocol.max_received_headers = config.smtp_max_received_headers;
    protocol.max_header_bytes = config.smtp_max_header_bytes;
    protocol.max_header_lines = config.smtp_max_header_lines;
    protocol.tls_available = tls != nullptr;
    // A recipient whose route is reject, when its recipient and sender alone decide it.
    protocol.refuse_recipient = [&routes](std::string_view recipient, std::string_view sender) {
        if (!routes) return false;
        const auto early = routes->at_rcpt(recipient, sender);
        if (!early.decided || early.route == nullptr || early.route->action != webhook::Route::Action::reject) {
            return false;
        }
        spdlog::info("route recipient=<{}> sender=<{}> action=reject line={}", recipient, sender, early.route->line);
        return true;
    };
    // Client names (PTR) for the trace header and remote.host, and the records sender
    // authentication reads, asked on the io thread.
    dns::Resolver resolver(io, {kReverseDnsMaxInFlight, config.dns_servers});
    // Sender authentication after DATA (AUTH_CHECKS): a library that cannot start ends the start.
    std::unique_ptr<auth::Checker> checker;
    if (config.auth_spf || config.auth_dkim || config.auth_dmarc) {
        auth::Checker::Options options;
        options.checks = {config.auth_spf, config.auth_dkim, config.auth_dmarc};
        options.authserv_id = config.smtp_hostname;
        options.dns_timeout = config.auth_dns_timeout;
        options.public_suffix_list = config.auth_public_suffix_list;
        std::error_code ec;
        if (config.auth_dmarc && !std::filesystem::is_regular_file(options.public_suffix_list, ec))
            throw ConfigError("AUTH_PUBLIC_SUFFIX_LIST: cannot read " + options.public_suffix_list.string() +
                              " (DMARC needs the public suffix list: install Debian's publicsuffix, or leave dmarc out "
                              "of AUTH_CHECKS)");
        try {
            checker = std::make_unique<auth::Checker>(resolver, pool, std::move(options));
        } catch (const std::runtime_error& e) {
            throw ConfigError(std::string("AUTH_CHECKS: ") + e.what());
        }
    }
    spool::DiskGuard disk_guard(io, pool, config.spool_tmp_dir, config.spool_min_free_bytes);
    disk_guard.start();
    // Content scanners after DATA (RSPAMD_URL, CLAMD_ADDRESS).
    std::unique_ptr<scan::Rspamd> rspamd;
    if (!config.rspamd_url.empty())
        rspamd = std::make_unique<scan::Rspamd>(client, pool, config.rspamd_url, config.rspamd_timeout);
    std::unique_ptr<scan::Clamd> clamd;
    if (config.clamd_address) clamd = std::make_unique<scan::Clamd>(pool, *config.clamd_address, config.clamd_timeout);
    smtp::SessionContext context{config, protocol, spool, pool,
                                 [&dispatcher](const std::string& id, std::optional<spool::Meta> meta) {
                                     dispatcher.notify(id, std::move(meta));
                                 }, &decision,
                                 tls.get(), &resolver, &disk_guard, checker.get(), rspamd.get(), clamd.get(), &routes};
    smtp::Server server(io, context);
    server.listen(config.smtp_listen);
    std::unique_ptr<metrics::Server> metrics_server;
    if (config.metrics_listen) {
        metrics::Sources sources{[&server] { return server.problem(); },
                                 [&spool, &disk_guard] { return spool_problem(spool.layout(), disk_guard); },
                                 [&spool] { return spool_snapshot(spool); }};
        metrics_server = std::make_unique<metrics::Server>(io, pool, metrics::global(), std::move(sources),
                                                           metrics::BuildInfo{MXHOOK_VERSION, MXHOOK_GIT_COMMIT});
        metrics_server->listen(*config.metrics_listen);
    }
    server.start();
    if (metrics_server) metrics_server->start();
    dispatcher.start();
    spdlog::info("mxhook ready: webhook {}", masked_url(config.webhook_url));
    // systemd (Type=notify): started once every listener is up. Without NOTIFY_SOCKET
    // (not under systemd) this does nothing.
    sd_notify(0, "READY=1\nSTATUS=taking mail");

    // Graceful stop: stop accepting, let DATA transactions and POSTs in flight finish
    // within SHUTDOWN_GRACE_MS, then leave whatever remains for start-up recovery.
    boost::asio::signal_set signals(io, SIGTERM, SIGINT);
    boost::asio::steady_timer grace(io);
    int pending_parts = 2;
    auto part_done = [&] {
        if (--pending_parts == 0) io.stop();
    };
    // SIGHUP: load the certificate files again (renewals are also noticed on their own),
    // and the routes file: read on the pool, swapped in on the io thread; a file that does
    // not load leaves the routes in force.
    boost::asio::signal_set hangup(io, SIGHUP);
    std::function<void()> wait_hangup = [&] {
        hangup.async_wait([&](const boost::system::error_code& ec, int) {
            if (ec) return;
            if (tls) tls->reload();
            else spdlog::info("received SIGHUP: no TLS certificate configured, nothing to reload");
            if (!config.webhook_routes.empty()) {
                boost::asio::post(pool, [&] {
                    std::shared_ptr<const webhook::Routes> loaded;
                    std::string problem;
                    try {
                        loaded = std::make_shared<const webhook::Routes>(webhook::Routes::load(config.webhook_routes));
                    } catch (const std::exception& e) {
                        problem = e.what();
                    }
                    boost::asio::post(io, [&routes, &config, loaded = std::move(loaded), problem = std::move(problem)] {
                        if (!loaded) {
                            spdlog::error("routes: reload of {} failed, keeping the {} route(s) in force: {}",
                                          config.webhook_routes.string(), routes ? routes->routes().size() : 0, problem);
                            return;
                        }
                        routes = loaded;
                        spdlog::info("routes: reloaded {} route(s) from {}", routes->routes().size(),
                                     config.webhook_routes.string());
                    });
                });
            }
            wait_hangup();
        });
    };
    wait_hangup();

    // SIGUSR1 (`mxhook drain`): take no more mail, deliver what is queued now, report.
    DrainMonitor drain(io, pool, spool, config.spool_dir, [&server, &dispatcher] {
        return DrainMonitor::Activity{server.session_count(), dispatcher.in_flight(), dispatcher.launched()};
    });
    const auto begin_drain = [&](const std::optional<tool::DrainRequest>& request) {
        // Again while draining: one more attempt for everything now, a new window.
        const auto timeout = request ? request->timeout : config.drain_timeout;
        spdlog::info("received SIGUSR1: {}: taking no more mail (421 4.3.2, /readyz 503), trying every queued "
                     "message now, for up to {} ms ({} session(s) open, {} delivery(ies) in flight)",
                     drain.started() ? "draining again" : "draining", timeout.count(), server.session_count(),
                     dispatcher.in_flight());
        sd_notify(0, "STATUS=draining: taking no mail, delivering the spool");
        metrics::global().draining.set(1);
        server.drain();
        dispatcher.drain();
        drain.start(timeout, request ? request->token : std::string());
    };
    std::function<void()> wait_usr1 = [&] {
        usr1.async_wait([&](const boost::system::error_code& ec, int) {
            if (ec) return;
            wait_usr1();  // first: a handler that throws must not leave later drains unheard
            // `mxhook drain` left its request (token, DRAIN_TIMEOUT_MS) in the spool: read on
            // the pool, the drain begun back on this thread.
            boost::asio::post(pool, [&] {
                auto request = tool::take_drain_request(config.spool_dir);
                boost::asio::post(io, [&begin_drain, request = std::move(request)] { begin_drain(request); });
            });
        });
    };
    wait_usr1();

    signals.async_wait([&](const boost::system::error_code& ec, int signal) {
        if (ec) return;
        sd_notify(0, "STOPPING=1\nSTATUS=finishing transactions and deliveries in flight");
        hangup.cancel();
        usr1.cancel();
        disk_guard.stop();
        if (tls) tls->stop();
        spdlog::info("received signal {}: shutting down ({} session(s), {} delivery(ies) in flight)", signal,
                     server.session_count(), dispatcher.in_flight());
        grace.expires_after(config.shutdown_grace);
        grace.async_wait([&](const boost::system::error_code& timer_ec) {
            if (timer_ec) return;
            spdlog::warn("shutdown grace of {} ms over; unfinished work stays in the spool",
                         config.shutdown_grace.count());
            client.shutdown();
            io.stop();
        });
        server.stop(part_done);
        dispatcher.stop(part_done);
    });

    // A handler that throws must not skip the joins below: pool jobs still refer to the
    // dispatcher, the sessions and the client.
    for (;;) {
        try {
            io.run();
            break;
        } catch (const std::exception& e) {
            spdlog::critical("event loop: {}", e.what());
        }
    }
    if (metrics_server) metrics_server->stop();
    resolver.stop();  // before the io_context goes: no answer is posted to it any more
    client.shutdown();
    pool.join();
    // Attempts the grace period cut short were stopped by us, not by a crash: give them
    // back to pending/ now, so start-up recovery does not count them as interrupted (three
    // restarts during a slow delivery would otherwise dead-letter a healthy message).
    try {
        if (const std::size_t moved = spool.unclaim_all(); moved > 0) {
            spdlog::info("spool: {} unfinished delivery(ies) back in pending/", moved);
        }
    } catch (const std::exception& e) {
        spdlog::error("spool: processing/ left for start-up recovery: {}", e.what());
    }
    spool.drop_recycled();  // delivered items kept for reuse (Spool::remove)
    spdlog::info("mxhook stopped");
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    std::signal(SIGPIPE, SIG_IGN);
    const std::string command = argc > 1 ? argv[1] : "";
    if (command == "--version" || command == "version") {
        std::cout << "mxhook " << MXHOOK_VERSION << " (commit " << MXHOOK_GIT_COMMIT << ")\n";
        return 0;
    }
    if (command == "spool") {
        return tool::spool_command(std::vector<std::string>(argv + 2, argv + argc), process_env(), std::cout,
                                   std::cerr);
    }
    if (command == "config") {
        // Like `postfix check`: the effective configuration, or why it is not valid.
        try {
            for (const auto& [name, value] : describe(load_config(process_env()))) {
                std::cout << name << "=" << value << "\n";
            }
            return 0;
        } catch (const ConfigError& e) {
            std::cerr << "mxhook: configuration error: " << e.what() << std::endl;
            return 1;
        }
    }
    if (!command.empty() && command != "healthcheck" && command != "drain") {
        std::cerr << "usage: mxhook [healthcheck | drain | config | spool <command> | --version]\n"
                     "  (the configuration comes from the environment; see README)\n";
        return 2;
    }
    Config config;
    try {
        config = load_config(process_env());
    } catch (const ConfigError& e) {
        std::cerr << "mxhook: configuration error: " << e.what() << std::endl;
        return 2;
    }
    if (command == "healthcheck") return run_healthcheck(config, std::chrono::seconds(5));
    if (command == "drain") return tool::drain_command(config, std::cout, std::cerr);
    setup_logging(config);
    try {
        return run(config);
    } catch (const ConfigError& e) {  // e.g. a certificate that does not load
        std::cerr << "mxhook: configuration error: " << e.what() << std::endl;
        return 2;
    } catch (const spool::LayoutError& e) {  // spool directories that overlap, or in use
        std::cerr << "mxhook: configuration error: " << e.what() << std::endl;
        return 2;
    } catch (const std::exception& e) {
        spdlog::critical("mxhook: {}", e.what());
        return 1;
    }
}
