// PROXY protocol headers as HAProxy sends them (v1 text, v2 binary), and everything a
// confused or hostile peer might send instead.

#include "mxhook/smtp/proxy_protocol.hpp"

#include <gtest/gtest.h>

#include <string>

namespace mxhook::smtp {
namespace {

using Status = ProxyParse::Status;

const std::string kSig("\r\n\r\n\0\r\nQUIT\n", 12);

std::string v2(unsigned char ver_cmd, unsigned char fam, const std::string& payload) {
    std::string h = kSig;
    h += static_cast<char>(ver_cmd);
    h += static_cast<char>(fam);
    h += static_cast<char>((payload.size() >> 8) & 0xff);
    h += static_cast<char>(payload.size() & 0xff);
    return h + payload;
}

std::string v2_tcp4(const std::string& tlvs = {}) {
    // 192.0.2.7:54321 -> 198.51.100.1:25
    return v2(0x21, 0x11, std::string("\xc0\x00\x02\x07\xc6\x33\x64\x01\xd4\x31\x00\x19", 12) + tlvs);
}

TEST(ProxyProtocol, V1Tcp4) {
    const std::string h = "PROXY TCP4 192.0.2.7 198.51.100.1 54321 25\r\n";
    const auto p = parse_proxy_header(h + "EHLO x\r\n");
    ASSERT_EQ(p.status, Status::done) << p.error;
    EXPECT_EQ(p.consumed, h.size()) << "what follows the header is SMTP";
    EXPECT_EQ(p.header.version, 1);
    EXPECT_FALSE(p.header.local);
    EXPECT_EQ(p.header.source_ip, "192.0.2.7");
    EXPECT_EQ(p.header.source_port, 54321);
}

TEST(ProxyProtocol, V1Tcp6AndMappedV4) {
    auto p = parse_proxy_header("PROXY TCP6 2001:db8::1 2001:db8::2 1025 25\r\n");
    ASSERT_EQ(p.status, Status::done) << p.error;
    EXPECT_EQ(p.header.source_ip, "2001:db8::1");
    p = parse_proxy_header("PROXY TCP6 ::ffff:192.0.2.9 ::1 1025 25\r\n");
    ASSERT_EQ(p.status, Status::done) << p.error;
    EXPECT_EQ(p.header.source_ip, "192.0.2.9") << "an IPv4 client is shown as IPv4 everywhere";
}

TEST(ProxyProtocol, V1UnknownMeansNoAddress) {
    const auto p = parse_proxy_header("PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n");
    ASSERT_EQ(p.status, Status::done) << p.error;
    EXPECT_TRUE(p.header.local);
}

TEST(ProxyProtocol, PiecesNeedMoreAtEveryCut) {
    for (const std::string& h : {std::string("PROXY TCP4 192.0.2.7 198.51.100.1 54321 25\r\n"), v2_tcp4()}) {
        for (std::size_t cut = 0; cut < h.size(); ++cut) {
            EXPECT_EQ(parse_proxy_header(h.substr(0, cut)).status, Status::need_more) << "cut at " << cut;
        }
        EXPECT_EQ(parse_proxy_header(h).status, Status::done);
    }
}

TEST(ProxyProtocol, V1Malformed) {
    for (const char* bad : {"PROXY TCP4 192.0.2.7 198.51.100.1 54321\r\n",          // a field short
                            "PROXY TCP4 192.0.2.7 198.51.100.1 54321 25 extra\r\n",  // a field long
                            "PROXY TCP4 300.0.2.7 198.51.100.1 54321 25\r\n",        // not an address
                            "PROXY TCP4 2001:db8::1 198.51.100.1 54321 25\r\n",      // v6 under TCP4
                            "PROXY TCP4 192.0.2.7 198.51.100.1 65536 25\r\n",        // port too big
                            "PROXY TCP4 192.0.2.7 198.51.100.1 054321 25\r\n",       // leading zero
                            "PROXY UDP4 192.0.2.7 198.51.100.1 54321 25\r\n",        // not TCP
                            "PROXY TCP4  192.0.2.7 198.51.100.1 54321 25\r\n",       // double space
                            "PROXY TCP4 192.0.2.7 198.51.100.1 54321 25\n"}) {       // bare LF
        EXPECT_EQ(parse_proxy_header(bad).status, Status::invalid) << bad;
    }
}

TEST(ProxyProtocol, V1OverLongIsInvalidNotAWaitForever) {
    const std::string endless = "PROXY TCP4 " + std::string(200, '1');
    const auto p = parse_proxy_header(endless);
    EXPECT_EQ(p.status, Status::invalid);
    EXPECT_NE(p.error.find("107"), std::string::npos) << p.error;
}

TEST(ProxyProtocol, PlainSmtpOrGarbageIsInvalid) {
    for (const char* bad : {"EHLO client\r\n", "HELO", "\r\n\r\n\r\n", "proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n", "GET / HTTP/1.1"}) {
        EXPECT_EQ(parse_proxy_header(bad).status, Status::invalid) << bad;
    }
}

TEST(ProxyProtocol, V2Tcp4WithTlvs) {
    const std::string tlvs("\x04\x00\x03" "abc", 6);  // PP2_TYPE_NOOP, skipped
    const auto p = parse_proxy_header(v2_tcp4(tlvs) + "EHLO");
    ASSERT_EQ(p.status, Status::done) << p.error;
    EXPECT_EQ(p.consumed, 16u + 12u + tlvs.size());
    EXPECT_EQ(p.header.version, 2);
    EXPECT_EQ(p.header.source_ip, "192.0.2.7");
    EXPECT_EQ(p.header.source_port, 54321);
}

TEST(ProxyProtocol, V2Tcp6) {
    std::string addresses(36, '\0');
    addresses[0] = '\x20';
    addresses[1] = '\x01';
    addresses[2] = '\x0d';
    addresses[3] = '\xb8';
    addresses[15] = '\x05';  // 2001:db8::5
    addresses[32] = '\x04';  // sport 1024
    const auto p = parse_proxy_header(v2(0x21, 0x21, addresses));
    ASSERT_EQ(p.status, Status::done) << p.error;
    EXPECT_EQ(p.header.source_ip, "2001:db8::5");
    EXPECT_EQ(p.header.source_port, 1024);
}

TEST(ProxyProtocol, V2LocalIsTheBalancersOwnConnection) {
    const auto p = parse_proxy_header(v2(0x20, 0x00, ""));
    ASSERT_EQ(p.status, Status::done) << p.error;
    EXPECT_TRUE(p.header.local);
    EXPECT_EQ(p.consumed, 16u);
}

TEST(ProxyProtocol, V2Malformed) {
    EXPECT_EQ(parse_proxy_header(v2(0x11, 0x11, std::string(12, '\0'))).status, Status::invalid) << "version 1 in v2";
    EXPECT_EQ(parse_proxy_header(v2(0x22, 0x11, std::string(12, '\0'))).status, Status::invalid) << "command 2";
    EXPECT_EQ(parse_proxy_header(v2(0x21, 0x12, std::string(12, '\0'))).status, Status::invalid) << "UDP";
    EXPECT_EQ(parse_proxy_header(v2(0x21, 0x11, std::string(8, '\0'))).status, Status::invalid) << "short IPv4";
    EXPECT_EQ(parse_proxy_header(v2(0x21, 0x21, std::string(20, '\0'))).status, Status::invalid) << "short IPv6";
    EXPECT_EQ(parse_proxy_header(v2(0x21, 0x31, std::string(216, '\0'))).status, Status::invalid) << "AF_UNIX";
}

TEST(ProxyProtocol, V2OversizedIsRefusedFromItsLengthField) {
    // Only the 16-byte head has arrived: the declared length alone is enough to refuse.
    std::string head = kSig + std::string("\x21\x11\xff\xff", 4);
    const auto p = parse_proxy_header(head);
    EXPECT_EQ(p.status, Status::invalid);
    EXPECT_NE(p.error.find("bound"), std::string::npos) << p.error;
}

}  // namespace
}  // namespace mxhook::smtp
