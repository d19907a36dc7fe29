// ReverseDns: names come back on the caller's executor, a full queue answers "" at once,
// and stop() neither blocks nor lets an answer through afterwards.

#include "mxhook/smtp/reverse_dns.hpp"

#include <boost/asio/io_context.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace mxhook::smtp {
namespace {

const auto kLoopback = boost::asio::ip::make_address("127.0.0.1");

// Runs `io` until `done` holds or 10 s pass.
template <typename Pred>
bool run_until(boost::asio::io_context& io, Pred done) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!done() && std::chrono::steady_clock::now() < deadline) {
        io.run_for(std::chrono::milliseconds(10));
        io.restart();
    }
    return done();
}

TEST(ReverseDns, AnswersWhatGetnameinfoSaysOnTheCallersExecutor) {
    boost::asio::io_context io;
    ReverseDns dns(2, 16);
    const auto io_thread = std::this_thread::get_id();
    std::optional<std::string> name;
    bool on_io_thread = false;
    dns.lookup(kLoopback, io.get_executor(), [&](std::string n) {
        on_io_thread = std::this_thread::get_id() == io_thread;
        name = std::move(n);
    });
    ASSERT_TRUE(run_until(io, [&] { return name.has_value(); }));
    EXPECT_TRUE(on_io_thread);
    EXPECT_EQ(*name, lookup_name(kLoopback));
}

TEST(ReverseDns, MappedAddressesAreLookedUpAsIpv4) {
    EXPECT_EQ(lookup_name(boost::asio::ip::make_address("::ffff:127.0.0.1")), lookup_name(kLoopback));
}

TEST(ReverseDns, AFullQueueAnswersNoNameAtOnce) {
    boost::asio::io_context io;
    ReverseDns dns(0, 0);  // no threads, no room: every lookup is refused
    std::vector<std::string> names;
    for (int i = 0; i < 3; ++i) dns.lookup(kLoopback, io.get_executor(), [&](std::string n) { names.push_back(n); });
    ASSERT_TRUE(run_until(io, [&] { return names.size() == 3; }));
    for (const auto& n : names) EXPECT_EQ(n, "");
}

TEST(ReverseDns, NothingIsAnsweredAfterStop) {
    boost::asio::io_context io;
    ReverseDns dns(0, 16);  // queued, never started
    int answers = 0;
    dns.lookup(kLoopback, io.get_executor(), [&](std::string) { ++answers; });
    dns.stop();
    dns.lookup(kLoopback, io.get_executor(), [&](std::string) { ++answers; });
    io.poll();  // runs whatever was posted; nothing may have been
    EXPECT_EQ(answers, 0);
}

}  // namespace
}  // namespace mxhook::smtp
