// The spool after "250": the item is durable in pending/<id>/ with message.eml and a
// meta.json in haraka-webhook's format, in directories only the daemon's user can read.

#include "harness/fixture.hpp"
#include "support/fake_dns.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <regex>

namespace itest {
namespace {

using nlohmann::json;

// mxhook may write addresses bare or in angle brackets (haraka-webhook's own items use
// both); compare them bare.
std::string bare(std::string address) {
    if (address.size() >= 2 && address.front() == '<' && address.back() == '>') {
        address = address.substr(1, address.size() - 2);
    }
    return address;
}

class SpoolTest : public IntegrationTest {
protected:
    // With the webhook down (items stay in pending/) and `dns` as the daemon's DNS server:
    // one message sent from `source`, a loopback address. Its id, or "" (failure recorded).
    std::string send_from(const std::string& source, const testsupport::FakeDns& dns) {
        hook_.stop();
        if (!start_daemon({{"DNS_SERVERS", dns.address()},
                           {"RETRY_INTERVAL_MS", "60000"},
                           {"RETRY_MAX_INTERVAL_MS", "60000"}}))
            return {};
        auto client = connect(source);
        EXPECT_EQ(client->ehlo("helo.client.test").code, 250);
        return queued_id(client->send_message("bob@example.org", {"x@example.com"}, simple_message()));
    }
    // meta.json of pending/<id> once an attempt was recorded (the dispatcher leaves it alone
    // then, with a long retry interval); nullopt before.
    std::optional<json> settled_meta(const std::string& id) {
        auto meta = read_meta(pending_dir() / id);
        if (meta && (*meta)["attempts"].is_number_integer() && (*meta)["attempts"].get<int>() >= 1) return meta;
        return std::nullopt;
    }
};

TEST_F(SpoolTest, AcceptedMessageIsDurableInPending) {
    hook_.stop();  // nothing leaves the spool
    ASSERT_TRUE(start_daemon({{"RETRY_INTERVAL_MS", "60000"}, {"RETRY_MAX_INTERVAL_MS", "60000"}}));
    const std::string message =
        "From: Bob <bob@example.org>\r\n"
        "Subject: stored\r\n"
        "X-Folded: one\r\n two\r\n"
        "\r\n"
        "body\r\n";
    auto client = connect();
    ASSERT_EQ(client->ehlo("helo.client.test").code, 250);
    const Reply r = client->send_message("bob@example.org", {"x@example.com", "y@example.com"}, message);
    const std::string id = queued_id(r);
    ASSERT_FALSE(id.empty()) << r;

    // Right at the 250 the item exists: in pending/, or in processing/ if an attempt
    // already started.
    ASSERT_TRUE(wait_until(
        [&] {
            return std::filesystem::exists(pending_dir() / id / "message.eml") ||
                   std::filesystem::exists(processing_dir() / id / "message.eml");
        },
        std::chrono::seconds(1)))
        << "no pending/" << id << " or processing/" << id << " after 250";

    // After the first (failed) attempt it rests in pending/ for the long retry interval.
    std::optional<json> meta;
    ASSERT_TRUE(wait_until([&] { return (meta = settled_meta(id)).has_value(); }, std::chrono::seconds(10)));
    const std::string eml = read_file(pending_dir() / id / "message.eml");
    const auto split = split_received(eml);
    ASSERT_TRUE(split.has_value()) << "message.eml starts with the trace header: " << eml.substr(0, 200);
    EXPECT_TRUE(split->rest == message) << first_difference(message, split->rest);

    const json& m = *meta;
    EXPECT_EQ(m["id"], id);
    EXPECT_TRUE(m["createdAt"].is_string() &&
                std::regex_match(m["createdAt"].get<std::string>(),
                                 std::regex(R"(^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$)")))
        << m.dump(2);
    EXPECT_TRUE(m["attempts"].is_number_integer()) << m.dump(2);
    EXPECT_TRUE(m.contains("nextAttemptAt")) << m.dump(2);
    ASSERT_TRUE(m["sender"].is_string()) << m.dump(2);
    EXPECT_EQ(bare(m["sender"]), "bob@example.org");
    ASSERT_TRUE(m["recipients"].is_array() && m["recipients"].size() == 2) << m.dump(2);
    EXPECT_EQ(bare(m["recipients"][0]), "x@example.com");
    EXPECT_EQ(bare(m["recipients"][1]), "y@example.com");
    EXPECT_EQ(m["from"], "Bob <bob@example.org>");
    EXPECT_EQ(m["subject"], "stored");
    ASSERT_TRUE(m["headers"].is_array()) << m.dump(2);
    bool folded = false;
    for (const auto& h : m["headers"]) {
        if (h.is_array() && h.size() == 2 && h[0] == "X-Folded") folded = h[1] == "one two";
    }
    EXPECT_TRUE(folded) << "X-Folded unfolded to \"one two\": " << m["headers"].dump();
    ASSERT_TRUE(m["remote"].is_object()) << m.dump(2);
    EXPECT_EQ(m["remote"]["ip"], "127.0.0.1");
    EXPECT_TRUE(m["remote"]["host"].is_string()) << m.dump(2);
    EXPECT_EQ(m["remote"]["helo"], "helo.client.test");
}

// remote.host is the client's reverse-DNS name (as this machine's resolver gives it for
// 127.0.0.1, usually "localhost" from /etc/hosts), even for a client that sends its
// message without a pause: DATA waits for the lookup, within its bound.
TEST_F(SpoolTest, RemoteHostIsTheReverseDnsName) {
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    char name[NI_MAXHOST] = {};
    std::string expected;
    if (::getnameinfo(reinterpret_cast<const sockaddr*>(&address), sizeof address, name, sizeof name, nullptr, 0,
                      NI_NAMEREQD) == 0) {
        expected = name;
    }
    hook_.stop();
    ASSERT_TRUE(start_daemon({{"RETRY_INTERVAL_MS", "60000"}, {"RETRY_MAX_INTERVAL_MS", "60000"}}));
    auto client = connect();
    ASSERT_EQ(client->ehlo("helo.client.test").code, 250);
    const std::string id = queued_id(client->send_message("bob@example.org", {"x@example.com"}, simple_message()));
    ASSERT_FALSE(id.empty());
    std::optional<json> meta;
    ASSERT_TRUE(wait_until([&] { return (meta = settled_meta(id)).has_value(); }, std::chrono::seconds(10)));
    EXPECT_EQ((*meta)["remote"]["host"], expected) << "getnameinfo(127.0.0.1) gives \"" << expected << "\"";
    const auto split = split_received(read_file(pending_dir() / id / "message.eml"));
    ASSERT_TRUE(split.has_value());
    if (!expected.empty()) {
        EXPECT_NE(split->received.find("from helo.client.test (" + expected + " [127.0.0.1])"), std::string::npos)
            << split->received;
    }
}

// DNS_SERVERS: the client's name comes from the server it names (a FakeDns on loopback),
// for a client address that /etc/hosts does not know.
TEST_F(SpoolTest, RemoteHostComesFromDnsServers) {
    testsupport::FakeDns dns;
    dns.set_ptr("127.9.8.7", "client.dns.test");
    const std::string id = send_from("127.9.8.7", dns);
    ASSERT_FALSE(id.empty());
    std::optional<json> meta;
    ASSERT_TRUE(wait_until([&] { return (meta = settled_meta(id)).has_value(); }, std::chrono::seconds(10)));
    EXPECT_EQ((*meta)["remote"]["ip"], "127.9.8.7");
    EXPECT_EQ((*meta)["remote"]["host"], "client.dns.test");
    EXPECT_GE(dns.queries(), 1);
    const auto split = split_received(read_file(pending_dir() / id / "message.eml"));
    ASSERT_TRUE(split.has_value());
    EXPECT_NE(split->received.find("from helo.client.test (client.dns.test [127.9.8.7])"), std::string::npos)
        << split->received;
}

// A DNS server that never answers costs the client nothing but its name: DATA waits for
// the lookup only within its bound, and the message is taken and stored without one.
TEST_F(SpoolTest, SilentDnsServerLeavesTheNameOutAndTakesTheMessage) {
    testsupport::FakeDns dns;
    dns.set_silent(true);
    const std::string id = send_from("127.9.8.7", dns);
    ASSERT_FALSE(id.empty());
    std::optional<json> meta;
    ASSERT_TRUE(wait_until([&] { return (meta = settled_meta(id)).has_value(); }, std::chrono::seconds(10)));
    EXPECT_EQ((*meta)["remote"]["host"], "");
    EXPECT_GE(dns.queries(), 1);
    const auto split = split_received(read_file(pending_dir() / id / "message.eml"));
    ASSERT_TRUE(split.has_value());
    EXPECT_NE(split->received.find("from helo.client.test ([127.9.8.7])"), std::string::npos) << split->received;
}

TEST_F(SpoolTest, DirectoriesArePrivate) {
    hook_.stop();
    ASSERT_TRUE(start_daemon({{"RETRY_INTERVAL_MS", "60000"}, {"RETRY_MAX_INTERVAL_MS", "60000"}}));
    const std::string id = send_one(simple_message());
    ASSERT_FALSE(id.empty());
    ASSERT_TRUE(wait_until([&] { return settled_meta(id).has_value(); }, std::chrono::seconds(10)));
    for (const auto& dir : {spool_dir(), tmp_spool_dir(), pending_dir(), processing_dir(), dead_dir(),
                            pending_dir() / id}) {
        EXPECT_EQ(permissions_of(dir), 0700u) << dir << " has mode 0" << std::oct << permissions_of(dir);
    }
}

TEST_F(SpoolTest, SeparateSpoolDirectories) {
    const auto root = tmp_.path() / "elsewhere";
    ASSERT_TRUE(start_daemon({{"SPOOL_TMP_DIR", (root / "t").string()},
                              {"SPOOL_PENDING_DIR", (root / "p").string()},
                              {"SPOOL_PROCESSING_DIR", (root / "w").string()},
                              {"SPOOL_DEAD_DIR", (root / "d").string()}}));
    hook_.respond_with([](const WebhookRequest&) { return 406u; });
    const std::string id = send_one(simple_message());
    ASSERT_FALSE(id.empty());
    EXPECT_TRUE(wait_until([&] { return std::filesystem::exists(root / "d" / id / "message.eml"); },
                           std::chrono::seconds(10)))
        << "dead item not in SPOOL_DEAD_DIR";
    for (const char* sub : {"t", "p", "w"}) {
        EXPECT_TRUE(std::filesystem::is_directory(root / sub)) << sub;
    }
}

}  // namespace
}  // namespace itest
