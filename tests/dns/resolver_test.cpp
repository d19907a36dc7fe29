// Resolver (c-ares on the io thread): names from the hosts file and from a DNS server,
// answers on the io thread, no name when nobody answers or too many lookups run, and
// nothing after stop().

#include "mxhook/dns/resolver.hpp"

#include "support/fake_dns.hpp"

#include <boost/asio/io_context.hpp>

#include <gtest/gtest.h>
#include <netdb.h>

#include <chrono>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace mxhook::dns {
namespace {

using namespace std::chrono_literals;

const auto kLoopback = boost::asio::ip::make_address("127.0.0.1");
// Not in any /etc/hosts: only a DNS server can name it.
const auto kClient = boost::asio::ip::make_address("127.9.8.7");

// Runs `io` until `done` holds or `bound` passes.
template <typename Pred>
bool run_until(boost::asio::io_context& io, Pred done, std::chrono::milliseconds bound = 10s) {
    const auto deadline = std::chrono::steady_clock::now() + bound;
    while (!done() && std::chrono::steady_clock::now() < deadline) {
        io.run_for(10ms);
        io.restart();
    }
    return done();
}

// What the system's resolver (glibc) names 127.0.0.1: from /etc/hosts, usually "localhost".
std::string system_name_of_loopback() {
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    char host[NI_MAXHOST] = {};
    if (::getnameinfo(reinterpret_cast<const sockaddr*>(&address), sizeof address, host, sizeof host, nullptr, 0,
                      NI_NAMEREQD) != 0)
        return {};
    return host;
}

Resolver::Options against(const testsupport::FakeDns& dns, std::chrono::milliseconds timeout = 1000ms) {
    Resolver::Options options;
    options.servers = {HostPort{"127.0.0.1", dns.port()}};
    options.timeout = timeout;
    options.tries = 1;
    return options;
}

TEST(ResolverReverse, NamesFromTheHostsFileComeBackOnTheIoThread) {
    boost::asio::io_context io;
    Resolver dns(io, {});
    const auto io_thread = std::this_thread::get_id();
    std::optional<std::string> name;
    bool on_io_thread = false;
    dns.lookup(kLoopback, [&](std::string n) {
        on_io_thread = std::this_thread::get_id() == io_thread;
        name = std::move(n);
    });
    ASSERT_TRUE(run_until(io, [&] { return name.has_value(); }));
    EXPECT_TRUE(on_io_thread);
    EXPECT_EQ(*name, system_name_of_loopback());
}

TEST(ResolverReverse, MappedAddressesAreLookedUpAsIpv4) {
    boost::asio::io_context io;
    Resolver dns(io, {});
    std::optional<std::string> plain, mapped;
    dns.lookup(kLoopback, [&](std::string n) { plain = std::move(n); });
    dns.lookup(boost::asio::ip::make_address("::ffff:127.0.0.1"), [&](std::string n) { mapped = std::move(n); });
    ASSERT_TRUE(run_until(io, [&] { return plain && mapped; }));
    EXPECT_EQ(*mapped, *plain);
}

TEST(ResolverReverse, NamesFromTheConfiguredDnsServer) {
    testsupport::FakeDns server;
    server.set_ptr("127.9.8.7", "client.example.test");
    boost::asio::io_context io;
    Resolver dns(io, against(server));
    std::optional<std::string> name, unknown;
    dns.lookup(kClient, [&](std::string n) { name = std::move(n); });
    dns.lookup(boost::asio::ip::make_address("127.9.8.6"), [&](std::string n) { unknown = std::move(n); });
    ASSERT_TRUE(run_until(io, [&] { return name && unknown; }));
    EXPECT_EQ(*name, "client.example.test");
    EXPECT_EQ(*unknown, "");  // NXDOMAIN
}

TEST(ResolverReverse, AServerThatNeverAnswersGivesNoNameAfterTheTimeout) {
    testsupport::FakeDns server;
    server.set_silent(true);
    boost::asio::io_context io;
    Resolver dns(io, against(server, 200ms));
    std::optional<std::string> name;
    dns.lookup(kClient, [&](std::string n) { name = std::move(n); });
    ASSERT_TRUE(run_until(io, [&] { return name.has_value(); }, 5s));
    EXPECT_EQ(*name, "");
    EXPECT_GE(server.queries(), 1);
}

TEST(ResolverReverse, TooManyInFlightAnswersNoNameAtOnce) {
    testsupport::FakeDns server;
    server.set_silent(true);
    boost::asio::io_context io;
    auto options = against(server, 10000ms);
    options.max_in_flight = 1;
    Resolver dns(io, options);
    std::optional<std::string> first, second;
    dns.lookup(kClient, [&](std::string n) { first = std::move(n); });
    dns.lookup(kClient, [&](std::string n) { second = std::move(n); });
    ASSERT_TRUE(run_until(io, [&] { return second.has_value(); }, 2s));  // well before the first's timeout
    EXPECT_EQ(*second, "");
    EXPECT_FALSE(first.has_value());
}

TEST(ResolverReverse, NothingIsAnsweredAfterStop) {
    testsupport::FakeDns server;
    server.set_silent(true);
    boost::asio::io_context io;
    Resolver dns(io, against(server, 100ms));
    int answers = 0;
    dns.lookup(kClient, [&](std::string) { ++answers; });
    dns.lookup(kLoopback, [&](std::string) { ++answers; });  // the hosts file answers it at once
    dns.stop();
    dns.lookup(kLoopback, [&](std::string) { ++answers; });
    // Past the lookup's own timeout: had it not been cancelled, its answer would be here.
    io.run_for(500ms);
    EXPECT_EQ(answers, 0);
}

}  // namespace
}  // namespace mxhook::smtp
